//! `author_order`: in every member's chain each author's records carry `seq` 1, 2, 3, … in
//! chain order. See the module docs of [`crate::checker`] for the precise guarantee and why
//! a gap is a violation.

use std::collections::HashMap;

use crate::checker::{CheckName, Violation};
use crate::model::MemberChain;

const CHECK: CheckName = CheckName::AuthorOrder;

/// One violation per record that breaks its author's sequence, in each chain.
pub fn check(chains: &[MemberChain]) -> Vec<Violation> {
    let mut out = Vec::new();
    for chain in chains {
        let from_genesis = chain.blocks.first().is_some_and(|b| b.height == 0);
        // author → (the highest seq seen so far, its height)
        let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
        for (height, id) in chain.records() {
            let member = &chain.member;
            let message = match last.get(id.author.as_str()).copied() {
                None if from_genesis && id.seq != 1 => Some(format!(
                    "in {member}'s chain the first record of {} is seq {} at height {height}; \
                     an author's records start at seq 1, so seq 1 to {} are missing",
                    id.author,
                    id.seq,
                    id.seq.saturating_sub(1)
                )),
                None => None,
                Some((prev, at)) if id.seq == prev => Some(format!(
                    "in {member}'s chain {id} at height {height} repeats {id} at height {at}"
                )),
                Some((prev, at)) if id.seq < prev => Some(format!(
                    "in {member}'s chain {id} at height {height} comes after {} seq {prev} at \
                     height {at}: out of order",
                    id.author
                )),
                Some((prev, at)) if id.seq > prev.saturating_add(1) => {
                    let missing = if id.seq - prev == 2 {
                        format!("seq {} is", prev + 1)
                    } else {
                        format!("seq {} to {} are", prev + 1, id.seq - 1)
                    };
                    Some(format!(
                        "in {member}'s chain {id} at height {height} follows {} seq {prev} at \
                         height {at}: {missing} missing",
                        id.author
                    ))
                }
                Some(_) => None,
            };
            out.extend(message.map(|m| Violation::new(CHECK, m)));
            let entry = last.entry(id.author.as_str()).or_insert((id.seq, height));
            if id.seq > entry.0 {
                *entry = (id.seq, height);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{block, blocks, correct, messages};

    fn chain_with(extra: &[(&str, u64)]) -> Vec<MemberChain> {
        let mut b = blocks();
        b.push(block(6, 6, extra));
        vec![MemberChain::new("bob", b)]
    }

    #[test]
    fn a_correct_history_passes() {
        let (_, chains) = correct();
        assert_eq!(messages(&check(&chains)), Vec::<String>::new());
        // A chain read from the middle need not start at seq 1.
        let tail = MemberChain::new("late", blocks()[4..].to_vec());
        assert!(check(&[tail]).is_empty());
    }

    #[test]
    fn out_of_order_records_are_named() {
        // Within one block, then across blocks.
        assert_eq!(
            messages(&check(&chain_with(&[("alice", 5), ("alice", 4)]))),
            [
                "in bob's chain alice seq 5 at height 6 follows alice seq 3 at height 4: seq 4 \
                 is missing",
                "in bob's chain alice seq 4 at height 6 comes after alice seq 5 at height 6: \
                 out of order",
            ]
        );
    }

    #[test]
    fn repeats_and_gaps_are_named() {
        assert_eq!(
            messages(&check(&chain_with(&[("bob", 2), ("alice", 7)]))),
            [
                "in bob's chain bob seq 2 at height 6 repeats bob seq 2 at height 5",
                "in bob's chain alice seq 7 at height 6 follows alice seq 3 at height 4: seq 4 \
                 to 6 are missing",
            ]
        );
        assert_eq!(
            messages(&check(&chain_with(&[("carol", 3)]))),
            [
                "in bob's chain the first record of carol is seq 3 at height 6; an author's \
              records start at seq 1, so seq 1 to 2 are missing"
            ]
        );
    }
}
