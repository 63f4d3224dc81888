//! Chaos testing for Conclave: a fault layer, a seeded chaos runner, and the history checker
//! that judges a run.
//!
//! Writers record every append they start and every answer they get ([`history`]); after
//! the run each member's chain is read from its stopped peer's store ([`store`]) into the
//! model the checks use ([`model`]), and [`checker::check_all`] holds the chains to the
//! history: no acknowledged record lost or doubled, nothing nobody appended, one sequence,
//! each author in order, every chain verifying under the root key.
//!
//! The runs themselves: real `conclave` processes ([`group`]), each peer behind a UDP relay
//! that drops, delays, duplicates, reorders and partitions on command ([`net`]), writers
//! appending to every peer ([`writer`]), and a seeded schedule of faults ([`schedule`])
//! played by [`runner::run_seed`], which the `chaos` binary calls once per seed.
//! docs/TESTING.md tells the whole story.
//!
//! # Layout
//! - [`history`]: [`HistoryEvent`] lines, [`HistoryLog`] (a writer's file) and [`History`]
//!   (every file of a directory folded into [`Append`]s with their [`Outcome`]s).
//! - [`model`]: [`RecordId`], [`BlockInfo`], [`MemberChain`]: a chain as the checks see it,
//!   extracted from real blocks or built by hand.
//! - [`store`]: [`read_peer`] and [`read_store`], a stopped peer's chain.
//! - [`checker`]: one file a check, [`check_all`], [`Report`], [`Violation`], [`Counts`].
//! - [`net`]: the relays and the fault table ([`net::Network`], [`net::Faults`]).
//! - [`group`]: a group of processes behind relays ([`group::Group`]).
//! - [`writer`]: one line at a time to a peer, recorded in a [`HistoryLog`].
//! - [`schedule`]: a seed's episodes of faults.
//! - [`runner`]: one seed, from start to [`runner::SeedReport`].

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
