//! The reconciler: the only path from chain to engine.
//!
//! When blocks reach the confirmation depth, it takes the tracker's events up to the
//! newly confirmed block, values each one in the budgets' unit (see
//! [`crate::chain::valuation`]), posts one on-chain entry per event (id
//! `{chainId}:{txHash}:{logIndex}`) and moves the chain cursor in one redb write
//! transaction, then forgets what it posted. A crash anywhere leaves either both the
//! entries and the cursor or neither, so a restart from the cursor counts nothing
//! twice and loses nothing. A spend that cannot be valued is committed as held, with
//! the cursor, and valued again on every pass until it can be posted.

use std::collections::BTreeMap;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::B256;
use alloy::providers::{DynProvider, Provider};

use crate::budget::onchain::{
    ChainCommit, ChainLimits, ChainSpend, CommitOutcome, Cursor, HeldSpend, Valued,
};
use crate::budget::{Engine, Error};
use crate::chain::valuation::Valuator;
use crate::tracker::OnChainTracker;

/// Posts confirmed on-chain spend from the tracker into the engine.
pub struct Reconciler {
    engine: Engine,
    tracker: OnChainTracker,
    valuator: Valuator,
    chain_id: u64,
    auto_allocate: bool,
    keep_hashes: u64,
}

impl Reconciler {
    /// A reconciler for one chain.
    pub fn new(
        engine: Engine,
        tracker: OnChainTracker,
        valuator: Valuator,
        chain_id: u64,
        auto_allocate: bool,
        keep_hashes: u64,
    ) -> Self {
        Self {
            engine,
            tracker,
            valuator,
            chain_id,
            auto_allocate,
            keep_hashes,
        }
    }

    /// Values and posts every tracked spend up to `cursor` with `limits`, records
    /// `hashes`, and moves the cursor, all in one transaction; then resets what it
    /// posted.
    ///
    /// # Errors
    /// A storage error: nothing was posted and the tracker keeps the events.
    pub async fn sync(
        &self,
        p: &DynProvider,
        cursor: Cursor,
        limits: Vec<ChainLimits>,
        hashes: Vec<(u64, B256)>,
    ) -> Result<CommitOutcome, Error> {
        let events = self.tracker.events_through(cursor.number);
        let mut times = BTreeMap::new();
        let (mut spends, mut held) = (Vec::new(), Vec::new());
        for spend in events {
            match self.value_at(p, &spend, spend.block, &mut times).await {
                Ok(v) => spends.push((spend, v)),
                Err(reason) => {
                    tracing::warn!(block = spend.block, tx = %spend.tx_hash, %reason, "holding a spend back");
                    held.push(HeldSpend { spend, reason });
                }
            }
        }
        let outcome = self.commit(spends, held, Some(cursor), limits, hashes).await?;
        self.tracker.forget_through(cursor.number);
        Ok(outcome)
    }

    /// Tries the held spends again: at their own block first, then (when that block's
    /// price is unusable for good) at `confirmed`. Posts those that value.
    ///
    /// # Errors
    /// A storage error.
    pub async fn release_held(&self, p: &DynProvider, confirmed: u64) -> Result<CommitOutcome, Error> {
        let mut times = BTreeMap::new();
        let mut spends = Vec::new();
        for h in self.engine.held_spends() {
            let valued = match self.value_at(p, &h.spend, h.spend.block, &mut times).await {
                Ok(v) => Ok(v),
                Err(_) if confirmed > h.spend.block => {
                    self.value_at(p, &h.spend, confirmed, &mut times).await
                }
                Err(e) => Err(e),
            };
            if let Ok(v) = valued {
                tracing::info!(block = h.spend.block, tx = %h.spend.tx_hash, "released a held spend");
                spends.push((h.spend, v));
            }
        }
        if spends.is_empty() {
            return Ok(CommitOutcome::default());
        }
        self.commit(spends, Vec::new(), None, Vec::new(), Vec::new())
            .await
    }

    async fn value_at(
        &self,
        p: &DynProvider,
        spend: &ChainSpend,
        block: u64,
        times: &mut BTreeMap<u64, u64>,
    ) -> Result<Valued, String> {
        // Native and fixed valuations never read the time: no header fetch for them.
        let known = if self.valuator.needs_block_time() {
            (block == spend.block).then_some(spend.block_timestamp).flatten()
        } else {
            Some(0)
        };
        let time = match known {
            Some(t) => t,
            None => match times.get(&block) {
                Some(t) => *t,
                None => {
                    let header = p
                        .get_block_by_number(BlockNumberOrTag::Number(block))
                        .await
                        .map_err(|e| format!("block {block}: {e}"))?
                        .ok_or_else(|| format!("block {block} not found"))?;
                    times.insert(block, header.header.inner.timestamp);
                    header.header.inner.timestamp
                }
            },
        };
        self.valuator
            .value(p, spend, block, time)
            .await
            .map_err(|e| e.to_string())
    }

    async fn commit(
        &self,
        spends: Vec<(ChainSpend, Valued)>,
        held: Vec<HeldSpend>,
        cursor: Option<Cursor>,
        limits: Vec<ChainLimits>,
        hashes: Vec<(u64, B256)>,
    ) -> Result<CommitOutcome, Error> {
        self.engine
            .commit_chain(ChainCommit {
                chain_id: self.chain_id,
                spends,
                held,
                limits,
                hashes,
                cursor,
                auto_allocate: self.auto_allocate,
                keep_hashes: self.keep_hashes,
            })
            .await
    }
}
