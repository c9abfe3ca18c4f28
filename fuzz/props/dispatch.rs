//! Admin requests through the real method table: whatever the request, no panic, and
//! the answer is JSON-RPC 2.0 with the request's id and exactly one of result/error.

use std::sync::Arc;

use budgetd::admin::AdminState;
use budgetd::admin::methods::module;
use budgetd::budget::{Engine, EngineConfig};
use budgetd::tracker::OnChainTracker;
use jsonrpsee::RpcModule;
use serde_json::{Value, json};

/// Every admin method, and two that do not exist.
pub const METHODS: [&str; 24] = [
    "budget_allocate",
    "budget_check",
    "budget_reserve",
    "budget_release",
    "budget_record",
    "budget_setProgress",
    "budget_burnRate",
    "budget_close",
    "budget_get",
    "budget_list",
    "budget_entries",
    "tracker_getSpent",
    "tracker_sessions",
    "session_bind",
    "session_unbind",
    "chain_limits",
    "sync_status",
    "chain_audit",
    "budget_subscribe",
    "budget_unsubscribe",
    "rpc_methods",
    "budget_",
    "",
    "eth_chainId",
];

/// Units the engine knows, one it does not, and one in the wrong case.
pub const UNITS: [&str; 4] = ["usdc", "wei", "eth", "USDC"];

/// Budget statuses as the wire spells them, and one that is not.
pub const STATUSES: [&str; 4] = ["active", "exhausted", "closed", "open"];

/// Values for each kind of param a method takes; [`typed_params`] lays them out in
/// the order a method reads them.
#[derive(Debug, Clone)]
pub struct Args {
    pub task: Value,
    pub amount: Value,
    pub unit: Value,
    pub account: Value,
    pub key: Value,
    pub entry: Value,
    pub float: Value,
    pub number: Value,
    pub status: Value,
    pub text: Value,
    /// How many of the method's optional params to send.
    pub optional: usize,
}

/// `method`'s positional params from `a`: the required ones, then `a.optional` of the
/// optional ones. Unknown methods get none.
pub fn typed_params(method: &str, a: &Args) -> Value {
    let (required, optional): (Vec<&Value>, Vec<&Value>) = match method {
        "budget_allocate" => (vec![&a.task], vec![&a.amount, &a.unit]),
        "budget_check" => (vec![&a.task, &a.amount], vec![&a.text, &a.unit]),
        "budget_reserve" => (vec![&a.task, &a.amount], vec![&a.number, &a.unit]),
        "budget_release" => (vec![&a.text], vec![]),
        "budget_record" => (vec![&a.task, &a.entry], vec![&a.text]),
        "budget_setProgress" => (vec![&a.task, &a.float], vec![]),
        "budget_burnRate" | "budget_close" | "budget_get" => (vec![&a.task], vec![]),
        "budget_list" => (vec![], vec![&a.status, &a.text, &a.number]),
        "budget_entries" => (vec![&a.task], vec![&a.number, &a.number]),
        "tracker_getSpent" | "session_unbind" => (vec![&a.account, &a.key], vec![]),
        "session_bind" => (vec![&a.account, &a.key, &a.task], vec![&a.text]),
        "chain_limits" => (vec![], vec![&a.account]),
        _ => (vec![], vec![]),
    };
    let n = a.optional.min(optional.len());
    required
        .into_iter()
        .chain(optional.into_iter().take(n))
        .cloned()
        .collect()
}

/// The admin method table over a fresh engine (`default_max` 10 USDC) in a temporary
/// redb file, and a runtime to drive it.
pub struct Dispatcher {
    rt: tokio::runtime::Runtime,
    module: RpcModule<AdminState>,
    _dir: tempfile::TempDir,
}

impl Dispatcher {
    /// Opens the engine; the file lives in `/dev/shm` where there is one, so that
    /// fsync is cheap.
    pub fn new() -> Self {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let engine = Engine::builder(dir.path().join("budgets.redb"))
            .config(EngineConfig {
                default_max: Some("10.00".into()),
                ..Default::default()
            })
            .open()
            .expect("open engine");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = AdminState::new(engine, OnChainTracker::new(), None);
        Self {
            rt,
            module: module(Arc::new(state)),
            _dir: dir,
        }
    }

    /// Runs `text` through the method table and checks the answer; `None` when it is
    /// not a request at all (the server answers those itself).
    pub fn call(&self, text: &str) -> Option<Value> {
        let (answer, _notifications) = self.rt.block_on(self.module.raw_json_request(text, 16)).ok()?;
        Some(check_answer(text, answer.get()))
    }
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

/// `answer` is a JSON-RPC 2.0 response to `request`: `jsonrpc` "2.0", the request's
/// id, exactly one of `result` and `error`, and an error with a code and a message.
pub fn check_answer(request: &str, answer: &str) -> Value {
    let req: Value = serde_json::from_str(request).expect("a request is JSON");
    let ans: Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("answer to {request} is not JSON ({e}): {answer}"));
    let obj = ans
        .as_object()
        .unwrap_or_else(|| panic!("answer to {request} is not an object: {answer}"));
    assert_eq!(obj.get("jsonrpc"), Some(&json!("2.0")), "{request} -> {answer}");
    let id = req.get("id").unwrap_or(&Value::Null);
    assert_eq!(obj.get("id"), Some(id), "{request} -> {answer}");
    match (obj.get("result"), obj.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            assert!(e["code"].is_i64(), "{request} -> {answer}: no error code");
            assert!(
                e["message"].is_string(),
                "{request} -> {answer}: no error message"
            );
        }
        _ => panic!("{request} -> {answer}: not exactly one of result and error"),
    }
    assert!(
        obj.keys()
            .all(|k| ["jsonrpc", "id", "result", "error"].contains(&k.as_str())),
        "{request} -> {answer}: stray member"
    );
    ans
}
