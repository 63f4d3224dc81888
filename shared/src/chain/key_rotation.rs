//! Key rotation blocks: a new group key, wrapped to every admitted member.

use super::{read_name, MAX_WRAPPED_KEYS, MAX_WRAPPED_KEY_BYTES};
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{NodeId, MAX_SIGNATURE_BYTES};

/// name length, a one-byte name, node id, wrapped length.
const MIN_WRAPPED_KEY_BYTES: usize = 4 + 1 + 8 + 4;

/// The new key, RSA-OAEP-wrapped to one member's certified key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub name: String,
    pub node_id: NodeId,
    /// At most [`MAX_WRAPPED_KEY_BYTES`].
    pub wrapped: Vec<u8>,
}

impl Canonical for WrappedKey {
    fn encode_to(&self, w: &mut Writer) {
        w.str(&self.name).u64(self.node_id).bytes(&self.wrapped);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: read_name(r, "wrapped key name")?,
            node_id: r.u64("wrapped key node id")?,
            wrapped: r.bytes("wrapped key", MAX_WRAPPED_KEY_BYTES)?,
        })
    }
}

/// The body of a `key_rotation` block. Epochs count up from 1; records before the first
/// rotation have no key to be sealed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    pub epoch: u64,
    /// One entry per admitted member, at most [`MAX_WRAPPED_KEYS`].
    pub wrapped: Vec<WrappedKey>,
    /// The proposing leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl KeyRotation {
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        w.u64(self.epoch).count(self.wrapped.len());
        for k in &self.wrapped {
            k.encode_to(w);
        }
    }
}

impl Canonical for KeyRotation {
    fn encode_to(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.bytes(&self.leader_sig);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = r.u64("epoch")?;
        let n = r.count("wrapped keys", MAX_WRAPPED_KEYS, MIN_WRAPPED_KEY_BYTES)?;
        let mut wrapped = Vec::with_capacity(n);
        for _ in 0..n {
            wrapped.push(WrappedKey::decode_from(r)?);
        }
        Ok(Self {
            epoch,
            wrapped,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
