//! Certificates: the key manager's signed binding of a name and role to a public key, and its
//! signed revocations.
//!
//! A [`VerifiedCert`] can only be made by [`Certificate::verify`], so code that holds one has
//! necessarily checked it against the root key.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{signing_input, Fingerprint, Identity, IdentityError, PublicKey};
use crate::identity::{MAX_SIGNATURE_BYTES, MAX_SPKI_BYTES};

/// Names are short, printable and unambiguous in logs and on the console.
pub const MAX_NAME_BYTES: usize = 64;
const CERT_DOMAIN: &str = "conclave/cert/v1";
const REVOCATION_DOMAIN: &str = "conclave/revocation/v1";

#[derive(Debug, Error)]
pub enum CertError {
    #[error("name {0:?} is not allowed: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("certificate for {name:?} is not signed by this root key")]
    BadSignature { name: String },
    #[error("certificate's public key is unusable: {0}")]
    BadKey(#[from] IdentityError),
    #[error("certificate for {name:?} has role {got}, expected {expected}")]
    WrongRole {
        name: String,
        got: Role,
        expected: Role,
    },
    #[error("certificate for {name:?} names another key than the one presented")]
    KeyMismatch { name: String },
    #[error("revocation of {name:?} is not signed by this root key")]
    BadRevocation { name: String },
    #[error("malformed certificate bytes: {0}")]
    Decode(#[from] DecodeError),
}

/// What a certified key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A group member: may join, vote, append.
    Member,
    /// The proxy: may announce and answer where the leader is, nothing else.
    Proxy,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Member => 1,
            Role::Proxy => 2,
        }
    }
    fn from_tag(t: u8) -> Result<Self, DecodeError> {
        match t {
            1 => Ok(Role::Member),
            2 => Ok(Role::Proxy),
            t => Err(DecodeError::UnknownTag {
                what: "role",
                tag: u64::from(t),
            }),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Proxy => "proxy",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "proxy" => Ok(Role::Proxy),
            other => Err(format!("unknown role {other:?}: use member or proxy")),
        }
    }
}

/// Checks a member or proxy name.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName(name.to_owned()))
    }
}

/// The signed content of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBody {
    pub name: String,
    pub role: Role,
    pub spki_der: Vec<u8>,
    /// Unique per key manager, never reused.
    pub serial: u64,
    /// Milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
}

impl Canonical for CertBody {
    fn encode_to(&self, w: &mut Writer) {
        w.str(&self.name)
            .u8(self.role.tag())
            .bytes(&self.spki_der)
            .u64(self.serial)
            .u64(self.issued_at_ms);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string("cert name", MAX_NAME_BYTES)?,
            role: Role::from_tag(r.u8("cert role")?)?,
            spki_der: r.bytes("cert spki", MAX_SPKI_BYTES)?,
            serial: r.u64("cert serial")?,
            issued_at_ms: r.u64("cert issue time")?,
        })
    }
}

/// A certificate as it travels and is stored: unverified until [`Certificate::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub body: CertBody,
    /// RSA-PSS-SHA256 by the root key over the domain tag and the canonical body.
    pub signature: Vec<u8>,
}

impl Canonical for Certificate {
    fn encode_to(&self, w: &mut Writer) {
        self.body.encode_to(w);
        w.bytes(&self.signature);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            body: CertBody::decode_from(r)?,
            signature: r.bytes("cert signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}

impl Certificate {
    /// Signs `body` with the root key. Only the key manager calls this.
    pub fn issue(root: &Identity, body: CertBody) -> Result<Self, CertError> {
        validate_name(&body.name)?;
        PublicKey::from_spki_der(&body.spki_der)?;
        let signature = root.sign(&signing_input(CERT_DOMAIN, &[&body.to_canonical()]))?;
        Ok(Self { body, signature })
    }

    /// Checks the root's signature and the key; the only way to get a [`VerifiedCert`].
    pub fn verify(&self, root: &PublicKey) -> Result<VerifiedCert, CertError> {
        validate_name(&self.body.name)?;
        root.verify(
            &signing_input(CERT_DOMAIN, &[&self.body.to_canonical()]),
            &self.signature,
        )
        .map_err(|_| CertError::BadSignature {
            name: self.body.name.clone(),
        })?;
        let key = PublicKey::from_spki_der(&self.body.spki_der)?;
        Ok(VerifiedCert {
            cert: self.clone(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.body.name
    }
}

/// A certificate whose root signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCert {
    cert: Certificate,
    key: PublicKey,
}

impl VerifiedCert {
    pub fn name(&self) -> &str {
        &self.cert.body.name
    }
    pub fn role(&self) -> Role {
        self.cert.body.role
    }
    pub fn serial(&self) -> u64 {
        self.cert.body.serial
    }
    pub fn issued_at_ms(&self) -> u64 {
        self.cert.body.issued_at_ms
    }
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint()
    }
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }
    /// Refuses a certificate issued for another role.
    pub fn expect_role(self, expected: Role) -> Result<Self, CertError> {
        if self.role() == expected {
            Ok(self)
        } else {
            Err(CertError::WrongRole {
                name: self.name().to_owned(),
                got: self.role(),
                expected,
            })
        }
    }
    /// Refuses a certificate that names another key than `spki_der`.
    pub fn expect_key(self, spki_der: &[u8]) -> Result<Self, CertError> {
        if self.key.spki_der() == spki_der {
            Ok(self)
        } else {
            Err(CertError::KeyMismatch {
                name: self.name().to_owned(),
            })
        }
    }
}

/// The root's statement that a certificate is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub serial: u64,
    pub name: String,
    pub revoked_at_ms: u64,
}

impl Canonical for Revocation {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.serial).str(&self.name).u64(self.revoked_at_ms);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            serial: r.u64("revocation serial")?,
            name: r.string("revocation name", MAX_NAME_BYTES)?,
            revoked_at_ms: r.u64("revocation time")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocation {
    pub statement: Revocation,
    pub signature: Vec<u8>,
}

impl Canonical for SignedRevocation {
    fn encode_to(&self, w: &mut Writer) {
        self.statement.encode_to(w);
        w.bytes(&self.signature);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            statement: Revocation::decode_from(r)?,
            signature: r.bytes("revocation signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}

impl SignedRevocation {
    pub fn issue(root: &Identity, statement: Revocation) -> Result<Self, CertError> {
        let signature = root.sign(&signing_input(
            REVOCATION_DOMAIN,
            &[&statement.to_canonical()],
        ))?;
        Ok(Self {
            statement,
            signature,
        })
    }

    pub fn verify(&self, root: &PublicKey) -> Result<&Revocation, CertError> {
        root.verify(
            &signing_input(REVOCATION_DOMAIN, &[&self.statement.to_canonical()]),
            &self.signature,
        )
        .map_err(|_| CertError::BadRevocation {
            name: self.statement.name.clone(),
        })?;
        Ok(&self.statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;

    fn body_for(id: &Identity, role: Role) -> CertBody {
        CertBody {
            name: "alice".into(),
            role,
            spki_der: id.public().spki_der().to_vec(),
            serial: 7,
            issued_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_certificate_verifies_under_its_root_only() {
        let root = test_key(0);
        let other_root = test_key(2);
        let member = test_key(1);
        let cert = Certificate::issue(root, body_for(member, Role::Member)).unwrap();
        let v = cert.verify(root.public()).unwrap();
        assert_eq!(v.name(), "alice");
        assert_eq!(v.fingerprint(), member.fingerprint());
        assert!(matches!(
            cert.verify(other_root.public()),
            Err(CertError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let root = test_key(0);
        let cert = Certificate::issue(root, body_for(test_key(1), Role::Member)).unwrap();
        let bytes = cert.to_canonical();
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if let Ok(c) = Certificate::from_canonical(&b) {
                assert!(c.verify(root.public()).is_err(), "bit flip at {i} accepted");
            }
        }
    }

    #[test]
    fn another_key_and_wrong_role_are_refused() {
        let root = test_key(0);
        let cert = Certificate::issue(root, body_for(test_key(1), Role::Member)).unwrap();
        let v = cert.verify(root.public()).unwrap();
        assert!(matches!(
            v.clone().expect_key(test_key(2).public().spki_der()),
            Err(CertError::KeyMismatch { .. })
        ));
        assert!(matches!(
            v.clone().expect_role(Role::Proxy),
            Err(CertError::WrongRole { .. })
        ));
        assert!(v.expect_role(Role::Member).is_ok());
    }

    #[test]
    fn revocations_verify_under_the_root_only() {
        let root = test_key(0);
        let r = SignedRevocation::issue(
            root,
            Revocation {
                serial: 3,
                name: "bob".into(),
                revoked_at_ms: 5,
            },
        )
        .unwrap();
        assert_eq!(r.verify(root.public()).unwrap().serial, 3);
        assert!(r.verify(test_key(1).public()).is_err());
        let mut forged = r.clone();
        forged.statement.serial = 4;
        assert!(forged.verify(root.public()).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice-1.b_c").is_ok());
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
