//! `no_phantoms`: every record in any member's chain was started by a writer, and not only
//! refused. See the module docs of [`crate::checker`] for the precise guarantee.

use std::collections::BTreeMap;

use crate::checker::{started, CheckName, Violation};
use crate::history::History;
use crate::model::{MemberChain, RecordId};

const CHECK: CheckName = CheckName::NoPhantoms;

/// One violation per phantom record, naming every member that holds it and where.
pub fn check(history: &History, chains: &[MemberChain]) -> Vec<Violation> {
    let started = started(history);
    // record → "member (height h)" for each place it is held.
    let mut phantoms: BTreeMap<&RecordId, Vec<String>> = BTreeMap::new();
    for chain in chains {
        for (height, id) in chain.records() {
            if started.get(id) != Some(&true) {
                phantoms
                    .entry(id)
                    .or_default()
                    .push(format!("{} (height {height})", chain.member));
            }
        }
    }
    phantoms
        .into_iter()
        .map(|(id, places)| {
            let why = match started.get(id) {
                None => "no writer started it",
                Some(_) => "its writer was told every append of it was refused",
            };
            Violation::new(
                CHECK,
                format!("{id} is in the chain of {}, but {why}", places.join(", ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{block, blocks, correct, messages};

    #[test]
    fn a_correct_history_passes() {
        let (history, chains) = correct();
        assert_eq!(messages(&check(&history, &chains)), Vec::<String>::new());
    }

    #[test]
    fn a_record_no_writer_started_is_named_with_its_places() {
        let (history, _) = correct();
        let mut b = blocks();
        b.push(block(6, 6, &[("mallory", 1)]));
        let chains = vec![
            MemberChain::new("alice", b.clone()),
            MemberChain::new("bob", b),
        ];
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "mallory seq 1 is in the chain of alice (height 6), bob (height 6), but no writer \
              started it"
            ]
        );
    }

    #[test]
    fn a_record_that_was_only_refused_is_a_phantom() {
        let (history, _) = correct();
        let mut b = blocks();
        b.push(block(6, 6, &[("alice", 4)]));
        let chains = vec![MemberChain::new("carol", b)];
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "alice seq 4 is in the chain of carol (height 6), but its writer was told every \
              append of it was refused"
            ]
        );
    }
}
