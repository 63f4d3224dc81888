//! What this member reports about itself: to `conclave status` (through the proxy), to the
//! console and to the leader's announcements.

use conclave_shared::wire::peer::{PeerStatus, WireRole};
use openraft::ServerState;

use crate::heads::HeadBook;
use crate::store::ChainReader;
use crate::types::{NodeId, Raft};

#[derive(Clone)]
pub struct StatusSource {
    pub name: String,
    pub node_id: NodeId,
    pub raft: Raft,
    pub chain: ChainReader,
    /// The others' signed heads, and where they disagree with this member's chain.
    pub heads: HeadBook,
}

impl StatusSource {
    pub fn status(&self) -> PeerStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let role = role_of(membership, self.node_id);
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.name.clone()));
        let head = self.chain.head();
        PeerStatus {
            name: self.name.clone(),
            node_id: self.node_id,
            role,
            leader,
            term: m.current_term,
            head_height: head.map(|(h, _)| h),
            head_hash: head.map(|(_, hash)| hash.to_hex()),
            head_mismatches: self
                .heads
                .mismatches(|id| self.chain.member_by_id(id).is_some_and(|m| m.is_present())),
        }
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }
}

/// A node's role in a Raft membership: voter, learner, or not a member.
pub fn role_of(
    membership: &openraft::Membership<NodeId, crate::types::PeerNode>,
    node: NodeId,
) -> Option<WireRole> {
    if membership.voter_ids().any(|v| v == node) {
        Some(WireRole::Voter)
    } else if membership.learner_ids().any(|v| v == node) {
        Some(WireRole::Learner)
    } else {
        None
    }
}
