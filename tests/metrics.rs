//! The metrics endpoint against the real Prometheus tools: `promtool check metrics`
//! accepts the exposition, and a real `prometheus` server scraping the endpoint stores
//! the live budgets' gauges with their values and nothing of a closed budget.
//!
//! A second test drives `/readyz` and the chain gauges through a watch channel.
//!
//! Needs `prometheus` and `promtool` on PATH (Debian: `apt-get install prometheus`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use budgetd::budget::{Engine, EngineConfig, SpendEntry};
use budgetd::chain::SyncStatus;
use budgetd::metrics::{CONTENT_TYPE, Metrics, MetricsState, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A tool on PATH, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH: install Prometheus (Debian: apt-get install prometheus)")
        })
}

/// A plain HTTP/1.0 GET: (status, raw headers, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.expect("promtool output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A Prometheus server scraping `target` every second; killed on drop.
fn start_prometheus(dir: &Path, target: &str, web: &str) -> Child {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: budgetd\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus")
}

/// `budgetd_budget_spent` series from Prometheus's API: (task, unit, value).
async fn query_spent(web: &str) -> Option<Vec<(String, String, f64)>> {
    let (status, _, body) = get(web, "/api/v1/query?query=budgetd_budget_spent").await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out: Vec<_> = v["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            let label = |k: &str| r["metric"][k].as_str().unwrap_or_default().to_owned();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            (label("task"), label("unit"), value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn real_prometheus_scrapes_live_budgets() {
    let (promtool_bin, prometheus_bin) = (tool("promtool"), tool("prometheus"));
    eprintln!(
        "using {} and {}",
        promtool_bin.display(),
        prometheus_bin.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path().join("budgets.redb"))
        .config(EngineConfig {
            default_max: Some("10.00".into()),
            ..Default::default()
        })
        .open()
        .unwrap();
    engine.allocate("alpha", None).await.unwrap();
    engine
        .record("alpha", SpendEntry::new(2_500_000), None)
        .await
        .unwrap();
    engine.allocate("beta", Some(1_000u32.into())).await.unwrap();
    engine.record("beta", SpendEntry::new(1_000), None).await.unwrap();
    engine.allocate("gamma", None).await.unwrap();
    engine.record("gamma", SpendEntry::new(7), None).await.unwrap();
    engine.close("gamma").await.unwrap();

    let metrics = std::sync::Arc::new(Metrics::new());
    metrics.observe_admin("budget_get", 0, Duration::from_millis(2));
    metrics.alert(0.5);
    let state = MetricsState {
        metrics,
        engine,
        sync: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move { drop(stopped.await) }));

    let (status, head, body) = get(&addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase()
            .contains(&format!("content-type: {CONTENT_TYPE}")),
        "{head}"
    );
    assert!(
        body.contains(r#"budgetd_budget_spent{task="alpha",unit="usdc"} 2500000"#),
        "{body}"
    );
    assert!(!body.contains("gamma"), "closed budget exported:\n{body}");
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(
        get(&addr, "/readyz").await.unwrap().0,
        200,
        "no chain configured: ready"
    );
    assert_eq!(get(&addr, "/nope").await.unwrap().0, 404);

    // promtool parses the body and lints it: both must pass.
    let (ok, out) = promtool(&["check", "metrics"], Some(&body)).await;
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics failed:\n{out}\n--- body:\n{body}"
    );

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/budgetd.rules.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None).await;
    assert!(ok, "promtool check rules failed:\n{out}");

    let web = format!("127.0.0.1:{}", free_port());
    let mut prometheus = start_prometheus(dir.path(), &addr, &web);
    let want = vec![
        ("alpha".to_owned(), "usdc".to_owned(), 2_500_000.0),
        ("beta".to_owned(), "usdc".to_owned(), 1_000.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(exited) = prometheus.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("prometheus exited ({exited}):\n{log}");
        }
        last = query_spent(&web).await;
        if last.as_ref().is_some_and(|r| r.len() >= want.len()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert_eq!(
        last.as_ref(),
        Some(&want),
        "what prometheus stored; its log:\n{log}"
    );

    prometheus.kill().await.unwrap();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
}

#[tokio::test]
async fn readyz_follows_chain_sync() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path().join("budgets.redb")).open().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(SyncStatus::default());
    let state = MetricsState {
        metrics: std::sync::Arc::new(Metrics::new()),
        engine,
        sync: Some(rx),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move { drop(stopped.await) }));

    let (status, _, body) = get(&addr, "/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "not connected to the node\n"));
    let synced = SyncStatus {
        confirmations: 2,
        head: Some(50),
        synced: Some(48),
        confirmed: Some(48),
        connected: true,
        ..Default::default()
    };
    tx.send_replace(SyncStatus {
        synced: Some(40),
        ..synced.clone()
    });
    let (status, _, body) = get(&addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    tx.send_replace(synced);
    assert_eq!(get(&addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);
    let (_, _, metrics) = get(&addr, "/metrics").await.unwrap();
    assert!(metrics.contains("budgetd_chain_blocks_behind 2"), "{metrics}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
