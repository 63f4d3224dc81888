//! Raw QUIC for hostile-input tests: connect to any listener of a [`Cluster`] with any
//! identity and ALPN, write arbitrary bytes on a stream, hold many idle connections.

use std::net::SocketAddr;
use std::time::Duration;

use conclave_shared::cert::{CertBody, Certificate, Role, VerifiedCert};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::quic::{self, MemberTrust, RevokedSerials, ServerTrust, TlsIdentity};
use tokio::task::JoinSet;

use super::cluster::Cluster;

/// How long one raw connect or exchange may take.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// The group's root public key.
pub fn root(c: &Cluster) -> PublicKey {
    PublicKey::load_pem(&c.root_key()).expect("root key")
}

/// Peer `name`'s own key and key-manager certificate, read from its data directory.
pub fn member_tls(c: &Cluster, name: &str) -> (Identity, Certificate, TlsIdentity) {
    let id = c.identity_of(name);
    let cert = Certificate::from_canonical(
        &std::fs::read(c.path().join("peers").join(name).join("certificate.bin"))
            .expect("certificate.bin"),
    )
    .expect("a certificate");
    let tls = TlsIdentity::new(&id, Some(&cert)).expect("TLS identity");
    (id, cert, tls)
}

/// A fresh key with a member certificate from a root that is not the group's: another key
/// manager's member.
pub fn foreign_member(name: &str) -> TlsIdentity {
    let other_root = Identity::generate(2048).expect("keygen");
    let key = Identity::generate(2048).expect("keygen");
    let cert = Certificate::issue(
        &other_root,
        CertBody {
            name: name.into(),
            role: Role::Member,
            spki_der: key.public().spki_der().to_vec(),
            serial: 1,
            issued_at_ms: 0,
        },
    )
    .expect("issue");
    TlsIdentity::new(&key, Some(&cert)).expect("TLS identity")
}

/// Registers a fresh key as member `name` at the cluster's key manager (open enrolment): a
/// genuine certificate for someone the group never admitted.
pub async fn register_outsider(c: &Cluster, name: &str) -> (Identity, VerifiedCert, TlsIdentity) {
    let key = Identity::generate(2048).expect("keygen");
    let ep = client_endpoint();
    let km = conclave_keymanager::client::KeymanagerClient::connect(&ep, c.km_addr, &root(c))
        .await
        .expect("key manager");
    let cert = km
        .register(&key, name, Role::Member, None)
        .await
        .expect("register");
    let tls = TlsIdentity::new(&key, Some(cert.certificate())).expect("TLS identity");
    (key, cert, tls)
}

pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint")
}

/// A client of the key manager (pinned by the root key, no certificate) offering `alpn`.
pub fn km_client(c: &Cluster, alpn: &[u8]) -> quinn::ClientConfig {
    quic::client_config(None, ServerTrust::PinnedRoot(root(c)), &[alpn]).expect("client config")
}

/// A client presenting `tls` (or nothing) to a server holding a certificate of one of
/// `roles` from the group's root, offering `alpn`.
pub fn client(
    c: &Cluster,
    tls: Option<&TlsIdentity>,
    roles: &[Role],
    alpn: &[u8],
) -> quinn::ClientConfig {
    let trust = MemberTrust::new(root(c), roles, RevokedSerials::new());
    quic::client_config(tls, ServerTrust::Members(trust), &[alpn]).expect("client config")
}

/// Connects and completes the handshake (from the client's side: a server that rejects the
/// client's certificate says so only afterwards, see [`refused_after_handshake`]).
pub async fn connect(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = ep
        .connect_with(cfg, addr, quic::SERVER_NAME)
        .expect("connect call");
    tokio::time::timeout(RAW_TIMEOUT, connecting)
        .await
        .unwrap_or(Err(quinn::ConnectionError::TimedOut))
}

/// Whether the server ends a connection (or refuses it) without serving anything on it
/// within [`RAW_TIMEOUT`]; returns why.
pub async fn refused_after_handshake(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
) -> Option<quinn::ConnectionError> {
    let conn = match connect(ep, cfg, addr).await {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    tokio::time::timeout(RAW_TIMEOUT, conn.closed()).await.ok()
}

/// A frame: the big-endian `u32` length of `body`, then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A frame header claiming `len` bytes, followed by only `body`.
pub fn claimed(len: u32, body: &[u8]) -> Vec<u8> {
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The bincode of a varint length of 2^40: inside a frame, a `Vec` or `String` claiming a
/// terabyte.
pub fn forged_len_2_pow_40() -> Vec<u8> {
    let mut v = vec![253u8];
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    v
}

/// What came back on one raw stream.
#[derive(Debug)]
pub struct Exchange {
    /// Everything the server wrote before finishing its side (empty: no reply at all).
    pub reply: Vec<u8>,
    /// Why reading failed, if it did (a reset stream, a closed connection).
    pub read_error: Option<String>,
}

impl Exchange {
    /// The body of the one reply frame, to decode with `wire::decode_message`.
    pub fn body(&self) -> Option<&[u8]> {
        let len = u32::from_be_bytes(self.reply.get(..4)?.try_into().ok()?) as usize;
        self.reply.get(4..4 + len)
    }
}

/// Opens a stream, writes `bytes` (however much the server takes), finishes, and reads the
/// reply to its end.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Exchange {
    let work = async {
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                return Exchange {
                    reply: Vec::new(),
                    read_error: Some(e.to_string()),
                }
            }
        };
        // The server may stop the stream after the length prefix: the rest is not wanted.
        let writing = async {
            let _ = send.write_all(bytes).await;
            let _ = send.finish();
        };
        let reading = recv.read_to_end(1 << 20);
        let ((), read) = tokio::join!(writing, reading);
        match read {
            Ok(reply) => Exchange {
                reply,
                read_error: None,
            },
            Err(e) => Exchange {
                reply: Vec::new(),
                read_error: Some(e.to_string()),
            },
        }
    };
    tokio::time::timeout(RAW_TIMEOUT, work)
        .await
        .unwrap_or(Exchange {
            reply: Vec::new(),
            read_error: Some("timed out".into()),
        })
}

/// What opening many connections at once came to.
pub struct Flood {
    /// Connections the handshake completed for, still open when the flood ended.
    pub held: Vec<quinn::Connection>,
    /// Connections the server refused outright (its connection limit).
    pub refused: usize,
    /// Every other failure, by message.
    pub failed: Vec<String>,
}

impl Flood {
    /// How many of the held connections are still open now.
    pub fn open_now(&self) -> usize {
        self.held
            .iter()
            .filter(|c| c.close_reason().is_none())
            .count()
    }

    /// The close reasons of held connections the server has closed since.
    pub fn closed_reasons(&self) -> Vec<quinn::ConnectionError> {
        self.held.iter().filter_map(|c| c.close_reason()).collect()
    }
}

/// How long each connection of a flood may take to complete its handshake; those that do
/// not are given up (the server gives up their half-open places too).
pub const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `n` connections to `addr` at once and keeps those that complete the handshake
/// within [`FLOOD_CONNECT_TIMEOUT`], idle: they open no stream.
pub async fn flood(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    n: usize,
) -> Flood {
    let started = std::time::Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..n {
        let ep = ep.clone();
        let cfg = cfg.clone();
        set.spawn(async move {
            let connecting = ep
                .connect_with(cfg, addr, quic::SERVER_NAME)
                .expect("connect call");
            tokio::time::timeout(FLOOD_CONNECT_TIMEOUT, connecting)
                .await
                .unwrap_or(Err(quinn::ConnectionError::TimedOut))
        });
    }
    let mut out = Flood {
        held: Vec::new(),
        refused: 0,
        failed: Vec::new(),
    };
    while let Some(r) = set.join_next().await {
        match r.expect("connect task") {
            Ok(c) => out.held.push(c),
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                out.refused += 1
            }
            Err(e) => out.failed.push(e.to_string()),
        }
    }
    eprintln!("flood of {n} took {:?}", started.elapsed());
    out
}
