//! RSA identities: key pairs, their files, signatures and fingerprints.
//!
//! Key generation, PEM files and OAEP use the `rsa` crate; PSS signing and verification use
//! `ring`, whose RSA private-key operations are constant-time. That keeps the `rsa` crate's
//! timing side channel (RUSTSEC-2023-0071) away from signing altogether: the only private-key
//! operation left to it is unwrapping a group key from a committed, leader-signed block
//! (see `envelope`), never bytes chosen by whoever is on the other end of a socket.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The smallest and largest modulus we create or accept.
pub const MIN_KEY_BITS: usize = 2048;
pub const MAX_KEY_BITS: usize = 4096;
/// A public key's SPKI DER is well under this for 4096-bit keys; anything larger is refused.
pub const MAX_SPKI_BYTES: usize = 1024;
/// The largest signature we accept (a 4096-bit modulus).
pub const MAX_SIGNATURE_BYTES: usize = MAX_KEY_BITS / 8;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("key size {0} is not supported: choose 2048, 3072 or 4096 bits")]
    BadKeySize(usize),
    #[error("generating an RSA key failed: {0}")]
    Generate(String),
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a PKCS#8 RSA private key in PEM: {why}")]
    BadPrivateKey { path: PathBuf, why: String },
    #[error("not an RSA public key (SPKI DER): {0}")]
    BadPublicKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// SHA-256 of a public key's SPKI DER: the one way Conclave names a key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The openraft node id of the key: its first eight bytes, big-endian. Deriving it from
    /// the key lets every receiver check that a request's node id belongs to the caller.
    pub fn node_id(&self) -> NodeId {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

/// A member's id in Raft and in the chain; see [`Fingerprint::node_id`].
pub type NodeId = u64;

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

/// A parsed RSA public key, kept in the forms each library wants.
#[derive(Clone)]
pub struct PublicKey {
    spki_der: Vec<u8>,
    pkcs1_der: Vec<u8>,
    key: RsaPublicKey,
    fingerprint: Fingerprint,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits, {:?})", self.bits(), self.fingerprint)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}
impl Eq for PublicKey {}

impl PublicKey {
    /// Parses an SPKI DER public key, refusing sizes outside 2048..=4096 bits.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, IdentityError> {
        if der.len() > MAX_SPKI_BYTES {
            return Err(IdentityError::BadPublicKey(format!(
                "{} bytes is larger than any supported key",
                der.len()
            )));
        }
        let key = RsaPublicKey::from_public_key_der(der)
            .map_err(|e| IdentityError::BadPublicKey(e.to_string()))?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: RsaPublicKey) -> Result<Self, IdentityError> {
        let bits = key.n().bits();
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
            return Err(IdentityError::BadPublicKey(format!(
                "{bits}-bit modulus; only 2048 to 4096 bits are accepted"
            )));
        }
        let spki_der = key
            .to_public_key_der()
            .map_err(|e| IdentityError::BadPublicKey(e.to_string()))?
            .into_vec();
        let pkcs1_der = key
            .to_pkcs1_der()
            .map_err(|e| IdentityError::BadPublicKey(e.to_string()))?
            .into_vec();
        let fingerprint = Fingerprint::of_spki(&spki_der);
        Ok(Self {
            spki_der,
            pkcs1_der,
            key,
            fingerprint,
        })
    }

    /// Reads a PEM `PUBLIC KEY` file (such as the key manager's root public key).
    pub fn load_pem(path: &Path) -> Result<Self, IdentityError> {
        let text = fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = RsaPublicKey::from_public_key_pem(&text)
            .map_err(|e| IdentityError::BadPublicKey(format!("{}: {e}", path.display())))?;
        Self::from_rsa(key)
    }

    /// Writes the public key as PEM (mode 0644: it is public).
    pub fn save_pem(&self, path: &Path) -> Result<(), IdentityError> {
        let pem = self
            .key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| IdentityError::BadPublicKey(e.to_string()))?;
        write_atomically(path, pem.as_bytes(), 0o644)
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }
    pub(crate) fn rsa(&self) -> &RsaPublicKey {
        &self.key
    }

    /// Checks an RSA-PSS-SHA256 signature (salt length 32) over `msg`.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(IdentityError::BadSignature);
        }
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            &self.pkcs1_der,
        )
        .verify(msg, signature)
        .map_err(|_| IdentityError::BadSignature)
    }
}

/// A node's own key pair. Never serialised; written only to its 0600 PEM file.
pub struct Identity {
    private: RsaPrivateKey,
    signer: ring::rsa::KeyPair,
    pkcs8_der: Vec<u8>,
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", self.public)
    }
}

impl Identity {
    /// Generates a new key pair of `bits` (2048, 3072 or 4096).
    pub fn generate(bits: usize) -> Result<Self, IdentityError> {
        if ![2048, 3072, 4096].contains(&bits) {
            return Err(IdentityError::BadKeySize(bits));
        }
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::from_rsa(private, Path::new("<generated>"))
    }

    fn from_rsa(private: RsaPrivateKey, origin: &Path) -> Result<Self, IdentityError> {
        let bad = |why: String| IdentityError::BadPrivateKey {
            path: origin.to_owned(),
            why,
        };
        let pkcs8_der = private
            .to_pkcs8_der()
            .map_err(|e| bad(e.to_string()))?
            .as_bytes()
            .to_vec();
        let signer = ring::rsa::KeyPair::from_pkcs8(&pkcs8_der).map_err(|e| bad(format!("{e}")))?;
        let public =
            PublicKey::from_rsa(private.to_public_key()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            private,
            signer,
            pkcs8_der,
            public,
        })
    }

    /// Writes the private key as PKCS#8 PEM with mode 0600, atomically.
    pub fn save_pem(&self, path: &Path) -> Result<(), IdentityError> {
        let pem = self
            .private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IdentityError::Sign(e.to_string()))?;
        write_atomically(path, pem.as_bytes(), 0o600)
    }

    /// Loads a private key written by [`Identity::save_pem`], refusing a file others can read.
    pub fn load_pem(path: &Path) -> Result<Self, IdentityError> {
        check_private_mode(path)?;
        let text = fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let private =
            RsaPrivateKey::from_pkcs8_pem(&text).map_err(|e| IdentityError::BadPrivateKey {
                path: path.to_owned(),
                why: e.to_string(),
            })?;
        Self::from_rsa(private, path)
    }

    /// Loads the key at `path`, or creates one of `bits` there if the file does not exist.
    /// Returns whether it was created.
    pub fn load_or_generate(path: &Path, bits: usize) -> Result<(Self, bool), IdentityError> {
        if path.exists() {
            return Ok((Self::load_pem(path)?, false));
        }
        let id = Self::generate(bits)?;
        id.save_pem(path)?;
        Ok((id, true))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }
    /// PKCS#8 DER of the private key, for building this node's own TLS certificate. It never
    /// leaves the process.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }
    pub(crate) fn rsa_private(&self) -> &RsaPrivateKey {
        &self.private
    }

    /// RSA-PSS-SHA256 (salt length 32) over `msg`. Callers put a domain tag first so that a
    /// signature made for one purpose can never be replayed as another.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let mut sig = vec![0u8; self.signer.public().modulus_len()];
        self.signer
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &ring::rand::SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(|e| IdentityError::Sign(format!("{e}")))?;
        Ok(sig)
    }
}

/// Builds the bytes a signature covers: a domain tag, a NUL, then the parts, each with a
/// `u32` length so that no two different part lists give the same bytes.
pub fn signing_input(domain: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut w = crate::codec::Writer::new();
    w.raw(domain.as_bytes()).u8(0);
    for p in parts {
        w.bytes(p);
    }
    w.finish()
}

fn check_private_mode(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// Writes `data` to a temporary file created with `mode`, syncs it and renames it over `path`,
/// so a crash leaves either the old file or the whole new one, and a private key is never
/// readable by others, not even for an instant.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Key generation is the slow part of these tests; share a few keys across them.
    pub(crate) fn test_key(i: usize) -> &'static Identity {
        static KEYS: OnceLock<Vec<Identity>> = OnceLock::new();
        &KEYS.get_or_init(|| {
            (0..4)
                .map(|_| Identity::generate(2048).expect("keygen"))
                .collect()
        })[i]
    }

    #[test]
    fn private_key_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/id.pem");
        let id = test_key(0);
        id.save_pem(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = Identity::load_pem(&path).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        let sig = back.sign(b"hello").unwrap();
        id.public().verify(b"hello", &sig).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.pem");
        test_key(0).save_pem(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load_pem(&path),
            Err(IdentityError::Permissions { .. })
        ));
    }

    #[test]
    fn public_key_round_trips_and_fingerprint_is_sha256_of_spki() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.pub.pem");
        let id = test_key(1);
        id.public().save_pem(&path).unwrap();
        let back = PublicKey::load_pem(&path).unwrap();
        assert_eq!(&back, id.public());
        let expect: [u8; 32] = Sha256::digest(back.spki_der()).into();
        assert_eq!(back.fingerprint().0, expect);
        assert_eq!(PublicKey::from_spki_der(back.spki_der()).unwrap(), back);
    }

    #[test]
    fn signatures_fail_for_other_keys_and_other_messages() {
        let a = test_key(0);
        let b = test_key(1);
        let sig = a.sign(b"msg").unwrap();
        assert!(a.public().verify(b"msg", &sig).is_ok());
        assert!(b.public().verify(b"msg", &sig).is_err());
        assert!(a.public().verify(b"msh", &sig).is_err());
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(a.public().verify(b"msg", &bad).is_err());
    }

    #[test]
    fn unsupported_key_sizes_are_refused() {
        assert!(matches!(
            Identity::generate(1024),
            Err(IdentityError::BadKeySize(1024))
        ));
    }

    #[test]
    fn signing_input_separates_parts() {
        assert_ne!(
            signing_input("d", &[b"ab", b"c"]),
            signing_input("d", &[b"a", b"bc"])
        );
    }
}
