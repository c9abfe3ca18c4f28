//! Kill -9 while writing: a child process (this test binary, re-run in child mode)
//! records spends and prints each acknowledgement; the parent kills it at a random
//! moment, reopens the file, and checks that every acknowledged spend is there,
//! nothing is counted twice, and the books balance.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use alloy::primitives::{Address, B256, U256};
use budgetd::budget::amount::Amount;
use budgetd::budget::onchain::{ChainCommit, ChainSpend, Cursor, Valued};
use budgetd::budget::types::Evidence;
use budgetd::budget::{ErrorKind, SpendEntry};
use common::{TestDb, n};
use num_bigint::BigUint;

const CHILD_ENV: &str = "BUDGETD_CRASH_CHILD_DB";

/// Child mode: record spends `start..` concurrently until killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let start: u64 = std::env::var("BUDGETD_CRASH_START").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let e = budgetd::budget::Engine::builder(&path)
            .config(common::config())
            .open()
            .unwrap();
        let _ = e.allocate("t", Some(n(u64::MAX))).await;
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let e = e.clone();
            workers.push(tokio::spawn(async move {
                for i in (start + w..).step_by(4) {
                    e.record("t", SpendEntry::new(i % 7 + 1).with_id(format!("s-{i}")), None)
                        .await
                        .unwrap();
                    println!("acked {i}");
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    });
}

#[tokio::test]
async fn kill_nine_loses_nothing_acknowledged() {
    let db = TestDb::new();
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, db.path())
            .env("BUDGETD_CRASH_START", (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stop_after = 20 + (round * 37) % 150;
        let mut this_round = 0;
        for line in stdout.lines() {
            if let Some(i) = line.unwrap().strip_prefix("acked ") {
                acked.push(i.parse().unwrap());
                this_round += 1;
                if this_round == stop_after {
                    child.kill().unwrap(); // SIGKILL
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert!(this_round == stop_after, "child died early in round {round}");
    }
    let e = db.open();
    let b = e.get("t").unwrap();
    assert!(
        b.entry_count >= acked.len() as u64,
        "acknowledged entries are all kept"
    );
    let mut sum = BigUint::ZERO;
    let mut ids = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let page = e.entries("t", after, 1000).await.unwrap();
        for x in &page.items {
            sum += &x.amount.0;
            assert!(ids.insert(x.id.clone()), "entry {} twice", x.id);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(b.spent.0, sum, "spent equals the sum of entries after crashes");
    for i in acked {
        assert!(ids.contains(&format!("s-{i}")), "acknowledged spend s-{i} lost");
        let again = e
            .record("t", SpendEntry::new(i % 7 + 1).with_id(format!("s-{i}")), None)
            .await
            .unwrap();
        assert!(again.already_recorded);
    }
}

/// A chain commit refused part way (here: a spend's id already taken with other
/// content) writes nothing at all, not the spends before the refusal without their
/// cursor.
#[tokio::test]
async fn a_chain_commit_refused_part_way_writes_nothing() {
    let db = TestDb::new();
    let e = db.open();
    e.chain_init(31337, "usdc").await.unwrap();
    let spend = |tx: u8| ChainSpend {
        block: 5,
        block_hash: B256::repeat_byte(5),
        block_timestamp: None,
        tx_hash: B256::repeat_byte(tx),
        log_index: 0,
        account: Address::repeat_byte(0xa1),
        session_key: Address::repeat_byte(0xb1),
        amount: U256::from(7),
    };
    let valued = || Valued {
        amount: BigUint::from(7u32),
        evidence: Evidence::native(Amount::from(7)),
    };
    let (first, second) = (spend(1), spend(2));
    let task = first.session();
    e.allocate(&task, Some(n(1000))).await.unwrap();
    e.post_onchain(&task, SpendEntry::new(99).with_id(second.entry_id(31337)))
        .await
        .unwrap();
    let refused = e
        .commit_chain(ChainCommit {
            chain_id: 31337,
            spends: vec![(first, valued()), (second, valued())],
            held: vec![],
            limits: vec![],
            hashes: vec![],
            cursor: Some(Cursor {
                number: 5,
                hash: B256::repeat_byte(5),
            }),
            auto_allocate: true,
            keep_hashes: 256,
        })
        .await;
    assert_eq!(refused.map(drop).unwrap_err().kind(), ErrorKind::Storage);
    assert_eq!(e.chain_cursor(), None);
    assert!(e.session_totals().is_empty());
    let b = e.get(&task).unwrap();
    assert_eq!((b.spent.0, b.entry_count), (n(99), 1), "only the library's post");
    drop(e);
    let e = db.open();
    assert_eq!(e.get(&task).unwrap().entry_count, 1, "nothing written either");
    assert!(e.books().await.unwrap().sessions.is_empty());
}
