//! budgetd keeps AI agents' task budgets honest against the chain.
//!
//! It follows a SpendingHook contract's `SpendRecorded` logs, keeps every on-chain
//! spend per session, and posts each one exactly once into task budgets stored in an
//! embedded redb file. Agents allocate, check, reserve and record spend through the
//! [`budget::Engine`].
//!
//! # Layout
//! - [`budget`]: the engine: budgets, entries, reservations and alerts in redb, with
//!   one writer thread that commits concurrent changes together.
//! - [`chain`]: the watcher: backfill, live following, reconnects, reorg repair.
//! - [`tracker`]: the `OnChainTracker`: per-session on-chain spend not yet posted.
//! - [`reconciler`]: posts confirmed spend from the tracker into the engine, with the
//!   chain cursor in the same transaction.
//! - [`admin`]: the admin socket: JSON-RPC 2.0 over a Unix socket (geth IPC framing)
//!   for agents and operators.
//! - [`config`]: defaults < TOML < `BUDGETD_*` env < flags, validated before anything opens.
//! - [`client`]: a JSON-RPC client for the admin socket; [`ctl`]: `budgetctl`.
//! - [`daemon`]: `budgetd run`, everything wired under one shutdown; [`dev`]: `budgetd dev`.
//! - [`metrics`]: Prometheus gauges and counters, served over HTTP with `/healthz` and
//!   `/readyz`.
#![warn(missing_docs)]

pub mod admin;
pub mod budget;
pub mod chain;
pub mod client;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dev;
pub mod metrics;
pub mod reconciler;
pub mod tracker;
