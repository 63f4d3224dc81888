//! Property tests: every chain type round-trips through its canonical bytes, and truncated,
//! bit-flipped or random bytes never panic the decoder and never decode to a value whose
//! encoding differs from the bytes it came from.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;
use crate::cert::{CertBody, Certificate, Revocation, Role, SignedRevocation};
use crate::codec::Canonical;
use crate::identity::Fingerprint;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}"
}
fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}
fn hash() -> impl Strategy<Value = BlockHash> {
    any::<[u8; 32]>().prop_map(BlockHash)
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 12]>(),
        vec(any::<u8>(), 16..40),
    )
        .prop_map(|(seq, epoch, nonce, ciphertext)| Record {
            seq,
            epoch,
            nonce,
            ciphertext,
        })
}
fn batch_signature() -> impl Strategy<Value = BatchSignature> {
    prop_oneof![
        blob(40).prop_map(BatchSignature::Author),
        (any::<[u8; 32]>(), blob(40), vec(any::<u8>(), 64..=64)).prop_map(|(key, sig, ed)| {
            let mut signature = [0u8; 64];
            signature.copy_from_slice(&ed);
            BatchSignature::Delegated {
                delegation: Delegation {
                    key,
                    signature: sig,
                },
                signature,
            }
        }),
    ]
}
fn batch() -> impl Strategy<Value = RecordBatch> {
    (name(), vec(record(), 1..4), batch_signature()).prop_map(|(author, records, signature)| {
        RecordBatch {
            author,
            records,
            signature,
        }
    })
}
fn rules() -> impl Strategy<Value = Rules> {
    (any::<u32>(), any::<bool>(), any::<u32>()).prop_map(
        |(max_record_bytes, share_history, max_voters)| Rules {
            max_record_bytes,
            share_history,
            max_voters,
        },
    )
}
fn genesis() -> impl Strategy<Value = Genesis> {
    (any::<[u8; 16]>(), any::<[u8; 32]>(), rules(), blob(40)).prop_map(
        |(group_id, fp, rules, leader_sig)| Genesis {
            group_id,
            root_fingerprint: Fingerprint(fp),
            rules,
            leader_sig,
        },
    )
}
fn cert() -> impl Strategy<Value = Certificate> {
    (
        name(),
        prop_oneof![Just(Role::Member), Just(Role::Proxy)],
        blob(40),
        any::<u64>(),
        any::<u64>(),
        blob(40),
    )
        .prop_map(
            |(name, role, spki_der, serial, issued_at_ms, signature)| Certificate {
                body: CertBody {
                    name,
                    role,
                    spki_der,
                    serial,
                    issued_at_ms,
                },
                signature,
            },
        )
}
fn role() -> impl Strategy<Value = MemberRole> {
    prop_oneof![Just(MemberRole::Voter), Just(MemberRole::Learner)]
}
fn change() -> impl Strategy<Value = MembershipChange> {
    prop_oneof![
        (cert(), any::<u64>(), ".{0,30}", role()).prop_map(|(cert, node_id, addr, role)| {
            MembershipChange::Admit {
                cert,
                node_id,
                addr,
                role,
            }
        }),
        (name(), any::<u64>())
            .prop_map(|(name, node_id)| MembershipChange::Remove { name, node_id }),
        (name(), any::<u64>(), role()).prop_map(|(name, node_id, role)| {
            MembershipChange::RoleChange {
                name,
                node_id,
                role,
            }
        }),
    ]
}
fn membership() -> impl Strategy<Value = Membership> {
    (change(), blob(40)).prop_map(|(change, leader_sig)| Membership { change, leader_sig })
}
fn wrapped_key() -> impl Strategy<Value = WrappedKey> {
    (name(), any::<u64>(), blob(40)).prop_map(|(name, node_id, wrapped)| WrappedKey {
        name,
        node_id,
        wrapped,
    })
}
fn history_key() -> impl Strategy<Value = HistoryKey> {
    (any::<u64>(), any::<u64>(), blob(40)).prop_map(|(node_id, epoch, wrapped)| HistoryKey {
        node_id,
        epoch,
        wrapped,
    })
}
fn key_rotation() -> impl Strategy<Value = KeyRotation> {
    (
        any::<u64>(),
        vec(wrapped_key(), 0..4),
        vec(history_key(), 0..3),
        blob(40),
    )
        .prop_map(|(epoch, wrapped, history, leader_sig)| KeyRotation {
            epoch,
            wrapped,
            history,
            leader_sig,
        })
}
fn notice() -> impl Strategy<Value = RevocationNotice> {
    (any::<u64>(), name(), any::<u64>(), blob(40), blob(40)).prop_map(
        |(serial, name, revoked_at_ms, signature, leader_sig)| RevocationNotice {
            revocation: SignedRevocation {
                statement: Revocation {
                    serial,
                    name,
                    revoked_at_ms,
                },
                signature,
            },
            leader_sig,
        },
    )
}
fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (any::<u64>(), hash(), blob(40)).prop_map(|(height, hash, leader_sig)| Checkpoint {
        height,
        hash,
        leader_sig,
    })
}
fn refused() -> impl Strategy<Value = Refused> {
    (any::<[u8; 32]>(), option::of(name()), ".{0,60}").prop_map(|(entry_digest, author, reason)| {
        Refused {
            entry_digest,
            author,
            reason,
        }
    })
}
fn body() -> impl Strategy<Value = BlockBody> {
    prop_oneof![
        genesis().prop_map(BlockBody::Genesis),
        batch().prop_map(BlockBody::Records),
        membership().prop_map(BlockBody::Membership),
        key_rotation().prop_map(BlockBody::KeyRotation),
        notice().prop_map(BlockBody::Revocation),
        checkpoint().prop_map(BlockBody::Checkpoint),
        refused().prop_map(BlockBody::Refused),
    ]
}
fn header(kind: BlockKind) -> impl Strategy<Value = BlockHeader> {
    (
        any::<u64>(),
        hash(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            move |(height, prev_hash, term, leader, time_ms)| BlockHeader {
                version: FORMAT_VERSION,
                height,
                prev_hash,
                term,
                leader,
                time_ms,
                kind,
            },
        )
}
fn block() -> impl Strategy<Value = Block> {
    body().prop_flat_map(|body| {
        header(body.kind()).prop_map(move |header| Block {
            header,
            body: body.clone(),
        })
    })
}
fn stored() -> impl Strategy<Value = StoredBlock> {
    (block(), hash()).prop_map(|(block, hash)| StoredBlock { block, hash })
}

fn round_trips<T: Canonical + PartialEq + std::fmt::Debug>(v: &T) -> Result<(), TestCaseError> {
    let bytes = v.to_canonical();
    let back = T::from_canonical(&bytes);
    prop_assert_eq!(back.as_ref(), Ok(v));
    Ok(())
}

/// Whatever decodes from `bytes` must encode back to exactly `bytes`.
fn canonical_or_refused<T: Canonical>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(v) = T::from_canonical(bytes) {
        prop_assert_eq!(v.to_canonical(), bytes);
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_chain_type_round_trips(
        h in hash(),
        rec in record(),
        b in batch(),
        r in rules(),
        g in genesis(),
        m in membership(),
        w in wrapped_key(),
        k in key_rotation(),
        n in notice(),
        c in checkpoint(),
        x in refused(),
    ) {
        round_trips(&h)?;
        round_trips(&rec)?;
        round_trips(&b)?;
        round_trips(&r)?;
        round_trips(&g)?;
        round_trips(&m)?;
        round_trips(&m.change)?;
        round_trips(&w)?;
        round_trips(&k)?;
        round_trips(&n)?;
        round_trips(&c)?;
        round_trips(&x)?;
    }

    #[test]
    fn blocks_and_stored_blocks_round_trip(s in stored()) {
        round_trips(&s.block.header)?;
        round_trips(&s.block)?;
        round_trips(&s)?;
        let mut w = crate::codec::Writer::new();
        s.block.body.encode_to(&mut w);
        let mut r = crate::codec::Reader::new(w.as_slice());
        prop_assert_eq!(&BlockBody::decode_for(s.block.body.kind(), &mut r).unwrap(), &s.block.body);
        prop_assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn truncated_blocks_never_decode(s in stored(), cut in any::<prop::sample::Index>()) {
        let bytes = s.to_canonical();
        prop_assert!(StoredBlock::from_canonical(&bytes[..cut.index(bytes.len())]).is_err());
        let block = &bytes[..bytes.len() - 32];
        prop_assert!(Block::from_canonical(&block[..cut.index(block.len())]).is_err());
    }

    #[test]
    fn flipped_bits_are_refused_or_decode_to_another_canonical_value(
        s in stored(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = s.to_canonical();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(v) = StoredBlock::from_canonical(&bytes) {
            prop_assert_ne!(&v, &s);
            prop_assert_eq!(v.to_canonical(), bytes);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in blob(400), kind in 1u8..=7) {
        canonical_or_refused::<StoredBlock>(&bytes)?;
        canonical_or_refused::<Block>(&bytes)?;
        canonical_or_refused::<RecordBatch>(&bytes)?;
        canonical_or_refused::<KeyRotation>(&bytes)?;
        canonical_or_refused::<Membership>(&bytes)?;
        canonical_or_refused::<Refused>(&bytes)?;
        // A valid header in front, so the body decoders see random input too.
        let mut framed = BlockHeader {
            version: FORMAT_VERSION,
            height: 1,
            prev_hash: BlockHash::ZERO,
            term: 1,
            leader: 1,
            time_ms: 1,
            kind: BlockKind::from_tag(kind).unwrap(),
        }
        .to_canonical();
        framed.extend_from_slice(&bytes);
        canonical_or_refused::<Block>(&framed)?;
    }
}
