//! The admin socket: JSON-RPC 2.0 over a Unix socket, for agents and operators.
//!
//! Framed as geth's IPC: the client writes a stream of JSON values (a request or a
//! batch array), newline optional, so `cast rpc budget_get task-1 --rpc-url
//! /run/budgetd/admin.sock` works; each answer is followed by `"\n"`. Dispatch and
//! params go through a jsonrpsee [`RpcModule`](jsonrpsee::RpcModule); this module
//! only splits the byte stream into values and writes answers back.
//!
//! - [`config`]: [`AdminConfig`], the socket's path, mode, group, allowlist, limits.
//! - [`server`]: binding (directory checks, stale socket removal, mode set before the
//!   socket is visible), connections (peer uid allowlist, size limit, idle timeout,
//!   write timeout, a semaphore on their number) and dispatch.
//! - [`frame`]: cutting complete JSON values off the front of the read buffer.
//! - `conn`: one connection: its requests run concurrently, answers written as they
//!   complete.
//! - [`methods`]: the `budget_*`, `tracker_*`, `session_*`, `chain_limits` and
//!   `sync_status` methods, and the `budget_subscribe` notifications.
//! - [`codes`]: engine errors as stable wire codes; protocol errors.
//!
//! ```no_run
//! # async fn demo(engine: budgetd::budget::Engine) -> Result<(), budgetd::admin::AdminError> {
//! use budgetd::admin::{AdminConfig, AdminState, serve};
//! let state = AdminState::new(engine, budgetd::tracker::OnChainTracker::new(), None);
//! serve(AdminConfig::default(), state, tokio::signal::ctrl_c()).await
//! # }
//! ```

pub mod codes;
pub mod config;
mod conn;
pub mod frame;
pub mod methods;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use config::{AdminConfig, SocketGroup};
pub use server::{AdminError, AdminServer, serve};

use crate::budget::Engine;
use crate::chain::SyncStatus;
use crate::tracker::OnChainTracker;

/// Called once per request with (method, error code or 0, time taken): the metrics
/// hook. Runs on the connection's task: keep it quick.
pub type RequestHook = Arc<dyn Fn(&str, i32, Duration) + Send + Sync>;

/// What the admin methods read and change.
pub struct AdminState {
    /// The budgets.
    pub engine: Engine,
    /// On-chain spend not yet confirmed (`pending`).
    pub tracker: OnChainTracker,
    /// Chain sync's status; `None` when no chain is configured.
    pub sync: Option<watch::Receiver<SyncStatus>>,
    /// The metrics hook.
    pub on_request: Option<RequestHook>,
    /// Node URL and hook addresses for `chain_audit`; `None` without a chain.
    pub audit: Option<(String, Vec<alloy::primitives::Address>)>,
}

impl AdminState {
    /// State without a metrics hook.
    pub fn new(engine: Engine, tracker: OnChainTracker, sync: Option<watch::Receiver<SyncStatus>>) -> Self {
        Self {
            engine,
            tracker,
            sync,
            on_request: None,
            audit: None,
        }
    }

    /// Enables `chain_audit` against the node at `rpc_url` and `hooks`.
    pub fn with_audit(mut self, rpc_url: String, hooks: Vec<alloy::primitives::Address>) -> Self {
        self.audit = Some((rpc_url, hooks));
        self
    }

    /// Sets the metrics hook.
    pub fn on_request(mut self, f: impl Fn(&str, i32, Duration) + Send + Sync + 'static) -> Self {
        self.on_request = Some(Arc::new(f));
        self
    }
}
