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

    /// Applies a checked announcement, or says why not. On `Ok` the state changed and must be
    /// persisted before the announcer hears `Accepted`.
    pub fn announce(&mut self, v: &VerifiedAnnouncement) -> Result<Accepted, Refusal> {
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
            return Ok(Accepted::Founded);
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
        // HOOK (majority confirmation, a later issue): when `!same_leader` and the claimant is
        // not the known leader, the proxy must first ask a majority of the known members whom
        // they follow at which term, and move only when they confirm. Until then one member's
        // signed word at a higher term moves the proxy.
        group.members = members_of(v, &group.members);
        group.leader = Some(leader_of(v));
        Ok(if same_leader {
            Accepted::Refreshed
        } else {
            Accepted::NewLeader
        })
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
            role: "voter".to_owned(),
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
            reason(s.announce(&announce("a", 1, G1, 1, &[]))),
            Rejection::OtherGroup
        );
        assert!(s.announce(&announce("b", 2, G2, 1, &[])).is_ok());
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
            s.announce(&announce("a", 1, G1, 1, &[])),
            Ok(Accepted::Founded)
        );
    }

    #[test]
    fn an_established_group_never_offers_a_bootstrap_again() {
        let mut s = GroupState::default();
        assert_eq!(
            reason(s.announce(&announce("a", 1, G1, 1, &[]))),
            Rejection::OtherGroup
        );
        ask(&mut s, "a", 0, G1);
        assert_eq!(
            s.announce(&announce("a", 1, G1, 3, &[("a", 1), ("b", 2)])),
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
        s.announce(&announce("a", 1, G1, 2, &[("a", 1), ("b", 2)]))
            .unwrap();

        assert_eq!(
            reason(s.announce(&announce("b", 2, G2, 9, &[]))),
            Rejection::OtherGroup
        );
        assert_eq!(
            reason(s.announce(&announce("b", 2, G1, 1, &[]))),
            Rejection::StaleTerm
        );
        assert_eq!(
            reason(s.announce(&announce("b", 2, G1, 2, &[]))),
            Rejection::StaleTerm
        );
        assert_eq!(
            reason(s.announce(&announce("c", 3, G1, 9, &[]))),
            Rejection::NotAMember
        );
        // A listed name with another key is not that member.
        assert_eq!(
            reason(s.announce(&announce("b", 4, G1, 9, &[]))),
            Rejection::NotAMember
        );
        assert_eq!(s.leader_info().unwrap().name, "a");

        assert_eq!(
            s.announce(&announce("a", 1, G1, 2, &[("a", 1), ("b", 2)])),
            Ok(Accepted::Refreshed)
        );
        assert_eq!(
            s.announce(&announce("b", 2, G1, 3, &[("b", 2), ("c", 3)])),
            Ok(Accepted::NewLeader)
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
            reason(s.announce(&announce("a", 1, G1, 4, &[]))),
            Rejection::NotAMember
        );
    }

    #[test]
    fn a_leader_that_leaves_itself_out_is_still_listed() {
        let mut s = GroupState::default();
        ask(&mut s, "a", 0, G1);
        s.announce(&announce("a", 1, G1, 1, &[("b", 2)])).unwrap();
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
            s.announce(&announce("a", 1, G1, 1, &[])),
            Ok(Accepted::Refreshed)
        );
    }
}
