//! quinn configurations for servers and clients, and the post-handshake identity check.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::NoServerSessionStorage;

use super::trust::MemberTrust;
use super::verifier::{MemberClientVerifier, MemberServerVerifier, RootPinVerifier};
use super::{verify_presented, QuicError, TlsIdentity};
use crate::cert::VerifiedCert;
use crate::identity::PublicKey;

/// The name every client sends as SNI and every TLS certificate carries. The verifiers ignore
/// names (a peer is who its embedded certificate says), so one constant serves everywhere.
pub const SERVER_NAME: &str = "conclave";

/// A connection with no packet from the peer for this long is closed. Keep-alives keep an
/// idle but healthy connection open; this bounds how long a dead peer goes unnoticed.
pub const IDLE_TIMEOUT_MS: u32 = 10_000;

/// How often an otherwise idle connection sends a keep-alive (well under the idle timeout,
/// so a few lost packets do not close a healthy connection).
pub const KEEP_ALIVE_MS: u64 = 2_000;
const _: () = assert!(KEEP_ALIVE_MS * 3 <= IDLE_TIMEOUT_MS as u64);

/// Whom a server admits.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is asked for: the key manager's registration and status.
    None,
    /// A valid Conclave certificate is mandatory.
    Members(MemberTrust),
    /// A client may present no certificate (`conclave status` at the proxy); a certificate it
    /// does present must pass the same checks as under [`ClientAuth::Members`], or the
    /// handshake fails. After the handshake, [`peer_cert`] tells the two kinds of client apart
    /// ([`QuicError::NoPeerCertificate`] for an anonymous one), so a request that needs an
    /// identity must call it.
    OptionalMembers(MemberTrust),
}

/// Which servers a client accepts.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Only the holder of this key: the key manager, pinned by the root public key.
    PinnedRoot(PublicKey),
    /// A server with a valid Conclave certificate (members, the proxy).
    Members(MemberTrust),
}

/// A quinn server configuration presenting `tls` and admitting clients per `clients`, for the
/// ALPNs in `alpns` (a client offering none of them is refused in the handshake).
pub fn server_config(
    tls: &TlsIdentity,
    clients: ClientAuth,
    alpns: &[&[u8]],
) -> Result<quinn::ServerConfig, QuicError> {
    let builder = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match clients {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Members(trust) => {
            builder.with_client_cert_verifier(Arc::new(MemberClientVerifier::new(trust)))
        }
        ClientAuth::OptionalMembers(trust) => {
            builder.with_client_cert_verifier(Arc::new(MemberClientVerifier::optional(trust)))
        }
    };
    let mut crypto = builder.with_single_cert(tls.cert_chain(), tls.private_key())?;
    crypto.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // No session resumption: a resumed handshake skips the certificate verifiers, so a peer
    // revoked since its first connection could come back on its ticket.
    crypto.session_storage = Arc::new(NoServerSessionStorage {});
    crypto.send_tls13_tickets = 0;
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    config.transport_config(transport());
    Ok(config)
}

/// A quinn client configuration that accepts servers per `server`, offering `alpns`, and
/// presents `tls` when given (`None` for registration and `conclave status`).
pub fn client_config(
    tls: Option<&TlsIdentity>,
    server: ServerTrust,
    alpns: &[&[u8]],
) -> Result<quinn::ClientConfig, QuicError> {
    let builder = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous();
    let builder = match server {
        ServerTrust::PinnedRoot(root) => builder
            .with_custom_certificate_verifier(Arc::new(RootPinVerifier::new(root.fingerprint()))),
        ServerTrust::Members(trust) => {
            builder.with_custom_certificate_verifier(Arc::new(MemberServerVerifier::new(trust)))
        }
    };
    let mut crypto = match tls {
        Some(tls) => builder.with_client_auth_cert(tls.cert_chain(), tls.private_key())?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // Every connection runs the verifier again (see server_config); no 0-RTT either, since
    // early data can be replayed.
    crypto.resumption = Resumption::disabled();
    crypto.enable_early_data = false;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto)?));
    config.transport_config(transport());
    Ok(config)
}

/// Who is on the other end of an established connection, checked again now: the handshake's
/// verifier ran with the revocations known then, and this re-reads the peer's certificate so
/// application code gets a [`VerifiedCert`] and sees revocations learned since.
pub fn peer_cert(conn: &quinn::Connection, trust: &MemberTrust) -> Result<VerifiedCert, QuicError> {
    let identity = conn.peer_identity().ok_or(QuicError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| QuicError::NoPeerCertificate)?;
    let end_entity = chain.first().ok_or(QuicError::NoPeerCertificate)?;
    verify_presented(end_entity, trust)
}

/// The ALPN the handshake settled on, for checking the peer's role against the protocol
/// (the verifiers cannot: they run before the application protocol is known to them).
/// `None` only if no ALPN was configured.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Always ring, never the process default: with a second provider linked in, rustls' default
/// builders panic at run time (see STACK.md).
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    Arc::new(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{CertBody, Certificate, Role};
    use crate::identity::tests::test_key;
    use crate::quic::RevokedSerials;

    #[test]
    fn configurations_build_for_every_combination() {
        let root = test_key(0);
        let cert = Certificate::issue(
            root,
            CertBody {
                name: "alice".into(),
                role: Role::Member,
                spki_der: test_key(1).public().spki_der().to_vec(),
                serial: 1,
                issued_at_ms: 0,
            },
        )
        .unwrap();
        let member = TlsIdentity::new(test_key(1), Some(&cert)).unwrap();
        let km = TlsIdentity::new(root, None).unwrap();
        let trust = MemberTrust::new(
            root.public().clone(),
            &[Role::Member],
            RevokedSerials::new(),
        );
        let alpns: &[&[u8]] = &[b"conclave/test/1"];
        server_config(&km, ClientAuth::None, alpns).unwrap();
        server_config(&member, ClientAuth::Members(trust.clone()), alpns).unwrap();
        server_config(&member, ClientAuth::OptionalMembers(trust.clone()), alpns).unwrap();
        client_config(None, ServerTrust::PinnedRoot(root.public().clone()), alpns).unwrap();
        client_config(Some(&member), ServerTrust::Members(trust), alpns).unwrap();
    }
}
