//! The seed's rules (SEED-FACTS) and the mends of the original, against a real redb
//! file: each test names the rule it holds the engine to.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use budgetd::budget::{BudgetStatus, EngineConfig, ErrorKind, Notification, SpendEntry};
use common::{TestDb, n};
use num_bigint::BigInt;

fn kind<T: std::fmt::Debug>(r: Result<T, budgetd::budget::Error>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

#[tokio::test]
async fn allocate_uses_default_max_and_refuses_duplicates() {
    let db = TestDb::new();
    let e = db.open();
    let b = e.allocate("t1", None).await.unwrap();
    assert_eq!(b.total_budget.0, n(10_000_000));
    assert_eq!(
        (b.status, b.spent.0.clone(), b.reserved.0.clone()),
        (BudgetStatus::Active, n(0), n(0))
    );
    let zero = e.allocate("t2", Some(n(0))).await.unwrap();
    assert_eq!(zero.total_budget.0, n(10_000_000), "zero total takes the default");
    assert_eq!(e.allocate("t3", Some(n(5))).await.unwrap().total_budget.0, n(5));
    let err = e.allocate("t1", Some(n(5))).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.to_string().as_str()),
        (ErrorKind::Exists, "budget already exists")
    );
    assert_eq!(kind(e.allocate("", None).await), ErrorKind::InvalidTask);
    assert_eq!(
        kind(e.allocate(&"x".repeat(257), None).await),
        ErrorKind::InvalidTask
    );
    let huge = BigInt::from(1) << 256u32;
    assert_eq!(
        kind(e.allocate("t4", Some(huge.to_biguint().unwrap())).await),
        ErrorKind::InvalidAmount
    );
}

#[tokio::test]
async fn allocate_without_default_is_invalid_amount() {
    let db = TestDb::new();
    let e = db.builder().config(EngineConfig::default()).open().unwrap();
    let err = e.allocate("t", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidAmount);
    assert!(err.to_string().starts_with("invalid amount"), "{err}");
}

#[tokio::test]
async fn check_follows_the_seed_order() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    assert_eq!(kind(e.check("t", &n(0), None)), ErrorKind::InvalidAmount);
    assert_eq!(kind(e.check("nope", &n(1), None)), ErrorKind::NotFound);
    e.check("t", &n(100), None).unwrap();
    let err = e.check("t", &n(101), None).unwrap_err();
    assert_eq!(err.to_string(), "budget exceeded: need 101 but 100 remaining");
    e.close("t").await.unwrap();
    assert_eq!(
        e.check("t", &n(1), None).unwrap_err().to_string(),
        "budget is closed"
    );
}

#[tokio::test]
async fn without_hard_limit_only_exhaustion_stops_check() {
    let db = TestDb::new();
    let cfg = EngineConfig {
        hard_limit: false,
        ..common::config()
    };
    let e = db.builder().config(cfg).open().unwrap();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.check("t", &n(500), None).unwrap();
    let r = e.record("t", SpendEntry::new(150), None).await.unwrap();
    assert_eq!(r.budget.status, BudgetStatus::Exhausted);
    assert_eq!(
        r.budget.remaining.0,
        BigInt::from(-50),
        "remaining may go negative"
    );
    assert_eq!(
        kind(e.check("t", &n(1), None)),
        ErrorKind::Exceeded,
        "exhausted refuses even without hard limit"
    );
    // Reserve refuses beyond remaining whatever the hard limit.
    assert_eq!(kind(e.reserve("t", n(1), None).await), ErrorKind::Exceeded);
}

#[tokio::test]
async fn record_follows_the_seed() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    assert_eq!(
        kind(e.record("t", SpendEntry::new(0), None).await),
        ErrorKind::InvalidAmount
    );
    assert_eq!(
        kind(e.record("nope", SpendEntry::new(1), None).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(e.record("t", SpendEntry::new(101), None).await),
        ErrorKind::Exceeded
    );
    let before = chrono::Utc::now();
    let r = e.record("t", SpendEntry::new(60), None).await.unwrap();
    assert!(
        uuid::Uuid::parse_str(&r.entry.id).is_ok(),
        "empty id becomes a UUID: {}",
        r.entry.id
    );
    assert!(r.entry.timestamp.unwrap() >= before - chrono::Duration::milliseconds(1));
    assert_eq!(r.budget.spent.0, n(60));
    let r = e.record("t", SpendEntry::new(40), None).await.unwrap();
    assert_eq!(r.budget.status, BudgetStatus::Exhausted, "remaining 0 exhausts");
    assert_eq!(
        kind(e.record("t", SpendEntry::new(1), None).await),
        ErrorKind::Exceeded
    );
    e.close("t").await.unwrap();
    assert_eq!(
        kind(e.record("t", SpendEntry::new(1), None).await),
        ErrorKind::Closed
    );
    let page = e.entries("t", None, 10).await.unwrap();
    assert_eq!(
        page.items.iter().map(|x| x.amount.0.clone()).collect::<Vec<_>>(),
        vec![n(60), n(40)]
    );
}

#[tokio::test]
async fn seed_alert_example_fires_once_ever() {
    let db = TestDb::new();
    let fired = Arc::new(Mutex::new(Vec::new()));
    let f = fired.clone();
    let e = db
        .builder()
        .on_alert(move |task, t| f.lock().unwrap().push((task.to_owned(), t)))
        .open()
        .unwrap();
    e.allocate("t", Some(n(1000))).await.unwrap();
    let mut per_record = Vec::new();
    for a in [500, 310, 10] {
        per_record.push(e.record("t", SpendEntry::new(a), None).await.unwrap().alerts);
    }
    assert_eq!(per_record, vec![vec![0.5], vec![0.8], vec![]]);
    assert_eq!(
        *fired.lock().unwrap(),
        vec![("t".to_owned(), 0.5), ("t".to_owned(), 0.8)]
    );
    drop(e);
    // After a restart the fired thresholds are remembered: 0.8 does not fire again, 0.95 does.
    let e = db.open();
    assert_eq!(e.get("t").unwrap().alerts_fired, vec![0.5, 0.8]);
    let r = e.record("t", SpendEntry::new(140), None).await.unwrap();
    assert_eq!(r.alerts, vec![0.95]);
}

#[tokio::test]
async fn thresholds_crossed_together_fire_ascending() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(1000))).await.unwrap();
    let mut sub = e.subscribe();
    let r = e.record("t", SpendEntry::new(1000), None).await.unwrap();
    assert_eq!(r.alerts, vec![0.5, 0.8, 0.95]);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.recv().await.unwrap());
    }
    assert_eq!(
        got.last().unwrap(),
        &Notification::Exhausted { task_id: "t".into() }
    );
    assert_eq!(
        got[0],
        Notification::Alert {
            task_id: "t".into(),
            threshold: 0.5
        }
    );
}

#[tokio::test]
async fn reserve_and_idempotent_release() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    assert_eq!(kind(e.reserve("t", n(0), None).await), ErrorKind::InvalidAmount);
    assert_eq!(kind(e.reserve("nope", n(1), None).await), ErrorKind::NotFound);
    let r = e.reserve("t", n(70), None).await.unwrap();
    assert_eq!(r.task_id, "t");
    assert!(r.expires_at.is_some(), "the configured default TTL applies");
    let b = e.get("t").unwrap();
    assert_eq!(
        (b.reserved.0.clone(), b.remaining.0.clone()),
        (n(70), BigInt::from(30))
    );
    assert_eq!(
        e.reserve("t", n(31), None).await.unwrap_err().to_string(),
        "budget exceeded: need 31 but 30 remaining"
    );
    assert_eq!(
        kind(e.check("t", &n(31), None)),
        ErrorKind::Exceeded,
        "check counts reserved"
    );
    assert!(e.release(&r.id).await.unwrap());
    assert!(!e.release(&r.id).await.unwrap(), "second release does nothing");
    assert!(!e.release("never-existed").await.unwrap());
    assert_eq!(e.get("t").unwrap().reserved.0, n(0));
    e.close("t").await.unwrap();
    assert_eq!(kind(e.reserve("t", n(1), None).await), ErrorKind::Closed);
}

#[tokio::test]
async fn exhausted_with_a_reservation() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.reserve("t", n(60), None).await.unwrap();
    let r = e.record("t", SpendEntry::new(40), None).await.unwrap();
    assert_eq!(
        r.budget.status,
        BudgetStatus::Exhausted,
        "spent + reserved = total exhausts"
    );
    assert_eq!(
        r.alerts,
        Vec::<f64>::new(),
        "alerts count spent only: 40% fires nothing"
    );
}

#[tokio::test]
async fn record_can_consume_its_reservation() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    let r = e.reserve("t", n(80), None).await.unwrap();
    assert_eq!(
        kind(e.record("t", SpendEntry::new(80), None).await),
        ErrorKind::Exceeded
    );
    let out = e.record("t", SpendEntry::new(80), Some(&r.id)).await.unwrap();
    assert_eq!(
        (out.budget.spent.0.clone(), out.budget.reserved.0.clone()),
        (n(80), n(0))
    );
    assert!(!e.release(&r.id).await.unwrap(), "consumed by the record");
    assert_eq!(
        kind(e.record("t", SpendEntry::new(1), Some(&r.id)).await),
        ErrorKind::ReservationNotFound
    );
}

#[tokio::test]
async fn reservations_expire_across_a_restart() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.reserve("t", n(50), Some(Duration::from_millis(300)))
        .await
        .unwrap();
    let forever = EngineConfig {
        reservation_ttl_secs: 0,
        ..common::config()
    };
    assert_eq!(e.get("t").unwrap().reserved.0, n(50));
    drop(e);
    let e = db.builder().config(forever).open().unwrap();
    assert_eq!(
        e.get("t").unwrap().reserved.0,
        n(50),
        "survives the restart while live"
    );
    let kept = e.reserve("t", n(10), None).await.unwrap();
    assert_eq!(kept.expires_at, None, "ttl 0 means no expiry");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = e.get("t").unwrap();
    assert_eq!(
        (b.reserved.0.clone(), b.remaining.0.clone()),
        (n(10), BigInt::from(90))
    );
    e.reserve("t", n(90), None).await.unwrap();
}

#[tokio::test]
async fn progress_burn_rate_and_close() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    assert_eq!(kind(e.set_progress("t", 1.5).await), ErrorKind::InvalidProgress);
    assert_eq!(kind(e.set_progress("t", -0.1).await), ErrorKind::InvalidProgress);
    assert_eq!(
        kind(e.set_progress("t", f64::NAN).await),
        ErrorKind::InvalidProgress
    );
    assert_eq!(kind(e.set_progress("nope", 0.5).await), ErrorKind::NotFound);
    assert_eq!(e.set_progress("t", 0.25).await.unwrap().progress, 0.25);
    assert_eq!(e.burn_rate("t").unwrap(), n(0), "nothing spent");
    assert_eq!(kind(e.burn_rate("nope")), ErrorKind::NotFound);
    e.record("t", SpendEntry::new(100), None).await.unwrap();
    assert!(
        e.burn_rate("t").unwrap() > n(100),
        "100 spent within a minute is > 100/min"
    );
    let report = e.close("t").await.unwrap();
    assert_eq!(report.status, BudgetStatus::Closed);
    assert_eq!((report.total_spent.0.clone(), report.entry_count), (n(100), 1));
    assert!(report.duration > 0);
    assert_eq!(kind(e.close("t").await), ErrorKind::Closed);
    assert_eq!(e.get("t").unwrap().status, BudgetStatus::Closed, "stays stored");
}

#[tokio::test]
async fn entry_ids_are_idempotency_keys() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.allocate("u", Some(n(100))).await.unwrap();
    let entry = SpendEntry {
        tool_name: "search".into(),
        ..SpendEntry::new(10).with_id("req-1")
    };
    assert!(!e.record("t", entry.clone(), None).await.unwrap().already_recorded);
    let again = e.record("t", entry.clone(), None).await.unwrap();
    assert!(again.already_recorded);
    assert_eq!(again.budget.spent.0, n(10), "nothing counted twice");
    let other = SpendEntry::new(11).with_id("req-1");
    assert_eq!(kind(e.record("t", other, None).await), ErrorKind::Conflict);
    assert_eq!(
        kind(e.record("u", entry, None).await),
        ErrorKind::Conflict,
        "same id, other task"
    );
    assert_eq!(e.get("t").unwrap().entry_count, 1);

    // The ids of on-chain spends are not for agents: taken first, the spend could
    // never be posted.
    let tx = format!("0x{}", "ab".repeat(32));
    let taken = e
        .record("t", SpendEntry::new(1).with_id(format!("31337:{tx}:0")), None)
        .await;
    assert!(
        matches!(taken, Err(budgetd::budget::Error::ReservedId(_))),
        "{taken:?}"
    );
    for free in [
        format!("31337:{tx}"),
        format!("x:{tx}:0"),
        format!("31337:{tx}:0:1"),
        "31337:0xab:0".into(),
    ] {
        assert!(
            e.record("t", SpendEntry::new(1).with_id(free), None)
                .await
                .is_ok()
        );
    }
    let posted = e
        .post_onchain("t", SpendEntry::new(1).with_id(format!("31337:{tx}:0")))
        .await;
    assert!(posted.is_ok(), "{posted:?}");
}

#[tokio::test]
async fn onchain_spends_are_facts() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(1000))).await.unwrap();
    let r = e
        .post_onchain("t", SpendEntry::new(1500).with_id("31337:0xab:0"))
        .await
        .unwrap();
    assert_eq!(r.budget.status, BudgetStatus::Exhausted);
    assert_eq!(r.alerts, vec![0.5, 0.8, 0.95]);
    assert!(r.entry.onchain);
    e.close("t").await.unwrap();
    let r = e
        .post_onchain("t", SpendEntry::new(5).with_id("31337:0xab:1"))
        .await
        .unwrap();
    assert_eq!(
        (r.budget.spent.0.clone(), r.budget.status),
        (n(1505), BudgetStatus::Closed)
    );
    assert!(
        e.post_onchain("t", SpendEntry::new(5).with_id("31337:0xab:1"))
            .await
            .unwrap()
            .already_recorded
    );
    // An agent record with the same id is not the same spend.
    assert_eq!(
        kind(
            e.record("t", SpendEntry::new(5).with_id("31337:0xab:1"), None)
                .await
        ),
        ErrorKind::Conflict
    );
}

#[tokio::test]
async fn risk_assessor_is_called_by_check() {
    let db = TestDb::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let e = db
        .builder()
        .risk_assessor(move |peer, amount| {
            s.lock().unwrap().push((peer.to_owned(), amount.clone()));
            if peer == "did:bad" {
                Err("peer is blocklisted".into())
            } else {
                Ok(())
            }
        })
        .open()
        .unwrap();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.check("t", &n(5), Some("did:good")).unwrap();
    let err = e.check("t", &n(5), Some("did:bad")).unwrap_err();
    assert_eq!(
        (err.kind(), err.to_string().as_str()),
        (ErrorKind::Risk, "risk check failed: peer is blocklisted")
    );
    e.check("t", &n(6), None).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("did:good".into(), n(5)),
            ("did:bad".into(), n(5)),
            (String::new(), n(6))
        ]
    );
}

#[tokio::test]
async fn list_and_entries_paginate() {
    let db = TestDb::new();
    let e = db.open();
    for i in 0..5 {
        e.allocate(&format!("task-{i}"), Some(n(10))).await.unwrap();
    }
    e.record("task-1", SpendEntry::new(10), None).await.unwrap();
    e.close("task-3").await.unwrap();
    let p1 = e.list(None, None, 2);
    assert_eq!(
        p1.items.iter().map(|b| b.task_id.as_str()).collect::<Vec<_>>(),
        ["task-0", "task-1"]
    );
    let p2 = e.list(None, p1.next.as_deref(), 2);
    let p3 = e.list(None, p2.next.as_deref(), 2);
    assert_eq!((p3.items.len(), p3.next), (1, None));
    let active: Vec<_> = e
        .list(Some(BudgetStatus::Active), None, 10)
        .items
        .into_iter()
        .map(|b| b.task_id)
        .collect();
    assert_eq!(active, ["task-0", "task-2", "task-4"]);
    assert_eq!(
        e.list(Some(BudgetStatus::Exhausted), None, 10).items[0].task_id,
        "task-1"
    );

    e.allocate("many", Some(n(1000))).await.unwrap();
    for i in 0..7 {
        e.record("many", SpendEntry::new(i + 1), None).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = e.entries("many", after, 3).await.unwrap();
        seen.extend(page.items.iter().map(|x| x.amount.0.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, (1..=7).map(n).collect::<Vec<_>>());
    assert_eq!(kind(e.entries("nope", None, 3).await), ErrorKind::NotFound);
}

#[tokio::test]
async fn state_survives_reopen() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(100))).await.unwrap();
    e.record("t", SpendEntry::new(30), None).await.unwrap();
    let r = e.reserve("t", n(20), None).await.unwrap();
    e.set_progress("t", 0.5).await.unwrap();
    let before = e.get("t").unwrap();
    drop(e);
    let e = db.open();
    assert_eq!(e.get("t").unwrap(), before);
    assert!(
        e.release(&r.id).await.unwrap(),
        "the reservation id works after a restart"
    );
}

#[tokio::test]
async fn unknown_schema_version_is_refused() {
    let db = TestDb::new();
    drop(db.open());
    {
        let raw = redb::Database::create(db.path()).unwrap();
        let txn = raw.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = db.builder().open().err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Schema);
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn a_foreign_redb_file_is_refused() {
    let db = TestDb::new();
    {
        let raw = redb::Database::create(db.path()).unwrap();
        let txn = raw.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, u64>::new("blocks"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = db.builder().open().err().expect("refused");
    assert!(err.to_string().contains("did not write"), "{err}");
}

#[tokio::test]
async fn bad_config_fails_before_the_file_is_touched() {
    let db = TestDb::new();
    let cfg = EngineConfig {
        default_max: Some("1.1234567".into()),
        ..Default::default()
    };
    let err = db.builder().config(cfg).open().err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!db.path().exists());
}

/// Eight tasks race reserve, record and release on one budget with the hard limit:
/// spent + reserved never passes the total, and every acknowledged spend is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_reserve_and_record_never_overspend() {
    let db = TestDb::new();
    let e = db.open();
    e.allocate("t", Some(n(1000))).await.unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut spent = 0u64;
            for i in 0..60u64 {
                let amount = 1 + (worker * 7 + i) % 13;
                match i % 3 {
                    0 => {
                        if let Ok(r) = e.reserve("t", n(amount), None).await
                            && e.record("t", SpendEntry::new(amount), Some(&r.id)).await.is_ok()
                        {
                            spent += amount;
                        }
                    }
                    1 => {
                        if e.record("t", SpendEntry::new(amount), None).await.is_ok() {
                            spent += amount;
                        }
                    }
                    _ => {
                        if let Ok(r) = e.reserve("t", n(amount), None).await {
                            e.release(&r.id).await.unwrap();
                        }
                    }
                }
                let b = e.get("t").unwrap();
                assert!(&b.spent.0 + &b.reserved.0 <= n(1000), "over total: {b:?}");
            }
            spent
        }));
    }
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    let b = e.get("t").unwrap();
    assert_eq!(b.spent.0, n(acknowledged));
    assert!(b.spent.0 <= n(1000));
    assert_eq!(b.reserved.0, n(0));
}
