//! The fuzz targets' shared parts: the properties (in `props/`, shared with
//! `tests/fuzz_props.rs`) and the `arbitrary` inputs that drive them.

#[path = "../props/mod.rs"]
pub mod props;

pub mod input;
