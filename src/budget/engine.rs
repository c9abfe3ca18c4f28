//! The engine handle: the seed's `Engine` API over the durable store.
//!
//! Reads (`check`, `get`, `list`, `burn_rate`) answer from the last committed state in
//! memory; every change is sent to the single writer (see `writer`) and
//! returns once it is durable.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use num_bigint::BigUint;
use redb::Database;
use tokio::sync::{broadcast, oneshot};

use super::config::EngineConfig;
use super::error::Error;
use super::onchain;
use super::state::{BudgetState, now_ms};
use super::store;
use super::types::{
    BudgetReport, BudgetStatus, Notification, Page, RecordOutcome, Reservation, SpendEntry, TaskBudget,
};
use super::writer::{self, AlertFn, Done, Msg, Op, Shared};

/// Decides whether a peer may be paid an amount; an `Err` refuses the check.
pub type RiskFn = Arc<dyn Fn(&str, &BigUint) -> Result<(), String> + Send + Sync>;

/// Redb page cache; entries are read in pages, so a small cache keeps memory flat.
const DEFAULT_CACHE_BYTES: usize = 16 << 20;

mod chain;

/// Enforces budget constraints for task spending (the seed's `Guard`).
pub trait Guard {
    /// Whether `amount` may be spent now.
    ///
    /// # Errors
    /// As [`Engine::check`].
    fn check(&self, task_id: &str, amount: &BigUint) -> Result<(), Error>;
    /// Records a spend.
    ///
    /// # Errors
    /// As [`Engine::record`].
    fn record(
        &self,
        task_id: &str,
        entry: SpendEntry,
    ) -> impl Future<Output = Result<RecordOutcome, Error>> + Send;
    /// Holds money; release it with [`Engine::release`].
    ///
    /// # Errors
    /// As [`Engine::reserve`].
    fn reserve(
        &self,
        task_id: &str,
        amount: BigUint,
    ) -> impl Future<Output = Result<Reservation, Error>> + Send;
}

/// Opens an [`Engine`] with options.
pub struct EngineBuilder {
    path: PathBuf,
    config: EngineConfig,
    on_alert: Option<AlertFn>,
    risk: Option<RiskFn>,
    cache_bytes: usize,
}

impl EngineBuilder {
    /// Engine settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Called with (task id, threshold) after each alert is durable.
    /// It runs on the writer thread: keep it quick.
    pub fn on_alert(mut self, f: impl Fn(&str, f64) + Send + Sync + 'static) -> Self {
        self.on_alert = Some(Arc::new(f));
        self
    }

    /// Consulted by every `check` with (peer DID or "", amount).
    pub fn risk_assessor(
        mut self,
        f: impl Fn(&str, &BigUint) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.risk = Some(Arc::new(f));
        self
    }

    /// Redb's page cache size.
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Validates the config, opens (or creates) the database, loads the budgets and
    /// starts the writer. Blocking: call it at start-up.
    ///
    /// # Errors
    /// [`Error::Config`] for bad settings (before the file is touched),
    /// [`Error::Schema`] for a file of another schema version, [`Error::Storage`].
    pub fn open(self) -> Result<Engine, Error> {
        let settings = self.config.validate()?;
        let db = Arc::new(store::open(&self.path, self.cache_bytes)?);
        let budgets = store::load(&db)?;
        let chain = onchain::load_chain(&db)?;
        let shared = Arc::new(Shared {
            chain: RwLock::new(chain),
            budgets: RwLock::new(budgets),
            settings,
            on_alert: self.on_alert,
            notify: broadcast::channel(1024).0,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("budgetd-writer".into())
                .spawn(move || writer::run(db, shared, rx))
                .map_err(|e| Error::Storage(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                tx: Some(tx),
                writer: Some(writer),
                db,
                shared,
                risk: self.risk,
            }),
        })
    }
}

/// The budget engine. Cheap to clone; all clones share one store and one writer.
///
/// ```no_run
/// # async fn demo() -> Result<(), budgetd::budget::Error> {
/// use budgetd::budget::{Engine, SpendEntry};
/// let engine = Engine::builder("budgets.redb").open()?;
/// engine.allocate("task-1", Some(1_000u32.into())).await?;
/// engine.check("task-1", &100u32.into(), None)?;
/// engine.record("task-1", SpendEntry::new(100), None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// Queue to the writer; `None` only while dropping.
    tx: Option<Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    /// For reads that are not kept in memory (entries).
    db: Arc<Database>,
    shared: Arc<Shared>,
    risk: Option<RiskFn>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer after its batch; joining it means the file
        // is closed when the last handle is gone, so it can be reopened at once.
        self.tx.take();
        if let Some(w) = self.writer.take()
            && w.thread().id() != std::thread::current().id()
        {
            let _ = w.join();
        }
    }
}

impl Engine {
    /// Starts building an engine on the database at `path`.
    pub fn builder(path: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            path: path.as_ref().to_owned(),
            config: EngineConfig::default(),
            on_alert: None,
            risk: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    async fn call(&self, op: Op) -> Result<Done, Error> {
        let (reply, rx) = oneshot::channel();
        let stopped = || Error::Storage("the engine is stopped".into());
        self.inner
            .tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Msg::Op(Box::new(op), reply))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    fn with_budget<T>(&self, task_id: &str, f: impl FnOnce(&BudgetState) -> T) -> Result<T, Error> {
        let budgets = self
            .inner
            .shared
            .budgets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        budgets.get(task_id).map(f).ok_or(Error::NotFound)
    }

    /// Creates a budget in the default unit. A missing or zero total takes
    /// `default_max`.
    ///
    /// # Errors
    /// `invalid amount` when no total is given and no default is configured,
    /// `budget already exists`, an invalid task id, or a storage error.
    pub async fn allocate(&self, task_id: &str, total: Option<BigUint>) -> Result<TaskBudget, Error> {
        self.allocate_in(task_id, total, None).await
    }

    /// Creates a budget in `unit` (`usdc`, `wei`, or a configured token), fixed for
    /// its life. A missing or zero total takes `default_max`, read in that unit.
    ///
    /// # Errors
    /// As [`Engine::allocate`], and an unknown unit.
    pub async fn allocate_in(
        &self,
        task_id: &str,
        total: Option<BigUint>,
        unit: Option<&str>,
    ) -> Result<TaskBudget, Error> {
        if let Some(t) = &total {
            super::amount::Amount::checked(t.clone())?;
        }
        let op = Op::Allocate {
            task_id: task_id.to_owned(),
            total,
            unit: unit.map(str::to_lowercase),
        };
        match self.call(op).await? {
            Done::Budget(b) => Ok(b),
            other => unreachable!("allocate answered {other:?}"),
        }
    }

    /// Refuses an amount given in another unit than the task's budget.
    ///
    /// # Errors
    /// `budget not found`, or a unit mismatch.
    pub fn require_unit(&self, task_id: &str, unit: &str) -> Result<(), Error> {
        let budget_unit = self.with_budget(task_id, |b| b.unit.clone())?;
        if !unit.eq_ignore_ascii_case(&budget_unit) {
            return Err(Error::UnitMismatch {
                task: task_id.to_owned(),
                given: unit.to_owned(),
                budget: budget_unit,
            });
        }
        Ok(())
    }

    /// Whether `amount` may be spent: positive, budget open and not exhausted, within
    /// what remains when the hard limit is on, and accepted by the risk assessor.
    ///
    /// # Errors
    /// `invalid amount`, `budget not found`, `budget is closed`, `budget exceeded`, or
    /// the risk assessor's refusal.
    pub fn check(&self, task_id: &str, amount: &BigUint, peer_did: Option<&str>) -> Result<(), Error> {
        let hard_limit = self.inner.shared.settings.hard_limit;
        self.with_budget(task_id, |b| b.check(amount, hard_limit, now_ms()))??;
        if let Some(risk) = &self.inner.risk {
            risk(peer_did.unwrap_or(""), amount).map_err(Error::Risk)?;
        }
        Ok(())
    }

    /// Records an agent's spend. The entry id is an idempotency key: the same id with
    /// the same content again changes nothing and says `already_recorded`. With
    /// `reservation`, that reservation is consumed in the same write, and its money
    /// counts as remaining for the hard limit.
    ///
    /// # Errors
    /// `invalid amount`, `budget not found`, `budget is closed`, `budget exceeded`
    /// (hard limit), a conflict for an id reused with other content, an unknown
    /// reservation, or a storage error (nothing recorded).
    pub async fn record(
        &self,
        task_id: &str,
        entry: SpendEntry,
        reservation: Option<&str>,
    ) -> Result<RecordOutcome, Error> {
        match self
            .call(Op::Record {
                task_id: task_id.to_owned(),
                entry,
                reservation: reservation.map(str::to_owned),
            })
            .await?
        {
            Done::Recorded(r) => Ok(*r),
            other => unreachable!("record answered {other:?}"),
        }
    }

    /// Posts a spend seen on chain. It is a fact: neither the hard limit nor a closed
    /// budget refuses it (the budget may go over and become exhausted). Idempotent by
    /// entry id like [`Engine::record`].
    ///
    /// # Errors
    /// `budget not found`, a conflicting id, or a storage error.
    pub async fn post_onchain(&self, task_id: &str, entry: SpendEntry) -> Result<RecordOutcome, Error> {
        match self
            .call(Op::PostOnchain {
                task_id: task_id.to_owned(),
                entry,
            })
            .await?
        {
            Done::Recorded(r) => Ok(*r),
            other => unreachable!("post answered {other:?}"),
        }
    }

    /// Holds `amount` until released, consumed by a record, or expired (after `ttl`,
    /// or the configured default; the expiry holds across restarts).
    ///
    /// # Errors
    /// `invalid amount`, `budget not found`, `budget is closed`, `budget exceeded`
    /// (always when `amount` is more than remains), or a storage error.
    pub async fn reserve(
        &self,
        task_id: &str,
        amount: BigUint,
        ttl: Option<Duration>,
    ) -> Result<Reservation, Error> {
        match self
            .call(Op::Reserve {
                task_id: task_id.to_owned(),
                amount,
                ttl,
            })
            .await?
        {
            Done::Reserved(r) => Ok(r),
            other => unreachable!("reserve answered {other:?}"),
        }
    }

    /// Releases a reservation. Idempotent: returns whether a live reservation was
    /// released by this call (false when already released, consumed, or expired).
    ///
    /// # Errors
    /// A storage error.
    pub async fn release(&self, reservation_id: &str) -> Result<bool, Error> {
        match self
            .call(Op::Release {
                id: reservation_id.to_owned(),
            })
            .await?
        {
            Done::Released(r) => Ok(r),
            other => unreachable!("release answered {other:?}"),
        }
    }

    /// Sets the agent's progress estimate.
    ///
    /// # Errors
    /// Progress outside 0..=1, `budget not found`, or a storage error.
    pub async fn set_progress(&self, task_id: &str, progress: f64) -> Result<TaskBudget, Error> {
        match self
            .call(Op::SetProgress {
                task_id: task_id.to_owned(),
                progress,
            })
            .await?
        {
            Done::Budget(b) => Ok(b),
            other => unreachable!("set_progress answered {other:?}"),
        }
    }

    /// Spent per minute since allocation, truncated; zero when nothing was spent.
    ///
    /// # Errors
    /// `budget not found`.
    pub fn burn_rate(&self, task_id: &str) -> Result<BigUint, Error> {
        self.with_budget(task_id, |b| b.burn_rate(now_ms()))
    }

    /// Closes a budget (an exhausted one too) and returns its report; the budget stays
    /// readable. Its reservations are released.
    ///
    /// # Errors
    /// `budget is closed` when closed already, `budget not found`, or a storage error.
    pub async fn close(&self, task_id: &str) -> Result<BudgetReport, Error> {
        match self
            .call(Op::Close {
                task_id: task_id.to_owned(),
            })
            .await?
        {
            Done::Report(r) => Ok(r),
            other => unreachable!("close answered {other:?}"),
        }
    }

    /// A budget's current state.
    ///
    /// # Errors
    /// `budget not found`.
    pub fn get(&self, task_id: &str) -> Result<TaskBudget, Error> {
        self.with_budget(task_id, |b| b.view(now_ms()))
    }

    /// Budgets in task-id order, optionally of one status, `limit` at a time after the
    /// task id `after`.
    pub fn list(
        &self,
        status: Option<BudgetStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Page<TaskBudget, String> {
        use std::ops::Bound;
        let budgets = self
            .inner
            .shared
            .budgets
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut items = Vec::new();
        for b in budgets
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(_, b)| b)
            .filter(|b| status.is_none_or(|s| b.status == s))
        {
            if items.len() == limit {
                return Page {
                    next: items.last().map(|b: &TaskBudget| b.task_id.clone()),
                    items,
                };
            }
            items.push(b.view(now));
        }
        Page { items, next: None }
    }

    /// A task's entries in the order recorded, `limit` at a time after sequence `after`
    /// (pass a page's `next` back). Reads the store, off the async workers.
    ///
    /// # Errors
    /// `budget not found`, or a storage error.
    pub async fn entries(
        &self,
        task_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<SpendEntry, u64>, Error> {
        self.with_budget(task_id, |_| ())?;
        let (db, task) = (self.inner.db.clone(), task_id.to_owned());
        let (items, next) =
            tokio::task::spawn_blocking(move || store::read_entries(&db, &task, after, limit))
                .await
                .map_err(|e| Error::Storage(e.to_string()))??;
        Ok(Page { items, next })
    }

    /// Alerts and exhaustions, as they become durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.inner.shared.notify.subscribe()
    }

    /// Finishes the write in hand and stops the writer; later changes fail. The file
    /// closes when the last handle is dropped.
    pub async fn shutdown(&self) {
        let (ack, rx) = oneshot::channel();
        if let Some(tx) = &self.inner.tx
            && tx.send(Msg::Stop(ack)).is_ok()
        {
            let _ = rx.await;
        }
    }
}

impl Guard for Engine {
    fn check(&self, task_id: &str, amount: &BigUint) -> Result<(), Error> {
        Engine::check(self, task_id, amount, None)
    }

    async fn record(&self, task_id: &str, entry: SpendEntry) -> Result<RecordOutcome, Error> {
        Engine::record(self, task_id, entry, None).await
    }

    async fn reserve(&self, task_id: &str, amount: BigUint) -> Result<Reservation, Error> {
        Engine::reserve(self, task_id, amount, None).await
    }
}
