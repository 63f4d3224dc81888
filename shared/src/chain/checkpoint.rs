//! Checkpoint blocks: a leader's signed word on an earlier block's hash.

use super::BlockHash;
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::MAX_SIGNATURE_BYTES;

/// The body of a `checkpoint` block: the leader vouches that block `height` has `hash`.
/// Someone who rewrites history and recomputes hashes cannot reproduce these signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Below the checkpoint block's own height.
    pub height: u64,
    pub hash: BlockHash,
    /// The proposing leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl Checkpoint {
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        w.u64(self.height).raw(&self.hash.0);
    }
}

impl Canonical for Checkpoint {
    fn encode_to(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.bytes(&self.leader_sig);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            height: r.u64("checkpoint height")?,
            hash: BlockHash::decode_from(r)?,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
