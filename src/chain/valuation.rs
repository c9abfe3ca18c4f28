//! Valuing on-chain spends in the budgets' unit.
//!
//! The SpendingHook counts native value (wei); budgets are usually USDC base units.
//! Per chain, config picks one rule:
//! - `native`: post wei as is; only `wei` budgets may take on-chain spend.
//! - `fixed`: a configured rate, budget units per 1 native coin (a decimal string),
//!   applied exactly: `ceil(wei * rate * 10^unitDecimals / 10^18)`.
//! - `feed`: a Chainlink-style aggregator read by `eth_call` at the spend's own block
//!   (so a replay or an audit gets the same price):
//!   `ceil(wei * answer * 10^unitDecimals / (10^18 * 10^feedDecimals))`. An answer
//!   that is not positive, or older than `max_age_secs` at the spend's block time, is
//!   an error: the spend is held (kept in the store, counted) and retried every pass,
//!   never valued by a guess. A held spend whose own block's answer stays unusable is
//!   valued at the latest confirmed block once the feed is healthy again; its evidence
//!   names that block.
//!
//! Rounding is always up: a conversion never makes a spend smaller than it was.

use alloy::eips::BlockId;
use alloy::primitives::Address;
use alloy::providers::DynProvider;
use num_bigint::BigUint;
use num_integer::Integer;
use serde::{Deserialize, Serialize};

use crate::budget::amount::{Amount, parse_decimal};
use crate::budget::config::WEI;
use crate::budget::onchain::{ChainSpend, Valued, u256_to_big};
use crate::budget::types::Evidence;

/// Decimals of the native coin.
const NATIVE_DECIMALS: u32 = 18;

alloy::sol! {
    #[sol(rpc)]
    #[allow(missing_docs)]
    interface AggregatorV3 {
        function decimals() external view returns (uint8);
        function latestRoundData() external view returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound);
    }
}

/// How on-chain spends become budget amounts (`[chain.valuation]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum ValuationConfig {
    /// Wei as is, into `wei` budgets.
    #[default]
    Native,
    /// A fixed rate.
    Fixed {
        /// The budgets' unit.
        unit: String,
        /// Budget units per 1 native coin, a decimal ("3000.25").
        rate: String,
    },
    /// A price feed read at each spend's block.
    Feed {
        /// The budgets' unit.
        unit: String,
        /// The aggregator's address.
        address: Address,
        /// Oldest acceptable answer, seconds before the spend's block time.
        max_age_secs: u64,
    },
}

impl ValuationConfig {
    /// The unit budgets that take on-chain spend are in.
    pub fn unit(&self) -> &str {
        match self {
            Self::Native => WEI,
            Self::Fixed { unit, .. } | Self::Feed { unit, .. } => unit,
        }
    }
}

/// Why a spend could not be valued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuationError {
    /// The feed's answer is older than allowed at the spend's block.
    #[error(
        "price feed answer of round {round} is stale: updated at {updated_at}, block time {block_time}, max age {max_age}s"
    )]
    Stale {
        /// Round id.
        round: String,
        /// Answer time.
        updated_at: u64,
        /// The spend's block time.
        block_time: u64,
        /// Allowed age.
        max_age: u64,
    },
    /// The feed answered zero or less.
    #[error("price feed answered {0}, not a positive price")]
    NotPositive(String),
    /// The feed could not be read.
    #[error("price feed unreadable: {0}")]
    Unreadable(String),
}

/// Values spends by one [`ValuationConfig`].
pub struct Valuator {
    cfg: ValuationConfig,
    unit_decimals: u32,
    /// Fixed: the rate as numerator / denominator.
    rate: Option<(BigUint, BigUint)>,
}

impl Valuator {
    /// Checks the config: the rate parses, the unit is known (`unit_decimals`).
    ///
    /// # Errors
    /// A message naming the key.
    pub fn new(cfg: ValuationConfig, unit_decimals: u32) -> Result<Self, String> {
        let rate = match &cfg {
            ValuationConfig::Fixed { rate, .. } => {
                let decimals = rate.split_once('.').map_or(0, |(_, f)| f.len()) as u32;
                let num = parse_decimal(rate, decimals).map_err(|e| format!("chain.valuation.rate: {e}"))?;
                if num == BigUint::ZERO {
                    return Err("chain.valuation.rate: must be greater than zero".into());
                }
                Some((num, BigUint::from(10u32).pow(decimals)))
            }
            _ => None,
        };
        Ok(Self {
            cfg,
            unit_decimals,
            rate,
        })
    }

    /// The unit of the values.
    pub fn unit(&self) -> &str {
        self.cfg.unit()
    }

    /// Only a feed's staleness check reads the block time.
    pub fn needs_block_time(&self) -> bool {
        matches!(self.cfg, ValuationConfig::Feed { .. })
    }

    /// Values a spend. `price_block` is the block to read a feed at (the spend's own
    /// block, or a later one for a held spend); `block_time` that block's timestamp.
    ///
    /// # Errors
    /// [`ValuationError`] for a stale, non-positive or unreadable feed.
    pub async fn value(
        &self,
        p: &DynProvider,
        spend: &ChainSpend,
        price_block: u64,
        block_time: u64,
    ) -> Result<Valued, ValuationError> {
        let wei = u256_to_big(spend.amount);
        let mut evidence = Evidence::native(Amount(wei.clone()));
        let scale = BigUint::from(10u32).pow(self.unit_decimals);
        let native = BigUint::from(10u32).pow(NATIVE_DECIMALS);
        let amount = match &self.cfg {
            ValuationConfig::Native => wei,
            ValuationConfig::Fixed { rate, .. } => {
                let (num, den) = self.rate.as_ref().expect("validated in new");
                evidence.valuation = "fixed".into();
                evidence.rate = Some(rate.clone());
                ceil_div(&(wei * num * scale), &(den * native))
            }
            ValuationConfig::Feed {
                address,
                max_age_secs,
                ..
            } => {
                let feed = AggregatorV3::new(*address, p);
                let at = BlockId::number(price_block);
                let unreadable = |e: alloy::contract::Error| ValuationError::Unreadable(e.to_string());
                let decimals = feed.decimals().block(at).call().await.map_err(unreadable)?;
                let round = feed
                    .latestRoundData()
                    .block(at)
                    .call()
                    .await
                    .map_err(unreadable)?;
                let updated_at: u64 = round.updatedAt.try_into().unwrap_or(u64::MAX);
                if round.answer <= alloy::primitives::I256::ZERO {
                    return Err(ValuationError::NotPositive(round.answer.to_string()));
                }
                if block_time.saturating_sub(updated_at) > *max_age_secs {
                    return Err(ValuationError::Stale {
                        round: round.roundId.to_string(),
                        updated_at,
                        block_time,
                        max_age: *max_age_secs,
                    });
                }
                let price = u256_to_big(round.answer.into_raw());
                evidence.valuation = "feed".into();
                evidence.feed = Some(format!("{address:#x}"));
                evidence.price = Some(price.to_string());
                evidence.price_decimals = Some(u32::from(decimals));
                evidence.round_id = Some(round.roundId.to_string());
                evidence.price_updated_at = Some(updated_at);
                evidence.price_block = Some(price_block);
                let feed_scale = BigUint::from(10u32).pow(u32::from(decimals));
                ceil_div(&(wei * price * scale), &(native * feed_scale))
            }
        };
        Ok(Valued { amount, evidence })
    }
}

/// `a / b` rounded up.
fn ceil_div(a: &BigUint, b: &BigUint) -> BigUint {
    let (q, r) = a.div_rem(b);
    if r == BigUint::ZERO { q } else { q + 1u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_rounds_up_exactly() {
        let v = Valuator::new(
            ValuationConfig::Fixed {
                unit: "usdc".into(),
                rate: "3000.123456".into(),
            },
            6,
        )
        .unwrap();
        let (num, den) = v.rate.clone().unwrap();
        assert_eq!(
            (num, den),
            (BigUint::from(3_000_123_456u64), BigUint::from(1_000_000u32))
        );
        // 1e12 wei = 1e-6 ETH -> 0.003000123456 USDC = 3000.123456 base units -> 3001.
        let scale = BigUint::from(10u32).pow(6);
        let native = BigUint::from(10u32).pow(18);
        let wei = BigUint::from(10u64).pow(12);
        let (n, d) = v.rate.as_ref().unwrap();
        assert_eq!(
            ceil_div(&(wei * n * &scale), &(d * &native)),
            BigUint::from(3001u32)
        );
        // One ETH is exactly 3000.123456 USDC: no rounding.
        let (n, d) = v.rate.as_ref().unwrap();
        assert_eq!(
            ceil_div(&(native.clone() * n * &scale), &(d * &native)),
            BigUint::from(3_000_123_456u64)
        );
    }

    #[test]
    fn bad_rates_name_the_key() {
        for rate in ["0", "-1", "abc", ""] {
            let cfg = ValuationConfig::Fixed {
                unit: "usdc".into(),
                rate: rate.into(),
            };
            assert!(
                Valuator::new(cfg, 6)
                    .err()
                    .unwrap()
                    .contains("chain.valuation.rate"),
                "{rate}"
            );
        }
    }

    #[test]
    fn config_reads_as_toml() {
        let cfg: ValuationConfig = toml_like(
            r#"{"mode":"feed","unit":"usdc","address":"0x0000000000000000000000000000000000000001","max_age_secs":3600}"#,
        );
        assert_eq!(cfg.unit(), "usdc");
        assert_eq!(
            toml_like::<ValuationConfig>(r#"{"mode":"native"}"#),
            ValuationConfig::Native
        );
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
