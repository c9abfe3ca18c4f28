//! Engine configuration: the seed's three keys plus the reservation expiry.

use std::collections::BTreeMap;
use std::time::Duration;

use num_bigint::BigUint;
use serde::{Deserialize, Serialize};

use super::amount::parse_decimal;
use super::error::Error;

/// Decimals of the default unit, USDC.
pub const USDC_DECIMALS: u32 = 6;
/// The default unit of a budget.
pub const USDC: &str = "usdc";
/// The chain's native unit, as the SpendingHook counts it.
pub const WEI: &str = "wei";

/// Engine settings as written in config (`[budget]`), before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Budget for an `allocate` without a total, as a USDC decimal ("10.00").
    pub default_max: Option<String>,
    /// Fractions of the total at which alerts fire, each in (0, 1].
    pub alert_thresholds: Vec<f64>,
    /// Refuse checks and records above what remains.
    pub hard_limit: bool,
    /// Seconds after which a reservation expires by itself; 0 = never.
    pub reservation_ttl_secs: u64,
    /// Unit of a budget allocated without one.
    pub default_unit: String,
    /// Token units besides `usdc` (6) and `wei` (18): symbol -> decimals.
    pub units: BTreeMap<String, u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_max: None,
            alert_thresholds: vec![0.5, 0.8, 0.95],
            hard_limit: true,
            reservation_ttl_secs: 15 * 60,
            default_unit: USDC.into(),
            units: BTreeMap::new(),
        }
    }
}

/// Validated settings the engine runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Default allocation in USDC base units (the seed's reading of `default_max`).
    pub default_max: Option<BigUint>,
    /// `default_max` as written, a decimal in whatever unit a budget has.
    pub default_max_decimal: Option<String>,
    /// Known units: symbol -> decimals.
    pub units: BTreeMap<String, u32>,
    /// Unit of a budget allocated without one.
    pub default_unit: String,
    /// Thresholds in parts per million, ascending, deduplicated. Integers so that
    /// `spent / total >= threshold` is decided exactly.
    pub thresholds_ppm: Vec<u32>,
    /// See [`EngineConfig::hard_limit`].
    pub hard_limit: bool,
    /// Default reservation lifetime.
    pub reservation_ttl: Option<Duration>,
}

impl EngineConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: `default_max` with more than 6 decimals or
    /// not above zero, a threshold outside (0, 1].
    pub fn validate(&self) -> Result<Settings, Error> {
        let default_max = match &self.default_max {
            None => None,
            Some(s) => {
                let v = parse_decimal(s, USDC_DECIMALS)
                    .map_err(|e| Error::Config(format!("budget.default_max: {e}")))?;
                if v == BigUint::ZERO {
                    return Err(Error::Config(format!(
                        "budget.default_max: `{s}` must be greater than zero"
                    )));
                }
                Some(v)
            }
        };
        let mut thresholds_ppm = Vec::with_capacity(self.alert_thresholds.len());
        for &t in &self.alert_thresholds {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Error::Config(format!(
                    "budget.alert_thresholds: {t} must be a fraction in (0, 1]"
                )));
            }
            thresholds_ppm.push((t * 1_000_000.0).round() as u32);
        }
        thresholds_ppm.sort_unstable();
        thresholds_ppm.dedup();
        let mut units = BTreeMap::from([(USDC.to_owned(), USDC_DECIMALS), (WEI.to_owned(), 18)]);
        for (symbol, &decimals) in &self.units {
            if symbol.is_empty() || symbol.len() > 32 || decimals > 77 {
                return Err(Error::Config(format!(
                    "budget.units.{symbol}: a unit needs a symbol of 1-32 characters and at most 77 decimals"
                )));
            }
            units.insert(symbol.to_lowercase(), decimals);
        }
        if !units.contains_key(&self.default_unit) {
            return Err(Error::Config(format!(
                "budget.default_unit: unknown unit `{}` (known: {})",
                self.default_unit,
                units.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Settings {
            default_max_decimal: self.default_max.clone(),
            units,
            default_unit: self.default_unit.clone(),
            default_max,
            thresholds_ppm,
            hard_limit: self.hard_limit,
            reservation_ttl: (self.reservation_ttl_secs > 0)
                .then(|| Duration::from_secs(self.reservation_ttl_secs)),
        })
    }
}

impl Settings {
    /// Decimals of a known unit.
    ///
    /// # Errors
    /// [`Error::InvalidUnit`] naming the known units.
    pub fn decimals(&self, unit: &str) -> Result<u32, Error> {
        self.units.get(unit).copied().ok_or_else(|| {
            Error::InvalidUnit(format!(
                "unknown unit `{unit}` (known: {})",
                self.units.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// `default_max` in base units of `unit`.
    ///
    /// # Errors
    /// An unknown unit, or a default with more decimals than the unit has.
    pub fn default_max_in(&self, unit: &str) -> Result<Option<BigUint>, Error> {
        let decimals = self.decimals(unit)?;
        match &self.default_max_decimal {
            None => Ok(None),
            Some(d) => parse_decimal(d, decimals)
                .map(Some)
                .map_err(|e| Error::Config(format!("budget.default_max in {unit}: {e}"))),
        }
    }
}

/// A threshold in parts per million as the fraction callers see.
pub fn ppm_to_fraction(ppm: u32) -> f64 {
    f64::from(ppm) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
        let s = EngineConfig::default().validate().unwrap();
        assert_eq!(s.thresholds_ppm, vec![500_000, 800_000, 950_000]);
        assert!(s.hard_limit);
        assert_eq!(s.default_max, None);
    }

    #[test]
    fn default_max_is_usdc() {
        let cfg = |m: &str| EngineConfig {
            default_max: Some(m.into()),
            ..Default::default()
        };
        assert_eq!(
            cfg("10.00").validate().unwrap().default_max,
            Some(BigUint::from(10_000_000u32))
        );
        let err = cfg("1.0000001").validate().unwrap_err().to_string();
        assert!(
            err.contains("budget.default_max") && err.contains("6 decimals"),
            "{err}"
        );
        assert!(
            cfg("0")
                .validate()
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
        assert!(cfg("-1").validate().unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn thresholds_sorted_and_checked() {
        let cfg = EngineConfig {
            alert_thresholds: vec![0.9, 0.25, 0.9],
            ..Default::default()
        };
        assert_eq!(cfg.validate().unwrap().thresholds_ppm, vec![250_000, 900_000]);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let cfg = EngineConfig {
                alert_thresholds: vec![bad],
                ..Default::default()
            };
            assert!(
                cfg.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("alert_thresholds")
            );
        }
    }
}
