//! The key manager over real QUIC on 127.0.0.1, port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::{Keymanager, KeymanagerError, KeymanagerOptions, ADMIN_TOKEN_FILE};
use conclave_shared::cert::Role;
use conclave_shared::config::EnrolmentMode;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::quic::{self, ServerTrust};
use conclave_shared::wire::km::{
    self, register_proof_input, FromKeymanager, KmErrorCode, ToKeymanager,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

fn keys() -> &'static [Identity] {
    static KEYS: OnceLock<Vec<Identity>> = OnceLock::new();
    KEYS.get_or_init(|| (0..4).map(|_| Identity::generate(2048).unwrap()).collect())
}

/// A key manager serving in this process; stopped (and awaited) on drop of the token.
struct Server {
    addr: SocketAddr,
    root: PublicKey,
    dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), KeymanagerError>>>,
}

impl Server {
    async fn start(dir: &Path, mode: EnrolmentMode) -> Self {
        let opts = KeymanagerOptions {
            data_dir: dir.to_owned(),
            mode,
            root_public_key: dir.join("root.pub.pem"),
            key_bits: 2048,
        };
        let km = Keymanager::open(&opts).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let root = PublicKey::load_pem(&dir.join("root.pub.pem")).unwrap();
        assert_eq!(root.fingerprint(), km.root_fingerprint());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(km.run(endpoint, shutdown.clone()));
        Server {
            addr,
            root,
            dir: dir.to_owned(),
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    async fn client(&self) -> KeymanagerClient {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        KeymanagerClient::connect(&ep, self.addr, &self.root)
            .await
            .unwrap()
    }

    fn admin_token(&self) -> String {
        conclave_keymanager::read_admin_token(&self.dir.join(ADMIN_TOKEN_FILE)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn refused(r: Result<impl std::fmt::Debug, KeymanagerError>) -> KmErrorCode {
    match r {
        Err(KeymanagerError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn register_lookup_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = s.client().await;
    let a = c
        .register(&keys()[0], "alice", Role::Member, None)
        .await
        .unwrap();
    let b = c
        .register(&keys()[1], "bob", Role::Member, None)
        .await
        .unwrap();
    assert_eq!(a.fingerprint(), keys()[0].fingerprint());
    assert_ne!(a.serial(), b.serial());

    let found = c.lookup("alice").await.unwrap().unwrap();
    assert_eq!(found.cert.certificate(), a.certificate());
    assert!(!found.revoked);
    assert!(c.lookup("carol").await.unwrap().is_none());

    let mut names: Vec<_> = c
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.cert.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"]);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_registrations_over_one_connection_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = std::sync::Arc::new(s.client().await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let c = c.clone();
        tasks.spawn(async move {
            c.register(&keys()[i], &format!("m{i}"), Role::Member, None)
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(c.list().await.unwrap().len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let fp = s.root.fingerprint();
    let c = s.client().await;
    let a = c
        .register(&keys()[0], "alice", Role::Member, None)
        .await
        .unwrap();
    s.stop().await;

    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    assert_eq!(s.root.fingerprint(), fp, "root key changed across restart");
    let c = s.client().await;
    let again = c
        .register(&keys()[0], "alice", Role::Member, None)
        .await
        .unwrap();
    assert_eq!(
        again.certificate(),
        a.certificate(),
        "same key, same name: same certificate"
    );
    let b = c
        .register(&keys()[1], "bob", Role::Member, None)
        .await
        .unwrap();
    assert!(
        b.serial() > a.serial(),
        "serials must never be reused after a restart"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_taken_name_or_a_second_name_for_one_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = s.client().await;
    c.register(&keys()[0], "alice", Role::Member, None)
        .await
        .unwrap();
    assert_eq!(
        refused(c.register(&keys()[1], "alice", Role::Member, None).await),
        KmErrorCode::NameTaken
    );
    assert_eq!(
        refused(c.register(&keys()[0], "alice2", Role::Member, None).await),
        KmErrorCode::BadRequest
    );
    assert_eq!(
        refused(
            c.register(&keys()[2], "no spaces", Role::Member, None)
                .await
        ),
        KmErrorCode::BadRequest
    );
    s.stop().await;
}

#[tokio::test]
async fn registration_needs_proof_of_possession() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = s.client().await;
    let victim = &keys()[1];
    let spki = victim.public().spki_der().to_vec();
    let register = |nonce: [u8; 32], proof: Vec<u8>| ToKeymanager::Register {
        name: "mallory".into(),
        role: Role::Member,
        public_key: spki.clone(),
        nonce,
        proof,
        invite: None,
    };
    // No challenge asked on this connection.
    let reply = c.request(&register([7; 32], vec![1; 256])).await.unwrap();
    assert!(
        matches!(
            reply,
            FromKeymanager::Error {
                code: KmErrorCode::NoChallenge,
                ..
            }
        ),
        "{reply:?}"
    );
    // A challenge signed by another key than the one being registered.
    let FromKeymanager::Challenge { nonce } = c.request(&ToKeymanager::Challenge).await.unwrap()
    else {
        panic!("no challenge")
    };
    let forged = keys()[0]
        .sign(&register_proof_input(
            "mallory",
            Role::Member,
            &spki,
            &nonce,
        ))
        .unwrap();
    let reply = c.request(&register(nonce, forged)).await.unwrap();
    assert!(
        matches!(
            reply,
            FromKeymanager::Error {
                code: KmErrorCode::BadProof,
                ..
            }
        ),
        "{reply:?}"
    );
    // A proof over a challenge already spent cannot be replayed.
    let genuine = victim
        .sign(&register_proof_input(
            "mallory",
            Role::Member,
            &spki,
            &nonce,
        ))
        .unwrap();
    let reply = c.request(&register(nonce, genuine.clone())).await.unwrap();
    assert!(
        matches!(
            reply,
            FromKeymanager::Error {
                code: KmErrorCode::NoChallenge,
                ..
            }
        ),
        "{reply:?}"
    );
    // Nor on another connection, where that challenge was never issued.
    let c2 = s.client().await;
    let reply = c2.request(&register(nonce, genuine)).await.unwrap();
    assert!(
        matches!(
            reply,
            FromKeymanager::Error {
                code: KmErrorCode::NoChallenge,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(c.lookup("mallory").await.unwrap().is_none());
    s.stop().await;
}

#[tokio::test]
async fn invite_mode_wants_a_valid_unused_token_for_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Invite).await;
    let c = s.client().await;
    let admin = s.admin_token();
    assert_eq!(
        refused(c.register(&keys()[0], "alice", Role::Member, None).await),
        KmErrorCode::InviteRequired
    );
    assert_eq!(
        refused(
            c.register(&keys()[0], "alice", Role::Member, Some("0011".into()))
                .await
        ),
        KmErrorCode::BadInvite
    );
    assert_eq!(
        refused(c.invite("not-the-token", "alice").await),
        KmErrorCode::NotAuthorized
    );
    let token = c.invite(&admin, "alice").await.unwrap();
    let bob_token = c.invite(&admin, "bob").await.unwrap();
    assert_eq!(
        refused(
            c.register(&keys()[0], "alice", Role::Member, Some(bob_token.clone()))
                .await
        ),
        KmErrorCode::BadInvite,
        "a token is for one name only"
    );
    let a = c
        .register(&keys()[0], "alice", Role::Member, Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(a.name(), "alice");
    // The same key retrying (say, after a lost reply) gets its certificate back...
    let again = c
        .register(&keys()[0], "alice", Role::Member, Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(again.certificate(), a.certificate());
    // ...but the token is spent for anyone else.
    assert_eq!(
        refused(
            c.register(&keys()[2], "alice", Role::Member, Some(token))
                .await
        ),
        KmErrorCode::NameTaken
    );
    c.register(&keys()[1], "bob", Role::Member, Some(bob_token.clone()))
        .await
        .unwrap();
    assert_eq!(
        refused(
            c.register(&keys()[2], "bob", Role::Member, Some(bob_token))
                .await
        ),
        KmErrorCode::NameTaken
    );
    s.stop().await;
}

#[tokio::test]
async fn revocation_is_root_signed_listed_and_final() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = s.client().await;
    let admin = s.admin_token();
    let b = c
        .register(&keys()[1], "bob", Role::Member, None)
        .await
        .unwrap();
    assert!(c.revocations().await.unwrap().is_empty());
    assert_eq!(
        refused(c.revoke("wrong", "bob").await),
        KmErrorCode::NotAuthorized
    );
    assert_eq!(
        refused(c.revoke(&admin, "nobody").await),
        KmErrorCode::UnknownName
    );
    let r = c.revoke(&admin, "bob").await.unwrap();
    assert_eq!(r.statement.serial, b.serial());
    r.verify(&s.root).unwrap();
    let listed = c.revocations().await.unwrap();
    assert_eq!(listed, vec![r]);
    assert!(c.lookup("bob").await.unwrap().unwrap().revoked);
    assert_eq!(
        refused(c.revoke(&admin, "bob").await),
        KmErrorCode::AlreadyRevoked
    );
    assert_eq!(
        refused(c.register(&keys()[1], "bob", Role::Member, None).await),
        KmErrorCode::Revoked
    );
    s.stop().await;
}

/// Writes raw bytes on a new stream and returns whatever comes back (bounded).
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 20))
        .await
        .unwrap()
        .unwrap_or_default()
}

fn reply_of(bytes: &[u8]) -> FromKeymanager {
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    conclave_shared::wire::decode_message(&bytes[4..4 + len]).unwrap()
}

#[tokio::test]
async fn hostile_frames_get_an_error_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let c = s.client().await;

    // A 1 GiB length prefix: refused from the prefix alone, nothing allocated or read.
    let mut forged = (1u32 << 30).to_be_bytes().to_vec();
    forged.extend_from_slice(&[0u8; 64]);
    let reply = raw_exchange(c.connection(), &forged).await;
    assert!(
        matches!(reply_of(&reply), FromKeymanager::Error { code: KmErrorCode::BadRequest, ref message } if message.contains("exceeds")),
        "{:?}",
        reply_of(&reply)
    );
    // Garbage inside a well-sized frame.
    let mut garbage = 32u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    let reply = raw_exchange(c.connection(), &garbage).await;
    assert!(matches!(
        reply_of(&reply),
        FromKeymanager::Error {
            code: KmErrorCode::BadRequest,
            ..
        }
    ));
    // A frame cut short.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[1, 2, 3]);
    let reply = raw_exchange(c.connection(), &short).await;
    assert!(matches!(
        reply_of(&reply),
        FromKeymanager::Error {
            code: KmErrorCode::BadRequest,
            ..
        }
    ));

    // The same connection and a new one are served right after.
    c.register(&keys()[0], "alice", Role::Member, None)
        .await
        .unwrap();
    let c2 = s.client().await;
    assert!(c2.lookup("alice").await.unwrap().is_some());
    s.stop().await;
}

#[tokio::test]
async fn a_client_with_another_alpn_or_pinning_another_root_gets_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

    let cfg = quic::client_config(
        None,
        ServerTrust::PinnedRoot(s.root.clone()),
        &[b"conclave/raft/1"],
    )
    .unwrap();
    let conn = tokio::time::timeout(
        DEADLINE,
        ep.connect_with(cfg, s.addr, quic::SERVER_NAME).unwrap(),
    )
    .await
    .unwrap();
    assert!(conn.is_err(), "a handshake with the wrong ALPN must fail");

    let other_root = keys()[3].public().clone();
    let err = KeymanagerClient::connect(&ep, s.addr, &other_root).await;
    assert!(
        matches!(err, Err(KeymanagerError::Unreachable { .. })),
        "{:?}",
        err.err()
    );

    // A raw, well-formed request by a legitimate client still works afterwards.
    let c = s.client().await;
    let cfg_ok = c.request(&ToKeymanager::List).await.unwrap();
    assert!(matches!(cfg_ok, FromKeymanager::Members { .. }));
    let _ = km::ALPN;
    s.stop().await;
}

#[tokio::test]
async fn the_admin_token_and_root_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), EnrolmentMode::Open).await;
    for f in [ADMIN_TOKEN_FILE, conclave_keymanager::ROOT_KEY_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    s.stop().await;
}
