//! Valuing on-chain spends in the budgets' unit, against a real anvil: a fixed rate
//! (rounding up), a price feed read at each spend's block, a reorg that moves a spend
//! under another price, a feed that cannot be used holding spends back until it can,
//! and units that never mix.

mod common;

use alloy::primitives::{Address, U256, address};
use budgetd::budget::onchain::session_id;
use budgetd::budget::{EngineConfig, ErrorKind, SpendEntry, TaskBudget};
use budgetd::chain::{ChainConfig, ValuationConfig, Watcher};
use budgetd::tracker::OnChainTracker;
use common::TestDb;
use common::anvil::{Anvil, Feed, Hook};
use common::sync::{Running, chain_config, wait_synced};
use num_bigint::BigUint;
use serde_json::json;

const A: Address = address!("00000000000000000000000000000000000000a1");
const S: Address = address!("00000000000000000000000000000000000000b1");
const ETH: u64 = 1_000_000_000_000_000_000;

fn usdc_engine(db: &TestDb) -> budgetd::budget::Engine {
    let cfg = EngineConfig {
        default_max: Some("1000000".into()),
        ..EngineConfig::default()
    };
    db.builder().config(cfg).open().unwrap()
}

fn feed_config(url: &str, hook: Address, feed: Address, max_age_secs: u64) -> ChainConfig {
    ChainConfig {
        valuation: ValuationConfig::Feed {
            unit: "usdc".into(),
            address: feed,
            max_age_secs,
        },
        ..chain_config(url, hook)
    }
}

fn fixed_config(url: &str, hook: Address, rate: &str) -> ChainConfig {
    ChainConfig {
        valuation: ValuationConfig::Fixed {
            unit: "usdc".into(),
            rate: rate.into(),
        },
        ..chain_config(url, hook)
    }
}

fn budget(engine: &budgetd::budget::Engine) -> TaskBudget {
    engine.get(&session_id(A, S)).expect("auto-allocated budget")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_rounds_up_and_keeps_its_evidence() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = usdc_engine(&db);
    let cfg = fixed_config(&anvil.ws_url(), hook.address, "3000.123456");
    let run = Running::start(&engine, cfg).await;
    // 1 ETH = 3000.123456 USDC exactly; 1e12 wei = 0.003000123456 USDC -> 3001 base
    // units (rounded up); 1 wei -> 1 base unit (never rounds to nothing).
    for wei in [ETH, 1_000_000_000_000, 1] {
        hook.spend(A, S, U256::from(wei)).await;
    }
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let b = budget(&engine);
    assert_eq!(b.unit, "usdc");
    assert_eq!(b.spent.0, BigUint::from(3_000_123_456u64 + 3001 + 1));
    let entries = engine.entries(&session_id(A, S), None, 10).await.unwrap().items;
    let amounts: Vec<_> = entries.iter().map(|e| e.amount.0.clone()).collect();
    assert_eq!(amounts, [3_000_123_456u64, 3001, 1].map(BigUint::from));
    let ev = entries[1].evidence.as_ref().unwrap();
    assert_eq!(
        (ev.valuation.as_str(), ev.rate.as_deref()),
        ("fixed", Some("3000.123456"))
    );
    assert_eq!(
        (ev.raw_amount.0.clone(), ev.raw_unit.as_str()),
        (BigUint::from(1_000_000_000_000u64), "wei")
    );
    let raw = engine.session_totals();
    assert_eq!(
        raw[0].1,
        BigUint::from(ETH + 1_000_000_000_001),
        "session totals stay raw wei, as the contract counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_values_each_spend_at_its_own_block_and_reorgs_revalue() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let feed = Feed::deploy(&anvil, 8).await;
    feed.set_answer(2000_00000000).await;
    let db = TestDb::new();
    let engine = usdc_engine(&db);
    let run = Running::start(
        &engine,
        feed_config(&anvil.ws_url(), hook.address, feed.address, 3600),
    )
    .await;
    let first = hook.spend(A, S, U256::from(ETH / 1000)).await; // 0.001 ETH at 2000 = 2 USDC
    feed.set_answer(2500_00000000).await;
    hook.spend(A, S, U256::from(ETH / 1000)).await; // at 2500 = 2.5 USDC
    wait_synced(&engine, &anvil, 0).await;
    assert_eq!(budget(&engine).spent.0, BigUint::from(4_500_000u32));
    let entries = engine.entries(&session_id(A, S), None, 10).await.unwrap().items;
    let ev: Vec<_> = entries.iter().map(|e| e.evidence.clone().unwrap()).collect();
    assert_eq!(ev[0].price.as_deref(), Some("200000000000"));
    assert_eq!(ev[0].price_block, first.block_number);
    assert_eq!(
        (ev[0].round_id.as_deref(), ev[1].round_id.as_deref()),
        (Some("1"), Some("2"))
    );
    assert_eq!(ev[1].price_decimals, Some(8));

    // The second spend's block is replaced by one where the price moved to 3000 first:
    // the spend is worth 3 USDC now.
    let txs = json!([
        [feed.set_answer_tx(3000_00000000), 0],
        [hook.spend_tx(A, S, U256::from(ETH / 1000)), 0]
    ]);
    anvil.reorg(1, txs).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let b = budget(&engine);
    assert_eq!((b.spent.0, b.entry_count), (BigUint::from(5_000_000u32), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_feed_holds_spends_back_until_it_is_healthy() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let feed = Feed::deploy(&anvil, 8).await;
    feed.set_answer(2000_00000000).await;
    let db = TestDb::new();
    let engine = usdc_engine(&db);
    let run = Running::start(
        &engine,
        feed_config(&anvil.ws_url(), hook.address, feed.address, 60),
    )
    .await;

    // Stale: the answer is an hour old at the spend's block.
    anvil.increase_time(3600).await;
    let stale = hook.spend(A, S, U256::from(ETH / 1000)).await;
    // Not positive: the feed answers zero.
    feed.set_answer(0).await;
    hook.spend(A, S, U256::from(ETH / 500)).await;
    wait_synced(&engine, &anvil, 0).await;
    let held = engine.held_spends();
    assert_eq!(held.len(), 2, "both spends are held, none guessed: {held:?}");
    assert!(
        held[0].reason.contains("stale") && held[1].reason.contains("not a positive price"),
        "{held:?}"
    );
    assert_eq!(
        engine.session_totals()[0].1,
        BigUint::from(ETH / 1000 + ETH / 500),
        "held spend still counts raw"
    );
    assert!(
        engine
            .get(&session_id(A, S))
            .map(|b| b.spent.0 == BigUint::ZERO)
            .unwrap_or(true)
    );

    // Restart in between: held spends are in the store, not in memory.
    run.stop().await;
    drop(engine);
    let engine = usdc_engine(&db);
    assert_eq!(engine.held_spends().len(), 2);
    let run = Running::start(
        &engine,
        feed_config(&anvil.ws_url(), hook.address, feed.address, 60),
    )
    .await;

    // The feed is healthy again: both are valued at the latest confirmed block.
    feed.set_answer(3000_00000000).await;
    wait_synced(&engine, &anvil, 0).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !engine.held_spends().is_empty() {
        assert!(std::time::Instant::now() < deadline, "held spends not released");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    run.stop().await;
    let b = budget(&engine);
    assert_eq!(
        b.spent.0,
        BigUint::from(3_000_000u32 + 6_000_000),
        "0.001 and 0.002 ETH at 3000"
    );
    let entries = engine.entries(&session_id(A, S), None, 10).await.unwrap().items;
    let ev = entries[0].evidence.as_ref().unwrap();
    assert!(
        ev.price_block.unwrap() > stale.block_number.unwrap(),
        "evidence names the block priced at: {ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_never_mix() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = usdc_engine(&db);
    let cfg = fixed_config(&anvil.ws_url(), hook.address, "2000");
    let run = Running::start(&engine, cfg).await;
    engine
        .allocate_in("in-wei", Some(BigUint::from(ETH)), Some("wei"))
        .await
        .unwrap();
    let err = engine.bind_session(A, S, "in-wei", "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unit, "{err}");
    assert!(
        err.to_string()
            .contains("amount in usdc but budget in-wei is in wei"),
        "{err}"
    );

    engine
        .allocate("in-usdc", Some(BigUint::from(1_000_000u32)))
        .await
        .unwrap();
    let entry = SpendEntry {
        unit: Some("wei".into()),
        ..SpendEntry::new(5)
    };
    let err = engine.record("in-usdc", entry, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unit, "{err}");
    assert_eq!(
        engine.get("in-usdc").unwrap().spent.0,
        BigUint::ZERO,
        "nothing recorded"
    );
    assert!(engine.require_unit("in-usdc", "USDC").is_ok());
    assert_eq!(
        engine
            .allocate_in("x", None, Some("doge"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unit
    );
    run.stop().await;

    // The same database cannot switch valuation to another unit.
    let err = Watcher::start(
        chain_config(&anvil.ws_url(), hook.address),
        engine.clone(),
        OnChainTracker::new(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("usdc budgets") && err.to_string().contains("yields wei"),
        "{err}"
    );
}
