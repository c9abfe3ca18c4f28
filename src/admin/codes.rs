//! Wire errors: engine errors keep their stable codes and the seed's messages; the
//! protocol's own errors use the JSON-RPC 2.0 codes.

use jsonrpsee::types::{ErrorCode, ErrorObject, ErrorObjectOwned};
use serde_json::json;

use crate::budget::Error;

/// The request was larger than `max_request_bytes`.
pub const REQUEST_TOO_LARGE: &str = "request too large";

/// An engine error as a JSON-RPC error: `ErrorKind::code()`, the error's own message,
/// and `data.kind` for clients that branch.
pub fn engine_error(e: Error) -> ErrorObjectOwned {
    let kind = e.kind();
    ErrorObject::owned(kind.code(), e.to_string(), Some(json!({ "kind": kind.name() })))
}

/// -32602 with a message saying what is wrong.
pub fn invalid_params(msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(ErrorCode::InvalidParams.code(), msg.into(), None::<()>)
}

/// -32600 with a message.
pub fn invalid_request(msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(ErrorCode::InvalidRequest.code(), msg.into(), None::<()>)
}

/// -32700.
pub fn parse_error() -> ErrorObjectOwned {
    ErrorCode::ParseError.into()
}
