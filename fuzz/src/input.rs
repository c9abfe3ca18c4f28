//! Structured fuzz inputs: JSON values and admin requests built from fuzz bytes, so
//! that most inputs get past parsing and into params decoding and the engine.

use arbitrary::Arbitrary;
use serde_json::{Map, Value, json};

use crate::props::dispatch::{Args, METHODS, STATUSES, UNITS, typed_params};

/// Deeper values are cut to `null`: serde_json refuses nesting past 128.
const MAX_DEPTH: usize = 16;

/// Any JSON value.
#[derive(Arbitrary, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value, nesting cut at [`MAX_DEPTH`], non-finite floats as `null`.
    pub fn to_value(&self) -> Value {
        self.value(0)
    }

    fn value(&self, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Uint(u) => json!(u),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => json!(s),
            Json::Array(a) => a.iter().map(|v| v.value(depth + 1)).collect(),
            Json::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.value(depth + 1))).collect())
            }
        }
    }
}

/// A request: mostly well formed, with a method from the real list and params of the
/// shapes the methods take, so that decoding each param is reached.
#[derive(Arbitrary, Debug)]
pub struct Request {
    version: Version,
    id: Id,
    method: Method,
    params: Params,
    extra: Option<(String, Json)>,
}

#[derive(Arbitrary, Debug)]
enum Version {
    Two,
    Missing,
    Other(Json),
}

#[derive(Arbitrary, Debug)]
enum Id {
    Num(u64),
    Str(String),
    Null,
    Missing,
    Other(Json),
}

#[derive(Arbitrary, Debug)]
enum Method {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Params {
    Typed(Box<TypedArgs>),
    Positional(Vec<Param>),
    Missing,
    Named(Vec<(String, Param)>),
    Other(Json),
}

#[derive(Arbitrary, Debug)]
enum Param {
    Task(u8),
    Amount(AmountText),
    Address([u8; 20]),
    Unit(u8),
    Status(u8),
    Entry(Box<Entry>),
    Progress(f64),
    Limit(u16),
    Json(Json),
}

/// Params laid out as the method reads them, so that most calls reach the engine.
#[derive(Arbitrary, Debug)]
struct TypedArgs {
    task: u8,
    amount: AmountText,
    unit: u8,
    account: u8,
    key: u8,
    entry: Entry,
    float: f64,
    number: u16,
    status: u8,
    text: String,
    optional: u8,
}

fn address(bytes: &[u8; 20]) -> Value {
    json!(format!(
        "0x{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

impl TypedArgs {
    fn to_args(&self) -> Args {
        Args {
            task: Param::Task(self.task).to_value(),
            amount: self.amount.to_value(),
            unit: json!(pick(&UNITS, self.unit)),
            // Few accounts and keys, so that binds and unbinds meet.
            account: address(&[self.account % 3; 20]),
            key: address(&[self.key % 3 + 1; 20]),
            entry: self.entry.to_value(),
            float: serde_json::Number::from_f64(self.float).map_or(Value::Null, Value::Number),
            number: json!(self.number),
            status: json!(pick(&STATUSES, self.status)),
            text: json!(self.text),
            optional: usize::from(self.optional % 4),
        }
    }
}

/// An amount as a client might send it, in range or not.
#[derive(Arbitrary, Debug)]
enum AmountText {
    Small(u64),
    Wide([u8; 33]),
    Hex(u128),
    Number(u64),
    Negative(i64),
    Text(String),
}

/// `budget_record`'s entry, fields optional, one unknown field maybe.
#[derive(Arbitrary, Debug)]
struct Entry {
    id: Option<String>,
    amount: Option<AmountText>,
    peer_did: Option<String>,
    tool_name: Option<String>,
    reason: Option<String>,
    timestamp: Option<(u8, String)>,
    unit: Option<u8>,
    extra: Option<(String, Json)>,
}

const TIMES: [&str; 3] = [
    "2024-01-01T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

impl AmountText {
    fn to_value(&self) -> Value {
        match self {
            AmountText::Small(v) => json!(v.to_string()),
            AmountText::Wide(b) => json!(num_bigint::BigUint::from_bytes_be(b).to_string()),
            AmountText::Hex(v) => json!(format!("{v:#x}")),
            AmountText::Number(v) => json!(v),
            AmountText::Negative(v) => json!(v),
            AmountText::Text(s) => json!(s),
        }
    }
}

impl Param {
    fn to_value(&self) -> Value {
        match self {
            // A few tasks, so that calls meet budgets earlier calls made; and one id
            // just over the length limit.
            Param::Task(i) if *i == u8::MAX => json!("t".repeat(budgetd::budget::MAX_TASK_ID + 1)),
            Param::Task(i) if i % 5 == 4 => json!(i % 3),
            Param::Task(i) => json!(format!("t{}", i % 4)),
            Param::Amount(a) => a.to_value(),
            Param::Address(a) => address(a),
            Param::Unit(i) => json!(pick(&UNITS, *i)),
            Param::Status(i) => json!(pick(&STATUSES, *i)),
            Param::Entry(e) => e.to_value(),
            Param::Progress(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Param::Limit(n) => json!(n),
            Param::Json(j) => j.to_value(),
        }
    }
}

impl Entry {
    fn to_value(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("id", self.id.as_ref().map(|s| json!(s)));
        put("amount", self.amount.as_ref().map(AmountText::to_value));
        put("peerDid", self.peer_did.as_ref().map(|s| json!(s)));
        put("toolName", self.tool_name.as_ref().map(|s| json!(s)));
        put("reason", self.reason.as_ref().map(|s| json!(s)));
        put(
            "timestamp",
            self.timestamp
                .as_ref()
                .map(|(i, s)| json!(if *i < 200 { pick(&TIMES, *i) } else { s.as_str() })),
        );
        put("unit", self.unit.map(|i| json!(pick(&UNITS, i))));
        if let Some((k, v)) = &self.extra {
            m.insert(k.clone(), v.to_value());
        }
        Value::Object(m)
    }
}

impl Request {
    /// The request as the JSON text a client would write.
    pub fn to_text(&self) -> String {
        let mut m = Map::new();
        match &self.version {
            Version::Two => {
                m.insert("jsonrpc".into(), json!("2.0"));
            }
            Version::Missing => {}
            Version::Other(j) => {
                m.insert("jsonrpc".into(), j.to_value());
            }
        }
        let id = match &self.id {
            Id::Num(n) => Some(json!(n)),
            Id::Str(s) => Some(json!(s)),
            Id::Null => Some(Value::Null),
            Id::Missing => None,
            Id::Other(j) => Some(j.to_value()),
        };
        if let Some(id) = id {
            m.insert("id".into(), id);
        }
        let method = match &self.method {
            Method::Known(i) => pick(&METHODS, *i),
            Method::Other(s) => s.as_str(),
        };
        m.insert("method".into(), json!(method));
        let params = match &self.params {
            Params::Typed(a) => Some(typed_params(method, &a.to_args())),
            Params::Positional(p) => Some(p.iter().map(Param::to_value).collect()),
            Params::Missing => None,
            Params::Named(p) => Some(Value::Object(
                p.iter().map(|(k, v)| (k.clone(), v.to_value())).collect(),
            )),
            Params::Other(j) => Some(j.to_value()),
        };
        if let Some(p) = params {
            m.insert("params".into(), p);
        }
        if let Some((k, v)) = &self.extra {
            m.insert(k.clone(), v.to_value());
        }
        Value::Object(m).to_string()
    }
}
