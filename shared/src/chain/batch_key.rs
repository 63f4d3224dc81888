//! An author's batch key: an Ed25519 key the author certifies once with its RSA key, so that
//! each batch costs an Ed25519 signature (tens of microseconds) instead of an RSA-2048 one
//! (about 0.7 ms here, which was a third of a sequential append's latency and the largest
//! CPU cost per batch).
//!
//! The key is drawn when a peer process starts and lives only in its memory: it is never
//! written anywhere, so it cannot outlive the process that uses it. Its certificate, the
//! [`Delegation`], travels inside every batch it signs, so a batch verifies on its own with
//! the author's certified RSA key alone (no extra block, no ordering between blocks). What the
//! author's RSA key vouches for is narrow: "this Ed25519 key may sign record batches as
//! `author` in group `group_id`"; revoking the author revokes its batch keys with it, because
//! a batch is checked against the author's standing in the chain, whichever key signed it.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use super::GroupId;
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{signing_input, Identity, IdentityError, PublicKey, MAX_SIGNATURE_BYTES};

/// The domain of the author's RSA signature over a batch key.
pub const BATCH_KEY_DOMAIN: &str = "conclave/batch-key/v1";
/// An Ed25519 public key.
pub const BATCH_KEY_BYTES: usize = 32;
/// An Ed25519 signature.
pub const BATCH_SIG_BYTES: usize = 64;

/// The author's RSA-PSS signature over a batch key, for one group and one author name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    pub key: [u8; BATCH_KEY_BYTES],
    /// RSA-PSS by the author over [`delegation_signing_bytes`].
    pub signature: Vec<u8>,
}

/// What the author's RSA key signs to certify `key`.
pub fn delegation_signing_bytes(
    group_id: &GroupId,
    author: &str,
    key: &[u8; BATCH_KEY_BYTES],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.str(author).raw(key);
    signing_input(BATCH_KEY_DOMAIN, &[group_id, w.as_slice()])
}

impl Delegation {
    /// Checks that `author`'s certified `rsa` key vouched for this batch key in `group_id`.
    pub fn verify(
        &self,
        group_id: &GroupId,
        author: &str,
        rsa: &PublicKey,
    ) -> Result<(), IdentityError> {
        rsa.verify(
            &delegation_signing_bytes(group_id, author, &self.key),
            &self.signature,
        )
    }

    /// Checks an Ed25519 signature by this batch key over `msg`.
    pub fn verify_by_key(
        &self,
        msg: &[u8],
        sig: &[u8; BATCH_SIG_BYTES],
    ) -> Result<(), IdentityError> {
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(msg, sig)
            .map_err(|_| IdentityError::BadSignature)
    }
}

impl Canonical for Delegation {
    fn encode_to(&self, w: &mut Writer) {
        w.raw(&self.key).bytes(&self.signature);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            key: r.array("batch key")?,
            signature: r.bytes("batch key signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}

/// A batch key with its private half, for one author in one group. Never serialised.
pub struct BatchKey {
    pair: Ed25519KeyPair,
    delegation: Delegation,
    group_id: GroupId,
    author: String,
}

impl std::fmt::Debug for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BatchKey({}, {})",
            self.author,
            hex::encode(self.delegation.key)
        )
    }
}

impl BatchKey {
    /// Draws a fresh key and certifies it with `identity` (one RSA signature).
    pub fn generate(
        identity: &Identity,
        group_id: &GroupId,
        author: &str,
    ) -> Result<Self, IdentityError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| IdentityError::Sign(format!("drawing a batch key: {e}")))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| IdentityError::Sign(format!("loading a batch key: {e}")))?;
        let mut key = [0u8; BATCH_KEY_BYTES];
        key.copy_from_slice(pair.public_key().as_ref());
        let signature = identity.sign(&delegation_signing_bytes(group_id, author, &key))?;
        Ok(Self {
            pair,
            delegation: Delegation { key, signature },
            group_id: *group_id,
            author: author.to_owned(),
        })
    }

    pub fn delegation(&self) -> &Delegation {
        &self.delegation
    }
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    pub fn author(&self) -> &str {
        &self.author
    }

    /// Ed25519 over `msg` (deterministic).
    pub fn sign(&self, msg: &[u8]) -> [u8; BATCH_SIG_BYTES] {
        let mut sig = [0u8; BATCH_SIG_BYTES];
        sig.copy_from_slice(self.pair.sign(msg).as_ref());
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;

    #[test]
    fn a_delegation_holds_for_its_group_author_and_key_only() {
        let k = BatchKey::generate(test_key(1), &[7; 16], "alice").unwrap();
        let d = k.delegation();
        d.verify(&[7; 16], "alice", test_key(1).public()).unwrap();
        assert!(d.verify(&[8; 16], "alice", test_key(1).public()).is_err());
        assert!(d.verify(&[7; 16], "bob", test_key(1).public()).is_err());
        assert!(d.verify(&[7; 16], "alice", test_key(2).public()).is_err());
        let mut other = d.clone();
        other.key[0] ^= 1;
        assert!(other
            .verify(&[7; 16], "alice", test_key(1).public())
            .is_err());
        let sig = k.sign(b"msg");
        d.verify_by_key(b"msg", &sig).unwrap();
        assert!(d.verify_by_key(b"msh", &sig).is_err());
        assert_eq!(Delegation::from_canonical(&d.to_canonical()).unwrap(), *d);
    }
}
