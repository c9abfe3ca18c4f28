//! The admin socket's settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A group for the socket file: a name from `/etc/group` or a numeric gid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SocketGroup {
    /// A numeric gid.
    Gid(u32),
    /// A group name.
    Name(String),
}

/// Where and how the admin socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Path of the Unix socket.
    pub socket_path: PathBuf,
    /// Permission bits of the socket file (0o600: only the daemon's user).
    pub socket_mode: u32,
    /// Group to give the socket file, so that mode 0o660 admits that group.
    pub socket_group: Option<SocketGroup>,
    /// Peer uids allowed to connect (SO_PEERCRED); empty admits any uid the file
    /// mode admits.
    pub allowed_uids: Vec<u32>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Largest request (one JSON value, a batch included), in bytes.
    pub max_request_bytes: usize,
    /// A connection that sends nothing for this long is closed (unless it holds a
    /// subscription).
    pub idle_timeout_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from("/run/budgetd/admin.sock"),
            socket_mode: 0o600,
            socket_group: None,
            allowed_uids: Vec::new(),
            max_connections: 256,
            max_request_bytes: 1 << 20,
            idle_timeout_secs: 300,
        }
    }
}
