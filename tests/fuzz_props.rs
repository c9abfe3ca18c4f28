//! The fuzz targets' properties (`fuzz/props/`, shared with `fuzz/fuzz_targets/`) under
//! proptest, so every `cargo test` checks them on a few hundred inputs each: amounts,
//! the admin socket's framing, and admin requests through the real method table.

#[path = "../fuzz/props/mod.rs"]
mod props;

use std::sync::OnceLock;

use budgetd::admin::frame::{Frame, next_frame};
use num_bigint::BigUint;
use props::amount::{
    MAX_DECIMALS, check_amount_json, check_amount_text, check_decimal_text, check_decimal_value,
};
use props::dispatch::{Args, Dispatcher, METHODS, STATUSES, UNITS, typed_params};
use props::frame::{check_any, check_garbage, check_stream, check_too_large, is_garbage_start};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Text near the amount grammars: signs, whitespace, `0x`, digits, points, exponents.
fn amount_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t\n]{0,2}[+-]{0,2}(0[xX])?[0-9a-fA-F]{0,80}[ \n]{0,2}",
        "[ ]?[+-]?[0-9]{0,4}[.]?[0-9]{0,8}([eE][+-]?[0-9]{1,3})?[ ]?",
        "[0-9.eExX+_ -]{0,12}",
        any::<String>(),
    ]
}

/// Any uint256, as big-endian bytes.
fn u256() -> impl Strategy<Value = BigUint> {
    prop_oneof![
        any::<u64>().prop_map(BigUint::from),
        any::<[u8; 32]>().prop_map(|b| BigUint::from_bytes_be(&b)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z\"\\\\\u{e9}\n ]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-z]{0,3}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn amount_text_parses_as_documented(s in amount_text()) {
        check_amount_text(&s);
    }

    #[test]
    fn amount_json_is_bounded_and_agrees_with_parse(s in prop_oneof![
        amount_text().prop_map(|s| json!(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| json!(f).to_string()),
        "[0-9]{18,22}",
        any::<String>(),
    ]) {
        check_amount_json(&s);
    }

    #[test]
    fn amounts_round_trip_and_refuse_2_pow_256(v in u256(), over in 1u64..u64::MAX, hex in any::<bool>()) {
        let text = |v: &BigUint| if hex { format!("0x{v:x}") } else { v.to_string() };
        check_amount_text(&text(&v));
        let too_big = (BigUint::from(1u8) << 256u32) - 1u8 + over;
        check_amount_text(&text(&too_big));
        prop_assert!(budgetd::budget::Amount::parse(&text(&too_big)).is_err());
    }

    #[test]
    fn decimals_parse_as_documented(s in amount_text(), d in 0..=MAX_DECIMALS) {
        check_decimal_text(&s, d);
    }

    #[test]
    fn decimals_format_and_parse_back(v in u256(), d in 0..=MAX_DECIMALS) {
        check_decimal_value(&v, d);
    }

    #[test]
    fn framing_never_panics(buf in prop::collection::vec(any::<u8>(), 0..64), max in 0usize..80) {
        check_any(&buf, max);
        check_any(&buf, usize::MAX);
    }

    #[test]
    fn framing_gives_the_same_values_however_the_stream_is_cut(
        values in prop::collection::vec(json_value(), 0..5),
        seps in prop::collection::vec(any::<u8>(), 0..5),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        check_stream(&values, &seps, &cuts);
    }

    #[test]
    fn framing_refuses_values_over_the_limit(v in json_value(), max in any::<usize>()) {
        check_too_large(&v, max);
    }

    #[test]
    fn framing_stops_at_garbage(
        values in prop::collection::vec(json_value(), 0..4),
        seps in prop::collection::vec(any::<u8>(), 0..4),
        first in any::<u8>().prop_filter("not a value start", |&b| is_garbage_start(b)),
        after in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        check_garbage(&values, &seps, &[first], &after);
    }
}

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::sample::select(list).prop_map(Value::from)
}

/// Params of the shapes the admin methods take, and anything else.
fn param() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u8..4).prop_map(|i| json!(format!("t{i}"))),
        (0u8..3).prop_map(Value::from),
        amount_text().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<[u8; 20]>().prop_map(|a| json!(format!("0x{}", a.map(|b| format!("{b:02x}")).concat()))),
        pick(&UNITS),
        pick(&STATUSES),
        (
            prop::option::of(amount_text()),
            prop::option::of(pick(&UNITS)),
            prop::option::of("[a-z]{1,6}")
        )
            .prop_map(|(amount, unit, extra)| {
                let mut e = Map::new();
                e.insert("amount".into(), amount.map_or(Value::Null, Value::from));
                e.insert("toolName".into(), json!("tool"));
                unit.map(|u| e.insert("unit".into(), u));
                extra.map(|k| e.insert(k, json!(1)));
                Value::Object(e)
            }),
        any::<f64>().prop_map(|f| json!(f)),
        json_value(),
    ]
}

/// Amounts as clients send them: mostly in range, some not, some not amounts.
fn amount() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0u64..20_000_000).prop_map(|v| json!(v.to_string())),
        1 => (0u64..20_000_000).prop_map(Value::from),
        1 => u256().prop_map(|v| json!(format!("{v:#x}"))),
        1 => amount_text().prop_map(Value::from),
    ]
}

fn address(b: u8) -> Value {
    json!(format!("0x{}", format!("{b:02x}").repeat(20)))
}

/// Params laid out as each method reads them (few tasks, accounts and keys, so that
/// calls meet), so that most requests reach the engine.
fn typed_args() -> impl Strategy<Value = Args> {
    (
        (0u8..4, amount(), pick(&UNITS), 0u8..3, 1u8..4),
        (amount(), pick(&UNITS), prop_oneof![any::<f64>(), 0.0..1.5f64]),
        (0u64..2000, pick(&STATUSES), "[a-z0-9]{0,6}", 0usize..4),
    )
        .prop_map(
            |(
                (task, amount, unit, account, key),
                (entry_amount, entry_unit, float),
                (number, status, text, optional),
            )| Args {
                task: json!(format!("t{task}")),
                amount,
                unit,
                account: address(account),
                key: address(key),
                entry: json!({ "amount": entry_amount, "toolName": "tool", "unit": entry_unit }),
                float: json!(float),
                number: json!(number),
                status,
                text: json!(text),
                optional,
            },
        )
}

#[derive(Debug, Clone)]
enum P {
    Typed(Box<Args>),
    Raw(Value),
}

/// Requests, mostly well formed, naming real methods.
fn request() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        any::<u64>().prop_map(|n| Some(json!(n))),
        "[a-z0-9\"]{0,4}".prop_map(|s| Some(json!(s))),
        Just(Some(Value::Null)),
        Just(None),
    ];
    let params = prop_oneof![
        6 => typed_args().prop_map(|a| Some(P::Typed(Box::new(a)))),
        2 => prop::collection::vec(param(), 0..5).prop_map(|p| Some(P::Raw(Value::from(p)))),
        1 => json_value().prop_map(|p| Some(P::Raw(p))),
        1 => Just(None),
    ];
    (
        prop::sample::select(&METHODS[..]),
        id,
        params,
        prop::bool::weighted(0.95),
    )
        .prop_map(|(method, id, params, v2)| {
            let params = params.map(|p| match p {
                P::Typed(a) => typed_params(method, &a),
                P::Raw(v) => v,
            });
            let mut m = Map::new();
            m.insert("jsonrpc".into(), json!(if v2 { "2.0" } else { "1.0" }));
            id.map(|id| m.insert("id".into(), id));
            m.insert("method".into(), json!(method));
            params.map(|p| m.insert("params".into(), p));
            Value::Object(m).to_string()
        })
}

fn dispatcher() -> &'static Dispatcher {
    static D: OnceLock<Dispatcher> = OnceLock::new();
    D.get_or_init(Dispatcher::new)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn admin_answers_are_json_rpc_with_the_request_id(reqs in prop::collection::vec(request(), 1..4)) {
        for r in &reqs {
            dispatcher().call(r);
        }
    }

    #[test]
    fn admin_streams_with_damage_dispatch_without_panic(
        reqs in prop::collection::vec(request(), 1..4),
        damage in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = reqs.concat().into_bytes();
        for (at, b) in damage {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let mut buf = bytes.as_slice();
        while let Frame::Value(r) = next_frame(buf, 1 << 20) {
            if let Ok(text) = std::str::from_utf8(&buf[r.clone()]) {
                dispatcher().call(text);
            }
            buf = &buf[r.end..];
        }
    }
}
