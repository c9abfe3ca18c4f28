//! The whole redb schema, and the encoding of what goes in it.
//!
//! Every table is declared here, `KEY_TO_VALUE`, and created in the first write
//! transaction. Values are postcard with a leading format byte, so a later version
//! can read old rows. The schema version lives in `META`; a file from another
//! version is refused on open with what to do.
//!
//! Entries have a table of their own keyed by `(task, seq)`, so no budget's entries
//! are ever all in memory; budgets, reservations and fired alerts are small and are
//! loaded at start-up.

use std::collections::BTreeMap;
use std::path::Path;

use num_bigint::BigUint;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::error::Error;
use super::state::{BudgetState, Hold, Millis, to_datetime};
use super::types::{BudgetStatus, Evidence, SpendEntry};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 2;

/// Small values by name: `schema_version`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Budgets by task id ([`BudgetRecord`]).
pub const TASK_TO_BUDGET: TableDefinition<&str, &[u8]> = TableDefinition::new("task_to_budget");
/// Entries by (task id, sequence) ([`EntryRecord`]).
pub const TASK_SEQ_TO_ENTRY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("task_seq_to_entry");
/// Entry id -> where it is: the idempotency index.
pub const ENTRY_ID_TO_TASK_SEQ: TableDefinition<&str, (&str, u64)> =
    TableDefinition::new("entry_id_to_task_seq");
/// Live (and not yet swept expired) reservations ([`HoldRecord`]).
pub const RESERVATION_ID_TO_HOLD: TableDefinition<&str, &[u8]> =
    TableDefinition::new("reservation_id_to_hold");
/// Expiry index for the sweeper: (expires at ms, reservation id).
pub const EXPIRY_TO_RESERVATION: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("expiry_to_reservation");
/// Alerts fired: (task id, threshold ppm) -> when.
pub const TASK_THRESHOLD_TO_FIRED_AT: TableDefinition<(&str, u32), i64> =
    TableDefinition::new("task_threshold_to_fired_at");

/// Chain sync's small values: `chain_id`, `cursor`.
pub const CHAIN_META: TableDefinition<&str, &[u8]> = TableDefinition::new("chain_meta");
/// Hashes of recently synced blocks, for finding the fork point of a reorg.
pub const BLOCK_TO_HASH: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("block_to_hash");
/// Every on-chain spend taken in, by (block, entry id) -> session: what a reorg reverts.
pub const BLOCK_ENTRY_TO_SESSION: TableDefinition<(u64, &str), &str> =
    TableDefinition::new("block_entry_to_session");
/// Spends whose valuation failed, kept until it succeeds ([`HeldSpend`](super::onchain::HeldSpend)).
pub const BLOCK_ENTRY_TO_HELD: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("block_entry_to_held");
/// Session (`account:sessionKey`) -> the task its spend goes to ([`BindingRecord`]).
pub const SESSION_TO_BINDING: TableDefinition<&str, &[u8]> = TableDefinition::new("session_to_binding");
/// Spend of sessions bound to no task yet, kept until one is bound ([`EntryRecord`]).
pub const SESSION_ENTRY_TO_UNBOUND: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("session_entry_to_unbound");
/// On-chain limits as each `LimitsUpdated` set them ([`LimitsRecord`]).
pub const ACCOUNT_BLOCK_TO_LIMITS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("account_block_to_limits");
/// Confirmed on-chain total per session, bound or not (big-endian bytes).
pub const SESSION_TO_ONCHAIN_TOTAL: TableDefinition<&str, &[u8]> =
    TableDefinition::new("session_to_onchain_total");

/// The format byte in front of every postcard value.
const FORMAT: u8 = 1;
/// The format byte in front of every JSON value.
const FORMAT_JSON: u8 = 2;

/// Versioned postcard encoding for stored values.
pub trait Codec: Serialize + DeserializeOwned {
    /// Format byte, then postcard.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        // Serializing plain structs into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard encodes plain structs"));
        out
    }

    /// The inverse of [`Codec::encode`].
    ///
    /// # Errors
    /// [`Error::Storage`] for an unknown format byte or a corrupt value.
    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(postcard::from_bytes(payload(bytes, FORMAT)?)?)
    }
}

/// The bytes after the format byte, when it is `format`.
fn payload(bytes: &[u8], format: u8) -> Result<&[u8], Error> {
    match bytes.split_first() {
        Some((&f, rest)) if f == format => Ok(rest),
        Some((f, _)) => Err(Error::Storage(format!("unknown value format {f}"))),
        None => Err(Error::Storage("empty value".into())),
    }
}

/// JSON encoding for rare values whose types only serialize self-describingly (alloy
/// primitives, optional fields): limits and held spends.
pub trait JsonCodec: Serialize + DeserializeOwned {
    /// Format byte, then JSON.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_JSON];
        out.extend(serde_json::to_vec(self).expect("plain structs encode as JSON"));
        out
    }

    /// The inverse of [`JsonCodec::encode`].
    ///
    /// # Errors
    /// [`Error::Storage`] for an unknown format byte or a corrupt value.
    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(payload(bytes, FORMAT_JSON)?).map_err(|e| Error::Storage(e.to_string()))
    }
}

/// Evidence as stored (plain fields: postcard is not self-describing).
#[derive(Debug, Serialize, Deserialize)]
struct EvidenceRecord {
    raw_amount: Vec<u8>,
    raw_unit: String,
    valuation: String,
    rate: Option<String>,
    feed: Option<String>,
    price: Option<String>,
    price_decimals: Option<u32>,
    round_id: Option<String>,
    price_updated_at: Option<u64>,
    price_block: Option<u64>,
}

impl From<&Evidence> for EvidenceRecord {
    fn from(e: &Evidence) -> Self {
        Self {
            raw_amount: e.raw_amount.0.to_bytes_be(),
            raw_unit: e.raw_unit.clone(),
            valuation: e.valuation.clone(),
            rate: e.rate.clone(),
            feed: e.feed.clone(),
            price: e.price.clone(),
            price_decimals: e.price_decimals,
            round_id: e.round_id.clone(),
            price_updated_at: e.price_updated_at,
            price_block: e.price_block,
        }
    }
}

impl From<EvidenceRecord> for Evidence {
    fn from(e: EvidenceRecord) -> Self {
        Self {
            raw_amount: Amount(BigUint::from_bytes_be(&e.raw_amount)),
            raw_unit: e.raw_unit,
            valuation: e.valuation,
            rate: e.rate,
            feed: e.feed,
            price: e.price,
            price_decimals: e.price_decimals,
            round_id: e.round_id,
            price_updated_at: e.price_updated_at,
            price_block: e.price_block,
        }
    }
}

/// A budget as stored. Reserved is not stored: it is the sum of the reservation rows.
#[derive(Debug, Serialize, Deserialize)]
pub struct BudgetRecord {
    total: Vec<u8>,
    unit: String,
    spent: Vec<u8>,
    status: BudgetStatus,
    progress: f64,
    created_ms: Millis,
    updated_ms: Millis,
    entry_count: u64,
    next_seq: u64,
}
impl Codec for BudgetRecord {}

/// An entry as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct EntryRecord {
    id: String,
    amount: Vec<u8>,
    peer_did: String,
    tool_name: String,
    reason: String,
    timestamp_ms: Millis,
    onchain: bool,
    evidence: Option<EvidenceRecord>,
}
impl Codec for EntryRecord {}

/// A reservation as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct HoldRecord {
    /// Owner task.
    pub task_id: String,
    amount: Vec<u8>,
    /// Expiry.
    pub expires_ms: Option<Millis>,
}
impl Codec for HoldRecord {}

impl HoldRecord {
    /// A row for `hold` of `task_id`.
    pub fn new(task_id: &str, hold: &Hold) -> Self {
        Self {
            task_id: task_id.to_owned(),
            amount: hold.amount.to_bytes_be(),
            expires_ms: hold.expires_ms,
        }
    }

    /// The hold it describes.
    pub fn hold(&self) -> Hold {
        Hold {
            amount: BigUint::from_bytes_be(&self.amount),
            expires_ms: self.expires_ms,
        }
    }
}

impl BudgetRecord {
    /// The row for a budget's state.
    pub fn from_state(b: &BudgetState) -> Self {
        Self {
            total: b.total.to_bytes_be(),
            unit: b.unit.clone(),
            spent: b.spent.to_bytes_be(),
            status: b.status,
            progress: b.progress,
            created_ms: b.created_ms,
            updated_ms: b.updated_ms,
            entry_count: b.entry_count,
            next_seq: b.next_seq,
        }
    }

    fn into_state(self, task_id: String) -> BudgetState {
        BudgetState {
            total: BigUint::from_bytes_be(&self.total),
            spent: BigUint::from_bytes_be(&self.spent),
            status: self.status,
            progress: self.progress,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            entry_count: self.entry_count,
            next_seq: self.next_seq,
            ..BudgetState::new(task_id, BigUint::ZERO, self.unit, 0)
        }
    }
}

impl EntryRecord {
    /// The row for an entry whose id and timestamp are filled in.
    pub fn from_entry(e: &SpendEntry, timestamp_ms: Millis) -> Self {
        Self {
            id: e.id.clone(),
            amount: e.amount.0.to_bytes_be(),
            peer_did: e.peer_did.clone(),
            tool_name: e.tool_name.clone(),
            reason: e.reason.clone(),
            timestamp_ms,
            onchain: e.onchain,
            evidence: e.evidence.as_ref().map(EvidenceRecord::from),
        }
    }

    /// The amount.
    pub fn amount(&self) -> BigUint {
        BigUint::from_bytes_be(&self.amount)
    }

    /// What the chain counted: the evidence's raw amount, else the amount.
    pub fn raw_amount(&self) -> BigUint {
        self.evidence
            .as_ref()
            .map_or_else(|| self.amount(), |e| BigUint::from_bytes_be(&e.raw_amount))
    }

    /// The entry it describes.
    pub fn into_entry(self) -> SpendEntry {
        SpendEntry {
            id: self.id,
            amount: Amount(BigUint::from_bytes_be(&self.amount)),
            peer_did: self.peer_did,
            tool_name: self.tool_name,
            reason: self.reason,
            timestamp: Some(to_datetime(self.timestamp_ms)),
            onchain: self.onchain,
            unit: None,
            evidence: self.evidence.map(Evidence::from),
        }
    }
}

/// Opens (or creates) the database, checks its schema version and creates every table.
/// A file left by a crashed process is repaired by redb on open.
///
/// # Errors
/// [`Error::Schema`] for a file of another schema version or not written by budgetd;
/// [`Error::Storage`] when the file cannot be opened.
pub fn open(path: &Path, cache_bytes: usize) -> Result<Database, Error> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| Error::Storage(format!("cannot open database {}: {e}", path.display())))?;
    let existing: Vec<String> = {
        let read = db.begin_read()?;
        read.list_tables()?.map(|t| t.name().to_owned()).collect()
    };
    let txn = begin_write(&db)?;
    {
        let mut meta = txn.open_table(META)?;
        let version = meta.get("schema_version")?.map(|v| v.value());
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::Schema(format!(
                    "database {} has schema version {v}, this budgetd reads version {SCHEMA_VERSION}: \
                     run the budgetd release that wrote it, or move the file aside to start afresh",
                    path.display()
                )));
            }
            None if !existing.is_empty() => {
                return Err(Error::Schema(format!(
                    "{} is a redb file that budgetd did not write (tables: {}); refusing to touch it",
                    path.display(),
                    existing.join(", ")
                )));
            }
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
        }
        txn.open_table(TASK_TO_BUDGET)?;
        txn.open_table(TASK_SEQ_TO_ENTRY)?;
        txn.open_table(ENTRY_ID_TO_TASK_SEQ)?;
        txn.open_table(RESERVATION_ID_TO_HOLD)?;
        txn.open_table(EXPIRY_TO_RESERVATION)?;
        txn.open_table(TASK_THRESHOLD_TO_FIRED_AT)?;
        txn.open_table(CHAIN_META)?;
        txn.open_table(BLOCK_TO_HASH)?;
        txn.open_table(BLOCK_ENTRY_TO_SESSION)?;
        txn.open_table(SESSION_TO_BINDING)?;
        txn.open_table(SESSION_ENTRY_TO_UNBOUND)?;
        txn.open_table(ACCOUNT_BLOCK_TO_LIMITS)?;
        txn.open_table(SESSION_TO_ONCHAIN_TOTAL)?;
        txn.open_table(BLOCK_ENTRY_TO_HELD)?;
    }
    txn.commit()?;
    Ok(db)
}

/// Every write goes through here, so durability is set in one place: a call that
/// returns has been fsynced.
pub fn begin_write(db: &Database) -> Result<WriteTransaction, Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// Reads every budget with its reservations and fired alerts.
///
/// # Errors
/// [`Error::Storage`] on a read failure or a corrupt row.
pub fn load(db: &Database) -> Result<BTreeMap<String, BudgetState>, Error> {
    let read = db.begin_read()?;
    let mut budgets = BTreeMap::new();
    for row in read.open_table(TASK_TO_BUDGET)?.iter()? {
        let (k, v) = row?;
        let task = k.value().to_owned();
        budgets.insert(task.clone(), BudgetRecord::decode(v.value())?.into_state(task));
    }
    for row in read.open_table(TASK_THRESHOLD_TO_FIRED_AT)?.iter()? {
        let (k, _) = row?;
        let (task, ppm) = k.value();
        if let Some(b) = budgets.get_mut(task) {
            b.fired.push(ppm);
        }
    }
    for row in read.open_table(RESERVATION_ID_TO_HOLD)?.iter()? {
        let (k, v) = row?;
        let rec = HoldRecord::decode(v.value())?;
        if let Some(b) = budgets.get_mut(&rec.task_id) {
            b.holds.insert(k.value().to_owned(), rec.hold());
        }
    }
    Ok(budgets)
}

/// Reads up to `limit` entries of a task after sequence `after`; returns the entries
/// and the sequence to continue from.
///
/// # Errors
/// [`Error::Storage`].
pub fn read_entries(
    db: &Database,
    task_id: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<SpendEntry>, Option<u64>), Error> {
    let read = db.begin_read()?;
    let table = read.open_table(TASK_SEQ_TO_ENTRY)?;
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut last = None;
    for row in table.range((task_id, start)..=(task_id, u64::MAX))? {
        let (k, v) = row?;
        if out.len() == limit {
            return Ok((out, last));
        }
        last = Some(k.value().1);
        out.push(EntryRecord::decode(v.value())?.into_entry());
    }
    Ok((out, None))
}

/// The tables of one write transaction, opened once per batch.
pub struct Tables<'txn> {
    /// See [`TASK_TO_BUDGET`].
    pub budgets: Table<'txn, &'static str, &'static [u8]>,
    /// See [`TASK_SEQ_TO_ENTRY`].
    pub entries: Table<'txn, (&'static str, u64), &'static [u8]>,
    /// See [`ENTRY_ID_TO_TASK_SEQ`].
    pub entry_ids: Table<'txn, &'static str, (&'static str, u64)>,
    /// See [`RESERVATION_ID_TO_HOLD`].
    pub holds: Table<'txn, &'static str, &'static [u8]>,
    /// See [`EXPIRY_TO_RESERVATION`].
    pub expiries: Table<'txn, (i64, &'static str), ()>,
    /// See [`TASK_THRESHOLD_TO_FIRED_AT`].
    pub fired: Table<'txn, (&'static str, u32), i64>,
    /// See [`CHAIN_META`].
    pub chain_meta: Table<'txn, &'static str, &'static [u8]>,
    /// See [`BLOCK_TO_HASH`].
    pub block_hashes: Table<'txn, u64, &'static [u8; 32]>,
    /// See [`BLOCK_ENTRY_TO_SESSION`].
    pub block_entries: Table<'txn, (u64, &'static str), &'static str>,
    /// See [`SESSION_TO_BINDING`].
    pub bindings: Table<'txn, &'static str, &'static [u8]>,
    /// See [`SESSION_ENTRY_TO_UNBOUND`].
    pub unbound: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    /// See [`ACCOUNT_BLOCK_TO_LIMITS`].
    pub limits: Table<'txn, (&'static str, u64, u64), &'static [u8]>,
    /// See [`SESSION_TO_ONCHAIN_TOTAL`].
    pub session_totals: Table<'txn, &'static str, &'static [u8]>,
    /// See [`BLOCK_ENTRY_TO_HELD`].
    pub held: Table<'txn, (u64, &'static str), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// Opens every table in `txn`.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, Error> {
        Ok(Self {
            budgets: txn.open_table(TASK_TO_BUDGET)?,
            entries: txn.open_table(TASK_SEQ_TO_ENTRY)?,
            entry_ids: txn.open_table(ENTRY_ID_TO_TASK_SEQ)?,
            holds: txn.open_table(RESERVATION_ID_TO_HOLD)?,
            expiries: txn.open_table(EXPIRY_TO_RESERVATION)?,
            fired: txn.open_table(TASK_THRESHOLD_TO_FIRED_AT)?,
            chain_meta: txn.open_table(CHAIN_META)?,
            block_hashes: txn.open_table(BLOCK_TO_HASH)?,
            block_entries: txn.open_table(BLOCK_ENTRY_TO_SESSION)?,
            bindings: txn.open_table(SESSION_TO_BINDING)?,
            unbound: txn.open_table(SESSION_ENTRY_TO_UNBOUND)?,
            limits: txn.open_table(ACCOUNT_BLOCK_TO_LIMITS)?,
            session_totals: txn.open_table(SESSION_TO_ONCHAIN_TOTAL)?,
            held: txn.open_table(BLOCK_ENTRY_TO_HELD)?,
        })
    }

    /// Writes a budget row.
    pub fn put_budget(&mut self, b: &BudgetState) -> Result<(), Error> {
        self.budgets.insert(
            b.task_id.as_str(),
            BudgetRecord::from_state(b).encode().as_slice(),
        )?;
        Ok(())
    }

    /// Writes a reservation and its expiry index row.
    pub fn put_hold(&mut self, id: &str, task_id: &str, hold: &Hold) -> Result<(), Error> {
        self.holds
            .insert(id, HoldRecord::new(task_id, hold).encode().as_slice())?;
        if let Some(t) = hold.expires_ms {
            self.expiries.insert((t, id), ())?;
        }
        Ok(())
    }

    /// Deletes a reservation; returns its row if it existed.
    pub fn remove_hold(&mut self, id: &str) -> Result<Option<HoldRecord>, Error> {
        let rec = match self.holds.remove(id)? {
            Some(v) => HoldRecord::decode(v.value())?,
            None => return Ok(None),
        };
        if let Some(t) = rec.expires_ms {
            self.expiries.remove((t, id))?;
        }
        Ok(Some(rec))
    }

    /// Reservation ids that expired at or before `now`.
    pub fn expired(&self, now: Millis) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for row in self.expiries.range((i64::MIN, "")..(now.saturating_add(1), ""))? {
            out.push(row?.0.value().1.to_owned());
        }
        Ok(out)
    }

    /// Where an entry id was recorded, if it was.
    pub fn entry_location(&self, id: &str) -> Result<Option<(String, u64)>, Error> {
        Ok(self.entry_ids.get(id)?.map(|v| {
            let (t, s) = v.value();
            (t.to_owned(), s)
        }))
    }

    /// Reads the entry at a location.
    pub fn entry_at(&self, task_id: &str, seq: u64) -> Result<Option<SpendEntry>, Error> {
        match self.entries.get((task_id, seq))? {
            Some(v) => Ok(Some(EntryRecord::decode(v.value())?.into_entry())),
            None => Ok(None),
        }
    }

    /// Writes an entry at `seq` and indexes its id.
    pub fn put_entry(
        &mut self,
        task_id: &str,
        seq: u64,
        e: &SpendEntry,
        timestamp_ms: Millis,
    ) -> Result<(), Error> {
        self.entries.insert(
            (task_id, seq),
            EntryRecord::from_entry(e, timestamp_ms).encode().as_slice(),
        )?;
        self.entry_ids.insert(e.id.as_str(), (task_id, seq))?;
        Ok(())
    }

    /// Remembers that a threshold fired.
    pub fn put_fired(&mut self, task_id: &str, ppm: u32, now: Millis) -> Result<(), Error> {
        self.fired.insert((task_id, ppm), now)?;
        Ok(())
    }
}
