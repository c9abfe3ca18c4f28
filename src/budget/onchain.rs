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
    ACCOUNT_BLOCK_TO_LIMITS, BLOCK_ENTRY_TO_HELD, BLOCK_TO_HASH, CHAIN_META, Codec, EntryRecord, JsonCodec,
    SESSION_ENTRY_TO_UNBOUND, SESSION_TO_BINDING, SESSION_TO_ONCHAIN_TOTAL,
};
use super::types::{Evidence, SpendEntry};

mod apply;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

    fn entry(&self, chain_id: u64, peer_did: &str, valued: &Valued) -> SpendEntry {
        SpendEntry {
            id: self.entry_id(chain_id),
            amount: super::Amount(valued.amount.clone()),
            unit: None,
            evidence: Some(valued.evidence.clone()),
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

/// Whether `id` has the form [`ChainSpend::entry_id`] gives: `{chainId}:0x{txHash}:{logIndex}`.
pub(crate) fn is_onchain_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = id.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(chain), Some(tx), Some(index), None) => {
            digits(chain)
                && digits(index)
                && tx
                    .strip_prefix("0x")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        _ => false,
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
impl JsonCodec for ChainLimits {}

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

/// A spend's amount in the budgets' unit, and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valued {
    /// Amount in the chain unit of the budgets.
    pub amount: BigUint,
    /// Raw amount, rate or price.
    pub evidence: Evidence,
}

/// A spend whose valuation failed: kept in the store and retried, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSpend {
    /// The spend.
    pub spend: ChainSpend,
    /// Why it could not be valued.
    pub reason: String,
}
impl JsonCodec for HeldSpend {}

/// Confirmed spends and limits up to a block, committed with the cursor.
#[derive(Debug, Clone)]
pub struct ChainCommit {
    /// The chain they come from.
    pub chain_id: u64,
    /// Valued spends to post, in chain order (some may be held spends released).
    pub spends: Vec<(ChainSpend, Valued)>,
    /// Spends whose valuation failed, kept until it succeeds.
    pub held: Vec<HeldSpend>,
    /// Limit changes, in chain order.
    pub limits: Vec<ChainLimits>,
    /// Hashes of blocks synced (at least the cursor's), for reorg detection.
    pub hashes: Vec<(u64, B256)>,
    /// The new cursor; `None` leaves it (releasing held spends).
    pub cursor: Option<Cursor>,
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
    /// Spends held back because their valuation failed.
    pub held: u64,
    /// Held spends valued and posted now.
    pub released: u64,
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
    /// Remember the chain id and the unit chain spends are posted in, or refuse
    /// others.
    Init {
        /// The node's chain id.
        chain_id: u64,
        /// The unit of budgets that take on-chain spend.
        unit: String,
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
    /// The unit on-chain spends are posted in.
    pub unit: Option<String>,
    /// Spends held back, by (block, entry id).
    pub held: BTreeMap<(u64, String), HeldSpend>,
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

impl From<CursorRecord> for Cursor {
    fn from(c: CursorRecord) -> Self {
        Self {
            number: c.number,
            hash: B256::from(c.hash),
        }
    }
}

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
    if let Some(v) = meta.get("unit")? {
        st.unit = Some(String::from_utf8_lossy(v.value()).into_owned());
    }
    for row in read.open_table(BLOCK_ENTRY_TO_HELD)?.iter()? {
        let (k, v) = row?;
        let (block, id) = k.value();
        st.held
            .insert((block, id.to_owned()), HeldSpend::decode(v.value())?);
    }
    if let Some(v) = meta.get("cursor")? {
        st.cursor = Some(CursorRecord::decode(v.value())?.into());
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

/// The books of the on-chain spend at one instant (one read transaction): the cursor
/// and, per session, the confirmed total and where its spends are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Books {
    /// The last block whose spends are all taken in.
    pub cursor: Option<Cursor>,
    /// Per session (`account:sessionKey`).
    pub sessions: BTreeMap<String, SessionBreakdown>,
}

/// What budgetd holds per session, in raw amounts (what the contract counted): its
/// confirmed total, and the spends behind it posted to tasks, waiting unbound, held
/// back for valuation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionBreakdown {
    /// The confirmed on-chain total kept for the session.
    pub confirmed: BigUint,
    /// Raw amounts of entries posted to tasks.
    pub posted: BigUint,
    /// Raw amounts waiting for a binding.
    pub unbound: BigUint,
    /// Raw amounts held back.
    pub held: BigUint,
}

/// Reads the [`Books`]: the cursor and the session totals, and every on-chain spend
/// taken in summed per session by where it is, all from one read transaction.
///
/// # Errors
/// [`Error::Storage`].
pub fn books(db: &Database) -> Result<Books, Error> {
    use super::store::{ENTRY_ID_TO_TASK_SEQ, TASK_SEQ_TO_ENTRY};
    let read = db.begin_read()?;
    let (ids, entries) = (
        read.open_table(ENTRY_ID_TO_TASK_SEQ)?,
        read.open_table(TASK_SEQ_TO_ENTRY)?,
    );
    let (held, unbound) = (
        read.open_table(BLOCK_ENTRY_TO_HELD)?,
        read.open_table(SESSION_ENTRY_TO_UNBOUND)?,
    );
    let mut out: BTreeMap<String, SessionBreakdown> = BTreeMap::new();
    for row in read.open_table(super::store::BLOCK_ENTRY_TO_SESSION)?.iter()? {
        let (k, v) = row?;
        let ((block, id), session) = (k.value(), v.value());
        let b = out.entry(session.to_owned()).or_default();
        if let Some(loc) = ids.get(id)? {
            let (task, seq) = loc.value();
            if let Some(e) = entries.get((task, seq))? {
                b.posted += EntryRecord::decode(e.value())?.raw_amount();
            }
        } else if let Some(h) = held.get((block, id))? {
            b.held += u256_to_big(HeldSpend::decode(h.value())?.spend.amount);
        } else if let Some(u) = unbound.get((session, id))? {
            b.unbound += EntryRecord::decode(u.value())?.raw_amount();
        }
    }
    for row in read.open_table(SESSION_TO_ONCHAIN_TOTAL)?.iter()? {
        let (k, v) = row?;
        out.entry(k.value().to_owned()).or_default().confirmed = BigUint::from_bytes_be(v.value());
    }
    let cursor = match read.open_table(CHAIN_META)?.get("cursor")? {
        Some(v) => Some(CursorRecord::decode(v.value())?.into()),
        None => None,
    };
    Ok(Books {
        cursor,
        sessions: out,
    })
}
