//! The single writer: every change to the store goes through one thread that drains
//! the queue of pending operations, applies them in one write transaction, commits
//! once, and only then publishes the new state and answers the callers (group commit).
//!
//! One writer makes the engine race-free without locks around read-modify-write: two
//! reservations can never both see the same `remaining`. Batching makes durable
//! writes cheap: N concurrent callers share one fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use num_bigint::BigUint;
use redb::{Database, ReadableDatabase};
use tokio::sync::{broadcast, oneshot};

use super::amount::Amount;
use super::config::{Settings, ppm_to_fraction};
use super::error::Error;
use super::onchain::{ChainDone, ChainOp, ChainState};
use super::state::{BudgetState, Hold, Millis, now_ms, to_datetime};
use super::store::{self, EXPIRY_TO_RESERVATION, Tables};
use super::types::{
    BudgetReport, BudgetStatus, Notification, RecordOutcome, Reservation, SpendEntry, TaskBudget,
};

/// Longest task id accepted, in bytes.
pub const MAX_TASK_ID: usize = 256;
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How often expired reservations are deleted when the engine is idle.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Called after commit with (task id, threshold) for each alert fired.
pub type AlertFn = Arc<dyn Fn(&str, f64) + Send + Sync>;

/// State shared by the engine handle (readers) and the writer.
pub struct Shared {
    /// Committed budgets. A std lock: it is never held across an await, and the writer
    /// holds it only to publish a committed batch.
    pub budgets: RwLock<BTreeMap<String, BudgetState>>,
    /// Validated settings.
    pub settings: Settings,
    /// Alert callback.
    pub on_alert: Option<AlertFn>,
    /// Notifications for subscribers.
    pub notify: broadcast::Sender<Notification>,
    /// Committed chain-sync state (cursor, recent hashes, bindings, limits, totals).
    pub chain: RwLock<ChainState>,
}

/// A change the writer applies.
#[derive(Debug)]
pub enum Op {
    /// Create a budget (in the default unit when `unit` is `None`).
    Allocate {
        task_id: String,
        total: Option<BigUint>,
        unit: Option<String>,
    },
    /// An agent's spend, optionally consuming a reservation.
    Record {
        task_id: String,
        entry: SpendEntry,
        reservation: Option<String>,
    },
    /// A spend seen on chain: a fact, posted whatever the limit or status.
    PostOnchain { task_id: String, entry: SpendEntry },
    /// Hold money.
    Reserve {
        task_id: String,
        amount: BigUint,
        ttl: Option<Duration>,
    },
    /// Let go of a reservation.
    Release { id: String },
    /// Set progress.
    SetProgress { task_id: String, progress: f64 },
    /// Close a budget.
    Close { task_id: String },
    /// Chain sync: commit spends with the cursor, revert, bind sessions.
    Chain(ChainOp),
}

/// What an [`Op`] produced.
#[derive(Debug)]
pub enum Done {
    /// A budget's view.
    Budget(TaskBudget),
    /// A record's outcome (boxed: it is the largest answer by far).
    Recorded(Box<RecordOutcome>),
    /// A new reservation.
    Reserved(Reservation),
    /// Whether a live reservation was released.
    Released(bool),
    /// A close report.
    Report(BudgetReport),
    /// What a chain operation did.
    Chain(ChainDone),
}

/// A message to the writer.
pub enum Msg {
    /// Apply an operation and answer (boxed: ops are large, stops tiny).
    Op(Box<Op>, oneshot::Sender<Result<Done, Error>>),
    /// Finish the batch in hand, then stop.
    Stop(oneshot::Sender<()>),
}

/// Runs the writer until the queue closes or a stop arrives.
pub fn run(db: Arc<Database>, shared: Arc<Shared>, rx: Receiver<Msg>) {
    let mut last_sweep = Instant::now();
    loop {
        let mut ops = Vec::new();
        let mut stop = None;
        match rx.recv_timeout(SWEEP_EVERY) {
            Ok(Msg::Op(op, reply)) => ops.push((*op, reply)),
            Ok(Msg::Stop(ack)) => stop = Some(ack),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while stop.is_none() && ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op, reply)) => ops.push((*op, reply)),
                Ok(Msg::Stop(ack)) => stop = Some(ack),
                Err(_) => break,
            }
        }
        let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            last_sweep = Instant::now();
        }
        if !ops.is_empty() || (sweep && has_expired(&db, now_ms())) {
            commit_batch(&db, &shared, ops, sweep);
        }
        if let Some(ack) = stop {
            let _ = ack.send(());
            return;
        }
    }
}

fn has_expired(db: &Database, now: Millis) -> bool {
    let Ok(read) = db.begin_read() else { return false };
    let Ok(table) = read.open_table(EXPIRY_TO_RESERVATION) else {
        return false;
    };
    table
        .range((i64::MIN, "")..(now.saturating_add(1), ""))
        .map(|mut r| r.next().is_some())
        .unwrap_or(false)
}

/// Applies `ops` in one transaction; answers each after the commit, or every one of
/// them with the storage error when the transaction fails (then nothing changed).
fn commit_batch(
    db: &Database,
    shared: &Shared,
    ops: Vec<(Op, oneshot::Sender<Result<Done, Error>>)>,
    sweep: bool,
) {
    let (results, replies): (Vec<_>, Vec<_>) = ops.into_iter().unzip();
    match apply_all(db, shared, results, sweep) {
        Ok(Applied {
            results,
            budgets: overlay,
            chain,
            events,
        }) => {
            {
                let mut budgets = shared.budgets.write().unwrap_or_else(|p| p.into_inner());
                budgets.extend(overlay);
            }
            if let Some(chain) = chain {
                *shared.chain.write().unwrap_or_else(|p| p.into_inner()) = chain;
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            for event in events {
                if let (Some(cb), Notification::Alert { task_id, threshold }) = (&shared.on_alert, &event) {
                    cb(task_id, *threshold);
                }
                let _ = shared.notify.send(event);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, ops = replies.len(), "write transaction failed; nothing was changed");
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(Error::Storage(msg.clone())));
            }
        }
    }
}

/// A batch applied but not yet published: answers, touched budgets, the chain state
/// if touched, and notifications.
struct Applied {
    results: Vec<Result<Done, Error>>,
    budgets: BTreeMap<String, BudgetState>,
    chain: Option<ChainState>,
    events: Vec<Notification>,
}

fn apply_all(db: &Database, shared: &Shared, ops: Vec<Op>, sweep: bool) -> Result<Applied, Error> {
    let txn = store::begin_write(db)?;
    let applied = {
        let mut batch = Batch {
            tables: Tables::open(&txn)?,
            overlay: BTreeMap::new(),
            chain: None,
            dirty_totals: BTreeSet::new(),
            shared,
            now: now_ms(),
            events: Vec::new(),
        };
        if sweep {
            batch.sweep()?;
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match batch.apply(op) {
                Err(e) if e.kind() == super::error::ErrorKind::Storage => return Err(e),
                r => results.push(r),
            }
        }
        // Each touched budget and session total is written once, however many ops
        // changed it.
        for b in batch.overlay.values() {
            batch.tables.put_budget(b)?;
        }
        batch.flush_totals()?;
        Applied {
            results,
            budgets: batch.overlay,
            chain: batch.chain,
            events: batch.events,
        }
    };
    txn.commit()?;
    Ok(applied)
}

/// One transaction's work in progress: the budgets it touched (copies of the committed
/// state plus this batch's changes, written when the batch ends) and the notifications
/// to send once it commits.
pub(super) struct Batch<'a, 'txn> {
    pub(super) tables: Tables<'txn>,
    pub(super) overlay: BTreeMap<String, BudgetState>,
    /// The chain state as this batch changed it; `None` when untouched.
    pub(super) chain: Option<ChainState>,
    /// Sessions whose on-chain total this batch changed (written when it ends).
    pub(super) dirty_totals: BTreeSet<String>,
    pub(super) shared: &'a Shared,
    pub(super) now: Millis,
    pub(super) events: Vec<Notification>,
}

impl Batch<'_, '_> {
    pub(super) fn exists(&self, task_id: &str) -> bool {
        self.overlay.contains_key(task_id) || read(self.shared).contains_key(task_id)
    }

    /// The budget as this batch sees it. Every op validates before it changes this, so
    /// a refused op leaves nothing behind.
    pub(super) fn budget(&mut self, task_id: &str) -> Result<&mut BudgetState, Error> {
        if !self.overlay.contains_key(task_id) {
            let b = read(self.shared).get(task_id).cloned().ok_or(Error::NotFound)?;
            self.overlay.insert(task_id.to_owned(), b);
        }
        Ok(self.overlay.get_mut(task_id).expect("inserted above"))
    }

    fn apply(&mut self, op: Op) -> Result<Done, Error> {
        match op {
            Op::Allocate { task_id, total, unit } => self.allocate(task_id, total, unit),
            Op::Record {
                task_id,
                entry,
                reservation,
            } => self
                .record(&task_id, entry, reservation, false)
                .map(|r| Done::Recorded(Box::new(r))),
            Op::PostOnchain { task_id, entry } => self
                .record(&task_id, entry, None, true)
                .map(|r| Done::Recorded(Box::new(r))),
            Op::Chain(op) => self.apply_chain(op).map(Done::Chain),
            Op::Reserve { task_id, amount, ttl } => self.reserve(&task_id, amount, ttl),
            Op::Release { id } => self.release(&id),
            Op::SetProgress { task_id, progress } => {
                if !(0.0..=1.0).contains(&progress) {
                    return Err(Error::InvalidProgress(progress));
                }
                let now = self.now;
                let b = self.budget(&task_id)?;
                b.progress = progress;
                b.updated_ms = now;
                Ok(Done::Budget(b.view(now)))
            }
            Op::Close { task_id } => self.close(&task_id),
        }
    }

    pub(super) fn allocate(
        &mut self,
        task_id: String,
        total: Option<BigUint>,
        unit: Option<String>,
    ) -> Result<Done, Error> {
        validate_task_id(&task_id)?;
        let settings = &self.shared.settings;
        let unit = unit.unwrap_or_else(|| settings.default_unit.clone());
        let default = settings.default_max_in(&unit)?;
        let total = match total {
            Some(t) if t != BigUint::ZERO => t,
            _ => default
                .ok_or_else(|| Error::InvalidAmount("no total given and no default_max configured".into()))?,
        };
        if self.exists(&task_id) {
            return Err(Error::Exists);
        }
        let b = BudgetState::new(task_id.clone(), total, unit, self.now);
        let view = b.view(self.now);
        self.overlay.insert(task_id, b);
        Ok(Done::Budget(view))
    }

    pub(super) fn record(
        &mut self,
        task_id: &str,
        mut entry: SpendEntry,
        reservation: Option<String>,
        onchain: bool,
    ) -> Result<RecordOutcome, Error> {
        let now = self.now;
        if entry.id.is_empty() {
            entry.id = uuid::Uuid::new_v4().to_string();
        }
        entry.onchain = onchain;
        let timestamp_ms = entry.timestamp.map_or(now, |t| t.timestamp_millis());
        entry.timestamp = Some(to_datetime(timestamp_ms));
        if !onchain {
            super::state::require_positive(&entry.amount.0)?;
            // Otherwise an agent could take the id of a spend still to come on chain,
            // and that spend could never be posted.
            if super::onchain::is_onchain_id(&entry.id) {
                return Err(Error::ReservedId(entry.id));
            }
        }
        if let Some((seq_task, seq)) = self.tables.entry_location(&entry.id)? {
            let stored = self.tables.entry_at(&seq_task, seq)?;
            return match stored {
                Some(stored) if seq_task == task_id && same_content(&stored, &entry) => {
                    let budget = self.budget(task_id)?.view(now);
                    Ok(RecordOutcome {
                        entry: stored,
                        already_recorded: true,
                        alerts: Vec::new(),
                        budget,
                    })
                }
                _ => Err(Error::Conflict { id: entry.id }),
            };
        }
        let settings = &self.shared.settings;
        let (hard_limit, thresholds) = (settings.hard_limit, settings.thresholds_ppm.as_slice());
        let b = self.budget(task_id)?;
        if let Some(unit) = entry.unit.take()
            && unit != b.unit
        {
            return Err(Error::UnitMismatch {
                task: task_id.to_owned(),
                given: unit,
                budget: b.unit.clone(),
            });
        }
        let hold = match &reservation {
            Some(id) => Some(
                b.holds
                    .get(id)
                    .cloned()
                    .ok_or_else(|| Error::ReservationNotFound(id.clone()))?,
            ),
            None => None,
        };
        if !onchain {
            b.check_record(&entry.amount.0, hold.as_ref(), hard_limit, now)?;
        }
        if let Some(id) = &reservation {
            b.holds.remove(id);
        }
        let seq = b.next_seq;
        let (fired, exhausted) = b.apply_spend(&entry.amount.0, thresholds, now);
        let view = b.view(now);
        if let Some(id) = &reservation {
            self.tables.remove_hold(id)?;
        }
        self.tables.put_entry(task_id, seq, &entry, timestamp_ms)?;
        for &ppm in &fired {
            self.tables.put_fired(task_id, ppm, now)?;
            self.events.push(Notification::Alert {
                task_id: task_id.to_owned(),
                threshold: ppm_to_fraction(ppm),
            });
        }
        if exhausted {
            self.events.push(Notification::Exhausted {
                task_id: task_id.to_owned(),
            });
        }
        Ok(RecordOutcome {
            entry,
            already_recorded: false,
            alerts: fired.into_iter().map(ppm_to_fraction).collect(),
            budget: view,
        })
    }

    fn reserve(&mut self, task_id: &str, amount: BigUint, ttl: Option<Duration>) -> Result<Done, Error> {
        let now = self.now;
        let ttl = ttl.or(self.shared.settings.reservation_ttl);
        let b = self.budget(task_id)?;
        b.check_reserve(&amount, now)?;
        let id = uuid::Uuid::new_v4().to_string();
        let hold = Hold {
            amount,
            expires_ms: ttl.map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))),
        };
        b.holds.insert(id.clone(), hold.clone());
        b.updated_ms = now;
        self.tables.put_hold(&id, task_id, &hold)?;
        Ok(Done::Reserved(Reservation {
            id,
            task_id: task_id.to_owned(),
            amount: Amount(hold.amount),
            expires_at: hold.expires_ms.map(to_datetime),
        }))
    }

    fn release(&mut self, id: &str) -> Result<Done, Error> {
        let Some(rec) = self.tables.remove_hold(id)? else {
            return Ok(Done::Released(false));
        };
        let now = self.now;
        let live = rec.hold().is_live(now);
        if let Ok(b) = self.budget(&rec.task_id) {
            b.holds.remove(id);
            b.updated_ms = now;
        }
        Ok(Done::Released(live))
    }

    fn close(&mut self, task_id: &str) -> Result<Done, Error> {
        let now = self.now;
        let b = self.budget(task_id)?;
        if b.status == BudgetStatus::Closed {
            return Err(Error::Closed);
        }
        b.status = BudgetStatus::Closed;
        b.updated_ms = now;
        // A closed budget holds nothing.
        let holds: Vec<String> = std::mem::take(&mut b.holds).into_keys().collect();
        let report = b.report(now);
        for id in holds {
            self.tables.remove_hold(&id)?;
        }
        Ok(Done::Report(report))
    }

    /// Deletes reservations that expired. They stopped counting when they expired;
    /// this only frees their rows.
    fn sweep(&mut self) -> Result<(), Error> {
        for id in self.tables.expired(self.now)? {
            if let Some(rec) = self.tables.remove_hold(&id)?
                && let Ok(b) = self.budget(&rec.task_id)
            {
                b.holds.remove(&id);
            }
        }
        Ok(())
    }
}

pub(super) fn read(shared: &Shared) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, BudgetState>> {
    shared.budgets.read().unwrap_or_else(|p| p.into_inner())
}

/// Task ids are non-empty and at most [`MAX_TASK_ID`] bytes.
pub fn validate_task_id(task_id: &str) -> Result<(), Error> {
    if task_id.is_empty() {
        return Err(Error::InvalidTask("task id is empty".into()));
    }
    if task_id.len() > MAX_TASK_ID {
        return Err(Error::InvalidTask(format!(
            "task id is {} bytes, at most {MAX_TASK_ID} allowed",
            task_id.len()
        )));
    }
    Ok(())
}

/// Two records of one id are the same spend when everything but the timestamp agrees
/// (a retry made later carries a later timestamp).
fn same_content(a: &SpendEntry, b: &SpendEntry) -> bool {
    a.amount == b.amount
        && a.peer_did == b.peer_did
        && a.tool_name == b.tool_name
        && a.reason == b.reason
        && a.onchain == b.onchain
}
