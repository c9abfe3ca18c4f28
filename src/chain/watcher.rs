//! The watcher: backfill, live following, reconnects and reorg repair.
//!
//! The websocket is only a hint. Every pass (`Watcher::catch_up`) asks the node for
//! its head and fetches `eth_getLogs` from the cursor + 1 to the confirmed block in
//! adaptive ranges, so a missed notification, a dropped connection or a restart leaves
//! no gap: the next pass starts where the store's cursor says.
//!
//! Consistency of one fetch: the hash of its last block is read before and after the
//! logs (a block hash commits to all its ancestors), a single block is fetched by
//! hash, and the first block's parent must be the cursor. The confirmed part is handed
//! to the reconciler, which posts it with the new cursor in one transaction; the
//! unconfirmed part only goes to the tracker and is fetched afresh on every pass, so a
//! shallow reorg never touches the store. A changed hash at the cursor is a reorg
//! deeper than the confirmation depth: logged as an error, counted, and repaired by
//! reverting what the lost blocks posted, back to the highest stored block hash that is
//! still canonical.
//!
//! Requests, new heads and logs use three websockets to the same node. On a shared
//! socket, whatever the node writes right after a pushed notification waits for the
//! client's delayed ACK of it (Nagle on the node's side): measured ~43 ms a call on
//! anvil, against ~0.1 ms on a socket that only answers requests.

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::B256;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{Filter, Log};
use alloy::transports::TransportResult;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::sleep;

use super::abi::{self, HookEvent};
use super::config::{ChainConfig, redact_url};
use super::ranges::{RangeSizer, backoff};
use super::rpc::{Conn, Fail, connect_all, next, retrying};
use super::valuation::{ValuationConfig, Valuator};
use crate::budget::onchain::Cursor;
use crate::budget::{Engine, Error as EngineError};
use crate::reconciler::Reconciler;
use crate::tracker::OnChainTracker;

/// Where sync stands; published on every pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The node's chain id.
    pub chain_id: u64,
    /// Confirmations required before a spend is posted.
    pub confirmations: u64,
    /// The node's latest block.
    pub head: Option<u64>,
    /// The cursor: last block whose spends are all posted.
    pub synced: Option<u64>,
    /// `head - confirmations`.
    pub confirmed: Option<u64>,
    /// Connected to the node now.
    pub connected: bool,
    /// Reorgs that reached the store (deeper than the confirmation depth).
    pub reorgs: u64,
    /// Depth of the deepest of them.
    pub max_reorg_depth: u64,
    /// Entries reverted by them.
    pub reverted_entries: u64,
    /// `removed: true` logs the node pushed.
    pub removed_logs: u64,
    /// Reconnects after a lost connection or a silent stream.
    pub reconnects: u64,
    /// Spend events posted (or kept unbound).
    pub spend_events: u64,
    /// Failed RPC calls, retried or not.
    pub rpc_errors: u64,
    /// Spends held back because their valuation failed.
    pub held_spends: u64,
}

/// Why chain sync could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Settings are wrong; the message names the key.
    #[error("invalid config: {0}")]
    Config(String),
    /// The node could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, secrets removed.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Something answered but not as an Ethereum node.
    #[error("{url} is not an Ethereum JSON-RPC node ({reason})")]
    NotANode {
        /// The URL, secrets removed.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No contract at a configured hook address.
    #[error("no contract at hook address {address} on chain {chain_id}: check chain.hook_addresses")]
    NoContract {
        /// The address.
        address: alloy::primitives::Address,
        /// The chain.
        chain_id: u64,
    },
    /// The engine refused (another chain id, storage).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An RPC failure retrying cannot fix.
    #[error("rpc: {0}")]
    Rpc(String),
}

/// A range's logs and its top block, or why not.
type Fetched = Result<(Vec<Log>, BlockRef), Fail>;

/// A block's identity.
#[derive(Debug, Clone, Copy)]
struct BlockRef {
    number: u64,
    hash: B256,
    parent_hash: B256,
}

/// Follows the hook contract(s) on one chain into the engine.
pub struct Watcher {
    cfg: ChainConfig,
    /// The RPC URL with secrets removed, for logs and errors.
    url: String,
    engine: Engine,
    tracker: OnChainTracker,
    reconciler: Reconciler,
    confirmations: u64,
    filter: Filter,
    conn: Option<Conn>,
    sizer: RangeSizer,
    status: watch::Sender<SyncStatus>,
}

impl Watcher {
    /// Connects and checks everything that can be wrong before anything is written:
    /// the config, that the URL is an Ethereum node, that each hook address holds a
    /// contract, and that the database follows this chain. Then applies the config's
    /// bindings.
    ///
    /// # Errors
    /// [`SyncError`] saying which check failed.
    pub async fn start(cfg: ChainConfig, engine: Engine, tracker: OnChainTracker) -> Result<Self, SyncError> {
        cfg.validate().map_err(SyncError::Config)?;
        if cfg.auto_allocate && engine.default_max().is_none() {
            return Err(SyncError::Config(
                "chain.auto_allocate needs budget.default_max (the budget an unbound session gets)".into(),
            ));
        }
        let url = redact_url(&cfg.rpc_url);
        let conn = connect_all(&cfg.rpc_url, &url)
            .await
            .map_err(|reason| SyncError::Connect {
                url: url.clone(),
                reason,
            })?;
        let provider = &conn.rpc;
        let not_a_node = |f: Fail| SyncError::NotANode {
            url: url.clone(),
            reason: match f {
                Fail::Fatal(e) => e.to_string(),
                Fail::Disconnected(m) => m,
                _ => "unexpected answer".into(),
            }
            .replace(&cfg.rpc_url, &url),
        };
        let retries = cfg.max_retries;
        let chain_id = retrying("eth_chainId", retries, || {}, || provider.get_chain_id())
            .await
            .map_err(not_a_node)?;
        for &address in &cfg.hook_addresses {
            let code = retrying("eth_getCode", retries, || {}, || provider.get_code_at(address))
                .await
                .map_err(not_a_node)?;
            if code.is_empty() {
                return Err(SyncError::NoContract { address, chain_id });
            }
        }
        let unit_decimals = engine.unit_decimals(cfg.valuation.unit())?;
        let valuator = Valuator::new(cfg.valuation.clone(), unit_decimals).map_err(SyncError::Config)?;
        if let ValuationConfig::Feed { address, .. } = &cfg.valuation {
            let code = retrying("eth_getCode", retries, || {}, || provider.get_code_at(*address))
                .await
                .map_err(not_a_node)?;
            if code.is_empty() {
                return Err(SyncError::Config(format!(
                    "chain.valuation.address: no contract at {address:#x} on chain {chain_id}"
                )));
            }
        }
        engine.chain_init(chain_id, valuator.unit()).await?;
        for b in &cfg.bindings {
            if engine.get(&b.task_id).is_err() {
                engine.allocate(&b.task_id, None).await?;
            }
            engine
                .bind_session(b.account, b.session_key, &b.task_id, &b.peer_did)
                .await?;
        }
        let confirmations = cfg.confirmations_for(chain_id);
        let keep = cfg.reorg_window.max(confirmations.saturating_mul(2));
        let reconciler = Reconciler::new(
            engine.clone(),
            tracker.clone(),
            valuator,
            chain_id,
            cfg.auto_allocate,
            keep,
        );
        let filter = Filter::new()
            .address(cfg.hook_addresses.clone())
            .event_signature(abi::topics().to_vec());
        tracing::info!(%url, chain_id, confirmations, hooks = ?cfg.hook_addresses, "connected to node");
        let status = SyncStatus {
            chain_id,
            confirmations,
            synced: engine.chain_cursor().map(|c| c.number),
            connected: true,
            ..SyncStatus::default()
        };
        Ok(Self {
            sizer: RangeSizer::new(cfg.initial_range, cfg.max_range),
            cfg,
            url,
            engine,
            tracker,
            reconciler,
            confirmations,
            filter,
            conn: Some(conn),
            status: watch::channel(status).0,
        })
    }

    /// Sync status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` completes (then returns `Ok`) or a fatal error. Lost
    /// connections are reconnected with backoff; the gap is filled from the cursor.
    /// Stopping at any instant is safe: the store holds either all of a block
    /// range's spends and its cursor, or neither.
    ///
    /// # Errors
    /// [`SyncError`] for failures retrying cannot fix.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), SyncError> {
        let mut shutdown = pin!(shutdown);
        let mut attempt = 0u32;
        loop {
            let conn = match self.conn.take() {
                Some(c) => c,
                None => {
                    self.status.send_modify(|s| s.connected = false);
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = sleep(backoff(attempt, Duration::from_millis(200), Duration::from_secs(10))) => {}
                    }
                    match connect_all(&self.cfg.rpc_url, &self.url).await {
                        Ok(c) => {
                            tracing::info!(url = %self.url, "reconnected; filling the gap from the cursor");
                            self.status.send_modify(|s| {
                                s.reconnects += 1;
                                s.connected = true;
                            });
                            attempt = 0;
                            c
                        }
                        Err(reason) => {
                            tracing::warn!(url = %self.url, %reason, attempt, "reconnect failed");
                            attempt = attempt.saturating_add(1);
                            continue;
                        }
                    }
                }
            };
            let outcome = tokio::select! {
                () = &mut shutdown => return Ok(()),
                r = self.follow(&conn) => r,
            };
            match outcome {
                Fail::Fatal(e) => return Err(e),
                Fail::Storage(e) => {
                    tracing::error!(error = %e, "could not write to the store; retrying");
                    self.conn = Some(conn);
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = sleep(backoff(attempt, Duration::from_millis(500), Duration::from_secs(30))) => {}
                    }
                    attempt = attempt.saturating_add(1);
                }
                Fail::Disconnected(reason) => {
                    tracing::warn!(url = %self.url, %reason, "lost the node; reconnecting");
                }
                Fail::TooLarge(_) | Fail::Reorged => unreachable!("handled inside a pass"),
            }
        }
    }

    /// Passes over the chain, woken by new heads (a hint), removed logs, or a poll.
    async fn follow(&mut self, conn: &Conn) -> Fail {
        let p = &conn.rpc;
        let mut heads = conn.heads.subscribe_blocks().await.ok();
        let mut logs = conn.logs.subscribe_logs(&self.filter).await.ok();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let stall = Duration::from_secs(self.cfg.stall_timeout_secs.max(1));
        let (mut last_hint, mut hinted_head) = (Instant::now(), 0u64);
        loop {
            if let Err(f) = self.catch_up(p).await {
                return f;
            }
            tokio::select! {
                h = next(&mut heads) => match h {
                    Some(h) => {
                        last_hint = Instant::now();
                        hinted_head = h.inner.number;
                    }
                    None => return Fail::Disconnected("the new-heads subscription ended".into()),
                },
                l = next(&mut logs) => match l {
                    Some(log) if log.removed => {
                        tracing::info!(block = ?log.block_number, "node removed a log (reorg); rechecking");
                        self.status.send_modify(|s| s.removed_logs += 1);
                    }
                    Some(_) => {}
                    None => return Fail::Disconnected("the log subscription ended".into()),
                },
                () = sleep(poll) => {
                    // A chain that moves while the stream stays silent means the stream is dead.
                    let head = self.status.borrow().head.unwrap_or(0);
                    if heads.is_some() && last_hint.elapsed() > stall && head > hinted_head {
                        self.status.send_modify(|s| s.reconnects += 1);
                        return Fail::Disconnected(format!("no new head on the websocket for {stall:?} while the chain moved"));
                    }
                }
            }
        }
    }

    fn next_block(&self) -> u64 {
        self.engine
            .chain_cursor()
            .map_or(self.cfg.start_block, |c| c.number.saturating_add(1))
    }

    /// One pass: repair a deep reorg if there was one, post everything confirmed, and
    /// refresh the unconfirmed window in the tracker.
    async fn catch_up(&mut self, p: &DynProvider) -> Result<(), Fail> {
        let head = self.call("eth_blockNumber", || p.get_block_number()).await?;
        self.status.send_modify(|s| s.head = Some(head));
        self.check_reorg(p).await?;
        let safe = head.saturating_sub(self.confirmations);
        // The next range is fetched while the current one is written: (from, to, result).
        let mut ahead: Option<(u64, u64, Fetched)> = None;
        loop {
            let from = self.next_block();
            if from > safe {
                break;
            }
            let (to, fetched) = match ahead.take() {
                Some((f, to, r)) if f == from => (to, r),
                _ => {
                    let to = safe.min(from.saturating_add(self.sizer.size() - 1));
                    (to, self.fetch(p, from, to, self.cursor_below(from)).await)
                }
            };
            match fetched {
                Ok((logs, top)) => {
                    self.sizer.succeeded();
                    let next = top.number + 1;
                    if next > safe {
                        self.post(p, from, top, logs).await?;
                        continue;
                    }
                    // Checked against this range's top, which is not the cursor yet.
                    let next_to = safe.min(next.saturating_add(self.sizer.size() - 1));
                    let (posted, next_fetched) = tokio::join!(
                        self.post(p, from, top, logs),
                        self.fetch(p, next, next_to, Some(top.hash))
                    );
                    posted?;
                    ahead = Some((next, next_to, next_fetched));
                }
                Err(Fail::TooLarge(suggested)) => {
                    tracing::debug!(from, to, ?suggested, "range too large; shrinking");
                    self.sizer
                        .too_large(from, to, suggested)
                        .map_err(|e| Fail::Fatal(SyncError::Rpc(e)))?;
                }
                Err(Fail::Reorged) => self.check_reorg(p).await?,
                Err(f) => return Err(f),
            }
        }
        if !self.engine.held_spends().is_empty() {
            let released = self.reconciler.release_held(p, safe).await?;
            self.status.send_modify(|s| s.spend_events += released.released);
        }
        self.tracker.rollback_above(safe);
        if head > safe {
            match self.fetch(p, safe + 1, head, self.cursor_below(safe + 1)).await {
                Ok((logs, _)) => {
                    for log in &logs {
                        if let Ok(Some(HookEvent::Spend(s))) = abi::decode(log) {
                            self.tracker.record_event(s);
                        }
                    }
                }
                // The unconfirmed window is display only: try again next pass.
                Err(Fail::TooLarge(_) | Fail::Reorged) => {}
                Err(f) => return Err(f),
            }
        }
        let synced = self.engine.chain_cursor().map(|c| c.number);
        let held = self.engine.held_spends().len() as u64;
        self.status.send_modify(|s| {
            s.held_spends = held;
            s.synced = synced;
            s.confirmed = Some(safe);
        });
        Ok(())
    }

    /// The cursor's hash when the cursor is block `from - 1`.
    fn cursor_below(&self, from: u64) -> Option<B256> {
        self.engine
            .chain_cursor()
            .filter(|c| c.number.saturating_add(1) == from)
            .map(|c| c.hash)
    }

    /// Logs of `from..=to`, consistent with one chain whose block `from - 1` has hash
    /// `parent` (when given); `Reorged` when the chain changed under the fetch.
    async fn fetch(&self, p: &DynProvider, from: u64, to: u64, parent: Option<B256>) -> Fetched {
        let top = self.block(p, to).await?.ok_or(Fail::Reorged)?;
        let filter = if from == to {
            self.filter.clone().at_block_hash(top.hash)
        } else {
            self.filter.clone().from_block(from).to_block(to)
        };
        let logs = self.call("eth_getLogs", || p.get_logs(&filter)).await?;
        if from != to && self.block(p, to).await?.map(|b| b.hash) != Some(top.hash) {
            return Err(Fail::Reorged);
        }
        if let Some(expected) = parent {
            let parent = if from == to {
                top.parent_hash
            } else {
                self.block(p, from).await?.ok_or(Fail::Reorged)?.parent_hash
            };
            if parent != expected {
                return Err(Fail::Reorged);
            }
        }
        Ok((logs, top))
    }

    /// Feeds a confirmed range to the tracker and has the reconciler post it with the
    /// cursor at `top`.
    async fn post(&self, p: &DynProvider, from: u64, top: BlockRef, logs: Vec<Log>) -> Result<(), Fail> {
        // Whatever the tracker holds for these blocks came from an earlier look at the
        // unconfirmed window; what was just fetched replaces it.
        self.tracker.rollback_above(from.saturating_sub(1));
        let mut limits = Vec::new();
        let mut hashes = vec![(top.number, top.hash)];
        for log in logs.iter().filter(|l| !l.removed) {
            match abi::decode(log) {
                Ok(Some(HookEvent::Spend(s))) => {
                    hashes.push((s.block, s.block_hash));
                    self.tracker.record_event(s);
                }
                Ok(Some(HookEvent::Limits(l))) => limits.push(l),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping a log that does not decode"),
            }
        }
        hashes.sort_unstable();
        hashes.dedup();
        let cursor = Cursor {
            number: top.number,
            hash: top.hash,
        };
        let outcome = self.reconciler.sync(p, cursor, limits, hashes).await?;
        if outcome.posted + outcome.unbound > 0 {
            tracing::debug!(
                from,
                to = top.number,
                posted = outcome.posted,
                unbound = outcome.unbound,
                "posted spends"
            );
        }
        for task in &outcome.allocated {
            tracing::info!(task, "allocated a budget for a new session");
        }
        self.status.send_modify(|s| {
            s.spend_events += outcome.posted + outcome.unbound;
            s.held_spends += outcome.held;
            s.synced = Some(top.number);
        });
        Ok(())
    }

    /// When the cursor's block is no longer canonical, finds the highest stored block
    /// that still is and reverts everything posted above it, in one transaction.
    async fn check_reorg(&mut self, p: &DynProvider) -> Result<(), Fail> {
        let Some(cursor) = self.engine.chain_cursor() else {
            return Ok(());
        };
        if self.block(p, cursor.number).await?.map(|b| b.hash) == Some(cursor.hash) {
            return Ok(());
        }
        let mut fork = None;
        for (number, hash) in self.engine.chain_hashes().into_iter().rev() {
            if number < cursor.number && self.block(p, number).await?.map(|b| b.hash) == Some(hash) {
                fork = Some(Cursor { number, hash });
                break;
            }
        }
        let above = fork.map_or(self.cfg.start_block.saturating_sub(1), |f| f.number);
        let depth = cursor.number - above;
        if fork.is_none() {
            tracing::error!(
                window = self.cfg.reorg_window,
                "no stored block hash is canonical any more: re-reading from start_block"
            );
        }
        tracing::error!(
            depth,
            confirmations = self.confirmations,
            first_lost_block = above + 1,
            "reorg deeper than the confirmation depth: reverting on-chain entries of blocks no longer canonical"
        );
        let reverted = self.engine.revert_chain(above, fork).await?;
        self.tracker.rollback_above(above);
        self.status.send_modify(|s| {
            s.reorgs += 1;
            s.max_reorg_depth = s.max_reorg_depth.max(depth);
            s.reverted_entries += reverted.entries + reverted.unbound;
            s.synced = fork.map(|f| f.number);
        });
        Ok(())
    }

    async fn block(&self, p: &DynProvider, number: u64) -> Result<Option<BlockRef>, Fail> {
        let block = self
            .call("eth_getBlockByNumber", || {
                p.get_block_by_number(BlockNumberOrTag::Number(number))
            })
            .await?;
        Ok(block.map(|b| BlockRef {
            number,
            hash: b.header.hash,
            parent_hash: b.header.inner.parent_hash,
        }))
    }

    /// Calls the node; see [`retrying`].
    async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Fail>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = TransportResult<T>>,
    {
        retrying(
            what,
            self.cfg.max_retries,
            || self.status.send_modify(|s| s.rpc_errors += 1),
            f,
        )
        .await
    }
}
