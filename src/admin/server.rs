//! The socket: binding it safely (directory checks, stale socket removal, mode and
//! group set before it is visible), accepting within limits (a semaphore on the
//! number of connections, the peer-uid allowlist), and serving each connection on a
//! task of its own (`conn`).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::{ConnectionId, Methods};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::config::{AdminConfig, SocketGroup};
use super::conn::Connection;
use super::{AdminState, methods};

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

/// What every connection shares.
pub(super) struct Shared {
    pub(super) methods: Methods,
    pub(super) state: Arc<AdminState>,
    pub(super) config: AdminConfig,
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
