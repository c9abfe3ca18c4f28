//! The reconciler: the only path from chain to engine.
//!
//! When blocks reach the confirmation depth, it takes the tracker's events up to the
//! newly confirmed block, posts one on-chain entry per event (id
//! `{chainId}:{txHash}:{logIndex}`) and moves the chain cursor in one redb write
//! transaction, then forgets what it posted. A crash anywhere leaves either both the
//! entries and the cursor or neither, so a restart from the cursor counts nothing
//! twice and loses nothing.

use alloy::primitives::B256;

use crate::budget::onchain::{ChainCommit, ChainLimits, CommitOutcome, Cursor};
use crate::budget::{Engine, Error};
use crate::tracker::OnChainTracker;

/// Posts confirmed on-chain spend from the tracker into the engine.
#[derive(Clone)]
pub struct Reconciler {
    engine: Engine,
    tracker: OnChainTracker,
    chain_id: u64,
    auto_allocate: bool,
    keep_hashes: u64,
}

impl Reconciler {
    /// A reconciler for one chain.
    pub fn new(
        engine: Engine,
        tracker: OnChainTracker,
        chain_id: u64,
        auto_allocate: bool,
        keep_hashes: u64,
    ) -> Self {
        Self {
            engine,
            tracker,
            chain_id,
            auto_allocate,
            keep_hashes,
        }
    }

    /// Posts every tracked spend up to `cursor` with `limits`, records `hashes`, and
    /// moves the cursor, all in one transaction; then resets what it posted.
    ///
    /// # Errors
    /// A storage error: nothing was posted and the tracker keeps the events.
    pub async fn sync(
        &self,
        cursor: Cursor,
        limits: Vec<ChainLimits>,
        hashes: Vec<(u64, B256)>,
    ) -> Result<CommitOutcome, Error> {
        let spends = self.tracker.events_through(cursor.number);
        let outcome = self
            .engine
            .commit_chain(ChainCommit {
                chain_id: self.chain_id,
                spends,
                limits,
                hashes,
                cursor,
                auto_allocate: self.auto_allocate,
                keep_hashes: self.keep_hashes,
            })
            .await?;
        self.tracker.forget_through(cursor.number);
        Ok(outcome)
    }
}
