//! Admin requests through the real method table over a real engine: raw bytes cut
//! into frames as the server cuts them, or structured requests naming real methods
//! with params of the shapes they take. Every answer must be JSON-RPC 2.0 with the
//! request's id and exactly one of result/error.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use budgetd::admin::frame::{Frame, next_frame};
use budgetd_fuzz::input::Request;
use budgetd_fuzz::props::dispatch::Dispatcher;
use libfuzzer_sys::fuzz_target;

/// The server's default `max_request_bytes`.
const MAX_REQUEST: usize = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Requests(Vec<Request>),
    Raw(&'a [u8]),
}

fn dispatcher() -> &'static Dispatcher {
    static D: OnceLock<Dispatcher> = OnceLock::new();
    D.get_or_init(Dispatcher::new)
}

fuzz_target!(|input: Input<'_>| {
    let d = dispatcher();
    match input {
        Input::Requests(reqs) => {
            for r in &reqs {
                d.call(&r.to_text());
            }
        }
        Input::Raw(mut buf) => {
            while let Frame::Value(r) = next_frame(buf, MAX_REQUEST) {
                if let Ok(text) = std::str::from_utf8(&buf[r.clone()]) {
                    d.call(text);
                }
                buf = &buf[r.end..];
            }
        }
    }
});
