//! The real `budgetd` binary as an operator runs it: config errors stop it before it
//! opens anything, it serves the admin socket and metrics, and SIGTERM ends it
//! cleanly (exit 0, socket removed, state kept).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use budgetd::client::Client;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_budgetd");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn invalid_config_names_the_key_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("budgetd.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg,
        format!("data_dir = {data:?}\n[budget]\ndefault_max = \"1.1234567\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("budget.default_max") && err.contains("6 decimals"),
        "{err}"
    );
    assert!(!data.exists(), "nothing opened");
}

#[tokio::test]
async fn serves_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (data, socket) = (dir.path().join("data"), dir.path().join("admin.sock"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("budgetd.toml");
    std::fs::write(&cfg, "[budget]\ndefault_max = \"10.00\"\n").unwrap();
    let start = || {
        Command::new(BIN)
            .args(["run", "--log-format", "json", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-listen", &metrics])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(&socket).await.unwrap();
    let b = c.call("budget_allocate", json!(["task-1"])).await.unwrap();
    assert_eq!(b["totalBudget"], "10000000");
    c.call("budget_record", json!(["task-1", {"amount": "2500000"}]))
        .await
        .unwrap();
    // budgetctl against the same daemon: tables, --json, and exit codes scripts use.
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let get = ctl(&["--usdc", "budget", "get", "task-1"]);
    assert_eq!(get.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("spent        2.50"),
        "{get:?}"
    );
    let json_out = ctl(&["--json", "budget", "list", "--status", "active"]);
    let listed: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(listed["items"][0]["taskId"], "task-1");
    let refused = ctl(&["budget", "check", "task-1", "99999999"]);
    assert_eq!(refused.status.code(), Some(1), "refused: exit 1");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("budget exceeded"));
    let missing = Command::new(env!("CARGO_BIN_EXE_budgetctl"))
        .args(["--socket", "/nonexistent/admin.sock", "sync", "status"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3), "unreachable: exit 3");

    let body = reqwest_get(&metrics, "/metrics").await;
    assert!(
        body.contains(r#"budgetd_budget_spent{task="task-1",unit="usdc"} 2500000"#),
        "{body}"
    );

    // SIGTERM: exit 0, socket removed, state kept for the next start.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!socket.exists(), "socket removed on exit");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "--log-format json: {log}"
    );

    let mut child = start();
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = Client::connect(&socket).await.unwrap();
    assert_eq!(
        c.call("budget_get", json!(["task-1"])).await.unwrap()["spent"],
        "2500000"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A plain HTTP/1.1 GET over a TcpStream (the body).
async fn reqwest_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
