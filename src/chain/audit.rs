//! The audit: budgetd's books against the contract's own counters.
//!
//! For every session budgetd knows, the contract's `getSpendState(account,
//! sessionKey).cumulativeSpent`, read by `eth_call` at the cursor block (the last block
//! budgetd has posted, by hash), must equal budgetd's confirmed total for that session; and that
//! total must equal what budgetd holds for it: raw amounts posted to tasks, waiting
//! unbound, and held back for valuation. Any difference is drift.

use std::time::Duration;

use alloy::eips::{BlockId, RpcBlockHash};
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder, WsConnect};
use num_bigint::{BigInt, BigUint};
use serde::Serialize;

use super::abi::SpendingHook;
use crate::budget::Engine;
use crate::budget::onchain::u256_to_big;

/// One session's comparison; amounts are raw (wei) decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAudit {
    /// The smart account.
    pub account: Address,
    /// The session key.
    pub session_key: Address,
    /// The contract's cumulativeSpent at the audit block, over all hooks.
    pub chain: String,
    /// budgetd's confirmed total.
    pub confirmed: String,
    /// Posted to tasks.
    pub posted: String,
    /// Waiting for a binding.
    pub unbound: String,
    /// Held back for valuation.
    pub held: String,
    /// `confirmed - chain`, or where those agree, `posted + unbound + held - confirmed`.
    pub drift: String,
}

/// The whole audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// The block the contract was read at (the cursor).
    pub block: u64,
    /// One row per session.
    pub sessions: Vec<SessionAudit>,
    /// Sessions with non-zero drift.
    pub drifting: usize,
}

/// Audits every known session against `hooks` on the node at `rpc_url`.
///
/// # Errors
/// A message when the node or the store cannot be read, or nothing is synced yet.
pub async fn audit(rpc_url: &str, hooks: &[Address], engine: &Engine) -> Result<AuditReport, String> {
    let ws = WsConnect::new(rpc_url).with_max_retries(1);
    let provider = tokio::time::timeout(Duration::from_secs(10), ProviderBuilder::new().connect_ws(ws))
        .await
        .map_err(|_| "node did not answer".to_owned())?
        .map_err(|e| {
            format!(
                "cannot connect to the node: {}",
                e.to_string().replace(rpc_url, "***")
            )
        })?
        .erased();
    audit_with(&provider, hooks, engine).await
}

/// [`audit`] over an existing provider.
///
/// # Errors
/// As [`audit`].
pub async fn audit_with(
    provider: &DynProvider,
    hooks: &[Address],
    engine: &Engine,
) -> Result<AuditReport, String> {
    // One snapshot: the cursor and the books as of that block, never a mix of two
    // commits while spends keep coming.
    let books = engine.books().await.map_err(|e| e.to_string())?;
    let cursor = books.cursor.ok_or("nothing synced yet: no cursor")?;
    // The contract is read at the cursor's hash: if a reorg replaced that block and
    // budgetd has not repaired it yet, the node refuses rather than drift being shown.
    let at = BlockId::Hash(RpcBlockHash {
        block_hash: cursor.hash,
        require_canonical: Some(true),
    });
    let mut sessions = Vec::new();
    for (session, ours) in books.sessions {
        let (account, session_key) = parse_session(&session)?;
        let mut chain = U256::ZERO;
        for &hook in hooks {
            let state = SpendingHook::new(hook, provider)
                .getSpendState(account, session_key)
                .block(at)
                .call()
                .await
                .map_err(|e| format!("getSpendState({session}) at block {}: {e}", cursor.number))?;
            chain += state.cumulativeSpent;
        }
        let chain = u256_to_big(chain);
        let drift = drift(
            &chain,
            &ours.confirmed,
            &(&ours.posted + &ours.unbound + &ours.held),
        );
        sessions.push(SessionAudit {
            account,
            session_key,
            chain: chain.to_string(),
            confirmed: ours.confirmed.to_string(),
            posted: ours.posted.to_string(),
            unbound: ours.unbound.to_string(),
            held: ours.held.to_string(),
            drift: drift.to_string(),
        });
    }
    let drifting = sessions.iter().filter(|s| s.drift != "0").count();
    Ok(AuditReport {
        block: cursor.number,
        sessions,
        drifting,
    })
}

fn signed(v: &BigUint) -> BigInt {
    BigInt::from(v.clone())
}

/// `confirmed - chain` where the contract and the confirmed total differ; otherwise
/// `held_by_us - confirmed` (posted + unbound + held against the total). The two are
/// not summed: their sum is `held_by_us - chain`, which hides a wrong total matched
/// by a wrong breakdown.
fn drift(chain: &BigUint, confirmed: &BigUint, held_by_us: &BigUint) -> BigInt {
    if confirmed != chain {
        signed(confirmed) - signed(chain)
    } else {
        signed(held_by_us) - signed(confirmed)
    }
}

fn parse_session(session: &str) -> Result<(Address, Address), String> {
    let (a, s) = session
        .split_once(':')
        .ok_or_else(|| format!("bad session id {session}"))?;
    let parse = |x: &str| {
        x.parse::<Address>()
            .map_err(|e| format!("bad session id {session}: {e}"))
    };
    Ok((parse(a)?, parse(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_shows_either_disagreement_and_neither_hides_the_other() {
        let n = |v: u32| BigUint::from(v);
        assert_eq!(drift(&n(20), &n(20), &n(20)), BigInt::from(0));
        assert_eq!(drift(&n(20), &n(25), &n(25)), BigInt::from(5), "a phantom spend");
        assert_eq!(drift(&n(20), &n(20), &n(18)), BigInt::from(-2), "a lost entry");
        assert_eq!(
            drift(&n(20), &n(25), &n(20)),
            BigInt::from(5),
            "a wrong total, entries right"
        );
    }
}
