//! A small client for the admin socket: JSON-RPC 2.0 over a Unix socket, framed as
//! geth's IPC (one JSON value per message, answers newline-terminated). Used by
//! `budgetctl`, by `budgetd dev`, and by tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long to wait for an answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach budgetd at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke or answered garbage.
    #[error("admin socket: {0}")]
    Io(String),
    /// budgetd answered with a JSON-RPC error.
    #[error("{message} (code {code})")]
    Rpc {
        /// The error code (see `ErrorKind::code`).
        code: i64,
        /// The message.
        message: String,
        /// `data`, if any.
        data: Option<Value>,
    },
}

/// A connection to the admin socket.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            next_id: 1,
        })
    }

    /// Calls `method` with positional `params` and returns the result.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] when budgetd refused, others when the socket failed.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&req).await?;
        loop {
            let msg = self.next_message().await?;
            if msg.get("id") == Some(&json!(id)) {
                return into_result(msg);
            }
        }
    }

    /// Sends a request without waiting (for subscriptions).
    ///
    /// # Errors
    /// When the socket failed.
    pub async fn send(&mut self, req: &Value) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Io(e.to_string()))?;
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// The next JSON value the daemon sends (an answer or a notification).
    ///
    /// # Errors
    /// When the socket closed or sent something that is not JSON.
    pub async fn next_message(&mut self) -> Result<Value, ClientError> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match values.next() {
                Some(Ok(v)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Some(Err(e)) if !e.is_eof() => return Err(ClientError::Io(format!("bad answer: {e}"))),
                _ => {}
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Io(format!("no answer within {TIMEOUT:?}")))?
                .map_err(|e| ClientError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ClientError::Io("budgetd closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A JSON-RPC answer as a `Result`.
///
/// # Errors
/// [`ClientError::Rpc`] for an error answer.
pub fn into_result(mut msg: Value) -> Result<Value, ClientError> {
    if let Some(err) = msg.get_mut("error") {
        return Err(ClientError::Rpc {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            data: err.get_mut("data").map(Value::take),
        });
    }
    Ok(msg.get_mut("result").map(Value::take).unwrap_or(Value::Null))
}
