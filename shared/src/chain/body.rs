//! A block's body: one of the seven kinds.

use super::RevocationNotice;
use super::{BlockKind, Checkpoint, Genesis, KeyRotation, Membership, RecordBatch, Refused};
use crate::codec::{Canonical, DecodeError, Reader, Writer};

/// What a block holds. It is encoded without a tag: the header's `kind` picks the layout, so
/// a body can never disagree with its header in bytes (in memory the verifier checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockBody {
    Genesis(Genesis),
    Records(RecordBatch),
    Membership(Membership),
    KeyRotation(KeyRotation),
    Revocation(RevocationNotice),
    Checkpoint(Checkpoint),
    Refused(Refused),
}

impl BlockBody {
    pub fn kind(&self) -> BlockKind {
        match self {
            BlockBody::Genesis(_) => BlockKind::Genesis,
            BlockBody::Records(_) => BlockKind::Records,
            BlockBody::Membership(_) => BlockKind::Membership,
            BlockBody::KeyRotation(_) => BlockKind::KeyRotation,
            BlockBody::Revocation(_) => BlockKind::Revocation,
            BlockBody::Checkpoint(_) => BlockKind::Checkpoint,
            BlockBody::Refused(_) => BlockKind::Refused,
        }
    }

    pub fn encode_to(&self, w: &mut Writer) {
        match self {
            BlockBody::Genesis(b) => b.encode_to(w),
            BlockBody::Records(b) => b.encode_to(w),
            BlockBody::Membership(b) => b.encode_to(w),
            BlockBody::KeyRotation(b) => b.encode_to(w),
            BlockBody::Revocation(b) => b.encode_to(w),
            BlockBody::Checkpoint(b) => b.encode_to(w),
            BlockBody::Refused(b) => b.encode_to(w),
        }
    }

    /// Decodes the body layout of `kind`.
    pub fn decode_for(kind: BlockKind, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match kind {
            BlockKind::Genesis => BlockBody::Genesis(Genesis::decode_from(r)?),
            BlockKind::Records => BlockBody::Records(RecordBatch::decode_from(r)?),
            BlockKind::Membership => BlockBody::Membership(Membership::decode_from(r)?),
            BlockKind::KeyRotation => BlockBody::KeyRotation(KeyRotation::decode_from(r)?),
            BlockKind::Revocation => BlockBody::Revocation(RevocationNotice::decode_from(r)?),
            BlockKind::Checkpoint => BlockBody::Checkpoint(Checkpoint::decode_from(r)?),
            BlockKind::Refused => BlockBody::Refused(Refused::decode_from(r)?),
        })
    }

    pub fn to_canonical(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_to(&mut w);
        w.finish()
    }

    /// The leader's signature, for the kinds that carry one.
    pub fn leader_sig(&self) -> Option<&[u8]> {
        match self {
            BlockBody::Genesis(b) => Some(&b.leader_sig),
            BlockBody::Membership(b) => Some(&b.leader_sig),
            BlockBody::KeyRotation(b) => Some(&b.leader_sig),
            BlockBody::Revocation(b) => Some(&b.leader_sig),
            BlockBody::Checkpoint(b) => Some(&b.leader_sig),
            BlockBody::Records(_) | BlockBody::Refused(_) => None,
        }
    }

    pub(crate) fn leader_sig_mut(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            BlockBody::Genesis(b) => Some(&mut b.leader_sig),
            BlockBody::Membership(b) => Some(&mut b.leader_sig),
            BlockBody::KeyRotation(b) => Some(&mut b.leader_sig),
            BlockBody::Revocation(b) => Some(&mut b.leader_sig),
            BlockBody::Checkpoint(b) => Some(&mut b.leader_sig),
            BlockBody::Records(_) | BlockBody::Refused(_) => None,
        }
    }

    /// The canonical body without its trailing `leader_sig` field, for the kinds that carry
    /// one. (The signature is always the last field, so this is a prefix of the body.)
    pub fn leader_unsigned_bytes(&self) -> Option<Vec<u8>> {
        let mut w = Writer::new();
        match self {
            BlockBody::Genesis(b) => b.encode_unsigned(&mut w),
            BlockBody::Membership(b) => b.encode_unsigned(&mut w),
            BlockBody::KeyRotation(b) => b.encode_unsigned(&mut w),
            BlockBody::Revocation(b) => b.encode_unsigned(&mut w),
            BlockBody::Checkpoint(b) => b.encode_unsigned(&mut w),
            BlockBody::Records(_) | BlockBody::Refused(_) => return None,
        }
        Some(w.finish())
    }
}
