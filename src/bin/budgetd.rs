//! `budgetd`: the daemon. `budgetd run --config FILE` for operators, `budgetd dev` for a
//! local demo chain. See [`budgetd::daemon`] and [`budgetd::dev`].

use std::path::PathBuf;

use budgetd::config::{Config, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "budgetd",
    version,
    about = "Keeps AI agents' task budgets honest against the chain"
)]
struct Cli {
    /// Log line format (overrides `log_format`).
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The TOML config (see config/budgetd.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `admin.socket_path`.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Overrides `metrics.listen`.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Start anvil, deploy a test hook, send demo spends and run the daemon on them.
    Dev,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            data_dir,
            socket,
            metrics_listen,
        } => {
            let mut flags = serde_json::Map::new();
            if let Some(d) = data_dir {
                flags.insert("data_dir".into(), serde_json::json!(d));
            }
            if let Some(s) = socket {
                flags.insert("admin".into(), serde_json::json!({ "socket_path": s }));
            }
            if let Some(m) = metrics_listen {
                flags.insert("metrics".into(), serde_json::json!({ "listen": m }));
            }
            if let Some(f) = cli.log_format {
                flags.insert("log_format".into(), serde_json::to_value(f)?);
            }
            let cfg = match Config::load(config.as_deref(), &serde_json::Value::Object(flags)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("budgetd: {e}");
                    std::process::exit(2);
                }
            };
            budgetd::daemon::init_logging(cfg.log_format);
            budgetd::daemon::run(cfg).await
        }
        Command::Dev => {
            budgetd::daemon::init_logging(cli.log_format.unwrap_or_default());
            budgetd::dev::dev().await
        }
    }
}
