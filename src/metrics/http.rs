//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` over HTTP/1, bounded and
//! stopped by a passed-in shutdown future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{CONTENT_TYPE, Metrics};
use crate::budget::Engine;
use crate::chain::SyncStatus;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP endpoint needs: the metrics, the engine, and chain sync if any.
#[derive(Clone)]
pub struct MetricsState {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Read at every scrape.
    pub engine: Engine,
    /// The watcher's status; `None` when no chain is configured.
    pub sync: Option<watch::Receiver<SyncStatus>>,
}

/// Whether the daemon is ready: with a chain, connected and synced to within the
/// confirmation depth of the head. Without a chain, always.
///
/// # Errors
/// A short reason when not ready.
pub fn readiness(sync: Option<&SyncStatus>) -> Result<(), String> {
    let Some(s) = sync else { return Ok(()) };
    if !s.connected {
        return Err("not connected to the node".into());
    }
    match (s.head, s.synced) {
        (None, _) => Err("chain head not known yet".into()),
        (Some(_), None) => Err("not synced yet".into()),
        (Some(head), Some(synced)) if synced.saturating_add(s.confirmations) < head => Err(format!(
            "synced to block {synced}, head {head}, confirmations {}",
            s.confirmations
        )),
        _ => Ok(()),
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn handle(state: MetricsState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let sync = state.sync.as_ref().map(|rx| rx.borrow().clone());
    if req.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, PLAIN, "not found\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // Paging through every budget is blocking work: keep it off the async workers.
            let rendered =
                tokio::task::spawn_blocking(move || state.metrics.render(&state.engine, sync.as_ref())).await;
            match rendered {
                Ok(Ok(body)) => text(StatusCode::OK, CONTENT_TYPE, body),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
            }
        }
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => match readiness(sync.as_ref()) {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`
/// completes, then lets open connections finish their request and returns.
///
/// ```no_run
/// # async fn demo(state: budgetd::metrics::MetricsState) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
/// budgetd::metrics::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub async fn serve(listener: TcpListener, state: MetricsState, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (state, mut stop) = (state.clone(), stop_rx.clone());
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // The `Ref` wait_for returns is not `Send`: drop it inside.
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("metrics: connection ended: {e}");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_within_confirmation_depth() {
        assert_eq!(readiness(None), Ok(()), "no chain: ready");
        let s = SyncStatus {
            confirmations: 2,
            head: Some(100),
            synced: Some(98),
            connected: true,
            ..Default::default()
        };
        assert_eq!(readiness(Some(&s)), Ok(()));
        let behind = SyncStatus {
            synced: Some(97),
            ..s.clone()
        };
        assert!(
            readiness(Some(&behind))
                .unwrap_err()
                .contains("synced to block 97")
        );
        let offline = SyncStatus {
            connected: false,
            ..s.clone()
        };
        assert!(readiness(Some(&offline)).is_err());
        let fresh = SyncStatus {
            synced: None,
            ..s.clone()
        };
        assert!(readiness(Some(&fresh)).is_err());
        let headless = SyncStatus { head: None, ..s };
        assert!(readiness(Some(&headless)).is_err());
    }
}
