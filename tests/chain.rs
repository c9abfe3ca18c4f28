//! Chain sync against a real anvil over a real websocket, into a real redb file.
//!
//! Each test names what operators rely on: live spends land in the right budgets,
//! backfill posts everything once, crashes and reorgs leave the books equal to the
//! chain, reconnects leave no gap, provider range limits are honoured, and bad input
//! is refused at start with nothing written.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256, address};
use budgetd::budget::Engine;
use budgetd::budget::onchain::{session_id, u256_to_big};
use budgetd::chain::{ChainConfig, SyncError, Watcher};
use budgetd::tracker::OnChainTracker;
use common::TestDb;
use common::anvil::{Anvil, Hook};
use common::proxy::{Faults, Outcome, Proxy, RangeStyle};
use common::sync::{Running, WAIT, chain_config, engine_config, wait_synced};
use num_bigint::BigUint;
use serde_json::json;

const ACCOUNTS: [Address; 3] = [
    address!("00000000000000000000000000000000000000a1"),
    address!("00000000000000000000000000000000000000a2"),
    address!("00000000000000000000000000000000000000a3"),
];
const SESSIONS: [Address; 2] = [
    address!("00000000000000000000000000000000000000b1"),
    address!("00000000000000000000000000000000000000b2"),
];
/// Confirmed on-chain totals per session as budgetd has them.
fn totals(engine: &Engine) -> BTreeMap<String, BigUint> {
    engine
        .session_totals()
        .into_iter()
        .map(|(s, t, _)| (s, t))
        .collect()
}

/// The chain's own `cumulativeSpent` per (account, session) that has spent anything.
async fn chain_totals(hook: &Hook) -> BTreeMap<String, BigUint> {
    let mut out = BTreeMap::new();
    for a in ACCOUNTS {
        for s in SESSIONS {
            let c = hook.cumulative(a, s).await;
            if c > U256::ZERO {
                out.insert(session_id(a, s), u256_to_big(c));
            }
        }
    }
    out
}

/// The books equal the chain: per-session totals, each auto task's spent, and one
/// entry per on-chain spend.
async fn assert_books_equal_chain(engine: &Engine, hook: &Hook, spends: u64) {
    let chain = chain_totals(hook).await;
    let ours: BTreeMap<_, _> = totals(engine)
        .into_iter()
        .filter(|(_, t)| *t > BigUint::ZERO)
        .collect();
    assert_eq!(
        ours, chain,
        "per-session totals equal the contract's cumulativeSpent"
    );
    let mut entries = 0;
    for (session, total) in &chain {
        let b = engine.get(session).expect("auto-allocated task");
        assert_eq!(&b.spent.0, total, "{session}: task spent equals the chain");
        entries += b.entry_count;
    }
    assert_eq!(entries, spends, "one entry per on-chain spend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_spends_land_in_the_right_budgets() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    let mut latencies = Vec::new();
    let mut spends = 0;
    for round in 1..=3u64 {
        for (i, a) in ACCOUNTS.iter().enumerate() {
            for (j, s) in SESSIONS.iter().enumerate() {
                let amount = round * 100 + (i * 10 + j) as u64;
                let before = engine
                    .get(&session_id(*a, *s))
                    .map(|b| b.spent.0)
                    .unwrap_or_default();
                hook.spend(*a, *s, U256::from(amount)).await;
                spends += 1;
                let mined = Instant::now();
                let want = before + BigUint::from(amount);
                while engine
                    .get(&session_id(*a, *s))
                    .map(|b| b.spent.0)
                    .unwrap_or_default()
                    != want
                {
                    assert!(mined.elapsed() < WAIT, "spend not posted");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                latencies.push(mined.elapsed());
            }
        }
    }
    wait_synced(&engine, &anvil, 0).await;
    assert_books_equal_chain(&engine, &hook, spends).await;
    let entry = &engine
        .entries(&session_id(ACCOUNTS[0], SESSIONS[0]), None, 1)
        .await
        .unwrap()
        .items[0];
    assert_eq!(entry.tool_name, "SpendingHook");
    assert!(entry.id.starts_with("31337:0x") && entry.onchain, "{entry:?}");
    // The first push on a fresh subscription waits for the ACK of the subscribe reply
    // (one-time, ~40 ms on loopback); report it apart from the steady state.
    let first = latencies.remove(0);
    latencies.sort();
    println!(
        "receipt -> committed entry: first {first:?}; then {} spends p50 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let status = run.stop().await;
    assert_eq!(status.spend_events, spends);
    assert_eq!(status.reorgs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_posts_every_spend_once() {
    const BLOCKS: u64 = 2_000;
    const PER_BLOCK: u64 = 10;
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    for i in 0..BLOCKS {
        let (a, s) = (ACCOUNTS[(i % 3) as usize], SESSIONS[(i % 2) as usize]);
        hook.spend_many(a, s, U256::from(1 + i % 7), PER_BLOCK).await;
    }
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let started = Instant::now();
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    wait_synced(&engine, &anvil, 0).await;
    let took = started.elapsed();
    let status = run.stop().await;
    println!(
        "backfill: {} spends in {took:?} = {:.0} events/s",
        BLOCKS * PER_BLOCK,
        (BLOCKS * PER_BLOCK) as f64 / took.as_secs_f64()
    );
    assert_eq!(status.spend_events, BLOCKS * PER_BLOCK);
    assert_books_equal_chain(&engine, &hook, BLOCKS * PER_BLOCK).await;

    // A second run over the same database posts nothing new.
    drop(engine);
    let engine = db.builder().config(engine_config()).open().unwrap();
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    wait_synced(&engine, &anvil, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(run.stop().await.spend_events, 0);
    assert_books_equal_chain(&engine, &hook, BLOCKS * PER_BLOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_backfill_lose_nothing_and_count_nothing_twice() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let mut spends = 0;
    for i in 0..300u64 {
        let (a, s) = (ACCOUNTS[(i % 3) as usize], SESSIONS[(i % 2) as usize]);
        hook.spend_many(a, s, U256::from(1 + i % 5), 1 + i % 4).await;
        spends += 1 + i % 4;
    }
    let db = TestDb::new();
    let cfg = ChainConfig {
        initial_range: 3,
        max_range: 12,
        ..chain_config(&anvil.ws_url(), hook.address)
    };
    let mut cursors = Vec::new();
    for round in 0..20u64 {
        let engine = db.builder().config(engine_config()).open().unwrap();
        let watcher = Watcher::start(cfg.clone(), engine.clone(), OnChainTracker::new())
            .await
            .unwrap();
        let task = tokio::spawn(watcher.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(
            5 + rand::random::<u64>() % (10 + round * 3),
        ))
        .await;
        task.abort(); // the sync task stops wherever it is
        let _ = task.await;
        cursors.push(engine.chain_cursor().map(|c| c.number));
        drop(engine); // no shutdown: the handle just goes away
    }
    assert!(
        cursors.windows(2).any(|w| w[0] != w[1]),
        "the crashes hit mid-backfill: {cursors:?}"
    );
    let engine = db.builder().config(engine_config()).open().unwrap();
    let run = Running::start(&engine, cfg).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    assert_books_equal_chain(&engine, &hook, spends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorgs_at_any_depth_leave_the_canonical_books() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    let (a, s) = (ACCOUNTS[0], SESSIONS[0]);
    for amount in [10u64, 20, 30, 40] {
        hook.spend(a, s, U256::from(amount)).await;
    }
    wait_synced(&engine, &anvil, 0).await;
    assert_eq!(
        engine.get(&session_id(a, s)).unwrap().spent.0,
        BigUint::from(100u32)
    );

    // evm_snapshot / evm_revert, then new blocks past the old head.
    let snap = anvil.snapshot().await;
    hook.spend(a, s, U256::from(1000)).await;
    hook.spend(a, s, U256::from(2000)).await;
    wait_synced(&engine, &anvil, 0).await;
    assert!(anvil.revert(snap).await);
    for amount in [1u64, 2, 3] {
        hook.spend(ACCOUNTS[1], s, U256::from(amount)).await;
    }
    wait_synced(&engine, &anvil, 0).await;
    assert_books_equal_chain(&engine, &hook, 7).await;

    // anvil_reorg replaces the last 3 blocks (the spends of 1, 2 and 3) with new ones
    // holding other spends. (Last: anvil leaves the sender's nonce unusable after it.)
    let txs = json!([
        [hook.spend_tx(a, s, U256::from(7)), 0],
        [hook.spend_tx(a, SESSIONS[1], U256::from(9)), 1]
    ]);
    anvil.reorg(3, txs).await;
    wait_synced(&engine, &anvil, 0).await;
    assert_books_equal_chain(&engine, &hook, 6).await;
    assert!(
        run.status().reorgs >= 1 && run.status().max_reorg_depth >= 1,
        "{:?}",
        run.status()
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorgs_below_the_confirmation_depth_never_touch_the_store() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let cfg = ChainConfig {
        confirmations: Some(3),
        ..chain_config(&anvil.ws_url(), hook.address)
    };
    let run = Running::start(&engine, cfg).await;
    let (a, s) = (ACCOUNTS[2], SESSIONS[1]);
    for amount in [5u64, 6, 7, 8] {
        hook.spend(a, s, U256::from(amount)).await;
    }
    anvil.mine(3).await;
    wait_synced(&engine, &anvil, 3).await;
    hook.spend(a, s, U256::from(100)).await; // unconfirmed
    anvil
        .reorg(2, json!([[hook.spend_tx(a, s, U256::from(50)), 0]]))
        .await;
    anvil.mine(3).await;
    wait_synced(&engine, &anvil, 3).await;
    assert_eq!(run.status().reorgs, 0, "the store never saw the lost block");
    assert_books_equal_chain(&engine, &hook, 5).await;

    // Deeper than the confirmation depth: detected, counted, repaired.
    anvil
        .reorg(5, json!([[hook.spend_tx(a, s, U256::from(1)), 0]]))
        .await;
    anvil.mine(3).await;
    wait_synced(&engine, &anvil, 3).await;
    let status = run.stop().await;
    assert!(status.reorgs >= 1 && status.max_reorg_depth >= 2, "{status:?}");
    let chain = chain_totals(&hook).await;
    assert_eq!(
        totals(&engine).get(&session_id(a, s)),
        chain.get(&session_id(a, s))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_leaves_no_gap() {
    let mut anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let cfg = ChainConfig {
        stall_timeout_secs: 2,
        ..chain_config(&anvil.ws_url(), hook.address)
    };
    let run = Running::start(&engine, cfg).await;
    let (a, s) = (ACCOUNTS[1], SESSIONS[0]);
    hook.spend(a, s, U256::from(11)).await;
    wait_synced(&engine, &anvil, 0).await;
    anvil.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    anvil.restart();
    let hook = Hook::at(&anvil, hook.address).await;
    for amount in [12u64, 13, 14] {
        hook.spend(a, s, U256::from(amount)).await;
    }
    wait_synced(&engine, &anvil, 0).await;
    let status = run.stop().await;
    assert_books_equal_chain(&engine, &hook, 4).await;
    assert!(status.reconnects >= 1, "{status:?}");
}

async fn backfill_through_proxy(style: RangeStyle) {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    for i in 0..60u64 {
        hook.spend_many(
            ACCOUNTS[(i % 3) as usize],
            SESSIONS[(i % 2) as usize],
            U256::from(3),
            2,
        )
        .await;
    }
    let proxy = Proxy::start(&anvil.ws_url()).await;
    proxy.set_faults(Faults {
        max_range: Some(7),
        range_style: style,
        ..Faults::default()
    });
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let cfg = ChainConfig {
        initial_range: 40,
        ..chain_config(&proxy.url(), hook.address)
    };
    let run = Running::start(&engine, cfg).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    assert_books_equal_chain(&engine, &hook, 120).await;
    let stats = proxy.stats();
    assert!(
        stats
            .get_logs
            .iter()
            .any(|g| matches!(g.outcome, Outcome::TooLarge)),
        "the limit was hit"
    );
    assert_eq!(
        stats.resent_oversized(),
        vec![],
        "no oversized request was resent unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_range_limits_infura() {
    backfill_through_proxy(RangeStyle::Infura).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_range_limits_alchemy() {
    backfill_through_proxy(RangeStyle::Alchemy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_range_limits_plain() {
    backfill_through_proxy(RangeStyle::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_slow_answers_are_retried() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    for i in 0..20u64 {
        hook.spend(ACCOUNTS[0], SESSIONS[(i % 2) as usize], U256::from(i + 1))
            .await;
    }
    let proxy = Proxy::start(&anvil.ws_url()).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    // Two blocks a request: ~40 calls, so 30% rate limiting surely hits some.
    let cfg = ChainConfig {
        initial_range: 2,
        max_range: 2,
        ..chain_config(&proxy.url(), hook.address)
    };
    proxy.set_faults(Faults {
        rate_limit: 0.3,
        delay: Duration::from_millis(5),
        ..Faults::default()
    });
    let run = Running::start(&engine, cfg).await;
    wait_synced(&engine, &anvil, 0).await;
    let status = run.stop().await;
    assert_books_equal_chain(&engine, &hook, 20).await;
    assert!(status.rpc_errors > 0, "rate limits were answered: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_spend_waits_for_a_binding_and_limits_are_kept() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let cfg = ChainConfig {
        auto_allocate: false,
        ..chain_config(&anvil.ws_url(), hook.address)
    };
    let run = Running::start(&engine, cfg).await;
    let (a, s) = (ACCOUNTS[0], SESSIONS[1]);
    hook.set_limits(a, U256::from(1000), U256::from(5000), U256::from(9000))
        .await;
    hook.spend(a, s, U256::from(40)).await;
    hook.spend(a, s, U256::from(2)).await;
    wait_synced(&engine, &anvil, 0).await;
    let session = session_id(a, s);
    let waiting = engine.session_totals();
    assert_eq!(
        waiting,
        vec![(session.clone(), BigUint::from(42u32), BigUint::from(42u32))]
    );
    assert!(engine.get(&session).is_err(), "no task was made for it");
    let limits = engine.chain_limits();
    assert_eq!((limits.len(), limits[0].daily_limit), (1, U256::from(5000)));

    engine.allocate("usdc-task", None).await.unwrap();
    let err = engine.bind_session(a, s, "usdc-task", "").await.unwrap_err();
    assert!(
        err.to_string().contains("unit mismatch"),
        "native spend only binds to wei budgets: {err}"
    );
    engine
        .allocate_in("agent-7", Some(BigUint::from(10_000u32)), Some("wei"))
        .await
        .unwrap();
    assert_eq!(
        engine.bind_session(a, s, "agent-7", "did:peer:7").await.unwrap(),
        2
    );
    assert_eq!(engine.get("agent-7").unwrap().spent.0, BigUint::from(42u32));
    hook.spend(a, s, U256::from(8)).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let b = engine.get("agent-7").unwrap();
    assert_eq!((b.spent.0, b.entry_count), (BigUint::from(50u32), 3));
    let entries = engine.entries("agent-7", None, 10).await.unwrap().items;
    assert!(entries.iter().all(|e| e.peer_did == "did:peer:7"));
    assert_eq!(
        engine.session_totals()[0].2,
        BigUint::ZERO,
        "nothing waits any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_at_start_with_nothing_written() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let db = TestDb::new();
    let engine = db.builder().config(engine_config()).open().unwrap();
    let start = |cfg| Watcher::start(cfg, engine.clone(), OnChainTracker::new());

    let eoa = address!("00000000000000000000000000000000000000ee");
    let err = start(chain_config(&anvil.ws_url(), eoa)).await.err().unwrap();
    assert!(matches!(err, SyncError::NoContract { .. }), "{err}");
    assert!(err.to_string().contains("chain.hook_addresses"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = start(chain_config(&format!("ws://127.0.0.1:{closed}"), hook.address))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SyncError::Connect { .. }), "{err}");

    let not_a_node = serve_not_a_node().await;
    let err = start(chain_config(&not_a_node, hook.address))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SyncError::NotANode { .. }), "{err}");

    let err = start(chain_config("http://127.0.0.1:1", hook.address))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("chain.rpc_url"), "{err}");
    assert_eq!(engine.chain_id(), None, "nothing written so far");

    // Follow chain 31337, then point the same database at another chain.
    let run = Running::start(&engine, chain_config(&anvil.ws_url(), hook.address)).await;
    hook.spend(ACCOUNTS[0], SESSIONS[0], U256::from(5)).await;
    wait_synced(&engine, &anvil, 0).await;
    run.stop().await;
    let cursor = engine.chain_cursor();
    let other = Anvil::start_with(&["--chain-id", "999"]);
    let other_hook = Hook::deploy(&other).await;
    let err = start(chain_config(&other.ws_url(), other_hook.address))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("chain 31337") && err.to_string().contains("chain 999"),
        "{err}"
    );
    assert_eq!((engine.chain_id(), engine.chain_cursor()), (Some(31337), cursor));
}

/// A websocket server that answers every request with "method not found".
async fn serve_not_a_node() -> String {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Ok(req) = serde_json::from_str::<serde_json::Value>(msg.to_text().unwrap_or(""))
                    else {
                        continue;
                    };
                    let reply = json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32601, "message": "Method not found"}});
                    let _ = ws.send(reply.to_string().into()).await;
                }
            });
        }
    });
    url
}
