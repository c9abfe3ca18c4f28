//! The properties the fuzz targets and `tests/fuzz_props.rs` check, written once: the
//! fuzz targets reach them through libFuzzer and `arbitrary`, the test through
//! proptest. Each function panics when its property does not hold.

pub mod amount;
pub mod dispatch;
pub mod frame;
