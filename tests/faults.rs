//! The fault suite: the real `budgetd` binary follows a real anvil through a
//! fault-injecting proxy while spends keep coming, and each round injects one fault:
//! kill -9 during a catch-up backfill or live, a reorg below or above the confirmation
//! depth, a node restart, dropped websockets, or a proxy that delays, rate limits
//! (429 / -32005) and refuses large log queries ("more than 10000 results"), or one that
//! swallows requests without an answer.
//!
//! After every round the spender pauses and the books must equal the chain: the
//! daemon's audit shows zero drift at its cursor, and the number of entries equals the
//! number of `SpendRecorded` logs up to that block.
//!
//! `cargo test --test faults` runs each fault once (in a random order; the seed is
//! printed). More rounds: `FAULT_ROUNDS=60 cargo test --release --test faults -- --nocapture`,
//! and `FAULT_SEED=<seed>` repeats a run's faults (their order, depths, delays and kill instants;
//! the spender and the timing of the machine stay random).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::Filter;
use budgetd::client::Client;
use common::anvil::{Anvil, Hook};
use common::proxy::{Faults, Proxy, RangeStyle, RateStyle, Stats};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Blocks a spend is buried under before budgetd posts it.
const CONFIRMATIONS: u64 = 3;
const WAIT: Duration = Duration::from_secs(90);
const ACCOUNTS: [Address; 3] = [
    Address::repeat_byte(0xa1),
    Address::repeat_byte(0xa2),
    Address::repeat_byte(0xa3),
];
const SESSIONS: [Address; 2] = [Address::repeat_byte(0xb1), Address::repeat_byte(0xb2)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// kill -9 at a random instant of a catch-up backfill (spends made while it was down).
    KillDuringBackfill,
    /// kill -9 at a random instant while following live.
    KillLive,
    /// `anvil_reorg` shallower than the confirmation depth.
    ShallowReorg,
    /// `anvil_reorg` deeper than the confirmation depth: posted entries must be reverted.
    DeepReorg,
    /// The node stops and comes back from its state dump on the same port.
    NodeRestart,
    /// Every websocket between budgetd and the node is cut.
    WsDrop,
    /// Delays, rate limits (429 / -32005) and "more than 10000 results" for a while.
    FlakyProvider,
    /// Requests swallowed without an answer (they time out and are retried).
    LossyProvider,
}

const ALL: [Fault; 8] = [
    Fault::KillDuringBackfill,
    Fault::KillLive,
    Fault::ShallowReorg,
    Fault::DeepReorg,
    Fault::NodeRestart,
    Fault::WsDrop,
    Fault::FlakyProvider,
    Fault::LossyProvider,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_equal_the_chain_after_every_fault() {
    let seed = env_u64("FAULT_SEED").unwrap_or_else(rand::random);
    let rounds = env_u64("FAULT_ROUNDS").unwrap_or(ALL.len() as u64) as usize;
    println!("fault suite: seed {seed}, {rounds} rounds (FAULT_SEED={seed} repeats the faults)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let proxy = Proxy::start(&anvil.ws_url()).await;
    let spender = Spender::start(&anvil, &hook).await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Budgetd::new(dir.path(), &proxy.url(), hook.address);
    // anvil has no state for blocks before its last restart, so cannot reorg past it.
    let mut restarted_at = 0;

    // A first backfill of what was spent before budgetd ever ran, killed part way.
    spender.burst(&anvil, 60).await;
    anvil.mine(500).await;
    daemon.start();
    kill_at_random(&mut daemon, &anvil, &mut rng, 1500).await;
    daemon.start();
    check_books(&daemon, &anvil, &hook, &spender, "first backfill, killed").await;

    let mut plan: Vec<Fault> = ALL.to_vec();
    plan.shuffle(&mut rng);
    while plan.len() < rounds {
        plan.push(ALL[rng.random_range(0..ALL.len())]);
    }
    plan.truncate(rounds);
    for (round, fault) in plan.into_iter().enumerate() {
        let started = Instant::now();
        let before = (daemon.status().await, proxy.stats());
        Box::pin(inject(
            fault,
            &mut rng,
            &mut anvil,
            &proxy,
            &spender,
            &mut daemon,
            &mut restarted_at,
        ))
        .await;
        // Spends keep coming under whatever the fault left behind, then the check.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        let (entries, block) = Box::pin(check_books(
            &daemon,
            &anvil,
            &hook,
            &spender,
            &format!("{fault:?}"),
        ))
        .await;
        assert_fault_seen(fault, &before, &(daemon.status().await, proxy.stats()));
        println!(
            "round {round:>3} {fault:<18?} ok: {entries} entries to block {block}, {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    spender.stop().await;
    // The periodic audit (every second, through every fault) never saw drift either.
    let deadline = Instant::now() + WAIT;
    while daemon.drift_samples().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no budgetd_audit_drift samples\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        !log.contains("the books differ"),
        "the periodic audit saw drift\n{}",
        daemon.log()
    );
    let status = daemon.admin().await.call("sync_status", json!([])).await.unwrap();
    println!("sync status at the end: {status}");
    daemon.kill();
}

async fn inject(
    fault: Fault,
    rng: &mut StdRng,
    anvil: &mut Anvil,
    proxy: &Proxy,
    spender: &Spender,
    daemon: &mut Budgetd,
    restarted_at: &mut u64,
) {
    match fault {
        Fault::KillDuringBackfill => {
            daemon.kill();
            spender.burst(anvil, rng.random_range(10..40)).await;
            // Empty blocks too, so the catch-up takes many log queries (slowed a little).
            anvil.mine(rng.random_range(100..400)).await;
            proxy.set_faults(Faults {
                delay: Duration::from_millis(10),
                ..Faults::default()
            });
            daemon.start();
            kill_at_random(daemon, anvil, rng, 1000).await;
            proxy.set_faults(Faults::default());
            daemon.start();
        }
        Fault::KillLive => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
            daemon.kill();
            daemon.start();
        }
        Fault::ShallowReorg | Fault::DeepReorg => {
            let depth = if fault == Fault::ShallowReorg {
                rng.random_range(1..CONFIRMATIONS)
            } else {
                rng.random_range(CONFIRMATIONS + 1..=CONFIRMATIONS + 4)
            };
            let mut sender = spender.pause().await;
            let head = anvil.block_number().await;
            if head < *restarted_at + depth + 1 {
                anvil.mine(*restarted_at + depth + 1 - head).await;
            }
            // From a cursor right at the confirmation depth, a deeper reorg replaces
            // posted blocks and a shallower one only blocks still in the window.
            daemon.synced(anvil, "before the reorg").await;
            // The replacement blocks hold one new spend; the spends of the lost blocks are gone.
            let (a, s) = (ACCOUNTS[rng.random_range(0..3)], SESSIONS[rng.random_range(0..2)]);
            let amount = U256::from(rng.random_range(1..1_000u64));
            anvil
                .reorg(depth, json!([[spender.hook.spend_tx(a, s, amount), 0]]))
                .await;
            // anvil's pending nonce for a sender whose transactions were dropped is off
            // after a reorg: spend from a fresh account from now on.
            *sender = fresh_sender(anvil).await;
        }
        Fault::NodeRestart => {
            let mut sender = spender.pause().await;
            anvil.restart();
            *restarted_at = anvil.block_number().await;
            *sender = fresh_sender(anvil).await;
        }
        Fault::WsDrop => proxy.disconnect_all(),
        Fault::FlakyProvider => {
            let range_style =
                [RangeStyle::Infura, RangeStyle::Alchemy, RangeStyle::Plain][rng.random_range(0..3)];
            let rate_style = [RateStyle::Http429, RateStyle::LimitExceeded][rng.random_range(0..2)];
            proxy.set_faults(Faults {
                max_range: Some(rng.random_range(1..4)),
                range_style,
                rate_limit: 0.25,
                rate_style,
                delay: Duration::from_millis(rng.random_range(5..40)),
                ..Faults::default()
            });
            tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
            proxy.set_faults(Faults::default());
        }
        Fault::LossyProvider => {
            let dropped = proxy.stats().dropped;
            proxy.set_faults(Faults {
                drop: 0.2,
                ..Faults::default()
            });
            // Until something was swallowed (budgetd polls every 100 ms, so soon).
            let deadline = Instant::now() + WAIT;
            while proxy.stats().dropped == dropped {
                assert!(Instant::now() < deadline, "nothing went through the proxy");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            proxy.set_faults(Faults::default());
        }
    }
}

/// The fault happened and budgetd went through it: its `sync_status` counters (which
/// start afresh with each process) and what the proxy saw, before and after.
fn assert_fault_seen(fault: Fault, before: &(Value, Stats), after: &(Value, Stats)) {
    let grew = |key: &str| after.0[key].as_u64() > before.0[key].as_u64();
    let subscribes = |s: &Stats| s.count("eth_subscribe");
    let seen = match fault {
        Fault::KillDuringBackfill | Fault::KillLive => true,
        Fault::ShallowReorg => after.0["reorgs"] == before.0["reorgs"],
        Fault::DeepReorg => grew("reorgs"),
        // The websocket client reconnects and subscribes again by itself: seen by the
        // proxy, not in `reconnects`.
        Fault::NodeRestart | Fault::WsDrop => subscribes(&after.1) > subscribes(&before.1),
        Fault::FlakyProvider => grew("rpcErrors"),
        // The swallowed request may have been the periodic audit's, not the watcher's.
        Fault::LossyProvider => after.1.dropped > before.1.dropped,
    };
    assert!(
        seen,
        "{fault:?} not seen as expected: before {}, after {}",
        before.0, after.0
    );
}

/// Lets budgetd run for a random part of `max_ms`, then kill -9; says how far it got.
async fn kill_at_random(daemon: &mut Budgetd, anvil: &Anvil, rng: &mut StdRng, max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..max_ms))).await;
    let status = tokio::time::timeout(Duration::from_millis(100), async {
        let mut c = Client::connect(&daemon.socket).await.ok()?;
        c.call("sync_status", json!([])).await.ok()
    })
    .await
    .ok()
    .flatten();
    daemon.kill();
    let head = anvil.block_number().await;
    match status {
        Some(s) => println!("  kill -9 at block {} of {head}", s["synced"]),
        None => println!("  kill -9 before the admin socket answered"),
    }
}

/// Pauses the spender, lets budgetd catch up, and compares its books with the chain.
/// Returns the entry count and the block they were compared at.
async fn check_books(
    daemon: &Budgetd,
    anvil: &Anvil,
    hook: &Hook,
    spender: &Spender,
    round: &str,
) -> (u64, u64) {
    let _paused = spender.pause().await;
    // One block past everything: a reorg at the old height must be seen before the
    // cursor can reach the new target.
    let mut tries = 0;
    let (mut admin, target, audit) = loop {
        anvil.mine(1).await;
        let (mut admin, target) = daemon.synced(anvil, round).await;
        match admin.call("chain_audit", json!([])).await {
            Ok(audit) => break (admin, target, audit),
            // anvil keeps no state for blocks from before its last restart, and has
            // been seen to lose some after `anvil_reorg`; a later block has state.
            Err(e) if tries < 5 && e.to_string().contains("BlockOutOfRange") => {
                println!("  audit at {target}: the node has no state there; one block on");
                tries += 1;
            }
            Err(e) => panic!("{round}: audit failed: {e}\n{}", daemon.log()),
        }
    };
    assert_eq!(audit["block"], target, "{round}: audit at the cursor: {audit}");
    assert_eq!(audit["drifting"], 0, "{round}: drift: {audit}\n{}", daemon.log());

    let logs = anvil
        .provider()
        .await
        .get_logs(&Filter::new().address(hook.address).from_block(0).to_block(target))
        .await
        .unwrap();
    let entries = count_entries(&mut admin).await;
    assert_eq!(
        entries,
        logs.len() as u64,
        "{round}: entries vs SpendRecorded logs up to {target}\n{}",
        daemon.log()
    );
    assert!(
        spender.sent.load(Ordering::Relaxed) > 0 && entries > 0,
        "the spender made spends"
    );
    let drift = daemon.drift_samples().await;
    assert!(
        drift.iter().all(|l| l.ends_with(" 0")),
        "{round}: budgetd_audit_drift: {drift:?}"
    );
    (entries, target)
}

/// Every entry of every budget, page by page.
async fn count_entries(admin: &mut Client) -> u64 {
    let mut total = 0;
    for budget in all_items(admin, "budget_list", Value::Null, 500).await {
        let task = budget["taskId"].clone();
        total += all_items(admin, "budget_entries", task, 1000).await.len() as u64;
    }
    total
}

/// Every item of a paged admin method, called as `[first, after, size]`.
async fn all_items(admin: &mut Client, method: &str, first: Value, size: u64) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = Value::Null;
    loop {
        let mut page = admin.call(method, json!([first, after, size])).await.unwrap();
        items.append(page["items"].as_array_mut().unwrap());
        if page["next"].is_null() {
            return items;
        }
        after = page["next"].take();
    }
}

/// Spends from an impersonated account, one transaction at a time, until stopped;
/// [`Spender::pause`] holds it between transactions (and lets a fault change the sender).
struct Spender {
    hook: Arc<Hook>,
    sender: Arc<Mutex<Address>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Spender {
    async fn start(anvil: &Anvil, hook: &Hook) -> Self {
        let hook = Arc::new(Hook::at(anvil, hook.address).await);
        let sender = Arc::new(Mutex::new(fresh_sender(anvil).await));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (hook, sender, sent, stop) = (hook.clone(), sender.clone(), sent.clone(), stop.clone());
            let provider = anvil.provider().await;
            async move {
                let mut rng = StdRng::from_os_rng();
                while !stop.load(Ordering::Relaxed) {
                    {
                        let from = sender.lock().await;
                        let logs = spend(&provider, &hook, *from, &mut rng).await;
                        sent.fetch_add(logs, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
                }
            }
        });
        Self {
            hook,
            sender,
            sent,
            stop,
            task,
        }
    }

    /// Holds the spender; the guard is the sender to use after it.
    async fn pause(&self) -> tokio::sync::MutexGuard<'_, Address> {
        self.sender.lock().await
    }

    /// `txs` transactions of 1..50 spends each, as fast as they go (while budgetd is down).
    async fn burst(&self, anvil: &Anvil, txs: u64) {
        let from = self.pause().await;
        let provider = anvil.provider().await;
        let mut rng = StdRng::from_os_rng();
        for _ in 0..txs {
            let logs = spend(&provider, &self.hook, *from, &mut rng).await;
            self.sent.fetch_add(logs, Ordering::Relaxed);
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

/// One transaction of 1..50 spends by a random session; the number of logs it emitted.
async fn spend(provider: &DynProvider, hook: &Hook, from: Address, rng: &mut StdRng) -> u64 {
    let (a, s) = (ACCOUNTS[rng.random_range(0..3)], SESSIONS[rng.random_range(0..2)]);
    let amount = U256::from(rng.random_range(1..1_000_000u64));
    let count = if rng.random_bool(0.5) {
        1
    } else {
        rng.random_range(2..50)
    };
    let tx = hook
        .spend_many_tx(a, s, amount, count)
        .from(from)
        .gas_limit(5_000_000);
    let receipt = provider
        .send_transaction(tx)
        .await
        .expect("send spend")
        .with_timeout(Some(Duration::from_secs(20)))
        .get_receipt()
        .await
        .expect("spend receipt");
    assert!(receipt.status(), "spend reverted");
    count
}

/// A new impersonated account with funds.
async fn fresh_sender(anvil: &Anvil) -> Address {
    let provider = anvil.provider().await;
    let who = Address::from(rand::random::<[u8; 20]>());
    provider
        .anvil_impersonate_account(who)
        .await
        .expect("impersonate");
    provider
        .anvil_set_balance(who, U256::from(10).pow(U256::from(21)))
        .await
        .expect("set balance");
    who
}

/// The `budgetd` binary as a process, restartable on the same data directory.
struct Budgetd {
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    metrics: std::net::SocketAddr,
    log: PathBuf,
    starts: u32,
}

impl Budgetd {
    fn new(dir: &Path, rpc_url: &str, hook: Address) -> Self {
        let config = dir.join("budgetd.toml");
        let socket = dir.join("admin.sock");
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlog_format = \"json\"\n[budget]\ndefault_max = \"1000000\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n[admin]\nsocket_path = {socket:?}\n\
                 [chain]\nrpc_url = \"{rpc_url}\"\nhook_addresses = [\"{hook:#x}\"]\n\
                 confirmations = {CONFIRMATIONS}\ninitial_range = 2\nmax_range = 16\n\
                 poll_interval_ms = 100\nstall_timeout_secs = 5\naudit_interval_secs = 1\n",
                dir.join("data"),
            ),
        )
        .unwrap();
        Self {
            child: None,
            config,
            socket,
            metrics,
            log: dir.join("budgetd.log"),
            starts: 0,
        }
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.starts += 1;
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_budgetd"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "budgetd=debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// kill -9 (SIGKILL), and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// An admin connection, once the socket answers.
    async fn admin(&self) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = Client::connect(&self.socket).await
                && c.call("sync_status", json!([])).await.is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "admin socket never answered\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the cursor is `CONFIRMATIONS` below the node's head; the admin
    /// connection and the cursor block.
    async fn synced(&self, anvil: &Anvil, round: &str) -> (Client, u64) {
        let target = anvil.block_number().await - CONFIRMATIONS;
        let mut admin = self.admin().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let status = admin.call("sync_status", json!([])).await.unwrap();
            if status["synced"].as_u64() == Some(target) {
                return (admin, target);
            }
            assert!(
                Instant::now() < deadline,
                "{round}: never synced to {target}: {status}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's `sync_status` counters (they start at zero with each process).
    async fn status(&self) -> Value {
        self.admin().await.call("sync_status", json!([])).await.unwrap()
    }

    /// The `budgetd_audit_drift` samples the daemon exports (none until its first audit).
    async fn drift_samples(&self) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body.lines()
            .filter(|l| l.starts_with("budgetd_audit_drift{"))
            .map(str::to_owned)
            .collect()
    }

    /// The last lines of the daemon's log (for failure messages).
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "budgetd log ({} starts), last lines:\n{}",
            self.starts,
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Drop for Budgetd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
