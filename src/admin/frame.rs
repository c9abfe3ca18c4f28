//! Geth's IPC framing: requests are JSON values back to back on the stream, a newline
//! between them optional. [`next_frame`] says what the front of a read buffer holds, so
//! the reader can cut complete values off it, wait for more bytes, or give up.

use std::ops::Range;

use serde_json::value::RawValue;

/// What the front of the read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete value at this range.
    Value(Range<usize>),
    /// Only whitespace, or the start of a value.
    Incomplete,
    /// Not JSON.
    Invalid,
    /// A value (complete or not) longer than the limit.
    TooLarge,
}

/// The first JSON value in `buf` after any whitespace, with `max` bytes the most a value
/// may take.
///
/// A read can end anywhere, so a number cut at the end of the buffer is waited on, not
/// refused or taken: `-`, `0.` and `1e` are prefixes of numbers, and `12` may be the
/// start of `123`.
pub fn next_frame(buf: &[u8], max: usize) -> Frame {
    let Some(start) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Frame::Incomplete;
    };
    let value = &buf[start..];
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<&RawValue>();
    match values.next() {
        None => Frame::Incomplete,
        Some(Ok(_)) if values.byte_offset() > max => Frame::TooLarge,
        Some(Ok(_)) if values.byte_offset() == value.len() && is_number_start(value[0]) => Frame::Incomplete,
        Some(Ok(_)) => Frame::Value(start..start + values.byte_offset()),
        Some(Err(e)) if (e.is_eof() || ends_in_cut_number(value)) && value.len() > max => Frame::TooLarge,
        Some(Err(e)) if e.is_eof() || ends_in_cut_number(value) => Frame::Incomplete,
        Some(Err(_)) => Frame::Invalid,
    }
}

fn is_number_start(b: u8) -> bool {
    b == b'-' || b.is_ascii_digit()
}

/// True when `value` fails only because it ends inside a number (`[1, -`, `{"a": 0.`,
/// `2e+`), which serde_json reports as a bad number rather than as the end of input:
/// with one more digit it parses, or runs out of input. An error anywhere earlier
/// stays an error whatever follows.
fn ends_in_cut_number(value: &[u8]) -> bool {
    let mut more = Vec::with_capacity(value.len() + 1);
    more.extend_from_slice(value);
    more.push(b'0');
    match serde_json::Deserializer::from_slice(&more)
        .into_iter::<&RawValue>()
        .next()
    {
        Some(Err(e)) => e.is_eof(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzzers: a read ending inside a number (`-`, `0.`, `1e`) was taken
    /// for bad JSON and closed the connection, and one ending after a top-level
    /// number's digits cut `123` into `12` and `3`.
    #[test]
    fn a_read_ending_inside_a_number_waits_for_more() {
        let cut = br#"{"jsonrpc":"2.0","id":1,"method":"budget_setProgress","params":["t",0."#;
        assert_eq!(next_frame(cut, 1024), Frame::Incomplete);
        for prefix in ["-", "0.", "1e", "1e+", "[1, -", r#"{"a": 0."#, "12", " 7"] {
            assert_eq!(next_frame(prefix.as_bytes(), 64), Frame::Incomplete, "{prefix:?}");
        }
        assert_eq!(next_frame(b" \n0.", 0), Frame::TooLarge);
        assert_eq!(next_frame(b"[{},2.", 5), Frame::TooLarge);
        assert_eq!(next_frame(b"123", 2), Frame::TooLarge);
        assert_eq!(next_frame(b"12\n", 64), Frame::Value(0..2));
        assert_eq!(next_frame(b"[1]", 64), Frame::Value(0..3));
        for bad in ["1.x", "[1,-x", "-]", "x", "1.e5"] {
            assert_eq!(next_frame(bad.as_bytes(), 64), Frame::Invalid, "{bad:?}");
        }
    }
}
