//! Engine throughput: `check` (memory), `reserve`+`release` and durable `record`,
//! single caller and with concurrent callers sharing commits.
//!
//! `cargo bench --bench engine`

use std::time::{Duration, Instant};

use budgetd::budget::{Engine, EngineConfig, SpendEntry};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use num_bigint::BigUint;

fn engine(dir: &tempfile::TempDir) -> Engine {
    let cfg = EngineConfig {
        default_max: Some("1000000000".into()),
        ..Default::default()
    };
    Engine::builder(dir.path().join("bench.redb"))
        .config(cfg)
        .open()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(&dir);
    rt.block_on(async {
        for i in 0..1000 {
            e.allocate(&format!("task-{i}"), None).await.unwrap();
        }
    });
    let one = BigUint::from(1u32);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("check", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % 1000;
            e.check(&format!("task-{i}"), &one, None).unwrap()
        })
    });
    g.bench_function("reserve+release (durable, 1 caller)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = e.reserve("task-0", one.clone(), None).await.unwrap();
                e.release(&r.id).await.unwrap();
            })
        })
    });
    g.bench_function("record (durable, 1 caller)", |b| {
        b.iter(|| rt.block_on(e.record("task-1", SpendEntry::new(1), None)).unwrap())
    });
    for callers in [8u64, 64] {
        g.bench_function(format!("record (durable, {callers} callers)"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for w in 0..callers {
                        let e = e.clone();
                        let n = iters / callers + u64::from(w < iters % callers);
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..n {
                                e.record(&format!("task-{}", 2 + w), SpendEntry::new(1), None)
                                    .await
                                    .unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(engine_benches, benches);
criterion_main!(engine_benches);
