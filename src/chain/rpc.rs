//! Talking to the node: the three websockets, calls with timeout and bounded retry,
//! and what a failed pass means for the watcher.

use std::future::IntoFuture;
use std::time::Duration;

use alloy::providers::{DynProvider, Provider, ProviderBuilder, WsConnect};
use alloy::pubsub::Subscription;
use alloy::transports::TransportResult;
use tokio::time::sleep;

use super::ranges::{Failure, backoff, classify};
use super::watcher::SyncError;
use crate::budget::Error as EngineError;

/// How long one RPC call may take before it counts as failed.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a pass stopped.
pub(super) enum Fail {
    /// The range was too large (suggested last block).
    TooLarge(Option<u64>),
    /// The chain changed under the fetch.
    Reorged,
    /// Reconnect and go on.
    Disconnected(String),
    /// Storage failed; wait and go on.
    Storage(EngineError),
    /// Stop.
    Fatal(SyncError),
}

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Self {
        if e.is_retryable() {
            Fail::Storage(e)
        } else {
            Fail::Fatal(e.into())
        }
    }
}

/// The websockets to the node: requests, new-head hints, removed-log hints.
pub(super) struct Conn {
    pub(super) rpc: DynProvider,
    pub(super) heads: DynProvider,
    pub(super) logs: DynProvider,
}

pub(super) async fn connect_all(url: &str, redacted: &str) -> Result<Conn, String> {
    Ok(Conn {
        rpc: connect(url, redacted).await?,
        heads: connect(url, redacted).await?,
        logs: connect(url, redacted).await?,
    })
}

pub(super) async fn connect(url: &str, redacted: &str) -> Result<DynProvider, String> {
    let ws = WsConnect::new(url)
        .with_max_retries(2)
        .with_retry_interval(Duration::from_millis(500));
    match tokio::time::timeout(CONNECT_TIMEOUT, ProviderBuilder::new().connect_ws(ws)).await {
        Ok(Ok(p)) => Ok(p.erased()),
        // alloy's messages may quote the URL: keep its secrets out.
        Ok(Err(e)) => Err(e.to_string().replace(url, redacted)),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Calls the node with a timeout; retries transient failures (rate limits, timeouts)
/// with backoff and jitter, `max_retries` times; reports range errors to the caller,
/// which must change the request.
pub(super) async fn retrying<T, F, Fut>(
    what: &'static str,
    max_retries: u32,
    on_error: impl Fn(),
    mut f: F,
) -> Result<T, Fail>
where
    F: FnMut() -> Fut,
    Fut: IntoFuture<Output = TransportResult<T>>,
{
    let mut attempt = 0;
    loop {
        let failure = match tokio::time::timeout(RPC_TIMEOUT, f().into_future()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => classify(&e),
            Err(_) => Failure::Transient(format!("no answer within {RPC_TIMEOUT:?}")),
        };
        on_error();
        match failure {
            Failure::TooLarge { suggested_to } => return Err(Fail::TooLarge(suggested_to)),
            Failure::Disconnected(m) => return Err(Fail::Disconnected(format!("{what}: {m}"))),
            Failure::Fatal(m) => return Err(Fail::Fatal(SyncError::Rpc(format!("{what}: {m}")))),
            Failure::Transient(m) if attempt >= max_retries => {
                return Err(Fail::Disconnected(format!(
                    "{what} failed {} times, last: {m}",
                    attempt + 1
                )));
            }
            Failure::Transient(m) => {
                tracing::debug!(what, attempt, error = %m, "rpc failed; retrying");
                sleep(backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ))
                .await;
                attempt += 1;
            }
        }
    }
}

/// The next item of an optional subscription; pending forever without one.
pub(super) async fn next<T: serde::de::DeserializeOwned + Clone>(
    sub: &mut Option<Subscription<T>>,
) -> Option<T> {
    let Some(s) = sub else {
        return std::future::pending().await;
    };
    loop {
        match s.recv().await {
            Ok(v) => return Some(v),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}
