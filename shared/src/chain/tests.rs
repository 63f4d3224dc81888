//! Verification of real chains: one valid chain, and each way of tampering with it caught
//! at the right height for the right reason.

use std::sync::OnceLock;

use super::*;
use crate::cert::{CertBody, Certificate, Revocation, Role, SignedRevocation};
use crate::codec::Canonical;
use crate::envelope::unwrap_key;
use crate::identity::tests::test_key;
use crate::identity::{Identity, NodeId};

fn root() -> &'static Identity {
    test_key(0)
}
fn alice() -> &'static Identity {
    test_key(1)
}
fn bob() -> &'static Identity {
    test_key(2)
}
/// Never admitted anywhere; also plays a forger's root.
fn mallory() -> &'static Identity {
    test_key(3)
}

const GROUP: GroupId = [0x42; 16];
const ADDR: &str = "127.0.0.1:7000";

fn rules() -> Rules {
    Rules {
        max_record_bytes: 1024,
        share_history: false,
        max_voters: 3,
    }
}

// The heights of the fixture chain.
const ADMIT_BOB: usize = 2;
const ALICE_1_3: usize = 4;
const BOB_1_2: usize = 5;
const ALICE_4_5: usize = 6;
const BOB_3: usize = 7;
const REVOKE_BOB: usize = 8;
const REMOVE_BOB: usize = 9;
const ALICE_6: usize = 11;
const LEN: usize = 13;

/// genesis, two admissions, a key rotation, records of both, bob's revocation and removal,
/// another rotation, one more batch and a checkpoint. Built once: signing takes a while.
fn fixture() -> &'static ChainBuilder<'static> {
    static F: OnceLock<ChainBuilder<'static>> = OnceLock::new();
    F.get_or_init(|| {
        let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
        let at = |h: u64, want: usize| assert_eq!(h as usize, want);
        at(
            b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap(),
            1,
        );
        at(
            b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap(),
            ADMIT_BOB,
        );
        at(b.rotate_key().unwrap(), 3);
        at(
            b.records("alice", [b"a1", b"a2", b"a3"]).unwrap(),
            ALICE_1_3,
        );
        at(b.records("bob", [b"b1", b"b2"]).unwrap(), BOB_1_2);
        at(b.records("alice", [b"a4", b"a5"]).unwrap(), ALICE_4_5);
        at(b.records("bob", [b"b3"]).unwrap(), BOB_3);
        at(b.revoke("bob").unwrap(), REVOKE_BOB);
        at(b.remove("bob").unwrap(), REMOVE_BOB);
        at(b.rotate_key().unwrap(), 10);
        at(b.records("alice", [b"a6"]).unwrap(), ALICE_6);
        at(b.checkpoint().unwrap(), LEN - 1);
        b
    })
}

fn blocks() -> Vec<StoredBlock> {
    fixture().blocks().to_vec()
}

fn verify(blocks: &[StoredBlock]) -> Result<ChainSummary, ChainFailure> {
    verify_chain(root().public(), blocks.iter().cloned().map(Ok::<_, String>))
}

/// The height and reason of the first failure; panics if the chain verifies.
fn failure(blocks: &[StoredBlock]) -> (u64, FailureReason) {
    let f = verify(blocks).expect_err("a tampered chain verified");
    (f.height, f.reason)
}

fn batch_mut(b: &mut StoredBlock) -> &mut RecordBatch {
    match &mut b.block.body {
        BlockBody::Records(r) => r,
        other => panic!("not a records block: {other:?}"),
    }
}

#[test]
fn a_real_chain_verifies_with_its_count_and_head() {
    let blocks = blocks();
    assert_eq!(blocks.len(), LEN);
    let s = verify(&blocks).unwrap();
    assert_eq!(s.count, LEN as u64);
    assert_eq!(s.head_height, LEN as u64 - 1);
    assert_eq!(s.head_hash, blocks[LEN - 1].hash);
    assert_eq!(s.head_hash, blocks[LEN - 1].block.hash());
}

#[test]
fn the_incremental_verifier_agrees_and_keeps_the_members() {
    let blocks = blocks();
    let mut v = ChainVerifier::new(root().public());
    assert_eq!(v.summary(), None);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(v.next_height(), i as u64);
        v.push(b).unwrap();
        assert_eq!(v.summary().unwrap().head_hash, b.hash);
    }
    assert_eq!(v.finish(), verify(&blocks));
    let state = v.state().unwrap();
    assert_eq!(state, fixture().state());
    assert_eq!(state.epoch(), 2);
    assert_eq!(state.group_id(), &GROUP);
    let alice = state.member("alice").unwrap();
    assert!(alice.is_admitted());
    assert_eq!(alice.next_seq, 7);
    assert_eq!(alice.node_id, self::alice().fingerprint().node_id());
    let bob = state.member("bob").unwrap();
    assert!(bob.removed && bob.revoked && !bob.is_admitted());
    assert_eq!(bob.next_seq, 4);
    assert!(state.is_revoked(bob.cert.serial()));
    assert_eq!(state.admitted().count(), 1);
}

#[test]
fn stored_bytes_round_trip_and_verify_as_read_from_storage() {
    let bytes: Vec<Vec<u8>> = blocks().iter().map(Canonical::to_canonical).collect();
    let s = verify_chain(
        root().public(),
        bytes.iter().map(|b| StoredBlock::from_canonical(b)),
    )
    .unwrap();
    assert_eq!(s.count, LEN as u64);
    for (b, stored) in bytes.iter().zip(blocks()) {
        assert_eq!(&stored.to_canonical(), b);
        assert_eq!(&b[b.len() - 32..], &stored.hash.0);
    }
}

#[test]
fn records_open_with_the_epoch_key_and_keys_reach_only_admitted_members() {
    let f = fixture();
    let b = &f.blocks()[ALICE_1_3];
    let BlockBody::Records(batch) = &b.block.body else {
        panic!()
    };
    let key = f.group_key(1).unwrap();
    assert_eq!(batch.records[1].open(key, "alice").unwrap(), b"a2");
    assert!(batch.records[1]
        .open(f.group_key(2).unwrap(), "alice")
        .is_err());
    let rotation = |h: usize| match &f.blocks()[h].block.body {
        BlockBody::KeyRotation(k) => k.clone(),
        _ => panic!(),
    };
    let first = rotation(3);
    assert_eq!(first.wrapped.len(), 2);
    for (w, id) in first.wrapped.iter().zip([alice(), bob()]) {
        assert_eq!(&unwrap_key(id, &w.wrapped).unwrap(), key);
    }
    let second = rotation(10);
    let names: Vec<_> = second.wrapped.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["alice"],
        "the removed member must not get the new key"
    );
}

#[test]
fn system_blocks_carry_a_leader_signature_over_the_documented_bytes() {
    for b in fixture().blocks() {
        let h = &b.block.header;
        match b
            .block
            .body
            .leader_signing_input(&GROUP, h.time_ms, h.term, h.leader)
        {
            Some(input) => {
                assert_eq!(h.leader, alice().fingerprint().node_id());
                let sig = b.block.body.leader_sig().unwrap();
                alice().public().verify(&input, sig).unwrap();
                // Another term gives other bytes.
                let other =
                    b.block
                        .body
                        .leader_signing_input(&GROUP, h.time_ms, h.term + 1, h.leader);
                assert!(alice().public().verify(&other.unwrap(), sig).is_err());
            }
            None => assert!(matches!(h.kind, BlockKind::Records | BlockKind::Refused)),
        }
    }
}

#[test]
fn a_flipped_ciphertext_byte_is_a_wrong_hash_at_that_height() {
    let mut blocks = blocks();
    batch_mut(&mut blocks[ALICE_1_3]).records[0].ciphertext[3] ^= 1;
    let (h, r) = failure(&blocks);
    assert_eq!(h, ALICE_1_3 as u64);
    assert!(matches!(r, FailureReason::WrongHash { .. }), "{r}");
}

#[test]
fn a_rehashed_ciphertext_change_fails_the_author_signature() {
    let mut blocks = blocks();
    let b = &mut blocks[ALICE_1_3];
    batch_mut(b).records[0].ciphertext[3] ^= 1;
    b.hash = b.block.hash();
    assert_eq!(
        failure(&blocks),
        (
            ALICE_1_3 as u64,
            FailureReason::BadAuthorSignature {
                author: "alice".into()
            }
        )
    );
}

#[test]
fn a_rehashed_header_change_breaks_the_next_link() {
    let mut blocks = blocks();
    let b = &mut blocks[BOB_1_2];
    b.block.header.time_ms += 1;
    b.hash = b.block.hash();
    let (h, r) = failure(&blocks);
    assert_eq!(h, BOB_1_2 as u64 + 1);
    assert!(matches!(r, FailureReason::BrokenLink { .. }), "{r}");
}

#[test]
fn a_changed_prev_hash_is_a_broken_link_at_that_height() {
    let mut blocks = blocks();
    let b = &mut blocks[ALICE_4_5];
    b.block.header.prev_hash.0[0] ^= 0x80;
    b.hash = b.block.hash();
    let (h, r) = failure(&blocks);
    assert_eq!(h, ALICE_4_5 as u64);
    assert_eq!(
        r,
        FailureReason::BrokenLink {
            expected: blocks[ALICE_4_5 - 1].hash,
            got: blocks[ALICE_4_5].block.header.prev_hash,
        }
    );
}

#[test]
fn records_by_a_never_admitted_author_are_refused() {
    let mut blocks = blocks();
    let key = fixture().group_key(1).unwrap();
    let rec = Record::seal(key, "mallory", 1, 1, b"m1").unwrap();
    let batch = RecordBatch::sign(mallory(), &GROUP, "mallory", vec![rec]).unwrap();
    blocks[BOB_3].block.body = BlockBody::Records(batch);
    relink(&mut blocks, BOB_3);
    assert_eq!(
        failure(&blocks),
        (
            BOB_3 as u64,
            FailureReason::AuthorNotAdmitted {
                author: "mallory".into()
            }
        )
    );
}

#[test]
fn records_signed_by_another_key_under_a_members_name_are_refused() {
    let mut blocks = blocks();
    let recs = batch_mut(&mut blocks[BOB_3]).records.clone();
    let forged = RecordBatch::sign(mallory(), &GROUP, "bob", recs).unwrap();
    blocks[BOB_3].block.body = BlockBody::Records(forged);
    relink(&mut blocks, BOB_3);
    assert_eq!(
        failure(&blocks),
        (
            BOB_3 as u64,
            FailureReason::BadAuthorSignature {
                author: "bob".into()
            }
        )
    );
}

#[test]
fn a_revoked_author_cannot_append_but_its_earlier_blocks_stay_valid() {
    let mut blocks = blocks();
    // bob's next batch, signed with bob's real key, after the revocation.
    let key = fixture().group_key(1).unwrap();
    let rec = Record::seal(key, "bob", 4, 1, b"b4").unwrap();
    let batch = RecordBatch::sign(bob(), &GROUP, "bob", vec![rec]).unwrap();
    let mut late = blocks[BOB_3].clone();
    late.block.body = BlockBody::Records(batch);
    blocks.insert(REVOKE_BOB + 1, late);
    relink(&mut blocks, REVOKE_BOB + 1);
    assert_eq!(
        failure(&blocks),
        (
            REVOKE_BOB as u64 + 1,
            FailureReason::AuthorNotAdmitted {
                author: "bob".into()
            }
        )
    );
}

#[test]
fn a_deleted_batch_is_a_skipped_sequence_at_the_authors_next_block() {
    let mut blocks = blocks();
    blocks.remove(ALICE_1_3);
    relink(&mut blocks, ALICE_1_3);
    // bob's block moved down to ALICE_1_3 and still verifies; alice's next batch fails.
    assert_eq!(
        failure(&blocks),
        (
            ALICE_4_5 as u64 - 1,
            FailureReason::SequenceSkipped {
                author: "alice".into(),
                expected: 1,
                got: 4
            }
        )
    );
}

#[test]
fn swapped_batches_of_one_author_fail_at_the_first_swapped_height() {
    let mut blocks = blocks();
    blocks.swap(ALICE_1_3, ALICE_4_5);
    relink(&mut blocks, ALICE_1_3);
    assert_eq!(
        failure(&blocks),
        (
            ALICE_1_3 as u64,
            FailureReason::SequenceSkipped {
                author: "alice".into(),
                expected: 1,
                got: 4
            }
        )
    );
}

#[test]
fn a_repeated_batch_is_a_repeated_sequence() {
    let mut blocks = blocks();
    let again = blocks[ALICE_1_3].clone();
    blocks.insert(ALICE_4_5, again);
    relink(&mut blocks, ALICE_4_5);
    assert_eq!(
        failure(&blocks),
        (
            ALICE_4_5 as u64,
            FailureReason::SequenceRepeated {
                author: "alice".into(),
                expected: 4,
                got: 1
            }
        )
    );
}

#[test]
fn a_gap_inside_a_batch_is_a_skipped_sequence() {
    let f = fixture();
    let mut state = f.state().clone();
    let key = f.group_key(2).unwrap();
    let recs = vec![
        Record::seal(key, "alice", 7, 2, b"x").unwrap(),
        Record::seal(key, "alice", 9, 2, b"y").unwrap(),
    ];
    let batch = RecordBatch::sign(alice(), &GROUP, "alice", recs).unwrap();
    let header = next_header(BlockKind::Records);
    let before = state.clone();
    assert_eq!(
        state.apply(&header, &BlockBody::Records(batch)),
        Err(FailureReason::SequenceSkipped {
            author: "alice".into(),
            expected: 8,
            got: 9
        })
    );
    assert_eq!(
        state, before,
        "a failed apply must leave the state as it was"
    );
}

#[test]
fn the_wrong_root_key_fails_at_genesis() {
    let f = verify_chain(
        mallory().public(),
        blocks().into_iter().map(Ok::<_, String>),
    )
    .unwrap_err();
    assert_eq!(f.height, 0);
    assert_eq!(
        f.reason,
        FailureReason::WrongRoot {
            given: mallory().fingerprint(),
            in_chain: root().fingerprint()
        }
    );
}

fn admit_body(cert: Certificate, node_id: NodeId) -> BlockBody {
    BlockBody::Membership(Membership {
        change: MembershipChange::Admit {
            cert,
            node_id,
            addr: ADDR.into(),
            role: MemberRole::Voter,
        },
        leader_sig: Vec::new(),
    })
}

fn bob_cert_body(role: Role) -> CertBody {
    CertBody {
        name: "bob".into(),
        role,
        spki_der: bob().public().spki_der().to_vec(),
        serial: 99,
        issued_at_ms: 1,
    }
}

fn replace_and_expect_bad_cert(cert: Certificate, node_id: NodeId) {
    let mut blocks = blocks();
    let mut body = admit_body(cert, node_id);
    sign(alice(), &mut body, &blocks[ADMIT_BOB].block.header);
    blocks[ADMIT_BOB].block.body = body;
    relink(&mut blocks, ADMIT_BOB);
    let (h, r) = failure(&blocks);
    assert_eq!(h, ADMIT_BOB as u64);
    assert!(
        matches!(&r, FailureReason::BadCertificate { name, .. } if name == "bob"),
        "{r}"
    );
}

#[test]
fn a_forged_certificate_in_an_admission_is_refused() {
    let forged = Certificate::issue(mallory(), bob_cert_body(Role::Member)).unwrap();
    replace_and_expect_bad_cert(forged, bob().fingerprint().node_id());
}

#[test]
fn a_proxy_certificate_or_a_foreign_node_id_in_an_admission_is_refused() {
    let proxy = Certificate::issue(root(), bob_cert_body(Role::Proxy)).unwrap();
    replace_and_expect_bad_cert(proxy, bob().fingerprint().node_id());
    let member = Certificate::issue(root(), bob_cert_body(Role::Member)).unwrap();
    replace_and_expect_bad_cert(member, mallory().fingerprint().node_id());
}

#[test]
fn a_chain_without_its_genesis_is_refused() {
    let mut blocks = blocks();
    blocks.remove(0);
    assert_eq!(
        failure(&blocks),
        (
            0,
            FailureReason::NotGenesis {
                kind: BlockKind::Membership,
                height: 1
            }
        )
    );
    assert_eq!(failure(&[]), (0, FailureReason::Empty));
}

#[test]
fn a_missing_block_is_a_height_gap() {
    let mut blocks = blocks();
    blocks.remove(BOB_1_2);
    assert_eq!(
        failure(&blocks),
        (
            BOB_1_2 as u64,
            FailureReason::HeightGap {
                expected: BOB_1_2 as u64,
                got: BOB_1_2 as u64 + 1
            }
        )
    );
}

#[test]
fn a_read_error_fails_at_the_height_being_read() {
    let items = blocks()
        .into_iter()
        .take(5)
        .map(Ok)
        .chain([Err("disk on fire")]);
    let f = verify_chain(root().public(), items).unwrap_err();
    assert_eq!(f.height, 5);
    assert_eq!(f.reason, FailureReason::Read("disk on fire".into()));
    assert!(f.to_string().contains("block 5") && f.to_string().contains("disk on fire"));
}

#[test]
fn another_version_or_a_mismatched_kind_is_refused() {
    let mut blocks = blocks();
    blocks[BOB_3].block.header.version = 2;
    relink(&mut blocks, BOB_3);
    assert_eq!(
        failure(&blocks),
        (
            BOB_3 as u64,
            FailureReason::WrongVersion {
                expected: 1,
                got: 2
            }
        )
    );
    let mut blocks = self::blocks();
    blocks[BOB_3].block.header.kind = BlockKind::Refused;
    relink(&mut blocks, BOB_3);
    assert_eq!(
        failure(&blocks),
        (
            BOB_3 as u64,
            FailureReason::KindMismatch {
                header: BlockKind::Refused,
                body: BlockKind::Records
            }
        )
    );
}

#[test]
fn a_verifier_stays_failed() {
    let mut blocks = blocks();
    blocks[3].hash.0[0] ^= 1;
    let mut v = ChainVerifier::new(root().public());
    for b in &blocks[..3] {
        v.push(b).unwrap();
    }
    let first = v.push(&blocks[3]).unwrap_err();
    assert_eq!(first.height, 3);
    assert_eq!(v.push(&blocks[4]).unwrap_err(), first);
    assert_eq!(v.finish().unwrap_err(), first);
    assert_eq!(v.summary().unwrap().head_height, 2);
}

#[test]
fn a_second_genesis_is_refused() {
    let mut blocks = blocks();
    let g = blocks[0].clone();
    blocks.push(g);
    relink(&mut blocks, LEN);
    assert_eq!(failure(&blocks), (LEN as u64, FailureReason::SecondGenesis));
}

/// Signs a system body as `who` for the time and term of `header` (which must name `who` as
/// its leader for the signature to verify).
fn sign(who: &Identity, body: &mut BlockBody, header: &BlockHeader) {
    sign_as_leader(who, &GROUP, body, header.time_ms, header.term).unwrap();
}

/// The header of the block after the fixture's head, as alice would propose it.
fn next_header(kind: BlockKind) -> BlockHeader {
    let head = fixture().head();
    BlockHeader {
        height: head.height() + 1,
        prev_hash: head.hash,
        time_ms: head.block.header.time_ms + 1,
        kind,
        ..head.block.header.clone()
    }
}

/// Applies `body` after the fixture's head, signed by alice if it is a system block.
fn apply_to_head(mut body: BlockBody) -> Result<(), FailureReason> {
    let f = fixture();
    let mut state = f.state().clone();
    let header = next_header(body.kind());
    if body.kind().is_leader_signed() {
        sign(alice(), &mut body, &header);
    }
    let before = state.clone();
    let r = state.apply(&header, &body);
    if r.is_err() {
        assert_eq!(
            state, before,
            "a failed apply must leave the state as it was"
        );
    }
    r
}

fn rotation(epoch: u64, to: &[(&str, &Identity)]) -> BlockBody {
    let key = crate::envelope::GroupKey::generate();
    BlockBody::KeyRotation(KeyRotation {
        epoch,
        wrapped: to
            .iter()
            .map(|(name, id)| WrappedKey {
                name: (*name).into(),
                node_id: id.fingerprint().node_id(),
                wrapped: crate::envelope::wrap_key(id.public(), &key).unwrap(),
            })
            .collect(),
        history: Vec::new(),
        leader_sig: Vec::new(),
    })
}

#[test]
fn key_rotations_go_up_by_one_and_reach_exactly_the_admitted_members() {
    let a = ("alice", alice());
    assert_eq!(apply_to_head(rotation(3, &[a])), Ok(()));
    assert_eq!(
        apply_to_head(rotation(4, &[a])),
        Err(FailureReason::EpochOutOfOrder { current: 2, got: 4 })
    );
    assert_eq!(
        apply_to_head(rotation(2, &[a])),
        Err(FailureReason::EpochOutOfOrder { current: 2, got: 2 })
    );
    assert_eq!(
        apply_to_head(rotation(3, &[a, ("bob", bob())])),
        Err(FailureReason::KeyWrappedToNonMember { name: "bob".into() })
    );
    assert_eq!(
        apply_to_head(rotation(3, &[("alice", mallory())])),
        Err(FailureReason::KeyWrappedToNonMember {
            name: "alice".into()
        })
    );
    assert_eq!(
        apply_to_head(rotation(3, &[a, a])),
        Err(FailureReason::KeyWrappedTwice {
            name: "alice".into()
        })
    );
    assert_eq!(
        apply_to_head(rotation(3, &[])),
        Err(FailureReason::KeyNotWrappedFor {
            name: "alice".into()
        })
    );
}

fn alice_batch(epoch: u64, len: usize) -> BlockBody {
    let f = fixture();
    let key = f.group_key(epoch.clamp(1, 2)).unwrap();
    let rec = Record::seal(key, "alice", 7, epoch, &vec![0; len]).unwrap();
    BlockBody::Records(RecordBatch::sign(alice(), &GROUP, "alice", vec![rec]).unwrap())
}

#[test]
fn the_previous_epoch_is_accepted_when_nobody_left_since() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.rotate_key().unwrap();
    // Sealed under epoch 1 while epoch 2 is current, and nobody left: accepted.
    let key = b.group_key(1).unwrap().clone();
    let rec = Record::seal(&key, "alice", 1, 1, b"late").unwrap();
    let batch = RecordBatch::sign(alice(), &GROUP, "alice", vec![rec]).unwrap();
    assert!(b.append(BlockBody::Records(batch)).is_ok());
}

#[test]
fn records_must_use_the_current_or_previous_epoch_and_the_groups_size() {
    assert_eq!(apply_to_head(alice_batch(2, 1024)), Ok(()));
    // Epoch 1 is the previous epoch, but bob was removed while it was current: a record
    // written now must not be readable with a key bob holds.
    for epoch in [0, 1, 3] {
        assert_eq!(
            apply_to_head(alice_batch(epoch, 10)),
            Err(FailureReason::RecordEpoch {
                author: "alice".into(),
                seq: 7,
                epoch,
                current: 2
            })
        );
    }
    assert_eq!(
        apply_to_head(alice_batch(2, 1025)),
        Err(FailureReason::RecordTooLarge {
            author: "alice".into(),
            seq: 7,
            len: 1025 + 16,
            max: 1024 + 16
        })
    );
}

#[test]
fn an_older_epoch_than_the_previous_is_refused() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    let stale = b.batch("alice", [b"old"]).unwrap();
    b.rotate_key().unwrap();
    b.rotate_key().unwrap();
    assert!(matches!(
        b.append(BlockBody::Records(stale)),
        Err(ChainError::Rejected(FailureReason::RecordEpoch {
            epoch: 1,
            current: 3,
            ..
        }))
    ));
}

fn rejected(r: Result<u64, ChainError>) -> FailureReason {
    match r {
        Err(ChainError::Rejected(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn membership_changes_follow_the_rules() {
    let mut b = ChainBuilder::new(
        root(),
        alice(),
        GROUP,
        Rules {
            max_voters: 1,
            ..rules()
        },
    )
    .unwrap();
    assert!(matches!(
        b.records("alice", [b"x"]),
        Err(ChainError::Invalid(_))
    ));
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    assert_eq!(
        rejected(b.admit(alice(), "alice", MemberRole::Voter, ADDR)),
        FailureReason::AlreadyMember {
            name: "alice".into()
        }
    );
    assert!(matches!(
        rejected(b.admit(alice(), "alice2", MemberRole::Learner, ADDR)),
        FailureReason::NodeIdInUse { by, .. } if by == "alice"
    ));
    assert_eq!(
        rejected(b.admit(bob(), "bob", MemberRole::Voter, ADDR)),
        FailureReason::TooManyVoters { max: 1 }
    );
    b.admit(bob(), "bob", MemberRole::Learner, ADDR).unwrap();
    assert_eq!(
        rejected(b.change_role("bob", MemberRole::Voter)),
        FailureReason::TooManyVoters { max: 1 }
    );
    // The only voter steps down (it signs that while still a voter)...
    b.change_role("alice", MemberRole::Learner).unwrap();
    // ...and then nobody may sign a system block: a learner does not lead.
    assert_eq!(
        rejected(b.change_role("bob", MemberRole::Voter)),
        FailureReason::SignerNotVoter {
            kind: BlockKind::Membership,
            leader: alice().fingerprint().node_id(),
            standing: SignerStanding::Learner,
        }
    );
    assert_eq!(verify(b.blocks()).unwrap().count as usize, b.blocks().len());

    // With room for two voters, leadership moves to bob, who removes alice.
    let mut b = ChainBuilder::new(
        root(),
        alice(),
        GROUP,
        Rules {
            max_voters: 2,
            ..rules()
        },
    )
    .unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Learner, ADDR).unwrap();
    b.change_role("bob", MemberRole::Voter).unwrap();
    b.change_role("alice", MemberRole::Learner).unwrap();
    b.set_leader(bob(), 2);
    b.remove("alice").unwrap();
    assert_eq!(
        rejected(b.remove("alice")),
        FailureReason::NotAMember {
            name: "alice".into(),
            node_id: alice().fingerprint().node_id()
        }
    );
    assert!(matches!(
        rejected(b.change_role("alice", MemberRole::Voter)),
        FailureReason::NotAMember { .. }
    ));
    let s = verify(b.blocks()).unwrap();
    assert_eq!(s.count as usize, b.blocks().len());
}

#[test]
fn a_readmitted_member_continues_its_sequence_but_not_with_a_revoked_certificate() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.records("bob", [b"1", b"2"]).unwrap();
    b.revoke("bob").unwrap();
    let old_cert = b.state().member("bob").unwrap().cert.certificate().clone();
    b.remove("bob").unwrap();
    b.rotate_key().unwrap();
    match b.append(admit_body(old_cert, bob().fingerprint().node_id())) {
        Err(ChainError::Rejected(FailureReason::BadCertificate { why, .. })) => {
            assert!(why.contains("revoked"), "{why}")
        }
        other => panic!("a revoked certificate was admitted: {other:?}"),
    }
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.records("bob", [b"3"]).unwrap();
    let BlockBody::Records(batch) = &b.head().block.body else {
        panic!()
    };
    assert_eq!(batch.first_seq(), Some(3));
    assert_eq!(verify(b.blocks()).unwrap().count as usize, b.blocks().len());
}

#[test]
fn revocations_must_be_signed_by_the_root() {
    let forged = SignedRevocation::issue(
        mallory(),
        Revocation {
            serial: 1,
            name: "alice".into(),
            revoked_at_ms: 0,
        },
    )
    .unwrap();
    assert_eq!(
        apply_to_head(BlockBody::Revocation(RevocationNotice {
            revocation: forged,
            leader_sig: Vec::new()
        })),
        Err(FailureReason::BadRevocation {
            name: "alice".into()
        })
    );
}

#[test]
fn checkpoints_vouch_for_earlier_hashes_and_refusals_change_nothing() {
    let f = fixture();
    let head = f.head();
    let checkpoint = |height, hash| {
        BlockBody::Checkpoint(Checkpoint {
            height,
            hash,
            leader_sig: Vec::new(),
        })
    };
    assert_eq!(apply_to_head(checkpoint(head.height(), head.hash)), Ok(()));
    let first_admission = &f.blocks()[1];
    assert_eq!(apply_to_head(checkpoint(1, first_admission.hash)), Ok(()));
    assert_eq!(apply_to_head(checkpoint(0, f.blocks()[0].hash)), Ok(()));
    assert_eq!(
        apply_to_head(checkpoint(1, head.hash)),
        Err(FailureReason::CheckpointMismatch {
            height: 1,
            vouched: head.hash,
            actual: first_admission.hash
        })
    );
    assert_eq!(
        apply_to_head(checkpoint(head.height() + 1, head.hash)),
        Err(FailureReason::CheckpointAhead {
            checkpoint: head.height() + 1,
            at: head.height() + 1
        })
    );
    assert_eq!(
        apply_to_head(BlockBody::Refused(Refused {
            entry_digest: Refused::digest_of(b"entry"),
            author: Some("nobody".into()),
            reason: "not a member".into()
        })),
        Ok(())
    );
}

#[test]
fn the_builder_refuses_records_over_the_groups_cap() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.refused(b"junk", None, "could not decode").unwrap();
    assert!(matches!(
        b.records("alice", [vec![0u8; 1025]]),
        Err(ChainError::Rejected(FailureReason::RecordTooLarge { .. }))
    ));
    b.records("alice", [vec![0u8; 1024]]).unwrap();
    assert_eq!(verify(b.blocks()).unwrap().count, 5);
}

/// Leader signatures, the founder, terms and checkpoints.
mod trust;
