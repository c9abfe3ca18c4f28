//! The admin socket over a real Unix socket, with a real redb engine behind it.
//!
//! Proves: every method answers (and one error path each); engine errors keep their
//! stable codes, messages and `data.kind`; protocol errors (-32700, -32600, -32601,
//! -32602) write nothing; pipelined requests run concurrently and are answered by id;
//! batches, cast-style requests without a newline, two requests in one write;
//! subscriptions push alerts; oversized, malformed and idle clients are closed without
//! disturbing others; the socket's mode, stale-socket handling and the uid allowlist;
//! the connection cap (clients over it wait); the metrics hook; and `cast rpc` against
//! the socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use budgetd::admin::{AdminConfig, AdminError, AdminServer, AdminState};
use budgetd::budget::Engine;
use budgetd::tracker::OnChainTracker;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use common::TestDb;

const WAIT: Duration = Duration::from_secs(10);
const ACCOUNT: &str = "0x00000000000000000000000000000000000000aa";
const SESSION: &str = "0x00000000000000000000000000000000000000bb";

type Calls = Arc<Mutex<Vec<(String, i32)>>>;

struct Daemon {
    db: TestDb,
    path: PathBuf,
    engine: Engine,
    calls: Calls,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Daemon {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(f: impl FnOnce(&mut AdminConfig)) -> Self {
        let db = TestDb::new();
        let engine = db.open();
        let path = db.dir.path().join("admin.sock");
        let mut config = AdminConfig {
            socket_path: path.clone(),
            ..AdminConfig::default()
        };
        f(&mut config);
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let state = AdminState::new(engine.clone(), OnChainTracker::new(), None)
            .on_request(move |m, code, _| c.lock().unwrap().push((m.to_owned(), code)));
        let server = AdminServer::bind(config, state).expect("bind");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            db,
            path,
            engine,
            calls,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.path).await
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        self.client().await.call(method, params).await
    }

    /// Stops the server; returns the directory, which lives on while held.
    async fn shutdown(mut self) -> TestDb {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, self.task.take().unwrap()).await.unwrap().unwrap();
        self.db
    }
}

struct Client {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &PathBuf) -> Self {
        let (rd, wr) = UnixStream::connect(path).await.expect("connect").into_split();
        Self {
            rd: BufReader::new(rd),
            wr,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.expect("write");
    }

    /// The next line, parsed; `None` at end of stream.
    async fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .expect("answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "answer not newline-terminated: {line}");
        Some(serde_json::from_str(&line).expect("answer is JSON"))
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.send_raw(format!("{req}\n").as_bytes()).await;
        self.read().await.expect("an answer")
    }

    /// True when the server closed the connection. A reset counts: Linux reports
    /// ECONNRESET to the peer of a Unix socket closed with unread data (the rest of
    /// an oversized request), unless a write of the peer's consumed it first.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match timeout(WAIT, self.rd.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Err(_) => false,
        }
    }
}

fn result(v: &Value) -> &Value {
    assert!(v.get("error").is_none(), "unexpected error: {v}");
    &v["result"]
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error: {v}"))
}

#[tokio::test]
async fn every_method_answers() {
    let d = Daemon::start().await;
    let t = d.call("budget_allocate", json!(["t1", "1000"])).await;
    assert_eq!(result(&t)["totalBudget"], "1000");
    assert_eq!(result(&t)["unit"], "usdc");
    let dflt = d.call("budget_allocate", json!(["t2"])).await;
    assert_eq!(result(&dflt)["totalBudget"], "10000000");
    assert_eq!(result(&d.call("budget_get", json!(["t1"])).await)["taskId"], "t1");
    assert_eq!(
        result(&d.call("budget_check", json!(["t1", 100, "did:x", "usdc"])).await),
        &json!({"ok": true})
    );

    let r = d.call("budget_reserve", json!(["t1", "0x64", 60])).await;
    let rid = result(&r)["id"].as_str().unwrap().to_owned();
    assert_eq!(result(&r)["amount"], "100");
    let rec = d
        .call(
            "budget_record",
            json!(["t1", {"id": "e1", "amount": "100", "toolName": "search", "reason": "r"}, rid]),
        )
        .await;
    assert_eq!(result(&rec)["budget"]["spent"], "100");
    assert_eq!(result(&rec)["alreadyRecorded"], false);
    let r2 = d.call("budget_reserve", json!(["t1", "10"])).await;
    let rid2 = result(&r2)["id"].as_str().unwrap().to_owned();
    assert_eq!(
        result(&d.call("budget_release", json!([rid2])).await),
        &json!({"released": true})
    );
    assert_eq!(
        result(&d.call("budget_release", json!([rid2])).await),
        &json!({"released": false})
    );

    assert_eq!(
        result(&d.call("budget_setProgress", json!(["t1", 0.5])).await)["progress"],
        0.5
    );
    let br = d.call("budget_burnRate", json!(["t1"])).await;
    assert_eq!(result(&br)["taskId"], "t1");
    assert_eq!(result(&br)["unit"], "usdc");
    assert!(result(&br)["burnRate"].is_string());

    let list = d.call("budget_list", json!(["active", null, 1])).await;
    assert_eq!(result(&list)["items"][0]["taskId"], "t1");
    assert_eq!(result(&list)["next"], "t1");
    let list2 = d.call("budget_list", json!([null, "t1"])).await;
    assert_eq!(result(&list2)["items"][0]["taskId"], "t2");
    assert_eq!(result(&list2)["next"], Value::Null);
    let entries = d.call("budget_entries", json!(["t1"])).await;
    assert_eq!(result(&entries)["items"][0]["id"], "e1");

    let bound = d
        .call("session_bind", json!([ACCOUNT, SESSION, "t1", "did:peer"]))
        .await;
    assert_eq!(result(&bound), &json!({"posted": 0}));
    let spent = d.call("tracker_getSpent", json!([ACCOUNT, SESSION])).await;
    assert_eq!(
        result(&spent),
        &json!({"session": format!("{ACCOUNT}:{SESSION}"), "pending": "0", "confirmed": "0", "unbound": "0"})
    );
    assert_eq!(result(&d.call("tracker_sessions", json!([])).await), &json!([]));
    assert_eq!(
        result(&d.call("session_unbind", json!([ACCOUNT, SESSION])).await),
        &json!({"unbound": true})
    );
    assert_eq!(
        result(&d.call("session_unbind", json!([ACCOUNT, SESSION])).await),
        &json!({"unbound": false})
    );
    assert_eq!(result(&d.call("chain_limits", json!([])).await), &json!([]));
    assert_eq!(
        result(&d.call("chain_limits", json!([ACCOUNT])).await),
        &json!([])
    );
    assert_eq!(
        result(&d.call("sync_status", json!([])).await),
        &json!({"enabled": false})
    );

    let report = d.call("budget_close", json!(["t1"])).await;
    assert_eq!(result(&report)["status"], "closed");
    assert_eq!(result(&report)["totalSpent"], "100");

    let calls = d.calls.lock().unwrap().clone();
    assert!(calls.contains(&("budget_allocate".into(), 0)));
    assert!(calls.contains(&("budget_close".into(), 0)));
    d.shutdown().await;
}

#[tokio::test]
async fn engine_errors_keep_codes_messages_and_kinds() {
    let d = Daemon::start().await;
    let nf = d.call("budget_get", json!(["nope"])).await;
    assert_eq!(
        nf["error"],
        json!({"code": -32005, "message": "budget not found", "data": {"kind": "not_found"}})
    );
    d.call("budget_allocate", json!(["t1", "1000"])).await;
    let ex = d.call("budget_check", json!(["t1", "2000"])).await;
    assert_eq!(error_code(&ex), -32001);
    assert_eq!(
        ex["error"]["message"],
        "budget exceeded: need 2000 but 1000 remaining"
    );
    assert_eq!(ex["error"]["data"]["kind"], "exceeded");
    let exists = d.call("budget_allocate", json!(["t1"])).await;
    assert_eq!(error_code(&exists), -32004);
    let unit = d.call("budget_check", json!(["t1", "1", null, "wei"])).await;
    assert_eq!(error_code(&unit), -32011);
    let progress = d.call("budget_setProgress", json!(["t1", 2.0])).await;
    assert_eq!(error_code(&progress), -32006);
    assert_eq!(
        error_code(&d.call("budget_entries", json!(["nope"])).await),
        -32005
    );
    assert_eq!(
        error_code(&d.call("session_bind", json!([ACCOUNT, SESSION, "nope"])).await),
        -32005
    );
    assert!(d.calls.lock().unwrap().contains(&("budget_get".into(), -32005)));
    d.shutdown().await;
}

#[tokio::test]
async fn bad_params_are_refused_and_nothing_is_written() {
    let d = Daemon::start().await;
    d.call("budget_allocate", json!(["t1", "1000"])).await;
    let huge = format!("0x1{}", "0".repeat(64));
    for params in [
        json!(["t1", {"amount": -5}]),
        json!(["t1", {"amount": "-5"}]),
        json!(["t1", {"amount": 1.5}]),
        json!(["t1", {"amount": "1.5"}]),
        json!(["t1", {"amount": huge}]),
        json!(["t1", {"amount": 1e30}]),
        json!(["t1", {"amount": true}]),
        json!(["t1", {"amount": "10", "onchain": true}]),
        json!(["t1", "10"]),
        json!([{"amount": "10"}]),
        json!([]),
    ] {
        let r = d.call("budget_record", params.clone()).await;
        assert_eq!(error_code(&r), -32602, "{params} -> {r}");
    }
    for (m, p) in [
        ("budget_allocate", json!(["t9", "-1"])),
        ("budget_allocate", json!(["t9", huge])),
        ("budget_reserve", json!(["t1", "0.5"])),
        ("budget_check", json!(["t1", []])),
        ("session_bind", json!(["0x12", SESSION, "t1"])),
        ("tracker_getSpent", json!(["not-an-address", SESSION])),
        ("budget_list", json!(["sleeping"])),
        ("budget_list", json!([null, null, 0])),
    ] {
        let r = d.call(m, p.clone()).await;
        assert_eq!(error_code(&r), -32602, "{m} {p} -> {r}");
    }
    let b = d.engine.get("t1").unwrap();
    assert_eq!(b.entry_count, 0);
    assert!(b.reserved.is_zero());
    assert!(d.engine.get("t9").is_err());
    let unknown = d.call("budget_steal", json!([])).await;
    assert_eq!(error_code(&unknown), -32601);
    d.shutdown().await;
}

#[tokio::test]
async fn batches_framing_and_cast_style_requests() {
    let d = Daemon::start().await;
    let mut c = d.client().await;
    // A batch mixing successes and errors is answered as one array.
    c.send_raw(
        br#"[{"jsonrpc":"2.0","id":1,"method":"budget_allocate","params":["b1","500"]},
            {"jsonrpc":"2.0","id":2,"method":"budget_get","params":["zzz"]},
            {"jsonrpc":"2.0","id":3,"method":"nope"},
            {"jsonrpc":"2.0","method":"budget_get","params":["b1"]},
            {"foo":1}]"#,
    )
    .await;
    let a = c.read().await.unwrap();
    let items = a.as_array().expect("batch answer is an array");
    assert_eq!(items.len(), 4, "{a}");
    assert_eq!(items[0]["result"]["taskId"], "b1");
    assert_eq!(items[1]["error"]["code"], -32005);
    assert_eq!(items[2]["error"]["code"], -32601);
    assert_eq!(items[3]["error"]["code"], -32600);

    // No trailing newline, as `cast rpc` sends: answered without waiting for more.
    c.send_raw(br#"{"jsonrpc":"2.0","id":7,"method":"budget_get","params":["b1"]}"#)
        .await;
    let a = c.read().await.unwrap();
    assert_eq!(a["id"], 7);
    assert_eq!(a["result"]["totalBudget"], "500");

    // Two requests in one write, and one split across two writes.
    c.send_raw(
        br#"{"jsonrpc":"2.0","id":8,"method":"budget_get","params":["b1"]}{"jsonrpc":"2.0","id":9,"method":"budget_get","params":["b1"]}
        {"jsonrpc":"2.0","id":10,"meth"#,
    )
    .await;
    assert_eq!(c.read().await.unwrap()["id"], 8);
    assert_eq!(c.read().await.unwrap()["id"], 9);
    c.send_raw(br#"od":"budget_get","params":["b1"]}"#).await;
    assert_eq!(c.read().await.unwrap()["id"], 10);

    // An empty batch is an invalid request.
    c.send_raw(b"[]").await;
    assert_eq!(error_code(&c.read().await.unwrap()), -32600);

    // A notification (no id) is executed and gets no answer: the next answer is the
    // next request's.
    c.send_raw(br#"{"jsonrpc":"2.0","method":"budget_allocate","params":["by-notification","42"]}"#)
        .await;
    c.send_raw(br#"{"jsonrpc":"2.0","id":11,"method":"budget_get","params":["by-notification"]}"#)
        .await;
    let a = c.read().await.unwrap();
    assert_eq!(
        (a["id"].clone(), a["result"]["totalBudget"].clone()),
        (json!(11), json!("42")),
        "{a}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_run_concurrently_and_answer_by_id() {
    let d = Daemon::start().await;
    d.call("budget_allocate", json!(["p1", "1000000"])).await;
    let mut c = d.client().await;
    // 48 durable records, then a check, in one write: the check, an in-memory read,
    // must not wait behind the records' commits (a connection has up to 64 under way).
    let mut bytes = Vec::new();
    for i in 1..=48 {
        let req = json!({"jsonrpc": "2.0", "id": i, "method": "budget_record",
            "params": ["p1", {"id": format!("e{i}"), "amount": "10"}]});
        bytes.extend_from_slice(format!("{req}\n").as_bytes());
    }
    let check = json!({"jsonrpc": "2.0", "id": 1000, "method": "budget_check", "params": ["p1", "1"]});
    bytes.extend_from_slice(format!("{check}\n").as_bytes());
    c.send_raw(&bytes).await;
    let first = c.read().await.unwrap();
    assert_eq!(first["id"], 1000, "the check waited behind the records: {first}");
    assert_eq!(result(&first), &json!({"ok": true}));
    let mut ids = Vec::new();
    for _ in 1..=48 {
        let a = c.read().await.unwrap();
        assert_eq!(result(&a)["alreadyRecorded"], false, "{a}");
        ids.push(a["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=48).collect::<Vec<_>>());

    // More than a connection runs at once: the rest wait their turn, none is lost.
    let bytes: String = (100..300)
        .map(|i| {
            let entry = json!({"id": format!("e{i}"), "amount": "1"});
            format!(
                "{}\n",
                json!({"jsonrpc": "2.0", "id": i, "method": "budget_record", "params": ["p1", entry]})
            )
        })
        .collect();
    c.send_raw(bytes.as_bytes()).await;
    let mut ids = Vec::new();
    for _ in 100..300 {
        ids.push(c.read().await.unwrap()["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (100..300).collect::<Vec<_>>());
    assert_eq!(d.engine.get("p1").unwrap().entry_count, 248);
    d.shutdown().await;
}

#[tokio::test]
async fn subscription_pushes_alerts() {
    let d = Daemon::start().await;
    d.call("budget_allocate", json!(["s1", "1000"])).await;
    let mut c = d.client().await;
    let sub = c.call("budget_subscribe", json!([])).await;
    let id = result(&sub).clone();
    d.call("budget_record", json!(["s1", {"amount": "600"}])).await;
    let n = c.read().await.unwrap();
    assert_eq!(n["jsonrpc"], "2.0");
    assert_eq!(n["method"], "budget_subscription");
    assert_eq!(n["params"]["subscription"], id);
    assert_eq!(
        n["params"]["result"],
        json!({"kind": "alert", "taskId": "s1", "threshold": 0.5})
    );
    let un = c.call("budget_unsubscribe", json!([id])).await;
    assert_eq!(result(&un), &json!(true));
    // Another connection cannot cancel it twice, nor a stranger's.
    let again = d.call("budget_unsubscribe", json!([id])).await;
    assert_eq!(result(&again), &json!(false));
    d.shutdown().await;
}

#[tokio::test]
async fn malformed_oversized_and_idle_clients_do_not_disturb_others() {
    let d = Daemon::start_with(|c| c.idle_timeout_secs = 1).await;
    d.call("budget_allocate", json!(["m1"])).await;
    // An idle client first: it must not block anybody.
    let mut idle = d.client().await;

    let mut bad = d.client().await;
    bad.send_raw(b"{\"jsonrpc\": \"2.0\", oops}\n").await;
    let a = bad.read().await.unwrap();
    assert_eq!(error_code(&a), -32700);
    assert!(bad.closed().await);

    let mut big = d.client().await;
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"budget_get\",\"params\":[\"{}\"]}}\n",
        "x".repeat(2 << 20)
    );
    let writer = tokio::spawn(async move {
        // The server stops reading after the limit; the rest of the write may fail.
        let _ = big.wr.write_all(line.as_bytes()).await;
        big
    });
    let mut big = writer.await.unwrap();
    let a = big.read().await.unwrap();
    assert_eq!(a["error"]["code"], -32600);
    assert_eq!(a["error"]["message"], "request too large");
    assert!(big.closed().await);

    // Others are served all along.
    let ok = d.call("budget_get", json!(["m1"])).await;
    assert_eq!(result(&ok)["taskId"], "m1");
    // The idle client is closed after the idle timeout.
    assert!(idle.closed().await);
    let ok = d.call("budget_get", json!(["m1"])).await;
    assert_eq!(result(&ok)["taskId"], "m1");
    d.shutdown().await;
}

#[tokio::test]
async fn socket_file_mode_stale_live_and_removal() {
    let d = Daemon::start().await;
    let mode = std::fs::metadata(&d.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A live socket is not taken over.
    let second = AdminServer::bind(
        AdminConfig {
            socket_path: d.path.clone(),
            ..AdminConfig::default()
        },
        AdminState::new(d.engine.clone(), OnChainTracker::new(), None),
    );
    assert!(matches!(second, Err(AdminError::InUse(_))), "{:?}", second.err());
    let path = d.path.clone();
    let engine = d.engine.clone();
    let db = d.shutdown().await;
    let dir = db.dir.path().to_owned();
    assert!(!path.exists(), "socket removed on exit");

    // A stale socket (nobody listening) is replaced; a custom mode is applied.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = AdminServer::bind(
        AdminConfig {
            socket_path: path.clone(),
            socket_mode: 0o660,
            ..AdminConfig::default()
        },
        AdminState::new(engine.clone(), OnChainTracker::new(), None),
    )
    .expect("stale socket replaced");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o660
    );
    drop(server);

    // A world-writable directory without the sticky bit is refused.
    let open_dir = dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = AdminServer::bind(
        AdminConfig {
            socket_path: open_dir.join("a.sock"),
            ..AdminConfig::default()
        },
        AdminState::new(engine, OnChainTracker::new(), None),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("chmod o-w"), "{err}");
}

#[tokio::test]
async fn allowlist_refuses_other_uids() {
    let me = std::fs::metadata("/proc/self").unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&me);
    let d = Daemon::start_with(|c| c.allowed_uids = vec![uid.wrapping_add(1)]).await;
    let mut c = d.client().await;
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"budget_list\"}")
        .await;
    assert_eq!(c.read().await, None, "refused connection is closed unanswered");
    d.shutdown().await;

    let d = Daemon::start_with(|c| c.allowed_uids = vec![uid]).await;
    assert!(result(&d.call("budget_list", json!([])).await)["items"].is_array());
    d.shutdown().await;
}

#[tokio::test]
async fn config_parses_with_defaults_and_refuses_unknown_keys() {
    let c: AdminConfig =
        serde_json::from_value(json!({"socket_path": "/tmp/x.sock", "socket_group": "wheel"})).unwrap();
    assert_eq!(c.socket_mode, 0o600);
    assert_eq!(c.max_connections, 256);
    assert_eq!(c.max_request_bytes, 1 << 20);
    assert_eq!(c.idle_timeout_secs, 300);
    assert!(serde_json::from_value::<AdminConfig>(json!({"socket_pth": "/x"})).is_err());
}

fn cast(path: &std::path::Path, args: &[&str]) -> Value {
    let out = std::process::Command::new(common::anvil::cast_bin())
        .arg("rpc")
        .args(args)
        .arg("--rpc-url")
        .arg(path)
        .output()
        .expect("run cast");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("cast printed {text}"))
    } else {
        json!({"castError": text})
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cast_rpc_works() {
    let d = Daemon::start().await;
    let path = d.path.clone();
    let out = tokio::task::spawn_blocking(move || {
        (
            cast(&path, &["budget_allocate", "task-1"]),
            cast(&path, &["budget_get", "task-1"]),
            cast(&path, &["budget_allocate", "t2", "1000"]),
            cast(&path, &["budget_check", "t2", "2000"]),
            cast(&path, &["budget_allocate", "42", "0x10"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0["taskId"], "task-1", "{out:?}");
    assert_eq!(out.1["totalBudget"], "10000000", "{out:?}");
    assert_eq!(out.2["totalBudget"], "1000", "{out:?}");
    assert!(
        out.3["castError"].as_str().unwrap().contains("budget exceeded"),
        "{out:?}"
    );
    assert_eq!(out.4["taskId"], "42", "{out:?}");
    assert_eq!(out.4["totalBudget"], "16", "{out:?}");
    d.shutdown().await;
}

/// Above `max_connections` a client waits in the backlog, not refused, and is served
/// as soon as another leaves.
#[tokio::test]
async fn connections_over_the_cap_wait_their_turn() {
    let d = Daemon::start_with(|c| c.max_connections = 1).await;
    let mut first = d.client().await;
    assert!(result(&first.call("budget_list", json!([])).await).is_object());
    let mut second = d.client().await;
    second
        .send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"budget_list\",\"params\":[]}\n")
        .await;
    assert!(
        timeout(Duration::from_millis(300), second.read()).await.is_err(),
        "served while the only slot was taken"
    );
    drop(first);
    let answer = second.read().await.expect("served once the first left");
    assert_eq!(answer["id"], 2);
    assert!(result(&answer).is_object());
}
