//! Record encryption with the group key, and wrapping that key to each member.
//!
//! AES-256-GCM with a fresh random 96-bit nonce per record: with at most a few billion records
//! under one epoch key, random nonces stay far below the collision bound, and keys rotate on
//! every membership change anyway. Group keys reach members wrapped with RSA-OAEP-SHA256.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use rsa::Oaep;
use thiserror::Error;

use crate::identity::{Identity, PublicKey};

pub const NONCE_BYTES: usize = 12;
pub const KEY_BYTES: usize = 32;
/// AES-GCM's tag.
pub const TAG_BYTES: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("decryption failed: wrong key, wrong associated data, or altered ciphertext")]
    Open,
    #[error("encryption failed")]
    Seal,
    #[error("wrapping the group key failed: {0}")]
    Wrap(String),
    #[error("unwrapping the group key failed: it was not wrapped to this member's key")]
    Unwrap,
}

/// A 256-bit group key for one epoch. Zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey([u8; KEY_BYTES]);

impl Drop for GroupKey {
    fn drop(&mut self) {
        // A plain write can be optimised away; a volatile one cannot.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our own array.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(..)")
    }
}

impl GroupKey {
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }
    pub fn from_bytes(k: [u8; KEY_BYTES]) -> Self {
        Self(k)
    }
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

/// Ciphertext with its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_BYTES],
    pub ciphertext: Vec<u8>,
}

/// Encrypts `plaintext` under `key`, binding `aad` (for records: author, seq, epoch).
pub fn seal(key: &GroupKey, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, EnvelopeError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(key.0.as_slice().into());
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| EnvelopeError::Seal)?;
    Ok(Sealed { nonce, ciphertext })
}

/// Decrypts and authenticates; any change to key, nonce, aad or ciphertext fails.
pub fn open(
    key: &GroupKey,
    nonce: &[u8; NONCE_BYTES],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let cipher = Aes256Gcm::new(key.0.as_slice().into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| EnvelopeError::Open)
}

/// Wraps a group key to a member's public key with RSA-OAEP-SHA256 (a public-key operation,
/// outside the reach of RUSTSEC-2023-0071).
pub fn wrap_key(to: &PublicKey, key: &GroupKey) -> Result<Vec<u8>, EnvelopeError> {
    to.rsa()
        .encrypt(
            &mut rand::rngs::OsRng,
            Oaep::new::<sha2::Sha256>(),
            key.as_bytes(),
        )
        .map_err(|e| EnvelopeError::Wrap(e.to_string()))
}

/// Unwraps a group key wrapped to `me`.
///
/// This is the one RSA private-key operation done with the `rsa` crate, whose timing is not
/// constant (RUSTSEC-2023-0071). Call it only on wrapped keys read from committed,
/// leader-signed chain blocks, never on bytes straight off the network, so that no one can
/// submit chosen ciphertexts and time the answer.
pub fn unwrap_key(me: &Identity, wrapped: &[u8]) -> Result<GroupKey, EnvelopeError> {
    let bytes = me
        .rsa_private()
        .decrypt(Oaep::new::<sha2::Sha256>(), wrapped)
        .map_err(|_| EnvelopeError::Unwrap)?;
    let k: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| EnvelopeError::Unwrap)?;
    Ok(GroupKey(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = GroupKey::generate();
        let a = seal(&k, b"aad", b"hello").unwrap();
        let b = seal(&k, b"aad", b"hello").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.ciphertext.len(), 5 + TAG_BYTES);
        assert_eq!(open(&k, &a.nonce, b"aad", &a.ciphertext).unwrap(), b"hello");
    }

    #[test]
    fn open_refuses_wrong_key_wrong_aad_and_flipped_bits() {
        let k = GroupKey::generate();
        let s = seal(&k, b"aad", b"hello world").unwrap();
        assert_eq!(
            open(&GroupKey::generate(), &s.nonce, b"aad", &s.ciphertext),
            Err(EnvelopeError::Open)
        );
        assert_eq!(
            open(&k, &s.nonce, b"aae", &s.ciphertext),
            Err(EnvelopeError::Open)
        );
        for i in 0..s.ciphertext.len() {
            let mut c = s.ciphertext.clone();
            c[i] ^= 1;
            assert_eq!(open(&k, &s.nonce, b"aad", &c), Err(EnvelopeError::Open));
        }
        let mut n = s.nonce;
        n[0] ^= 1;
        assert_eq!(
            open(&k, &n, b"aad", &s.ciphertext),
            Err(EnvelopeError::Open)
        );
    }

    #[test]
    fn wrapped_keys_open_only_for_their_member() {
        let k = GroupKey::generate();
        let w = wrap_key(test_key(1).public(), &k).unwrap();
        assert_eq!(unwrap_key(test_key(1), &w).unwrap(), k);
        assert_eq!(unwrap_key(test_key(2), &w), Err(EnvelopeError::Unwrap));
        let mut bad = w.clone();
        bad[5] ^= 1;
        assert_eq!(unwrap_key(test_key(1), &bad), Err(EnvelopeError::Unwrap));
    }
}
