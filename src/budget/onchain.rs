//! Chain sync's side of the engine: on-chain spends posted with the chain cursor in
//! one write transaction, reorg reverts, session bindings and on-chain limits.
//!
//! Every spend taken in is indexed by `(block, entry id)`, whether it went to a task
//! or waits unbound, so a reorg can take out exactly what the lost blocks put in.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use num_bigint::BigUint;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::state::to_datetime;
use super::store::{
    ACCOUNT_BLOCK_TO_LIMITS, BLOCK_TO_HASH, CHAIN_META, Codec, EntryRecord, SESSION_ENTRY_TO_UNBOUND,
    SESSION_TO_BINDING, SESSION_TO_ONCHAIN_TOTAL,
};
use super::types::SpendEntry;
use super::writer::Batch;

/// The `toolName` of entries posted from the chain.
pub const TOOL_NAME: &str = "SpendingHook";

/// The last block whose spends are all posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Block number.
    pub number: u64,
    /// Its hash, to notice when it is no longer canonical.
    pub hash: B256,
}

/// One confirmed `SpendRecorded` log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpend {
    /// Block number.
    pub block: u64,
    /// Block hash.
    pub block_hash: B256,
    /// Block time, when the node gives it.
    pub block_timestamp: Option<u64>,
    /// Transaction hash.
    pub tx_hash: B256,
    /// Position of the log in the block.
    pub log_index: u64,
    /// The smart account.
    pub account: Address,
    /// The session key that spent.
    pub session_key: Address,
    /// Native value spent, wei.
    pub amount: U256,
}

impl ChainSpend {
    /// The session id, `account:sessionKey` in lower-case hex.
    pub fn session(&self) -> String {
        session_id(self.account, self.session_key)
    }

    /// The entry id: `{chainId}:{txHash}:{logIndex}`.
    pub fn entry_id(&self, chain_id: u64) -> String {
        format!("{chain_id}:{:#x}:{}", self.tx_hash, self.log_index)
    }

    fn entry(&self, chain_id: u64, peer_did: &str) -> SpendEntry {
        SpendEntry {
            id: self.entry_id(chain_id),
            amount: super::Amount(u256_to_big(self.amount)),
            peer_did: peer_did.to_owned(),
            tool_name: TOOL_NAME.to_owned(),
            reason: format!("SpendRecorded in tx {:#x} at block {}", self.tx_hash, self.block),
            timestamp: self
                .block_timestamp
                .map(|t| to_datetime(i64::try_from(t).unwrap_or(i64::MAX / 1000).saturating_mul(1000))),
            onchain: true,
        }
    }
}

/// One `LimitsUpdated` log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainLimits {
    /// The smart account.
    pub account: Address,
    /// Per-transaction limit, 0 = unlimited.
    pub per_tx_limit: U256,
    /// Daily limit, 0 = unlimited.
    pub daily_limit: U256,
    /// Cumulative limit, 0 = unlimited.
    pub cumulative_limit: U256,
    /// Block that set them.
    pub block: u64,
    /// Log index within the block.
    pub log_index: u64,
}
impl Codec for ChainLimits {}

/// Where a session's spend goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// The task.
    pub task_id: String,
    /// Put in the entries' `peerDid`.
    pub peer_did: String,
}
impl Codec for Binding {}

/// Confirmed spends and limits up to a block, committed with the cursor.
#[derive(Debug, Clone)]
pub struct ChainCommit {
    /// The chain they come from.
    pub chain_id: u64,
    /// Spends, in chain order.
    pub spends: Vec<ChainSpend>,
    /// Limit changes, in chain order.
    pub limits: Vec<ChainLimits>,
    /// Hashes of blocks synced (at least the cursor's), for reorg detection.
    pub hashes: Vec<(u64, B256)>,
    /// The new cursor.
    pub cursor: Cursor,
    /// Give an unbound session a budget of its own (task id = session id).
    pub auto_allocate: bool,
    /// How many blocks of hashes to keep below the cursor.
    pub keep_hashes: u64,
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommitOutcome {
    /// Spends posted to tasks.
    pub posted: u64,
    /// Spends kept for sessions with no task.
    pub unbound: u64,
    /// Spends taken in before (a replay): nothing changed.
    pub duplicates: u64,
    /// Tasks auto-allocated.
    pub allocated: Vec<String>,
}

/// What a revert took out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RevertOutcome {
    /// Entries removed from tasks.
    pub entries: u64,
    /// Unbound spends removed.
    pub unbound: u64,
}

/// Chain operations of the writer.
#[derive(Debug)]
pub enum ChainOp {
    /// Remember the chain id, or refuse another one.
    Init {
        /// The node's chain id.
        chain_id: u64,
    },
    /// Post confirmed spends and move the cursor.
    Commit(ChainCommit),
    /// Take out everything from blocks above `above` and set the cursor.
    Revert {
        /// Last block that stays.
        above: u64,
        /// The cursor after the revert; `None` = start afresh.
        cursor: Option<Cursor>,
    },
    /// Send a session's spend to a task, posting what waited unbound.
    Bind {
        /// Session id.
        session: String,
        /// The binding.
        binding: Binding,
    },
    /// Forget a session's binding.
    Unbind {
        /// Session id.
        session: String,
    },
}

/// What a [`ChainOp`] did.
#[derive(Debug)]
pub enum ChainDone {
    /// Init accepted.
    Init,
    /// Commit outcome.
    Committed(CommitOutcome),
    /// Revert outcome.
    Reverted(RevertOutcome),
    /// Waiting spends posted by a bind.
    Bound(u64),
    /// Whether a binding was removed.
    Unbound(bool),
}

/// Committed chain state, kept in memory for readers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainState {
    /// The chain this database follows.
    pub chain_id: Option<u64>,
    /// Last fully posted block.
    pub cursor: Option<Cursor>,
    /// Recent block hashes.
    pub hashes: BTreeMap<u64, B256>,
    /// Session bindings.
    pub bindings: BTreeMap<String, Binding>,
    /// Latest limits per account.
    pub limits: BTreeMap<Address, ChainLimits>,
    /// Confirmed on-chain total per session.
    pub totals: BTreeMap<String, BigUint>,
    /// Spend waiting for a binding, per session.
    pub unbound: BTreeMap<String, BigUint>,
}

/// `account:sessionKey` in lower-case hex.
pub fn session_id(account: Address, session_key: Address) -> String {
    format!("{account:#x}:{session_key:#x}")
}

/// A `U256` as a `BigUint`.
pub fn u256_to_big(v: U256) -> BigUint {
    BigUint::from_bytes_be(&v.to_be_bytes::<32>())
}

#[derive(Serialize, Deserialize)]
struct CursorRecord {
    number: u64,
    hash: [u8; 32],
}
impl Codec for CursorRecord {}

/// Reads the chain state.
///
/// # Errors
/// [`Error::Storage`].
pub fn load_chain(db: &Database) -> Result<ChainState, Error> {
    let read = db.begin_read()?;
    let mut st = ChainState::default();
    let meta = read.open_table(CHAIN_META)?;
    if let Some(v) = meta.get("chain_id")? {
        let bytes: [u8; 8] = v
            .value()
            .try_into()
            .map_err(|_| Error::Storage("bad chain_id".into()))?;
        st.chain_id = Some(u64::from_be_bytes(bytes));
    }
    if let Some(v) = meta.get("cursor")? {
        let c = CursorRecord::decode(v.value())?;
        st.cursor = Some(Cursor {
            number: c.number,
            hash: B256::from(c.hash),
        });
    }
    for row in read.open_table(BLOCK_TO_HASH)?.iter()? {
        let (k, v) = row?;
        st.hashes.insert(k.value(), B256::from(*v.value()));
    }
    for row in read.open_table(SESSION_TO_BINDING)?.iter()? {
        let (k, v) = row?;
        st.bindings
            .insert(k.value().to_owned(), Binding::decode(v.value())?);
    }
    for row in read.open_table(ACCOUNT_BLOCK_TO_LIMITS)?.iter()? {
        let l = ChainLimits::decode(row?.1.value())?;
        st.limits.insert(l.account, l); // rows ascend by block: the last one wins
    }
    for row in read.open_table(SESSION_TO_ONCHAIN_TOTAL)?.iter()? {
        let (k, v) = row?;
        st.totals
            .insert(k.value().to_owned(), BigUint::from_bytes_be(v.value()));
    }
    for row in read.open_table(SESSION_ENTRY_TO_UNBOUND)?.iter()? {
        let (k, v) = row?;
        *st.unbound.entry(k.value().0.to_owned()).or_default() += EntryRecord::decode(v.value())?.amount();
    }
    Ok(st)
}

impl Batch<'_, '_> {
    fn chain_mut(&mut self) -> &mut ChainState {
        if self.chain.is_none() {
            self.chain = Some(
                self.shared
                    .chain
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            );
        }
        self.chain.as_mut().expect("set above")
    }

    pub(super) fn apply_chain(&mut self, op: ChainOp) -> Result<ChainDone, Error> {
        match op {
            ChainOp::Init { chain_id } => {
                match self.chain_mut().chain_id {
                    Some(known) if known != chain_id => {
                        return Err(Error::Chain(format!(
                            "this database follows chain {known}, but the node is chain {chain_id}: \
                             point budgetd at a chain-{known} node or use another data directory"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        self.tables
                            .chain_meta
                            .insert("chain_id", chain_id.to_be_bytes().as_slice())?;
                        self.chain_mut().chain_id = Some(chain_id);
                    }
                }
                Ok(ChainDone::Init)
            }
            ChainOp::Commit(c) => self.commit(c).map(ChainDone::Committed),
            ChainOp::Revert { above, cursor } => self.revert(above, cursor).map(ChainDone::Reverted),
            ChainOp::Bind { session, binding } => self.bind(session, binding).map(ChainDone::Bound),
            ChainOp::Unbind { session } => {
                let removed = self.tables.bindings.remove(session.as_str())?.is_some();
                self.chain_mut().bindings.remove(&session);
                Ok(ChainDone::Unbound(removed))
            }
        }
    }

    fn commit(&mut self, c: ChainCommit) -> Result<CommitOutcome, Error> {
        if self.chain_mut().chain_id != Some(c.chain_id) {
            return Err(Error::Chain(format!(
                "commit for chain {} before init",
                c.chain_id
            )));
        }
        let mut out = CommitOutcome::default();
        for spend in &c.spends {
            let id = spend.entry_id(c.chain_id);
            if self
                .tables
                .block_entries
                .get((spend.block, id.as_str()))?
                .is_some()
            {
                out.duplicates += 1;
                continue;
            }
            let session = spend.session();
            let binding = match self.chain_mut().bindings.get(&session).cloned() {
                Some(b) => Some(b),
                None if c.auto_allocate => {
                    let b = Binding {
                        task_id: session.clone(),
                        peer_did: String::new(),
                    };
                    if !self.exists(&session) {
                        self.allocate(session.clone(), None)?;
                        out.allocated.push(session.clone());
                    }
                    self.tables
                        .bindings
                        .insert(session.as_str(), b.encode().as_slice())?;
                    self.chain_mut().bindings.insert(session.clone(), b.clone());
                    Some(b)
                }
                None => None,
            };
            let entry = spend.entry(c.chain_id, binding.as_ref().map_or("", |b| &b.peer_did));
            let amount = entry.amount.0.clone();
            match binding {
                Some(b) => {
                    self.record(&b.task_id, entry, None, true)?;
                    out.posted += 1;
                }
                None => {
                    let ts = entry.timestamp.map_or(self.now, |t| t.timestamp_millis());
                    let row = EntryRecord::from_entry(&entry, ts).encode();
                    self.tables
                        .unbound
                        .insert((session.as_str(), id.as_str()), row.as_slice())?;
                    *self.chain_mut().unbound.entry(session.clone()).or_default() += &amount;
                    out.unbound += 1;
                }
            }
            self.tables
                .block_entries
                .insert((spend.block, id.as_str()), session.as_str())?;
            self.add_total(&session, &amount, true)?;
        }
        for l in c.limits {
            let account = format!("{:#x}", l.account);
            self.tables
                .limits
                .insert((account.as_str(), l.block, l.log_index), l.encode().as_slice())?;
            let chain = self.chain_mut();
            if chain
                .limits
                .get(&l.account)
                .is_none_or(|old| (old.block, old.log_index) <= (l.block, l.log_index))
            {
                chain.limits.insert(l.account, l);
            }
        }
        for (n, h) in c
            .hashes
            .iter()
            .chain(std::iter::once(&(c.cursor.number, c.cursor.hash)))
        {
            self.tables.block_hashes.insert(*n, &h.0)?;
            self.chain_mut().hashes.insert(*n, *h);
        }
        let floor = c.cursor.number.saturating_sub(c.keep_hashes);
        let old: Vec<u64> = self.chain_mut().hashes.range(..floor).map(|(n, _)| *n).collect();
        for n in old {
            self.tables.block_hashes.remove(n)?;
            self.chain_mut().hashes.remove(&n);
        }
        self.set_cursor(Some(c.cursor))?;
        Ok(out)
    }

    fn set_cursor(&mut self, cursor: Option<Cursor>) -> Result<(), Error> {
        match cursor {
            Some(c) => {
                let rec = CursorRecord {
                    number: c.number,
                    hash: c.hash.0,
                };
                self.tables.chain_meta.insert("cursor", rec.encode().as_slice())?;
            }
            None => {
                self.tables.chain_meta.remove("cursor")?;
            }
        }
        self.chain_mut().cursor = cursor;
        Ok(())
    }

    fn add_total(&mut self, session: &str, amount: &BigUint, add: bool) -> Result<(), Error> {
        let total = self.chain_mut().totals.entry(session.to_owned()).or_default();
        if add {
            *total += amount;
        } else {
            let take = amount.min(&*total).clone();
            *total -= take;
        }
        let bytes = total.to_bytes_be();
        self.tables.session_totals.insert(session, bytes.as_slice())?;
        Ok(())
    }

    fn revert(&mut self, above: u64, cursor: Option<Cursor>) -> Result<RevertOutcome, Error> {
        let mut out = RevertOutcome::default();
        let mut lost = Vec::new();
        for row in self.tables.block_entries.range((above.saturating_add(1), "")..)? {
            let (k, v) = row?;
            let (block, id) = k.value();
            lost.push((block, id.to_owned(), v.value().to_owned()));
        }
        for (block, id, session) in lost {
            self.tables.block_entries.remove((block, id.as_str()))?;
            let amount = if let Some((task, seq)) = self.tables.entry_location(&id)? {
                out.entries += 1;
                self.revert_entry(&task, seq, &id)?
            } else if let Some(amount) = self.remove_unbound(&session, &id)? {
                out.unbound += 1;
                let waiting = self.chain_mut().unbound.entry(session.clone()).or_default();
                *waiting -= amount.clone().min(waiting.clone());
                amount
            } else {
                continue;
            };
            self.add_total(&session, &amount, false)?;
        }
        let mut lost_limits = Vec::new();
        for row in self.tables.limits.iter()? {
            let (k, _) = row?;
            let (account, block, index) = k.value();
            if block > above {
                lost_limits.push((account.to_owned(), block, index));
            }
        }
        if !lost_limits.is_empty() {
            for (account, block, index) in lost_limits {
                self.tables.limits.remove((account.as_str(), block, index))?;
            }
            let mut latest = BTreeMap::new();
            for row in self.tables.limits.iter()? {
                let l = ChainLimits::decode(row?.1.value())?;
                latest.insert(l.account, l);
            }
            self.chain_mut().limits = latest;
        }
        let gone: Vec<u64> = self
            .chain_mut()
            .hashes
            .range(above.saturating_add(1)..)
            .map(|(n, _)| *n)
            .collect();
        for n in gone {
            self.tables.block_hashes.remove(n)?;
            self.chain_mut().hashes.remove(&n);
        }
        self.set_cursor(cursor)?;
        Ok(out)
    }

    fn remove_unbound(&mut self, session: &str, id: &str) -> Result<Option<BigUint>, Error> {
        match self.tables.unbound.remove((session, id))? {
            Some(v) => Ok(Some(EntryRecord::decode(v.value())?.amount())),
            None => Ok(None),
        }
    }

    /// Takes one entry out of its budget: it was a fact of a chain that no longer is.
    /// The status stays as it was (an exhausted budget does not come back).
    fn revert_entry(&mut self, task: &str, seq: u64, id: &str) -> Result<BigUint, Error> {
        let amount = match self.tables.entries.remove((task, seq))? {
            Some(v) => EntryRecord::decode(v.value())?.amount(),
            None => return Err(Error::Storage(format!("entry {id} indexed but missing"))),
        };
        self.tables.entry_ids.remove(id)?;
        let now = self.now;
        let b = self.budget(task)?;
        b.spent -= amount.clone().min(b.spent.clone());
        b.entry_count = b.entry_count.saturating_sub(1);
        b.updated_ms = now;
        let b = b.clone();
        self.tables.put_budget(&b)?;
        Ok(amount)
    }

    fn bind(&mut self, session: String, binding: Binding) -> Result<u64, Error> {
        self.budget(&binding.task_id)?;
        self.tables
            .bindings
            .insert(session.as_str(), binding.encode().as_slice())?;
        self.chain_mut().bindings.insert(session.clone(), binding.clone());
        let mut waiting = Vec::new();
        for row in self.tables.unbound.range((session.as_str(), "")..)? {
            let (k, v) = row?;
            if k.value().0 != session {
                break;
            }
            waiting.push((k.value().1.to_owned(), EntryRecord::decode(v.value())?));
        }
        let posted = waiting.len() as u64;
        for (id, rec) in waiting {
            self.tables.unbound.remove((session.as_str(), id.as_str()))?;
            let mut entry = rec.into_entry();
            entry.peer_did = binding.peer_did.clone();
            self.record(&binding.task_id, entry, None, true)?;
        }
        self.chain_mut().unbound.remove(&session);
        Ok(posted)
    }
}
