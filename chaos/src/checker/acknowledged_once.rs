//! `acknowledged_once`: every acknowledged record is in the agreed chain exactly once, at the
//! height its acknowledgement named; no record is in it twice. See the module docs of
//! [`crate::checker`] for the precise guarantee.

use crate::checker::{acknowledged, agreed, list, occurrences, CheckName, Violation};
use crate::history::{History, Outcome};
use crate::model::MemberChain;

const CHECK: CheckName = CheckName::AcknowledgedOnce;

pub fn check(history: &History, chains: &[MemberChain]) -> Vec<Violation> {
    let acked = acknowledged(history);
    let Some(agreed) = agreed(chains) else {
        if acked.is_empty() {
            return Vec::new();
        }
        return vec![Violation::new(
            CHECK,
            format!(
                "no member's chain was read, so all {} acknowledged records are lost",
                acked.len()
            ),
        )];
    };
    let name = &agreed.member;
    let head = agreed
        .head()
        .map_or_else(|| "empty".to_owned(), |h| format!("head {h}"));
    let found = occurrences(agreed);
    let mut out = Vec::new();
    for (id, heights) in &found {
        if heights.len() > 1 {
            out.push(Violation::new(
                CHECK,
                format!(
                    "{id} is in the agreed chain ({name}'s) {} times, at heights {}",
                    heights.len(),
                    list(heights)
                ),
            ));
        }
    }
    for (id, appends) in &acked {
        let Some(heights) = found.get(id) else {
            let a = appends[0];
            let at = match a.outcome {
                Outcome::Acknowledged {
                    height: Some(h), ..
                } => format!(" at height {h}"),
                _ => String::new(),
            };
            out.push(Violation::new(
                CHECK,
                format!(
                    "{id} was acknowledged{at} ({}) but is not in the agreed chain ({name}'s, \
                     {head}): an acknowledged record is lost",
                    a.origin
                ),
            ));
            continue;
        };
        for a in appends {
            let Outcome::Acknowledged {
                height: Some(h),
                duplicate,
                ..
            } = a.outcome
            else {
                continue;
            };
            if !heights.contains(&h) {
                let kind = if duplicate {
                    "a duplicate acknowledgement"
                } else {
                    "an acknowledgement"
                };
                out.push(Violation::new(
                    CHECK,
                    format!(
                        "{id} was acknowledged at height {h} ({kind}, {}) but is at height {} \
                         in the agreed chain ({name}'s)",
                        a.origin,
                        list(heights)
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MemberChain;
    use crate::testkit::{acked, acked_again, block, blocks, correct, messages};

    #[test]
    fn a_correct_history_passes() {
        let (history, chains) = correct();
        assert_eq!(messages(&check(&history, &chains)), Vec::<String>::new());
        // Nothing acknowledged and nothing read is not a violation either.
        assert!(check(&History::default(), &[]).is_empty());
    }

    #[test]
    fn a_lost_acknowledged_record_is_named() {
        let (mut history, chains) = correct();
        history.appends.push(acked("bob", 3, 6));
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "bob seq 3 was acknowledged at height 6 (bob.jsonl) but is not in the agreed \
              chain (alice's, head 5): an acknowledged record is lost"
            ]
        );
        assert_eq!(
            messages(&check(&history, &[])),
            ["no member's chain was read, so all 5 acknowledged records are lost"]
        );
    }

    #[test]
    fn a_record_twice_in_the_chain_is_named_with_its_heights() {
        let (history, _) = correct();
        let mut b = blocks();
        b.push(block(6, 6, &[("alice", 1)]));
        // Indeterminate records may be absent, but never present twice.
        b.push(block(7, 7, &[("bob", 2)]));
        let chains = vec![MemberChain::new("alice", b)];
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "alice seq 1 is in the agreed chain (alice's) 2 times, at heights 2, 6",
                "bob seq 2 is in the agreed chain (alice's) 2 times, at heights 5, 7",
            ]
        );
    }

    #[test]
    fn an_acknowledgement_naming_the_wrong_height_is_caught() {
        let (mut history, chains) = correct();
        // A resent batch answered with a block that does not hold this record.
        history.appends.push(acked_again("bob", 1, 4));
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "bob seq 1 was acknowledged at height 4 (a duplicate acknowledgement, \
              bob.jsonl) but is at height 3 in the agreed chain (alice's)"
            ]
        );
    }

    #[test]
    fn only_the_agreed_chain_counts_so_read_every_member() {
        let (history, mut chains) = correct();
        // Carol lags, which is no violation; but if hers is the only chain read, alice's
        // seq 3 is nowhere to be found.
        chains.retain(|c| c.member == "carol");
        assert_eq!(
            messages(&check(&history, &chains)),
            [
                "alice seq 3 was acknowledged at height 4 (alice.jsonl) but is not in the agreed \
              chain (carol's, head 3): an acknowledged record is lost"
            ]
        );
    }
}
