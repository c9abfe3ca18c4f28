//! A watcher running against a test node, and waiting for it.

use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::Provider;
use budgetd::budget::{Engine, EngineConfig};
use budgetd::chain::{ChainConfig, SyncError, SyncStatus, Watcher};
use budgetd::tracker::OnChainTracker;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::anvil::Anvil;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        default_max: Some("1000000000000".into()),
        ..Default::default()
    }
}

pub fn chain_config(url: &str, hook: Address) -> ChainConfig {
    ChainConfig {
        rpc_url: url.to_owned(),
        hook_addresses: vec![hook],
        poll_interval_ms: 50,
        ..ChainConfig::default()
    }
}

/// A watcher running in the background on its own engine handle.
pub struct Running {
    task: JoinHandle<Result<(), SyncError>>,
    stop: Option<oneshot::Sender<()>>,
    status: watch::Receiver<SyncStatus>,
}

impl Running {
    pub async fn start(engine: &Engine, cfg: ChainConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let watcher = Watcher::start(cfg, engine.clone(), OnChainTracker::new())
            .await
            .expect("watcher starts");
        let status = watcher.status();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(watcher.run(async move {
            let _ = stopped.await;
        }));
        Self {
            task,
            stop: Some(stop),
            status,
        }
    }

    pub async fn stop(mut self) -> SyncStatus {
        let _ = self.stop.take().unwrap().send(());
        self.task
            .await
            .unwrap()
            .expect("watcher ran without a fatal error");
        self.status.borrow().clone()
    }

    pub fn status(&self) -> SyncStatus {
        self.status.borrow().clone()
    }
}

/// Waits until the cursor is at the node's head (confirmations 0) with its hash.
pub async fn wait_synced(engine: &Engine, anvil: &Anvil, confirmations: u64) {
    let provider = anvil.provider().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let head = provider.get_block_number().await.unwrap();
        let target = head.saturating_sub(confirmations);
        if let Some(c) = engine.chain_cursor()
            && c.number == target
        {
            let block = provider
                .get_block_by_number(target.into())
                .await
                .unwrap()
                .unwrap();
            if block.header.hash == c.hash {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not synced to {target} within {WAIT:?}: {:?}",
            engine.chain_cursor()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
