//! The proxy's view of the group and the rules that change it.
//!
//! Pure: no clock, no randomness, no I/O (the caller passes the time and a source of group
//! ids), so the rules are tested deterministically below. The actor (`actor`) persists every
//! change before anyone hears of it.

use conclave_shared::wire::proxy::{FromProxy, LeaderInfo, MemberInfo, Rejection};
use serde::{Deserialize, Serialize};

use crate::announce::{Refusal, VerifiedAnnouncement};

/// How long a bootstrap lease lasts unless `ProxyOptions::lease_ms` says otherwise: the holder
/// must announce its new group within this, or the next asker gets the lease.
pub const LEASE_MS: u64 = 3_000;
/// What `Wait` tells an asker to wait before asking again.
pub const WAIT_RETRY_MS: u64 = 500;

/// Everything the proxy remembers, as stored (see `store`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group this proxy serves, set by the first accepted (founding) announcement and
    /// never unset: a proxy that has it never offers a bootstrap again.
    pub group: Option<Group>,
    /// The bootstrap lease while no group is established; `None` before the first asker and
    /// after the group is founded.
    pub lease: Option<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub group_id: [u8; 16],
    /// The last accepted leader; `None` would mean the group exists but no leader is known
    /// (nothing clears it yet; a later liveness check may).
    pub leader: Option<Leader>,
    /// The members as the last accepted announcement listed them.
    pub members: Vec<KnownMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    pub term: u64,
    /// SHA-256 of the leader's SPKI, from the TLS certificate it announced over.
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownMember {
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    /// "voter" or "learner".
    pub role: String,
    /// Known for members that have announced over TLS; the others are known by the node id
    /// the leader listed (itself the first eight bytes of their fingerprint).
    pub fingerprint: Option<[u8; 32]>,
}

impl KnownMember {
    /// Whether this member votes, as the last accepted announcement listed it.
    pub fn is_voter(&self) -> bool {
        self.role == VOTER
    }
}

/// The voter role as announcements name it.
const VOTER: &str = "voter";

/// The right to found the group, held by one asker at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Drawn afresh whenever the lease passes to another holder, so a founder whose lease
    /// lapsed and went elsewhere is told `OtherGroup` (drop your group) rather than being
    /// mistaken for a member of the new one.
    pub group_id: [u8; 16],
    /// The certificate name of the holder.
    pub holder: String,
    /// Wall-clock milliseconds since the Unix epoch, so the lease survives a restart.
    pub expires_at_ms: u64,
}

/// An accepted announcement, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// It founded the group.
    Founded,
    /// It named a new leader, or the same leader at a new term.
    NewLeader,
    /// The known leader, at the known term, again.
    Refreshed,
}

/// What an announcement that passed every check comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Applied: the state changed.
    Accepted(Accepted),
    /// A new claim (another leader, or a higher term) that the known voters must confirm
    /// before the proxy moves. Nothing changed.
    Confirm(ConfirmRequest),
}

/// Whom to ask before a new claim may move the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRequest {
    /// The claimant's name, as a follower reports its leader.
    pub claimant: String,
    pub node_id: u64,
    pub term: u64,
    /// The known voters other than the claimant.
    pub ask: Vec<KnownMember>,
    /// How many of `ask` must confirm: a majority of the known voters, less the claimant's own
    /// vote if it is one of them.
    pub needed: usize,
    /// How many voters the proxy knows (the claimant included, if it is one).
    pub voters: usize,
}

/// The members that confirmed a claim: asked whom they follow, each answered the claimant
/// at the claimed term. Counted again, against the voters known then, when applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Votes {
    pub claimant: u64,
    pub term: u64,
    /// Node ids of the confirming members.
    pub confirmed_by: Vec<u64>,
}

impl GroupState {
    /// Answers `WhereIsLeader` from `asker` at `now_ms`. Returns the answer and whether the
    /// state changed (then it must be persisted before the answer is sent).
    pub fn where_is_leader(
        &mut self,
        asker: &str,
        now_ms: u64,
        lease_ms: u64,
        fresh_group_id: impl FnOnce() -> [u8; 16],
    ) -> (FromProxy, bool) {
        if let Some(group) = &self.group {
            return match self.leader_info() {
                Some(info) => (FromProxy::Leader(info), false),
                None => {
                    debug_assert!(group.leader.is_none());
                    (
                        FromProxy::Wait {
                            retry_ms: WAIT_RETRY_MS,
                        },
                        false,
                    )
                }
            };
        }
        match &mut self.lease {
            Some(lease) if lease.expires_at_ms > now_ms => {
                if lease.holder == asker {
                    // The holder asking again (a retry, a restart): the same group id and the
                    // time it has left; asking does not extend a live lease.
                    let answer = FromProxy::Bootstrap {
                        group_id: lease.group_id,
                        lease_ms: lease.expires_at_ms - now_ms,
                    };
                    (answer, false)
                } else {
                    let retry_ms = WAIT_RETRY_MS.min(lease.expires_at_ms - now_ms).max(1);
                    (FromProxy::Wait { retry_ms }, false)
                }
            }
            Some(lease) if lease.holder == asker => {
                // Lapsed, and nobody else wanted it: the same holder renews with the same
                // group id, which it may have founded already.
                lease.expires_at_ms = now_ms.saturating_add(lease_ms);
                let answer = FromProxy::Bootstrap {
                    group_id: lease.group_id,
                    lease_ms,
                };
                (answer, true)
            }
            _ => {
                let lease = Lease {
                    group_id: fresh_group_id(),
                    holder: asker.to_owned(),
                    expires_at_ms: now_ms.saturating_add(lease_ms),
                };
                let answer = FromProxy::Bootstrap {
                    group_id: lease.group_id,
                    lease_ms,
                };
                self.lease = Some(lease);
                (answer, true)
            }
        }
    }

    /// Applies a checked announcement, or says why not. On `Ok(Decision::Accepted)` the state
    /// changed and must be persisted before the announcer hears `Accepted`.
    ///
    /// Founding and a refresh (the known leader at the known term) apply at once. Any other
    /// claim (another leader, or a higher term) moves the proxy only with a majority of the
    /// known voters: the claimant's own announcement is its vote if it is a voter, and the
    /// others' are `votes`. Without `votes`, such a claim comes back as
    /// `Decision::Confirm` saying whom to ask (unless the claimant's vote alone is a
    /// majority); with `votes`, it is applied if they make a majority of the voters known now,
    /// and refused `NotConfirmed` otherwise. Every other check runs again either way, so
    /// votes gathered while the state moved on cannot apply a claim that went stale.
    pub fn announce(
        &mut self,
        v: &VerifiedAnnouncement,
        votes: Option<&Votes>,
    ) -> Result<Decision, Refusal> {
        let a = v.announcement();
        let Some(group) = &mut self.group else {
            // Founding: only the group id this proxy handed out with the current lease. The
            // lease may have lapsed; what counts is that nobody else has taken it since (then
            // its group id would be another).
            let Some(lease) = &self.lease else {
                return Err(Refusal::new(
                    Rejection::OtherGroup,
                    "this proxy has offered no group id: ask WhereIsLeader first",
                ));
            };
            if a.group_id != lease.group_id {
                return Err(Refusal::new(
                    Rejection::OtherGroup,
                    format!(
                        "group {} is not the group id this proxy offered; the bootstrap lease \
                         passed to {:?}",
                        hex::encode(a.group_id),
                        lease.holder
                    ),
                ));
            }
            // A founding announcement makes the announcer the first member, whoever it lists.
            self.group = Some(Group {
                group_id: a.group_id,
                leader: Some(leader_of(v)),
                members: members_of(v, &[]),
            });
            self.lease = None;
            return Ok(Decision::Accepted(Accepted::Founded));
        };
        if a.group_id != group.group_id {
            return Err(Refusal::new(
                Rejection::OtherGroup,
                format!(
                    "this proxy serves group {}, not {}",
                    hex::encode(group.group_id),
                    hex::encode(a.group_id)
                ),
            ));
        }
        if let Some(known) = &group.leader {
            if a.term < known.term {
                return Err(Refusal::new(
                    Rejection::StaleTerm,
                    format!(
                        "term {} is older than term {} of {:?}",
                        a.term, known.term, known.name
                    ),
                ));
            }
            if a.term == known.term && a.node_id != known.node_id {
                // Raft elects at most one leader per term: a second claimant at the same term
                // is lying or confused.
                return Err(Refusal::new(
                    Rejection::StaleTerm,
                    format!("term {} is already led by {:?}", a.term, known.name),
                ));
            }
        }
        let is_member = group.members.iter().any(|m| {
            m.name == a.name
                && m.node_id == a.node_id
                && m.fingerprint.is_none_or(|fp| fp == v.fingerprint().0)
        });
        if !group.members.is_empty() && !is_member {
            return Err(Refusal::new(
                Rejection::NotAMember,
                format!(
                    "{:?} is not a member of this group as the proxy knows it",
                    a.name
                ),
            ));
        }
        let same_leader = group
            .leader
            .as_ref()
            .is_some_and(|l| l.node_id == a.node_id && l.term == a.term);
        if !same_leader {
            // One member's word does not move the proxy: a majority of the voters it knows
            // (from the list it trusts now, not the one the claimant sends) must follow the
            // claimant at the claimed term.
            let voters: Vec<&KnownMember> = group.members.iter().filter(|m| m.is_voter()).collect();
            let majority = voters.len() / 2 + 1;
            let own = usize::from(voters.iter().any(|m| m.node_id == a.node_id));
            if own < majority {
                let Some(votes) = votes else {
                    return Ok(Decision::Confirm(ConfirmRequest {
                        claimant: a.name.clone(),
                        node_id: a.node_id,
                        term: a.term,
                        ask: voters
                            .iter()
                            .filter(|m| m.node_id != a.node_id)
                            .map(|m| (*m).clone())
                            .collect(),
                        needed: majority - own,
                        voters: voters.len(),
                    }));
                };
                let for_this = votes.claimant == a.node_id && votes.term == a.term;
                let confirmed: Vec<&str> = voters
                    .iter()
                    .filter(|m| {
                        m.node_id == a.node_id
                            || (for_this && votes.confirmed_by.contains(&m.node_id))
                    })
                    .map(|m| m.name.as_str())
                    .collect();
                if confirmed.len() < majority {
                    return Err(Refusal::new(
                        Rejection::NotConfirmed,
                        format!(
                            "{:?} at term {} is confirmed by {} of the {} known voters \
                             ({confirmed:?}); {majority} needed",
                            a.name,
                            a.term,
                            confirmed.len(),
                            voters.len()
                        ),
                    ));
                }
            }
        }
        group.members = members_of(v, &group.members);
        group.leader = Some(leader_of(v));
        Ok(Decision::Accepted(if same_leader {
            Accepted::Refreshed
        } else {
            Accepted::NewLeader
        }))
    }

    /// The known leader as the wire names it.
    pub fn leader_info(&self) -> Option<LeaderInfo> {
        let group = self.group.as_ref()?;
        let l = group.leader.as_ref()?;
        Some(LeaderInfo {
            group_id: group.group_id,
            name: l.name.clone(),
            node_id: l.node_id,
            addr: l.addr.clone(),
            term: l.term,
        })
    }

    pub fn established(&self) -> bool {
        self.group.is_some()
    }
}

fn leader_of(v: &VerifiedAnnouncement) -> Leader {
    let a = v.announcement();
    Leader {
        name: a.name.clone(),
        node_id: a.node_id,
        addr: a.addr.clone(),
        term: a.term,
        fingerprint: v.fingerprint().0,
    }
}

/// The announcement's member list replaces the known one. Fingerprints learned earlier are
/// kept for members still listed under the same node id, the announcer's is set, and the
/// announcer is added if it left itself out (it leads, so it is a member).
fn members_of(v: &VerifiedAnnouncement, before: &[KnownMember]) -> Vec<KnownMember> {
    let a = v.announcement();
    let known_fp = |m: &MemberInfo| {
        before
            .iter()
            .find(|k| k.node_id == m.node_id && k.name == m.name)
            .and_then(|k| k.fingerprint)
    };
    let mut members: Vec<KnownMember> = a
        .members
        .iter()
        .map(|m| KnownMember {
            name: m.name.clone(),
            node_id: m.node_id,
            addr: m.addr.clone(),
            role: m.role.clone(),
            fingerprint: if m.node_id == a.node_id {
                Some(v.fingerprint().0)
            } else {
                known_fp(m)
            },
        })
        .collect();
    if !members.iter().any(|m| m.node_id == a.node_id) {
        members.push(KnownMember {
            name: a.name.clone(),
            node_id: a.node_id,
            addr: a.addr.clone(),
            role: VOTER.to_owned(),
            fingerprint: Some(v.fingerprint().0),
        });
    }
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_shared::identity::Fingerprint;
    use conclave_shared::wire::proxy::Announcement;

    const LEASE: u64 = 1_000;
    const G1: [u8; 16] = [1; 16];
    const G2: [u8; 16] = [2; 16];

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn member(name: &str, n: u8) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            node_id: fp(n).node_id(),
            addr: format!("127.0.0.1:{n}"),
            role: "voter".into(),
        }
    }

    fn announce(
        name: &str,
        n: u8,
        group_id: [u8; 16],
        term: u64,
        members: &[(&str, u8)],
    ) -> VerifiedAnnouncement {
        VerifiedAnnouncement::for_test(
            Announcement {
                group_id,
                name: name.into(),
                node_id: fp(n).node_id(),
                addr: format!("127.0.0.1:{n}"),
                term,
                members: members.iter().map(|(m, k)| member(m, *k)).collect(),
                time_ms: 0,
            },
            fp(n),
        )
    }

    fn ask(s: &mut GroupState, who: &str, now: u64, id: [u8; 16]) -> (FromProxy, bool) {
        s.where_is_leader(who, now, LEASE, || id)
    }

    /// Announces without votes: founding and refreshes apply, new claims must not.
    fn apply(s: &mut GroupState, v: VerifiedAnnouncement) -> Result<Accepted, Refusal> {
        match s.announce(&v, None)? {
            Decision::Accepted(a) => Ok(a),
            Decision::Confirm(c) => panic!("needs confirmation: {c:?}"),
        }
    }

    fn confirm_request(s: &mut GroupState, v: &VerifiedAnnouncement) -> ConfirmRequest {
        match s.announce(v, None) {
            Ok(Decision::Confirm(c)) => c,
            other => panic!("expected a confirmation request, got {other:?}"),
        }
    }

    fn votes(v: &VerifiedAnnouncement, by: &[u8]) -> Votes {
        Votes {
            claimant: v.announcement().node_id,
            term: v.announcement().term,
            confirmed_by: by.iter().map(|n| fp(*n).node_id()).collect(),
        }
    }

    fn reason(r: Result<Accepted, Refusal>) -> Rejection {
        r.expect_err("accepted").reason
    }

    #[test]
    fn one_asker_at_a_time_holds_the_lease() {
        let mut s = GroupState::default();
        assert_eq!(
            ask(&mut s, "a", 0, G1),
            (
                FromProxy::Bootstrap {
                    group_id: G1,
                    lease_ms: LEASE
                },
                true
            )
        );
        assert!(matches!(
            ask(&mut s, "b", 10, G2),
            (FromProxy::Wait { .. }, false)
        ));
        // The holder asking again gets the same group and what is left of the lease.
        assert_eq!(
            ask(&mut s, "a", 400, G2),
            (
                FromProxy::Bootstrap {
                    group_id: G1,
                    lease_ms: 600
                },
                false
            )
        );
        // Lapsed: the next asker gets a new lease with a new group id...
        assert_eq!(
            ask(&mut s, "b", 1_000, G2),
            (
                FromProxy::Bootstrap {
                    group_id: G2,
                    lease_ms: LEASE
                },
                true
            )
        );
        assert!(matches!(
            ask(&mut s, "a", 1_001, G1),
            (FromProxy::Wait { .. }, false)
        ));
        // ...and the old holder's founding announcement is for another group now.
        assert_eq!(
            reason(apply(&mut s, announce("a", 1, G1, 1, &[]))),
            Rejection::OtherGroup
        );
        assert!(apply(&mut s, announce("b", 2, G2, 1, &[])).is_ok());
    }

    #[test]
    fn a_lapsed_lease_nobody_took_renews_for_its_holder_with_the_same_group() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        assert_eq!(
            ask(&mut s, "a", 5_000, G2),
            (
                FromProxy::Bootstrap {
                    group_id: G1,
                    lease_ms: LEASE
                },
                true
            )
        );
        // A founding announcement after the lease lapsed, with nobody else asking, counts.
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        assert_eq!(
            apply(&mut s, announce("a", 1, G1, 1, &[])),
            Ok(Accepted::Founded)
        );
    }

    #[test]
    fn an_established_group_never_offers_a_bootstrap_again() {
        let mut s = GroupState::default();
        assert_eq!(
            reason(apply(&mut s, announce("a", 1, G1, 1, &[]))),
            Rejection::OtherGroup
        );
        ask(&mut s, "a", 0, G1);
        assert_eq!(
            apply(&mut s, announce("a", 1, G1, 3, &[("a", 1), ("b", 2)])),
            Ok(Accepted::Founded)
        );
        assert!(s.lease.is_none());
        for (who, now) in [("a", 10), ("b", 5_000), ("c", 1_000_000)] {
            let (answer, changed) = ask(&mut s, who, now, G2);
            assert!(!changed);
            let FromProxy::Leader(info) = answer else {
                panic!("{answer:?}")
            };
            assert_eq!((info.name.as_str(), info.term, info.group_id), ("a", 3, G1));
        }
        // Even with the leader forgotten, the answer is Wait, never Bootstrap.
        s.group.as_mut().unwrap().leader = None;
        assert!(matches!(
            ask(&mut s, "z", 0, G2),
            (FromProxy::Wait { .. }, false)
        ));
    }

    #[test]
    fn announcements_follow_the_group_rules() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        apply(&mut s, announce("a", 1, G1, 2, &[("a", 1), ("b", 2)])).unwrap();

        assert_eq!(
            reason(apply(&mut s, announce("b", 2, G2, 9, &[]))),
            Rejection::OtherGroup
        );
        assert_eq!(
            reason(apply(&mut s, announce("b", 2, G1, 1, &[]))),
            Rejection::StaleTerm
        );
        assert_eq!(
            reason(apply(&mut s, announce("b", 2, G1, 2, &[]))),
            Rejection::StaleTerm
        );
        assert_eq!(
            reason(apply(&mut s, announce("c", 3, G1, 9, &[]))),
            Rejection::NotAMember
        );
        // A listed name with another key is not that member.
        assert_eq!(
            reason(apply(&mut s, announce("b", 4, G1, 9, &[]))),
            Rejection::NotAMember
        );
        assert_eq!(s.leader_info().unwrap().name, "a");

        assert_eq!(
            apply(&mut s, announce("a", 1, G1, 2, &[("a", 1), ("b", 2)])),
            Ok(Accepted::Refreshed)
        );
        // Another leader: "a" must confirm it first (majority of two voters: both).
        let by_b = announce("b", 2, G1, 3, &[("b", 2), ("c", 3)]);
        let req = confirm_request(&mut s, &by_b);
        assert_eq!((req.needed, req.voters, req.ask.len()), (1, 2, 1));
        assert_eq!(req.ask[0].name, "a");
        assert_eq!(s.leader_info().unwrap().name, "a", "asking moves nothing");
        assert_eq!(
            s.announce(&by_b, Some(&votes(&by_b, &[1]))),
            Ok(Decision::Accepted(Accepted::NewLeader))
        );
        let g = s.group.as_ref().unwrap();
        assert_eq!(g.leader.as_ref().unwrap().name, "b");
        let names: Vec<_> = g.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["b", "c"],
            "the announced list replaces the known one"
        );
        assert_eq!(g.members[0].fingerprint, Some(fp(2).0));
        assert_eq!(g.members[1].fingerprint, None);
        // "a" was dropped from the list, so it can no longer move the proxy.
        assert_eq!(
            reason(apply(&mut s, announce("a", 1, G1, 4, &[]))),
            Rejection::NotAMember
        );
    }

    #[test]
    fn a_new_claim_moves_the_proxy_only_with_a_majority_of_the_known_voters() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        let mut founding = announce("a", 1, G1, 1, &[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        founding.announcement_mut().members[3].role = "learner".into();
        apply(&mut s, founding).unwrap();

        // "b" claims term 2: it is one of three voters, so one of "a" and "c" must confirm;
        // "d" is a learner and is not asked.
        let claim = announce("b", 2, G1, 2, &[("b", 2)]);
        let req = confirm_request(&mut s, &claim);
        let asked: Vec<_> = req.ask.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(asked, ["a", "c"]);
        assert_eq!((req.claimant.as_str(), req.term), ("b", 2));
        assert_eq!((req.needed, req.voters), (1, 3));
        // Nobody, a learner, an unknown node, or votes for another claim: not enough.
        for by in [votes(&claim, &[]), votes(&claim, &[4]), votes(&claim, &[9])] {
            assert_eq!(
                s.announce(&claim, Some(&by)).unwrap_err().reason,
                Rejection::NotConfirmed
            );
        }
        let other_term = Votes {
            term: 3,
            ..votes(&claim, &[3])
        };
        assert_eq!(
            s.announce(&claim, Some(&other_term)).unwrap_err().reason,
            Rejection::NotConfirmed
        );
        let other_claimant = Votes {
            claimant: fp(3).node_id(),
            ..votes(&claim, &[3])
        };
        assert_eq!(
            s.announce(&claim, Some(&other_claimant))
                .unwrap_err()
                .reason,
            Rejection::NotConfirmed
        );
        assert_eq!(
            (
                s.leader_info().unwrap().name.as_str(),
                s.leader_info().unwrap().term
            ),
            ("a", 1)
        );
        // "c" confirms: two of three.
        assert_eq!(
            s.announce(&claim, Some(&votes(&claim, &[3]))),
            Ok(Decision::Accepted(Accepted::NewLeader))
        );
        assert_eq!(s.leader_info().unwrap().name, "b");
        // Its list ("b" alone) now is the known one; b's refreshes need nobody.
        assert_eq!(
            apply(&mut s, announce("b", 2, G1, 2, &[("b", 2), ("c", 3)])),
            Ok(Accepted::Refreshed)
        );
        // The known leader at a higher term is a new claim too.
        let again = announce("b", 2, G1, 3, &[("b", 2), ("c", 3)]);
        let req = confirm_request(&mut s, &again);
        assert_eq!((req.needed, req.voters), (1, 2));

        // Votes gathered for a claim that went stale meanwhile apply nothing: "c" asks at
        // term 3, and before its answers are in "b" is confirmed at term 4.
        let by_c = announce("c", 3, G1, 3, &[("b", 2), ("c", 3)]);
        assert_eq!(confirm_request(&mut s, &by_c).ask[0].name, "b");
        let b4 = announce("b", 2, G1, 4, &[("b", 2), ("c", 3)]);
        assert_eq!(
            s.announce(&b4, Some(&votes(&b4, &[3]))),
            Ok(Decision::Accepted(Accepted::NewLeader))
        );
        assert_eq!(
            s.announce(&by_c, Some(&votes(&by_c, &[2])))
                .unwrap_err()
                .reason,
            Rejection::StaleTerm
        );
        assert_eq!(s.leader_info().unwrap().term, 4);
    }

    #[test]
    fn a_claimant_whose_own_vote_is_a_majority_needs_nobody() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        let mut founding = announce("a", 1, G1, 1, &[("a", 1), ("b", 2)]);
        founding.announcement_mut().members[1].role = "learner".into();
        apply(&mut s, founding).unwrap();
        assert_eq!(
            apply(&mut s, announce("a", 1, G1, 2, &[("a", 1)])),
            Ok(Accepted::NewLeader)
        );
        assert_eq!(s.leader_info().unwrap().term, 2);
    }

    #[test]
    fn a_leader_that_leaves_itself_out_is_still_listed() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        apply(&mut s, announce("a", 1, G1, 1, &[("b", 2)])).unwrap();
        let names: Vec<_> = s
            .group
            .as_ref()
            .unwrap()
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(
            apply(&mut s, announce("a", 1, G1, 1, &[])),
            Ok(Accepted::Refreshed)
        );
    }
}
