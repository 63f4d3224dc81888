//! The rules about who may sign what and when: leader signatures of system blocks, the
//! founder, the order of terms and leaders, checkpoints; and rewrites only they catch.

use super::*;

fn id_of(who: &Identity) -> NodeId {
    who.fingerprint().node_id()
}

/// Makes `block` look proposed by `who` in `term`: its header names them, and a system body is
/// signed by `who` for that header. Hashes are left to [`relink`].
fn repropose(block: &mut StoredBlock, who: &Identity, term: u64) {
    let header = &mut block.block.header;
    header.leader = id_of(who);
    header.term = term;
    if header.kind.is_leader_signed() {
        let header = header.clone();
        sign(who, &mut block.block.body, &header);
    }
}

fn sig_mut(block: &mut StoredBlock) -> &mut Vec<u8> {
    block.block.body.leader_sig_mut().expect("a system block")
}

const ROTATION: usize = 3;

#[test]
fn a_forged_leader_signature_is_refused() {
    // A byte of alice's signature flipped, and the hash recomputed.
    let mut blocks = blocks();
    sig_mut(&mut blocks[ROTATION])[7] ^= 1;
    relink(&mut blocks, ROTATION);
    let bad = FailureReason::BadLeaderSignature {
        kind: BlockKind::KeyRotation,
        leader: id_of(alice()),
        name: "alice".into(),
    };
    assert_eq!(failure(&blocks), (ROTATION as u64, bad.clone()));

    // Signed by a key that is no member's, the header still naming alice.
    let mut blocks = self::blocks();
    let header = blocks[ROTATION].block.header.clone();
    sign(mallory(), &mut blocks[ROTATION].block.body, &header);
    relink(&mut blocks, ROTATION);
    assert_eq!(failure(&blocks), (ROTATION as u64, bad));

    // The body changed after signing: another wrapped key list.
    let mut blocks = self::blocks();
    let BlockBody::KeyRotation(k) = &mut blocks[ROTATION].block.body else {
        panic!()
    };
    k.wrapped.reverse();
    relink(&mut blocks, ROTATION);
    assert!(matches!(
        failure(&blocks),
        (h, FailureReason::BadLeaderSignature { .. }) if h == ROTATION as u64
    ));
}

#[test]
fn a_missing_leader_signature_is_refused() {
    for at in [ADMIT_BOB, ROTATION, REVOKE_BOB, REMOVE_BOB, LEN - 1] {
        let mut blocks = blocks();
        let kind = blocks[at].block.header.kind;
        sig_mut(&mut blocks[at]).clear();
        relink(&mut blocks, at);
        assert_eq!(
            failure(&blocks),
            (at as u64, FailureReason::MissingLeaderSignature { kind })
        );
    }
    let mut blocks = blocks();
    sig_mut(&mut blocks[0]).clear();
    relink(&mut blocks, 0);
    assert_eq!(
        failure(&blocks),
        (
            0,
            FailureReason::MissingLeaderSignature {
                kind: BlockKind::Genesis
            }
        )
    );
}

#[test]
fn a_signature_for_another_term_or_time_than_the_headers_is_refused() {
    // What a leader deposed between reading its term and proposing would make.
    let mut blocks = blocks();
    let mut header = blocks[ROTATION].block.header.clone();
    header.term += 1;
    sign(alice(), &mut blocks[ROTATION].block.body, &header);
    relink(&mut blocks, ROTATION);
    assert!(matches!(
        failure(&blocks),
        (h, FailureReason::BadLeaderSignature { .. }) if h == ROTATION as u64
    ));
    // A rewritten time, hashes recomputed: the signature covers the time.
    let mut blocks = self::blocks();
    blocks[ROTATION].block.header.time_ms += 1;
    relink(&mut blocks, ROTATION);
    assert!(matches!(
        failure(&blocks),
        (h, FailureReason::BadLeaderSignature { .. }) if h == ROTATION as u64
    ));
}

#[test]
fn a_block_signed_by_another_voter_than_the_headers_leader_is_refused() {
    // bob (a voter from ADMIT_BOB on) signed the rotation as its own proposal in term 1, and
    // the header was rewritten to name alice.
    let mut blocks = blocks();
    repropose(&mut blocks[ROTATION], bob(), 1);
    blocks[ROTATION].block.header.leader = id_of(alice());
    relink(&mut blocks, ROTATION);
    let not_leader = FailureReason::SignerNotLeader {
        kind: BlockKind::KeyRotation,
        signer: "bob".into(),
        leader: id_of(alice()),
    };
    assert_eq!(failure(&blocks), (ROTATION as u64, not_leader.clone()));
    // bob signed bytes that name alice as leader: the same.
    let mut blocks = self::blocks();
    let header = blocks[ROTATION].block.header.clone();
    let mut body = blocks[ROTATION].block.body.clone();
    let input = body
        .leader_signing_input(&GROUP, header.time_ms, header.term, header.leader)
        .unwrap();
    *body.leader_sig_mut().unwrap() = bob().sign(&input).unwrap();
    blocks[ROTATION].block.body = body;
    relink(&mut blocks, ROTATION);
    assert_eq!(failure(&blocks), (ROTATION as u64, not_leader));
}

#[test]
fn a_signer_that_is_not_a_voter_is_refused() {
    let not_voter = |kind, who: &Identity, standing| FailureReason::SignerNotVoter {
        kind,
        leader: id_of(who),
        standing,
    };
    // Never admitted: mallory proposes and signs the rotation in a later term.
    let mut blocks = blocks();
    repropose(&mut blocks[ROTATION], mallory(), 2);
    relink(&mut blocks, ROTATION);
    assert_eq!(
        failure(&blocks),
        (
            ROTATION as u64,
            not_voter(
                BlockKind::KeyRotation,
                mallory(),
                SignerStanding::NotAMember
            )
        )
    );
    // Revoked: bob signs its own removal, just after its revocation.
    let mut blocks = self::blocks();
    repropose(&mut blocks[REMOVE_BOB], bob(), 2);
    relink(&mut blocks, REMOVE_BOB);
    assert_eq!(
        failure(&blocks),
        (
            REMOVE_BOB as u64,
            not_voter(BlockKind::Membership, bob(), SignerStanding::Revoked)
        )
    );
    // Removed: bob signs the rotation after its removal.
    let mut blocks = self::blocks();
    repropose(&mut blocks[REMOVE_BOB + 1], bob(), 2);
    relink(&mut blocks, REMOVE_BOB + 1);
    assert_eq!(
        failure(&blocks),
        (
            REMOVE_BOB as u64 + 1,
            not_voter(BlockKind::KeyRotation, bob(), SignerStanding::Removed)
        )
    );
    // A learner, in a chain of its own; the builder refuses to sign as it too.
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Learner, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.set_leader(bob(), 2);
    let learner = not_voter(BlockKind::KeyRotation, bob(), SignerStanding::Learner);
    assert_eq!(rejected(b.rotate_key()), learner);
    let mut blocks = b.blocks().to_vec();
    repropose(&mut blocks[3], bob(), 2);
    relink(&mut blocks, 3);
    assert_eq!(failure(&blocks), (3, learner));
    // A learner's records still go in under its leadership: only system blocks need a voter.
    b.records("alice", [b"x"]).unwrap();
    b.refused(b"junk", None, "could not decode").unwrap();
    assert_eq!(verify(b.blocks()).unwrap().count, 6);
}

#[test]
fn the_genesis_signature_is_checked_at_the_founders_admission() {
    // A genesis signed by another key than the founder's admitted certificate.
    let mut blocks = blocks();
    let header = blocks[0].block.header.clone();
    sign(mallory(), &mut blocks[0].block.body, &header);
    relink(&mut blocks, 0);
    assert_eq!(
        failure(&blocks),
        (
            1,
            FailureReason::BadGenesisSignature {
                founder: "alice".into()
            }
        )
    );
    // Until then the genesis is unchecked, and a chain that ends there does not verify.
    assert_eq!(
        failure(&blocks[..1]),
        (0, FailureReason::GenesisUnverifiable)
    );
    assert_eq!(
        failure(&self::blocks()[..1]),
        (0, FailureReason::GenesisUnverifiable)
    );
    let mut v = ChainVerifier::new(root().public());
    v.push(&self::blocks()[0]).unwrap();
    assert_eq!(v.state().unwrap().founder_pending(), Some(id_of(alice())));
    v.push(&self::blocks()[1]).unwrap();
    assert_eq!(v.state().unwrap().founder_pending(), None);
}

#[test]
fn only_the_founders_own_admission_as_a_voter_may_follow_genesis() {
    let founder = id_of(alice());
    let not_founded = |kind| FailureReason::FounderNotAdmitted { kind, founder };
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    // Refusals may come first (records by nobody, say): they change nothing.
    b.refused(b"early", Some("alice"), "not admitted").unwrap();
    assert_eq!(
        rejected(b.admit(bob(), "bob", MemberRole::Voter, ADDR)),
        not_founded(BlockKind::Membership)
    );
    assert_eq!(
        rejected(b.admit(alice(), "alice", MemberRole::Learner, ADDR)),
        not_founded(BlockKind::Membership)
    );
    assert_eq!(
        rejected(b.rotate_key()),
        not_founded(BlockKind::KeyRotation)
    );
    assert_eq!(rejected(b.checkpoint()), not_founded(BlockKind::Checkpoint));
    // The founder's admission proposed by someone else.
    b.set_leader(bob(), 2);
    assert_eq!(
        rejected(b.admit(alice(), "alice", MemberRole::Voter, ADDR)),
        not_founded(BlockKind::Membership)
    );
    assert_eq!(failure(b.blocks()), (0, FailureReason::GenesisUnverifiable));
    b.set_leader(alice(), 3);
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Learner, ADDR).unwrap();
    assert_eq!(verify(b.blocks()).unwrap().count, 4);
}

#[test]
fn a_term_that_goes_back_is_refused() {
    let mut blocks = blocks();
    // bob's batch claims term 2; alice's next block, still in term 1, cannot follow it.
    blocks[BOB_1_2].block.header.term = 2;
    relink(&mut blocks, BOB_1_2);
    assert_eq!(
        failure(&blocks),
        (
            BOB_1_2 as u64 + 1,
            FailureReason::TermWentBack {
                previous: 2,
                got: 1
            }
        )
    );
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.set_leader(alice(), 5);
    b.rotate_key().unwrap();
    b.set_leader(alice(), 4);
    assert_eq!(
        rejected(b.checkpoint()),
        FailureReason::TermWentBack {
            previous: 5,
            got: 4
        }
    );
}

#[test]
fn within_a_term_the_leader_never_goes_back() {
    // openraft may elect a second leader in a term, with a higher node id; never a lower one
    // after a higher one.
    let (lo, hi) = if id_of(alice()) < id_of(bob()) {
        (alice(), bob())
    } else {
        (bob(), alice())
    };
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.set_leader(lo, 2);
    b.rotate_key().unwrap();
    b.set_leader(hi, 2);
    b.checkpoint().unwrap();
    b.records("alice", [b"a"]).unwrap();
    let good = b.blocks().to_vec();
    assert_eq!(verify(&good).unwrap().count, 6);
    let back = FailureReason::LeaderWentBack {
        term: 2,
        previous: id_of(hi),
        got: id_of(lo),
    };
    b.set_leader(lo, 2);
    assert_eq!(rejected(b.checkpoint()), back);
    assert_eq!(rejected(b.records("bob", [b"b"])), back);
    // The same in a chain: the last block's header says `lo` again, hashes recomputed.
    let mut blocks = good.clone();
    blocks[5].block.header.leader = id_of(lo);
    relink(&mut blocks, 5);
    assert_eq!(failure(&blocks), (5, back));
    // And in the fixture (term 1, alice throughout): bob's batch claims bob led. Whichever of
    // the two has the lower id, the order goes back at one of the two blocks.
    let mut blocks = self::blocks();
    blocks[BOB_1_2].block.header.leader = id_of(bob());
    relink(&mut blocks, BOB_1_2);
    let at = if id_of(bob()) < id_of(alice()) {
        BOB_1_2
    } else {
        BOB_1_2 + 1
    };
    assert!(matches!(
        failure(&blocks),
        (h, FailureReason::LeaderWentBack { term: 1, .. }) if h == at as u64
    ));
}

/// genesis, alice and bob, a rotation, records, a refusal, a checkpoint of two blocks back,
/// records, bob demoted, a checkpoint of two blocks back: a chain in which dropping or
/// swapping certain blocks keeps every sequence and link intact.
fn checkpointed() -> Vec<StoredBlock> {
    static C: OnceLock<Vec<StoredBlock>> = OnceLock::new();
    C.get_or_init(|| {
        let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
        b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
        b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
        b.rotate_key().unwrap();
        b.records("alice", [b"a1"]).unwrap(); // 4
        b.refused(b"junk", None, "could not decode").unwrap(); // 5
        b.records("bob", [b"b1"]).unwrap(); // 6
        b.checkpoint_at(5).unwrap(); // 7
        b.records("alice", [b"a2"]).unwrap(); // 8
        b.change_role("bob", MemberRole::Learner).unwrap(); // 9
        b.records("bob", [b"b2"]).unwrap(); // 10
        b.records("alice", [b"a3"]).unwrap(); // 11
        b.checkpoint_at(10).unwrap(); // 12
        b.into_blocks()
    })
    .clone()
}

fn checkpoint_of(block: &StoredBlock) -> &Checkpoint {
    match &block.block.body {
        BlockBody::Checkpoint(c) => c,
        other => panic!("not a checkpoint: {other:?}"),
    }
}

#[test]
fn a_dropped_block_is_caught_by_the_next_checkpoint_when_nothing_else_notices() {
    let good = checkpointed();
    assert_eq!(verify(&good).unwrap().count, 13);
    // The refusal at 5, or bob's demotion at 9 (a system block): every sequence, epoch and
    // signature still checks after the drop, and only a checkpoint's hash tells.
    for (dropped, caught_at) in [(5, 6), (9, 11)] {
        let mut blocks = good.clone();
        blocks.remove(dropped);
        relink(&mut blocks, dropped);
        let vouched = checkpoint_of(&good[caught_at + 1]);
        assert_eq!(
            failure(&blocks),
            (
                caught_at as u64,
                FailureReason::CheckpointMismatch {
                    height: vouched.height,
                    vouched: vouched.hash,
                    actual: blocks[vouched.height as usize].hash,
                }
            ),
            "dropping block {dropped}"
        );
        // Without the checkpoint, nothing up to it notices.
        assert!(verify(&blocks[..caught_at]).is_ok());
    }
}

#[test]
fn swapped_blocks_are_caught_by_the_next_checkpoint() {
    // The refusal and bob's batch (5 and 6) trade places, then alice's and bob's batches
    // (10 and 11): every sequence still follows, every link is recomputed.
    for (a, b, caught_at) in [(5, 6, 7), (10, 11, 12)] {
        let mut blocks = checkpointed();
        blocks.swap(a, b);
        relink(&mut blocks, a);
        assert!(verify(&blocks[..caught_at]).is_ok());
        let (h, r) = failure(&blocks);
        assert_eq!(h, caught_at as u64);
        assert!(matches!(r, FailureReason::CheckpointMismatch { .. }), "{r}");
    }
    // In the fixture too: alice's 4-5 and bob's 3 swap; the final checkpoint catches it.
    let mut blocks = blocks();
    blocks.swap(ALICE_4_5, BOB_3);
    relink(&mut blocks, ALICE_4_5);
    let (h, r) = failure(&blocks);
    assert_eq!(h, LEN as u64 - 1);
    assert!(matches!(r, FailureReason::CheckpointMismatch { .. }), "{r}");
}

#[test]
fn a_checkpoint_with_a_wrong_hash_is_refused() {
    let mut blocks = checkpointed();
    let at = 12;
    let header = blocks[at].block.header.clone();
    let BlockBody::Checkpoint(c) = &mut blocks[at].block.body else {
        panic!()
    };
    let vouched = c.height;
    c.hash.0[0] ^= 1;
    let wrong = c.hash;
    // Signed by the leader, so only the hash is wrong.
    sign(alice(), &mut blocks[at].block.body, &header);
    relink(&mut blocks, at);
    assert_eq!(
        failure(&blocks),
        (
            at as u64,
            FailureReason::CheckpointMismatch {
                height: vouched,
                vouched: wrong,
                actual: blocks[vouched as usize].hash,
            }
        )
    );
}

#[test]
fn checkpoints_reach_back_exactly_the_window() {
    // A long run of refusals (no signatures to make) after the fixture's head, each header
    // carrying a made-up previous hash, applied straight to a state.
    let f = fixture();
    let mut state = f.state().clone();
    let mut header = next_header(BlockKind::Refused);
    let start = header.height;
    let hash_of = |h: u64| -> BlockHash {
        if h < start {
            f.blocks()[h as usize].hash
        } else {
            BlockHash::of(&h.to_be_bytes())
        }
    };
    let refusal = BlockBody::Refused(Refused {
        entry_digest: [0; 32],
        author: None,
        reason: "filler".into(),
    });
    let end = start + CHECKPOINT_WINDOW + 10;
    for h in start..end {
        header.height = h;
        header.prev_hash = hash_of(h - 1);
        state.apply(&header, &refusal).unwrap();
    }
    let at = end;
    let checkpoint_header = BlockHeader {
        height: at,
        prev_hash: hash_of(at - 1),
        kind: BlockKind::Checkpoint,
        ..header.clone()
    };
    let check = |height: u64, hash: BlockHash| {
        let mut body = BlockBody::Checkpoint(Checkpoint {
            height,
            hash,
            leader_sig: Vec::new(),
        });
        sign(alice(), &mut body, &checkpoint_header);
        state.clone().apply(&checkpoint_header, &body)
    };
    let oldest = at - CHECKPOINT_WINDOW;
    assert_eq!(check(oldest, hash_of(oldest)), Ok(()));
    assert_eq!(check(at - 1, hash_of(at - 1)), Ok(()));
    assert_eq!(check(at - 2, hash_of(at - 2)), Ok(()));
    assert_eq!(
        check(oldest, hash_of(oldest + 1)),
        Err(FailureReason::CheckpointMismatch {
            height: oldest,
            vouched: hash_of(oldest + 1),
            actual: hash_of(oldest),
        })
    );
    for old in [oldest - 1, 3] {
        assert_eq!(
            check(old, hash_of(old)),
            Err(FailureReason::CheckpointOutsideWindow {
                checkpoint: old,
                at,
                window: CHECKPOINT_WINDOW,
            })
        );
    }
    // The state holds the window below its last block (at - 1), whose hash comes with the
    // next header.
    assert_eq!(state.recent_hash(oldest - 2), None);
    assert_eq!(state.recent_hash(oldest - 1), Some(hash_of(oldest - 1)));
    assert_eq!(state.recent_hash(at - 2), Some(hash_of(at - 2)));
    assert_eq!(state.recent_hash(at - 1), None);
}

#[test]
fn a_revoked_author_is_refused_and_may_then_be_removed() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    b.records("bob", [b"b1"]).unwrap();
    let late = b.batch("bob", [b"b2"]).unwrap();
    b.revoke("bob").unwrap();
    assert_eq!(
        rejected(b.append(BlockBody::Records(late.clone()))),
        FailureReason::AuthorNotAdmitted {
            author: "bob".into()
        }
    );
    // Still present and counted as a voter until removed, but no longer a signer.
    let bob = b.state().member("bob").unwrap();
    assert!(bob.revoked && bob.is_present() && bob.role == MemberRole::Voter);
    b.remove("bob").unwrap();
    b.rotate_key().unwrap();
    assert_eq!(
        rejected(b.append(BlockBody::Records(late))),
        FailureReason::AuthorNotAdmitted {
            author: "bob".into()
        }
    );
    assert_eq!(verify(b.blocks()).unwrap().count, 8);
}

#[test]
fn a_long_chain_with_periodic_checkpoints_and_leader_changes_verifies() {
    let mut b = ChainBuilder::new(root(), alice(), GROUP, rules()).unwrap();
    b.admit(alice(), "alice", MemberRole::Voter, ADDR).unwrap();
    b.admit(bob(), "bob", MemberRole::Voter, ADDR).unwrap();
    b.rotate_key().unwrap();
    let mut checkpoints = 0;
    for i in 0..240u64 {
        if i == 120 {
            // bob takes over in a later term, and rotates the key.
            b.set_leader(bob(), 7);
            b.rotate_key().unwrap();
        }
        let author = if i % 3 == 0 { "bob" } else { "alice" };
        b.records(author, [format!("record {i}")]).unwrap();
        if i % 25 == 24 {
            // Alternately the head and a block a little further back.
            let head = b.head().height();
            b.checkpoint_at(head - (i % 2) * 10).unwrap();
            checkpoints += 1;
        }
    }
    assert_eq!(checkpoints, 9);
    let blocks = b.into_blocks();
    let s = verify(&blocks).unwrap();
    assert_eq!(s.count as usize, blocks.len());
    assert_eq!(s.head_hash, blocks.last().unwrap().hash);
    // The verifier's state and a state rebuilt block by block agree, the window included.
    let mut v = ChainVerifier::new(root().public());
    for b in &blocks {
        v.push(b).unwrap();
    }
    let state = v.state().unwrap();
    assert_eq!(state.height(), blocks.len() as u64 - 1);
    assert_eq!(state.term_and_leader(), (7, id_of(bob())));
    let mid = blocks.len() / 2;
    assert_eq!(state.recent_hash(mid as u64), Some(blocks[mid].hash));
}

#[test]
fn a_state_starts_only_from_a_genesis_at_height_zero() {
    let g = &blocks()[0];
    let BlockBody::Genesis(genesis) = &g.block.body else {
        panic!()
    };
    let mut header = g.block.header.clone();
    assert!(ChainState::from_genesis(root().public(), &header, genesis).is_ok());
    header.height = 3;
    assert_eq!(
        ChainState::from_genesis(root().public(), &header, genesis),
        Err(FailureReason::NotGenesis {
            kind: BlockKind::Genesis,
            height: 3
        })
    );
}
