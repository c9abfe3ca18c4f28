//! Fixtures shared by the integration tests.
#![allow(dead_code)]

pub mod anvil;
pub mod proxy;
pub mod sync;

use std::path::PathBuf;

use budgetd::budget::{Engine, EngineBuilder, EngineConfig};
use num_bigint::BigUint;

/// A throwaway directory holding one database file.
pub struct TestDb {
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("budgets.redb")
    }

    /// A builder with `default_max` 10 USDC and otherwise the defaults.
    pub fn builder(&self) -> EngineBuilder {
        Engine::builder(self.path()).config(config())
    }

    pub fn open(&self) -> Engine {
        self.builder().open().expect("open engine")
    }
}

pub fn config() -> EngineConfig {
    EngineConfig {
        default_max: Some("10.00".into()),
        ..Default::default()
    }
}

pub fn n(v: u64) -> BigUint {
    BigUint::from(v)
}
