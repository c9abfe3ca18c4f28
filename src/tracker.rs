//! The `OnChainTracker`: per-session on-chain spend that is not yet posted.
//!
//! The seed's API (record, get_spent, reset, set_callback), safe to share between
//! tasks. A session is `(account, sessionKey)` on chain; here it is any string id.
//! The callback receives the session's new cumulative total; it must not treat that
//! total as a new spend (the original's double count).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use num_bigint::BigUint;

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
    callback: Option<SyncCallback>,
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

    /// Forgets a session (after its spend was synced).
    pub fn reset(&self, session_id: &str) {
        self.lock().spent.remove(session_id);
    }

    /// Sets the callback called on every record.
    pub fn set_callback(&self, f: impl Fn(&str, &BigUint) + Send + Sync + 'static) {
        self.lock().callback = Some(Arc::new(f));
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
