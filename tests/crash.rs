//! Kill -9 while writing: a child process (this test binary, re-run in child mode)
//! records spends and prints each acknowledgement; the parent kills it at a random
//! moment, reopens the file, and checks that every acknowledged spend is there,
//! nothing is counted twice, and the books balance.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use budgetd::budget::SpendEntry;
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
