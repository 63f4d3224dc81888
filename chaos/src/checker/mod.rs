//! The history checker: after a run, holds the members' chains to what the writers were told.
//!
//! The inputs are a [`History`] (every append a writer started, and its outcome) and every
//! member's chain as a [`MemberChain`] (each block's height, content hash and records named
//! by `(author, seq)`, with the blocks themselves for verification). [`check_all`] runs
//! every check and returns a [`Report`]: each violation with the name of its check, and
//! [`Counts`]. Each check also runs alone, from its own module.
//!
//! A record is identified by `(author, seq)`: the `author` of its `records` block's batch
//! and the record's own `seq`. An `(author, seq)` is *acknowledged* if any append of it was
//! acknowledged, *refused-only* if every append of it was refused, *indeterminate*
//! otherwise (the writer died or gave up before an answer).
//!
//! The **agreed chain** is the longest member chain (ties go to the member whose name sorts
//! first). When `common_prefix` passes, every member's chain is a prefix of it, so what
//! `acknowledged_once` finds of the agreed chain holds for each member up to its own head.
//!
//! # What each check guarantees when it passes
//! - `acknowledged_once`: every acknowledged `(author, seq)` is in the agreed chain exactly
//!   once; if an acknowledgement named a height, the record is in the block at that height
//!   (this holds for duplicate acknowledgements too: a resent batch is answered with the
//!   height of the block that took it the first time, and since a batch is resent unchanged,
//!   that block holds every record of it; a mismatch means the acknowledgement vouched for a
//!   block that does not hold the record). And no `(author, seq)` whatever its outcome,
//!   indeterminate ones included, is in the agreed chain more than once.
//! - `no_phantoms`: every `(author, seq)` in any member's chain was started by some writer,
//!   and is not refused-only: nothing is in a chain that no writer appended, or that its
//!   writer was told the chain did not take.
//! - `common_prefix`: any two members hold the same block (by the hash of its content,
//!   recomputed, not the hash stored with it) at every height both hold. With dense chains
//!   from height 0 this is: all chains are prefixes of one sequence. A violation names both
//!   members and the first height where they differ.
//! - `author_order`: in every member's chain, each author's records carry `seq` 1, 2, 3, …
//!   in chain order (within a block, in the batch's order): each record's `seq` is exactly
//!   one more than the previous record of the same author in that chain, and an author's
//!   first record is `seq` 1 when the chain starts at height 0. So no record is repeated,
//!   reordered, or skipped, acknowledged or not. Gaps are violations because the protocol
//!   leaves none: a refused batch's sequence numbers are given back and reused, and the
//!   chain's rules refuse a batch that does not start at the author's next `seq`.
//! - `chains_verify`: every member's chain, as read from its store, passes
//!   `conclave_shared::chain::verify_chain` with the root public key alone (stored hashes,
//!   links, heights, signatures, certificates, sequence numbers, epochs, checkpoints). A
//!   chain that could not be read to its end fails at the first unreadable height; an empty
//!   chain, or one built by hand without its blocks, fails too.
//!
//! # What is not checked
//! - A member that lags (its chain a strict prefix of the agreed chain) is not a violation;
//!   [`Counts::heads`] shows how far each member got.
//! - An indeterminate record may be absent; it may be present at most once.
//! - Real-time order between different authors (an append acknowledged before another
//!   started comes first in the chain) is not checked.

pub mod acknowledged_once;
pub mod author_order;
pub mod chains_verify;
pub mod common_prefix;
mod counts;
pub mod no_phantoms;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use conclave_shared::identity::PublicKey;
use serde::Serialize;

use crate::history::{Append, History};
use crate::model::{MemberChain, RecordId};

pub use counts::Counts;

/// The most violations a report keeps per check; the rest are counted in one last message.
pub const MAX_VIOLATIONS_PER_CHECK: usize = 100;

/// The checks, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    AcknowledgedOnce,
    NoPhantoms,
    CommonPrefix,
    AuthorOrder,
    ChainsVerify,
}

impl CheckName {
    pub const ALL: [CheckName; 5] = [
        CheckName::AcknowledgedOnce,
        CheckName::NoPhantoms,
        CheckName::CommonPrefix,
        CheckName::AuthorOrder,
        CheckName::ChainsVerify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::AcknowledgedOnce => "acknowledged_once",
            CheckName::NoPhantoms => "no_phantoms",
            CheckName::CommonPrefix => "common_prefix",
            CheckName::AuthorOrder => "author_order",
            CheckName::ChainsVerify => "chains_verify",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub check: CheckName,
    pub message: String,
}

impl Violation {
    pub(crate) fn new(check: CheckName, message: impl Into<String>) -> Self {
        Self {
            check,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// What a check run found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every violation, grouped by check in [`CheckName::ALL`] order.
    pub violations: Vec<Violation>,
    pub counts: Counts,
}

impl Report {
    /// True when no check found anything wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations one check found.
    pub fn of(&self, check: CheckName) -> impl Iterator<Item = &Violation> + '_ {
        self.violations.iter().filter(move |v| v.check == check)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.counts)?;
        if self.passed() {
            return write!(f, "all checks passed");
        }
        writeln!(f, "{} violations:", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

/// Runs every check over `history` and the members' `chains`; `root` is the group's root
/// public key, for `chains_verify`.
pub fn check_all(history: &History, chains: &[MemberChain], root: &PublicKey) -> Report {
    let mut violations = Vec::new();
    for check in CheckName::ALL {
        let found = match check {
            CheckName::AcknowledgedOnce => acknowledged_once::check(history, chains),
            CheckName::NoPhantoms => no_phantoms::check(history, chains),
            CheckName::CommonPrefix => common_prefix::check(chains),
            CheckName::AuthorOrder => author_order::check(chains),
            CheckName::ChainsVerify => chains_verify::check(root, chains),
        };
        violations.extend(capped(check, found));
    }
    Report {
        violations,
        counts: Counts::of(history, chains),
    }
}

/// Keeps the first [`MAX_VIOLATIONS_PER_CHECK`] and says how many more there were.
fn capped(check: CheckName, mut found: Vec<Violation>) -> Vec<Violation> {
    if found.len() > MAX_VIOLATIONS_PER_CHECK {
        let more = found.len() - MAX_VIOLATIONS_PER_CHECK;
        found.truncate(MAX_VIOLATIONS_PER_CHECK);
        found.push(Violation::new(
            check,
            format!("... and {more} more violations of this check"),
        ));
    }
    found
}

/// The longest chain; ties go to the member whose name sorts first.
pub fn agreed(chains: &[MemberChain]) -> Option<&MemberChain> {
    let len = |c: &MemberChain| c.head().map_or(0, |h| h.saturating_add(1));
    chains
        .iter()
        .fold(None, |best: Option<&MemberChain>, c| match best {
            Some(b) if len(b) > len(c) || (len(b) == len(c) && b.member <= c.member) => Some(b),
            _ => Some(c),
        })
}

/// The acknowledged appends of each acknowledged record.
pub(crate) fn acknowledged(history: &History) -> BTreeMap<&RecordId, Vec<&Append>> {
    let mut out: BTreeMap<&RecordId, Vec<&Append>> = BTreeMap::new();
    for a in history.appends.iter().filter(|a| a.is_acknowledged()) {
        out.entry(&a.record).or_default().push(a);
    }
    out
}

/// Every record of `chain` and the heights it is at.
pub(crate) fn occurrences(chain: &MemberChain) -> BTreeMap<&RecordId, Vec<u64>> {
    let mut out: BTreeMap<&RecordId, Vec<u64>> = BTreeMap::new();
    for (height, id) in chain.records() {
        out.entry(id).or_default().push(height);
    }
    out
}

/// Whether some append of each started record was not refused.
pub(crate) fn started(history: &History) -> BTreeMap<&RecordId, bool> {
    let mut out: BTreeMap<&RecordId, bool> = BTreeMap::new();
    for a in &history.appends {
        *out.entry(&a.record).or_default() |= !a.is_refused();
    }
    out
}

/// `1, 2, 5` for messages.
pub(crate) fn list(heights: &[u64]) -> String {
    heights
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
