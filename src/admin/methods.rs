//! The admin API as a jsonrpsee [`RpcModule`]: one registration per method, positional
//! params, engine errors through [`super::codes::engine_error`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{PendingSubscriptionSink, RpcModule};
use num_bigint::BigUint;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AdminState;
use super::codes::{engine_error, invalid_params};
use crate::budget::onchain::session_id;
use crate::budget::{Amount, BudgetStatus, SpendEntry};

/// Default and largest page sizes of `budget_list` and `budget_entries`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// A task id; `cast rpc` sends an argument that parses as JSON (`42`) as a number.
struct TaskId(String);

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(TaskId(s)),
            Value::Number(n) if n.is_u64() => Ok(TaskId(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "task id must be a string, got {other}"
            ))),
        }
    }
}

fn limit(l: Option<usize>) -> RpcResult<usize> {
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(invalid_params("limit must be at least 1")),
        n => Ok(n.min(MAX_LIMIT)),
    }
}

fn unit_check(state: &AdminState, task: &str, unit: Option<&str>) -> RpcResult<()> {
    match unit {
        Some(u) => state.engine.require_unit(task, u).map_err(engine_error),
        None => Ok(()),
    }
}

/// Builds the module answering every admin method.
pub fn module(state: Arc<AdminState>) -> RpcModule<AdminState> {
    let mut m = RpcModule::from_arc(state);
    register(&mut m).expect("admin method names are unique");
    m
}

fn register(m: &mut RpcModule<AdminState>) -> Result<(), jsonrpsee::core::RegisterMethodError> {
    m.register_async_method("budget_allocate", |p, s, _| async move {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let total: Option<Amount> = seq.optional_next()?;
        let unit: Option<String> = seq.optional_next()?;
        s.engine
            .allocate_in(&task.0, total.map(BigUint::from), unit.as_deref())
            .await
            .map_err(engine_error)
    })?;
    m.register_method("budget_check", |p, s, _| -> RpcResult<Value> {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let amount: Amount = seq.next()?;
        let peer: Option<String> = seq.optional_next()?;
        let unit: Option<String> = seq.optional_next()?;
        unit_check(s, &task.0, unit.as_deref())?;
        s.engine
            .check(&task.0, &amount.0, peer.as_deref())
            .map_err(engine_error)?;
        Ok(json!({ "ok": true }))
    })?;
    m.register_async_method("budget_reserve", |p, s, _| async move {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let amount: Amount = seq.next()?;
        let ttl: Option<u64> = seq.optional_next()?;
        let unit: Option<String> = seq.optional_next()?;
        unit_check(&s, &task.0, unit.as_deref())?;
        s.engine
            .reserve(&task.0, amount.0, ttl.map(Duration::from_secs))
            .await
            .map_err(engine_error)
    })?;
    m.register_async_method("budget_release", |p, s, _| async move {
        let id: String = p.one()?;
        let released = s.engine.release(&id).await.map_err(engine_error)?;
        RpcResult::Ok(json!({ "released": released }))
    })?;
    m.register_async_method("budget_record", |p, s, _| async move {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let entry: EntryParam = seq.next()?;
        let reservation: Option<String> = seq.optional_next()?;
        s.engine
            .record(&task.0, entry.into_entry(), reservation.as_deref())
            .await
            .map_err(engine_error)
    })?;
    m.register_async_method("budget_setProgress", |p, s, _| async move {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let progress: f64 = seq.next()?;
        s.engine
            .set_progress(&task.0, progress)
            .await
            .map_err(engine_error)
    })?;
    m.register_method("budget_burnRate", |p, s, _| -> RpcResult<Value> {
        let task: TaskId = p.one()?;
        let rate = s.engine.burn_rate(&task.0).map_err(engine_error)?;
        let budget = s.engine.get(&task.0).map_err(engine_error)?;
        Ok(json!({ "taskId": task.0, "burnRate": rate.to_string(), "unit": budget.unit }))
    })?;
    m.register_async_method("budget_close", |p, s, _| async move {
        let task: TaskId = p.one()?;
        s.engine.close(&task.0).await.map_err(engine_error)
    })?;
    m.register_method("budget_get", |p, s, _| {
        let task: TaskId = p.one()?;
        s.engine.get(&task.0).map_err(engine_error)
    })?;
    m.register_method("budget_list", |p, s, _| -> RpcResult<Value> {
        let mut seq = p.sequence();
        let status: Option<BudgetStatus> = seq.optional_next()?;
        let after: Option<String> = seq.optional_next()?;
        let limit = limit(seq.optional_next()?)?;
        let page = s.engine.list(status, after.as_deref(), limit);
        Ok(json!({ "items": page.items, "next": page.next }))
    })?;
    m.register_async_method("budget_entries", |p, s, _| async move {
        let mut seq = p.sequence();
        let task: TaskId = seq.next()?;
        let after: Option<u64> = seq.optional_next()?;
        let limit = limit(seq.optional_next()?)?;
        let page = s
            .engine
            .entries(&task.0, after, limit)
            .await
            .map_err(engine_error)?;
        RpcResult::Ok(json!({ "items": page.items, "next": page.next }))
    })?;
    register_chain(m)?;
    m.register_subscription(
        "budget_subscribe",
        "budget_subscription",
        "budget_unsubscribe",
        subscribe,
    )?;
    Ok(())
}

fn register_chain(m: &mut RpcModule<AdminState>) -> Result<(), jsonrpsee::core::RegisterMethodError> {
    m.register_method("tracker_getSpent", |p, s, _| -> RpcResult<Value> {
        let mut seq = p.sequence();
        let account: Address = seq.next()?;
        let key: Address = seq.next()?;
        let session = session_id(account, key);
        let pending = s.tracker.get_spent(&session);
        let (confirmed, unbound) = s
            .engine
            .session_totals()
            .into_iter()
            .find(|(id, _, _)| *id == session)
            .map(|(_, t, u)| (t, u))
            .unwrap_or_default();
        Ok(json!({
            "session": session,
            "pending": pending.to_string(),
            "confirmed": confirmed.to_string(),
            "unbound": unbound.to_string(),
        }))
    })?;
    m.register_method("tracker_sessions", |_p, s, _| -> RpcResult<Value> {
        let mut rows: BTreeMap<String, [BigUint; 3]> = BTreeMap::new();
        for (id, total, unbound) in s.engine.session_totals() {
            let row = rows.entry(id).or_default();
            row[0] = total;
            row[1] = unbound;
        }
        for (id, pending) in s.tracker.sessions() {
            rows.entry(id).or_default()[2] = pending;
        }
        let bindings: BTreeMap<_, _> = s.engine.bindings().into_iter().collect();
        let out: Vec<Value> = rows
            .into_iter()
            .map(|(id, [confirmed, unbound, pending])| {
                json!({
                    "session": id,
                    "confirmed": confirmed.to_string(),
                    "unbound": unbound.to_string(),
                    "pending": pending.to_string(),
                    "taskId": bindings.get(&id).map(|b| b.task_id.clone()),
                })
            })
            .collect();
        Ok(Value::Array(out))
    })?;
    m.register_async_method("session_bind", |p, s, _| async move {
        let mut seq = p.sequence();
        let account: Address = seq.next()?;
        let key: Address = seq.next()?;
        let task: TaskId = seq.next()?;
        let peer: Option<String> = seq.optional_next()?;
        let posted = s
            .engine
            .bind_session(account, key, &task.0, peer.as_deref().unwrap_or(""))
            .await
            .map_err(engine_error)?;
        RpcResult::Ok(json!({ "posted": posted }))
    })?;
    m.register_async_method("session_unbind", |p, s, _| async move {
        let mut seq = p.sequence();
        let account: Address = seq.next()?;
        let key: Address = seq.next()?;
        let unbound = s
            .engine
            .unbind_session(account, key)
            .await
            .map_err(engine_error)?;
        RpcResult::Ok(json!({ "unbound": unbound }))
    })?;
    m.register_method("chain_limits", |p, s, _| -> RpcResult<Value> {
        let account: Option<Address> = p.sequence().optional_next()?;
        let out: Vec<Value> = s
            .engine
            .chain_limits()
            .into_iter()
            .filter(|l| account.is_none_or(|a| a == l.account))
            .map(|l| {
                json!({
                    "account": l.account,
                    "perTxLimit": l.per_tx_limit.to_string(),
                    "dailyLimit": l.daily_limit.to_string(),
                    "cumulativeLimit": l.cumulative_limit.to_string(),
                    "block": l.block,
                    "logIndex": l.log_index,
                })
            })
            .collect();
        Ok(Value::Array(out))
    })?;
    m.register_async_method("chain_audit", |_p, s, _| async move {
        let kind = crate::budget::ErrorKind::Chain;
        let fail =
            |msg: String| ErrorObjectOwned::owned(kind.code(), msg, Some(json!({ "kind": kind.name() })));
        let Some((url, hooks)) = &s.audit else {
            return Err(fail("no chain configured: nothing to audit".into()));
        };
        let report = crate::chain::audit::audit(url, hooks, &s.engine)
            .await
            .map_err(fail)?;
        RpcResult::Ok(serde_json::to_value(report).unwrap_or_default())
    })?;
    m.register_method("sync_status", |_p, s, _| -> RpcResult<Value> {
        let Some(rx) = &s.sync else {
            return Ok(json!({ "enabled": false }));
        };
        let status = rx.borrow().clone();
        let lag = status.head.zip(status.synced).map(|(h, s)| h.saturating_sub(s));
        let mut v = serde_json::to_value(&status).unwrap_or_default();
        if let Value::Object(o) = &mut v {
            o.insert("enabled".into(), true.into());
            o.insert("lag".into(), json!(lag));
        }
        Ok(v)
    })?;
    Ok(())
}

/// Pushes every engine notification until the client unsubscribes or goes away.
async fn subscribe(
    _p: Params<'static>,
    pending: PendingSubscriptionSink,
    s: Arc<AdminState>,
    _ext: jsonrpsee::Extensions,
) -> SubscriptionResult {
    // Subscribe before answering, so nothing after the answer is missed.
    let mut rx = s.engine.subscribe();
    let sink = pending.accept().await?;
    loop {
        tokio::select! {
            _ = sink.closed() => break,
            n = rx.recv() => match n {
                Ok(n) => {
                    let msg = serde_json::value::to_raw_value(&n)?;
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(k)) => {
                    tracing::warn!(missed = k, "admin subscriber too slow: notifications dropped");
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    Ok(())
}

/// `budget_record`'s entry: the seed's fields; `onchain` and `evidence` are not the
/// caller's to set.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntryParam {
    #[serde(default)]
    id: String,
    amount: Amount,
    #[serde(default)]
    peer_did: String,
    #[serde(default)]
    tool_name: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    unit: Option<String>,
}

impl EntryParam {
    fn into_entry(self) -> SpendEntry {
        let mut e = SpendEntry::new(self.amount).with_id(self.id);
        e.peer_did = self.peer_did;
        e.tool_name = self.tool_name;
        e.reason = self.reason;
        e.timestamp = self.timestamp;
        e.unit = self.unit;
        e
    }
}
