//! One connection: reading, dispatching and writing answers.
//!
//! A connection reads bytes into a buffer and cuts complete JSON values off its front
//! (geth's IPC framing: newline optional). Each value is dispatched through the
//! jsonrpsee [`Methods`](jsonrpsee::Methods) with this connection's id and sink, the way reth's IPC server
//! does. Requests of one connection run concurrently, up to [`MAX_IN_FLIGHT`], as
//! geth's do: a pipelining client gets as many engine callers (and shares as many
//! group commits) as it has requests under way, and answers come back as they
//! complete, matched by id. Sync methods (in-memory reads) answer at once; a batch is
//! one unit under way, its items in order; a notification finishes before the next
//! value is read. Answers and subscription notifications go through one queue to a
//! writer task that writes what is queued in one write with a timeout, so a client
//! that stops reading only stalls itself. Malformed JSON, an oversized request, a dead
//! writer or the idle timeout (nothing under way, nothing read) close the connection,
//! after answering what is under way and an error answer where there is one to give.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use jsonrpsee::core::id_providers::RandomIntegerIdProvider;
use jsonrpsee::types::error::reject_too_many_subscriptions;
use jsonrpsee::types::{ErrorCode, ErrorObject, Id, InvalidRequest, Notification, Request};
use jsonrpsee::{
    BoundedSubscriptions, ConnectionId, Extensions, MethodCallback, MethodResponse, MethodSink,
    SubscriptionState,
};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;

use super::codes::{REQUEST_TOO_LARGE, invalid_request, parse_error};
use super::frame::{Frame, next_frame};
use super::server::Shared;

/// How long writing one answer may take before the client counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers and notifications queued per connection before senders wait.
const OUT_QUEUE: usize = 64;
/// Requests one connection may have under way at once; reading waits beyond.
const MAX_IN_FLIGHT: usize = 64;
/// How many bytes of queued answers the writer gathers into one write.
const WRITE_BATCH: usize = 64 << 10;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: u32 = 16;
/// Largest single answer.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How much to read at a time.
const READ_CHUNK: usize = 64 << 10;

/// What dispatching one request gave.
enum Call {
    /// The answer, or `None` when there is nothing to write.
    Done(Option<MethodResponse>),
    /// An async method under way; the metrics hook runs when it ends.
    Running(BoxFuture<'static, MethodResponse>),
    /// A notification under way: it gets no answer.
    Quiet(BoxFuture<'static, ()>),
    /// A subscription: it needs the connection's sink and subscription permits.
    Subscribe,
}

/// An answer still being computed (`None`: nothing to write, as for a batch of
/// notifications).
type Pending = BoxFuture<'static, Option<Box<RawValue>>>;

impl Shared {
    fn hook(&self, method: &str, code: i32, elapsed: Duration) {
        if let Some(h) = &self.state.on_request {
            h(method, code, elapsed);
        }
    }

    /// Reports a method's answer to the metrics hook.
    fn hook_response(&self, method: &str, resp: &MethodResponse, start: Instant) {
        self.hook(method, resp.as_error_code().unwrap_or(0), start.elapsed());
    }

    /// Starts one request. Sync methods (in-memory reads such as `budget_check`)
    /// answer here; async ones (durable writes) come back as a future.
    fn dispatch(self: &Arc<Self>, conn: ConnectionId, text: &str, in_batch: bool) -> Call {
        let Ok(req) = serde_json::from_str::<Request>(text) else {
            return self.not_a_request(conn, text);
        };
        let start = Instant::now();
        let method = req.method_name();
        let id = req.id().into_owned();
        let params = req.params().into_owned();
        let ext = Extensions::new();
        let resp = match self.methods.method(method) {
            None => MethodResponse::error(id, ErrorObject::from(ErrorCode::MethodNotFound)),
            Some(MethodCallback::Sync(cb)) => cb(id, params, MAX_RESPONSE_BYTES, ext),
            Some(MethodCallback::Unsubscription(cb)) => cb(id, params, conn, MAX_RESPONSE_BYTES, ext),
            Some(MethodCallback::Async(cb)) => {
                let fut = cb(id, params, conn, MAX_RESPONSE_BYTES, ext);
                let shared = self.clone();
                let method = method.to_owned();
                return Call::Running(Box::pin(async move {
                    let resp = fut.await;
                    shared.hook_response(&method, &resp, start);
                    resp
                }));
            }
            Some(MethodCallback::Subscription(_)) if in_batch => {
                MethodResponse::error(id, invalid_request("subscriptions cannot be batched"))
            }
            Some(MethodCallback::Subscription(_)) => return Call::Subscribe,
        };
        self.hook_response(method, &resp, start);
        Call::Done(Some(resp))
    }

    /// A notification (executed, never answered) or an invalid request.
    fn not_a_request(self: &Arc<Self>, conn: ConnectionId, text: &str) -> Call {
        if let Ok(n) = serde_json::from_str::<Notification<Option<&RawValue>>>(text) {
            // A subscription without an id could never be addressed: skipped.
            if matches!(
                self.methods.method(&n.method),
                Some(MethodCallback::Subscription(_))
            ) {
                return Call::Done(None);
            }
            let req =
                serde_json::json!({"jsonrpc": "2.0", "id": null, "method": n.method, "params": n.params});
            return match self.dispatch(conn, &req.to_string(), true) {
                Call::Running(f) => Call::Quiet(Box::pin(async move {
                    f.await;
                })),
                _ => Call::Done(None),
            };
        }
        let id = serde_json::from_str::<InvalidRequest>(text).map_or(Id::Null, |r| r.id);
        self.hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
        Call::Done(Some(MethodResponse::error(
            id,
            ErrorObject::from(ErrorCode::InvalidRequest),
        )))
    }
}

/// One client.
pub(super) struct Connection {
    shared: Arc<Shared>,
    id: ConnectionId,
    stop: watch::Receiver<bool>,
    /// Answers and notifications, in the order the writer writes them.
    out: mpsc::Sender<Box<RawValue>>,
    out_rx: Option<mpsc::Receiver<Box<RawValue>>>,
    subscriptions: BoundedSubscriptions,
    /// Set once a subscription is accepted: a subscriber may stay silent.
    subscribed: bool,
}

/// What one value read off the socket gave.
enum Handled {
    /// Answered (or nothing to answer).
    Now(Option<Box<RawValue>>),
    /// Under way.
    Later(Pending),
    /// Not UTF-8: the connection ends.
    Invalid,
}

impl Connection {
    pub(super) fn new(shared: Arc<Shared>, id: ConnectionId, stop: watch::Receiver<bool>) -> Self {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        Self {
            shared,
            id,
            stop,
            out,
            out_rx: Some(out_rx),
            subscriptions: BoundedSubscriptions::new(MAX_SUBSCRIPTIONS),
            subscribed: false,
        }
    }

    pub(super) async fn run(mut self, stream: UnixStream) {
        let (mut rd, wr) = stream.into_split();
        let (done_tx, done_rx) = oneshot::channel();
        let rx = self.out_rx.take().expect("run once");
        let writer = tokio::spawn(write_loop(wr, rx, done_rx, self.id));
        self.read_loop(&mut rd).await;
        let _ = done_tx.send(());
        let _ = writer.await;
        tracing::debug!(conn = self.id.0, "admin connection closed");
    }

    /// Reads values and starts each as it arrives, up to [`MAX_IN_FLIGHT`] at once;
    /// answers go out as they complete (clients match them by id).
    async fn read_loop(&mut self, rd: &mut tokio::net::unix::OwnedReadHalf) {
        let max = self.shared.config.max_request_bytes;
        let idle = Duration::from_secs(self.shared.config.idle_timeout_secs);
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut in_flight: FuturesUnordered<Pending> = FuturesUnordered::new();
        loop {
            let mut used = 0;
            let mut fatal = None;
            while in_flight.len() < MAX_IN_FLIGHT {
                match next_frame(&buf[used..], max) {
                    Frame::Value(r) => {
                        let value = used + r.start..used + r.end;
                        used = value.end;
                        match self.handle(&buf[value]).await {
                            Handled::Now(a) => {
                                if !self.answer(a).await {
                                    return;
                                }
                            }
                            Handled::Later(f) => in_flight.push(f),
                            Handled::Invalid => {
                                fatal = Some(Frame::Invalid);
                                break;
                            }
                        }
                    }
                    Frame::Incomplete => break,
                    f => {
                        fatal = Some(f);
                        break;
                    }
                }
            }
            buf.drain(..used);
            if let Some(f) = fatal {
                self.finish(&mut in_flight).await;
                if let Frame::TooLarge = f {
                    tracing::warn!(
                        conn = self.id.0,
                        max,
                        "admin request too large: closing the connection"
                    );
                    self.shared
                        .hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
                    self.send_error(invalid_request(REQUEST_TOO_LARGE)).await;
                } else {
                    self.shared.hook("", ErrorCode::ParseError.code(), Duration::ZERO);
                    self.send_error(parse_error()).await;
                }
                return;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
            }
            let room = in_flight.len() < MAX_IN_FLIGHT;
            if room {
                buf.reserve(READ_CHUNK);
            }
            // Idle means nothing asked and nothing under way.
            let wait = if self.subscribed || !in_flight.is_empty() {
                Duration::MAX
            } else {
                idle
            };
            tokio::select! {
                _ = self.stop.changed() => {
                    self.finish(&mut in_flight).await;
                    return;
                }
                _ = self.out.closed() => return,
                Some(a) = in_flight.next(), if !in_flight.is_empty() => {
                    // Answers completed together (one group commit) go out together.
                    let mut next = Some(a);
                    while let Some(a) = next {
                        if !self.answer(a).await {
                            return;
                        }
                        next = in_flight.next().now_or_never().flatten();
                    }
                }
                r = timeout(wait, rd.read_buf(&mut buf)), if room => match r {
                    Err(_) => {
                        tracing::debug!(conn = self.id.0, "admin connection idle: closing");
                        return;
                    }
                    Ok(Ok(0)) => {
                        self.finish(&mut in_flight).await;
                        return;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(conn = self.id.0, error = %e, "admin connection read failed");
                        return;
                    }
                },
            }
        }
    }

    /// Answers what is under way.
    async fn finish(&self, in_flight: &mut FuturesUnordered<Pending>) {
        while let Some(a) = in_flight.next().await {
            if !self.answer(a).await {
                return;
            }
        }
    }

    /// Queues an answer, if there is one; false once the writer is gone.
    async fn answer(&self, a: Option<Box<RawValue>>) -> bool {
        match a {
            Some(a) => self.out.send(a).await.is_ok(),
            None => true,
        }
    }

    async fn send_error(&self, e: jsonrpsee::types::ErrorObjectOwned) {
        let _ = self
            .out
            .send(MethodResponse::error(Id::Null, e).into_json())
            .await;
    }

    /// Starts one value: a request, a notification or a batch. A notification runs
    /// to its end before the next value is read: its sender cannot wait for an
    /// answer, so this keeps what it sends next ordered after it.
    async fn handle(&mut self, raw: &[u8]) -> Handled {
        let Ok(text) = std::str::from_utf8(raw) else {
            return Handled::Invalid;
        };
        if text.starts_with('[') {
            return self.batch(text);
        }
        match self.shared.dispatch(self.id, text, false) {
            Call::Done(r) => Handled::Now(r.map(MethodResponse::into_json)),
            Call::Running(f) => {
                let mut f = f.map(|r| Some(r.into_json()));
                // One poll now hands the work to the engine in arrival order; the
                // future is polled again (with a waker) once in the set.
                match (&mut f).now_or_never() {
                    Some(a) => Handled::Now(a),
                    None => Handled::Later(Box::pin(f)),
                }
            }
            Call::Quiet(f) => {
                f.await;
                Handled::Now(None)
            }
            Call::Subscribe => Handled::Now(self.subscribe(text).await),
        }
    }

    /// A batch is one unit under way: its items run in order, answered as one array.
    fn batch(&self, text: &str) -> Handled {
        let items: Vec<Box<RawValue>> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(_) => return Handled::Now(Some(MethodResponse::error(Id::Null, parse_error()).into_json())),
        };
        if items.is_empty() {
            self.shared
                .hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
            return Handled::Now(Some(
                MethodResponse::error(Id::Null, invalid_request("empty batch")).into_json(),
            ));
        }
        let shared = self.shared.clone();
        let conn = self.id;
        Handled::Later(Box::pin(async move {
            let mut answers = Vec::with_capacity(items.len());
            for item in &items {
                let answer = match shared.dispatch(conn, item.get(), true) {
                    Call::Done(r) => r,
                    Call::Running(f) => Some(f.await),
                    Call::Quiet(f) => {
                        f.await;
                        None
                    }
                    Call::Subscribe => None, // refused in a batch by `dispatch`
                };
                answers.extend(answer.map(MethodResponse::into_json));
            }
            if answers.is_empty() {
                return None;
            }
            let joined = answers.iter().map(|a| a.get()).collect::<Vec<_>>().join(",");
            RawValue::from_string(format!("[{joined}]")).ok()
        }))
    }

    /// Accepts a subscription; its answer and notifications go through the sink.
    async fn subscribe(&mut self, text: &str) -> Option<Box<RawValue>> {
        let req: Request = serde_json::from_str(text).ok()?;
        let start = Instant::now();
        let Some(MethodCallback::Subscription(cb)) = self.shared.methods.method(req.method_name()) else {
            return None;
        };
        let id = req.id().into_owned();
        let params = req.params().into_owned();
        let resp = match self.subscriptions.acquire() {
            None => MethodResponse::error(id, reject_too_many_subscriptions(MAX_SUBSCRIPTIONS)),
            Some(permit) => {
                let state = SubscriptionState {
                    conn_id: self.id,
                    id_provider: &RandomIntegerIdProvider,
                    subscription_permit: permit,
                };
                let sink = MethodSink::new(self.out.clone());
                let r = cb(id, params, sink, state, Extensions::new()).await;
                self.subscribed |= r.is_success();
                self.shared.hook_response(req.method_name(), &r, start);
                return None;
            }
        };
        self.shared.hook_response(req.method_name(), &resp, start);
        Some(resp.into_json())
    }
}

/// Writes answers, each followed by a newline, until the reader is done (then
/// flushes what is queued) or a write fails or times out. Answers queued together
/// go out in one write.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Box<RawValue>>,
    mut done: oneshot::Receiver<()>,
    conn: ConnectionId,
) {
    async fn write(wr: &mut OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
        timeout(WRITE_TIMEOUT, wr.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }
    fn push(out: &mut Vec<u8>, msg: &RawValue) {
        out.extend_from_slice(msg.get().as_bytes());
        out.push(b'\n');
    }
    let mut out = Vec::with_capacity(WRITE_BATCH);
    loop {
        let last = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => {
                    push(&mut out, &m);
                    false
                }
                None => true,
            },
            _ = &mut done => true,
        };
        // After the reader is done nothing more comes: take all that is queued.
        while last || out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => push(&mut out, &m),
                Err(_) => break,
            }
            if last && out.len() >= WRITE_BATCH {
                if write(&mut wr, &out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if !out.is_empty()
            && let Err(e) = write(&mut wr, &out).await
        {
            tracing::debug!(conn = conn.0, error = %e, "admin write failed: closing");
            return;
        }
        if last {
            break;
        }
        out.clear();
        if out.capacity() > 4 * WRITE_BATCH {
            out = Vec::with_capacity(WRITE_BATCH);
        }
    }
    let _ = timeout(WRITE_TIMEOUT, wr.shutdown()).await;
}
