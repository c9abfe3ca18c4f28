//! The socket: binding it safely, accepting within limits, and serving each
//! connection on a task of its own.
//!
//! A connection reads bytes into a buffer and cuts complete JSON values off its front
//! (geth's IPC framing: newline optional). Each value is dispatched through the
//! jsonrpsee [`Methods`] with this connection's id and sink, the way reth's IPC server
//! does; answers and subscription notifications go through one queue to a writer
//! task that writes each with a timeout, so a client that stops reading only stalls
//! itself. Malformed JSON, an oversized request, a dead writer or the idle timeout
//! close the connection (after an error answer where there is one to give).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonrpsee::core::id_providers::RandomIntegerIdProvider;
use jsonrpsee::types::error::reject_too_many_subscriptions;
use jsonrpsee::types::{ErrorCode, ErrorObject, Id, InvalidRequest, Notification, Request};
use jsonrpsee::{
    BoundedSubscriptions, ConnectionId, Extensions, MethodCallback, MethodResponse, MethodSink, Methods,
    SubscriptionState,
};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::codes::{REQUEST_TOO_LARGE, invalid_request, parse_error};
use super::config::{AdminConfig, SocketGroup};
use super::frame::{Frame, next_frame};
use super::{AdminState, methods};

/// How long writing one answer may take before the client counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers and notifications queued per connection before senders wait.
const OUT_QUEUE: usize = 64;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: u32 = 16;
/// Largest single answer.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How much to read at a time.
const READ_CHUNK: usize = 64 << 10;

/// Why the admin socket could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket's directory is missing or unsafe; the message says what to fix.
    #[error("admin socket directory `{dir}`: {problem}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Another process answers on the socket.
    #[error("admin socket `{0}` is in use by a running process: stop it or choose another socket_path")]
    InUse(PathBuf),
    /// Something else than a socket sits at the path.
    #[error("`{0}` exists and is not a socket: remove it or choose another socket_path")]
    NotASocket(PathBuf),
    /// The configured group does not exist.
    #[error("admin socket group `{0}` not found in /etc/group")]
    UnknownGroup(String),
    /// A settings value is unusable.
    #[error("invalid admin config: {0}")]
    Config(String),
    /// A system call failed.
    #[error("failed to {action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AdminError {
    let path = path.to_owned();
    move |source| AdminError::Io { action, path, source }
}

/// Binds, serves until `shutdown` resolves, then removes the socket file.
///
/// # Errors
/// As [`AdminServer::bind`].
pub async fn serve(config: AdminConfig, state: AdminState, shutdown: impl Future) -> Result<(), AdminError> {
    AdminServer::bind(config, state)?.run(shutdown).await;
    Ok(())
}

/// A bound admin socket, ready to accept (clients may connect once `bind` returns).
pub struct AdminServer {
    listener: UnixListener,
    socket: SocketFile,
    shared: Arc<Shared>,
}

struct Shared {
    methods: Methods,
    state: Arc<AdminState>,
    config: AdminConfig,
}

/// Removes the socket file when the server goes away.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl AdminServer {
    /// Checks the directory, removes a stale socket, and binds with the configured
    /// mode and group set before the socket appears at its path. Needs a tokio runtime.
    ///
    /// # Errors
    /// An unsafe or missing directory, a live socket at the path, a non-socket file
    /// there, an unknown group, or a failed system call, each naming what to fix.
    pub fn bind(config: AdminConfig, state: AdminState) -> Result<Self, AdminError> {
        if config.max_connections == 0 || config.max_request_bytes == 0 || config.idle_timeout_secs == 0 {
            return Err(AdminError::Config(
                "max_connections, max_request_bytes and idle_timeout_secs must be positive".into(),
            ));
        }
        let path = config.socket_path.clone();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        check_dir(&dir)?;
        remove_stale(&path)?;
        let gid = config.socket_group.as_ref().map(resolve_group).transpose()?;
        let name = path.file_name().ok_or_else(|| {
            AdminError::Config(format!("socket_path `{}` has no file name", path.display()))
        })?;
        // Bound under a temporary name and renamed once its mode is set, so nobody can
        // connect through a moment of default permissions.
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let tmp_guard = SocketFile(tmp.clone());
        let listener = UnixListener::bind(&tmp).map_err(io("bind", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(io("set the mode of", &tmp))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(io("chown", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("move the socket to", &path))?;
        std::mem::forget(tmp_guard);
        tracing::info!(socket = %path.display(), mode = format!("{:o}", config.socket_mode), "admin socket listening");
        let state = Arc::new(state);
        Ok(Self {
            listener,
            socket: SocketFile(path),
            shared: Arc::new(Shared {
                methods: methods::module(state.clone()).into(),
                state,
                config,
            }),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.0
    }

    /// Accepts connections until `shutdown` resolves, then tells every connection to
    /// stop, waits for them, and removes the socket file.
    pub async fn run(self, shutdown: impl Future) {
        let mut shutdown = pin!(shutdown);
        let (stop_tx, stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let mut tasks = JoinSet::new();
        let mut next_id = 0usize;
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while tasks.try_join_next().is_some() {}
            if !self.allowed(&stream) {
                continue;
            }
            next_id += 1;
            let conn = Connection::new(self.shared.clone(), ConnectionId(next_id), stop_rx.clone());
            tasks.spawn(async move {
                conn.run(stream).await;
                drop(permit);
            });
        }
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!(socket = %self.path().display(), "admin socket closed");
    }

    fn allowed(&self, stream: &UnixStream) -> bool {
        let allowed = &self.shared.config.allowed_uids;
        if allowed.is_empty() {
            return true;
        }
        match stream.peer_cred() {
            Ok(cred) if allowed.contains(&cred.uid()) => true,
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "admin connection refused: uid not in allowed_uids");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: cannot read peer credentials");
                false
            }
        }
    }
}

fn check_dir(dir: &Path) -> Result<(), AdminError> {
    let problem = |p: String| AdminError::Directory {
        dir: dir.to_owned(),
        problem: p,
    };
    let meta = std::fs::metadata(dir).map_err(|e| problem(format!("{e}: create it first")))?;
    if !meta.is_dir() {
        return Err(problem(
            "not a directory: point socket_path into a directory".into(),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(problem(format!(
            "world-writable without the sticky bit (mode {:o}): run `chmod o-w` on it or use another directory",
            mode & 0o7777
        )));
    }
    Ok(())
}

fn remove_stale(path: &Path) -> Result<(), AdminError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", path)(e)),
        Ok(m) if !m.file_type().is_socket() => Err(AdminError::NotASocket(path.to_owned())),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse(path.to_owned()));
            }
            tracing::info!(socket = %path.display(), "removing stale admin socket");
            std::fs::remove_file(path).map_err(io("remove the stale socket", path))
        }
    }
}

fn resolve_group(group: &SocketGroup) -> Result<u32, AdminError> {
    let name = match group {
        SocketGroup::Gid(gid) => return Ok(*gid),
        SocketGroup::Name(n) => n,
    };
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(io("read", Path::new("/etc/group")))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| AdminError::UnknownGroup(name.clone()))
}

/// One client.
struct Connection {
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

/// Whether to keep reading after a value.
enum Next {
    Continue,
    Close,
}

impl Connection {
    fn new(shared: Arc<Shared>, id: ConnectionId, stop: watch::Receiver<bool>) -> Self {
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

    async fn run(mut self, stream: UnixStream) {
        let (mut rd, wr) = stream.into_split();
        let (done_tx, done_rx) = oneshot::channel();
        let rx = self.out_rx.take().expect("run once");
        let writer = tokio::spawn(write_loop(wr, rx, done_rx, self.id));
        self.read_loop(&mut rd).await;
        let _ = done_tx.send(());
        let _ = writer.await;
        tracing::debug!(conn = self.id.0, "admin connection closed");
    }

    async fn read_loop(&mut self, rd: &mut tokio::net::unix::OwnedReadHalf) {
        let max = self.shared.config.max_request_bytes;
        let idle = Duration::from_secs(self.shared.config.idle_timeout_secs);
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        loop {
            loop {
                match next_frame(&buf, max) {
                    Frame::Value(r) => {
                        let next = self.handle(&buf[r.clone()]).await;
                        buf.drain(..r.end);
                        if let Next::Close = next {
                            return;
                        }
                    }
                    Frame::Incomplete => break,
                    Frame::Invalid => {
                        self.hook("", ErrorCode::ParseError.code(), Duration::ZERO);
                        self.send_error(parse_error()).await;
                        return;
                    }
                    Frame::TooLarge => {
                        tracing::warn!(
                            conn = self.id.0,
                            max,
                            "admin request too large: closing the connection"
                        );
                        self.hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
                        self.send_error(invalid_request(REQUEST_TOO_LARGE)).await;
                        return;
                    }
                }
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
            }
            buf.reserve(READ_CHUNK);
            let wait = if self.subscribed { Duration::MAX } else { idle };
            tokio::select! {
                _ = self.stop.changed() => return,
                _ = self.out.closed() => return,
                r = timeout(wait, rd.read_buf(&mut buf)) => match r {
                    Err(_) => {
                        tracing::debug!(conn = self.id.0, "admin connection idle: closing");
                        return;
                    }
                    Ok(Ok(0)) => return,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(conn = self.id.0, error = %e, "admin connection read failed");
                        return;
                    }
                },
            }
        }
    }

    async fn send_error(&self, e: jsonrpsee::types::ErrorObjectOwned) {
        let _ = self
            .out
            .send(MethodResponse::error(Id::Null, e).into_json())
            .await;
    }

    fn hook(&self, method: &str, code: i32, elapsed: Duration) {
        if let Some(h) = &self.shared.state.on_request {
            h(method, code, elapsed);
        }
    }

    /// Answers one value: a request, a notification (no answer) or a batch.
    async fn handle(&mut self, raw: &[u8]) -> Next {
        let Ok(text) = std::str::from_utf8(raw) else {
            self.send_error(parse_error()).await;
            return Next::Close;
        };
        let answer = if text.starts_with('[') {
            self.batch(text).await
        } else {
            self.call(text, false).await.map(MethodResponse::into_json)
        };
        if let Some(a) = answer
            && self.out.send(a).await.is_err()
        {
            return Next::Close;
        }
        Next::Continue
    }

    async fn batch(&mut self, text: &str) -> Option<Box<RawValue>> {
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(_) => return Some(MethodResponse::error(Id::Null, parse_error()).into_json()),
        };
        if items.is_empty() {
            self.hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
            return Some(MethodResponse::error(Id::Null, invalid_request("empty batch")).into_json());
        }
        let mut answers = Vec::with_capacity(items.len());
        for item in items {
            if let Some(r) = self.call(item.get(), true).await {
                answers.push(r.into_json());
            }
        }
        if answers.is_empty() {
            return None;
        }
        let joined = answers.iter().map(|a| a.get()).collect::<Vec<_>>().join(",");
        RawValue::from_string(format!("[{joined}]")).ok()
    }

    /// Dispatches one request; `None` when nothing is to be written here (a
    /// notification, or a subscription, whose answer goes through the sink).
    async fn call(&mut self, text: &str, in_batch: bool) -> Option<MethodResponse> {
        let req: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(_) => {
                if let Ok(n) = serde_json::from_str::<Notification<Option<&RawValue>>>(text) {
                    // A notification is executed like a request; it gets no answer. A
                    // subscription without an id could never be addressed: skipped.
                    if !matches!(
                        self.shared.methods.method(&n.method),
                        Some(MethodCallback::Subscription(_))
                    ) {
                        let req = serde_json::json!({"jsonrpc": "2.0", "id": null, "method": n.method, "params": n.params});
                        let _ = Box::pin(self.call(&req.to_string(), true)).await;
                    }
                    return None;
                }
                let id = serde_json::from_str::<InvalidRequest>(text).map_or(Id::Null, |r| r.id);
                self.hook("", ErrorCode::InvalidRequest.code(), Duration::ZERO);
                return Some(MethodResponse::error(
                    id,
                    ErrorObject::from(ErrorCode::InvalidRequest),
                ));
            }
        };
        let start = Instant::now();
        let method = req.method_name().to_owned();
        let id = req.id().into_owned();
        let params = req.params().into_owned();
        let ext = Extensions::new();
        let (resp, sent) = match self.shared.methods.method(&method) {
            None => (
                MethodResponse::error(id, ErrorObject::from(ErrorCode::MethodNotFound)),
                false,
            ),
            Some(MethodCallback::Sync(cb)) => (cb(id, params, MAX_RESPONSE_BYTES, ext), false),
            Some(MethodCallback::Async(cb)) => {
                (cb(id, params, self.id, MAX_RESPONSE_BYTES, ext).await, false)
            }
            Some(MethodCallback::Unsubscription(cb)) => {
                (cb(id, params, self.id, MAX_RESPONSE_BYTES, ext), false)
            }
            Some(MethodCallback::Subscription(_)) if in_batch => (
                MethodResponse::error(id, invalid_request("subscriptions cannot be batched")),
                false,
            ),
            Some(MethodCallback::Subscription(cb)) => match self.subscriptions.acquire() {
                None => (
                    MethodResponse::error(id, reject_too_many_subscriptions(MAX_SUBSCRIPTIONS)),
                    false,
                ),
                Some(permit) => {
                    let state = SubscriptionState {
                        conn_id: self.id,
                        id_provider: &RandomIntegerIdProvider,
                        subscription_permit: permit,
                    };
                    let sink = MethodSink::new(self.out.clone());
                    let r = cb(id, params, sink, state, ext).await;
                    self.subscribed |= r.is_success();
                    (r, true)
                }
            },
        };
        self.hook(&method, resp.as_error_code().unwrap_or(0), start.elapsed());
        (!sent).then_some(resp)
    }
}

/// Writes answers, each followed by a newline, until the reader is done (then
/// flushes what is queued) or a write fails or times out.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Box<RawValue>>,
    mut done: oneshot::Receiver<()>,
    conn: ConnectionId,
) {
    async fn write(wr: &mut OwnedWriteHalf, msg: &RawValue) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(msg.get().len() + 1);
        line.extend_from_slice(msg.get().as_bytes());
        line.push(b'\n');
        timeout(WRITE_TIMEOUT, wr.write_all(&line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }
    loop {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => {
                    if let Err(e) = write(&mut wr, &m).await {
                        tracing::debug!(conn = conn.0, error = %e, "admin write failed: closing");
                        return;
                    }
                }
                None => break,
            },
            _ = &mut done => {
                while let Ok(m) = rx.try_recv() {
                    if write(&mut wr, &m).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = timeout(WRITE_TIMEOUT, wr.shutdown()).await;
}
