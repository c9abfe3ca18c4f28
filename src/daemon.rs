//! `budgetd run`: the engine, the watcher, the admin socket and the metrics listener
//! under one tokio runtime, with one shutdown signal passed to each.
//!
//! Start-up opens things in an order where a failure leaves nothing half-done:
//! config (already validated), database, node checks, metrics listener, admin socket,
//! then `READY=1` to systemd. SIGINT/SIGTERM: stop taking requests, let the writer
//! finish the open transaction, remove the socket file, exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{AdminServer, AdminState};
use crate::budget::Engine;
use crate::chain::{SyncStatus, Watcher};
use crate::config::{Config, LogFormat};
use crate::metrics::{self, Metrics, MetricsState};
use crate::tracker::OnChainTracker;

/// A running daemon.
pub struct Daemon {
    /// The engine (for dev mode's printing and for tests).
    pub engine: Engine,
    /// The admin socket.
    pub socket: PathBuf,
    /// Where metrics are served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Sync status, when a chain is configured.
    pub sync: Option<watch::Receiver<SyncStatus>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// A future that completes when `stop` turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Daemon {
    /// Opens everything and starts the tasks.
    ///
    /// # Errors
    /// Anything that stops start-up, with context.
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
        let metrics = Arc::new(Metrics::new());
        let on_alert = metrics.clone();
        let (path, budget) = (cfg.db_path(), cfg.budget.clone());
        let engine = tokio::task::spawn_blocking(move || {
            Engine::builder(&path)
                .config(budget)
                .on_alert(move |task, threshold| {
                    on_alert.alert(threshold);
                    tracing::warn!(task, threshold, "budget alert");
                })
                .open()
        })
        .await?
        .context("cannot open the budget store")?;
        let tracker = OnChainTracker::new();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let mut sync = None;
        if let Some(chain) = cfg.chain.clone() {
            let watcher = Watcher::start(chain, engine.clone(), tracker.clone()).await?;
            sync = Some(watcher.status());
            let done = stopped(stop_rx.clone());
            tasks.spawn(async move { watcher.run(done).await.context("chain sync stopped") });
        }

        let mut metrics_addr = None;
        if cfg.metrics.enabled {
            let listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
                .await
                .with_context(|| format!("cannot listen for metrics on {}", cfg.metrics.listen))?;
            metrics_addr = Some(listener.local_addr()?);
            let state = MetricsState {
                metrics: metrics.clone(),
                engine: engine.clone(),
                sync: sync.clone(),
            };
            let done = stopped(stop_rx.clone());
            tasks.spawn(async move {
                metrics::serve(listener, state, done).await;
                Ok(())
            });
        }

        let socket = cfg.admin.socket_path.clone();
        let observe = metrics.clone();
        let mut state = AdminState::new(engine.clone(), tracker.clone(), sync.clone())
            .on_request(move |method, code, elapsed| observe.observe_admin(method, code, elapsed));
        if let Some(chain) = &cfg.chain {
            state = state.with_audit(chain.rpc_url.clone(), chain.hook_addresses.clone());
            if chain.audit_interval_secs > 0 {
                let (chain, engine, metrics) = (chain.clone(), engine.clone(), metrics.clone());
                let done = stopped(stop_rx.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        () = done => {}
                        () = audit_every(chain, engine, metrics) => {}
                    }
                    Ok(())
                });
            }
        }
        let server = AdminServer::bind(cfg.admin.clone(), state).context("cannot open the admin socket")?;
        let done = stopped(stop_rx.clone());
        tasks.spawn(async move {
            server.run(done).await;
            Ok(())
        });

        tracing::info!(socket = %socket.display(), metrics = ?metrics_addr, db = %cfg.db_path().display(), "budgetd ready");
        sd_notify("READY=1");
        Ok(Self {
            engine,
            socket,
            metrics_addr,
            sync,
            stop,
            tasks,
        })
    }

    /// Waits until a task fails (the error) or all end.
    pub async fn failed(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r??;
        }
        Ok(())
    }

    /// Stops taking requests, waits for the tasks, finishes the open write.
    ///
    /// # Errors
    /// A task's failure.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        sd_notify("STOPPING=1");
        let _ = self.stop.send(true);
        let mut result = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                result = Err(e);
            }
        }
        self.engine.shutdown().await;
        result
    }
}

/// Audits the books against the contract every `audit_interval_secs`, exporting
/// `budgetd_audit_drift` and logging an error on drift.
async fn audit_every(chain: crate::chain::ChainConfig, engine: Engine, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(chain.audit_interval_secs));
    tick.tick().await; // the first tick is immediate; let sync start first
    loop {
        tick.tick().await;
        match crate::chain::audit::audit(&chain.rpc_url, &chain.hook_addresses, &engine).await {
            Ok(report) => {
                for s in &report.sessions {
                    let drift = s.drift.parse::<f64>().unwrap_or(f64::NAN);
                    metrics.set_drift(
                        &format!("{:#x}", s.account),
                        &format!("{:#x}", s.session_key),
                        drift,
                    );
                    if s.drift != "0" {
                        tracing::error!(account = %s.account, session_key = %s.session_key, drift = %s.drift,
                            chain = %s.chain, confirmed = %s.confirmed, block = report.block,
                            "audit: the books differ from the contract");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "audit could not run"),
        }
    }
}

/// `budgetd run`: runs until SIGINT or SIGTERM.
///
/// # Errors
/// What stopped start-up, or a fatal failure while running.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(cfg).await?;
    let outcome = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = daemon.failed() => r,
    };
    daemon.stop().await.and(outcome)
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Sets up tracing: `RUST_LOG` (default `info`), text or JSON lines on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Tells systemd (Type=notify) where we are; does nothing outside systemd.
fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
