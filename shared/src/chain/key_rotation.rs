//! Key rotation blocks: a new group key, wrapped to every admitted member.

use super::{read_name, MAX_WRAPPED_KEYS, MAX_WRAPPED_KEY_BYTES};
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{NodeId, MAX_SIGNATURE_BYTES};

/// name length, a one-byte name, node id, wrapped length.
const MIN_WRAPPED_KEY_BYTES: usize = 4 + 1 + 8 + 4;
/// node id, epoch, wrapped length.
const MIN_HISTORY_KEY_BYTES: usize = 8 + 8 + 4;
/// The most earlier-epoch keys one rotation may hand out (`share_history`).
pub const MAX_HISTORY_KEYS: usize = 4096;

/// An earlier epoch's key, RSA-OAEP-wrapped to a newly admitted member, so that with the
/// genesis rule `share_history` it can read what was written before it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKey {
    pub node_id: NodeId,
    pub epoch: u64,
    /// At most [`MAX_WRAPPED_KEY_BYTES`].
    pub wrapped: Vec<u8>,
}

impl Canonical for HistoryKey {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.node_id).u64(self.epoch).bytes(&self.wrapped);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            node_id: r.u64("history key node id")?,
            epoch: r.u64("history key epoch")?,
            wrapped: r.bytes("history key", MAX_WRAPPED_KEY_BYTES)?,
        })
    }
}

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
    /// Earlier epochs' keys for newly admitted members; empty unless the group's rules say
    /// `share_history`. At most [`MAX_HISTORY_KEYS`].
    pub history: Vec<HistoryKey>,
    /// The proposing leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl KeyRotation {
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        w.u64(self.epoch).count(self.wrapped.len());
        for k in &self.wrapped {
            k.encode_to(w);
        }
        w.count(self.history.len());
        for h in &self.history {
            h.encode_to(w);
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
        let n = r.count("history keys", MAX_HISTORY_KEYS, MIN_HISTORY_KEY_BYTES)?;
        let mut history = Vec::with_capacity(n);
        for _ in 0..n {
            history.push(HistoryKey::decode_from(r)?);
        }
        Ok(Self {
            epoch,
            wrapped,
            history,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
