//! `common_prefix`: any two members hold the same block at every height both hold. See the
//! module docs of [`crate::checker`] for the precise guarantee.

use conclave_shared::chain::BlockHash;

use crate::checker::{CheckName, Violation};
use crate::model::MemberChain;

const CHECK: CheckName = CheckName::CommonPrefix;

/// One violation per pair of members that disagree, at the first height where they do.
pub fn check(chains: &[MemberChain]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, a) in chains.iter().enumerate() {
        for b in &chains[i + 1..] {
            if let Some((height, ha, hb)) = first_difference(a, b) {
                out.push(Violation::new(
                    CHECK,
                    format!(
                        "{} and {} hold different blocks at height {height} ({} has {}, {} has \
                         {}); they agree at every height below it that both hold",
                        a.member,
                        b.member,
                        a.member,
                        short(&ha),
                        b.member,
                        short(&hb)
                    ),
                ));
            }
        }
    }
    out
}

/// The lowest height both chains hold with different blocks, and the two hashes there.
pub(crate) fn first_difference(
    a: &MemberChain,
    b: &MemberChain,
) -> Option<(u64, BlockHash, BlockHash)> {
    a.blocks
        .iter()
        .filter_map(|x| {
            let y = b.block_at(x.height)?;
            (x.hash != y.hash).then_some((x.height, x.hash, y.hash))
        })
        .min_by_key(|(h, _, _)| *h)
}

/// The first 16 hex digits, as the console shows hashes.
fn short(h: &BlockHash) -> String {
    h.to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{block, blocks, correct, messages};

    #[test]
    fn a_correct_history_passes() {
        let (_, chains) = correct();
        assert_eq!(messages(&check(&chains)), Vec::<String>::new());
        assert!(check(&[]).is_empty());
    }

    #[test]
    fn a_fork_is_named_by_both_members_and_its_first_height() {
        let (_, mut chains) = correct();
        // Carol's chain forks at height 2 and stays forked.
        let mut forked = blocks();
        forked[2] = block(2, 0xc2, &[("alice", 1), ("alice", 2)]);
        forked[3] = block(3, 0xc3, &[("bob", 1)]);
        chains[2] = MemberChain::new("carol", forked);
        assert_eq!(
            messages(&check(&chains)),
            [
                "alice and carol hold different blocks at height 2 (alice has 0202020202020202, \
                 carol has c2c2c2c2c2c2c2c2); they agree at every height below it that both hold",
                "bob and carol hold different blocks at height 2 (bob has 0202020202020202, \
                 carol has c2c2c2c2c2c2c2c2); they agree at every height below it that both hold",
            ]
        );
    }

    #[test]
    fn a_shorter_chain_that_is_a_prefix_agrees() {
        let a = MemberChain::new("a", blocks());
        let b = MemberChain::new("b", blocks()[..1].to_vec());
        let c = MemberChain::new("c", Vec::new());
        assert!(check(&[a, b, c]).is_empty());
    }
}
