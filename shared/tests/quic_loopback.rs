//! Real QUIC over 127.0.0.1: who gets through the certificate binding and who does not.
//!
//! A refused client may see `connect()` succeed and fail only on its first read (the server
//! checks the client's certificate after the client considers the handshake done), so every
//! refusal here is asserted on a whole exchange, and on the server's own reason.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use conclave_shared::cert::{CertBody, Certificate, Role};
use conclave_shared::identity::Identity;
use conclave_shared::quic::{
    client_config, negotiated_alpn, peer_cert, server_config, ClientAuth, MemberServerVerifier,
    MemberTrust, QuicError, RevokedSerials, ServerTrust, TlsIdentity, SERVER_NAME,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;

const ALPN: &[u8] = b"conclave/test/1";
/// Every step (an exchange, waiting for the server's verdict) must end within this.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ECHO_BYTES: usize = 1024;
const PAYLOAD: &[u8] = b"hello, conclave";

struct Keys {
    root: Identity,
    other_root: Identity,
    server: Identity,
    alice: Identity,
    bob: Identity,
    proxy: Identity,
}

/// Key generation is the slow part; make the six keys once for all tests.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = || Identity::generate(2048).expect("keygen");
        Keys {
            root: k(),
            other_root: k(),
            server: k(),
            alice: k(),
            bob: k(),
            proxy: k(),
        }
    })
}

fn issue(root: &Identity, subject: &Identity, name: &str, role: Role, serial: u64) -> Certificate {
    let body = CertBody {
        name: name.to_owned(),
        role,
        spki_der: subject.public().spki_der().to_vec(),
        serial,
        issued_at_ms: 1_700_000_000_000,
    };
    Certificate::issue(root, body).expect("issue certificate")
}

fn trust(roles: &[Role], revoked: &RevokedSerials) -> MemberTrust {
    MemberTrust::new(keys().root.public().clone(), roles, revoked.clone())
}

/// A member TLS identity whose certificate the real root issued.
fn member_tls(subject: &Identity, name: &str, serial: u64) -> TlsIdentity {
    let cert = issue(&keys().root, subject, name, Role::Member, serial);
    TlsIdentity::new(subject, Some(&cert)).expect("tls identity")
}

fn server_tls() -> TlsIdentity {
    member_tls(&keys().server, "server", 100)
}

/// A client configuration that accepts our test server (a member of the real root).
fn member_client(tls: Option<&TlsIdentity>) -> quinn::ClientConfig {
    let accept_server = trust(&[Role::Member], &RevokedSerials::new());
    client_config(tls, ServerTrust::Members(accept_server), &[ALPN]).expect("client config")
}

/// An echo server. Each accepted handshake is reported as `Ok(connection)`, each refused one
/// as `Err(reason)`. Dropping it aborts its tasks.
struct Server {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    verdicts: mpsc::Receiver<Result<quinn::Connection, String>>,
    _tasks: JoinSet<()>,
}

impl Server {
    fn start(tls: &TlsIdentity, clients: ClientAuth) -> Self {
        let config = server_config(tls, clients, &[ALPN]).expect("server config");
        let endpoint =
            quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = endpoint.local_addr().expect("local address");
        let (tx, verdicts) = mpsc::channel(16);
        let mut tasks = JoinSet::new();
        let accepting = endpoint.clone();
        tasks.spawn(async move {
            let mut handlers = JoinSet::new();
            while let Some(incoming) = accepting.accept().await {
                let tx = tx.clone();
                handlers.spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            let _ = tx.send(Ok(conn.clone())).await;
                            echo(conn).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string())).await;
                        }
                    }
                });
                while handlers.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            endpoint,
            verdicts,
            _tasks: tasks,
        }
    }

    /// The server's verdict on the next handshake.
    async fn verdict(&mut self) -> Result<quinn::Connection, String> {
        timeout(STEP_TIMEOUT, self.verdicts.recv())
            .await
            .expect("the server reached no verdict in time")
            .expect("the server stopped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

/// Echoes each bidirectional stream until the connection ends (closed or idle timeout).
async fn echo(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Ok(data) = recv.read_to_end(MAX_ECHO_BYTES).await else {
            return;
        };
        if send.write_all(&data).await.is_err() {
            return;
        }
        let _ = send.finish();
    }
}

/// Connects, sends `PAYLOAD` on a bidirectional stream and reads the echo. Panics if that
/// neither succeeds nor fails within `STEP_TIMEOUT`.
async fn exchange(config: quinn::ClientConfig, addr: SocketAddr) -> Result<Vec<u8>, String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
        .map_err(|e| format!("bind: {e}"))?;
    let attempt = async {
        let conn = endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open: {e}"))?;
        send.write_all(PAYLOAD)
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let echoed = recv
            .read_to_end(MAX_ECHO_BYTES)
            .await
            .map_err(|e| format!("read: {e}"))?;
        conn.close(0u32.into(), b"done");
        Ok(echoed)
    };
    let result = timeout(STEP_TIMEOUT, attempt)
        .await
        .expect("the exchange neither finished nor failed in time");
    endpoint.close(0u32.into(), b"done");
    result
}

async fn assert_accepted(server: &mut Server, client: quinn::ClientConfig) -> quinn::Connection {
    let echoed = exchange(client, server.addr).await.expect("exchange");
    assert_eq!(echoed, PAYLOAD);
    server.verdict().await.expect("server accepted")
}

/// The exchange fails on the client, and the server refused for a reason containing `why`.
async fn assert_refused(server: &mut Server, client: quinn::ClientConfig, why: &str) {
    let outcome = exchange(client, server.addr).await;
    assert!(outcome.is_err(), "a refused client exchanged bytes");
    let reason = server
        .verdict()
        .await
        .expect_err("the server accepted a client it should refuse");
    assert!(
        reason.contains(why),
        "server refused for {reason:?}, expected {why:?}"
    );
}

fn members_server(revoked: &RevokedSerials) -> Server {
    Server::start(
        &server_tls(),
        ClientAuth::Members(trust(&[Role::Member], revoked)),
    )
}

#[tokio::test]
async fn a_member_exchanges_bytes_and_the_server_knows_who_it_is() {
    let revoked = RevokedSerials::new();
    let mut server = members_server(&revoked);
    let alice = member_tls(&keys().alice, "alice", 1);
    let conn = assert_accepted(&mut server, member_client(Some(&alice))).await;
    let who = peer_cert(&conn, &trust(&[Role::Member], &revoked)).expect("peer cert");
    assert_eq!(who.name(), "alice");
    assert_eq!(who.role(), Role::Member);
    assert_eq!(who.fingerprint(), keys().alice.fingerprint());
    assert_eq!(negotiated_alpn(&conn).as_deref(), Some(ALPN));
}

#[tokio::test]
async fn a_forged_certificate_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    let mut cert = issue(&keys().root, &keys().alice, "alice", Role::Member, 1);
    cert.signature[10] ^= 0x01;
    let forged = TlsIdentity::new(&keys().alice, Some(&cert)).expect("tls identity");
    let client = member_client(Some(&forged));
    assert_refused(&mut server, client, "not signed by this root key").await;
}

#[tokio::test]
async fn a_certificate_from_another_root_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    let cert = issue(&keys().other_root, &keys().alice, "alice", Role::Member, 1);
    let foreign = TlsIdentity::new(&keys().alice, Some(&cert)).expect("tls identity");
    let client = member_client(Some(&foreign));
    assert_refused(&mut server, client, "not signed by this root key").await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    let revoked = RevokedSerials::new();
    revoked.insert(1);
    let mut server = members_server(&revoked);
    let alice = member_tls(&keys().alice, "alice", 1);
    assert_refused(&mut server, member_client(Some(&alice)), "Revoked").await;
}

#[tokio::test]
async fn a_revocation_learned_after_startup_refuses_new_connections() {
    let revoked = RevokedSerials::new();
    let mut server = members_server(&revoked);
    let alice = member_tls(&keys().alice, "alice", 1);
    let bob = member_tls(&keys().bob, "bob", 2);
    // One client configuration for both of alice's attempts: a resumed TLS session would
    // skip the verifier, so this also shows resumption is off.
    let alice_client = member_client(Some(&alice));
    let before = assert_accepted(&mut server, alice_client.clone()).await;

    revoked.insert(1);
    // The connection accepted before the revocation is refused when the application
    // re-checks it...
    let server_trust = trust(&[Role::Member], &revoked);
    assert!(matches!(
        peer_cert(&before, &server_trust),
        Err(QuicError::Revoked { serial: 1, .. })
    ));
    // ...every new handshake is refused...
    assert_refused(&mut server, alice_client, "Revoked").await;
    // ...and other members are unaffected.
    let conn = assert_accepted(&mut server, member_client(Some(&bob))).await;
    assert_eq!(peer_cert(&conn, &server_trust).expect("bob").name(), "bob");
}

#[tokio::test]
async fn a_proxy_is_refused_where_only_members_are_admitted() {
    let cert = issue(&keys().root, &keys().proxy, "proxy", Role::Proxy, 3);
    let proxy = TlsIdentity::new(&keys().proxy, Some(&cert)).expect("tls identity");
    let mut members_only = members_server(&RevokedSerials::new());
    let client = member_client(Some(&proxy));
    assert_refused(&mut members_only, client, "not accepted here").await;

    // The same certificate passes where proxies are admitted.
    let both = trust(&[Role::Member, Role::Proxy], &RevokedSerials::new());
    let mut server = Server::start(&server_tls(), ClientAuth::Members(both.clone()));
    let conn = assert_accepted(&mut server, member_client(Some(&proxy))).await;
    assert_eq!(peer_cert(&conn, &both).expect("proxy").role(), Role::Proxy);
}

#[tokio::test]
async fn a_valid_certificate_for_another_key_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    // Bob presents alice's genuine certificate with his own TLS key.
    let alices = issue(&keys().root, &keys().alice, "alice", Role::Member, 1);
    let stolen = TlsIdentity::new_unchecked(&keys().bob, &alices).expect("tls identity");
    let client = member_client(Some(&stolen));
    assert_refused(&mut server, client, "names another key").await;
}

/// Presents a fixed certificate with a fixed signing key, whether or not they match: how a
/// thief who copied a member's (public) TLS certificate but not its key would try.
#[derive(Debug)]
struct Impostor(Arc<CertifiedKey>);

impl ResolvesClientCert for Impostor {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_copied_certificate_without_its_private_key_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    let alice = member_tls(&keys().alice, "alice", 1);
    let bobs_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys().bob.pkcs8_der().to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&bobs_key).expect("signing key");
    let impostor = Impostor(Arc::new(CertifiedKey::new(
        vec![alice.cert_der().clone()],
        signer,
    )));
    let accept_server = trust(&[Role::Member], &RevokedSerials::new());
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(MemberServerVerifier::new(accept_server)))
    .with_client_cert_resolver(Arc::new(impostor));
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(crypto).expect("quic client config"),
    ));
    // Alice's certificate passes the certificate check; the handshake signature, made with
    // bob's key, must not pass the check against alice's key.
    assert_refused(&mut server, client, "BadSignature").await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    assert_refused(&mut server, member_client(None), "no certificates").await;
}

#[tokio::test]
async fn a_client_offering_another_alpn_is_refused() {
    let mut server = members_server(&RevokedSerials::new());
    let alice = member_tls(&keys().alice, "alice", 1);
    let accept_server = trust(&[Role::Member], &RevokedSerials::new());
    let client = client_config(
        Some(&alice),
        ServerTrust::Members(accept_server),
        &[b"conclave/other/1"],
    )
    .expect("client config");
    assert_refused(&mut server, client, "protocol").await;
}

#[tokio::test]
async fn the_root_pin_reaches_the_key_manager_and_nothing_else() {
    let km_tls = TlsIdentity::new(&keys().root, None).expect("key manager tls");
    let mut km = Server::start(&km_tls, ClientAuth::None);
    let pinned = |key: &Identity| {
        client_config(None, ServerTrust::PinnedRoot(key.public().clone()), &[ALPN])
            .expect("client config")
    };

    let conn = assert_accepted(&mut km, pinned(&keys().root)).await;
    // The key manager asked for no client certificate, so there is none to check.
    let anyone = trust(&[Role::Member], &RevokedSerials::new());
    assert!(matches!(
        peer_cert(&conn, &anyone),
        Err(QuicError::NoPeerCertificate)
    ));

    let err = exchange(pinned(&keys().other_root), km.addr)
        .await
        .expect_err("a client pinning another key reached the key manager");
    assert!(err.contains("is not the pinned root key"), "{err}");
    // A member's server is not the key manager either, valid certificate or not.
    let mut member_server = members_server(&RevokedSerials::new());
    let err = exchange(pinned(&keys().root), member_server.addr)
        .await
        .expect_err("a pinned client accepted a member as the key manager");
    assert!(err.contains("is not the pinned root key"), "{err}");
    assert!(member_server.verdict().await.is_err());
}

#[tokio::test]
async fn a_client_refuses_a_server_with_a_bad_embedded_certificate() {
    let alice = member_tls(&keys().alice, "alice", 1);
    let cases = [
        (
            issue(
                &keys().other_root,
                &keys().server,
                "server",
                Role::Member,
                100,
            ),
            "not signed by this root key",
        ),
        (
            issue(&keys().root, &keys().server, "server", Role::Proxy, 100),
            "not accepted here",
        ),
    ];
    for (cert, why) in cases {
        let tls = TlsIdentity::new(&keys().server, Some(&cert)).expect("tls identity");
        let mut server = Server::start(&tls, ClientAuth::None);
        let err = exchange(member_client(Some(&alice)), server.addr)
            .await
            .expect_err("the client accepted a bad server");
        assert!(
            err.contains(why),
            "client refused for {err:?}, expected {why:?}"
        );
        assert!(server.verdict().await.is_err());
    }
    // And a server without any embedded certificate (the key manager's kind) is no member.
    let bare = TlsIdentity::new(&keys().server, None).expect("tls identity");
    let mut server = Server::start(&bare, ClientAuth::None);
    let err = exchange(member_client(Some(&alice)), server.addr)
        .await
        .expect_err("the client accepted a server without a Conclave certificate");
    assert!(err.contains("carries no Conclave certificate"), "{err}");
    assert!(server.verdict().await.is_err());
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients_and_still_checks_certificates() {
    let revoked = RevokedSerials::new();
    let members = trust(&[Role::Member], &revoked);
    let mut server = Server::start(&server_tls(), ClientAuth::OptionalMembers(members.clone()));

    // No certificate at all: admitted, and the application sees that nobody is named.
    let anonymous = assert_accepted(&mut server, member_client(None)).await;
    assert!(matches!(
        peer_cert(&anonymous, &members),
        Err(QuicError::NoPeerCertificate)
    ));

    // A valid member certificate: admitted and named.
    let alice = member_tls(&keys().alice, "alice", 1);
    let conn = assert_accepted(&mut server, member_client(Some(&alice))).await;
    assert_eq!(peer_cert(&conn, &members).expect("alice").name(), "alice");

    // A presented certificate gets every check a mandatory one gets.
    let mut cert = issue(&keys().root, &keys().bob, "bob", Role::Member, 2);
    cert.signature[10] ^= 0x01;
    let forged = TlsIdentity::new(&keys().bob, Some(&cert)).expect("tls identity");
    assert_refused(
        &mut server,
        member_client(Some(&forged)),
        "not signed by this root key",
    )
    .await;
    let proxy_cert = issue(&keys().root, &keys().proxy, "proxy", Role::Proxy, 3);
    let proxy = TlsIdentity::new(&keys().proxy, Some(&proxy_cert)).expect("tls identity");
    assert_refused(
        &mut server,
        member_client(Some(&proxy)),
        "not accepted here",
    )
    .await;
    revoked.insert(1);
    assert_refused(&mut server, member_client(Some(&alice)), "Revoked").await;
}
