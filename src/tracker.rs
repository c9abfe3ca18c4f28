//! The `OnChainTracker`: per-session on-chain spend that is not yet posted.
//!
//! The seed's API (record, get_spent, reset, set_callback), safe to share between
//! tasks. A session is `(account, sessionKey)` on chain; here it is any string id.
//! The callback receives the session's new cumulative total; it must not treat that
//! total as a new spend (the original's double count).
//!
//! The watcher feeds it [`ChainSpend`] events, kept with the amounts they add up to,
//! so that a reorg can take them back out ([`OnChainTracker::rollback_above`]) and the
//! reconciler can post exactly the events behind a total, then forget them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use num_bigint::BigUint;

use crate::budget::onchain::{ChainSpend, u256_to_big};

/// Called after every record with (session id, new cumulative total).
pub type SyncCallback = Arc<dyn Fn(&str, &BigUint) + Send + Sync>;

/// Cumulative on-chain spend per session. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct OnChainTracker {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    // A std Mutex: nothing is awaited while it is held.
    spent: BTreeMap<String, BigUint>,
    /// Events not yet posted, by (block, log index).
    events: BTreeMap<(u64, u64), ChainSpend>,
    callback: Option<SyncCallback>,
}

impl Inner {
    fn take(&mut self, keys: Vec<(u64, u64)>) -> Vec<ChainSpend> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(ev) = self.events.remove(&k) {
                let session = ev.session();
                if let Some(total) = self.spent.get_mut(&session) {
                    let amount = u256_to_big(ev.amount);
                    *total -= amount.min(total.clone());
                    if *total == BigUint::ZERO {
                        self.spent.remove(&session);
                    }
                }
                out.push(ev);
            }
        }
        out
    }
}

impl OnChainTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `amount` to the session's total and calls the callback with the new total
    /// (outside the lock, so the callback may use the tracker).
    pub fn record(&self, session_id: &str, amount: &BigUint) {
        let (total, callback) = {
            let mut inner = self.lock();
            let total = inner.spent.entry(session_id.to_owned()).or_default();
            *total += amount;
            (total.clone(), inner.callback.clone())
        };
        if let Some(cb) = callback {
            cb(session_id, &total);
        }
    }

    /// The session's cumulative total; zero for an unknown session.
    pub fn get_spent(&self, session_id: &str) -> BigUint {
        self.lock().spent.get(session_id).cloned().unwrap_or_default()
    }

    /// Forgets a session (after its spend was synced), with its events.
    pub fn reset(&self, session_id: &str) {
        let mut inner = self.lock();
        inner.spent.remove(session_id);
        inner.events.retain(|_, e| e.session() != session_id);
    }

    /// Sets the callback called on every record.
    pub fn set_callback(&self, f: impl Fn(&str, &BigUint) + Send + Sync + 'static) {
        self.lock().callback = Some(Arc::new(f));
    }

    /// Adds an on-chain spend (once per block and log index) to its session.
    pub fn record_event(&self, event: ChainSpend) {
        let session = event.session();
        let amount = u256_to_big(event.amount);
        let key = (event.block, event.log_index);
        {
            let mut inner = self.lock();
            if inner.events.contains_key(&key) {
                return;
            }
            inner.events.insert(key, event);
        }
        self.record(&session, &amount);
    }

    /// Events of blocks up to `block`, in chain order: what the reconciler posts.
    pub fn events_through(&self, block: u64) -> Vec<ChainSpend> {
        self.lock()
            .events
            .range(..=(block, u64::MAX))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Forgets events of blocks up to `block` (posted) and takes them off the totals.
    pub fn forget_through(&self, block: u64) -> Vec<ChainSpend> {
        let mut inner = self.lock();
        let keys = inner
            .events
            .range(..=(block, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        inner.take(keys)
    }

    /// Takes out events of blocks above `block` (a reorg or a refetch of the
    /// unconfirmed window); returns them.
    pub fn rollback_above(&self, block: u64) -> Vec<ChainSpend> {
        let mut inner = self.lock();
        let keys = inner
            .events
            .range((block.saturating_add(1), 0)..)
            .map(|(k, _)| *k)
            .collect();
        inner.take(keys)
    }

    /// Every session with its total, in id order.
    pub fn sessions(&self) -> Vec<(String, BigUint)> {
        self.lock()
            .spent
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn records_per_session_and_resets() {
        let t = OnChainTracker::new();
        t.record("a", &BigUint::from(5u32));
        t.record("a", &BigUint::from(7u32));
        t.record("b", &BigUint::from(1u32));
        assert_eq!(t.get_spent("a"), BigUint::from(12u32));
        assert_eq!(t.get_spent("nobody"), BigUint::ZERO);
        t.reset("a");
        assert_eq!(t.get_spent("a"), BigUint::ZERO);
        assert_eq!(t.sessions(), vec![("b".to_owned(), BigUint::from(1u32))]);
    }

    #[test]
    fn callback_gets_cumulative_total() {
        let t = OnChainTracker::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        t.set_callback(move |id, total| s.lock().unwrap().push((id.to_owned(), total.clone())));
        t.record("a", &BigUint::from(5u32));
        t.record("a", &BigUint::from(7u32));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                ("a".to_owned(), BigUint::from(5u32)),
                ("a".to_owned(), BigUint::from(12u32))
            ]
        );
    }

    fn spend(block: u64, log_index: u64, amount: u64) -> ChainSpend {
        use alloy::primitives::{Address, B256, U256};
        ChainSpend {
            block,
            block_hash: B256::repeat_byte(block as u8),
            block_timestamp: None,
            tx_hash: B256::repeat_byte(1),
            log_index,
            account: Address::repeat_byte(0xaa),
            session_key: Address::repeat_byte(0xbb),
            amount: U256::from(amount),
        }
    }

    #[test]
    fn events_are_kept_behind_the_totals() {
        let t = OnChainTracker::new();
        let s = spend(1, 0, 5).session();
        t.record_event(spend(1, 0, 5));
        t.record_event(spend(1, 0, 5)); // the same log again counts once
        t.record_event(spend(2, 0, 7));
        t.record_event(spend(3, 1, 11));
        assert_eq!(t.get_spent(&s), BigUint::from(23u32));
        let reorged = t.rollback_above(2);
        assert_eq!(reorged.len(), 1);
        assert_eq!(t.get_spent(&s), BigUint::from(12u32));
        assert_eq!(t.events_through(1).len(), 1);
        assert_eq!(t.forget_through(2).len(), 2);
        assert_eq!(t.get_spent(&s), BigUint::ZERO);
        assert!(t.events_through(u64::MAX).is_empty());
    }

    #[test]
    fn shared_between_threads() {
        let t = OnChainTracker::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        t.set_callback(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::scope(|s| {
            for _ in 0..8 {
                let t = t.clone();
                s.spawn(move || (0..1000).for_each(|_| t.record("s", &BigUint::from(1u32))));
            }
        });
        assert_eq!(t.get_spent("s"), BigUint::from(8000u32));
        assert_eq!(calls.load(Ordering::Relaxed), 8000);
    }
}
