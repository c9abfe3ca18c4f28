//! Chain sync settings (`[chain]` in the config file).

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use super::valuation::ValuationConfig;

/// Anvil's chain id: a dev chain, where blocks are final at once.
pub const ANVIL_CHAIN_ID: u64 = 31337;

/// Chain sync settings as written in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// The node's websocket endpoint (`ws://` or `wss://`). May carry credentials;
    /// they are never logged.
    pub rpc_url: String,
    /// SpendingHook contract address(es) to follow.
    pub hook_addresses: Vec<Address>,
    /// First block to read when the database has no cursor yet.
    pub start_block: u64,
    /// Blocks a spend must be buried under before it is posted; default 0 on anvil
    /// (31337), 12 elsewhere.
    pub confirmations: Option<u64>,
    /// Give an unbound session a budget of its own (`default_max`, task id
    /// `account:sessionKey`). Off: its spend waits until a task is bound.
    pub auto_allocate: bool,
    /// Bindings made at start: session -> task (the task is allocated if missing).
    pub bindings: Vec<BindingConfig>,
    /// Blocks in the first `eth_getLogs` of a backfill.
    pub initial_range: u64,
    /// Most blocks in one `eth_getLogs`.
    pub max_range: u64,
    /// How often to poll for a new head when the websocket is quiet, ms.
    pub poll_interval_ms: u64,
    /// Reconnect when no head arrived for this long, seconds.
    pub stall_timeout_secs: u64,
    /// Block hashes kept below the cursor to find a fork point.
    pub reorg_window: u64,
    /// Retries of one failing RPC call before reconnecting.
    pub max_retries: u32,
    /// How spends in wei become amounts in the budgets' unit.
    pub valuation: ValuationConfig,
    /// Audit the books against the contract this often, seconds (0 = never).
    pub audit_interval_secs: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            rpc_url: "ws://127.0.0.1:8545".into(),
            hook_addresses: Vec::new(),
            start_block: 0,
            confirmations: None,
            auto_allocate: true,
            bindings: Vec::new(),
            initial_range: 100,
            max_range: 10_000,
            poll_interval_ms: 2_000,
            stall_timeout_secs: 60,
            reorg_window: 256,
            max_retries: 6,
            valuation: ValuationConfig::Native,
            audit_interval_secs: 300,
        }
    }
}

/// A session bound to a task in config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The smart account.
    pub account: Address,
    /// The session key.
    pub session_key: Address,
    /// The task.
    pub task_id: String,
    /// `peerDid` of the entries.
    #[serde(default)]
    pub peer_did: String,
}

impl ChainConfig {
    /// Checks what can be checked without a node.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rpc_url.starts_with("ws://") || self.rpc_url.starts_with("wss://")) {
            return Err(format!(
                "chain.rpc_url: `{}` must be a websocket URL (ws:// or wss://)",
                redact_url(&self.rpc_url)
            ));
        }
        if self.hook_addresses.is_empty() {
            return Err("chain.hook_addresses: at least one SpendingHook address is needed".into());
        }
        if self.initial_range == 0 || self.max_range == 0 {
            return Err("chain.initial_range and chain.max_range must be at least 1".into());
        }
        Ok(())
    }

    /// Confirmations for a chain: the configured value, else 0 on anvil, 12 elsewhere.
    pub fn confirmations_for(&self, chain_id: u64) -> u64 {
        self.confirmations
            .unwrap_or(if chain_id == ANVIL_CHAIN_ID { 0 } else { 12 })
    }
}

/// A URL with its secrets taken out, for logs: user info, query, and path segments
/// that look like API keys (long, or mostly hex/alphanumeric) become `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let userinfo = if authority.contains('@') { "***@" } else { "" };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let query = if rest.contains('?') { "?***" } else { "" };
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| {
            if s.len() >= 16
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                "***"
            } else {
                s
            }
        })
        .collect();
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{}", segments.join("/"))
    };
    format!("{scheme}://{userinfo}{host}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_logs() {
        assert_eq!(redact_url("ws://127.0.0.1:8545"), "ws://127.0.0.1:8545");
        assert_eq!(
            redact_url("wss://user:pass@node.example/ws"),
            "wss://***@node.example/ws"
        );
        assert_eq!(
            redact_url("wss://mainnet.infura.io/ws/v3/0123456789abcdef0123456789abcdef"),
            "wss://mainnet.infura.io/ws/v3/***"
        );
        assert_eq!(
            redact_url("wss://rpc.example/ws?apikey=secret"),
            "wss://rpc.example/ws?***"
        );
        assert_eq!(redact_url("not a url"), "***");
    }

    #[test]
    fn confirmations_default_per_chain() {
        let c = ChainConfig::default();
        assert_eq!(c.confirmations_for(31337), 0);
        assert_eq!(c.confirmations_for(84532), 12);
        let c = ChainConfig {
            confirmations: Some(3),
            ..c
        };
        assert_eq!(c.confirmations_for(31337), 3);
    }

    #[test]
    fn validate_names_the_key() {
        let c = ChainConfig::default();
        assert!(c.validate().unwrap_err().contains("chain.hook_addresses"));
        let c = ChainConfig {
            rpc_url: "http://x".into(),
            ..c
        };
        assert!(c.validate().unwrap_err().contains("chain.rpc_url"));
    }
}
