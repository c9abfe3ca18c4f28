//! Amounts from untrusted text: [`Amount::parse`], the JSON forms, [`parse_decimal`]
//! and [`format_decimal`] never panic, accept exactly what they say they accept, and
//! round-trip.

use budgetd::budget::amount::{format_decimal, parse_decimal};
use budgetd::budget::{Amount, AmountError, SignedAmount};
use num_bigint::{BigInt, BigUint};

/// The most decimals a unit may have (`budget.units` refuses more).
pub const MAX_DECIMALS: u32 = 77;

/// Digits in `radix`, folded by hand rather than by `from_str_radix`; `None` when empty
/// or when a character is not a digit.
fn digits(s: &str, radix: u32) -> Option<BigUint> {
    if s.is_empty() {
        return None;
    }
    s.chars()
        .try_fold(BigUint::ZERO, |v, c| Some(v * radix + c.to_digit(radix)?))
}

/// What [`Amount::parse`] accepts, read from its code: surrounding whitespace, an
/// optional `+`, then decimal digits or `0x`/`0X` and hex digits.
pub fn expected_amount(s: &str) -> Option<BigUint> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => digits(hex, 16),
        None => digits(s, 10),
    }
}

/// What [`parse_decimal`] accepts: surrounding whitespace, decimal digits with at most
/// one `.` and at most `decimals` digits after it; no sign, no exponent.
pub fn expected_decimal(s: &str, decimals: u32) -> Option<BigUint> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.len() > decimals as usize {
        return None;
    }
    let value = digits(&format!("{whole}{frac}"), 10)?;
    Some(value * BigUint::from(10u32).pow(decimals - frac.len() as u32))
}

fn fits(v: &BigUint) -> bool {
    v.bits() <= 256
}

/// [`Amount::parse`] agrees with [`expected_amount`], refuses more than 256 bits, and
/// what it accepts prints canonically and parses back, also through JSON.
pub fn check_amount_text(s: &str) {
    let got = Amount::parse(s);
    match (&got, expected_amount(s)) {
        (Ok(a), Some(v)) => assert!(a.0 == v && fits(&v), "{s:?} parsed as {a}, expected {v}"),
        (Err(AmountError::TooLarge), Some(v)) => assert!(!fits(&v), "{s:?} refused as too large"),
        (Err(_), None) => {}
        (got, want) => panic!("{s:?}: parse gave {got:?}, expected {want:?}"),
    }
    let t = s.trim();
    if t.is_empty() {
        assert_eq!(got, Err(AmountError::Empty), "{s:?}");
    } else if t.starts_with('-') {
        assert_eq!(got, Err(AmountError::Negative), "{s:?}");
    }
    if let Ok(a) = got {
        check_canonical(&a);
    }
}

/// An accepted amount prints as plain decimal digits without leading zeros, and that
/// text (and its JSON string) parses back to the same amount.
pub fn check_canonical(a: &Amount) {
    let text = a.to_string();
    assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
    assert!(text == "0" || !text.starts_with('0'), "leading zero in {text:?}");
    assert_eq!(
        Amount::parse(&text).as_ref(),
        Ok(a),
        "{text:?} does not parse back"
    );
    let json = serde_json::to_string(a).expect("amounts serialize");
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(
        serde_json::from_str::<Amount>(&json).ok().as_ref(),
        Some(a),
        "{json} does not parse back"
    );
}

/// Any JSON text: [`Amount`] and [`SignedAmount`] never panic, stay within their
/// bounds, agree with [`Amount::parse`] on strings, and round-trip.
pub fn check_amount_json(json: &str) {
    let got = serde_json::from_str::<Amount>(json);
    if let Ok(a) = &got {
        assert!(fits(&a.0), "{json} gave {a}, over 256 bits");
        check_canonical(a);
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::String(s)) => {
            assert_eq!(
                got.ok(),
                Amount::parse(&s).ok(),
                "JSON {json} and parse({s:?}) disagree"
            )
        }
        Ok(serde_json::Value::Number(n)) if n.is_u64() => {
            assert_eq!(got.ok(), n.as_u64().map(Amount::from), "{json}")
        }
        Ok(serde_json::Value::Number(n)) if n.is_i64() => assert!(got.is_err(), "{json} is negative"),
        _ => {}
    }
    if let Ok(x) = serde_json::from_str::<SignedAmount>(json) {
        let back = serde_json::to_string(&x).expect("signed amounts serialize");
        assert_eq!(
            serde_json::from_str::<SignedAmount>(&back).ok(),
            Some(x),
            "{json} -> {back}"
        );
    }
}

/// [`parse_decimal`] agrees with [`expected_decimal`] and refuses more than 256 bits;
/// what it accepts formats and parses back.
pub fn check_decimal_text(s: &str, decimals: u32) {
    let got = parse_decimal(s, decimals);
    match (&got, expected_decimal(s, decimals)) {
        (Ok(a), Some(v)) => assert!(
            *a == v && fits(&v),
            "{s:?}/{decimals} parsed as {a}, expected {v}"
        ),
        (Err(AmountError::TooLarge), Some(v)) => assert!(!fits(&v), "{s:?}/{decimals} refused as too large"),
        (Err(_), None) => {}
        (got, want) => panic!("{s:?}/{decimals}: parse_decimal gave {got:?}, expected {want:?}"),
    }
    if s.trim().starts_with('-') {
        assert_eq!(got, Err(AmountError::Negative), "{s:?}");
    }
    if let Ok(v) = got {
        check_decimal_value(&v, decimals);
    }
}

/// `format_decimal` of any value of at most 256 bits parses back with `parse_decimal`,
/// keeps at least two (at most `decimals`) fraction digits, and signs negatives.
pub fn check_decimal_value(v: &BigUint, decimals: u32) {
    assert!(fits(v));
    let text = format_decimal(&BigInt::from(v.clone()), decimals);
    assert_eq!(
        parse_decimal(&text, decimals).as_ref(),
        Ok(v),
        "{v}/{decimals} -> {text:?}"
    );
    let frac = text.split_once('.').map_or(0, |(_, f)| f.len());
    assert!(
        frac <= decimals as usize && frac >= 2.min(decimals as usize),
        "{v}/{decimals} -> {text:?}"
    );
    let whole = text.split_once('.').map_or(text.as_str(), |(w, _)| w);
    assert!(
        whole == "0" || !whole.starts_with('0'),
        "{v}/{decimals} -> {text:?}"
    );
    if *v != BigUint::ZERO {
        let neg = format_decimal(&-BigInt::from(v.clone()), decimals);
        assert_eq!(neg, format!("-{text}"));
    }
}
