//! The writer's side of chain sync: the transactions that commit spends with the
//! cursor, revert lost blocks, and bind sessions. Runs inside the writer's batch.

use num_bigint::BigUint;

use super::super::error::Error;
use super::super::store::{Codec, EntryRecord, JsonCodec};
use super::super::writer::Batch;
use super::*;

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

    pub(in crate::budget) fn apply_chain(&mut self, op: ChainOp) -> Result<ChainDone, Error> {
        match op {
            ChainOp::Init { chain_id, unit } => {
                let known = (self.chain_mut().chain_id, self.chain_mut().unit.clone());
                if let Some(known) = known.0
                    && known != chain_id
                {
                    return Err(Error::Chain(format!(
                        "this database follows chain {known}, but the node is chain {chain_id}: \
                         point budgetd at a chain-{known} node or use another data directory"
                    )));
                }
                if let Some(known) = known.1
                    && known != unit
                {
                    return Err(Error::Chain(format!(
                        "this database posts on-chain spends into {known} budgets, but the valuation \
                         now yields {unit}: amounts would be mixed; keep chain.valuation or use \
                         another data directory"
                    )));
                }
                self.tables
                    .chain_meta
                    .insert("chain_id", chain_id.to_be_bytes().as_slice())?;
                self.tables.chain_meta.insert("unit", unit.as_bytes())?;
                let chain = self.chain_mut();
                chain.chain_id = Some(chain_id);
                chain.unit = Some(unit);
                Ok(ChainDone::Init)
            }
            // A commit writes as it goes: refused part way, it must take the whole
            // transaction down with it (a storage-kind error does), or the spends
            // before the refusal would stay without their cursor.
            ChainOp::Commit(c) => self.commit(c).map(ChainDone::Committed).map_err(|e| match e {
                Error::Storage(_) => e,
                e => Error::Storage(format!("chain commit refused, nothing written: {e}")),
            }),
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
        let unit = self.chain_mut().unit.clone();
        for h in &c.held {
            let id = h.spend.entry_id(c.chain_id);
            let key = (h.spend.block, id.as_str());
            if self.tables.block_entries.get(key)?.is_some() {
                out.duplicates += 1;
                continue;
            }
            let session = h.spend.session();
            self.tables.held.insert(key, h.encode().as_slice())?;
            self.tables.block_entries.insert(key, session.as_str())?;
            self.add_total(&session, &u256_to_big(h.spend.amount), true)?;
            self.chain_mut().held.insert((h.spend.block, id), h.clone());
            out.held += 1;
        }
        for (spend, valued) in &c.spends {
            let id = spend.entry_id(c.chain_id);
            let key = (spend.block, id.as_str());
            let was_held = self.tables.held.remove(key)?.is_some();
            if was_held {
                self.chain_mut().held.remove(&(spend.block, id.clone()));
                out.released += 1;
            } else if self.tables.block_entries.get(key)?.is_some() {
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
                        self.allocate(session.clone(), None, unit.clone())?;
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
            let entry = spend.entry(c.chain_id, binding.as_ref().map_or("", |b| &b.peer_did), valued);
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
                    *self.chain_mut().unbound.entry(session.clone()).or_default() += &valued.amount;
                    out.unbound += 1;
                }
            }
            if !was_held {
                // Totals count what the contract counted (raw), held or posted.
                self.tables.block_entries.insert(key, session.as_str())?;
                self.add_total(&session, &u256_to_big(spend.amount), true)?;
            }
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
            .chain(c.cursor.as_ref().map(|c| (c.number, c.hash)).as_ref())
        {
            self.tables.block_hashes.insert(*n, &h.0)?;
            self.chain_mut().hashes.insert(*n, *h);
        }
        if let Some(cursor) = c.cursor {
            let floor = cursor.number.saturating_sub(c.keep_hashes);
            let old: Vec<u64> = self.chain_mut().hashes.range(..floor).map(|(n, _)| *n).collect();
            for n in old {
                self.tables.block_hashes.remove(n)?;
                self.chain_mut().hashes.remove(&n);
            }
            self.set_cursor(Some(cursor))?;
        }
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

    /// Changes a session's total in memory; [`Self::flush_totals`] writes it once per batch.
    fn add_total(&mut self, session: &str, amount: &BigUint, add: bool) -> Result<(), Error> {
        let totals = &mut self.chain_mut().totals;
        let total = match totals.get_mut(session) {
            Some(t) => t,
            None => totals.entry(session.to_owned()).or_default(),
        };
        if add {
            *total += amount;
        } else {
            let take = amount.min(&*total).clone();
            *total -= take;
        }
        if !self.dirty_totals.contains(session) {
            self.dirty_totals.insert(session.to_owned());
        }
        Ok(())
    }

    /// Writes the session totals this batch changed.
    pub(in crate::budget) fn flush_totals(&mut self) -> Result<(), Error> {
        let Some(chain) = &self.chain else {
            return Ok(());
        };
        for session in std::mem::take(&mut self.dirty_totals) {
            let bytes = chain
                .totals
                .get(&session)
                .map(BigUint::to_bytes_be)
                .unwrap_or_default();
            self.tables
                .session_totals
                .insert(session.as_str(), bytes.as_slice())?;
        }
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
            let amount = if let Some(h) = self.remove_held(block, &id)? {
                out.unbound += 1;
                u256_to_big(h.spend.amount)
            } else if let Some((task, seq)) = self.tables.entry_location(&id)? {
                out.entries += 1;
                self.revert_entry(&task, seq, &id)?
            } else if let Some(rec) = self.remove_unbound(&session, &id)? {
                out.unbound += 1;
                let waiting = self.chain_mut().unbound.entry(session.clone()).or_default();
                *waiting -= rec.amount().min(waiting.clone());
                rec.raw_amount()
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

    fn remove_held(&mut self, block: u64, id: &str) -> Result<Option<HeldSpend>, Error> {
        let held = match self.tables.held.remove((block, id))? {
            Some(v) => HeldSpend::decode(v.value())?,
            None => return Ok(None),
        };
        self.chain_mut().held.remove(&(block, id.to_owned()));
        Ok(Some(held))
    }

    fn remove_unbound(&mut self, session: &str, id: &str) -> Result<Option<EntryRecord>, Error> {
        match self.tables.unbound.remove((session, id))? {
            Some(v) => Ok(Some(EntryRecord::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Takes one entry out of its budget: it was a fact of a chain that no longer is.
    /// The status stays as it was (an exhausted budget does not come back). Returns
    /// the raw amount the chain had counted.
    fn revert_entry(&mut self, task: &str, seq: u64, id: &str) -> Result<BigUint, Error> {
        let rec = match self.tables.entries.remove((task, seq))? {
            Some(v) => EntryRecord::decode(v.value())?,
            None => return Err(Error::Storage(format!("entry {id} indexed but missing"))),
        };
        self.tables.entry_ids.remove(id)?;
        let (amount, now) = (rec.amount(), self.now);
        let b = self.budget(task)?;
        b.spent -= amount.clone().min(b.spent.clone());
        b.entry_count = b.entry_count.saturating_sub(1);
        b.updated_ms = now;
        Ok(rec.raw_amount())
    }

    fn bind(&mut self, session: String, binding: Binding) -> Result<u64, Error> {
        let chain_unit = self.chain_mut().unit.clone();
        let b = self.budget(&binding.task_id)?;
        if let Some(unit) = chain_unit
            && unit != b.unit
        {
            return Err(Error::UnitMismatch {
                task: binding.task_id.clone(),
                given: unit,
                budget: b.unit.clone(),
            });
        }
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
