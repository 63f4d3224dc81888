//! `chains_verify`: every member's chain passes `verify_chain` with the root key alone. See
//! the module docs of [`crate::checker`] for the precise guarantee.

use conclave_shared::chain::verify_chain;
use conclave_shared::identity::PublicKey;

use crate::checker::{CheckName, Violation};
use crate::model::MemberChain;

const CHECK: CheckName = CheckName::ChainsVerify;

/// One violation per member whose chain fails, at the first height that fails.
pub fn check(root: &PublicKey, chains: &[MemberChain]) -> Vec<Violation> {
    let mut out = Vec::new();
    for chain in chains {
        let member = &chain.member;
        let Some(raw) = &chain.raw else {
            out.push(Violation::new(
                CHECK,
                format!("{member}'s chain has no blocks to verify: it was not read from a store"),
            ));
            continue;
        };
        let read_error = raw.read_error.iter().map(|e| Err(e.as_str()));
        let blocks = raw.blocks.iter().cloned().map(Ok).chain(read_error);
        if let Err(failure) = verify_chain(root, blocks) {
            out.push(Violation::new(
                CHECK,
                format!(
                    "{member}'s chain fails verification at height {}: {}",
                    failure.height, failure.reason
                ),
            ));
        }
    }
    out
}

// The tests need real signed chains; they are in `checker::tests`, which builds one.
