//! The engine's interface for chain sync: init, commits with the cursor, reverts,
//! session bindings, and the chain state readers (see [`crate::budget::onchain`]).

use num_bigint::BigUint;

use super::super::error::Error;
use super::super::onchain::{
    self, Binding, ChainCommit, ChainDone, ChainLimits, ChainOp, CommitOutcome, Cursor, RevertOutcome,
};
use super::super::writer::{Done, Op};
use super::Engine;

impl Engine {
    async fn chain_call(&self, op: ChainOp) -> Result<ChainDone, Error> {
        match self.call(Op::Chain(op)).await? {
            Done::Chain(d) => Ok(d),
            other => unreachable!("chain op answered {other:?}"),
        }
    }

    fn chain_state<T>(&self, f: impl FnOnce(&onchain::ChainState) -> T) -> T {
        f(&self.inner.shared.chain.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Remembers the chain id and the unit on-chain spends are posted in on first use;
    /// refuses another chain or unit later.
    ///
    /// # Errors
    /// [`Error::Chain`] when the database follows another chain; a storage error.
    pub async fn chain_init(&self, chain_id: u64, unit: &str) -> Result<(), Error> {
        let settings = &self.inner.shared.settings;
        settings.decimals(unit)?;
        let unit = unit.to_owned();
        self.chain_call(ChainOp::Init { chain_id, unit }).await.map(drop)
    }

    /// Spends held back because their valuation failed, in chain order.
    pub fn held_spends(&self) -> Vec<onchain::HeldSpend> {
        self.chain_state(|c| c.held.values().cloned().collect())
    }

    /// Decimals of a unit.
    ///
    /// # Errors
    /// An unknown unit.
    pub fn unit_decimals(&self, unit: &str) -> Result<u32, Error> {
        self.inner.shared.settings.decimals(unit)
    }

    /// Posts confirmed spends and limits and moves the cursor, in one transaction.
    ///
    /// # Errors
    /// A storage error (nothing posted, cursor unchanged).
    pub async fn commit_chain(&self, commit: ChainCommit) -> Result<CommitOutcome, Error> {
        match self.chain_call(ChainOp::Commit(commit)).await? {
            ChainDone::Committed(o) => Ok(o),
            other => unreachable!("commit answered {other:?}"),
        }
    }

    /// Takes out everything posted from blocks above `above` (a reorg) and sets the
    /// cursor, in one transaction.
    ///
    /// # Errors
    /// A storage error (nothing changed).
    pub async fn revert_chain(&self, above: u64, cursor: Option<Cursor>) -> Result<RevertOutcome, Error> {
        match self.chain_call(ChainOp::Revert { above, cursor }).await? {
            ChainDone::Reverted(o) => Ok(o),
            other => unreachable!("revert answered {other:?}"),
        }
    }

    /// Sends a session's on-chain spend to `task_id` from now on, and posts the spend
    /// that waited unbound. Returns how many waiting spends were posted.
    ///
    /// # Errors
    /// `budget not found`, or a storage error.
    pub async fn bind_session(
        &self,
        account: alloy::primitives::Address,
        session_key: alloy::primitives::Address,
        task_id: &str,
        peer_did: &str,
    ) -> Result<u64, Error> {
        let op = ChainOp::Bind {
            session: onchain::session_id(account, session_key),
            binding: Binding {
                task_id: task_id.to_owned(),
                peer_did: peer_did.to_owned(),
            },
        };
        match self.chain_call(op).await? {
            ChainDone::Bound(n) => Ok(n),
            other => unreachable!("bind answered {other:?}"),
        }
    }

    /// Removes a session's binding; returns whether there was one.
    ///
    /// # Errors
    /// A storage error.
    pub async fn unbind_session(
        &self,
        account: alloy::primitives::Address,
        session_key: alloy::primitives::Address,
    ) -> Result<bool, Error> {
        let session = onchain::session_id(account, session_key);
        match self.chain_call(ChainOp::Unbind { session }).await? {
            ChainDone::Unbound(b) => Ok(b),
            other => unreachable!("unbind answered {other:?}"),
        }
    }

    /// The configured default allocation, base units.
    pub fn default_max(&self) -> Option<BigUint> {
        self.inner.shared.settings.default_max.clone()
    }

    /// The chain id this database follows.
    pub fn chain_id(&self) -> Option<u64> {
        self.chain_state(|c| c.chain_id)
    }

    /// The last block whose spends are all posted.
    pub fn chain_cursor(&self) -> Option<Cursor> {
        self.chain_state(|c| c.cursor)
    }

    /// Recent synced block hashes, ascending.
    pub fn chain_hashes(&self) -> Vec<(u64, alloy::primitives::B256)> {
        self.chain_state(|c| c.hashes.iter().map(|(n, h)| (*n, *h)).collect())
    }

    /// Session bindings, by session id.
    pub fn bindings(&self) -> Vec<(String, Binding)> {
        self.chain_state(|c| c.bindings.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Latest on-chain limits per account.
    pub fn chain_limits(&self) -> Vec<ChainLimits> {
        self.chain_state(|c| c.limits.values().cloned().collect())
    }

    /// The cursor and, per session, the confirmed total and the raw amounts posted,
    /// unbound and held, all from one read of the store (every spend taken in is
    /// visited: for audits, not hot paths).
    ///
    /// # Errors
    /// A storage error.
    pub async fn books(&self) -> Result<onchain::Books, Error> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || onchain::books(&db))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// Confirmed on-chain total per session (bound or not), and what waits unbound.
    pub fn session_totals(&self) -> Vec<(String, BigUint, BigUint)> {
        self.chain_state(|c| {
            c.totals
                .iter()
                .map(|(s, t)| {
                    (
                        s.clone(),
                        t.clone(),
                        c.unbound.get(s).cloned().unwrap_or_default(),
                    )
                })
                .collect()
        })
    }
}
