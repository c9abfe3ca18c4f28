//! The benchmark table of issue 6: every figure measured in one run on one machine,
//! printed as one markdown table with its target and whether it is met.
//!
//! - backfill: `TABLE_SPENDS` (100,000) spends on anvil, 1,000 logs per transaction
//!   and block; budgetd's backfill (watcher, reconciler, engine in this process) with
//!   10-block ranges (10,000 logs, as hosted providers cap `eth_getLogs`) against a
//!   plain sequential `eth_getLogs` download of the same ranges (the watcher's range
//!   sizer replayed) over a websocket;
//! - live: `TABLE_LIVE` (300) single spends, confirmations 0: from the new head
//!   arriving on a websocket of our own to the committed entry's alert;
//! - admin socket: 8 connections with 64 requests each in flight for
//!   `TABLE_ADMIN_SECS` (5) of `budget_check`, then of durable `budget_record`;
//! - memory: RSS of a process filling a database to 10k, 100k and 1M entries
//!   (`TABLE_ENTRIES` caps it), and start-up (opening the engine) on the result in a
//!   fresh process. Both run as child processes so their RSS is their own.
//!
//! `cargo bench --bench table`; `TABLE_QUICK=1` scales everything down (10,000
//! spends, 30 live, 2 s admin, 100k entries); `TABLE_ONLY=chain,admin,memory` picks
//! parts.

mod support;

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder, WsConnect};
use alloy::rpc::types::Filter;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use budgetd::admin::{AdminConfig, AdminServer, AdminState};
use budgetd::budget::{Engine, EngineConfig, Notification, SpendEntry};
use budgetd::chain::ranges::RangeSizer;
use budgetd::chain::{ChainConfig, Watcher, abi};
use budgetd::tracker::OnChainTracker;
use common::anvil::{Anvil, Hook, TestSpendingHook};
use support::{Hist, env_or, ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

const ACCOUNT: Address = Address::repeat_byte(0xaa);
const LOGS_PER_TX: u64 = 1000;
/// Blocks per `eth_getLogs`: 10,000 logs, what hosted providers answer at most (and
/// well under the 16 MiB websocket frame a larger answer would exceed).
const RANGE: u64 = 10;
/// A new budget's total, in the unit's whole units (USDC; ether for wei budgets).
const DEFAULT_MAX: &str = "1000";
const CONNS: u64 = 8;
const WINDOW: usize = 64;
const TASKS: u64 = 1000;
const CHILD_ENV: &str = "TABLE_CHILD";

struct Row {
    figure: String,
    measured: String,
    target: &'static str,
    pass: Option<bool>,
}

fn row(
    figure: impl Into<String>,
    measured: impl Into<String>,
    target: &'static str,
    pass: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        target,
        pass,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(what) = std::env::var(CHILD_ENV) {
        return child(&what);
    }
    let quick = std::env::var("TABLE_QUICK").is_ok_and(|v| v == "1");
    let spends = env_or("TABLE_SPENDS", if quick { 10_000 } else { 100_000 });
    let live = env_or("TABLE_LIVE", if quick { 30 } else { 300 });
    let admin_secs = env_or("TABLE_ADMIN_SECS", if quick { 2 } else { 5 });
    let entries = env_or("TABLE_ENTRIES", if quick { 100_000 } else { 1_000_000 });
    let load_before = load_average();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("TABLE_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let mut rows = Vec::new();
    if run("chain") {
        rows.extend(rt.block_on(chain(spends, live)));
    }
    if run("admin") {
        rows.extend(admin(&rt, admin_secs));
    }
    if run("memory") {
        rows.extend(memory(entries));
    }

    println!(
        "\nbudgetd benchmark: {} CPUs, load average {load_before} before, {} after, {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| figure | measured | target | met |");
    println!("|---|---:|---|---|");
    for r in &rows {
        let met = match r.pass {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.measured, r.target);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn engine_at(path: &Path) -> Engine {
    Engine::builder(path)
        .config(EngineConfig {
            default_max: Some(DEFAULT_MAX.into()),
            ..Default::default()
        })
        .open()
        .unwrap()
}

/// Backfill, then live, on one anvil and one engine.
async fn chain(spends: u64, live: u64) -> Vec<Row> {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let http = anvil.provider().await;
    let t = Instant::now();
    let mut last = None;
    for i in 0..spends.div_ceil(LOGS_PER_TX) {
        let session = Address::with_last_byte(1 + (i % 10) as u8);
        let count = LOGS_PER_TX.min(spends - i * LOGS_PER_TX);
        // Not `Hook::spend_many`: its receipt wait walks every block mined since.
        let call = TestSpendingHook::spendManyCall {
            account: ACCOUNT,
            sessionKey: session,
            amount: U256::from(1000),
            count: U256::from(count),
        };
        let tx = TransactionRequest::default()
            .to(hook.address)
            .input(call.abi_encode().into());
        last = Some(hook.send_no_wait(tx).await);
    }
    // Automine mines each as it comes; wait for the last one's receipt.
    let head = loop {
        match http.get_transaction_receipt(last.unwrap()).await.unwrap() {
            Some(r) => {
                assert!(r.status(), "spendMany reverted: {r:?}");
                break r.block_number.unwrap();
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    eprintln!(
        "table: mined {spends} spends over {head} blocks in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let cfg = ChainConfig {
        rpc_url: anvil.ws_url(),
        hook_addresses: vec![hook.address],
        poll_interval_ms: 50,
        initial_range: RANGE,
        max_range: RANGE,
        ..ChainConfig::default()
    };
    let ranges = replay_ranges(&cfg, head);
    let raw_first = raw_download(&cfg, &ranges, spends).await;

    let dir = tempfile::tempdir().unwrap();
    let engine = engine_at(&dir.path().join("chain.redb"));
    let t = Instant::now();
    let watcher = Watcher::start(cfg.clone(), engine.clone(), OnChainTracker::new())
        .await
        .expect("watcher starts");
    let mut status = watcher.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(watcher.run(async move {
        let _ = stopped.await;
    }));
    status
        .wait_for(|s| s.synced == Some(head) && s.spend_events >= spends)
        .await
        .unwrap();
    let backfill = t.elapsed();
    let s = status.borrow().clone();
    assert_eq!((s.spend_events, s.rpc_errors), (spends, 0), "{s:?}");
    let raw_second = raw_download(&cfg, &ranges, spends).await;
    let raw = raw_first.min(raw_second);
    let rate = |d: Duration| spends as f64 / d.as_secs_f64();
    let ratio = rate(backfill) / rate(raw);
    eprintln!(
        "table: backfill {} (raw {} / {})",
        ms(backfill),
        ms(raw_first),
        ms(raw_second)
    );

    let (p50, p99, max) = live_latency(&anvil, &hook, &engine, live).await;
    let _ = stop.send(());
    task.await.unwrap().expect("watcher ran without a fatal error");
    engine.shutdown().await;
    vec![
        row(
            format!(
                "backfill: budgetd events/s ({spends} spends, {} ranges)",
                ranges.len()
            ),
            format!("{:.0}", rate(backfill)),
            "",
            None,
        ),
        row(
            "backfill: raw `eth_getLogs` events/s, same ranges (best of 2)",
            format!("{:.0}", rate(raw)),
            "",
            None,
        ),
        row(
            "backfill: budgetd / raw",
            format!("{ratio:.2}"),
            ">= 0.90",
            Some(ratio >= 0.9),
        ),
        row(
            format!("live: block to committed entry p50 / p99 / max ({live} spends, 0 confirmations)"),
            format!("{} / {} / {}", ms(p50), ms(p99), ms(max)),
            "p99 <= 5 ms",
            Some(p99 <= Duration::from_millis(5)),
        ),
    ]
}

/// The ranges the watcher asks for when nothing fails: its sizer, replayed.
fn replay_ranges(cfg: &ChainConfig, head: u64) -> Vec<(u64, u64)> {
    let mut sizer = RangeSizer::new(cfg.initial_range, cfg.max_range);
    let (mut from, mut ranges) = (cfg.start_block, Vec::new());
    while from <= head {
        let to = head.min(from + sizer.size() - 1);
        ranges.push((from, to));
        sizer.succeeded();
        from = to + 1;
    }
    ranges
}

/// Downloads the logs of `ranges` one after another, as the watcher does.
async fn raw_download(cfg: &ChainConfig, ranges: &[(u64, u64)], expect: u64) -> Duration {
    let t = Instant::now();
    let p = ProviderBuilder::new()
        .connect_ws(WsConnect::new(cfg.rpc_url.clone()))
        .await
        .unwrap();
    let filter = Filter::new()
        .address(cfg.hook_addresses.clone())
        .event_signature(abi::topics().to_vec());
    let mut logs = 0;
    for &(from, to) in ranges {
        logs += p
            .get_logs(&filter.clone().from_block(from).to_block(to))
            .await
            .unwrap()
            .len() as u64;
    }
    let d = t.elapsed();
    assert_eq!(logs, expect, "raw download");
    d
}

/// Single spends, one at a time: from our own websocket's new head to the engine's
/// alert (each spend is 60 % of a new session's budget, so it fires exactly one).
async fn live_latency(anvil: &Anvil, hook: &Hook, engine: &Engine, n: u64) -> (Duration, Duration, Duration) {
    let ws = ProviderBuilder::new()
        .connect_ws(WsConnect::new(anvil.ws_url()))
        .await
        .unwrap();
    let mut heads = ws.subscribe_blocks().await.unwrap();
    let (head_tx, mut head_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(h) = heads.recv().await {
            let _ = head_tx.send((h.inner.number, Instant::now()));
        }
    });
    let mut alerts = engine.subscribe();
    let (alert_tx, mut alert_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(n) = alerts.recv().await {
            if let Notification::Alert { task_id, .. } = n {
                let _ = alert_tx.send((task_id, Instant::now()));
            }
        }
    });
    let hist = Hist::default();
    // A new session's budget is what the backfill's sessions got.
    let total = engine
        .get(&format!("{ACCOUNT:#x}:{:#x}", Address::with_last_byte(1)))
        .unwrap()
        .total_budget;
    let amount: U256 = (total.0 / 10u32 * 6u32).to_string().parse().unwrap();
    for i in 0..n {
        let session = Address::left_padding_from(&(0x5e55_0000 + i).to_be_bytes());
        hook.send_no_wait(hook.spend_tx(ACCOUNT, session, amount)).await;
        let (_, head_at) = head_rx.recv().await.unwrap();
        let (task, alert_at) = alert_rx.recv().await.unwrap();
        assert_eq!(task, format!("{ACCOUNT:#x}:{session:#x}"));
        hist.record(alert_at.saturating_duration_since(head_at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (hist.quantile(0.5), hist.quantile(0.99), hist.max())
}

/// The admin socket in this process (its own runtime), driven from another thread.
fn admin(rt: &tokio::runtime::Runtime, secs: u64) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let engine = engine_at(&dir.path().join("admin.redb"));
    let (stop, stopped) = oneshot::channel::<()>();
    rt.block_on(async {
        for t in 0..TASKS {
            engine.allocate(&format!("bench-{t}"), None).await.unwrap();
        }
    });
    let counted = Arc::new(AtomicU64::new(0));
    let server = {
        let _runtime = rt.enter();
        let config = AdminConfig {
            socket_path: socket.clone(),
            ..AdminConfig::default()
        };
        // Counting answers server-side too, as the daemon's metrics hook would.
        let counted = counted.clone();
        let state =
            AdminState::new(engine.clone(), OnChainTracker::new(), None).on_request(move |_, code, _| {
                assert_eq!(code, 0, "an admin call failed");
                counted.fetch_add(1, Ordering::Relaxed);
            });
        let server = AdminServer::bind(config, state).unwrap();
        rt.spawn(server.run(async move {
            let _ = stopped.await;
        }))
    };
    let mut rows = Vec::new();
    for (method, target, min) in [
        ("budget_check", ">= 100,000/s", 100_000.0),
        ("budget_record", ">= 20,000/s", 20_000.0),
    ] {
        let socket = socket.clone();
        let before = counted.load(Ordering::Relaxed);
        let (calls, rate, p99) = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drive(&socket, method, secs))
        })
        .join()
        .unwrap();
        assert_eq!(
            counted.load(Ordering::Relaxed) - before,
            calls,
            "the server answered each call once"
        );
        let what = if method == "budget_record" {
            "durable budget_record"
        } else {
            method
        };
        rows.push(row(
            format!("admin: {what} calls/s ({CONNS} connections x {WINDOW} in flight)"),
            format!("{rate:.0}"),
            target,
            Some(rate >= min),
        ));
        rows.push(row(format!("admin: {what} p99 latency"), ms(p99), "", None));
    }
    let _ = stop.send(());
    rt.block_on(async {
        server.await.unwrap();
        engine.shutdown().await;
    });
    rows
}

/// `CONNS` connections, `WINDOW` requests each in flight, for `secs`.
async fn drive(socket: &Path, method: &'static str, secs: u64) -> (u64, f64, Duration) {
    let hist = Arc::new(Hist::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut conns = Vec::new();
    for c in 0..CONNS {
        let stream = UnixStream::connect(socket).await.unwrap();
        conns.push(tokio::spawn(pipeline(stream, method, c, end, hist.clone())));
    }
    let mut calls = 0;
    for c in conns {
        calls += c.await.unwrap();
    }
    (
        calls,
        calls as f64 / start.elapsed().as_secs_f64(),
        hist.quantile(0.99),
    )
}

/// Keeps `WINDOW` requests in flight on one connection until `end`; a request's id
/// says its slot, so answers may come in any order.
async fn pipeline(stream: UnixStream, method: &str, conn: u64, end: Instant, hist: Arc<Hist>) -> u64 {
    let (mut rd, mut wr) = stream.into_split();
    let mut sent_at: [Option<Instant>; WINDOW] = [None; WINDOW];
    let mut free: Vec<usize> = (0..WINDOW).collect();
    let (mut seq, mut done) = (conn << 40, 0u64);
    let (mut out, mut buf) = (Vec::new(), Vec::with_capacity(1 << 16));
    loop {
        let now = Instant::now();
        if now < end {
            for slot in free.drain(..) {
                let id = seq * WINDOW as u64 + slot as u64;
                seq += 1;
                let task = id % TASKS;
                let params = if method == "budget_record" {
                    format!(r#"["bench-{task}",{{"amount":"1"}}]"#)
                } else {
                    format!(r#"["bench-{task}","1"]"#)
                };
                out.extend_from_slice(
                    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
                        .as_bytes(),
                );
                out.push(b'\n');
                sent_at[slot] = Some(now);
            }
        } else if free.len() == WINDOW {
            return done;
        }
        if !out.is_empty() {
            wr.write_all(&out).await.unwrap();
            out.clear();
        }
        let n = rd.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "server closed the connection");
        let mut start = 0;
        while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&buf[start..start + len]).unwrap();
            start += len + 1;
            assert!(line.contains(r#""result""#), "{method} failed: {line}");
            let id: u64 = line
                .split_once(r#""id":"#)
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("no id in {line}"));
            let slot = (id % WINDOW as u64) as usize;
            hist.record(sent_at[slot].take().expect("an answer per request").elapsed());
            free.push(slot);
            done += 1;
        }
        buf.drain(..start);
    }
}

/// RSS while filling, then start-up on the result, each in a child process.
fn memory(max_entries: u64) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let levels: Vec<u64> = [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&l| l <= max_entries)
        .collect();
    let levels_arg = levels.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let fill = run_child(&format!("fill:{levels_arg}"), dir.path());
    let open = run_child("open", dir.path());
    let rss: Vec<f64> = fill
        .iter()
        .filter_map(|l| l.strip_prefix("rss ")?.split(' ').nth(1)?.parse().ok())
        .collect();
    let rate = fill
        .iter()
        .find_map(|l| l.strip_prefix("rate ")?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let (open_ms, open_rss) = open
        .iter()
        .find_map(|l| {
            let mut f = l.strip_prefix("open ")?.split(' ');
            Some((f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?))
        })
        .expect("the open child reports");
    let top = *levels.last().unwrap();
    let (first, last) = (rss[0], *rss.last().unwrap());
    let names = levels.iter().map(|&l| human(l)).collect::<Vec<_>>().join(" / ");
    let values = rss
        .iter()
        .map(|r| format!("{r:.1}"))
        .collect::<Vec<_>>()
        .join(" / ");
    vec![
        row(
            format!(
                "memory: RSS with {names} entries (10,000 budgets; filled at {rate:.0} durable records/s)"
            ),
            format!("{values} MiB"),
            "flat (grows <= the 16 MiB redb cache), <= 64 MiB at 1M",
            Some(last - first <= 16.0 && last <= 64.0),
        ),
        row(
            format!(
                "start-up: open a {}-entry database (RSS after: {open_rss:.1} MiB)",
                human(top)
            ),
            format!("{open_ms:.0} ms"),
            "<= 1 s",
            Some(open_ms <= 1000.0),
        ),
    ]
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn run_child(what: &str, dir: &Path) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, what)
        .env("TABLE_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(child.wait().unwrap().success(), "child {what} failed");
    lines
}

/// The child side of [`memory`]: `fill:LEVELS` or `open`.
fn child(what: &str) {
    let path = Path::new(&std::env::var("TABLE_DIR").unwrap()).join("memory.redb");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if what == "open" {
        let t = Instant::now();
        let engine = engine_at(&path);
        let took = t.elapsed();
        assert!(engine.get("task-0").is_ok());
        println!(
            "open {:.1} {:.1}",
            took.as_secs_f64() * 1000.0,
            support::rss_mib()
        );
        return;
    }
    let levels: Vec<u64> = what
        .strip_prefix("fill:")
        .unwrap()
        .split(',')
        .map(|l| l.parse().unwrap())
        .collect();
    const CALLERS: u64 = 256;
    let tasks = 10_000u64;
    let engine = engine_at(&path);
    rt.block_on(async {
        let t = Instant::now();
        spread(
            CALLERS,
            0,
            tasks,
            move |e, i| async move {
                e.allocate(&format!("task-{i}"), None).await.unwrap();
            },
            &engine,
        )
        .await;
        let mut filled = 0;
        let mut fill_time = Duration::ZERO;
        eprintln!("table: {tasks} budgets in {:.1} s", t.elapsed().as_secs_f64());
        for level in levels {
            let t = Instant::now();
            spread(
                CALLERS,
                filled,
                level,
                move |e, i| async move {
                    let entry = SpendEntry::new(1 + i % 100).with_id(format!("e-{i}"));
                    e.record(&format!("task-{}", i % tasks), entry, None)
                        .await
                        .unwrap();
                },
                &engine,
            )
            .await;
            fill_time += t.elapsed();
            filled = level;
            println!("rss {level} {:.1}", support::rss_mib());
            eprintln!("table: {level} entries, RSS {:.1} MiB", support::rss_mib());
        }
        println!("rate {:.0}", filled as f64 / fill_time.as_secs_f64());
        engine.shutdown().await;
    });
}

/// Runs `f(engine, i)` for `i` in `from..to` on `callers` concurrent tasks.
async fn spread<F, Fut>(callers: u64, from: u64, to: u64, f: F, engine: &Engine)
where
    F: Fn(Engine, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..callers {
        let (e, f) = (engine.clone(), f.clone());
        workers.spawn(async move {
            let mut i = from + w;
            while i < to {
                f(e.clone(), i).await;
                i += callers;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
}
