//! QUIC and TLS configuration binding each endpoint to its key-manager certificate.
//!
//! Every endpoint's TLS certificate is a self-signed X.509 certificate made by rcgen from the
//! node's own RSA identity key, so the key that signs the TLS handshake *is* the identity key.
//! The node's key-manager [`Certificate`](crate::cert::Certificate) rides inside it as a
//! private, non-critical extension ([`CONCLAVE_CERT_OID`]). The verifiers here ignore X.509
//! chains, names and validity dates altogether; they accept a peer only if that embedded
//! certificate verifies under the group's root key, names the very key the TLS certificate
//! carries, has an allowed role, and is not revoked as far as this node knows. The key manager
//! has no key-manager certificate of its own: clients pin it by the root public key
//! ([`RootPinVerifier`]). See `docs/tls-binding.md`.
//!
//! # Layout
//! - [`binding`]: [`TlsIdentity`] (our certificate), [`verify_presented`] (theirs).
//! - [`trust`]: [`MemberTrust`] and the shared [`RevokedSerials`].
//! - [`verifier`]: the rustls verifiers for both directions and the root pin.
//! - [`endpoint`]: quinn server and client configurations, [`peer_cert`] and
//!   [`negotiated_alpn`] for the checks after the handshake.

pub mod accept;
pub mod binding;
pub mod endpoint;
pub mod trust;
pub mod verifier;

use thiserror::Error;

use crate::cert::{CertError, Role};
use crate::identity::Fingerprint;

pub use accept::{accept_connections, Slot};
pub use binding::{verify_presented, TlsIdentity, CONCLAVE_CERT_OID, MAX_TLS_CERT_BYTES};
pub use endpoint::{
    client_config, negotiated_alpn, peer_cert, server_config, ClientAuth, ServerTrust,
    IDLE_TIMEOUT_MS, KEEP_ALIVE_MS, SERVER_NAME,
};
pub use trust::{MemberTrust, RevokedSerials};
pub use verifier::{MemberClientVerifier, MemberServerVerifier, RootPinVerifier};

/// Why a TLS identity could not be built or a peer was refused.
#[derive(Debug, Error)]
pub enum QuicError {
    /// Our own side: rcgen could not make this node's TLS certificate.
    #[error("building this node's TLS certificate failed: {0}")]
    CertGen(#[from] rcgen::Error),
    /// Our own side: the configured key-manager certificate belongs to another key.
    #[error(
        "the key-manager certificate for {name:?} names another key than this node's identity \
         key: use the certificate issued for this key file, or register this key again"
    )]
    KmCertForAnotherKey { name: String },
    /// Our own side: rcgen wrote the public key in a form peers would not match. A bug.
    #[error(
        "the TLS certificate's public key is not byte-identical to the identity's SPKI DER \
         (an encoding difference between rcgen and the rsa crate); peers would refuse it"
    )]
    SpkiEncoding,
    /// The peer's fault: a certificate larger than any we make.
    #[error("the peer's TLS certificate is {len} bytes, over the limit of {max}")]
    CertTooLarge { len: usize, max: usize },
    /// The peer's fault: not an X.509 certificate.
    #[error("the peer's TLS certificate is not valid X.509 DER: {0}")]
    BadX509(String),
    /// The peer is not a Conclave node, or its version does not carry our extension.
    #[error(
        "the peer's TLS certificate carries no Conclave certificate (extension {oid}): the \
         peer is not a registered Conclave node, or it runs an incompatible version"
    )]
    NoBinding { oid: String },
    /// The peer's fault: the extension appears twice, so which one counts would be ambiguous.
    #[error(
        "the peer's TLS certificate carries the Conclave certificate extension more than once"
    )]
    DuplicateBinding,
    /// The peer's fault: the extension's content does not decode.
    #[error("the Conclave certificate inside the peer's TLS certificate is malformed: {0}")]
    BadBinding(String),
    /// Forged, issued by another root, or for another key than the one presented.
    #[error("the peer's Conclave certificate is refused: {0}")]
    Cert(#[from] CertError),
    /// A genuine certificate, but its role has no business on this endpoint.
    #[error(
        "{name:?} holds a {role} certificate, which is not accepted here (accepted: {allowed})"
    )]
    RoleNotAllowed {
        name: String,
        role: Role,
        allowed: String,
    },
    /// The root revoked this certificate and this node has learned it.
    #[error("the certificate of {name:?} (serial {serial}) is revoked")]
    Revoked { name: String, serial: u64 },
    /// The server is not the key manager we pinned.
    #[error(
        "the server's key {got} is not the pinned root key {expected}: check the key \
         manager's address and the root public key file"
    )]
    NotPinnedRoot {
        expected: Fingerprint,
        got: Fingerprint,
    },
    /// The connection has no peer certificate (the server did not ask for one, or the
    /// handshake is not complete).
    #[error("the peer presented no TLS certificate")]
    NoPeerCertificate,
    /// rustls refused the configuration (for example a key it cannot use).
    #[error("rustls refused the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The crypto provider has no TLS 1.3 suite QUIC can start with. A build problem.
    #[error("the crypto provider offers no TLS 1.3 cipher suite QUIC can use: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}
