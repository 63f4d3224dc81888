//! Conclave's shared ground: protocol types, crypto, the chain format and its checks, and
//! configuration. It opens no sockets; the servers build on it.
//!
//! # Layout
//! - [`codec`]: the canonical byte encoding that hashes and signatures cover.
//! - [`identity`]: RSA key pairs, key files (0600), PSS signatures, fingerprints.
//! - [`cert`]: the key manager's certificates and revocations; [`cert::VerifiedCert`].
//! - [`envelope`]: AES-256-GCM sealing of records, RSA-OAEP wrapping of group keys.
//! - [`chain`]: blocks, format version 1, and the streaming `verify_chain`.
//! - [`wire`]: ALPNs, length-prefixed bincode frames, one message enum per direction.
//! - [`quic`]: rustls/quinn configuration binding TLS to key-manager certificates.
//! - [`config`]: `config.yml`, its defaults and its validation.

pub mod cert;
pub mod chain;
pub mod codec;
pub mod config;
pub mod envelope;
pub mod identity;
pub mod quic;
pub mod wire;

/// Milliseconds since the Unix epoch, the unit every timestamp of ours uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
