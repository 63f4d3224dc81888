//! What a system block's leader signature covers.
//!
//! [`super::ChainState::apply`] checks these signatures: under the key of the header's
//! `leader`, who must be a voter at that height, over the header's own time, term and leader
//! (the genesis block's at the founder's admission; see the `state` module).

use super::{BlockBody, BlockKind, ChainError, GroupId};
use crate::identity::{signing_input, Identity, NodeId};

/// The domain of a leader's signature over a system block.
pub const LEADER_DOMAIN: &str = "conclave/leader/v1";

/// The bytes a leader signs when it proposes a system block:
/// `signing_input(LEADER_DOMAIN, [group_id, [kind tag], unsigned_body, time_ms, term, leader])`
/// with the integers as 8 big-endian bytes. `unsigned_body` is the canonical body without
/// its `leader_sig` ([`BlockBody::leader_unsigned_bytes`]).
///
/// Height and `prev_hash` are not covered: the leader signs when it proposes, before the
/// entry's log index (and so its height) is known. `term` and `leader` are: a leader proposes
/// in its own term, and that term and its own id become the entry's log id.
pub fn leader_signing_bytes(
    group_id: &GroupId,
    kind: BlockKind,
    unsigned_body: &[u8],
    time_ms: u64,
    term: u64,
    leader: NodeId,
) -> Vec<u8> {
    signing_input(
        LEADER_DOMAIN,
        &[
            group_id,
            &[kind.tag()],
            unsigned_body,
            &time_ms.to_be_bytes(),
            &term.to_be_bytes(),
            &leader.to_be_bytes(),
        ],
    )
}

impl BlockBody {
    /// [`leader_signing_bytes`] for this body, or `None` for records and refusals, which
    /// carry no leader signature.
    pub fn leader_signing_input(
        &self,
        group_id: &GroupId,
        time_ms: u64,
        term: u64,
        leader: NodeId,
    ) -> Option<Vec<u8>> {
        let unsigned = self.leader_unsigned_bytes()?;
        Some(leader_signing_bytes(
            group_id,
            self.kind(),
            &unsigned,
            time_ms,
            term,
            leader,
        ))
    }
}

/// Signs a system block's body as `leader` (whose node id is its key's) in `term`, replacing
/// whatever `leader_sig` it held. Refuses records and refusals, which have no such field.
pub fn sign_as_leader(
    leader: &Identity,
    group_id: &GroupId,
    body: &mut BlockBody,
    time_ms: u64,
    term: u64,
) -> Result<(), ChainError> {
    let node_id = leader.fingerprint().node_id();
    let input = body
        .leader_signing_input(group_id, time_ms, term, node_id)
        .ok_or_else(|| {
            ChainError::Invalid(format!("{} blocks carry no leader signature", body.kind()))
        })?;
    let sig = leader.sign(&input)?;
    if let Some(slot) = body.leader_sig_mut() {
        *slot = sig;
    }
    Ok(())
}
