//! A fault-injecting JSON-RPC proxy for websocket clients.
//!
//! Each client connection gets its own upstream websocket; text frames pass both ways. Requests
//! (single or batched) are inspected against a shared, changeable [`Faults`] policy, which can answer
//! oversized `eth_getLogs` with an Infura, Alchemy or plain "too many results" error, rate limit a
//! fraction of requests, swallow a fraction without an answer, delay them, refuse new connections,
//! and ([`Proxy::disconnect_all`]) drop every connection. Subscription notifications pass through untouched. [`Stats`] counts what was seen.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// How an `eth_getLogs` over more than `max_range` blocks is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RangeStyle {
    /// `-32005` "query returned more than 10000 results" with `data: {from, to, limit}`.
    #[default]
    Infura,
    /// `-32602` "Log response size exceeded. ... this block range should work: [0xFROM, 0xTO]".
    Alchemy,
    /// `-32000` "query returned more than 10000 results", no suggestion.
    Plain,
}

/// How a rate-limited request is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateStyle {
    /// `429` "Too Many Requests".
    #[default]
    Http429,
    /// `-32005` "limit exceeded".
    LimitExceeded,
}

/// The fault policy; change it through [`Proxy::faults`] at any time.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Reject `eth_getLogs` spanning more blocks than this (numeric from/to only).
    pub max_range: Option<u64>,
    pub range_style: RangeStyle,
    /// Fraction (0..=1) of requests answered with a rate-limit error.
    pub rate_limit: f64,
    pub rate_style: RateStyle,
    /// Requests (and so their responses) are held this long before being handled.
    pub delay: Duration,
    /// Close new connections right after accepting them.
    pub refuse: bool,
    /// Fraction (0..=1) of single requests swallowed: never forwarded, never answered
    /// (subscribe and unsubscribe excepted).
    pub drop: f64,
}

/// What happened to one `eth_getLogs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    TooLarge,
    RateLimited,
}

/// One `eth_getLogs` seen; `from`/`to` are `None` for tags, a missing field or a `blockHash` filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogs {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub outcome: Outcome,
}

/// What the proxy has seen since it started.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests per method (batch members counted one by one).
    pub methods: HashMap<String, u64>,
    /// Every `eth_getLogs`, in arrival order.
    pub get_logs: Vec<GetLogs>,
    /// Client connections accepted (refused ones included).
    pub connections: u64,
    /// Requests swallowed by [`Faults::drop`].
    pub dropped: u64,
}

impl Stats {
    pub fn count(&self, method: &str) -> u64 {
        self.methods.get(method).copied().unwrap_or(0)
    }

    /// `eth_getLogs` ranges sent again after being rejected as too large (should be empty).
    pub fn resent_oversized(&self) -> Vec<(Option<u64>, Option<u64>)> {
        let mut rejected = HashSet::new();
        let mut resent = Vec::new();
        for g in &self.get_logs {
            if rejected.contains(&(g.from, g.to)) {
                resent.push((g.from, g.to));
            }
            if g.outcome == Outcome::TooLarge {
                rejected.insert((g.from, g.to));
            }
        }
        resent
    }
}

struct Shared {
    upstream: String,
    faults: Arc<Mutex<Faults>>,
    stats: Mutex<Stats>,
    /// Bumped by `disconnect_all` (also called on drop): every connection task then ends.
    kill: watch::Sender<u64>,
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) in front of `upstream` (a `ws://` url).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            faults: Arc::default(),
            stats: Mutex::default(),
            kill: watch::channel(0).0,
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_shared.stats.lock().unwrap().connections += 1;
                if !accept_shared.faults.lock().unwrap().refuse {
                    tokio::spawn(serve(stream, accept_shared.clone()));
                }
            }
        });
        Self { port, shared, accept }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The live policy: `proxy.faults().lock().unwrap().max_range = Some(100)`.
    pub fn faults(&self) -> Arc<Mutex<Faults>> {
        self.shared.faults.clone()
    }

    /// Replaces the whole policy.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Closes every open connection now (new ones are still accepted unless `refuse` is set).
    pub fn disconnect_all(&self) {
        self.shared.kill.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.disconnect_all();
    }
}

/// A batch partly answered by the proxy: its forwarded ids, and the answers to merge into the reply.
struct PendingBatch {
    ids: HashSet<String>,
    injected: Vec<Value>,
}

/// Relays one client connection until either side closes or `disconnect_all` is called.
async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut kill = shared.kill.subscribe();
    let Ok(mut client) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(shared.upstream.as_str()).await else {
        let _ = client.close(None).await;
        return;
    };
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    // Delayed messages come back through these channels.
    let (to_client, mut to_client_rx) = mpsc::unbounded_channel::<Message>();
    let (to_up, mut to_up_rx) = mpsc::unbounded_channel::<Message>();
    let mut batches: Vec<PendingBatch> = Vec::new();
    loop {
        let sent = tokio::select! {
            _ = kill.changed() => break,
            msg = client_rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let (forward, answer) = inspect(&text, &shared, &mut batches);
                    let delay = shared.faults.lock().unwrap().delay;
                    for (msg, tx) in [(forward, &to_up), (answer, &to_client)] {
                        if let Some(msg) = msg {
                            send_later(tx.clone(), Message::text(msg), delay);
                        }
                    }
                    Ok(())
                }
                Some(Ok(Message::Binary(data))) => up_tx.send(Message::Binary(data)).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => Ok(()),
            },
            msg = up_rx.next() => match msg {
                Some(Ok(Message::Text(text))) => client_tx.send(Message::text(merge(&text, &mut batches))).await,
                Some(Ok(Message::Binary(data))) => client_tx.send(Message::Binary(data)).await,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => Ok(()),
            },
            Some(msg) = to_client_rx.recv() => client_tx.send(msg).await,
            Some(msg) = to_up_rx.recv() => up_tx.send(msg).await,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = client_tx.send(Message::Close(None)).await;
    let _ = up_tx.send(Message::Close(None)).await;
}

fn send_later(tx: mpsc::UnboundedSender<Message>, msg: Message, delay: Duration) {
    if delay.is_zero() {
        let _ = tx.send(msg);
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(msg);
        });
    }
}

/// Splits a client frame into what goes upstream and what the proxy answers itself.
fn inspect(text: &str, shared: &Shared, batches: &mut Vec<PendingBatch>) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return (Some(text.to_string()), None);
    };
    let Value::Array(requests) = value else {
        if swallowed(&value, shared) {
            return (None, None);
        }
        return match injected_error(&value, shared) {
            Some(answer) => (None, Some(answer.to_string())),
            None => (Some(text.to_string()), None),
        };
    };
    let (mut forward, mut injected) = (Vec::new(), Vec::new());
    for request in requests {
        match injected_error(&request, shared) {
            Some(answer) => injected.push(answer),
            None => forward.push(request),
        }
    }
    match (forward.is_empty(), injected.is_empty()) {
        (true, _) => (None, Some(Value::Array(injected).to_string())),
        (false, true) => (Some(text.to_string()), None),
        (false, false) => {
            let ids = forward.iter().map(|r| r["id"].to_string()).collect();
            batches.push(PendingBatch { ids, injected });
            (Some(Value::Array(forward).to_string()), None)
        }
    }
}

/// Adds the proxy's own answers to the upstream reply of a partly answered batch.
fn merge(text: &str, batches: &mut Vec<PendingBatch>) -> String {
    let Ok(Value::Array(mut replies)) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    let ids: HashSet<String> = replies.iter().map(|r| r["id"].to_string()).collect();
    match batches.iter().position(|b| b.ids == ids) {
        Some(i) => {
            replies.extend(batches.remove(i).injected);
            Value::Array(replies).to_string()
        }
        None => text.to_string(),
    }
}

/// Whether the policy swallows this single request (counted in [`Stats::dropped`]).
fn swallowed(request: &Value, shared: &Shared) -> bool {
    let method = request["method"].as_str().unwrap_or("");
    let rate = shared.faults.lock().unwrap().drop;
    if method.ends_with("subscribe") || !rand::random_bool(rate.clamp(0.0, 1.0)) {
        return false;
    }
    shared.stats.lock().unwrap().dropped += 1;
    true
}

/// Counts one request and, if the policy says so, returns the error response to answer it with.
fn injected_error(request: &Value, shared: &Shared) -> Option<Value> {
    let method = request["method"].as_str()?;
    let faults = shared.faults.lock().unwrap().clone();
    let mut stats = shared.stats.lock().unwrap();
    *stats.methods.entry(method.to_string()).or_default() += 1;
    let id = request.get("id")?;
    let rate_limited = rand::random_bool(faults.rate_limit.clamp(0.0, 1.0));
    let mut error = rate_limited.then(|| match faults.rate_style {
        RateStyle::Http429 => json!({"code": 429, "message": "Too Many Requests"}),
        RateStyle::LimitExceeded => json!({"code": -32005, "message": "limit exceeded"}),
    });
    if method == "eth_getLogs" {
        let filter = &request["params"][0];
        let (from, to) = (quantity(&filter["fromBlock"]), quantity(&filter["toBlock"]));
        let too_large = match (from, to, faults.max_range) {
            (Some(from), Some(to), Some(max)) if to.saturating_sub(from) + 1 > max => {
                Some((from, from + max.saturating_sub(1)))
            }
            _ => None,
        };
        let outcome = match (rate_limited, too_large) {
            (true, _) => Outcome::RateLimited,
            (false, Some(_)) => Outcome::TooLarge,
            (false, None) => Outcome::Passed,
        };
        stats.get_logs.push(GetLogs { from, to, outcome });
        if let (None, Some((from, to))) = (&error, too_large) {
            error = Some(range_error(faults.range_style, from, to));
        }
    }
    error.map(|error| json!({"jsonrpc": "2.0", "id": id, "error": error}))
}

fn range_error(style: RangeStyle, from: u64, to: u64) -> Value {
    const TOO_MANY: &str = "query returned more than 10000 results";
    match style {
        RangeStyle::Infura => json!({
            "code": -32005,
            "message": TOO_MANY,
            "data": {"from": format!("{from:#x}"), "to": format!("{to:#x}"), "limit": 10000},
        }),
        RangeStyle::Alchemy => json!({
            "code": -32602,
            "message": format!(
                "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range \
                 and no limit on the response size, or you can request any block range with a cap of 10K \
                 logs in the response. Based on your parameters, this block range should work: \
                 [{from:#x}, {to:#x}]"
            ),
        }),
        RangeStyle::Plain => json!({"code": -32000, "message": TOO_MANY}),
    }
}

/// A hex block quantity; `None` for tags ("latest", ...) or anything else.
fn quantity(value: &Value) -> Option<u64> {
    u64::from_str_radix(value.as_str()?.strip_prefix("0x")?, 16).ok()
}
