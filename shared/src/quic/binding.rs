//! The binding itself: our TLS certificate with the key-manager certificate inside, and the
//! check of a peer's.

use std::fmt;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::asn1_rs::{FromDer, OctetString};
use x509_parser::certificate::X509Certificate;

use super::trust::MemberTrust;
use super::QuicError;
use crate::cert::{Certificate, VerifiedCert};
use crate::codec::Canonical;
use crate::identity::{Fingerprint, Identity};

/// The X.509 extension that carries a node's key-manager certificate:
/// `1.3.6.1.4.1.1668178796.1.1`.
///
/// This OID is private and NOT registered: `1.3.6.1.4.1` is IANA's Private Enterprise Number
/// arc and `1668178796` is not a number IANA assigned to this project. It is the ASCII bytes
/// "cncl" read as a big-endian integer, chosen because IANA assigns enterprise numbers in
/// sequence (about 65,000 so far), so no organisation will hold it for a very long time. A
/// registration-free `2.25.<UUID>` OID would be the textbook choice, but rcgen takes OID arcs
/// as `u64` and a UUID needs 128 bits. If Conclave ever gets its own enterprise number, move
/// the extension there (old and new OIDs can be read side by side for a transition).
///
/// A clash is harmless by construction: only Conclave's own verifiers read this extension,
/// and they accept its content only if it decodes as a certificate that the group's root key
/// signed for exactly the key in the TLS certificate.
///
/// The last arc is the content version: `.1` is the canonical encoding of
/// [`Certificate`] from `docs/chain-format.md`. A different encoding gets a new arc.
pub const CONCLAVE_CERT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 1_668_178_796, 1, 1];

/// The largest TLS certificate we parse. Ours are about 2 KB (4096-bit key, embedded
/// certificate, rcgen's signature); anything over this is refused before parsing.
pub const MAX_TLS_CERT_BYTES: usize = 16 * 1024;

/// The subject common name of every Conclave TLS certificate. Nothing reads it: who a peer
/// is comes from the embedded certificate alone, so the name is deliberately uninformative.
const TLS_COMMON_NAME: &str = "conclave node";

/// This node's TLS certificate and private key, ready for rustls.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsIdentity({:?})", self.fingerprint)
    }
}

impl TlsIdentity {
    /// Makes the self-signed TLS certificate of `identity`, embedding `km_cert`.
    ///
    /// `km_cert` is `None` only for the key manager, which uses the root key and is pinned by
    /// it. Refuses a `km_cert` issued for another key: peers would refuse it anyway, and this
    /// way the mistake is reported at start-up rather than at every connection.
    pub fn new(identity: &Identity, km_cert: Option<&Certificate>) -> Result<Self, QuicError> {
        if let Some(cert) = km_cert {
            if cert.body.spki_der != identity.public().spki_der() {
                return Err(QuicError::KmCertForAnotherKey {
                    name: cert.name().to_owned(),
                });
            }
        }
        Self::build(identity, km_cert.map(Canonical::to_canonical))
    }

    /// Like [`TlsIdentity::new`] but embeds `km_cert` even if it names another key. It exists
    /// only so that tests can check that peers refuse such a certificate; a real node has no
    /// use for it (it cannot make peers accept anything they would not accept anyway).
    #[doc(hidden)]
    pub fn new_unchecked(identity: &Identity, km_cert: &Certificate) -> Result<Self, QuicError> {
        Self::build(identity, Some(km_cert.to_canonical()))
    }

    fn build(identity: &Identity, embedded: Option<Vec<u8>>) -> Result<Self, QuicError> {
        let key = PrivatePkcs8KeyDer::from(identity.pkcs8_der().to_vec());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![super::SERVER_NAME.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, TLS_COMMON_NAME);
        if let Some(content) = embedded {
            // from_oid_content makes a non-critical extension: generic X.509 code that does
            // not know the OID may ignore it, as RFC 5280 allows.
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    CONCLAVE_CERT_OID,
                    der_octet_string(&content),
                ));
        }
        let cert = params.self_signed(&key_pair)?.der().clone();
        // Peers compare the certificate's SPKI byte for byte with the SPKI the key manager
        // certified (the rsa crate's encoding); check once here that rcgen wrote the same bytes.
        if presented_spki(&cert)? != identity.public().spki_der() {
            return Err(QuicError::SpkiEncoding);
        }
        Ok(Self {
            cert,
            key,
            fingerprint: identity.fingerprint(),
        })
    }

    /// The DER of the TLS certificate, as peers see it.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The fingerprint of the identity key (and so of the TLS key).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Checks a peer's TLS certificate: the embedded key-manager certificate verifies under the
/// trusted root, names exactly the key this TLS certificate carries (the key that signs the
/// handshake), has an allowed role, and its serial is not in the revoked set.
///
/// Everything else in the X.509 certificate (issuer, names, dates, rcgen's self-signature) is
/// ignored: the root's signature over the embedded certificate is the only authority.
pub fn verify_presented(cert_der: &[u8], trust: &MemberTrust) -> Result<VerifiedCert, QuicError> {
    let x509 = parse_bounded(cert_der)?;
    let spki = x509.tbs_certificate.subject_pki.raw;
    let embedded = find_binding(&x509)?;
    let cert =
        Certificate::from_canonical(embedded).map_err(|e| QuicError::BadBinding(e.to_string()))?;
    let verified = cert.verify(trust.root())?.expect_key(spki)?;
    if !trust.allows(verified.role()) {
        return Err(QuicError::RoleNotAllowed {
            name: verified.name().to_owned(),
            role: verified.role(),
            allowed: trust.allowed_roles_text(),
        });
    }
    if trust.revoked().contains(verified.serial()) {
        return Err(QuicError::Revoked {
            name: verified.name().to_owned(),
            serial: verified.serial(),
        });
    }
    Ok(verified)
}

/// The raw SubjectPublicKeyInfo DER of a TLS certificate, for fingerprints and for the
/// handshake signature check.
pub(crate) fn presented_spki(cert_der: &[u8]) -> Result<&[u8], QuicError> {
    Ok(parse_bounded(cert_der)?.tbs_certificate.subject_pki.raw)
}

fn parse_bounded(cert_der: &[u8]) -> Result<X509Certificate<'_>, QuicError> {
    if cert_der.len() > MAX_TLS_CERT_BYTES {
        return Err(QuicError::CertTooLarge {
            len: cert_der.len(),
            max: MAX_TLS_CERT_BYTES,
        });
    }
    let (rest, x509) =
        X509Certificate::from_der(cert_der).map_err(|e| QuicError::BadX509(e.to_string()))?;
    if !rest.is_empty() {
        return Err(QuicError::BadX509(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(x509)
}

/// The content of the one Conclave extension: the canonical certificate bytes.
fn find_binding<'a>(x509: &X509Certificate<'a>) -> Result<&'a [u8], QuicError> {
    let mut found = x509.extensions().iter().filter(|ext| {
        ext.oid
            .iter()
            .is_some_and(|arcs| arcs.eq(CONCLAVE_CERT_OID.iter().copied()))
    });
    let ext = found.next().ok_or_else(|| QuicError::NoBinding {
        oid: oid_text(CONCLAVE_CERT_OID),
    })?;
    if found.next().is_some() {
        return Err(QuicError::DuplicateBinding);
    }
    // extnValue holds the DER of the extension's value (RFC 5280 4.1), which for us is an
    // OCTET STRING around the canonical bytes.
    let (rest, inner) = OctetString::from_der(ext.value)
        .map_err(|e| QuicError::BadBinding(format!("not a DER OCTET STRING: {e}")))?;
    if !rest.is_empty() {
        return Err(QuicError::BadBinding(format!(
            "{} trailing bytes after the OCTET STRING",
            rest.len()
        )));
    }
    match inner.into_cow() {
        std::borrow::Cow::Borrowed(bytes) => Ok(bytes),
        // DER never needs a copy (only BER's constructed strings do), and a copy could not
        // outlive this function; refuse rather than allocate.
        std::borrow::Cow::Owned(_) => Err(QuicError::BadBinding(
            "constructed OCTET STRING (BER, not DER)".to_owned(),
        )),
    }
}

/// DER of an OCTET STRING holding `content`: tag 0x04, then the definite length in its
/// shortest form, then the bytes.
fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(content.len() + 10);
    out.push(0x04);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn oid_text(arcs: &[u64]) -> String {
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CertBody, CertError, Role};
    use crate::identity::tests::test_key;
    use crate::quic::RevokedSerials;

    fn issue(root: &Identity, subject: &Identity, role: Role, serial: u64) -> Certificate {
        let body = CertBody {
            name: format!("node-{serial}"),
            role,
            spki_der: subject.public().spki_der().to_vec(),
            serial,
            issued_at_ms: 1_700_000_000_000,
        };
        Certificate::issue(root, body).expect("issue")
    }

    fn members_only() -> MemberTrust {
        MemberTrust::new(
            test_key(0).public().clone(),
            &[Role::Member],
            RevokedSerials::new(),
        )
    }

    fn tls_for(subject: &Identity, cert: &Certificate) -> Vec<u8> {
        TlsIdentity::new(subject, Some(cert))
            .expect("tls identity")
            .cert_der()
            .to_vec()
    }

    #[test]
    fn a_valid_member_is_accepted_and_named() {
        let cert = issue(test_key(0), test_key(1), Role::Member, 1);
        let v = verify_presented(&tls_for(test_key(1), &cert), &members_only()).unwrap();
        assert_eq!(v.name(), "node-1");
        assert_eq!(v.fingerprint(), test_key(1).fingerprint());
    }

    #[test]
    fn the_oid_and_the_extension_are_what_the_docs_say() {
        assert_eq!(oid_text(CONCLAVE_CERT_OID), "1.3.6.1.4.1.1668178796.1.1");
        assert_eq!(1_668_178_796u64.to_be_bytes()[4..], *b"cncl");
        let cert = issue(test_key(0), test_key(1), Role::Member, 1);
        let der = tls_for(test_key(1), &cert);
        let (_, x509) = X509Certificate::from_der(&der).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.1668178796.1.1")
            .expect("extension present");
        assert!(!ext.critical);
        assert_eq!(ext.value, der_octet_string(&cert.to_canonical()));
    }

    #[test]
    fn forged_foreign_wrong_role_and_revoked_certificates_are_refused() {
        let trust = members_only();
        let mut forged = issue(test_key(0), test_key(1), Role::Member, 1);
        let last = forged.signature.len() - 1;
        forged.signature[last] ^= 1;
        assert!(matches!(
            verify_presented(&tls_for(test_key(1), &forged), &trust),
            Err(QuicError::Cert(CertError::BadSignature { .. }))
        ));

        let foreign = issue(test_key(2), test_key(1), Role::Member, 1);
        assert!(matches!(
            verify_presented(&tls_for(test_key(1), &foreign), &trust),
            Err(QuicError::Cert(CertError::BadSignature { .. }))
        ));

        let proxy = issue(test_key(0), test_key(3), Role::Proxy, 3);
        assert!(matches!(
            verify_presented(&tls_for(test_key(3), &proxy), &trust),
            Err(QuicError::RoleNotAllowed {
                role: Role::Proxy,
                ..
            })
        ));
        let both = MemberTrust::new(
            test_key(0).public().clone(),
            &[Role::Member, Role::Proxy],
            RevokedSerials::new(),
        );
        assert!(verify_presented(&tls_for(test_key(3), &proxy), &both).is_ok());

        let member = issue(test_key(0), test_key(1), Role::Member, 9);
        let der = tls_for(test_key(1), &member);
        assert!(verify_presented(&der, &trust).is_ok());
        // The set is shared: inserting through a clone revokes for every holder.
        trust.clone().revoked().insert(9);
        assert!(matches!(
            verify_presented(&der, &trust),
            Err(QuicError::Revoked { serial: 9, .. })
        ));
    }

    #[test]
    fn a_certificate_for_another_key_is_refused_on_both_sides() {
        let for_key_1 = issue(test_key(0), test_key(1), Role::Member, 1);
        assert!(matches!(
            TlsIdentity::new(test_key(2), Some(&for_key_1)),
            Err(QuicError::KmCertForAnotherKey { .. })
        ));
        let tls = TlsIdentity::new_unchecked(test_key(2), &for_key_1).unwrap();
        assert!(matches!(
            verify_presented(tls.cert_der(), &members_only()),
            Err(QuicError::Cert(CertError::KeyMismatch { .. }))
        ));
    }

    #[test]
    fn missing_oversized_and_garbage_certificates_are_refused() {
        let trust = members_only();
        let bare = TlsIdentity::new(test_key(0), None).unwrap();
        assert!(matches!(
            verify_presented(bare.cert_der(), &trust),
            Err(QuicError::NoBinding { .. })
        ));
        assert!(matches!(
            verify_presented(&vec![0x30; MAX_TLS_CERT_BYTES + 1], &trust),
            Err(QuicError::CertTooLarge { .. })
        ));
        assert!(matches!(
            verify_presented(b"not a certificate", &trust),
            Err(QuicError::BadX509(_))
        ));
        let cert = issue(test_key(0), test_key(1), Role::Member, 1);
        let mut der = tls_for(test_key(1), &cert);
        der.push(0);
        assert!(matches!(
            verify_presented(&der, &trust),
            Err(QuicError::BadX509(_))
        ));
    }

    #[test]
    fn truncated_or_flipped_certificates_never_panic_and_never_pass() {
        let trust = members_only();
        let cert = issue(test_key(0), test_key(1), Role::Member, 1);
        let der = tls_for(test_key(1), &cert);
        for cut in (0..der.len()).step_by(97) {
            assert!(verify_presented(&der[..cut], &trust).is_err());
        }
        // Flips inside the embedded certificate must be caught by the root's signature (or
        // the decoder); flips elsewhere may land in parts we deliberately ignore.
        let ext = der_octet_string(&cert.to_canonical());
        let start = der
            .windows(ext.len())
            .position(|w| w == ext.as_slice())
            .expect("extension bytes inside the certificate");
        for i in (start + 2..start + ext.len()).step_by(5) {
            let mut bad = der.clone();
            bad[i] ^= 0x04;
            assert!(
                verify_presented(&bad, &trust).is_err(),
                "flip at {i} accepted"
            );
        }
    }

    #[test]
    fn duplicate_extensions_are_refused() {
        let cert = issue(test_key(0), test_key(1), Role::Member, 1);
        let key = PrivatePkcs8KeyDer::from(test_key(1).pkcs8_der().to_vec());
        let kp =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["conclave".to_owned()]).unwrap();
        for _ in 0..2 {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    CONCLAVE_CERT_OID,
                    der_octet_string(&cert.to_canonical()),
                ));
        }
        let der = params.self_signed(&kp).unwrap().der().to_vec();
        let err = verify_presented(&der, &members_only()).unwrap_err();
        // x509-parser may refuse the duplicate itself; either way it does not pass.
        assert!(
            matches!(err, QuicError::DuplicateBinding | QuicError::BadX509(_)),
            "{err}"
        );
    }

    #[test]
    fn octet_string_lengths_use_the_shortest_form() {
        assert_eq!(der_octet_string(&[]), vec![0x04, 0]);
        assert_eq!(der_octet_string(&[7; 127])[..2], [0x04, 127]);
        assert_eq!(der_octet_string(&[7; 128])[..3], [0x04, 0x81, 128]);
        assert_eq!(der_octet_string(&[7; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        for len in [0, 1, 127, 128, 255, 256, 1500] {
            let content = vec![0xab; len];
            let der = der_octet_string(&content);
            let (rest, s) = OctetString::from_der(&der).unwrap();
            assert!(rest.is_empty());
            assert_eq!(s.as_ref(), content.as_slice());
        }
    }
}
