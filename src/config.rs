//! Configuration: built-in defaults < TOML file < `BUDGETD_*` environment (nested keys
//! joined with `__`, e.g. `BUDGETD_CHAIN__RPC_URL`) < command-line flags.
//!
//! Loading validates everything that can be checked before a file or socket is
//! opened; an error names the key and the reason. `config/budgetd.example.toml`
//! documents every key with its default.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::admin::AdminConfig;
use crate::budget::EngineConfig;
use crate::chain::ChainConfig;
use crate::metrics::MetricsConfig;

/// Everything `budgetd run` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database lives (`budgets.redb` inside).
    pub data_dir: PathBuf,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// The budget engine.
    pub budget: EngineConfig,
    /// Chain sync; absent = budgets only, no chain.
    pub chain: Option<ChainConfig>,
    /// The admin socket.
    pub admin: AdminConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/budgetd"),
            log_format: LogFormat::Text,
            budget: EngineConfig::default(),
            chain: None,
            admin: AdminConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("budgets.redb")
    }

    /// Loads defaults, then `file` (which must exist when given), then `BUDGETD_*`
    /// variables, then `overrides` (flags, as a partial config), and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the reason.
    pub fn load(file: Option<&Path>, overrides: &serde_json::Value) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} not found", path.display())));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::prefixed("BUDGETD_").split("__").ignore(&["socket"]))
            .merge(Serialized::globals(overrides));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(figment_message(&e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the parts that have rules of their own.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let settings = self.budget.validate().map_err(|e| ConfigError(e.to_string()))?;
        if let Some(chain) = &self.chain {
            chain.validate().map_err(ConfigError)?;
            let unit = chain.valuation.unit();
            settings
                .decimals(unit)
                .map_err(|e| ConfigError(format!("chain.valuation.unit: {e}")))?;
            if chain.auto_allocate && settings.default_max.is_none() {
                return Err(ConfigError(
                    "chain.auto_allocate needs budget.default_max (the budget a new session gets)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// figment's errors, one line each, with the key path.
fn figment_message(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("{key}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("budgetd.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            data_dir = "/from/file"
            [budget]
            default_max = "5.00"
            [chain]
            rpc_url = "ws://127.0.0.1:1"
            hook_addresses = ["0x5FbDB2315678afecb367f032d93F642f64180aa3"]
            confirmations = 2
            "#,
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("BUDGETD_CHAIN__CONFIRMATIONS", "5");
            jail.set_env("BUDGETD_BUDGET__HARD_LIMIT", "false");
            let cfg = Config::load(Some(&file), &json!({"data_dir": "/from/flag"})).unwrap();
            assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"), "flags win");
            let chain = cfg.chain.unwrap();
            assert_eq!(chain.confirmations, Some(5), "env beats the file");
            assert!(!cfg.budget.hard_limit);
            assert_eq!(
                cfg.budget.default_max.as_deref(),
                Some("5.00"),
                "file beats defaults"
            );
            assert_eq!(chain.max_range, 10_000, "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[budget]\ndefault_max = \"1.1234567\"", "budget.default_max"),
            ("[budget]\nalert_thresholds = [2.0]", "budget.alert_thresholds"),
            ("[budget]\nhard_limit = \"maybe\"", "budget.hard_limit"),
            ("unknown_key = 1", "unknown_key"),
            (
                "[chain]\nrpc_url = \"http://x\"\nhook_addresses = [\"0x5FbDB2315678afecb367f032d93F642f64180aa3\"]",
                "chain.rpc_url",
            ),
            ("[chain]\nhook_addresses = [\"0xnope\"]", "chain.hook_addresses"),
        ];
        // In a Jail too: the Jail's lock keeps another test's BUDGETD_* variables out
        // (BUDGETD_BUDGET__HARD_LIMIT would override the bad value below).
        figment::Jail::expect_with(|_| {
            for (text, key) in cases {
                let err = Config::load(Some(&write(&dir, text)), &json!({}))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{text}: {err}");
            }
            let err = Config::load(Some(Path::new("/no/such.toml")), &json!({})).unwrap_err();
            assert!(err.to_string().contains("not found"));
            Ok(())
        });
    }

    #[test]
    fn the_example_config_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/budgetd.example.toml");
        figment::Jail::expect_with(|_| {
            let cfg = Config::load(Some(Path::new(example)), &json!({})).unwrap();
            assert!(cfg.chain.is_some());
            Ok(())
        });
    }
}
