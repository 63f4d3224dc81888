//! The leader keeps its voters alive: a voter that has not answered replication for longer
//! than `raft.dead_voter_after` is replaced by a caught-up learner, if there is one, so that
//! one more failure does not cost the group its quorum. The lost member stays in the group as
//! a learner and catches up when it comes back.
//!
//! As with admissions, the chain is written first and Raft follows, so that every member Raft
//! counts as a voter is one the chain holds as a voter (whoever Raft elects can sign system
//! blocks): `role_change` of the dead voter to learner, then of the learner to voter (the
//! chain never holds more than `max_voters` voters), then one Raft membership change that
//! swaps the two. A leader that dies in between leaves Raft behind the chain, and the next
//! leader's `reconcile` catches up: it demotes in Raft whom the chain demoted
//! ([`LeaderCtx::demote_chain_learners`]) and promotes whom it promoted; if only the demotion
//! was written, a voter seat is empty and [`LeaderCtx::keep_voters`] fills it.
//!
//! Nothing happens while this leader lacks a recent quorum acknowledgement, while a Raft
//! membership change is under way, or when the swap would leave fewer than a majority of the
//! new voters answering.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use conclave_shared::chain::{BlockBody, MemberRole, Membership, MembershipChange};
use openraft::ChangeMembers;
use tracing::{info, warn};

use crate::error::PeerError;
use crate::leader::LeaderCtx;
use crate::store::MemberInfo;
use crate::types::NodeId;

/// The leader acts only if a quorum acknowledged it this recently.
pub const QUORUM_ACK_MAX_AGE_MS: u64 = 1_000;
/// A learner whose matched log index is at most this far behind the leader's last entry is
/// caught up enough to vote: it would be given the rest within a heartbeat or two.
pub const MAX_CAUGHT_UP_LAG: u64 = 64;

/// What the leader task remembers between checks: the dead voters it already said it could
/// not replace, so that it says so once.
#[derive(Default)]
pub struct VoterWatch {
    unreplaceable: HashSet<NodeId>,
}

/// One check's view of the group.
struct Survey {
    /// Present chain voters (other than this leader) silent for longer than the limit.
    dead: Vec<MemberInfo>,
    /// Admitted chain learners that Raft has as learners, answering, and caught up; the most
    /// caught up first.
    candidates: Vec<MemberInfo>,
    /// The Raft voters now.
    raft_voters: BTreeSet<NodeId>,
    /// Raft voters silent for longer than the limit (this leader is never among them).
    silent_voters: BTreeSet<NodeId>,
    /// Present voters in the chain.
    chain_voters: usize,
}

impl LeaderCtx {
    /// Once a tick while leading: replaces a dead voter, or fills an empty voter seat, with a
    /// caught-up learner. `leading_since`: when this leadership began.
    pub(crate) async fn keep_voters(
        &self,
        leading_since: Instant,
        watch: &mut VoterWatch,
    ) -> Result<(), PeerError> {
        let Some(survey) = self.survey(leading_since) else {
            return Ok(());
        };
        watch
            .unreplaceable
            .retain(|n| survey.dead.iter().any(|d| d.node_id == *n));
        if let Some(dead) = survey.dead.first() {
            let Some(learner) = survey.candidates.first() else {
                if watch.unreplaceable.insert(dead.node_id) {
                    warn!(
                        voter = %dead.name,
                        "voter {} has not answered for over {:?}, and no caught-up learner can replace it",
                        dead.name,
                        self.dead_voter_after
                    );
                }
                return Ok(());
            };
            // The new voters: the old ones without the dead one, with the learner. Enough of
            // them must answer to make a majority, or the change itself could not commit.
            let answering = survey.raft_voters.len() - survey.silent_voters.len() + 1;
            if answering * 2 <= survey.raft_voters.len() {
                warn!(
                    voter = %dead.name,
                    "not replacing {}: too few voters answer for the change to commit",
                    dead.name
                );
                return Ok(());
            }
            return self.replace_voter(dead, learner).await;
        }
        let max_voters = self
            .chain
            .rules()
            .map_or(self.rules.max_voters, |r| r.max_voters) as usize;
        if survey.chain_voters < max_voters {
            if let Some(learner) = survey.candidates.first() {
                info!(
                    learner = %learner.name,
                    "{} of {max_voters} voter seats are taken; promoting learner {}",
                    survey.chain_voters,
                    learner.name
                );
                self.set_role(learner, MemberRole::Voter).await?;
                self.sync_raft_voters().await?;
                self.announce().await;
            }
        }
        Ok(())
    }

    /// Who is dead and who could take over; `None` when this leader must not act now.
    fn survey(&self, leading_since: Instant) -> Option<Survey> {
        let m = self.raft.metrics().borrow().clone();
        let quorum = m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= QUORUM_ACK_MAX_AGE_MS);
        if !self.status.is_leader() || !quorum {
            return None;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return None;
        }
        let now = Instant::now();
        let silent = |node: NodeId| {
            let heard = self
                .liveness
                .last_ack(node)
                .map_or(leading_since, |t| t.max(leading_since));
            now.saturating_duration_since(heard) > self.dead_voter_after
        };
        let raft_voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let raft_learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let silent_voters: BTreeSet<NodeId> = raft_voters
            .iter()
            .copied()
            .filter(|v| *v != self.node_id && silent(*v))
            .collect();
        let members: Vec<MemberInfo> = self
            .chain
            .members()
            .into_iter()
            .filter(MemberInfo::is_present)
            .collect();
        let chain_voters = members
            .iter()
            .filter(|x| x.role == MemberRole::Voter)
            .count();
        let mut dead: Vec<MemberInfo> = members
            .iter()
            .filter(|x| x.role == MemberRole::Voter && silent_voters.contains(&x.node_id))
            .cloned()
            .collect();
        dead.sort_by(|a, b| a.name.cmp(&b.name));
        let last_log = m.last_log_index.unwrap_or(0);
        let matched = |node: NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&node).cloned().flatten())
                .map(|l| l.index)
        };
        let mut candidates: Vec<(u64, MemberInfo)> = members
            .iter()
            .filter(|x| {
                x.role == MemberRole::Learner
                    && x.is_admitted()
                    && raft_learners.contains(&x.node_id)
                    && !silent(x.node_id)
            })
            .filter_map(|x| {
                let at = matched(x.node_id)?;
                (last_log.saturating_sub(at) <= MAX_CAUGHT_UP_LAG).then(|| (at, x.clone()))
            })
            .collect();
        candidates.sort_by(|(a, x), (b, y)| b.cmp(a).then_with(|| x.name.cmp(&y.name)));
        Some(Survey {
            dead,
            candidates: candidates.into_iter().map(|(_, x)| x).collect(),
            raft_voters,
            silent_voters,
            chain_voters,
        })
    }

    /// The chain first (demote, then promote), then Raft; see the module docs.
    async fn replace_voter(
        &self,
        dead: &MemberInfo,
        learner: &MemberInfo,
    ) -> Result<(), PeerError> {
        info!(
            voter = %dead.name,
            learner = %learner.name,
            "voter {} has not answered for over {:?}: learner {} takes its place",
            dead.name,
            self.dead_voter_after,
            learner.name
        );
        self.set_role(dead, MemberRole::Learner).await?;
        self.set_role(learner, MemberRole::Voter).await?;
        self.sync_raft_voters().await?;
        self.announce().await;
        Ok(())
    }

    /// Commits a `role_change` block for `member`.
    async fn set_role(&self, member: &MemberInfo, role: MemberRole) -> Result<(), PeerError> {
        self.propose_system(BlockBody::Membership(Membership {
            change: MembershipChange::RoleChange {
                name: member.name.clone(),
                node_id: member.node_id,
                role,
            },
            leader_sig: Vec::new(),
        }))
        .await
        .map(|_| ())
    }

    /// Makes Raft's voters the chain's: the present, unrevoked chain voters Raft holds, in one
    /// membership change that keeps whoever it drops as a learner.
    async fn sync_raft_voters(&self) -> Result<(), PeerError> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let now: BTreeSet<NodeId> = membership.voter_ids().collect();
        let wanted: BTreeSet<NodeId> = self
            .chain
            .members()
            .into_iter()
            .filter(|x| {
                x.is_admitted()
                    && x.role == MemberRole::Voter
                    && membership.get_node(&x.node_id).is_some()
            })
            .map(|x| x.node_id)
            .collect();
        if wanted == now || wanted.is_empty() {
            return Ok(());
        }
        info!(?now, ?wanted, "changing the Raft voters to the chain's");
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(wanted), true)
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Raft voters that the chain holds as learners (a dead voter replaced, and a leader that
    /// died before Raft followed) become Raft learners.
    pub(crate) async fn demote_chain_learners(&self) -> Result<(), PeerError> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let demoted: BTreeSet<NodeId> = m
            .membership()
            .voter_ids()
            .filter(|id| {
                self.chain
                    .member_by_id(*id)
                    .is_some_and(|x| x.is_present() && x.role == MemberRole::Learner)
            })
            .collect();
        if demoted.is_empty() || m.membership().voter_ids().all(|v| demoted.contains(&v)) {
            return Ok(());
        }
        if demoted.contains(&self.node_id) {
            warn!("the chain has this leader as a learner; it steps down as a voter");
        }
        info!(
            ?demoted,
            "demoting in Raft the voters the chain made learners"
        );
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(demoted), true)
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        Ok(())
    }
}
