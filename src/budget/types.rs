//! The engine's public records, with the seed's JSON field names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::amount::{Amount, SignedAmount};

impl Evidence {
    /// Evidence of a spend posted as the chain counted it (wei as is); the other
    /// valuations fill in their rate or price on top.
    pub fn native(raw_amount: Amount) -> Self {
        Self {
            raw_amount,
            raw_unit: "wei".into(),
            valuation: "native".into(),
            rate: None,
            feed: None,
            price: None,
            price_decimals: None,
            round_id: None,
            price_updated_at: None,
            price_block: None,
        }
    }
}

/// Where a budget is in its life. `active -> exhausted -> closed`, or
/// `active -> closed`; never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetStatus {
    /// Spending allowed.
    Active,
    /// Spent (plus reserved) reached the total.
    Exhausted,
    /// Finalized by `close`; kept for reports.
    Closed,
}

impl BudgetStatus {
    /// The status as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetStatus::Active => "active",
            BudgetStatus::Exhausted => "exhausted",
            BudgetStatus::Closed => "closed",
        }
    }
}

impl std::str::FromStr for BudgetStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "exhausted" => Ok(Self::Exhausted),
            "closed" => Ok(Self::Closed),
            other => Err(format!("unknown status `{other}` (active, exhausted, closed)")),
        }
    }
}

/// A task's budget as callers see it. The seed's `entries` array is not carried here,
/// since a budget may hold millions of entries: page through them with
/// `Engine::entries`; `entryCount` says how many there are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskBudget {
    /// The task id.
    pub task_id: String,
    /// The allocation, in base units.
    pub total_budget: Amount,
    /// The unit of every amount of this budget (`usdc`, `wei`, a token symbol).
    pub unit: String,
    /// The sum of all entries.
    pub spent: Amount,
    /// The sum of live reservations.
    pub reserved: Amount,
    /// `total - spent - reserved`; may be negative.
    pub remaining: SignedAmount,
    /// Lifecycle state.
    pub status: BudgetStatus,
    /// The agent's own progress estimate, 0..=1.
    pub progress: f64,
    /// Number of entries.
    pub entry_count: u64,
    /// Alert thresholds that have fired, ascending.
    pub alerts_fired: Vec<f64>,
    /// When the budget was allocated.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One spend against a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendEntry {
    /// Idempotency key; empty means "give me a fresh UUID".
    #[serde(default)]
    pub id: String,
    /// The amount in base units.
    pub amount: Amount,
    /// The peer paid, if any.
    #[serde(default, rename = "peerDid")]
    pub peer_did: String,
    /// The tool that spent.
    #[serde(default)]
    pub tool_name: String,
    /// Free text.
    #[serde(default)]
    pub reason: String,
    /// When the spend happened; absent means now.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// True for spends posted from the chain (facts, not requests).
    #[serde(default)]
    pub onchain: bool,
    /// The unit of `amount` when the caller names it; must be the budget's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// For on-chain spends: how the amount came to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// How an on-chain spend's amount was valued: the raw amount the contract counted and
/// the rate or price that turned it into the budget's unit, so an audit can redo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The amount the contract counted.
    pub raw_amount: Amount,
    /// Its unit (`wei`).
    pub raw_unit: String,
    /// `native`, `fixed` or `feed`.
    pub valuation: String,
    /// Fixed: budget units per native coin, as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Feed: the aggregator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// Feed: the answer used (an integer with `priceDecimals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// Feed: decimals of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_decimals: Option<u32>,
    /// Feed: the round the answer came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<String>,
    /// Feed: when the answer was updated (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_updated_at: Option<u64>,
    /// Feed: the block the price was read at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_block: Option<u64>,
}

impl SpendEntry {
    /// An entry with only an amount; the engine fills id and timestamp.
    pub fn new(amount: impl Into<Amount>) -> Self {
        Self {
            id: String::new(),
            amount: amount.into(),
            peer_did: String::new(),
            tool_name: String::new(),
            reason: String::new(),
            timestamp: None,
            onchain: false,
            unit: None,
            evidence: None,
        }
    }

    /// Sets the idempotency key.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// The answer to a record: the entry as stored, and what it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordOutcome {
    /// The entry as stored (id and timestamp filled in).
    pub entry: SpendEntry,
    /// True when this id was recorded before with the same content: nothing changed.
    pub already_recorded: bool,
    /// Thresholds this record crossed, ascending.
    pub alerts: Vec<f64>,
    /// The budget after the record.
    pub budget: TaskBudget,
}

/// Money held for a task until released, used by a record, or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// The reservation id, for `release` and `record`.
    pub id: String,
    /// The task it holds money for.
    pub task_id: String,
    /// How much it holds.
    pub amount: Amount,
    /// When it stops holding money by itself; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Returned when a budget is closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetReport {
    /// The task id.
    pub task_id: String,
    /// The allocation.
    pub total_budget: Amount,
    /// Everything spent.
    pub total_spent: Amount,
    /// Number of entries.
    pub entry_count: u64,
    /// Time from allocation to close, in nanoseconds (as Go's `time.Duration`).
    pub duration: i64,
    /// `closed`.
    pub status: BudgetStatus,
}

/// One page of a listing; pass `next` back as `after` for the following page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T, C> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, `None` on the last one.
    pub next: Option<C>,
}

/// Something the engine tells subscribers about, after it is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Notification {
    /// A budget crossed an alert threshold.
    #[serde(rename_all = "camelCase")]
    Alert {
        /// The task.
        task_id: String,
        /// The threshold crossed (a fraction of the total).
        threshold: f64,
    },
    /// A budget became exhausted.
    #[serde(rename_all = "camelCase")]
    Exhausted {
        /// The task.
        task_id: String,
    },
}
