//! Property tests: random operation sequences against a real redb file, checking the
//! engine's books after every step and after reopening the database.

mod common;

use std::collections::BTreeMap;

use budgetd::budget::{BudgetStatus, Engine, SpendEntry};
use common::{TestDb, n};
use num_bigint::{BigInt, BigUint};
use proptest::prelude::*;

const TASKS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Allocate(usize, u64),
    Record(usize, u64),
    RecordReserved(usize, u64),
    PostOnchain(usize, u64),
    Reserve(usize, u64),
    Release(usize),
    Close(usize),
    Progress(usize, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let task = 0..TASKS.len();
    prop_oneof![
        2 => (task.clone(), 1..400u64).prop_map(|(t, a)| Op::Allocate(t, a)),
        4 => (task.clone(), 0..120u64).prop_map(|(t, a)| Op::Record(t, a)),
        2 => (task.clone(), 1..120u64).prop_map(|(t, a)| Op::RecordReserved(t, a)),
        2 => (task.clone(), 0..150u64).prop_map(|(t, a)| Op::PostOnchain(t, a)),
        3 => (task.clone(), 0..150u64).prop_map(|(t, a)| Op::Reserve(t, a)),
        2 => (0..8usize).prop_map(Op::Release),
        1 => task.clone().prop_map(Op::Close),
        1 => (task, 0..=120u8).prop_map(|(t, p)| Op::Progress(t, p)),
        1 => Just(Op::Reopen),
    ]
}

/// What the test itself knows: live reservations it holds, and each task's last status.
#[derive(Default)]
struct Model {
    holds: Vec<(String, &'static str, u64)>,
    status: BTreeMap<&'static str, BudgetStatus>,
    entry_ids: u64,
}

fn allowed(from: BudgetStatus, to: BudgetStatus) -> bool {
    use BudgetStatus::*;
    from == to
        || matches!(
            (from, to),
            (Active, Exhausted) | (Active, Closed) | (Exhausted, Closed)
        )
}

async fn check_books(e: &Engine, m: &mut Model) {
    for task in TASKS {
        let Ok(b) = e.get(task) else { continue };
        let mut sum = BigUint::ZERO;
        let mut count = 0;
        let mut after = None;
        loop {
            let page = e.entries(task, after, 50).await.unwrap();
            count += page.items.len() as u64;
            sum += page.items.iter().map(|x| &x.amount.0).sum::<BigUint>();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(b.spent.0, sum, "{task}: spent is the sum of entries");
        assert_eq!(b.entry_count, count, "{task}: entry count");
        let held: u64 = m.holds.iter().filter(|h| h.1 == task).map(|h| h.2).sum();
        assert_eq!(
            b.reserved.0,
            n(held),
            "{task}: reserved is the sum of live reservations"
        );
        let remaining = BigInt::from(b.total_budget.0.clone()) - BigInt::from(sum) - BigInt::from(held);
        assert_eq!(b.remaining.0, remaining, "{task}: remaining");
        let prev = m.status.insert(task, b.status).unwrap_or(BudgetStatus::Active);
        assert!(allowed(prev, b.status), "{task}: {prev:?} -> {:?}", b.status);
    }
}

async fn run(ops: Vec<Op>) {
    let db = TestDb::new();
    let cfg = budgetd::budget::EngineConfig {
        reservation_ttl_secs: 0,
        ..common::config()
    };
    let mut e = db.builder().config(cfg.clone()).open().unwrap();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Allocate(t, total) => {
                let _ = e.allocate(TASKS[t], Some(n(total))).await;
            }
            Op::Record(t, a) => {
                let _ = e.record(TASKS[t], SpendEntry::new(a), None).await;
            }
            Op::RecordReserved(t, a) => {
                if let Some(i) = m.holds.iter().position(|h| h.1 == TASKS[t]) {
                    if e.record(TASKS[t], SpendEntry::new(a), Some(&m.holds[i].0))
                        .await
                        .is_ok()
                    {
                        m.holds.remove(i);
                    }
                }
            }
            Op::PostOnchain(t, a) => {
                m.entry_ids += 1;
                let entry = SpendEntry::new(a).with_id(format!("chain:{}", m.entry_ids));
                let _ = e.post_onchain(TASKS[t], entry).await;
            }
            Op::Reserve(t, a) => {
                if let Ok(r) = e.reserve(TASKS[t], n(a), None).await {
                    m.holds.push((r.id, TASKS[t], a));
                }
            }
            Op::Release(i) => {
                if i < m.holds.len() {
                    let h = m.holds.remove(i);
                    assert!(e.release(&h.0).await.unwrap());
                    assert!(!e.release(&h.0).await.unwrap());
                }
            }
            Op::Close(t) => {
                if e.close(TASKS[t]).await.is_ok() {
                    m.holds.retain(|h| h.1 != TASKS[t]);
                }
            }
            Op::Progress(t, p) => {
                let r = e.set_progress(TASKS[t], f64::from(p) / 100.0).await;
                assert_eq!(r.is_err(), p > 100 || e.get(TASKS[t]).is_err());
            }
            Op::Reopen => {
                let before = e.list(None, None, 100).items;
                drop(e);
                e = db.builder().config(cfg.clone()).open().unwrap();
                assert_eq!(
                    e.list(None, None, 100).items,
                    before,
                    "reopen gives the same state"
                );
            }
        }
        check_books(&e, &mut m).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn books_balance_under_random_operations(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops));
    }
}
