//! The genesis block: the group's id, its root key and its fixed rules.

use super::{GroupId, MAX_MEMBERS, MAX_RECORD_PLAINTEXT_BYTES};
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{Fingerprint, MAX_SIGNATURE_BYTES};

/// The rules a group is founded with. They never change afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The largest plaintext of one record, in bytes (1 to [`MAX_RECORD_PLAINTEXT_BYTES`]).
    /// A record's ciphertext may be this plus the AES-GCM tag.
    pub max_record_bytes: u32,
    /// Whether a new member is also given the keys of epochs before its admission.
    pub share_history: bool,
    /// The most voters at once (1 to [`MAX_MEMBERS`]); further members join as learners.
    pub max_voters: u32,
}

impl Rules {
    /// Checks the ranges above; the message names the bad field.
    pub fn check(&self) -> Result<(), String> {
        let max_record = u32::try_from(MAX_RECORD_PLAINTEXT_BYTES).unwrap_or(u32::MAX);
        if !(1..=max_record).contains(&self.max_record_bytes) {
            return Err(format!(
                "max_record_bytes {} is outside 1..={max_record}",
                self.max_record_bytes
            ));
        }
        let max_voters = u32::try_from(MAX_MEMBERS).unwrap_or(u32::MAX);
        if !(1..=max_voters).contains(&self.max_voters) {
            return Err(format!(
                "max_voters {} is outside 1..={max_voters}",
                self.max_voters
            ));
        }
        Ok(())
    }
}

impl Canonical for Rules {
    fn encode_to(&self, w: &mut Writer) {
        w.u32(self.max_record_bytes)
            .bool(self.share_history)
            .u32(self.max_voters);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            max_record_bytes: r.u32("max_record_bytes")?,
            share_history: r.bool("share_history")?,
            max_voters: r.u32("max_voters")?,
        })
    }
}

/// Block 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    pub group_id: GroupId,
    /// The fingerprint of the root public key every certificate in the chain is signed by.
    pub root_fingerprint: Fingerprint,
    pub rules: Rules,
    /// The founding leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl Genesis {
    /// Everything but `leader_sig`.
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        w.raw(&self.group_id).raw(&self.root_fingerprint.0);
        self.rules.encode_to(w);
    }
}

impl Canonical for Genesis {
    fn encode_to(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.bytes(&self.leader_sig);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            group_id: r.array("group id")?,
            root_fingerprint: Fingerprint(r.array("root fingerprint")?),
            rules: Rules::decode_from(r)?,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
