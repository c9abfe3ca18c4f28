//! Amounts from untrusted text: `Amount::parse` and the JSON forms, `parse_decimal`
//! at every unit's decimals, and `format_decimal` of any uint256.
#![no_main]

use arbitrary::Arbitrary;
use budgetd_fuzz::props::amount::{
    MAX_DECIMALS, check_amount_json, check_amount_text, check_decimal_text, check_decimal_value,
};
use libfuzzer_sys::fuzz_target;
use num_bigint::BigUint;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    decimals: u8,
    value: [u8; 32],
    text: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let decimals = u32::from(input.decimals) % (MAX_DECIMALS + 1);
    check_amount_text(input.text);
    check_amount_json(input.text);
    check_decimal_text(input.text, decimals);
    check_decimal_value(&BigUint::from_bytes_be(&input.value), decimals);
});
