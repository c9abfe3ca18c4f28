//! The SpendingHook ABI, bound from `abi/SpendingHook.json`, and log decoding.

use alloy::primitives::B256;
use alloy::rpc::types::Log;
use alloy::sol_types::SolEvent;

use crate::budget::onchain::{ChainLimits, ChainSpend};

alloy::sol!(
    #[sol(rpc)]
    #[allow(missing_docs)]
    SpendingHook,
    "abi/SpendingHook.json"
);

pub use SpendingHook::{LimitsUpdated, SpendRecorded};

/// topic0 of the events budgetd follows.
pub fn topics() -> [B256; 2] {
    [SpendRecorded::SIGNATURE_HASH, LimitsUpdated::SIGNATURE_HASH]
}

/// A decoded hook log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// A spend.
    Spend(ChainSpend),
    /// New limits for an account.
    Limits(ChainLimits),
}

/// Decodes a log of a mined block. `None` for other events; an error for a log
/// without block data (pending) or with malformed data.
///
/// # Errors
/// A message naming the log.
pub fn decode(log: &Log) -> Result<Option<HookEvent>, String> {
    let where_ = || format!("log {:?} in tx {:?}", log.log_index, log.transaction_hash);
    let (Some(block), Some(block_hash), Some(tx_hash), Some(log_index)) = (
        log.block_number,
        log.block_hash,
        log.transaction_hash,
        log.log_index,
    ) else {
        return Err(format!("{} has no block data (pending?)", where_()));
    };
    let Some(topic0) = log.topic0() else {
        return Ok(None);
    };
    if *topic0 == SpendRecorded::SIGNATURE_HASH {
        let e = SpendRecorded::decode_log_data(log.data()).map_err(|e| format!("{}: {e}", where_()))?;
        Ok(Some(HookEvent::Spend(ChainSpend {
            block,
            block_hash,
            block_timestamp: log.block_timestamp,
            tx_hash,
            log_index,
            account: e.account,
            session_key: e.sessionKey,
            amount: e.amount,
        })))
    } else if *topic0 == LimitsUpdated::SIGNATURE_HASH {
        let e = LimitsUpdated::decode_log_data(log.data()).map_err(|e| format!("{}: {e}", where_()))?;
        Ok(Some(HookEvent::Limits(ChainLimits {
            account: e.account,
            per_tx_limit: e.perTxLimit,
            daily_limit: e.dailyLimit,
            cumulative_limit: e.cumulativeLimit,
            block,
            log_index,
        })))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_the_deployed_contract() {
        assert_eq!(
            format!("{:#x}", SpendRecorded::SIGNATURE_HASH),
            "0xa8b4e82c3dd1e64cc175fb49421a70fd82bff029d5784d3bb942e6c6937875ae"
        );
        assert_eq!(
            format!("{:#x}", LimitsUpdated::SIGNATURE_HASH),
            "0x222c75f6cb8864e10009004216b993b7965f3455ec299f820d82a10a4eb71e08"
        );
    }
}
