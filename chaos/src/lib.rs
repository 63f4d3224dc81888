//! Chaos testing for Conclave: the history checker that judges a run.
//!
//! Writers record every append they start and every answer they get ([`history`]); after
//! the run each member's chain is read from its stopped peer's store ([`store`]) into the
//! model the checks use ([`model`]), and [`checker::check_all`] holds the chains to the
//! history: no acknowledged record lost or doubled, nothing nobody appended, one sequence,
//! each author in order, every chain verifying under the root key.
//!
//! # Layout
//! - [`history`]: [`HistoryEvent`] lines, [`HistoryLog`] (a writer's file) and [`History`]
//!   (every file of a directory folded into [`Append`]s with their [`Outcome`]s).
//! - [`model`]: [`RecordId`], [`BlockInfo`], [`MemberChain`]: a chain as the checks see it,
//!   extracted from real blocks or built by hand.
//! - [`store`]: [`read_peer`] and [`read_store`], a stopped peer's chain.
//! - [`checker`]: one file a check, [`check_all`], [`Report`], [`Violation`], [`Counts`].

pub mod checker;
pub mod group;
pub mod history;
pub mod model;
pub mod net;
pub mod runner;
pub mod schedule;
pub mod store;
pub mod writer;

#[cfg(test)]
mod testkit;

pub use checker::{check_all, CheckName, Counts, Report, Violation};
pub use history::{Append, History, HistoryError, HistoryEvent, HistoryLog, Outcome};
pub use model::{BlockInfo, MemberChain, RawChain, RecordId};
pub use store::{read_peer, read_store, ReadChainError};
