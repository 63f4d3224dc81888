//! The per-block rules, and the small state they need.
//!
//! [`ChainState`] holds what checking the next block needs and nothing else: the group's
//! id and rules, the root key, the members by name and the current key epoch, so it grows
//! with the membership, never with the chain. The verifier drives it block by block; a peer
//! reuses it at apply time, so every replica refuses exactly the same entries.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    BlockBody, BlockHeader, Checkpoint, FailureReason, Genesis, GroupId, KeyRotation, MemberRole,
    MembershipChange, RecordBatch, RevocationNotice, Rules, MAX_MEMBERS,
};
use crate::cert::{Certificate, Role, VerifiedCert};
use crate::envelope::TAG_BYTES;
use crate::identity::{NodeId, PublicKey};

/// A member as the chain knows it at the current height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: NodeId,
    /// The certificate of the latest admission under this name.
    pub cert: VerifiedCert,
    pub role: MemberRole,
    pub addr: String,
    /// The `seq` the member's next record must have: 1 before its first record. It carries
    /// over a removal and a later re-admission: `seq` is contiguous across the whole chain.
    pub next_seq: u64,
    /// A `remove` block took the member out of the group.
    pub removed: bool,
    /// A revocation of its certificate was committed. A revoked member stays in the group (it
    /// counts towards the members and voters) until it is removed, but may not append and
    /// gets no new keys.
    pub revoked: bool,
}

impl Member {
    /// Whether the member may append and must be given each new key.
    pub fn is_admitted(&self) -> bool {
        !self.removed && !self.revoked
    }
    /// Whether the member is part of the group (admitted, or revoked but not yet removed).
    pub fn is_present(&self) -> bool {
        !self.removed
    }
}

/// What checking the next block needs; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    root: PublicKey,
    group_id: GroupId,
    rules: Rules,
    epoch: u64,
    members: BTreeMap<String, Member>,
    /// Serials of revoked certificates, so that a revoked certificate cannot be admitted
    /// again. This grows with the revocations, which are rarer than admissions.
    revoked_serials: BTreeSet<u64>,
}

impl ChainState {
    /// Starts from a genesis block, checking that it names `root` and has usable rules. The
    /// header's place in the chain is the verifier's business, not this one's.
    pub fn from_genesis(
        root: &PublicKey,
        _header: &BlockHeader,
        genesis: &Genesis,
    ) -> Result<Self, FailureReason> {
        if genesis.root_fingerprint != root.fingerprint() {
            return Err(FailureReason::WrongRoot {
                given: root.fingerprint(),
                in_chain: genesis.root_fingerprint,
            });
        }
        genesis.rules.check().map_err(FailureReason::BadRules)?;
        Ok(Self {
            root: root.clone(),
            group_id: genesis.group_id,
            rules: genesis.rules,
            epoch: 0,
            members: BTreeMap::new(),
            revoked_serials: BTreeSet::new(),
        })
    }

    pub fn root(&self) -> &PublicKey {
        &self.root
    }
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
    /// The latest key epoch; 0 until the first key rotation.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Everyone ever admitted, by name, removed ones included.
    pub fn members(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.members.iter().map(|(n, m)| (n.as_str(), m))
    }
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }
    /// The members who may append and must get each new key.
    pub fn admitted(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.members().filter(|(_, m)| m.is_admitted())
    }
    /// Present members with the voter role (revoked ones too, until removed).
    pub fn voters(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.is_present() && m.role == MemberRole::Voter)
            .count()
    }
    pub fn is_revoked(&self, serial: u64) -> bool {
        self.revoked_serials.contains(&serial)
    }

    /// Checks `body` against the rules and, only if it passes, applies it. On an error the
    /// state is unchanged, so a peer can commit a refusal and go on.
    pub fn apply(&mut self, header: &BlockHeader, body: &BlockBody) -> Result<(), FailureReason> {
        match body {
            BlockBody::Genesis(_) => Err(FailureReason::SecondGenesis),
            BlockBody::Records(b) => self.apply_records(b),
            BlockBody::Membership(m) => self.apply_membership(&m.change),
            BlockBody::KeyRotation(k) => self.apply_key_rotation(k),
            BlockBody::Revocation(r) => self.apply_revocation(r),
            BlockBody::Checkpoint(c) => check_checkpoint(header, c),
            // A refusal records that an entry failed; it changes nothing.
            BlockBody::Refused(_) => Ok(()),
        }
    }

    fn apply_records(&mut self, batch: &RecordBatch) -> Result<(), FailureReason> {
        let author = || batch.author.clone();
        let member = self
            .members
            .get(&batch.author)
            .filter(|m| m.is_admitted())
            .ok_or_else(|| FailureReason::AuthorNotAdmitted { author: author() })?;
        batch
            .verify_signature(&self.group_id, member.cert.public_key())
            .map_err(|_| FailureReason::BadAuthorSignature { author: author() })?;
        let max_len = self.rules.max_record_bytes as usize + TAG_BYTES;
        let mut expected = member.next_seq;
        for rec in &batch.records {
            if rec.seq < expected {
                return Err(FailureReason::SequenceRepeated {
                    author: author(),
                    expected,
                    got: rec.seq,
                });
            }
            if rec.seq > expected {
                return Err(FailureReason::SequenceSkipped {
                    author: author(),
                    expected,
                    got: rec.seq,
                });
            }
            if rec.ciphertext.len() > max_len {
                return Err(FailureReason::RecordTooLarge {
                    author: author(),
                    seq: rec.seq,
                    len: rec.ciphertext.len(),
                    max: max_len,
                });
            }
            // Epoch 0 has no key. A record may be sealed under the previous epoch too, since
            // its author may have sealed it just before a rotation was committed.
            if rec.epoch == 0 || rec.epoch > self.epoch || rec.epoch.saturating_add(1) < self.epoch
            {
                return Err(FailureReason::RecordEpoch {
                    author: author(),
                    seq: rec.seq,
                    epoch: rec.epoch,
                    current: self.epoch,
                });
            }
            expected = expected.checked_add(1).ok_or_else(|| {
                FailureReason::Malformed(format!("{:?} sequence overflows", batch.author))
            })?;
        }
        if let Some(m) = self.members.get_mut(&batch.author) {
            m.next_seq = expected;
        }
        Ok(())
    }

    fn apply_membership(&mut self, change: &MembershipChange) -> Result<(), FailureReason> {
        match change {
            MembershipChange::Admit {
                cert,
                node_id,
                addr,
                role,
            } => self.admit(cert, *node_id, addr, *role),
            MembershipChange::Remove { name, node_id } => {
                let m = self.present_member_mut(name, *node_id)?;
                m.removed = true;
                Ok(())
            }
            MembershipChange::RoleChange {
                name,
                node_id,
                role,
            } => {
                let already_voter =
                    self.present_member_mut(name, *node_id)?.role == MemberRole::Voter;
                if *role == MemberRole::Voter && !already_voter {
                    self.check_voter_room()?;
                }
                self.present_member_mut(name, *node_id)?.role = *role;
                Ok(())
            }
        }
    }

    fn admit(
        &mut self,
        cert: &Certificate,
        node_id: NodeId,
        addr: &str,
        role: MemberRole,
    ) -> Result<(), FailureReason> {
        let bad = |why: String| FailureReason::BadCertificate {
            name: cert.name().to_owned(),
            why,
        };
        let verified = cert
            .verify(&self.root)
            .and_then(|v| v.expect_role(Role::Member))
            .map_err(|e| bad(e.to_string()))?;
        let key_node_id = verified.fingerprint().node_id();
        if key_node_id != node_id {
            return Err(bad(format!(
                "node id {node_id:016x} is not the certificate key's node id {key_node_id:016x}"
            )));
        }
        if self.is_revoked(verified.serial()) {
            return Err(bad(format!(
                "certificate serial {} was revoked",
                verified.serial()
            )));
        }
        let name = verified.name().to_owned();
        if self.members.get(&name).is_some_and(Member::is_present) {
            return Err(FailureReason::AlreadyMember { name });
        }
        if let Some((other, _)) = self
            .members
            .iter()
            .find(|(_, m)| m.is_present() && m.node_id == node_id)
        {
            return Err(FailureReason::NodeIdInUse {
                node_id,
                by: other.clone(),
            });
        }
        if self.members.values().filter(|m| m.is_present()).count() >= MAX_MEMBERS {
            return Err(FailureReason::GroupFull { max: MAX_MEMBERS });
        }
        if role == MemberRole::Voter {
            self.check_voter_room()?;
        }
        let next_seq = self.members.get(&name).map_or(1, |m| m.next_seq);
        self.members.insert(
            name,
            Member {
                node_id,
                cert: verified,
                role,
                addr: addr.to_owned(),
                next_seq,
                removed: false,
                revoked: false,
            },
        );
        Ok(())
    }

    fn check_voter_room(&self) -> Result<(), FailureReason> {
        if self.voters() >= self.rules.max_voters as usize {
            return Err(FailureReason::TooManyVoters {
                max: self.rules.max_voters,
            });
        }
        Ok(())
    }

    fn present_member_mut(
        &mut self,
        name: &str,
        node_id: NodeId,
    ) -> Result<&mut Member, FailureReason> {
        self.members
            .get_mut(name)
            .filter(|m| m.is_present() && m.node_id == node_id)
            .ok_or_else(|| FailureReason::NotAMember {
                name: name.to_owned(),
                node_id,
            })
    }

    fn apply_key_rotation(&mut self, k: &KeyRotation) -> Result<(), FailureReason> {
        if Some(k.epoch) != self.epoch.checked_add(1) {
            return Err(FailureReason::EpochOutOfOrder {
                current: self.epoch,
                got: k.epoch,
            });
        }
        let mut seen = BTreeSet::new();
        for w in &k.wrapped {
            let ok = self
                .members
                .get(&w.name)
                .is_some_and(|m| m.is_admitted() && m.node_id == w.node_id);
            if !ok {
                return Err(FailureReason::KeyWrappedToNonMember {
                    name: w.name.clone(),
                });
            }
            if !seen.insert(w.name.as_str()) {
                return Err(FailureReason::KeyWrappedTwice {
                    name: w.name.clone(),
                });
            }
        }
        if let Some((name, _)) = self.admitted().find(|(n, _)| !seen.contains(n)) {
            return Err(FailureReason::KeyNotWrappedFor {
                name: name.to_owned(),
            });
        }
        self.epoch = k.epoch;
        Ok(())
    }

    fn apply_revocation(&mut self, r: &RevocationNotice) -> Result<(), FailureReason> {
        let statement =
            r.revocation
                .verify(&self.root)
                .map_err(|_| FailureReason::BadRevocation {
                    name: r.revocation.statement.name.clone(),
                })?;
        self.revoked_serials.insert(statement.serial);
        // The statement names both the certificate's serial and its name; a revocation of
        // some other certificate of the same name leaves the member as it is.
        if let Some(m) = self.members.get_mut(&statement.name) {
            if m.is_present() && m.cert.serial() == statement.serial {
                m.revoked = true;
            }
        }
        Ok(())
    }
}

/// Structural only, for now: a checkpoint can only vouch for an earlier block. Whether the
/// hash is that block's, and the leader's signature, are checked in a later version.
fn check_checkpoint(header: &BlockHeader, c: &Checkpoint) -> Result<(), FailureReason> {
    if c.height >= header.height {
        return Err(FailureReason::CheckpointAhead {
            checkpoint: c.height,
            at: header.height,
        });
    }
    Ok(())
}
