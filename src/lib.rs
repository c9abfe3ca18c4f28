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
//! - [`tracker`]: the `OnChainTracker`: per-session on-chain amounts not yet posted.
#![warn(missing_docs)]

pub mod budget;
pub mod tracker;
