//! The proxy over real QUIC on 127.0.0.1, port 0, with a real key manager in this process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::{Keymanager, KeymanagerError, KeymanagerOptions};
use conclave_proxy::client::ProxyClient;
use conclave_proxy::{Proxy, ProxyError, ProxyOptions, CERT_FILE};
use conclave_shared::cert::{Role, VerifiedCert};
use conclave_shared::config::EnrolmentMode;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::quic::{self, ClientAuth, MemberTrust, RevokedSerials, TlsIdentity};
use conclave_shared::wire::peer::{self, FromPeer, PeerStatus, ToPeer, WireRole};
use conclave_shared::wire::proxy::{
    Announcement, FromProxy, LeaderInfo, MemberInfo, Rejection, SignedAnnouncement, ToProxy,
};
use conclave_shared::wire::{read_frame, write_frame};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests ends within this.
const DEADLINE: Duration = Duration::from_secs(20);
/// A lease short enough to watch it lapse.
const SHORT_LEASE_MS: u64 = 300;
/// An address nobody answers at (the port of a bound but idle endpoint is better; see
/// `idle_addr`), for members that must look unreachable.
const NOWHERE: &str = "127.0.0.1:9";

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

/// Key generation is the slow part; the members' keys are made once for all tests.
fn keys() -> &'static [Identity] {
    static KEYS: OnceLock<Vec<Identity>> = OnceLock::new();
    KEYS.get_or_init(|| (0..4).map(|_| Identity::generate(2048).unwrap()).collect())
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A key manager, opened (so its root key exists) but serving only once `serve` is called.
struct Km {
    addr: SocketAddr,
    root: PublicKey,
    km: Option<Keymanager>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), KeymanagerError>>>,
}

impl Km {
    fn open(dir: &Path) -> Self {
        let opts = KeymanagerOptions {
            data_dir: dir.to_owned(),
            mode: EnrolmentMode::Open,
            root_public_key: dir.join("root.pub.pem"),
            key_bits: 2048,
        };
        let km = Keymanager::open(&opts).unwrap();
        let endpoint = client_endpoint();
        Km {
            addr: endpoint.local_addr().unwrap(),
            root: PublicKey::load_pem(&dir.join("root.pub.pem")).unwrap(),
            km: Some(km),
            endpoint,
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    fn serve(&mut self) {
        let km = self.km.take().expect("serving twice");
        self.task = Some(tokio::spawn(
            km.run(self.endpoint.clone(), self.shutdown.clone()),
        ));
    }

    async fn start(dir: &Path) -> Self {
        let mut km = Self::open(dir);
        km.serve();
        km
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            within("key manager shutdown", t).await.unwrap().unwrap();
        }
    }

    fn trust(&self) -> MemberTrust {
        MemberTrust::new(self.root.clone(), &[Role::Member], RevokedSerials::new())
    }

    async fn register(&self, key: &Identity, name: &str, role: Role) -> VerifiedCert {
        let ep = client_endpoint();
        let c = within(
            "connect",
            KeymanagerClient::connect(&ep, self.addr, &self.root),
        )
        .await
        .unwrap();
        let cert = within("register", c.register(key, name, role, None))
            .await
            .unwrap();
        c.close();
        cert
    }

    async fn member(&self, key: &'static Identity, name: &str) -> Member {
        let cert = self.register(key, name, Role::Member).await;
        Member {
            name: name.to_owned(),
            key,
            tls: TlsIdentity::new(key, Some(cert.certificate())).unwrap(),
            node_id: cert.fingerprint().node_id(),
        }
    }
}

impl Drop for Km {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A registered member, able to talk to the proxy.
struct Member {
    name: String,
    key: &'static Identity,
    tls: TlsIdentity,
    node_id: u64,
}

impl Member {
    async fn client(&self, proxy: &ProxyServer, trust: MemberTrust) -> ProxyClient {
        within(
            "connect to the proxy",
            ProxyClient::connect(&client_endpoint(), proxy.addr, Some(&self.tls), trust),
        )
        .await
        .unwrap()
    }

    fn info(&self, addr: &str) -> MemberInfo {
        MemberInfo {
            name: self.name.clone(),
            node_id: self.node_id,
            addr: addr.to_owned(),
            role: "voter".into(),
        }
    }

    fn announcement(&self, group_id: [u8; 16], term: u64, members: &[&Member]) -> Announcement {
        Announcement {
            group_id,
            name: self.name.clone(),
            node_id: self.node_id,
            addr: NOWHERE.into(),
            term,
            members: members.iter().map(|m| m.info(NOWHERE)).collect(),
            time_ms: conclave_shared::now_ms(),
        }
    }

    fn signed(&self, group_id: [u8; 16], term: u64, members: &[&Member]) -> SignedAnnouncement {
        SignedAnnouncement::sign(self.key, &self.announcement(group_id, term, members)).unwrap()
    }
}

/// A running proxy.
struct ProxyServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ProxyError>>>,
}

impl ProxyServer {
    async fn start(dir: &Path, km: &Km, lease_ms: u64) -> Self {
        let mut opts = ProxyOptions::new(dir);
        opts.lease_ms = lease_ms;
        let mut proxy = Proxy::open(opts).unwrap();
        let endpoint = client_endpoint();
        within(
            "proxy registration",
            proxy.register(&endpoint, km.addr, km.root.clone(), DEADLINE),
        )
        .await
        .unwrap();
        Self::run(proxy, endpoint)
    }

    fn run(proxy: Proxy, endpoint: quinn::Endpoint) -> Self {
        let shutdown = CancellationToken::new();
        ProxyServer {
            addr: endpoint.local_addr().unwrap(),
            task: Some(tokio::spawn(proxy.run(endpoint, shutdown.clone()))),
            shutdown,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            within("proxy shutdown", t).await.unwrap().unwrap();
        }
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn anonymous(proxy: &ProxyServer, trust: MemberTrust) -> ProxyClient {
    within(
        "anonymous connect",
        ProxyClient::connect(&client_endpoint(), proxy.addr, None, trust),
    )
    .await
    .unwrap()
}

async fn ask(c: &ProxyClient) -> FromProxy {
    within("WhereIsLeader", c.where_is_leader()).await.unwrap()
}

async fn announce(c: &ProxyClient, a: &SignedAnnouncement) -> FromProxy {
    within("Announce", c.announce(a)).await.unwrap()
}

fn rejection(outcome: FromProxy) -> (Rejection, Option<LeaderInfo>) {
    match outcome {
        FromProxy::Rejected { reason, leader, .. } => (reason, leader),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn leader(answer: FromProxy) -> LeaderInfo {
    match answer {
        FromProxy::Leader(info) => info,
        other => panic!("expected a leader, got {other:?}"),
    }
}

/// A bound endpoint that never serves: connections to it time out, as to a dead peer.
fn idle_addr() -> (quinn::Endpoint, String) {
    let ep = client_endpoint();
    let addr = ep.local_addr().unwrap().to_string();
    (ep, addr)
}

/// Founds a group through `proxy` with `founder` at `term`, listing `members`.
async fn found(
    proxy: &ProxyServer,
    trust: &MemberTrust,
    founder: &Member,
    term: u64,
    members: &[&Member],
) -> [u8; 16] {
    let c = founder.client(proxy, trust.clone()).await;
    let FromProxy::Bootstrap { group_id, .. } = ask(&c).await else {
        panic!("the first asker got no bootstrap")
    };
    let outcome = announce(&c, &founder.signed(group_id, term, members)).await;
    assert_eq!(outcome, FromProxy::Accepted);
    group_id
}

#[tokio::test]
async fn a_proxy_started_before_the_key_manager_registers_once_it_answers() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    // The key manager's root key and address exist, but it does not serve yet.
    let mut km = Km::open(km_dir.path());
    let mut proxy = Proxy::open(ProxyOptions::new(proxy_dir.path())).unwrap();
    let endpoint = client_endpoint();
    let (km_addr, root) = (km.addr, km.root.clone());
    let reg_endpoint = endpoint.clone();
    let registering = tokio::spawn(async move {
        proxy
            .register(&reg_endpoint, km_addr, root, DEADLINE)
            .await
            .map(|_| ())?;
        Ok::<_, ProxyError>(proxy)
    });
    // Not a wait for a condition: the point is that the proxy is up and retrying first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!registering.is_finished(), "registered with no key manager");
    km.serve();
    let proxy = within("registration", registering).await.unwrap().unwrap();
    let cert = proxy.certificate().expect("a certificate");
    assert_eq!((cert.name(), cert.role()), ("proxy", Role::Proxy));
    assert_eq!(cert.fingerprint(), proxy.fingerprint());
    assert!(
        proxy_dir.path().join(CERT_FILE).exists(),
        "certificate cached"
    );

    // It serves, presenting that certificate.
    let server = ProxyServer::run(proxy, endpoint);
    let status = within("status", anonymous(&server, km.trust()).await.status())
        .await
        .unwrap();
    assert_eq!(status.group_id, None);
    assert!(status.members.is_empty());
    server.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn without_a_key_manager_or_a_cached_certificate_registration_fails_at_the_deadline() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::open(km_dir.path()); // never serves
    let mut proxy = Proxy::open(ProxyOptions::new(proxy_dir.path())).unwrap();
    let started = std::time::Instant::now();
    let err = within(
        "failing registration",
        proxy.register(
            &client_endpoint(),
            km.addr,
            km.root.clone(),
            Duration::from_millis(800),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ProxyError::KeymanagerUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline was not kept"
    );
    // And it cannot serve without a certificate.
    let err = proxy
        .run(client_endpoint(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::NotRegistered), "{err:?}");
}

#[tokio::test]
async fn one_asker_bootstraps_the_other_waits_then_both_are_sent_to_the_leader() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let ca = alice.client(&proxy, km.trust()).await;
    let cb = bob.client(&proxy, km.trust()).await;

    // Asked at the same instant: exactly one gets the lease.
    let (a, b) = tokio::join!(ask(&ca), ask(&cb));
    let (holder, holder_client, group_id, other_client) = match (&a, &b) {
        (FromProxy::Bootstrap { group_id, .. }, FromProxy::Wait { .. }) => {
            (&alice, &ca, *group_id, &cb)
        }
        (FromProxy::Wait { .. }, FromProxy::Bootstrap { group_id, .. }) => {
            (&bob, &cb, *group_id, &ca)
        }
        other => panic!("expected one Bootstrap and one Wait, got {other:?}"),
    };
    // The holder asking again gets the same group; the other still waits.
    assert!(matches!(
        ask(holder_client).await,
        FromProxy::Bootstrap { group_id: g, lease_ms } if g == group_id && lease_ms <= conclave_proxy::LEASE_MS
    ));
    assert!(matches!(ask(other_client).await, FromProxy::Wait { .. }));

    let outcome = announce(holder_client, &holder.signed(group_id, 1, &[holder])).await;
    assert_eq!(outcome, FromProxy::Accepted);
    for c in [&ca, &cb] {
        let info = leader(ask(c).await);
        assert_eq!(
            (info.name.as_str(), info.node_id, info.term, info.group_id),
            (holder.name.as_str(), holder.node_id, 1, group_id)
        );
        assert_eq!(info.addr, NOWHERE);
    }
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn a_lapsed_lease_passes_to_the_next_asker() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let proxy = ProxyServer::start(proxy_dir.path(), &km, SHORT_LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let ca = alice.client(&proxy, km.trust()).await;
    let cb = bob.client(&proxy, km.trust()).await;

    let FromProxy::Bootstrap { group_id: g1, .. } = ask(&ca).await else {
        panic!("alice got no bootstrap")
    };
    assert!(matches!(ask(&cb).await, FromProxy::Wait { .. }));
    // Alice never announces; once her lease lapses bob gets one, for a new group id.
    let g2 = within("the lease to lapse", async {
        loop {
            match ask(&cb).await {
                FromProxy::Bootstrap { group_id, .. } => break group_id,
                FromProxy::Wait { retry_ms } => {
                    tokio::time::sleep(Duration::from_millis(retry_ms)).await
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_ne!(g1, g2);
    assert!(matches!(ask(&ca).await, FromProxy::Wait { .. }));

    // Alice founding late is told her group is not the one.
    let (reason, leader_now) = rejection(announce(&ca, &alice.signed(g1, 1, &[&alice])).await);
    assert_eq!((reason, leader_now), (Rejection::OtherGroup, None));
    assert_eq!(
        announce(&cb, &bob.signed(g2, 1, &[&bob])).await,
        FromProxy::Accepted
    );
    assert_eq!(leader(ask(&ca).await).name, "bob");
    // Alice's group is still refused, now with a pointer to the real one.
    let (reason, leader_now) = rejection(announce(&ca, &alice.signed(g1, 2, &[&alice])).await);
    assert_eq!(reason, Rejection::OtherGroup);
    assert_eq!(leader_now.map(|l| l.name), Some("bob".to_owned()));
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn a_restarted_proxy_keeps_its_group_and_never_offers_a_bootstrap_again() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, SHORT_LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let group_id = found(&proxy, &trust, &alice, 3, &[&alice, &bob]).await;
    proxy.stop().await;
    // The key manager is down for the restart: the cached certificate serves.
    let km_addr = km.addr;
    let root = km.root.clone();
    km.stop().await;

    let mut reopened = Proxy::open({
        let mut o = ProxyOptions::new(proxy_dir.path());
        o.lease_ms = SHORT_LEASE_MS;
        o
    })
    .unwrap();
    assert!(reopened.established());
    within(
        "registration from the cache",
        reopened.register(
            &client_endpoint(),
            km_addr,
            root,
            Duration::from_millis(500),
        ),
    )
    .await
    .unwrap();
    let proxy = ProxyServer::run(reopened, client_endpoint());

    // Nobody, old member or new, asking now or after a lease would have lapsed, bootstraps.
    for m in [&carol, &bob, &alice] {
        let c = m.client(&proxy, trust.clone()).await;
        let info = leader(ask(&c).await);
        assert_eq!(
            (info.name.as_str(), info.term, info.group_id),
            ("alice", 3, group_id)
        );
    }
    tokio::time::sleep(Duration::from_millis(2 * SHORT_LEASE_MS)).await;
    let cc = carol.client(&proxy, trust.clone()).await;
    assert_eq!(leader(ask(&cc).await).name, "alice");
    // The member list survived too.
    let (reason, _) = rejection(announce(&cc, &carol.signed(group_id, 9, &[&carol])).await);
    assert_eq!(reason, Rejection::NotAMember);
    let ca = alice.client(&proxy, trust.clone()).await;
    assert_eq!(
        announce(&ca, &alice.signed(group_id, 3, &[&alice, &bob])).await,
        FromProxy::Accepted
    );
    proxy.stop().await;
}

#[tokio::test]
async fn forged_announcements_do_not_move_the_proxy_nor_does_one_members_word() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let g = found(&proxy, &trust, &alice, 5, &[&alice, &bob]).await;
    let cb = bob.client(&proxy, trust.clone()).await;
    let cc = carol.client(&proxy, trust.clone()).await;

    let still_alice = |outcome: FromProxy, expected: Rejection| {
        let (reason, leader_now) = rejection(outcome);
        assert_eq!(reason, expected);
        let l = leader_now.expect("the rejection names the real leader");
        assert_eq!((l.name.as_str(), l.term), ("alice", 5));
    };

    // Signed by another key than the one bob's TLS certificate carries.
    let by_carol = SignedAnnouncement::sign(carol.key, &bob.announcement(g, 6, &[&bob])).unwrap();
    still_alice(announce(&cb, &by_carol).await, Rejection::BadSignature);
    // Alice's own genuine announcement, replayed over bob's connection.
    still_alice(
        announce(&cb, &alice.signed(g, 6, &[&alice])).await,
        Rejection::BadSignature,
    );
    // Bob's key, but naming alice.
    let mut posing = alice.announcement(g, 6, &[&alice]);
    posing.addr = "127.0.0.1:666".into();
    let posing = SignedAnnouncement::sign(bob.key, &posing).unwrap();
    still_alice(announce(&cb, &posing).await, Rejection::BadSignature);
    // A tampered byte.
    let mut tampered = bob.signed(g, 6, &[&bob]);
    let last = tampered.bytes.len() - 1;
    tampered.bytes[last] ^= 1;
    still_alice(announce(&cb, &tampered).await, Rejection::BadSignature);
    // Another group.
    still_alice(
        announce(&cb, &bob.signed([0xee; 16], 6, &[&bob])).await,
        Rejection::OtherGroup,
    );
    // An older term, and the same term by another member.
    still_alice(
        announce(&cb, &bob.signed(g, 4, &[&bob])).await,
        Rejection::StaleTerm,
    );
    still_alice(
        announce(&cb, &bob.signed(g, 5, &[&bob])).await,
        Rejection::StaleTerm,
    );
    // A certified member the group does not list.
    still_alice(
        announce(&cc, &carol.signed(g, 9, &[&carol])).await,
        Rejection::NotAMember,
    );
    // No client certificate: neither announcing nor asking gets anywhere.
    let anon = anonymous(&proxy, trust.clone()).await;
    let err = within(
        "anonymous announce",
        anon.announce(&bob.signed(g, 9, &[&bob])),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ProxyError::Refused { message } if message.contains("member certificate")),
        "{err:?}"
    );
    let err = within("anonymous ask", anon.where_is_leader())
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Refused { .. }), "{err:?}");
    // A proxy certificate is no member certificate: refused in the handshake.
    let other_proxy_key = &keys()[3];
    let proxy_cert = km.register(other_proxy_key, "proxy2", Role::Proxy).await;
    let proxy_tls = TlsIdentity::new(other_proxy_key, Some(proxy_cert.certificate())).unwrap();
    let as_proxy = within(
        "connect with a proxy certificate",
        ProxyClient::connect(
            &client_endpoint(),
            proxy.addr,
            Some(&proxy_tls),
            trust.clone(),
        ),
    )
    .await;
    if let Ok(c) = as_proxy {
        let err = within("ask with a proxy certificate", c.where_is_leader())
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable { .. }), "{err:?}");
    }

    for c in [&cb, &cc] {
        let l = leader(ask(c).await);
        assert_eq!(
            (l.name.as_str(), l.term),
            ("alice", 5),
            "a forgery moved the proxy"
        );
    }

    // A known member's genuine announcement at a higher term: alice, the other voter, does
    // not answer to confirm it, so it moves nothing either (majority confirmation is tested
    // below with members that answer).
    still_alice(
        announce(&cb, &bob.signed(g, 6, &[&bob, &carol])).await,
        Rejection::NotConfirmed,
    );
    let l = leader(ask(&cc).await);
    assert_eq!((l.name.as_str(), l.term), ("alice", 5));
    proxy.stop().await;
    km.stop().await;
}

/// A member's `conclave/peer/1` server that answers `Status` (as the test scripts it) and
/// nothing else, admitting the proxy's certificate only, and counting the questions.
struct FakePeer {
    endpoint: quinn::Endpoint,
    addr: String,
    status: Arc<Mutex<PeerStatus>>,
    asked: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakePeer {
    /// Starts answering as `member`, following itself at term 1, with head `head`.
    fn start(member: &Member, root: &PublicKey, head: (u64, String)) -> Self {
        let trust = MemberTrust::new(
            root.clone(),
            &[Role::Member, Role::Proxy],
            RevokedSerials::new(),
        );
        let cfg = quic::server_config(
            &member.tls,
            ClientAuth::Members(trust.clone()),
            &[peer::ALPN],
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let status = Arc::new(Mutex::new(PeerStatus {
            name: member.name.clone(),
            node_id: member.node_id,
            role: Some(WireRole::Voter),
            leader: Some(member.name.clone()),
            term: 1,
            head_height: Some(head.0),
            head_hash: Some(head.1),
            head_mismatches: Vec::new(),
        }));
        let asked = Arc::new(AtomicUsize::new(0));
        let accepting = endpoint.clone();
        let (answer, count) = (status.clone(), asked.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Some(incoming) = accepting.accept().await {
                let (trust, answer, count) = (trust.clone(), answer.clone(), count.clone());
                conns.spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let who = quic::peer_cert(&conn, &trust).expect("a verified client");
                    assert_eq!(who.role(), Role::Proxy, "only the proxy asks here");
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let req = read_frame::<_, ToPeer>(&mut recv, peer::MAX_REQUEST_BYTES).await;
                        assert!(matches!(req, Ok(Some(ToPeer::Status))), "{req:?}");
                        count.fetch_add(1, Ordering::SeqCst);
                        let reply = FromPeer::Status(answer.lock().unwrap().clone());
                        let _ = write_frame(&mut send, &reply, peer::MAX_RESPONSE_BYTES).await;
                        let _ = send.finish();
                    }
                });
            }
        });
        FakePeer {
            addr: endpoint.local_addr().unwrap().to_string(),
            endpoint,
            status,
            asked,
            task,
        }
    }

    /// From now on reports following `leader` at `term`.
    fn follows(&self, leader: &Member, term: u64) {
        let mut s = self.status.lock().unwrap();
        s.leader = Some(leader.name.clone());
        s.term = term;
    }

    /// How many `Status` requests it has answered.
    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.endpoint.close(0u32.into(), b"test over");
        self.task.abort();
    }
}

/// `announcer`'s announcement at `term`, leading from `addr`, listing `members` at the
/// addresses given (all voters).
fn signed_at(
    announcer: &Member,
    group_id: [u8; 16],
    term: u64,
    members: &[(&Member, &str)],
) -> SignedAnnouncement {
    let mut a = announcer.announcement(group_id, term, &[]);
    a.members = members.iter().map(|(m, addr)| m.info(addr)).collect();
    if let Some((_, addr)) = members.iter().find(|(m, _)| m.name == announcer.name) {
        a.addr = (*addr).to_owned();
    }
    SignedAnnouncement::sign(announcer.key, &a).unwrap()
}

/// The leader joiners are sent to now, as (name, term).
async fn current_leader(c: &ProxyClient) -> (String, u64) {
    let l = leader(ask(c).await);
    (l.name, l.term)
}

fn head() -> (u64, String) {
    (1, "cd".repeat(32))
}

#[tokio::test]
async fn one_members_word_at_a_higher_term_does_not_move_the_proxy() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let pa = FakePeer::start(&alice, &km.root, head());
    let pb = FakePeer::start(&bob, &km.root, head());
    // Carol is listed at an address nobody answers: asking her takes the whole probe timeout.
    let (_idle, carol_addr) = idle_addr();
    let members = [
        (&alice, pa.addr.as_str()),
        (&bob, pb.addr.as_str()),
        (&carol, carol_addr.as_str()),
    ];

    let ca = alice.client(&proxy, trust.clone()).await;
    let FromProxy::Bootstrap { group_id: g, .. } = ask(&ca).await else {
        panic!("no bootstrap")
    };
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members)).await,
        FromProxy::Accepted
    );
    pa.follows(&alice, 5);
    pb.follows(&bob, 6);

    // Bob claims term 6. Alice still follows herself at term 5 and carol does not answer:
    // bob's own vote is one of three, so the proxy stays with alice.
    let cb = bob.client(&proxy, trust.clone()).await;
    let claim = signed_at(&bob, g, 6, &members);
    let started = Instant::now();
    let announcing = {
        let (cb, claim) = (bob.client(&proxy, trust.clone()).await, claim.clone());
        tokio::spawn(async move { announce(&cb, &claim).await })
    };
    // While the proxy asks, joiners are still sent to alice, at once.
    let cc = carol.client(&proxy, trust.clone()).await;
    within("alice asked", async {
        while pa.asked() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(current_leader(&cc).await, ("alice".to_owned(), 5));
    assert!(
        !announcing.is_finished(),
        "the round waits for carol's probe to time out"
    );
    // A second announcement while the round is under way is refused at once.
    let (reason, l) = rejection(announce(&cb, &claim).await);
    assert_eq!(reason, Rejection::NotConfirmed);
    assert_eq!(l.map(|l| (l.name, l.term)), Some(("alice".to_owned(), 5)));

    let outcome = within("the confirmation round", announcing).await.unwrap();
    let FromProxy::Rejected {
        reason,
        message,
        leader: l,
    } = outcome
    else {
        panic!("bob's word moved the proxy: {outcome:?}")
    };
    assert_eq!(reason, Rejection::NotConfirmed);
    assert!(
        message.contains("alice follows alice at term 5"),
        "{message}"
    );
    assert!(message.contains("carol did not answer"), "{message}");
    assert_eq!(l.map(|l| (l.name, l.term)), Some(("alice".to_owned(), 5)));
    assert!(
        started.elapsed() >= Duration::from_millis(conclave_proxy::CONFIRM_PROBE_TIMEOUT_MS),
        "the round ended before carol's probe could time out"
    );
    assert_eq!(
        pb.asked(),
        0,
        "the claimant is not asked: its announcement is its vote"
    );
    for c in [&ca, &cb, &cc] {
        assert_eq!(current_leader(c).await, ("alice".to_owned(), 5));
    }
    // A follower at the claimed term but following someone else does not confirm either.
    pa.follows(&carol, 6);
    tokio::time::sleep(Duration::from_millis(
        conclave_proxy::CONFIRM_MIN_INTERVAL_MS,
    ))
    .await;
    assert_eq!(
        rejection(announce(&cb, &claim).await).0,
        Rejection::NotConfirmed
    );
    assert_eq!(current_leader(&cc).await, ("alice".to_owned(), 5));
    pa.stop();
    pb.stop();
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn a_majority_of_the_known_voters_following_the_claimant_moves_the_proxy() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let dave = km.member(&keys()[3], "dave").await;
    // Four voters, so three make a majority. Alice, the old leader, is dead.
    let (_idle, alice_addr) = idle_addr();
    let pc = FakePeer::start(&carol, &km.root, head());
    let pd = FakePeer::start(&dave, &km.root, head());
    let members = [
        (&alice, alice_addr.as_str()),
        (&bob, NOWHERE),
        (&carol, pc.addr.as_str()),
        (&dave, pd.addr.as_str()),
    ];
    let ca = alice.client(&proxy, trust.clone()).await;
    let FromProxy::Bootstrap { group_id: g, .. } = ask(&ca).await else {
        panic!("no bootstrap")
    };
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members)).await,
        FromProxy::Accepted
    );

    // Carol follows bob at term 6, dave still alice at term 5: bob and carol are two of four.
    pc.follows(&bob, 6);
    pd.follows(&alice, 5);
    let cb = bob.client(&proxy, trust.clone()).await;
    let claim = signed_at(
        &bob,
        g,
        6,
        &[
            (&bob, NOWHERE),
            (&carol, pc.addr.as_str()),
            (&dave, pd.addr.as_str()),
        ],
    );
    let (reason, _) = rejection(announce(&cb, &claim).await);
    assert_eq!(reason, Rejection::NotConfirmed);
    assert_eq!(current_leader(&cb).await, ("alice".to_owned(), 5));

    // Dave has heard of the election too: three of four.
    pd.follows(&bob, 6);
    tokio::time::sleep(Duration::from_millis(
        conclave_proxy::CONFIRM_MIN_INTERVAL_MS,
    ))
    .await;
    let started = Instant::now();
    assert_eq!(announce(&cb, &claim).await, FromProxy::Accepted);
    assert!(
        started.elapsed() < Duration::from_millis(conclave_proxy::CONFIRM_PROBE_TIMEOUT_MS),
        "a confirmed majority does not wait for the dead old leader's probe"
    );
    let l = leader(ask(&ca).await);
    assert_eq!(
        (l.name.as_str(), l.node_id, l.term),
        ("bob", bob.node_id, 6)
    );
    // Bob's list is the known one now: alice is gone, and bob's refreshes need nobody.
    let (asked_c, asked_d) = (pc.asked(), pd.asked());
    assert_eq!(announce(&cb, &claim).await, FromProxy::Accepted);
    assert_eq!((pc.asked(), pd.asked()), (asked_c, asked_d));
    let (reason, _) = rejection(announce(&ca, &signed_at(&alice, g, 7, &members)).await);
    assert_eq!(reason, Rejection::NotAMember);
    pc.stop();
    pd.stop();
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn founding_and_refreshes_need_no_confirmation_but_a_higher_term_does() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let pb = FakePeer::start(&bob, &km.root, head());
    let pc = FakePeer::start(&carol, &km.root, head());
    let members = [
        (&alice, NOWHERE),
        (&bob, pb.addr.as_str()),
        (&carol, pc.addr.as_str()),
    ];

    // Founding lists three voters, but there is no group to ask yet.
    let ca = alice.client(&proxy, trust.clone()).await;
    let FromProxy::Bootstrap { group_id: g, .. } = ask(&ca).await else {
        panic!("no bootstrap")
    };
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members)).await,
        FromProxy::Accepted
    );
    // Refreshes, one with a new member list, many in a row (no rate limit applies).
    for _ in 0..3 {
        assert_eq!(
            announce(&ca, &signed_at(&alice, g, 5, &members)).await,
            FromProxy::Accepted
        );
    }
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members[..2])).await,
        FromProxy::Accepted
    );
    assert_eq!((pb.asked(), pc.asked()), (0, 0), "nobody was asked");
    // With every other voter down, the known leader's refresh still goes through.
    pb.stop();
    pc.stop();
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members)).await,
        FromProxy::Accepted
    );

    // The same leader at a higher term (re-elected) is a new claim: bob must confirm it.
    let pb = FakePeer::start(&bob, &km.root, head());
    let pc = FakePeer::start(&carol, &km.root, head());
    let members = [
        (&alice, NOWHERE),
        (&bob, pb.addr.as_str()),
        (&carol, pc.addr.as_str()),
    ];
    // Bob and carol moved: the known list must say where they are now.
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 5, &members)).await,
        FromProxy::Accepted
    );
    pb.follows(&alice, 6);
    pc.follows(&carol, 6);
    assert_eq!(
        announce(&ca, &signed_at(&alice, g, 6, &members)).await,
        FromProxy::Accepted
    );
    assert_eq!(current_leader(&ca).await, ("alice".to_owned(), 6));
    assert!(
        pb.asked() + pc.asked() >= 1,
        "a higher term was taken on one member's word"
    );
    pb.stop();
    pc.stop();
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn status_needs_no_certificate_and_reports_each_member() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let trust = km.trust();
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let alice = km.member(&keys()[0], "alice").await;
    let bob = km.member(&keys()[1], "bob").await;
    let carol = km.member(&keys()[2], "carol").await;
    let hash = "ab".repeat(32);
    let alice_peer = FakePeer::start(&alice, &km.root, (7, hash.clone()));
    let alice_addr = alice_peer.addr.clone();
    let (_idle, bob_addr) = idle_addr();
    // Carol's address answers, but with alice's certificate: not carol.
    let carol_addr = alice_addr.clone();

    let ca = alice.client(&proxy, trust.clone()).await;
    let FromProxy::Bootstrap { group_id, .. } = ask(&ca).await else {
        panic!("no bootstrap")
    };
    let mut a = alice.announcement(group_id, 1, &[]);
    a.addr = alice_addr.clone();
    a.members = vec![
        alice.info(&alice_addr),
        bob.info(&bob_addr),
        carol.info(&carol_addr),
    ];
    a.members[1].role = "learner".into();
    let signed = SignedAnnouncement::sign(alice.key, &a).unwrap();
    assert_eq!(announce(&ca, &signed).await, FromProxy::Accepted);

    let anon = anonymous(&proxy, trust.clone()).await;
    let status = within("status", anon.status()).await.unwrap();
    assert_eq!(status.group_id, Some(group_id));
    let l = status.leader.expect("a leader");
    assert_eq!(
        (l.name.as_str(), l.term, l.addr.as_str()),
        ("alice", 1, alice_addr.as_str())
    );
    let rows: Vec<_> = status
        .members
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.role.as_str(),
                m.reachable,
                m.head_height,
                m.head_hash.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("alice", "voter", true, Some(7), Some(hash.clone())),
            ("bob", "learner", false, None, None),
            ("carol", "voter", false, None, None),
        ]
    );
    assert_eq!(status.members[0].node_id, alice.node_id);
    assert_eq!(status.members[1].addr, bob_addr);

    // A raw request with the raw reply, for the protocol's sake.
    let raw = within("raw status", anon.request(&ToProxy::Status))
        .await
        .unwrap();
    assert!(matches!(raw, FromProxy::Status(s) if s.members.len() == 3));
    alice_peer.stop();
    proxy.stop().await;
    km.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_without_a_proxy_certificate() {
    let km_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let alice = km.member(&keys()[0], "alice").await;
    // A member's certificate, on the proxy's ALPN.
    let trust = km.trust();
    let cfg = quic::server_config(
        &alice.tls,
        ClientAuth::OptionalMembers(trust.clone()),
        &[conclave_shared::wire::proxy::ALPN],
    )
    .unwrap();
    let impostor = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accepting = impostor.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let _ = incoming.await;
        }
    });
    let err = within(
        "connect to an impostor",
        ProxyClient::connect(
            &client_endpoint(),
            impostor.local_addr().unwrap(),
            None,
            trust,
        ),
    )
    .await
    .err()
    .expect("a member posing as the proxy was accepted");
    assert!(err.to_string().contains("not accepted here"), "{err}");
    impostor.close(0u32.into(), b"test over");
    task.abort();
    km.stop().await;
}

/// Writes raw bytes on a new stream and returns whatever comes back (bounded).
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> FromProxy {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let reply = within("raw reply", recv.read_to_end(1 << 20))
        .await
        .unwrap_or_default();
    let len = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
    conclave_shared::wire::decode_message(&reply[4..4 + len]).unwrap()
}

#[tokio::test]
async fn hostile_frames_get_an_error_and_the_proxy_keeps_serving() {
    let km_dir = tempfile::tempdir().unwrap();
    let proxy_dir = tempfile::tempdir().unwrap();
    let km = Km::start(km_dir.path()).await;
    let proxy = ProxyServer::start(proxy_dir.path(), &km, conclave_proxy::LEASE_MS).await;
    let anon = anonymous(&proxy, km.trust()).await;

    let mut forged = (1u32 << 30).to_be_bytes().to_vec();
    forged.extend_from_slice(&[0u8; 64]);
    assert!(matches!(
        raw_exchange(anon.connection(), &forged).await,
        FromProxy::Error { message } if message.contains("exceeds")
    ));
    let mut garbage = 32u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    assert!(matches!(
        raw_exchange(anon.connection(), &garbage).await,
        FromProxy::Error { .. }
    ));
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[1, 2, 3]);
    assert!(matches!(
        raw_exchange(anon.connection(), &short).await,
        FromProxy::Error { .. }
    ));

    // The same connection and a member's new one are served right after.
    assert!(within("status", anon.status()).await.is_ok());
    let alice = km.member(&keys()[0], "alice").await;
    let ca = alice.client(&proxy, km.trust()).await;
    assert!(matches!(ask(&ca).await, FromProxy::Bootstrap { .. }));
    proxy.stop().await;
    km.stop().await;
}
