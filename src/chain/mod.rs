//! Following the SpendingHook on chain.
//!
//! - [`abi`]: the contract's events and views, bound from `abi/SpendingHook.json`.
//! - [`audit`]: the books against the contract's `getSpendState`, per session.
//! - [`config`]: `[chain]` settings and URL redaction.
//! - [`ranges`]: adaptive `eth_getLogs` ranges and provider error classification.
//! - `rpc`: the three websockets to the node and calls with timeout and bounded retry.
//! - [`valuation`]: on-chain wei into the budgets' unit (native, fixed rate, price feed).
//! - [`watcher`]: backfill, live following, reconnects and reorg repair.

pub mod abi;
pub mod audit;
pub mod config;
pub mod ranges;
mod rpc;
pub mod valuation;
pub mod watcher;

pub use config::{BindingConfig, ChainConfig, redact_url};
pub use valuation::{ValuationConfig, Valuator};
pub use watcher::{SyncError, SyncStatus, Watcher};
