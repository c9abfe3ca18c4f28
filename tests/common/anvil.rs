//! A real anvil node for integration tests, plus a handle on a deployed `TestSpendingHook`.
//!
//! [`Anvil::start`] runs the pinned anvil binary (installed by `scripts/install-tools.sh`) on a free
//! port with `--dump-state`, so [`Anvil::stop`] (SIGTERM, which makes anvil write its state) and
//! [`Anvil::restart`] bring the same chain back on the same port. Dropping an `Anvil` kills it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, TxHash, U256, address};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol;

sol!(
    #[sol(rpc)]
    TestSpendingHook,
    "abi/TestSpendingHook.abi.json"
);

/// The first default anvil account (unlocked: `eth_sendTransaction` needs no key).
pub const DEPLOYER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the pinned anvil binary; runs `scripts/install-tools.sh` once per test process.
pub fn anvil_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/install-tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-tools.sh");
        assert!(
            out.status.success(),
            "scripts/install-tools.sh failed: {}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("install-tools.sh printed no anvil path")
                .trim(),
        )
    })
    .clone()
}

/// A running (or stopped, between [`Anvil::stop`] and [`Anvil::restart`]) anvil process.
pub struct Anvil {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Anvil {
    /// Starts anvil with automine on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts anvil with extra flags, e.g. `&["--block-time", "1"]` or `&["--no-mining"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut anvil = Self {
            child: None,
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        anvil.spawn(false);
        anvil
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn stderr_file(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn spawn(&mut self, load_state: bool) {
        let state = self.state_file();
        let mut cmd = Command::new(anvil_bin());
        cmd.args(["--port", &self.port.to_string(), "--silent", "--dump-state"])
            .arg(&state);
        if load_state {
            cmd.arg("--load-state").arg(&state);
        }
        let stderr = std::fs::File::create(self.stderr_file()).expect("anvil stderr file");
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn anvil");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while rpc(self.port, "eth_chainId").is_none() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.stderr_file()).unwrap_or_default();
                panic!(
                    "anvil on port {} never answered eth_chainId (exit: {exited:?}); stderr:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops anvil with SIGTERM (anvil 1.7.1 writes its `--dump-state` file on SIGTERM) and waits.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM anvil failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait for anvil").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("anvil ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.state_file().exists(),
            "anvil exited without writing its state file"
        );
    }

    /// Stops anvil (if running) and starts it again on the same port from the dumped state.
    /// Panics unless the block number survives.
    pub fn restart(&mut self) {
        let before = self
            .child
            .as_ref()
            .map(|_| rpc(self.port, "eth_blockNumber").expect("block number"));
        self.stop();
        self.spawn(true);
        let after = rpc(self.port, "eth_blockNumber").expect("block number");
        if let Some(before) = before {
            assert_eq!(before, after, "block number did not survive the restart");
        }
    }

    /// An HTTP provider (a fresh one: safe across restarts). No fillers: anvil signs for its
    /// unlocked accounts and fills nonce and gas itself, which stays right across
    /// `evm_revert` and `anvil_reorg` (a client-side nonce cache does not).
    pub async fn provider(&self) -> DynProvider {
        ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(self.http_url().parse().expect("url"))
            .erased()
    }

    pub async fn block_number(&self) -> u64 {
        self.provider()
            .await
            .get_block_number()
            .await
            .expect("eth_blockNumber")
    }

    /// Mines `n` blocks now (`anvil_mine`), whatever the mining mode.
    pub async fn mine(&self, n: u64) {
        self.provider()
            .await
            .anvil_mine(Some(n), None)
            .await
            .expect("anvil_mine");
    }

    pub async fn set_automine(&self, on: bool) {
        self.provider()
            .await
            .anvil_set_auto_mine(on)
            .await
            .expect("anvil_setAutomine");
    }

    /// `evm_snapshot`: an id for [`Anvil::revert`].
    pub async fn snapshot(&self) -> U256 {
        self.provider()
            .await
            .anvil_snapshot()
            .await
            .expect("evm_snapshot")
    }

    /// `evm_revert`: back to the snapshot (which is consumed); true if it existed.
    pub async fn revert(&self, id: U256) -> bool {
        self.provider().await.anvil_revert(id).await.expect("evm_revert")
    }

    /// `anvil_reorg(depth, [[txRequest, blockOffset], ...])`: replaces the last `depth` blocks with
    /// `depth` new ones holding `txs` (a JSON array of `[txRequest, offset]` pairs; `json!([])` for none).
    /// `hook.spend_tx(..)` serializes straight into a pair: `json!([[hook.spend_tx(..), 0]])`.
    pub async fn reorg(&self, depth: u64, txs: serde_json::Value) {
        let provider = self.provider().await;
        let _: serde_json::Value = provider
            .raw_request("anvil_reorg".into(), (depth, txs))
            .await
            .expect("anvil_reorg");
    }

    /// Moves the next block's time forward (evm_increaseTime).
    pub async fn increase_time(&self, secs: u64) {
        let provider = self.provider().await;
        let _: serde_json::Value = provider
            .raw_request("evm_increaseTime".into(), (secs,))
            .await
            .expect("evm_increaseTime");
    }
}

alloy::sol!(
    #[sol(rpc)]
    MockAggregator,
    "abi/MockAggregator.abi.json"
);

/// A deployed `MockAggregator` (a Chainlink-style price feed).
pub struct Feed {
    pub address: Address,
    contract: MockAggregator::MockAggregatorInstance<DynProvider>,
}

impl Feed {
    /// Deploys `abi/MockAggregator.bin` with `decimals`.
    pub async fn deploy(anvil: &Anvil, decimals: u8) -> Self {
        let hex = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/abi/MockAggregator.bin"));
        let mut code = alloy::primitives::hex::decode(hex.trim()).expect("feed bytecode hex");
        code.extend_from_slice(&U256::from(decimals).to_be_bytes::<32>());
        let provider = anvil.provider().await;
        let tx = TransactionRequest::default()
            .from(DEPLOYER)
            .with_deploy_code(code);
        let receipt = provider
            .send_transaction(tx)
            .await
            .expect("deploy feed")
            .get_receipt()
            .await
            .expect("feed receipt");
        let address = receipt.contract_address.expect("feed address");
        Self {
            address,
            contract: MockAggregator::new(address, provider),
        }
    }

    /// The transaction of `setAnswer(answer)` (for `anvil_reorg`). A fixed gas limit:
    /// anvil's estimate was seen to fall short once under load.
    pub fn set_answer_tx(&self, answer: i64) -> TransactionRequest {
        self.contract
            .setAnswer(alloy::primitives::I256::try_from(answer).expect("answer"))
            .into_transaction_request()
            .from(DEPLOYER)
            .gas_limit(200_000)
    }

    /// `setAnswer(answer)`: a new round, updated now.
    pub async fn set_answer(&self, answer: i64) {
        let provider = self.contract.provider();
        let receipt = provider
            .send_transaction(self.set_answer_tx(answer))
            .await
            .expect("setAnswer")
            .get_receipt()
            .await
            .expect("setAnswer receipt");
        assert!(receipt.status(), "setAnswer reverted");
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One blocking JSON-RPC call over plain HTTP/1.1; the `result` as raw JSON text, `None` on any failure.
fn rpc(port: u16, method: &str) -> Option<String> {
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":[]}}"#);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let json: serde_json::Value = serde_json::from_str(response.split("\r\n\r\n").nth(1)?).ok()?;
    json.get("result").map(|r| r.to_string())
}

/// A deployed `TestSpendingHook`. Transactions are sent from [`DEPLOYER`]; all but `send_no_wait`
/// wait for their receipt, so with automine off use `send_no_wait` and [`Anvil::mine`].
pub struct Hook {
    pub address: Address,
    contract: TestSpendingHook::TestSpendingHookInstance<DynProvider>,
}

impl Hook {
    /// Deploys `abi/TestSpendingHook.bin` from [`DEPLOYER`] (the first deploy lands at 0x5FbDB231...).
    /// With automine off, it mines the one block holding the deployment.
    pub async fn deploy(anvil: &Anvil) -> Self {
        let hex = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/abi/TestSpendingHook.bin"));
        let code = alloy::primitives::hex::decode(hex.trim()).expect("hook bytecode hex");
        let provider = anvil.provider().await;
        let tx = TransactionRequest::default()
            .from(DEPLOYER)
            .with_deploy_code(code);
        let pending = provider.send_transaction(tx).await.expect("deploy");
        if !provider.anvil_get_auto_mine().await.expect("anvil_getAutomine") {
            anvil.mine(1).await;
        }
        let receipt = pending.get_receipt().await.expect("deploy receipt");
        Self::at(
            anvil,
            receipt
                .contract_address
                .expect("deploy receipt has no contract address"),
        )
        .await
    }

    /// A handle on a hook already deployed at `address` (e.g. after [`Anvil::restart`]).
    pub async fn at(anvil: &Anvil, address: Address) -> Self {
        Self {
            address,
            contract: TestSpendingHook::new(address, anvil.provider().await),
        }
    }

    async fn send(&self, tx: TransactionRequest) -> TransactionReceipt {
        let provider = self.contract.provider();
        let pending = provider
            .send_transaction(tx.from(DEPLOYER))
            .await
            .expect("send hook tx");
        let receipt = pending.get_receipt().await.expect("hook tx receipt");
        assert!(receipt.status(), "hook tx reverted: {receipt:?}");
        receipt
    }

    /// Sends without waiting for a receipt (for bulk spends, or with automine off).
    pub async fn send_no_wait(&self, tx: TransactionRequest) -> TxHash {
        let provider = self.contract.provider();
        *provider
            .send_transaction(tx.from(DEPLOYER))
            .await
            .expect("send hook tx")
            .tx_hash()
    }

    /// The transaction request of `spend(account, session, amount)` (for `send_no_wait` or `reorg`).
    pub fn spend_tx(&self, account: Address, session: Address, amount: U256) -> TransactionRequest {
        self.contract
            .spend(account, session, amount)
            .into_transaction_request()
            .from(DEPLOYER)
    }

    /// `spend(account, session, amount)`; the receipt's `block_number` is where the log landed.
    pub async fn spend(&self, account: Address, session: Address, amount: U256) -> TransactionReceipt {
        self.send(self.spend_tx(account, session, amount)).await
    }

    /// The transaction request of `spendMany(account, session, amount, count)`.
    pub fn spend_many_tx(
        &self,
        account: Address,
        session: Address,
        amount: U256,
        count: u64,
    ) -> TransactionRequest {
        self.contract
            .spendMany(account, session, amount, U256::from(count))
            .into_transaction_request()
            .from(DEPLOYER)
    }

    /// `spendMany`: `count` SpendRecorded logs of `amount` in one transaction.
    pub async fn spend_many(
        &self,
        account: Address,
        session: Address,
        amount: U256,
        count: u64,
    ) -> TransactionReceipt {
        self.send(self.spend_many_tx(account, session, amount, count))
            .await
    }

    pub async fn set_limits(
        &self,
        account: Address,
        per_tx: U256,
        daily: U256,
        cumulative: U256,
    ) -> TransactionReceipt {
        let call = self.contract.setLimits(account, per_tx, daily, cumulative);
        self.send(call.into_transaction_request()).await
    }

    /// `getSpendState`: (dailySpent, dailyResetTimestamp, cumulativeSpent).
    pub async fn spend_state(&self, account: Address, session: Address) -> (U256, U256, U256) {
        let s = self
            .contract
            .getSpendState(account, session)
            .call()
            .await
            .expect("getSpendState");
        (s.dailySpent, s.dailyResetTimestamp, s.cumulativeSpent)
    }

    pub async fn cumulative(&self, account: Address, session: Address) -> U256 {
        self.spend_state(account, session).await.2
    }
}

/// Path of the pinned cast binary (installed beside anvil by `scripts/install-tools.sh`).
pub fn cast_bin() -> PathBuf {
    anvil_bin().with_file_name("cast")
}
