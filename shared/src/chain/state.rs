//! The per-block rules, and the small state they need.
//!
//! [`ChainState`] holds what checking the next block needs and nothing else: the group's
//! id and rules, the root key, the members by name, the current key epoch, the last block's
//! height, term and leader, and the hashes of the last [`CHECKPOINT_WINDOW`] blocks. It grows
//! with the membership, never with the chain. The verifier drives it block by block; a peer
//! reuses it at apply time, so every replica refuses exactly the same entries.
//!
//! # Leader signatures, and the founder
//!
//! A system block (membership, key rotation, revocation, checkpoint) must carry a leader
//! signature over [`leader_signing_bytes`] with the header's time, term and leader, under the
//! key of the header's `leader`, who must be a voter at that height (present, not revoked,
//! role voter). Genesis is signed too, but no member exists yet to hold the key: the founder's
//! certificate arrives with the first admission. So [`ChainState::from_genesis`] keeps the
//! genesis signing input and signature, and until the founding admission (an `Admit` of the
//! genesis header's leader as a voter, proposed and signed by that same node) the only blocks
//! that pass are that admission and `refused` blocks (records fail anyway: nobody is admitted).
//! The founding admission checks both signatures under the certificate it carries.
//!
//! Records are signed by their author; refusals by nobody (every replica makes them alike).
//! Their headers' leaders need not be voters: a Raft leader that is not (or not yet, or no
//! longer) a voter in the chain still commits members' batches and refusals, and a refusal
//! must always be possible. Terms apply to every block.

use std::collections::{BTreeMap, BTreeSet};

use super::window::HashWindow;
use super::{
    leader_signing_bytes, BlockBody, BlockHash, BlockHeader, BlockKind, Checkpoint, FailureReason,
    Genesis, GroupId, KeyRotation, MemberRole, Membership, MembershipChange, RecordBatch,
    RevocationNotice, Rules, SignerStanding, CHECKPOINT_WINDOW, MAX_MEMBERS,
};
use crate::cert::{Certificate, Role, VerifiedCert};
use crate::codec::Writer;
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
    /// counts towards the members and voters) until it is removed, but may not append, gets
    /// no new keys and may not sign system blocks (another voter removes it).
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
    /// The oldest epoch a record may still use. Normally the previous epoch is accepted too
    /// (a record sealed just before a rotation); after a removal only keys drawn after it
    /// are, so nothing written after someone left is readable with a key they hold.
    min_record_epoch: u64,
    members: BTreeMap<String, Member>,
    /// Serials of revoked certificates, so that a revoked certificate cannot be admitted
    /// again. This grows with the revocations, which are rarer than admissions.
    revoked_serials: BTreeSet<u64>,
    /// The last block's height, term and leader.
    height: u64,
    term: u64,
    leader: NodeId,
    /// Hashes of the blocks below the last one, learned from each next block's `prev_hash`
    /// (the last block's own hash is the next block's `prev_hash`).
    recent: HashWindow,
    /// Until the founder is admitted: what the genesis block's signature must verify.
    founding: Option<Founding>,
}

/// The genesis block's leader signature, waiting for the founder's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Founding {
    founder: NodeId,
    signing_bytes: Vec<u8>,
    sig: Vec<u8>,
}

impl ChainState {
    /// Starts from a genesis block, checking that it names `root`, has usable rules and
    /// carries a leader signature; the signature itself is checked at the founder's admission
    /// (see the module docs). The header must be at height 0 (its zero `prev_hash` is the
    /// caller's business); its term and leader start the order of terms.
    pub fn from_genesis(
        root: &PublicKey,
        header: &BlockHeader,
        genesis: &Genesis,
    ) -> Result<Self, FailureReason> {
        if header.height != 0 {
            return Err(FailureReason::NotGenesis {
                kind: BlockKind::Genesis,
                height: header.height,
            });
        }
        if genesis.root_fingerprint != root.fingerprint() {
            return Err(FailureReason::WrongRoot {
                given: root.fingerprint(),
                in_chain: genesis.root_fingerprint,
            });
        }
        genesis.rules.check().map_err(FailureReason::BadRules)?;
        if genesis.leader_sig.is_empty() {
            return Err(FailureReason::MissingLeaderSignature {
                kind: BlockKind::Genesis,
            });
        }
        let mut unsigned = Writer::new();
        genesis.encode_unsigned(&mut unsigned);
        let signing_bytes = leader_signing_bytes(
            &genesis.group_id,
            BlockKind::Genesis,
            unsigned.as_slice(),
            header.time_ms,
            header.term,
            header.leader,
        );
        Ok(Self {
            root: root.clone(),
            group_id: genesis.group_id,
            rules: genesis.rules,
            epoch: 0,
            min_record_epoch: 0,
            members: BTreeMap::new(),
            revoked_serials: BTreeSet::new(),
            height: 0,
            term: header.term,
            leader: header.leader,
            recent: HashWindow::default(),
            founding: Some(Founding {
                founder: header.leader,
                signing_bytes,
                sig: genesis.leader_sig.clone(),
            }),
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
    /// The last block's height.
    pub fn height(&self) -> u64 {
        self.height
    }
    /// The last block's term and leader: the next block's may not be lower (see
    /// [`ChainState::apply`]).
    pub fn term_and_leader(&self) -> (u64, NodeId) {
        (self.term, self.leader)
    }
    /// The genesis block's leader while the founder is not admitted yet (the genesis
    /// signature is unchecked until then); `None` afterwards.
    pub fn founder_pending(&self) -> Option<NodeId> {
        self.founding.as_ref().map(|f| f.founder)
    }
    /// The hash of block `height`, if it is one of the last [`CHECKPOINT_WINDOW`] below the
    /// last block (whose own hash the state does not hold: the next block brings it).
    pub fn recent_hash(&self, height: u64) -> Option<BlockHash> {
        self.recent.get(height)
    }
    /// The member whose key has `node_id`: a present one if there is one, else a removed one.
    pub fn member_by_node_id(&self, node_id: NodeId) -> Option<(&str, &Member)> {
        let mut with_id = self.members().filter(|(_, m)| m.node_id == node_id);
        let first = with_id.next()?;
        if first.1.is_present() {
            return Some(first);
        }
        Some(with_id.find(|(_, m)| m.is_present()).unwrap_or(first))
    }

    /// Checks the block against the rules and, only if it passes, applies it. On an error the
    /// state is unchanged, so a peer can commit a refusal and go on.
    ///
    /// The header must be the next block's: its height one more than the last block's (else
    /// `HeightGap`) and its `prev_hash` the last block's hash, which the caller vouches for
    /// (the verifier compares it with the hash it computed, a peer takes it from its head);
    /// the state keeps it for checkpoints. In order:
    /// 1. the term never goes back (`TermWentBack`) and, within a term, neither does the
    ///    leader's node id (`LeaderWentBack`): openraft orders leaders by (term, node id);
    /// 2. a system block's leader signature (see the module docs);
    /// 3. the body's own rules.
    pub fn apply(&mut self, header: &BlockHeader, body: &BlockBody) -> Result<(), FailureReason> {
        if let BlockBody::Genesis(_) = body {
            return Err(FailureReason::SecondGenesis);
        }
        self.check_place(header)?;
        if body.kind().is_leader_signed() {
            if self.founding.is_some() {
                self.apply_founding(header, body)?;
                self.advance(header);
                return Ok(());
            }
            self.check_leader_signature(header, body)?;
        }
        match body {
            BlockBody::Genesis(_) => return Err(FailureReason::SecondGenesis),
            BlockBody::Records(b) => self.apply_records(b)?,
            BlockBody::Membership(m) => self.apply_membership(&m.change)?,
            BlockBody::KeyRotation(k) => self.apply_key_rotation(k)?,
            BlockBody::Revocation(r) => self.apply_revocation(r)?,
            BlockBody::Checkpoint(c) => self.check_checkpoint(header, c)?,
            // A refusal records that an entry failed; it changes nothing.
            BlockBody::Refused(_) => {}
        }
        self.advance(header);
        Ok(())
    }

    fn check_place(&self, header: &BlockHeader) -> Result<(), FailureReason> {
        let expected = self
            .height
            .checked_add(1)
            .ok_or_else(|| FailureReason::Malformed("the chain's height overflows".into()))?;
        if header.height != expected {
            return Err(FailureReason::HeightGap {
                expected,
                got: header.height,
            });
        }
        if header.term < self.term {
            return Err(FailureReason::TermWentBack {
                previous: self.term,
                got: header.term,
            });
        }
        if header.term == self.term && header.leader < self.leader {
            return Err(FailureReason::LeaderWentBack {
                term: header.term,
                previous: self.leader,
                got: header.leader,
            });
        }
        Ok(())
    }

    /// Takes in the header of a block that passed.
    fn advance(&mut self, header: &BlockHeader) {
        debug_assert_eq!(self.recent.end(), self.height);
        self.recent.push(header.prev_hash);
        self.height = header.height;
        self.term = header.term;
        self.leader = header.leader;
    }

    /// The header's leader is a voter here and signed the block as documented.
    fn check_leader_signature(
        &self,
        header: &BlockHeader,
        body: &BlockBody,
    ) -> Result<(), FailureReason> {
        let kind = body.kind();
        let sig = body.leader_sig().unwrap_or_default();
        if sig.is_empty() {
            return Err(FailureReason::MissingLeaderSignature { kind });
        }
        let not_voter = |standing| FailureReason::SignerNotVoter {
            kind,
            leader: header.leader,
            standing,
        };
        let Some((name, leader)) = self.member_by_node_id(header.leader) else {
            return Err(not_voter(SignerStanding::NotAMember));
        };
        if leader.removed {
            return Err(not_voter(SignerStanding::Removed));
        }
        if leader.revoked {
            return Err(not_voter(SignerStanding::Revoked));
        }
        if leader.role != MemberRole::Voter {
            return Err(not_voter(SignerStanding::Learner));
        }
        let input = self.leader_signing_input(header, body)?;
        if leader.cert.public_key().verify(&input, sig).is_ok() {
            return Ok(());
        }
        // Only to say what is wrong (this costs a check per member, on failure only): whether
        // another member signed, naming itself as leader (a header whose leader was rewritten)
        // or this block's leader.
        let signed_by = |m: &Member| {
            let key = m.cert.public_key();
            key.verify(&input, sig).is_ok()
                || body
                    .leader_signing_input(&self.group_id, header.time_ms, header.term, m.node_id)
                    .is_some_and(|own| key.verify(&own, sig).is_ok())
        };
        if let Some((signer, _)) = self.members().find(|(n, m)| *n != name && signed_by(m)) {
            return Err(FailureReason::SignerNotLeader {
                kind,
                signer: signer.to_owned(),
                leader: header.leader,
            });
        }
        Err(FailureReason::BadLeaderSignature {
            kind,
            leader: header.leader,
            name: name.to_owned(),
        })
    }

    fn leader_signing_input(
        &self,
        header: &BlockHeader,
        body: &BlockBody,
    ) -> Result<Vec<u8>, FailureReason> {
        body.leader_signing_input(&self.group_id, header.time_ms, header.term, header.leader)
            .ok_or_else(|| {
                FailureReason::Malformed(format!("{} has no leader signature", body.kind()))
            })
    }

    /// Before the founder is admitted, the only system block that passes is its admission,
    /// which also vouches for the genesis block's signature.
    fn apply_founding(
        &mut self,
        header: &BlockHeader,
        body: &BlockBody,
    ) -> Result<(), FailureReason> {
        let Some(founding) = &self.founding else {
            return Err(FailureReason::Malformed("no founder pending".into()));
        };
        let founder = founding.founder;
        let kind = body.kind();
        let BlockBody::Membership(Membership {
            change:
                MembershipChange::Admit {
                    cert,
                    node_id,
                    addr,
                    role: MemberRole::Voter,
                },
            leader_sig,
        }) = body
        else {
            return Err(FailureReason::FounderNotAdmitted { kind, founder });
        };
        if *node_id != founder || header.leader != founder {
            return Err(FailureReason::FounderNotAdmitted { kind, founder });
        }
        if leader_sig.is_empty() {
            return Err(FailureReason::MissingLeaderSignature { kind });
        }
        let (name, member) = self.check_admit(cert, *node_id, addr, MemberRole::Voter)?;
        let key = member.cert.public_key();
        let input = self.leader_signing_input(header, body)?;
        key.verify(&input, leader_sig)
            .map_err(|_| FailureReason::BadLeaderSignature {
                kind,
                leader: header.leader,
                name: name.clone(),
            })?;
        key.verify(&founding.signing_bytes, &founding.sig)
            .map_err(|_| FailureReason::BadGenesisSignature {
                founder: name.clone(),
            })?;
        self.members.insert(name, member);
        self.founding = None;
        Ok(())
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
            // its author may have sealed it just before a rotation was committed, but never
            // under a key drawn before the last removal (see `min_record_epoch`).
            if rec.epoch == 0
                || rec.epoch > self.epoch
                || rec.epoch.saturating_add(1) < self.epoch
                || rec.epoch < self.min_record_epoch
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
                self.min_record_epoch = self.epoch.saturating_add(1);
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
        let (name, member) = self.check_admit(cert, node_id, addr, role)?;
        self.members.insert(name, member);
        Ok(())
    }

    /// Everything an admission must pass; the member it would add, by name.
    fn check_admit(
        &self,
        cert: &Certificate,
        node_id: NodeId,
        addr: &str,
        role: MemberRole,
    ) -> Result<(String, Member), FailureReason> {
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
        let member = Member {
            node_id,
            cert: verified,
            role,
            addr: addr.to_owned(),
            next_seq,
            removed: false,
            revoked: false,
        };
        Ok((name, member))
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
        if !k.history.is_empty() && !self.rules.share_history {
            return Err(FailureReason::HistoryNotShared);
        }
        let mut given = BTreeSet::new();
        for h in &k.history {
            let member = self
                .members
                .values()
                .any(|m| m.is_admitted() && m.node_id == h.node_id);
            if !member || h.epoch == 0 || h.epoch >= k.epoch || !given.insert((h.node_id, h.epoch))
            {
                return Err(FailureReason::BadHistoryKey {
                    node_id: h.node_id,
                    epoch: h.epoch,
                });
            }
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

impl ChainState {
    /// A checkpoint vouches for an earlier block within the window, by its true hash.
    fn check_checkpoint(&self, header: &BlockHeader, c: &Checkpoint) -> Result<(), FailureReason> {
        if c.height >= header.height {
            return Err(FailureReason::CheckpointAhead {
                checkpoint: c.height,
                at: header.height,
            });
        }
        let outside = FailureReason::CheckpointOutsideWindow {
            checkpoint: c.height,
            at: header.height,
            window: CHECKPOINT_WINDOW,
        };
        if header.height - c.height > CHECKPOINT_WINDOW {
            return Err(outside);
        }
        // The block just below this one is not in the window yet: its hash is `prev_hash`.
        let actual = if c.height + 1 == header.height {
            header.prev_hash
        } else {
            self.recent.get(c.height).ok_or(outside)?
        };
        if actual != c.hash {
            return Err(FailureReason::CheckpointMismatch {
                height: c.height,
                vouched: c.hash,
                actual,
            });
        }
        Ok(())
    }
}
