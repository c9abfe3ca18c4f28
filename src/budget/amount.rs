//! Money as integers: parsing and printing amounts in base units.
//!
//! Amounts are unsigned 256-bit integers on the wire (so anything the chain can hold
//! fits and nothing larger is accepted) and [`BigUint`] inside. JSON carries them as
//! decimal strings; on input we also take JSON integers and `0x` hex strings, because
//! Ethereum tooling sends both. Negative, fractional and oversized values are refused
//! with a message that says which.

use std::fmt;

use num_bigint::{BigInt, BigUint};
use num_traits::{Num, Zero};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The number of bits an amount may use: the chain's `uint256`.
pub const MAX_BITS: u64 = 256;

/// Why a string or JSON value is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Empty input.
    #[error("amount is empty")]
    Empty,
    /// A leading minus sign.
    #[error("amount must not be negative")]
    Negative,
    /// A decimal point or exponent where base units were expected.
    #[error("amount must be a whole number of base units")]
    Fractional,
    /// More than 256 bits.
    #[error("amount exceeds 2^256-1")]
    TooLarge,
    /// Anything else that is not a number.
    #[error("amount `{0}` is not a decimal or 0x-hex integer")]
    Malformed(String),
    /// A decimal with more fraction digits than the unit has.
    #[error("amount `{value}` has more than {decimals} decimals")]
    TooManyDecimals {
        /// The input.
        value: String,
        /// Decimals the unit allows.
        decimals: u32,
    },
}

/// An unsigned amount in base units, at most 2^256-1.
///
/// Serializes as a decimal string; deserializes from a decimal string, a `0x` hex
/// string or a JSON integer.
///
/// ```
/// use budgetd::budget::Amount;
/// let a: Amount = serde_json::from_str("\"0x10\"").unwrap();
/// assert_eq!(serde_json::to_string(&a).unwrap(), "\"16\"");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub BigUint);

impl Amount {
    /// Parses a decimal or `0x` hex integer string.
    ///
    /// # Errors
    /// [`AmountError`] naming what is wrong with the input.
    pub fn parse(s: &str) -> Result<Self, AmountError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if s.starts_with('-') {
            return Err(AmountError::Negative);
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let value = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AmountError::Malformed(s.to_owned()));
            }
            if significant(hex) > U256_HEX_DIGITS {
                return Err(AmountError::TooLarge);
            }
            BigUint::from_str_radix(hex, 16).map_err(|_| AmountError::Malformed(s.to_owned()))?
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            if significant(s) > U256_DECIMAL_DIGITS {
                return Err(AmountError::TooLarge);
            }
            BigUint::from_str_radix(s, 10).map_err(|_| AmountError::Malformed(s.to_owned()))?
        } else if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E')
        {
            return Err(AmountError::Fractional);
        } else {
            return Err(AmountError::Malformed(s.to_owned()));
        };
        Self::checked(value)
    }

    /// Wraps a value, refusing more than 256 bits.
    ///
    /// # Errors
    /// [`AmountError::TooLarge`].
    pub fn checked(value: BigUint) -> Result<Self, AmountError> {
        if value.bits() > MAX_BITS {
            return Err(AmountError::TooLarge);
        }
        Ok(Self(value))
    }

    /// True for zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<u64> for Amount {
    fn from(v: u64) -> Self {
        Self(BigUint::from(v))
    }
}

impl From<Amount> for BigUint {
    fn from(a: Amount) -> Self {
        a.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount in base units: a decimal string, a 0x-hex string or an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount::from(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Amount, E> {
                Ok(Amount(BigUint::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v)
                    .map(Amount::from)
                    .map_err(|_| E::custom(AmountError::Negative))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(if v < 0.0 {
                    AmountError::Negative
                } else if v.fract() != 0.0 {
                    AmountError::Fractional
                } else {
                    // An integer too large for u64 that the JSON parser turned into a float:
                    // precision is already lost, so refuse rather than guess.
                    AmountError::Malformed(format!("{v} (send large amounts as strings)"))
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                Amount::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A signed amount, for `remaining`, which may go below zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignedAmount(pub BigInt);

impl Serialize for SignedAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SignedAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<BigInt>()
            .map(SignedAmount)
            .map_err(|_| de::Error::custom(AmountError::Malformed(s)))
    }
}

impl fmt::Display for SignedAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Digits in 2^256 - 1, decimal and hex: more significant digits are too large
/// whatever they are, so a long string is refused before it is converted.
const U256_DECIMAL_DIGITS: usize = 78;
const U256_HEX_DIGITS: usize = 64;

/// Digits after any leading zeros.
fn significant(digits: &str) -> usize {
    digits.trim_start_matches('0').len()
}

/// Parses a decimal string in a unit with `decimals` fraction digits into base units:
/// `parse_decimal("10.00", 6)` is 10,000,000.
///
/// # Errors
/// [`AmountError`] for negative, malformed, over-precise or oversized input.
pub fn parse_decimal(s: &str, decimals: u32) -> Result<BigUint, AmountError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AmountError::Empty);
    }
    if s.starts_with('-') {
        return Err(AmountError::Negative);
    }
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return Err(AmountError::Malformed(s.to_owned()));
    }
    if frac.len() > decimals as usize {
        return Err(AmountError::TooManyDecimals {
            value: s.to_owned(),
            decimals,
        });
    }
    if significant(whole) > U256_DECIMAL_DIGITS {
        return Err(AmountError::TooLarge);
    }
    let padded = format!("{whole}{frac:0<width$}", width = decimals as usize);
    let value = BigUint::from_str_radix(&padded, 10).map_err(|_| AmountError::Malformed(s.to_owned()))?;
    Amount::checked(value).map(|a| a.0)
}

/// Formats base units as a decimal in a unit with `decimals` fraction digits, trailing
/// zeros kept to two places: `format_decimal(10_000_000, 6)` is "10.00".
pub fn format_decimal(v: &BigInt, decimals: u32) -> String {
    let neg = v.sign() == num_bigint::Sign::Minus;
    let digits = v.magnitude().to_str_radix(10);
    let d = decimals as usize;
    let padded = format!("{digits:0>width$}", width = d + 1);
    let (whole, frac) = padded.split_at(padded.len() - d);
    let keep = frac.trim_end_matches('0').len().max(2.min(d));
    let sign = if neg { "-" } else { "" };
    if d == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{}", &frac[..keep])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<Amount, String> {
        serde_json::from_str::<Amount>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_decimal_hex_and_integers() {
        assert_eq!(json("\"1000\"").unwrap(), Amount::from(1000));
        assert_eq!(json("\"0x3e8\"").unwrap(), Amount::from(1000));
        assert_eq!(json("1000").unwrap(), Amount::from(1000));
        assert_eq!(serde_json::to_string(&Amount::from(1000)).unwrap(), "\"1000\"");
    }

    #[test]
    fn refuses_negative_fractional_huge_and_junk() {
        assert!(json("-1").unwrap_err().contains("negative"));
        assert!(json("\"-1\"").unwrap_err().contains("negative"));
        assert!(json("1.5").unwrap_err().contains("whole number"));
        assert!(json("\"1.5\"").unwrap_err().contains("whole number"));
        assert!(json("\"1e3\"").unwrap_err().contains("whole number"));
        assert!(json("\"abc\"").unwrap_err().contains("not a decimal"));
        assert!(json("\"0x\"").unwrap_err().contains("not a decimal"));
        assert!(json("\"\"").unwrap_err().contains("empty"));
        assert!(json("true").is_err());
        let max = format!("\"0x{}\"", "f".repeat(64));
        assert_eq!(json(&max).unwrap().0.bits(), 256);
        let over = format!("\"0x1{}\"", "0".repeat(64));
        assert!(json(&over).unwrap_err().contains("2^256"));
        assert!(json("1e30").is_err());
    }

    #[test]
    fn usdc_decimals() {
        assert_eq!(parse_decimal("10.00", 6).unwrap(), BigUint::from(10_000_000u64));
        assert_eq!(parse_decimal("10", 6).unwrap(), BigUint::from(10_000_000u64));
        assert_eq!(parse_decimal("0.000001", 6).unwrap(), BigUint::from(1u64));
        assert_eq!(parse_decimal(".5", 6).unwrap(), BigUint::from(500_000u64));
        assert!(matches!(
            parse_decimal("0.0000001", 6),
            Err(AmountError::TooManyDecimals { .. })
        ));
        assert_eq!(parse_decimal("-1", 6), Err(AmountError::Negative));
        assert!(parse_decimal("1.2.3", 6).is_err());
        assert!(parse_decimal(".", 6).is_err());
    }

    /// A request may carry a megabyte of digits: refused by their count, not converted.
    #[test]
    fn long_digit_strings_are_refused_before_conversion() {
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(Amount::parse(max).unwrap().0.bits(), 256);
        assert_eq!(Amount::parse(&format!("000{max}")).unwrap().0.bits(), 256);
        let long = "9".repeat(1 << 20);
        assert_eq!(Amount::parse(&long), Err(AmountError::TooLarge));
        assert_eq!(
            Amount::parse(&format!("0x{}", "f".repeat(65))),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            Amount::parse(&format!("0x{}", "f".repeat(64))).unwrap().0.bits(),
            256
        );
        assert_eq!(parse_decimal(&format!("{long}.5"), 6), Err(AmountError::TooLarge));
        assert_eq!(
            parse_decimal(&format!("{}1.5", "0".repeat(1000)), 6).unwrap(),
            BigUint::from(1_500_000u32)
        );
    }

    #[test]
    fn formats_decimals() {
        assert_eq!(format_decimal(&BigInt::from(10_000_000), 6), "10.00");
        assert_eq!(format_decimal(&BigInt::from(1), 6), "0.000001");
        assert_eq!(format_decimal(&BigInt::from(-1_500_000), 6), "-1.50");
        assert_eq!(format_decimal(&BigInt::from(7), 0), "7");
    }
}
