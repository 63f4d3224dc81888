//! Revocation blocks: the root's signed statement that a certificate is revoked.

use crate::cert::SignedRevocation;
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::MAX_SIGNATURE_BYTES;

/// The body of a `revocation` block. (Named apart from [`crate::cert::Revocation`], the
/// statement it carries.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationNotice {
    /// As the key manager issued it; verified under the root key.
    pub revocation: SignedRevocation,
    /// The proposing leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl RevocationNotice {
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        self.revocation.encode_to(w);
    }
}

impl Canonical for RevocationNotice {
    fn encode_to(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.bytes(&self.leader_sig);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            revocation: SignedRevocation::decode_from(r)?,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
