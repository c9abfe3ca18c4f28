//! The audit against a real anvil: books that follow the chain show zero drift per
//! session; a spend the chain never saw shows up as drift, in the library, over the
//! admin socket and as budgetctl's exit code.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256, address};
use budgetd::budget::amount::Amount;
use budgetd::budget::onchain::{ChainCommit, ChainSpend, Valued};
use budgetd::budget::types::Evidence;
use budgetd::chain::audit::audit;
use common::TestDb;
use common::anvil::{Anvil, Hook};
use common::sync::{Running, chain_config, engine_config, wait_synced};
use num_bigint::BigUint;

const A: Address = address!("00000000000000000000000000000000000000a1");
const S1: Address = address!("00000000000000000000000000000000000000b1");
const S2: Address = address!("00000000000000000000000000000000000000b2");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_that_follow_the_chain_show_no_drift_and_a_phantom_spend_does() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    for (s, amount) in [(S1, 10u64), (S2, 20), (S1, 30)] {
        hook.spend(A, s, U256::from(amount)).await;
    }
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let report = audit(&anvil.ws_url(), &[hook.address], &engine).await.unwrap();
    assert_eq!(report.drifting, 0, "{report:?}");
    assert_eq!(report.sessions.len(), 2);
    let s1 = report.sessions.iter().find(|s| s.session_key == S1).unwrap();
    assert_eq!(
        (s1.chain.as_str(), s1.confirmed.as_str(), s1.posted.as_str()),
        ("40", "40", "40")
    );

    // The cursor's block replaced by a reorg budgetd has not followed yet: the audit
    // refuses (the contract is read at the cursor's hash) rather than show drift.
    anvil.reorg(1, serde_json::json!([])).await;
    let err = audit(&anvil.ws_url(), &[hook.address], &engine)
        .await
        .unwrap_err();
    assert!(err.contains("getSpendState"), "{err}");
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let report = audit(&anvil.ws_url(), &[hook.address], &engine).await.unwrap();
    assert_eq!(report.drifting, 0, "repaired: {report:?}");
    let s1 = report.sessions.iter().find(|s| s.session_key == S1).unwrap();
    assert_eq!(
        (s1.chain.as_str(), s1.confirmed.as_str()),
        ("10", "10"),
        "the reorg took S1's 30"
    );

    // A spend the chain never saw (as a bug or a tampered file would leave behind).
    let cursor = engine.chain_cursor().unwrap();
    let phantom = ChainSpend {
        block: cursor.number,
        block_hash: cursor.hash,
        block_timestamp: None,
        tx_hash: B256::repeat_byte(0x77),
        log_index: 9,
        account: A,
        session_key: S2,
        amount: U256::from(5),
    };
    let valued = Valued {
        amount: BigUint::from(5u32),
        evidence: Evidence::native(Amount::from(5)),
    };
    engine
        .commit_chain(ChainCommit {
            chain_id: 31337,
            spends: vec![(phantom, valued)],
            held: vec![],
            limits: vec![],
            hashes: vec![],
            cursor: None,
            auto_allocate: true,
            keep_hashes: 256,
        })
        .await
        .unwrap();
    let report = audit(&anvil.ws_url(), &[hook.address], &engine).await.unwrap();
    assert_eq!(report.drifting, 1, "{report:?}");
    let s2 = report.sessions.iter().find(|s| s.session_key == S2).unwrap();
    assert_eq!(
        (s2.chain.as_str(), s2.confirmed.as_str(), s2.drift.as_str()),
        ("20", "25", "5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgetctl_audit_exits_zero_on_equal_books() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let cfg = dir.path().join("budgetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[budget]\ndefault_max = \"1000\"\n[metrics]\nenabled = false\n\
             [admin]\nsocket_path = {socket:?}\n[chain]\nrpc_url = \"{}\"\nhook_addresses = [\"{:#x}\"]\n",
            dir.path().join("data"),
            anvil.ws_url(),
            hook.address
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_budgetd"))
        .args(["run", "--config"])
        .arg(&cfg)
        .spawn()
        .unwrap();
    hook.spend(A, S1, U256::from(7)).await;
    let ctl = || {
        Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .arg("--socket")
            .arg(&socket)
            .arg("audit")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = ctl();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.code() == Some(0) && text.contains("0x00000000000000000000000000000000000000b1") {
            break text;
        }
        assert!(Instant::now() < deadline, "audit never clean: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(out.contains("0 session(s) drifting"), "{out}");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
