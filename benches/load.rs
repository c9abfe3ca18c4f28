//! Load on the admin socket: `LOAD_CLIENTS` (1,000) concurrent clients, each its own
//! connection with one call at a time, for `LOAD_SECS` (60) of mixed `budget_check`,
//! `budget_get`, `budget_reserve`, `budget_release` (of the client's own reservations)
//! and durable `budget_record` across `LOAD_TASKS` (1,000) budgets. Budgets are large
//! enough that nothing is refused, so any error answer is unexpected and fails the run.
//! Prints a markdown table: calls and latency per method, and the server's RSS before
//! and after.
//!
//! The server (engine and admin socket, as the daemon runs them) is this same binary
//! started again as a child process, so its RSS is its own, not the clients'.
//!
//! `cargo bench --bench load` (`LOAD_SECS=5 LOAD_CLIENTS=100` for a quick run)

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use budgetd::admin::{AdminConfig, AdminServer, AdminState};
use budgetd::budget::{Engine, EngineConfig};
use budgetd::client::{Client, ClientError};
use budgetd::tracker::OnChainTracker;
use serde_json::{Value, json};
use support::{Hist, Rng, env_or, ms, status_mib};

const SERVE_ENV: &str = "LOAD_SERVE_DIR";
const METHODS: [&str; 5] = [
    "budget_check",
    "budget_get",
    "budget_reserve",
    "budget_release",
    "budget_record",
];
/// Out of 100: check, get, reserve, release, record.
const MIX: [u64; 5] = [30, 20, 20, 15, 15];
/// Reservations one client holds at most.
const HELD: usize = 8;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(dir) = std::env::var(SERVE_ENV) {
        return serve(Path::new(&dir));
    }
    let clients = env_or("LOAD_CLIENTS", 1000);
    let secs = env_or("LOAD_SECS", 60);
    let tasks = env_or("LOAD_TASKS", 1000);
    if let Some(limit) = support::open_files_limit()
        && limit < 2 * clients + 64
    {
        panic!(
            "{clients} clients need {} open files in this process and the server: run `ulimit -n {}` first",
            clients + 64,
            2 * clients + 64
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, dir.path())
        .env("LOAD_CLIENTS", clients.to_string())
        .env("LOAD_TASKS", tasks.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server process");
    let pid = server.id().to_string();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "server did not start");
    let socket = dir.path().join("admin.sock");
    let rss_before = status_mib(&pid, "VmRSS");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let elapsed = rt.block_on(run(&socket, clients, tasks, secs, stats.clone()));
    let rss_after = status_mib(&pid, "VmRSS");
    let rss_peak = status_mib(&pid, "VmHWM");
    drop(server.stdin.take()); // the server stops when its stdin closes
    let status = server.wait().unwrap();
    assert!(status.success(), "server exited with {status}");

    let all = Hist::default();
    let total: u64 = stats.hist.iter().map(Hist::count).sum();
    println!("| method | calls | calls/s | p50 | p99 | max | unexpected errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, m) in METHODS.iter().enumerate() {
        let h = &stats.hist[i];
        all.merge(h);
        println!(
            "| {m} | {} | {:.0} | {} | {} | {} | {} |",
            h.count(),
            h.count() as f64 / elapsed.as_secs_f64(),
            ms(h.quantile(0.5)),
            ms(h.quantile(0.99)),
            ms(h.max()),
            stats.errors[i].load(Ordering::Relaxed),
        );
    }
    let errors: u64 = stats.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum();
    println!(
        "| **all** | {total} | {:.0} | {} | {} | {} | {errors} |",
        total as f64 / elapsed.as_secs_f64(),
        ms(all.quantile(0.5)),
        ms(all.quantile(0.99)),
        ms(all.max()),
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| clients / budgets / duration | {clients} / {tasks} / {:.1} s |",
        elapsed.as_secs_f64()
    );
    println!("| server RSS before / after / peak | {rss_before:.1} / {rss_after:.1} / {rss_peak:.1} MiB |");
    if let Some(e) = stats.first_error.lock().unwrap().as_ref() {
        println!("| first unexpected error | {e} |");
    }
    assert_eq!(errors, 0, "unexpected errors");
}

#[derive(Default)]
struct Stats {
    hist: [Hist; 5],
    errors: [AtomicU64; 5],
    first_error: std::sync::Mutex<Option<String>>,
}

async fn run(socket: &Path, clients: u64, tasks: u64, secs: u64, stats: Arc<Stats>) -> Duration {
    // Connect everyone first (retrying while the listen backlog is full), then go.
    let mut conns = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        conns.push(connect(socket).await);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut workers = tokio::task::JoinSet::new();
    for (n, conn) in conns.into_iter().enumerate() {
        let stats = stats.clone();
        workers.spawn(client(conn, Rng::new(n as u64 + 1), tasks, end, stats));
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

async fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(socket).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

async fn client(mut c: Client, mut rng: Rng, tasks: u64, end: Instant, stats: Arc<Stats>) {
    let mut held: Vec<String> = Vec::new();
    while Instant::now() < end {
        let task = format!("load-{}", rng.below(tasks));
        let mut pick = rng.below(100);
        let mut op = 0;
        while pick >= MIX[op] {
            pick -= MIX[op];
            op += 1;
        }
        // Release only what this client holds; hold at most HELD.
        if op == 3 && held.is_empty() {
            op = 2;
        } else if op == 2 && held.len() >= HELD {
            op = 3;
        }
        let params = match op {
            0 => json!([task, "1"]),
            1 => json!([task]),
            2 => json!([task, "1", 3600]),
            3 => json!([held.swap_remove(rng.below(held.len() as u64) as usize)]),
            _ => json!([task, {"amount": "1", "toolName": "load"}]),
        };
        let t = Instant::now();
        let r = c.call(METHODS[op], params.clone()).await;
        stats.hist[op].record(t.elapsed());
        let ok = match (&r, op) {
            (Ok(v), 2) => match v["id"].as_str() {
                Some(id) => {
                    held.push(id.to_owned());
                    true
                }
                None => false,
            },
            (Ok(v), 3) => v["released"] == Value::Bool(true),
            (Ok(_), _) => true,
            (Err(_), _) => false,
        };
        if !ok {
            stats.errors[op].fetch_add(1, Ordering::Relaxed);
            let mut first = stats.first_error.lock().unwrap();
            if first.is_none() {
                *first = Some(format!("{} {params} -> {r:?}", METHODS[op]));
            }
            if let Err(ClientError::Io(_) | ClientError::Connect { .. }) = r {
                return; // the connection is gone
            }
        }
    }
}

/// The server process: an engine with `LOAD_TASKS` budgets and the admin socket,
/// until stdin closes.
fn serve(dir: &Path) {
    let clients = env_or("LOAD_CLIENTS", 1000) as usize;
    let tasks = env_or("LOAD_TASKS", 1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = Engine::builder(dir.join("load.redb"))
            .config(EngineConfig {
                default_max: Some("1000000000000000".into()),
                ..Default::default()
            })
            .open()
            .unwrap();
        for t in 0..tasks {
            engine.allocate(&format!("load-{t}"), None).await.unwrap();
        }
        let config = AdminConfig {
            socket_path: PathBuf::from(dir).join("admin.sock"),
            max_connections: clients + 16,
            ..AdminConfig::default()
        };
        let server = AdminServer::bind(
            config,
            AdminState::new(engine.clone(), OnChainTracker::new(), None),
        )
        .expect("bind the admin socket");
        println!("ready");
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        });
        server
            .run(async {
                let _ = stdin_closed.await;
            })
            .await;
        engine.shutdown().await;
    });
}
