//! The budget engine: the seed's `budget` package, durable and race-free.
//!
//! - [`amount`]: money as integers, parsing and printing.
//! - [`types`]: the public records with the seed's JSON names.
//! - [`error`]: the one error type and its kinds.
//! - [`config`]: `default_max`, `alert_thresholds`, `hard_limit`, reservation expiry.
//! - `state`: a budget in memory and the seed's rules over it.
//! - `store`: the redb schema and encoding.
//! - `writer`: the single writer thread with group commit.
//! - [`onchain`]: chain sync's side: spends with the cursor in one write, reverts, bindings.
//! - [`engine`]: the [`Engine`] handle and the [`Guard`] trait.

pub mod amount;
pub mod config;
pub mod engine;
pub mod error;
pub mod onchain;
pub(crate) mod state;
pub(crate) mod store;
pub mod types;
pub(crate) mod writer;

pub use amount::{Amount, AmountError, SignedAmount};
pub use config::{EngineConfig, Settings};
pub use engine::{Engine, EngineBuilder, Guard, RiskFn};
pub use error::{Error, ErrorKind};
pub use types::{
    BudgetReport, BudgetStatus, Notification, Page, RecordOutcome, Reservation, SpendEntry, TaskBudget,
};
pub use writer::MAX_TASK_ID;
