//! The rustls verifiers. They decide synchronously, from the certificate alone: X.509 chains,
//! server names and dates are ignored, and the handshake signature is checked by rustls and
//! ring against the very key the certificate carries.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature_with_raw_key, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::binding::{presented_spki, verify_presented};
use super::trust::MemberTrust;
use super::QuicError;
use crate::identity::Fingerprint;

/// Accepts a server whose certificate carries a valid Conclave certificate (client side of
/// member-to-member and member-to-proxy connections).
pub struct MemberServerVerifier {
    trust: MemberTrust,
    signatures: HandshakeSignatures,
}

/// Checks a client's Conclave certificate (server side). Built with [`new`] a certificate is
/// mandatory; built with [`optional`] a client may present none (the proxy, where
/// `conclave status` connects anonymously), but one it does present gets the same checks.
///
/// [`new`]: MemberClientVerifier::new
/// [`optional`]: MemberClientVerifier::optional
pub struct MemberClientVerifier {
    trust: MemberTrust,
    mandatory: bool,
    signatures: HandshakeSignatures,
}

/// Accepts only a server whose key is the pinned root key: how nodes reach the key manager.
pub struct RootPinVerifier {
    root: Fingerprint,
    signatures: HandshakeSignatures,
}

impl MemberServerVerifier {
    pub fn new(trust: MemberTrust) -> Self {
        Self {
            trust,
            signatures: HandshakeSignatures::ring(),
        }
    }
}

impl MemberClientVerifier {
    /// Every client must present a valid certificate.
    pub fn new(trust: MemberTrust) -> Self {
        Self {
            trust,
            mandatory: true,
            signatures: HandshakeSignatures::ring(),
        }
    }

    /// A client may present no certificate; one it presents must be valid. The application
    /// tells the two apart after the handshake with [`peer_cert`](super::peer_cert), which
    /// returns [`QuicError::NoPeerCertificate`] for an anonymous client.
    pub fn optional(trust: MemberTrust) -> Self {
        Self {
            trust,
            mandatory: false,
            signatures: HandshakeSignatures::ring(),
        }
    }
}

impl RootPinVerifier {
    /// Pins the key whose SPKI DER hashes to `root` (see [`Fingerprint::of_spki`]).
    pub fn new(root: Fingerprint) -> Self {
        Self {
            root,
            signatures: HandshakeSignatures::ring(),
        }
    }
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_presented(end_entity, &self.trust).map_err(refusal)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

impl ClientCertVerifier for MemberClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: there is no CA whose name would help a client choose a certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_presented(end_entity, &self.trust).map_err(refusal)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

impl ServerCertVerifier for RootPinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_spki(presented_spki(end_entity).map_err(refusal)?);
        if got != self.root {
            return Err(refusal(QuicError::NotPinnedRoot {
                expected: self.root,
                got,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The handshake-signature checks all three verifiers share, done by rustls with ring.
#[derive(Clone, Copy)]
struct HandshakeSignatures(WebPkiSupportedAlgorithms);

impl HandshakeSignatures {
    fn ring() -> Self {
        Self(rustls::crypto::ring::default_provider().signature_verification_algorithms)
    }

    /// Checks against the SPKI that [`verify_presented`] matched with the embedded
    /// certificate, taken by the same parser, so the key that signs the handshake is the key
    /// the root certified with no room for two parsers to disagree.
    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = presented_spki(cert).map_err(refusal)?;
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.0,
        )
    }

    /// Never reached: every configuration here allows TLS 1.3 only, as QUIC requires. Kept
    /// correct rather than refusing, in case a caller reuses a verifier over TCP.
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Turns a refusal into the rustls error that aborts the handshake. A revocation becomes the
/// `certificate_revoked` alert, so the refused node learns why; everything else keeps our
/// message (rustls prints it with `Debug`, which [`Refusal`] makes readable).
fn refusal(err: QuicError) -> rustls::Error {
    tracing::debug!(error = %err, "refusing a peer's TLS certificate");
    match err {
        QuicError::Revoked { .. } => CertificateError::Revoked.into(),
        other => CertificateError::Other(rustls::OtherError(Arc::new(Refusal(other)))).into(),
    }
}

/// A [`QuicError`] whose `Debug` is its message, for rustls' error text.
struct Refusal(QuicError);

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl fmt::Debug for MemberServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberServerVerifier({:?})", self.trust)
    }
}

impl fmt::Debug for MemberClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MemberClientVerifier({:?}, mandatory: {})",
            self.trust, self.mandatory
        )
    }
}

impl fmt::Debug for RootPinVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootPinVerifier({:?})", self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;
    use crate::quic::TlsIdentity;

    fn check_pin(pinned: Fingerprint, server: &TlsIdentity) -> Result<(), rustls::Error> {
        RootPinVerifier::new(pinned)
            .verify_server_cert(
                server.cert_der(),
                &[],
                &ServerName::try_from(crate::quic::SERVER_NAME).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_root_pin_accepts_the_root_key_only() {
        let km = TlsIdentity::new(test_key(0), None).unwrap();
        assert!(check_pin(test_key(0).fingerprint(), &km).is_ok());
        let err = check_pin(test_key(1).fingerprint(), &km).unwrap_err();
        assert!(
            err.to_string().contains("is not the pinned root key"),
            "{err}"
        );
    }
}
