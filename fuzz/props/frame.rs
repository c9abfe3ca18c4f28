//! The admin socket's framing ([`next_frame`]): never panics, cuts the same values off
//! a stream however it arrives, refuses values over the limit, and stops at garbage.

use budgetd::admin::frame::{Frame, next_frame};
use serde_json::Value;
use serde_json::value::RawValue;

/// Whitespace that may follow a value; `""` only where the value ends itself.
pub const SEPARATORS: [&str; 6] = ["", " ", "\n", "\r\n", "\t", " \n\n"];

/// Any bytes, any limit: no panic, and a `Value` is a single JSON value within the
/// limit, after nothing but whitespace.
pub fn check_any(buf: &[u8], max: usize) {
    if let Frame::Value(r) = next_frame(buf, max) {
        assert!(
            r.start < r.end && r.end <= buf.len(),
            "{r:?} outside {} bytes",
            buf.len()
        );
        assert!(r.len() <= max, "{r:?} over the limit {max}");
        assert!(
            buf[..r.start].iter().all(u8::is_ascii_whitespace),
            "{r:?} skips non-whitespace"
        );
        // By the grammar, not by `Value`: `1E571` is JSON though no f64 holds it.
        let v = serde_json::from_slice::<Box<RawValue>>(&buf[r.clone()]);
        assert!(v.is_ok(), "{r:?} of {buf:?} is not one JSON value");
    }
}

fn texts(values: &[Value]) -> Vec<String> {
    values.iter().map(Value::to_string).collect()
}

/// `values` written back to back, each followed by `SEPARATORS[seps[i] % 6]`; a scalar
/// (number, `true`, `false`, `null`) always gets at least a newline, since `12` `3`
/// written together read as `123`.
pub fn stream(values: &[Value], seps: &[u8]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        out.push_str(&v.to_string());
        let sep = SEPARATORS[seps.get(i).copied().unwrap_or(0) as usize % SEPARATORS.len()];
        let self_ending = matches!(v, Value::Object(_) | Value::Array(_) | Value::String(_));
        out.push_str(if sep.is_empty() && !self_ending { "\n" } else { sep });
    }
    out
}

/// A reader loop like the server's: append each chunk, cut complete values off the
/// front. Returns the values' text and what is left, or the frame that stopped it.
pub fn read_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> (Vec<String>, Vec<u8>, Option<Frame>) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match next_frame(&buf, max) {
                Frame::Value(r) => {
                    let text = String::from_utf8_lossy(&buf[r.clone()]).into_owned();
                    let parsed = serde_json::from_str::<Box<RawValue>>(&text);
                    assert!(parsed.is_ok(), "frame {r:?} of {buf:?} is not one JSON value");
                    out.push(text);
                    buf.drain(..r.end);
                }
                Frame::Incomplete => break,
                stop => return (out, buf, Some(stop)),
            }
        }
    }
    (out, buf, None)
}

/// The stream of `values`, whole and cut at `cuts` (byte offsets, taken modulo its
/// length): both readings give back exactly the text of `values`, with only whitespace
/// left over.
pub fn check_stream(values: &[Value], seps: &[u8], cuts: &[usize]) {
    let text = stream(values, seps);
    let values = texts(values);
    let bytes = text.as_bytes();
    let max = bytes.len().max(1);
    let (whole, rest, stop) = read_chunks([bytes], max);
    assert_eq!(stop, None, "{text:?}");
    assert_eq!(whole, values, "{text:?} read whole");
    assert!(rest.iter().all(u8::is_ascii_whitespace), "{text:?} left {rest:?}");

    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.extend([0, bytes.len()]);
    at.sort_unstable();
    at.dedup();
    let chunks = at.windows(2).map(|w| &bytes[w[0]..w[1]]);
    let (cut, rest, stop) = read_chunks(chunks, max);
    assert_eq!(stop, None, "{text:?} cut at {at:?}");
    assert_eq!(cut, values, "{text:?} cut at {at:?}");
    assert!(
        rest.iter().all(u8::is_ascii_whitespace),
        "{text:?} cut at {at:?} left {rest:?}"
    );
}

/// A value longer than `max` (taken modulo its length) is `TooLarge`, and so is any
/// prefix of it longer than `max`, complete or not.
pub fn check_too_large(value: &Value, max: usize) {
    let text = value.to_string();
    let max = max % text.len();
    assert_eq!(
        next_frame(text.as_bytes(), max),
        Frame::TooLarge,
        "{text:?} over {max}"
    );
    let len = text.len();
    for end in [max + 1, (max + 1 + len) / 2, len - 1, len] {
        if end > max && text.is_char_boundary(end) {
            let prefix = format!(" \n{}", &text[..end]);
            assert_eq!(
                next_frame(prefix.as_bytes(), max),
                Frame::TooLarge,
                "{prefix:?} over {max}"
            );
        }
    }
}

/// Bytes that can neither start a JSON value nor be whitespace.
pub fn is_garbage_start(b: u8) -> bool {
    !b.is_ascii_whitespace() && !b"{[\"-0123456789tfn".contains(&b)
}

/// Good values, then garbage (`garbage[0]` must pass [`is_garbage_start`]), then
/// anything: the reader yields the good values, then `Invalid`, and nothing past it.
pub fn check_garbage(values: &[Value], seps: &[u8], garbage: &[u8], after: &[u8]) {
    assert!(garbage.first().is_some_and(|&b| is_garbage_start(b)));
    let mut bytes = stream(values, seps).into_bytes();
    bytes.extend_from_slice(garbage);
    bytes.extend_from_slice(after);
    let (got, rest, stop) = read_chunks([bytes.as_slice()], bytes.len());
    assert_eq!(got, texts(values), "{bytes:?}");
    assert_eq!(stop, Some(Frame::Invalid), "{bytes:?} left {rest:?}");
}
