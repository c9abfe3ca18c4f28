//! Memory and start-up with many entries: fills a database with `ENTRIES` durable
//! records across `TASKS` tasks (256 concurrent callers, so commits are shared), and
//! prints a markdown table of fill rate, RSS, file size and reopen time.
//!
//! `cargo bench --bench fill` (defaults 1,000,000 entries over 10,000 tasks;
//! `FILL_ENTRIES`/`FILL_TASKS` override).

use std::time::Instant;

use budgetd::budget::{Engine, EngineConfig, SpendEntry};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks every bench for its names
    }
    let entries = env_or("FILL_ENTRIES", 1_000_000);
    let tasks = env_or("FILL_TASKS", 10_000);
    const CALLERS: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fill.redb");
    let cfg = EngineConfig {
        default_max: Some("1000000000".into()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rss_start = rss_mib();
    let e = Engine::builder(&path).config(cfg.clone()).open().unwrap();
    let start = Instant::now();
    rt.block_on(async {
        for t in 0..tasks {
            e.allocate(&format!("task-{t}"), None).await.unwrap();
        }
        let mut workers = Vec::new();
        for w in 0..CALLERS {
            let e = e.clone();
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while i < entries {
                    let entry = SpendEntry::new(1 + i % 100).with_id(format!("e-{i}"));
                    e.record(&format!("task-{}", i % tasks), entry, None)
                        .await
                        .unwrap();
                    i += CALLERS;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    });
    let fill = start.elapsed();
    let rss_full = rss_mib();
    drop(e);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let reopen = Instant::now();
    let e = Engine::builder(&path).config(cfg).open().unwrap();
    let reopen = reopen.elapsed();
    let sample = e.get("task-0").unwrap();
    assert_eq!(
        sample.entry_count,
        entries / tasks + u64::from(entries % tasks > 0)
    );

    println!("| figure | value |");
    println!("|---|---|");
    println!("| entries / tasks | {entries} / {tasks} |");
    println!(
        "| durable records/s (256 callers, shared commits) | {:.0} |",
        entries as f64 / fill.as_secs_f64()
    );
    println!("| RSS before / after fill | {rss_start:.1} MiB / {rss_full:.1} MiB |");
    println!("| RSS after reopen | {:.1} MiB |", rss_mib());
    println!("| database file | {:.1} MiB |", size as f64 / (1 << 20) as f64);
    println!(
        "| reopen (load budgets) | {:.0} ms |",
        reopen.as_secs_f64() * 1000.0
    );
}
