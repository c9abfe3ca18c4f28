//! Adaptive `eth_getLogs` ranges and what providers' errors mean.
//!
//! Providers cap `eth_getLogs` by block span or by result count and say so in
//! different words: Infura answers -32005 "query returned more than 10000 results"
//! with the range that would work in `data`, Alchemy names it in the message
//! (`[0x.., 0x..]`), others only say the range is too wide. A range error shrinks the
//! range (to the suggestion when there is one) so an oversized request is never sent
//! again unchanged; rate limits and hiccups are retried as they are, with backoff.

use std::time::Duration;

use alloy::transports::{RpcError, TransportError};

/// What a failed RPC call means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The range (or its result) is too large: shrink, to `suggested_to` if given.
    TooLarge {
        /// Last block of a range the provider says would work.
        suggested_to: Option<u64>,
    },
    /// Worth retrying as is after a pause (rate limit, timeout, node hiccup).
    Transient(String),
    /// The connection is gone: reconnect, then fill the gap.
    Disconnected(String),
    /// Retrying cannot help (method missing, malformed request).
    Fatal(String),
}

/// Message fragments providers use for "this range or result is too big".
const TOO_LARGE: &[&str] = &[
    "more than 10000 results",
    "returned more than",
    "response size exceeded",
    "block range",
    "range too large",
    "range is too large",
    "too many results",
    "too many logs",
    "exceed maximum block range",
    "limited to a",
    "response is too big",
];

/// Classifies an RPC error of an `eth_getLogs` (or other) call starting at `from`.
pub fn classify(err: &TransportError) -> Failure {
    match err {
        RpcError::ErrorResp(payload) => {
            let message = payload.message.to_lowercase();
            if TOO_LARGE.iter().any(|m| message.contains(m)) {
                let from_data = payload
                    .data
                    .as_ref()
                    .and_then(|d| suggested_to_from_data(d.get()));
                Failure::TooLarge {
                    suggested_to: from_data.or_else(|| suggested_to_from_message(&payload.message)),
                }
            } else if payload.code == -32601 || (payload.code == -32602 && !message.contains("limit")) {
                Failure::Fatal(format!("{} ({})", payload.message, payload.code))
            } else {
                Failure::Transient(format!("{} ({})", payload.message, payload.code))
            }
        }
        RpcError::Transport(kind) => {
            use alloy::transports::TransportErrorKind as K;
            match kind {
                K::BackendGone | K::PubsubUnavailable => Failure::Disconnected(kind.to_string()),
                _ => Failure::Transient(kind.to_string()),
            }
        }
        other => Failure::Transient(other.to_string()),
    }
}

/// Infura: `"data": {"from": "0x..", "to": "0x..", "limit": 10000}`.
fn suggested_to_from_data(data: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    parse_quantity(v.get("to")?.as_str()?)
}

/// Alchemy: "... this block range should work: [0x1b4, 0x2a0]".
fn suggested_to_from_message(message: &str) -> Option<u64> {
    let inside = message.rsplit_once('[')?.1.split_once(']')?.0;
    let (_, to) = inside.split_once(',')?;
    parse_quantity(to.trim())
}

fn parse_quantity(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The block span of the next `eth_getLogs`: grows on success, shrinks on range errors.
#[derive(Debug, Clone)]
pub struct RangeSizer {
    size: u64,
    max: u64,
}

impl RangeSizer {
    /// Starts at `initial` blocks, never above `max`.
    pub fn new(initial: u64, max: u64) -> Self {
        let max = max.max(1);
        Self {
            size: initial.clamp(1, max),
            max,
        }
    }

    /// Blocks in the next request.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A request succeeded: try twice as many blocks next time.
    pub fn succeeded(&mut self) {
        self.size = self.size.saturating_mul(2).min(self.max);
    }

    /// `from..=to` was too large. Shrinks strictly, to the suggestion when it is
    /// inside the range, else by half.
    ///
    /// # Errors
    /// When a single block is already too large: nothing smaller can be asked.
    pub fn too_large(&mut self, from: u64, to: u64, suggested_to: Option<u64>) -> Result<(), String> {
        let span = to.saturating_sub(from) + 1;
        if span <= 1 {
            return Err(format!(
                "the provider refuses eth_getLogs even for the single block {from}"
            ));
        }
        self.size = match suggested_to {
            Some(s) if s >= from && s < to => s - from + 1,
            _ => span / 2,
        };
        Ok(())
    }
}

/// Exponential backoff with full jitter, for `attempt` = 0, 1, 2, ...
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let jitter: f64 = rand::random();
    exp.mul_f64(0.5 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::rpc::json_rpc::ErrorPayload;
    use std::borrow::Cow;

    fn resp(code: i64, message: &str, data: Option<&str>) -> TransportError {
        RpcError::ErrorResp(ErrorPayload {
            code,
            message: Cow::Owned(message.to_owned()),
            data: data.map(|d| serde_json::value::RawValue::from_string(d.to_owned()).unwrap()),
        })
    }

    #[test]
    fn infura_suggestion_from_data() {
        let e = resp(
            -32005,
            "query returned more than 10000 results",
            Some(r#"{"from":"0x10","to":"0x1f","limit":10000}"#),
        );
        assert_eq!(
            classify(&e),
            Failure::TooLarge {
                suggested_to: Some(0x1f)
            }
        );
    }

    #[test]
    fn alchemy_suggestion_from_message() {
        let e = resp(
            -32602,
            "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range \
             and no limit on the response size, or you can request any block range with a cap of 10K logs \
             in the response. Based on your parameters, this block range should work: [0x1b4, 0x2a0]",
            None,
        );
        assert_eq!(
            classify(&e),
            Failure::TooLarge {
                suggested_to: Some(0x2a0)
            }
        );
    }

    #[test]
    fn plain_range_errors_and_rate_limits() {
        assert_eq!(
            classify(&resp(-32000, "block range is too wide", None)),
            Failure::TooLarge { suggested_to: None }
        );
        assert!(matches!(
            classify(&resp(-32005, "limit exceeded", None)),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&resp(429, "Too Many Requests", None)),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&resp(-32601, "method not found", None)),
            Failure::Fatal(_)
        ));
        let gone = RpcError::Transport(alloy::transports::TransportErrorKind::BackendGone);
        assert!(matches!(classify(&gone), Failure::Disconnected(_)));
    }

    #[test]
    fn sizer_grows_and_shrinks_strictly() {
        let mut s = RangeSizer::new(100, 1000);
        s.succeeded();
        assert_eq!(s.size(), 200);
        for _ in 0..10 {
            s.succeeded();
        }
        assert_eq!(s.size(), 1000);
        s.too_large(1, 1000, Some(300)).unwrap();
        assert_eq!(s.size(), 300);
        s.too_large(1, 300, None).unwrap();
        assert_eq!(s.size(), 150);
        // A suggestion that is not smaller than the range is ignored: still halves.
        s.too_large(1, 150, Some(500)).unwrap();
        assert_eq!(s.size(), 75);
        assert!(s.too_large(7, 7, None).is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            assert!(d <= Duration::from_secs(5) && d >= Duration::from_millis(50));
        }
    }
}
