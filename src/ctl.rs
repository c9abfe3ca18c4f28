//! `budgetctl`: the admin socket from a shell.
//!
//! One subcommand per admin method (`budgetctl budget get task-1`, `budgetctl sync
//! status`, `budgetctl watch alerts`), human tables by default and `--json` for
//! scripts, amounts in base units (`--usdc` shows USDC budgets as decimals).
//!
//! Exit codes: 0 done; 1 budgetd refused (budget exceeded, not found, closed, ...: the
//! message and code are printed) or the audit found drift; 2 usage; 3 budgetd
//! unreachable; 4 a broken answer.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use num_bigint::BigInt;
use serde_json::{Value, json};

use crate::budget::amount::format_decimal;
use crate::client::{Client, ClientError};

/// budgetctl: talk to a running budgetd over its admin socket.
#[derive(Debug, Parser)]
#[command(
    name = "budgetctl",
    version,
    after_help = "Exit codes: 0 ok, 1 refused by budgetd or audit drift, 2 usage, 3 budgetd unreachable, 4 bad answer."
)]
pub struct Cli {
    /// The admin socket.
    #[arg(
        long,
        env = "BUDGETD_SOCKET",
        default_value = "/run/budgetd/admin.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show amounts of USDC budgets as decimals (10.50) instead of base units.
    #[arg(long, global = true)]
    pub usdc: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Budgets: allocate, check, reserve, record, ...
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// On-chain spend per session.
    #[command(subcommand)]
    Tracker(TrackerCmd),
    /// Bind sessions (account, session key) to tasks.
    #[command(subcommand)]
    Session(SessionCmd),
    /// On-chain limits.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Chain sync.
    #[command(subcommand)]
    Sync(SyncCmd),
    /// Compare the books with the contract's getSpendState, per session; exit 1 on drift.
    Audit,
    /// Follow notifications.
    #[command(subcommand)]
    Watch(WatchCmd),
    /// Any method with raw JSON params: `budgetctl rpc budget_get '"task-1"'`.
    Rpc {
        /// The method.
        method: String,
        /// Each param as a JSON value.
        params: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BudgetCmd {
    /// Create a budget (the default total and unit when left out).
    Allocate {
        task: String,
        #[arg(long)]
        total: Option<String>,
        #[arg(long)]
        unit: Option<String>,
    },
    /// May AMOUNT be spent? Exit 0 yes, 1 no.
    Check {
        task: String,
        amount: String,
        #[arg(long)]
        peer: Option<String>,
    },
    /// Hold AMOUNT; prints the reservation id.
    Reserve {
        task: String,
        amount: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Let a reservation go (idempotent).
    Release { id: String },
    /// Record a spend.
    Record(RecordArgs),
    /// Set progress (0..1).
    Progress { task: String, progress: f64 },
    /// Spent per minute.
    BurnRate { task: String },
    /// Close a budget and print its report.
    Close { task: String },
    /// Show a budget.
    Get { task: String },
    /// List budgets.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// A task's entries.
    Entries {
        task: String,
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct RecordArgs {
    task: String,
    amount: String,
    /// Idempotency key (a retry with the same id records once).
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    peer: Option<String>,
    /// Consume this reservation.
    #[arg(long)]
    reservation: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TrackerCmd {
    /// A session's spend: confirmed, pending (unconfirmed), unbound.
    Spent { account: String, session_key: String },
    /// Every session seen on chain.
    Sessions,
}

#[derive(Debug, Subcommand)]
enum SessionCmd {
    /// Send a session's spend to TASK.
    Bind {
        account: String,
        session_key: String,
        task: String,
        #[arg(long)]
        peer: Option<String>,
    },
    /// Remove a binding.
    Unbind { account: String, session_key: String },
}

#[derive(Debug, Subcommand)]
enum ChainCmd {
    /// LimitsUpdated per account.
    Limits { account: Option<String> },
}

#[derive(Debug, Subcommand)]
enum SyncCmd {
    /// Head, synced and confirmed block, lag, reorgs.
    Status,
}

#[derive(Debug, Subcommand)]
enum WatchCmd {
    /// Print alerts and exhaustions as they happen (Ctrl-C to stop).
    Alerts,
}

/// Exit codes.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// budgetd refused.
    pub const REFUSED: i32 = 1;
    /// Usage.
    pub const USAGE: i32 = 2;
    /// budgetd unreachable.
    pub const UNREACHABLE: i32 = 3;
    /// Broken answer.
    pub const BROKEN: i32 = 4;
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

impl Command {
    /// The method and its positional params.
    fn request(self) -> Result<(String, Value), String> {
        use BudgetCmd as B;
        Ok(match self {
            Command::Budget(B::Allocate { task, total, unit }) => {
                ("budget_allocate".into(), json!([task, opt(total), opt(unit)]))
            }
            Command::Budget(B::Check { task, amount, peer }) => {
                ("budget_check".into(), json!([task, amount, opt(peer)]))
            }
            Command::Budget(B::Reserve { task, amount, ttl }) => {
                ("budget_reserve".into(), json!([task, amount, opt(ttl)]))
            }
            Command::Budget(B::Release { id }) => ("budget_release".into(), json!([id])),
            Command::Budget(B::Record(r)) => {
                let entry = json!({
                    "id": r.id.unwrap_or_default(),
                    "amount": r.amount,
                    "toolName": r.tool.unwrap_or_default(),
                    "reason": r.reason.unwrap_or_default(),
                    "peerDid": r.peer.unwrap_or_default(),
                });
                ("budget_record".into(), json!([r.task, entry, opt(r.reservation)]))
            }
            Command::Budget(B::Progress { task, progress }) => {
                ("budget_setProgress".into(), json!([task, progress]))
            }
            Command::Budget(B::BurnRate { task }) => ("budget_burnRate".into(), json!([task])),
            Command::Budget(B::Close { task }) => ("budget_close".into(), json!([task])),
            Command::Budget(B::Get { task }) => ("budget_get".into(), json!([task])),
            Command::Budget(B::List { status, after, limit }) => {
                ("budget_list".into(), json!([opt(status), opt(after), opt(limit)]))
            }
            Command::Budget(B::Entries { task, after, limit }) => {
                ("budget_entries".into(), json!([task, opt(after), opt(limit)]))
            }
            Command::Tracker(TrackerCmd::Spent { account, session_key }) => {
                ("tracker_getSpent".into(), json!([account, session_key]))
            }
            Command::Tracker(TrackerCmd::Sessions) => ("tracker_sessions".into(), json!([])),
            Command::Session(SessionCmd::Bind {
                account,
                session_key,
                task,
                peer,
            }) => (
                "session_bind".into(),
                json!([account, session_key, task, opt(peer)]),
            ),
            Command::Session(SessionCmd::Unbind { account, session_key }) => {
                ("session_unbind".into(), json!([account, session_key]))
            }
            Command::Chain(ChainCmd::Limits { account }) => ("chain_limits".into(), json!([opt(account)])),
            Command::Sync(SyncCmd::Status) => ("sync_status".into(), json!([])),
            Command::Audit => ("chain_audit".into(), json!([])),
            Command::Watch(WatchCmd::Alerts) => ("budget_subscribe".into(), json!([])),
            Command::Rpc { method, params } => {
                let params = params
                    .iter()
                    .map(|p| serde_json::from_str(p).map_err(|e| format!("param `{p}` is not JSON: {e}")))
                    .collect::<Result<Vec<Value>, _>>()?;
                (method, Value::Array(params))
            }
        })
    }
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let watch = matches!(cli.command, Command::Watch(_));
    let audit = matches!(cli.command, Command::Audit);
    let (method, params) = match cli.command.request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("budgetctl: {e}");
            return exit::USAGE;
        }
    };
    let mut client = match Client::connect(&cli.socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("budgetctl: {e}");
            return exit::UNREACHABLE;
        }
    };
    let result = match client.call(&method, params).await {
        Ok(r) => r,
        Err(e) => return report(&e),
    };
    if watch {
        return follow(&mut client, cli.json).await;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    } else if audit {
        print!("{}", render(&result["sessions"], false));
        println!(
            "block {}: {} session(s) drifting",
            result["block"], result["drifting"]
        );
    } else {
        print!("{}", render(&result, cli.usdc));
    }
    if audit && result["drifting"].as_u64() != Some(0) {
        return exit::REFUSED;
    }
    exit::OK
}

fn report(e: &ClientError) -> i32 {
    eprintln!("budgetctl: {e}");
    match e {
        ClientError::Rpc { .. } => exit::REFUSED,
        ClientError::Connect { .. } => exit::UNREACHABLE,
        ClientError::Io(_) => exit::BROKEN,
    }
}

async fn follow(client: &mut Client, json: bool) -> i32 {
    loop {
        let msg = tokio::select! {
            m = client.next_message() => m,
            _ = tokio::signal::ctrl_c() => return exit::OK,
        };
        match msg {
            Ok(m) => {
                let event = &m["params"]["result"];
                if json {
                    println!("{event}");
                } else {
                    match event["kind"].as_str() {
                        Some("alert") => println!(
                            "alert      {}  crossed {:.0}%",
                            event["taskId"].as_str().unwrap_or("?"),
                            event["threshold"].as_f64().unwrap_or(0.0) * 100.0
                        ),
                        Some("exhausted") => {
                            println!("exhausted  {}", event["taskId"].as_str().unwrap_or("?"))
                        }
                        _ => println!("{event}"),
                    }
                }
            }
            Err(e) => return report(&e),
        }
    }
}

/// Renders a result as aligned text: a table for lists of objects, `key  value` lines
/// for an object, the value itself otherwise.
pub fn render(v: &Value, usdc: bool) -> String {
    let items = v.get("items").and_then(Value::as_array).or_else(|| v.as_array());
    match items {
        Some(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => table(rows, usdc),
        Some(rows) if rows.is_empty() => "(none)\n".into(),
        _ => match v.as_object() {
            Some(obj) => {
                let width = obj.keys().map(String::len).max().unwrap_or(0);
                obj.iter()
                    .map(|(k, val)| format!("{k:width$}  {}\n", cell(k, val, v, usdc)))
                    .collect()
            }
            None => format!("{}\n", plain(v)),
        },
    }
}

fn table(rows: &[Value], usdc: bool) -> String {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for (k, val) in r.as_object().into_iter().flatten() {
            if !val.is_object() && !val.is_array() && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(c, &r[c], r, usdc)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| -> String {
        let mut s = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        out += &line(r);
    }
    out
}

const MONEY: &[&str] = &[
    "totalBudget",
    "spent",
    "reserved",
    "remaining",
    "amount",
    "totalSpent",
    "burnRate",
];

fn cell(key: &str, val: &Value, row: &Value, usdc: bool) -> String {
    let is_usdc = row.get("unit").and_then(Value::as_str) == Some("usdc");
    if usdc
        && is_usdc
        && MONEY.contains(&key)
        && let Some(n) = val.as_str().and_then(|s| s.parse::<BigInt>().ok())
    {
        return format_decimal(&n, 6);
    }
    plain(val)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_usdc_display() {
        let list = json!({"items": [
            {"taskId": "a", "unit": "usdc", "spent": "1500000", "status": "active"},
            {"taskId": "bb", "unit": "wei", "spent": "7", "status": "exhausted"}
        ], "next": null});
        let out = render(&list, true);
        assert_eq!(
            out,
            "TASKID  UNIT  SPENT  STATUS\na       usdc  1.50   active\nbb      wei   7      exhausted\n"
        );
        assert!(render(&list, false).contains("1500000"));
        assert_eq!(render(&json!({"released": true}), false), "released  true\n");
        assert_eq!(render(&json!({"items": [], "next": null}), false), "(none)\n");
    }

    #[test]
    fn commands_map_to_methods() {
        let cli = Cli::try_parse_from(["budgetctl", "budget", "record", "t", "5", "--id", "x"]).unwrap();
        let (m, p) = cli.command.request().unwrap();
        assert_eq!(m, "budget_record");
        assert_eq!(p[1]["id"], "x");
        let cli = Cli::try_parse_from(["budgetctl", "budget", "list", "--status", "active"]).unwrap();
        assert_eq!(
            cli.command.request().unwrap(),
            ("budget_list".into(), json!(["active", null, null]))
        );
        let cli = Cli::try_parse_from(["budgetctl", "rpc", "budget_get", "\"t\""]).unwrap();
        assert_eq!(
            cli.command.request().unwrap(),
            ("budget_get".into(), json!(["t"]))
        );
    }
}
