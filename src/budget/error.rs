//! The one error type of the budget engine.
//!
//! Messages keep the seed's wording (`budget exceeded`, `budget is closed`, ...) so
//! agents written against the original read the same text; [`ErrorKind`] gives callers
//! (and the admin socket's stable error codes) something to branch on.

use super::amount::AmountError;

/// What kind of failure an [`Error`] is; stable across releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Spending would pass the budget, or the budget is exhausted.
    Exceeded,
    /// The budget is closed.
    Closed,
    /// An amount is zero, negative, malformed or too large.
    InvalidAmount,
    /// A budget with this task id exists.
    Exists,
    /// No budget with this task id.
    NotFound,
    /// Progress outside 0..=1.
    InvalidProgress,
    /// The risk assessor refused the spend.
    Risk,
    /// An entry id was recorded before with different content.
    Conflict,
    /// A reservation id is not known.
    ReservationNotFound,
    /// A task id is empty or too long.
    InvalidTask,
    /// Engine configuration is invalid.
    Config,
    /// The database could not be read or written; nothing was changed.
    Storage,
    /// The database was written by an unknown schema version.
    Schema,
    /// The chain does not fit this database (another chain id).
    Chain,
    /// An unknown unit, or an amount in another unit than the budget's.
    Unit,
}

/// An error from the budget engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `amount` is more than what remains.
    #[error("budget exceeded: need {need} but {remaining} remaining")]
    Exceeded {
        /// The amount asked for.
        need: String,
        /// What remains (may be negative).
        remaining: String,
    },
    /// The budget is exhausted: nothing more may be spent or reserved.
    #[error("budget exceeded: task {0} is exhausted")]
    Exhausted(String),
    /// The budget is closed.
    #[error("budget is closed")]
    Closed,
    /// The amount is not a positive integer of at most 256 bits.
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    /// A budget with this task id exists.
    #[error("budget already exists")]
    Exists,
    /// No budget with this task id.
    #[error("budget not found")]
    NotFound,
    /// Progress outside 0..=1.
    #[error("invalid progress {0}: must be between 0 and 1")]
    InvalidProgress(f64),
    /// The risk assessor refused the spend.
    #[error("risk check failed: {0}")]
    Risk(String),
    /// The entry id was recorded with other content.
    #[error("entry {id} already recorded with different content")]
    Conflict {
        /// The entry id.
        id: String,
    },
    /// An agent's entry id in the form of an on-chain spend's id.
    #[error("entry id {0} is reserved for on-chain spends (chainId:txHash:logIndex)")]
    ReservedId(String),
    /// The reservation id is unknown to the task it was used with.
    #[error("reservation {0} not found")]
    ReservationNotFound(String),
    /// A task id is empty or longer than [`MAX_TASK_ID`](super::MAX_TASK_ID) bytes.
    #[error("invalid task id: {0}")]
    InvalidTask(String),
    /// Configuration is invalid; the message names the key.
    #[error("invalid config: {0}")]
    Config(String),
    /// The store failed; the operation changed nothing.
    #[error("storage error: {0}")]
    Storage(String),
    /// The database file is from an unknown schema version.
    #[error("{0}")]
    Schema(String),
    /// The chain does not fit this database.
    #[error("{0}")]
    Chain(String),
    /// A unit nobody configured.
    #[error("invalid unit: {0}")]
    InvalidUnit(String),
    /// An amount in another unit than the budget's: never mixed.
    #[error("unit mismatch: amount in {given} but budget {task} is in {budget}")]
    UnitMismatch {
        /// The task.
        task: String,
        /// The unit given.
        given: String,
        /// The budget's unit.
        budget: String,
    },
}

impl ErrorKind {
    /// The stable JSON-RPC error code of the admin socket (-32001 ..= -32014); the
    /// protocol's own codes (-32700, -32600, -32601, -32602) stay for protocol errors.
    pub fn code(self) -> i32 {
        match self {
            ErrorKind::Exceeded => -32001,
            ErrorKind::Closed => -32002,
            ErrorKind::InvalidAmount => -32003,
            ErrorKind::Exists => -32004,
            ErrorKind::NotFound => -32005,
            ErrorKind::InvalidProgress => -32006,
            ErrorKind::Risk => -32007,
            ErrorKind::Conflict => -32008,
            ErrorKind::ReservationNotFound => -32009,
            ErrorKind::InvalidTask => -32010,
            ErrorKind::Unit => -32011,
            ErrorKind::Chain => -32012,
            ErrorKind::Config => -32013,
            ErrorKind::Storage => -32014,
            ErrorKind::Schema => -32015,
        }
    }

    /// A short stable name (`exceeded`, `not_found`, ...), for `data.kind` on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Exceeded => "exceeded",
            ErrorKind::Closed => "closed",
            ErrorKind::InvalidAmount => "invalid_amount",
            ErrorKind::Exists => "exists",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidProgress => "invalid_progress",
            ErrorKind::Risk => "risk",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ReservationNotFound => "reservation_not_found",
            ErrorKind::InvalidTask => "invalid_task",
            ErrorKind::Unit => "unit",
            ErrorKind::Chain => "chain",
            ErrorKind::Config => "config",
            ErrorKind::Storage => "storage",
            ErrorKind::Schema => "schema",
        }
    }
}

impl Error {
    /// The kind, for branching and for stable wire codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Exceeded { .. } | Error::Exhausted(_) => ErrorKind::Exceeded,
            Error::Closed => ErrorKind::Closed,
            Error::InvalidAmount(_) => ErrorKind::InvalidAmount,
            Error::Exists => ErrorKind::Exists,
            Error::NotFound => ErrorKind::NotFound,
            Error::InvalidProgress(_) => ErrorKind::InvalidProgress,
            Error::Risk(_) => ErrorKind::Risk,
            Error::Conflict { .. } | Error::ReservedId(_) => ErrorKind::Conflict,
            Error::ReservationNotFound(_) => ErrorKind::ReservationNotFound,
            Error::InvalidTask(_) => ErrorKind::InvalidTask,
            Error::Config(_) => ErrorKind::Config,
            Error::Storage(_) => ErrorKind::Storage,
            Error::Schema(_) => ErrorKind::Schema,
            Error::Chain(_) => ErrorKind::Chain,
            Error::InvalidUnit(_) | Error::UnitMismatch { .. } => ErrorKind::Unit,
        }
    }

    /// True when retrying the same call later may succeed (the store failed).
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Storage
    }
}

impl From<AmountError> for Error {
    fn from(e: AmountError) -> Self {
        Error::InvalidAmount(e.to_string())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    postcard::Error
);
