//! `budgetd dev`: the whole thing on a laptop in one command.
//!
//! Starts anvil (installed by `scripts/install-tools.sh`), deploys the test
//! SpendingHook, sets limits for a demo account, binds the demo session to a task,
//! sends a small spend every few seconds, and runs the daemon on a temporary data dir,
//! printing the socket, the metrics URL and a line per posted spend and alert.
//! Ctrl-C stops all of it, anvil included.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256, address};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use anyhow::{Context, bail};

alloy::sol!(
    #[sol(rpc)]
    #[allow(missing_docs)]
    TestSpendingHook,
    "abi/TestSpendingHook.abi.json"
);

/// Anvil's first unlocked account, which sends the demo's transactions.
pub const DEPLOYER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
/// The demo smart account.
pub const DEMO_ACCOUNT: Address = address!("000000000000000000000000000000000000dE00");
/// The demo session key.
pub const DEMO_SESSION: Address = address!("000000000000000000000000000000000000dE01");

/// A running anvil with the hook deployed.
pub struct DevChain {
    /// Kept to kill anvil on drop.
    _anvil: tokio::process::Child,
    /// Anvil's port.
    pub port: u16,
    /// The deployed hook.
    pub hook: Address,
    provider: DynProvider,
}

/// The anvil binary: `$BUDGETD_ANVIL`, else the one `scripts/install-tools.sh` puts in
/// `tools/` (running the script when it is missing), else `anvil` on the PATH.
fn anvil_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BUDGETD_ANVIL") {
        return Ok(p.into());
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let local = repo.join("tools/node_modules/.bin/anvil");
    if local.exists() {
        return Ok(local);
    }
    let script = repo.join("scripts/install-tools.sh");
    if script.exists() {
        eprintln!("installing anvil with {} ...", script.display());
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()?;
        if out.status.success() {
            return Ok(local);
        }
    }
    Ok(PathBuf::from("anvil"))
}

impl DevChain {
    /// Starts anvil on a free port and deploys the hook with demo limits.
    ///
    /// # Errors
    /// When anvil does not start or the deploy fails.
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = anvil_path()?;
        let anvil = tokio::process::Command::new(&bin)
            .args(["--port", &port.to_string(), "--silent"])
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start anvil ({}): run scripts/install-tools.sh",
                    bin.display()
                )
            })?;
        let url = format!("http://127.0.0.1:{port}");
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(url.parse()?)
            .erased();
        let mut tries = 0;
        while provider.get_chain_id().await.is_err() {
            tries += 1;
            if tries > 100 {
                bail!("anvil did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let code = alloy::primitives::hex::decode(include_str!("../abi/TestSpendingHook.bin").trim())?;
        let tx = TransactionRequest::default()
            .from(DEPLOYER)
            .with_deploy_code(code);
        let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
        let hook = receipt.contract_address.context("deploy gave no address")?;
        let chain = Self {
            _anvil: anvil,
            port,
            hook,
            provider,
        };
        let eth = U256::from(10u64).pow(U256::from(18u64));
        chain
            .send(
                TestSpendingHook::new(hook, &chain.provider)
                    .setLimits(
                        DEMO_ACCOUNT,
                        eth / U256::from(500u64),
                        eth / U256::from(20u64),
                        eth,
                    )
                    .into_transaction_request(),
            )
            .await?;
        Ok(chain)
    }

    /// The websocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    async fn send(&self, tx: TransactionRequest) -> anyhow::Result<alloy::rpc::types::TransactionReceipt> {
        let receipt = self
            .provider
            .send_transaction(tx.from(DEPLOYER))
            .await?
            .get_receipt()
            .await?;
        anyhow::ensure!(receipt.status(), "transaction reverted");
        Ok(receipt)
    }

    /// One demo spend of `wei` from the demo session; returns its block.
    ///
    /// # Errors
    /// When the transaction fails (e.g. over the demo limits).
    pub async fn spend(&self, wei: u64) -> anyhow::Result<u64> {
        let hook = TestSpendingHook::new(self.hook, &self.provider);
        let tx = hook
            .spend(DEMO_ACCOUNT, DEMO_SESSION, U256::from(wei))
            .into_transaction_request();
        let receipt = self.send(tx).await?;
        receipt.block_number.context("no block")
    }
}

/// Runs the demo until Ctrl-C.
///
/// # Errors
/// When anvil or the daemon cannot start.
pub async fn dev() -> anyhow::Result<()> {
    use crate::budget::EngineConfig;
    use crate::budget::amount::format_decimal;
    use crate::chain::{BindingConfig, ChainConfig, ValuationConfig};
    use crate::config::Config;
    use num_bigint::BigInt;

    let chain = DevChain::start().await?;
    let dir = std::env::temp_dir().join(format!("budgetd-dev-{}", std::process::id()));
    let mut cfg = Config {
        data_dir: dir.clone(),
        budget: EngineConfig {
            default_max: Some("10.00".into()),
            ..EngineConfig::default()
        },
        chain: Some(ChainConfig {
            rpc_url: chain.ws_url(),
            hook_addresses: vec![chain.hook],
            valuation: ValuationConfig::Fixed {
                unit: "usdc".into(),
                rate: "3000".into(),
            },
            bindings: vec![BindingConfig {
                account: DEMO_ACCOUNT,
                session_key: DEMO_SESSION,
                task_id: "demo-task".into(),
                peer_did: "did:example:demo-peer".into(),
            }],
            poll_interval_ms: 500,
            ..ChainConfig::default()
        }),
        ..Config::default()
    };
    cfg.admin.socket_path = dir.join("admin.sock");
    if std::net::TcpListener::bind(cfg.metrics.listen).is_err() {
        cfg.metrics.listen = "127.0.0.1:0".parse()?; // 9464 is taken: any free port
    }
    cfg.validate()?;
    let mut daemon = crate::daemon::Daemon::start(cfg).await?;
    let metrics = daemon
        .metrics_addr
        .map_or("(disabled)".into(), |a| format!("http://{a}/metrics"));
    println!(
        "budgetd dev: anvil on port {}, SpendingHook at {:#x}",
        chain.port, chain.hook
    );
    println!("  admin socket  {}", daemon.socket.display());
    println!("  metrics       {metrics}");
    println!(
        "  try           budgetctl --socket {} --usdc budget get demo-task",
        daemon.socket.display()
    );
    println!(
        "                cast rpc budget_get demo-task --rpc-url {}",
        daemon.socket.display()
    );
    println!(
        "demo session {DEMO_ACCOUNT:#x}:{DEMO_SESSION:#x} -> task demo-task (10.00 usdc, 3000 usdc/eth); Ctrl-C stops"
    );

    let engine = daemon.engine.clone();
    let mut notes = engine.subscribe();
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    let outcome = loop {
        tokio::select! {
            () = crate::daemon::shutdown_signal() => break Ok(()),
            r = daemon.failed() => break r,
            _ = tick.tick() => {
                let wei = 200_000_000_000_000 + rand::random::<u64>() % 700_000_000_000_000;
                if let Err(e) = chain.spend(wei).await {
                    println!("spend refused on chain: {e:#}");
                }
            }
            n = notes.recv() => if let Ok(n) = n {
                println!("{}", serde_json::to_string(&n).unwrap_or_default());
            },
        }
        if let Ok(page) = engine.entries("demo-task", seen, 100).await {
            for e in page.items {
                let b = engine.get("demo-task")?;
                let usdc = |v: &num_bigint::BigUint| format_decimal(&BigInt::from(v.clone()), 6);
                println!(
                    "spend  demo-task  +{} usdc  ({} wei, {})  spent {} of {} usdc, {:?}",
                    usdc(&e.amount.0),
                    e.evidence
                        .as_ref()
                        .map_or("?".into(), |v| v.raw_amount.to_string()),
                    e.reason,
                    usdc(&b.spent.0),
                    usdc(&b.total_budget.0),
                    b.status
                );
                seen = Some(seen.map_or(0, |s: u64| s + 1));
            }
        }
    };
    daemon.stop().await?;
    drop(chain);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}
