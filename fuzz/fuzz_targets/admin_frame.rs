//! The admin socket's framing: raw bytes at a few limits, then a stream of values
//! read whole and in chunks, values over the limit, and garbage after good values.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use budgetd_fuzz::input::Json;
use budgetd_fuzz::props::frame::{check_any, check_garbage, check_stream, check_too_large, is_garbage_start};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<Json>,
    seps: Vec<u8>,
    cuts: Vec<u16>,
    max: u16,
    garbage: Vec<u8>,
    after: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    for max in [usize::MAX, data.len() / 2, 16] {
        check_any(data, max);
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let values: Vec<Value> = input.values.iter().map(Json::to_value).collect();
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    check_stream(&values, &input.seps, &cuts);
    if let Some(v) = values.first() {
        check_too_large(v, usize::from(input.max));
    }
    let mut garbage = input.garbage;
    if !garbage.first().is_some_and(|&b| is_garbage_start(b)) {
        garbage.insert(0, b'}');
    }
    check_garbage(&values, &input.seps, &garbage, &input.after);
});
