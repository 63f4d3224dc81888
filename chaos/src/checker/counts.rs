//! The numbers a report gives besides its violations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::checker::common_prefix::first_difference;
use crate::checker::{acknowledged, agreed, occurrences, started};
use crate::history::{History, Outcome};
use crate::model::MemberChain;

/// What a run amounted to. Records are counted by `(author, seq)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Appends started (one record may have several: retries, reused sequence numbers).
    pub appends: usize,
    /// Records with an acknowledged append.
    pub acknowledged: usize,
    /// Records every append of which was refused.
    pub refused: usize,
    /// Records neither acknowledged nor only refused: their writer never learned the outcome.
    pub indeterminate: usize,
    /// The member whose chain is the agreed one (the longest), if any chain was read.
    pub agreed_member: Option<String>,
    /// Records in the agreed chain.
    pub records_in_chain: usize,
    /// Acknowledged records found in the agreed chain.
    pub found: usize,
    /// Acknowledged records not in the agreed chain.
    pub lost: usize,
    /// Records in the agreed chain more than once.
    pub duplicated: usize,
    /// Indeterminate records that made it into the agreed chain.
    pub indeterminate_committed: usize,
    /// Records in some chain that no writer appended, or that were only refused.
    pub phantoms: usize,
    /// Members whose chain holds a different block than the agreed chain at some height.
    pub divergent_chains: usize,
    /// Each member's head height; `None` for an empty chain.
    pub heads: BTreeMap<String, Option<u64>>,
}

impl Counts {
    pub fn of(history: &History, chains: &[MemberChain]) -> Self {
        let acked = acknowledged(history);
        let started = started(history);
        let refused = started
            .values()
            .filter(|some_not_refused| !**some_not_refused);
        let mut counts = Counts {
            appends: history.appends.len(),
            acknowledged: acked.len(),
            refused: refused.count(),
            heads: chains
                .iter()
                .map(|c| (c.member.clone(), c.head()))
                .collect(),
            ..Counts::default()
        };
        counts.indeterminate = started.len() - counts.acknowledged - counts.refused;
        let phantoms: BTreeSet<_> = chains
            .iter()
            .flat_map(|c| c.records().map(|(_, id)| id))
            .filter(|id| started.get(id) != Some(&true))
            .collect();
        counts.phantoms = phantoms.len();
        let Some(agreed) = agreed(chains) else {
            counts.lost = acked.len();
            return counts;
        };
        counts.agreed_member = Some(agreed.member.clone());
        let found = occurrences(agreed);
        counts.records_in_chain = found.values().map(Vec::len).sum();
        counts.found = acked.keys().filter(|id| found.contains_key(*id)).count();
        counts.lost = acked.len() - counts.found;
        counts.duplicated = found.values().filter(|h| h.len() > 1).count();
        counts.indeterminate_committed = history
            .appends
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Indeterminate { .. }))
            .map(|a| &a.record)
            .filter(|id| !acked.contains_key(id) && started.get(id) == Some(&true))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|id| found.contains_key(id))
            .count();
        counts.divergent_chains = chains
            .iter()
            .filter(|c| first_difference(agreed, c).is_some())
            .count();
        counts
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "appends {}: records acknowledged {}, refused {}, indeterminate {} ({} committed)",
            self.appends,
            self.acknowledged,
            self.refused,
            self.indeterminate,
            self.indeterminate_committed
        )?;
        writeln!(
            f,
            "agreed chain: {} with {} records; found {}, lost {}, duplicated {}, phantoms {}",
            self.agreed_member.as_deref().unwrap_or("none"),
            self.records_in_chain,
            self.found,
            self.lost,
            self.duplicated,
            self.phantoms
        )?;
        let heads: Vec<String> = self
            .heads
            .iter()
            .map(|(m, h)| match h {
                Some(h) => format!("{m} {h}"),
                None => format!("{m} empty"),
            })
            .collect();
        write!(
            f,
            "heads: {}; divergent chains {}",
            heads.join(", "),
            self.divergent_chains
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{acked, block, blocks, correct};

    #[test]
    fn a_correct_run_is_counted() {
        let (history, chains) = correct();
        let c = Counts::of(&history, &chains);
        assert_eq!(
            (c.appends, c.acknowledged, c.refused, c.indeterminate),
            (9, 4, 1, 2)
        );
        assert_eq!(c.agreed_member.as_deref(), Some("alice"));
        assert_eq!(
            (c.records_in_chain, c.found, c.lost, c.duplicated),
            (5, 4, 0, 0)
        );
        assert_eq!(
            (c.indeterminate_committed, c.phantoms, c.divergent_chains),
            (1, 0, 0)
        );
        assert_eq!(c.heads["carol"], Some(3));
    }

    #[test]
    fn a_broken_run_is_counted() {
        let (mut history, mut chains) = correct();
        history.appends.push(acked("bob", 9, 9));
        let mut forked = blocks();
        forked[5] = block(5, 0xf5, &[("bob", 2), ("bob", 2), ("eve", 1)]);
        chains[0] = MemberChain::new("alice", forked);
        let c = Counts::of(&history, &chains);
        assert_eq!(
            (c.lost, c.duplicated, c.phantoms, c.divergent_chains),
            (1, 1, 1, 1)
        );
        assert!(c.to_string().contains("lost 1, duplicated 1"), "{c}");
    }
}
