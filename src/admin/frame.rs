//! Geth's IPC framing: requests are JSON values back to back on the stream, a newline
//! between them optional. [`next_frame`] says what the front of a read buffer holds, so
//! the reader can cut complete values off it, wait for more bytes, or give up.

use std::ops::Range;

use serde_json::value::RawValue;

/// What the front of the read buffer holds.
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
pub fn next_frame(buf: &[u8], max: usize) -> Frame {
    let Some(start) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Frame::Incomplete;
    };
    let mut values = serde_json::Deserializer::from_slice(&buf[start..]).into_iter::<&RawValue>();
    match values.next() {
        None => Frame::Incomplete,
        Some(Ok(_)) if values.byte_offset() > max => Frame::TooLarge,
        Some(Ok(_)) => Frame::Value(start..start + values.byte_offset()),
        Some(Err(e)) if e.is_eof() && buf.len() - start > max => Frame::TooLarge,
        Some(Err(e)) if e.is_eof() => Frame::Incomplete,
        Some(Err(_)) => Frame::Invalid,
    }
}
