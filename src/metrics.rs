//! Prometheus metrics, and the HTTP endpoint that serves them with health checks.
//!
//! [`Metrics`] owns one [`Registry`]. Budget, session and limit gauges are not kept up
//! to date by the engine: each scrape resets them and reads them afresh from the
//! [`Engine`] (an in-memory read), so a closed budget leaves `/metrics` at the next
//! scrape and cardinality stays bounded by the live budgets. Chain metrics come from
//! the watcher's [`SyncStatus`]; its cumulative counts become counters by adding what
//! grew since the last look. Admin and alert metrics are pushed by their callers.
//!
//! Money is exported as `f64` in base units: exact up to 2^53, rounded beyond that.
//! Fine for dashboards and alerts; the admin socket is the exact source.
//!
//! [`serve`] answers `GET /metrics`, `GET /healthz` (the process is alive) and
//! `GET /readyz` (chain sync is within the confirmation depth), over HTTP/1.
//!
//! - `chain`: chain sync gauges and counters from [`SyncStatus`].
//! - `http`: [`serve`], [`readiness`] and [`MetricsState`].

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use num_traits::ToPrimitive;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use serde::{Deserialize, Serialize};

use crate::budget::onchain::u256_to_big;
use crate::budget::{BudgetStatus, Engine, TaskBudget};
use crate::chain::SyncStatus;

mod chain;
mod http;

use chain::ChainMetrics;
pub use http::{MetricsState, readiness, serve};

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Budgets read from the engine at a time while scraping.
const PAGE: usize = 1000;

/// `[metrics]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint; loopback by default.
    pub listen: SocketAddr,
    /// Serve metrics at all.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            enabled: true,
        }
    }
}

/// Per-task gauges, labelled `{task, unit}` (status: `{task, status}`).
struct BudgetGauges {
    total: GaugeVec,
    spent: GaugeVec,
    reserved: GaugeVec,
    remaining: GaugeVec,
    progress: GaugeVec,
    burn_rate: GaugeVec,
    spent_ratio: GaugeVec,
    status: GaugeVec,
}

/// budgetd's metrics. Share it in an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    budget: BudgetGauges,
    session_spent: GaugeVec,
    account_limit: GaugeVec,
    chain: OnceLock<ChainMetrics>,
    /// The last `SyncStatus` counted, to turn its totals into counter increments.
    /// A std mutex: nothing is awaited under it.
    last_sync: Mutex<SyncStatus>,
    admin_requests: IntCounterVec,
    admin_duration: HistogramVec,
    alerts: IntCounterVec,
    audit_drift: GaugeVec,
    /// Held from reset to gather, so two scrapes never see each other's half-filled vecs.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: C) -> C {
    // Names are constants checked by the unit tests: a failure here is a bug.
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering a metric: {e}"));
    c
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        reg,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn gauge(reg: &Registry, name: &str, help: &str) -> Gauge {
    register(reg, Gauge::new(name, help).expect("valid gauge"))
}

fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    register(reg, IntCounter::new(name, help).expect("valid counter"))
}

/// A money amount as a gauge value; rounded above 2^53.
fn money(v: &num_bigint::BigUint) -> f64 {
    v.to_f64().unwrap_or(f64::INFINITY)
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let tu = &["task", "unit"];
        let budget = BudgetGauges {
            total: gauge_vec(&r, "budgetd_budget_allocated", "Allocation, base units.", tu),
            spent: gauge_vec(&r, "budgetd_budget_spent", "Spent, base units.", tu),
            reserved: gauge_vec(&r, "budgetd_budget_reserved", "Held by live reservations.", tu),
            remaining: gauge_vec(&r, "budgetd_budget_remaining", "total - spent - reserved.", tu),
            progress: gauge_vec(
                &r,
                "budgetd_budget_progress",
                "Agent's progress estimate, 0..1.",
                tu,
            ),
            burn_rate: gauge_vec(&r, "budgetd_budget_burn_rate", "Base units spent per minute.", tu),
            spent_ratio: gauge_vec(&r, "budgetd_budget_spent_ratio", "spent / total.", tu),
            status: gauge_vec(
                &r,
                "budgetd_budget_status",
                "1 for the current status, 0 for the other live one.",
                &["task", "status"],
            ),
        };
        let admin_opts = HistogramOpts::new("budgetd_admin_request_duration_seconds", "Admin request time.");
        Self {
            session_spent: gauge_vec(
                &r,
                "budgetd_session_onchain_spent",
                "Confirmed on-chain spend per session, raw units.",
                &["account", "session_key"],
            ),
            account_limit: gauge_vec(
                &r,
                "budgetd_account_limit",
                "On-chain limit per account (0 = unlimited), raw units.",
                &["account", "kind"],
            ),
            admin_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "budgetd_admin_requests_total",
                        "Admin requests by method and code.",
                    ),
                    &["method", "code"],
                )
                .expect("valid counter"),
            ),
            admin_duration: register(
                &r,
                HistogramVec::new(admin_opts, &["method"]).expect("valid histogram"),
            ),
            alerts: register(
                &r,
                IntCounterVec::new(Opts::new("budgetd_alerts_total", "Alerts fired."), &["threshold"])
                    .expect("valid counter"),
            ),
            audit_drift: gauge_vec(
                &r,
                "budgetd_audit_drift",
                "On-chain minus posted spend found by the audit, raw units.",
                &["account", "session_key"],
            ),
            budget,
            chain: OnceLock::new(),
            last_sync: Mutex::new(SyncStatus::default()),
            scrape: Mutex::new(()),
            registry: r,
        }
    }

    /// The registry, for collectors registered elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts an admin request: its JSON-RPC method, result code (0 for success) and time.
    pub fn observe_admin(&self, method: &str, code: i32, elapsed: Duration) {
        self.admin_requests
            .with_label_values(&[method, &code.to_string()])
            .inc();
        self.admin_duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an alert that fired at `threshold` (a fraction of the total).
    pub fn alert(&self, threshold: f64) {
        self.alerts.with_label_values(&[&threshold.to_string()]).inc();
    }

    /// Sets the drift the audit found for a session.
    pub fn set_drift(&self, account: &str, session_key: &str, drift: f64) {
        self.audit_drift
            .with_label_values(&[account, session_key])
            .set(drift);
    }

    fn set_budget(&self, b: &TaskBudget, burn_rate: f64) {
        let g = &self.budget;
        let l = [b.task_id.as_str(), b.unit.as_str()];
        let total = money(&b.total_budget.0);
        let spent = money(&b.spent.0);
        g.total.with_label_values(&l).set(total);
        g.spent.with_label_values(&l).set(spent);
        g.reserved.with_label_values(&l).set(money(&b.reserved.0));
        g.remaining
            .with_label_values(&l)
            .set(b.remaining.0.to_f64().unwrap_or(f64::NAN));
        g.progress.with_label_values(&l).set(b.progress);
        g.burn_rate.with_label_values(&l).set(burn_rate);
        if total > 0.0 {
            g.spent_ratio.with_label_values(&l).set(spent / total);
        }
        for s in [BudgetStatus::Active, BudgetStatus::Exhausted] {
            let v = if b.status == s { 1.0 } else { 0.0 };
            g.status.with_label_values(&[&b.task_id, s.as_str()]).set(v);
        }
    }

    /// Rereads budgets, sessions and limits from the engine (live budgets only).
    fn refresh(&self, engine: &Engine) {
        let g = &self.budget;
        for v in [
            &g.total,
            &g.spent,
            &g.reserved,
            &g.remaining,
            &g.progress,
            &g.burn_rate,
        ] {
            v.reset();
        }
        g.spent_ratio.reset();
        g.status.reset();
        for status in [BudgetStatus::Active, BudgetStatus::Exhausted] {
            let mut after: Option<String> = None;
            loop {
                let page = engine.list(Some(status), after.as_deref(), PAGE);
                for b in &page.items {
                    let rate = engine.burn_rate(&b.task_id).map_or(0.0, |r| money(&r));
                    self.set_budget(b, rate);
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        self.session_spent.reset();
        for (session, confirmed, _unbound) in engine.session_totals() {
            let (account, key) = session.split_once(':').unwrap_or((&session, ""));
            self.session_spent
                .with_label_values(&[account, key])
                .set(money(&confirmed));
        }
        self.account_limit.reset();
        for l in engine.chain_limits() {
            let account = format!("{:#x}", l.account);
            for (kind, v) in [
                ("per_tx", l.per_tx_limit),
                ("daily", l.daily_limit),
                ("cumulative", l.cumulative_limit),
            ] {
                self.account_limit
                    .with_label_values(&[&account, kind])
                    .set(money(&u256_to_big(v)));
            }
        }
    }

    /// Refreshes from the engine (and the sync status, when there is a chain) and
    /// renders the text exposition format.
    ///
    /// # Errors
    /// An encoding error from `prometheus`.
    pub fn render(&self, engine: &Engine, sync: Option<&SyncStatus>) -> prometheus::Result<String> {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sync {
            self.observe_sync(s);
        }
        self.refresh(engine);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{EngineConfig, SpendEntry};

    async fn engine(dir: &tempfile::TempDir) -> Engine {
        let e = Engine::builder(dir.path().join("b.redb"))
            .config(EngineConfig {
                default_max: Some("10.00".into()),
                ..Default::default()
            })
            .open()
            .unwrap();
        e.allocate("live", None).await.unwrap();
        e.record("live", SpendEntry::new(2_500_000), None).await.unwrap();
        e.allocate("full", Some(100u32.into())).await.unwrap();
        e.record("full", SpendEntry::new(100), None).await.unwrap();
        e.allocate("gone", None).await.unwrap();
        e.close("gone").await.unwrap();
        e
    }

    #[tokio::test]
    async fn text_has_live_budgets_only() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(&dir).await;
        let m = Metrics::new();
        m.observe_admin("budget_get", 0, Duration::from_millis(3));
        m.alert(0.8);
        m.set_drift("0xa", "0xb", 1.0);
        let out = m.render(&e, None).unwrap();
        for want in [
            r#"budgetd_budget_allocated{task="live",unit="usdc"} 10000000"#,
            r#"budgetd_budget_spent{task="live",unit="usdc"} 2500000"#,
            r#"budgetd_budget_remaining{task="live",unit="usdc"} 7500000"#,
            r#"budgetd_budget_spent_ratio{task="live",unit="usdc"} 0.25"#,
            r#"budgetd_budget_status{status="active",task="live"} 1"#,
            r#"budgetd_budget_status{status="exhausted",task="full"} 1"#,
            r#"budgetd_budget_status{status="active",task="full"} 0"#,
            r#"budgetd_admin_requests_total{code="0",method="budget_get"} 1"#,
            r#"budgetd_admin_request_duration_seconds_count{method="budget_get"} 1"#,
            r#"budgetd_alerts_total{threshold="0.8"} 1"#,
            r#"budgetd_audit_drift{account="0xa",session_key="0xb"} 1"#,
            "# TYPE budgetd_budget_burn_rate gauge",
        ] {
            assert!(out.contains(want), "missing `{want}` in:\n{out}");
        }
        assert!(!out.contains(r#"task="gone""#), "closed budget exported:\n{out}");
        assert!(
            !out.contains("budgetd_chain_"),
            "no chain, no chain series:\n{out}"
        );
        e.close("live").await.unwrap();
        let out = m.render(&e, None).unwrap();
        assert!(
            !out.contains(r#"task="live""#),
            "a budget closed since the last scrape stays"
        );
    }

    #[test]
    fn config_defaults_to_loopback() {
        let c = MetricsConfig::default();
        assert_eq!(
            (c.listen.to_string().as_str(), c.enabled),
            ("127.0.0.1:9464", true)
        );
    }
}
