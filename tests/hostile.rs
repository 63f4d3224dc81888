//! Hostile input at every listener of real `conclave` processes, over QUIC on 127.0.0.1:
//! the key manager (`conclave/km/1`), the proxy (`conclave/proxy/1`) and a peer's two
//! protocols (`conclave/raft/1`, `conclave/peer/1`). For each input: a clear refusal (an
//! error reply, or a stream or connection ended with a reason), a log line on the server's
//! stderr, nothing written, and a real client or member served afterwards.
//!
//! The matrix of listener × input, with the tests that cover each cell (here and
//! elsewhere), is in docs/TESTING.md.

mod harness;

use std::time::{Duration, Instant};

use conclave_keymanager::client::KeymanagerClient;
use conclave_peer::rpc::{self, RaftReply, RaftRequest};
use conclave_proxy::client::ProxyClient;
use conclave_shared::cert::Role;
use conclave_shared::chain::{BlockBody, MembershipChange, Record, RecordBatch, StoredBlock};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;
use conclave_shared::quic::{MemberTrust, RevokedSerials, TlsIdentity};
use conclave_shared::wire::km::{
    self, register_proof_input, FromKeymanager, KmErrorCode, ToKeymanager,
};
use conclave_shared::wire::peer::{self as peerwire, FromPeer, ToPeer};
use conclave_shared::wire::proxy::{
    self as proxywire, Announcement, FromProxy, MemberInfo, Rejection, SignedAnnouncement, ToProxy,
};
use conclave_shared::wire::{decode_message, encode_message, ALPN_PEER, ALPN_PROXY, ALPN_RAFT};
use harness::cluster::{assert_same_chains, Cluster};
use harness::raw::{self, Exchange};
use harness::{Proc, DEADLINE};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// One hostile request and the words its refusal must carry, in the reply where the protocol
/// answers and in the server's log.
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    says: String,
}

/// The same hostile frames for every listener. `max` is the listener's request limit;
/// `inner` a request body whose first length field claims 2^40 bytes (a length prefix is
/// 32 bits, so the largest prefix is `u32::MAX`; 2^40 can only be forged inside the body).
fn frame_cases(max: usize, inner: Vec<u8>) -> Vec<Case> {
    let over = |len: u64| format!("frame of {len} bytes exceeds the limit of {max} bytes");
    let http = b"GET / HTTP/1.1\r\nHost: conclave\r\n\r\n".to_vec();
    vec![
        Case {
            what: "garbage bytes (an HTTP request)",
            says: over(u32::from_be_bytes([b'G', b'E', b'T', b' ']).into()),
            bytes: http,
        },
        Case {
            what: "garbage inside a well-sized frame",
            bytes: raw::frame(&[0xff; 32]),
            says: "malformed message".into(),
        },
        Case {
            what: "a frame cut short",
            bytes: raw::claimed(100, &[1, 2, 3]),
            says: "stream ended inside a frame".into(),
        },
        Case {
            what: "a length prefix cut short",
            bytes: vec![0, 0],
            says: "stream ended inside a frame".into(),
        },
        Case {
            what: "the largest length prefix",
            bytes: raw::claimed(u32::MAX, &[0; 64]),
            says: over(u32::MAX.into()),
        },
        Case {
            what: "a length of 2^40 inside the body",
            bytes: raw::frame(&inner),
            says: "malformed message".into(),
        },
        Case {
            what: "a frame one byte over the limit",
            bytes: raw::frame(&vec![0xff; max + 1]),
            says: over(max as u64 + 1),
        },
        // The limit itself is allowed: the frame is read, and fails only to decode.
        Case {
            what: "a frame exactly at the limit",
            bytes: raw::frame(&vec![0xff; max]),
            says: "malformed message".into(),
        },
        Case {
            what: "an unknown message kind",
            bytes: raw::frame(&[99]),
            says: "malformed message".into(),
        },
    ]
}

/// Sends each case on its own stream of `conn`, checks the answer with `answered`, and
/// waits for `proc` to log `log` followed by what the case says.
async fn send_cases(
    conn: &quinn::Connection,
    cases: &[Case],
    proc: &Proc,
    log: &str,
    answered: impl Fn(&Case, &Exchange),
) {
    for case in cases {
        let needle = format!("{log}{}", case.says);
        let before = proc.stderr_count(&needle);
        let ex = raw::exchange(conn, &case.bytes).await;
        answered(case, &ex);
        proc.wait_stderr(&needle, before);
        assert!(
            conn.close_reason().is_none(),
            "{}: the server dropped the connection: {:?}",
            case.what,
            conn.close_reason()
        );
    }
}

/// Asserts that a client offering each of `alpns` (with `cfg(alpn)`) gets no connection,
/// and that `proc` logs each failed handshake.
async fn refused_alpns(
    ep: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    proc: &Proc,
    alpns: &[&[u8]],
    cfg: impl Fn(&[u8]) -> quinn::ClientConfig,
) {
    for alpn in alpns {
        let before = proc.stderr_count("handshake failed");
        let why = raw::refused_after_handshake(ep, cfg(alpn), addr).await;
        assert!(
            why.is_some(),
            "a client offering {:?} was served",
            String::from_utf8_lossy(alpn)
        );
        proc.wait_stderr("handshake failed", before);
    }
}

/// `(name, serial, revoked)` of every certificate the key manager holds.
async fn km_entries(c: &Cluster) -> Vec<(String, u64, bool)> {
    let ep = raw::client_endpoint();
    let km = KeymanagerClient::connect(&ep, c.km_addr, &raw::root(c))
        .await
        .expect("key manager");
    let mut out: Vec<_> = km
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| (e.cert.name().to_owned(), e.cert.serial(), e.revoked))
        .collect();
    out.sort();
    out
}

#[test]
fn the_key_manager_refuses_hostile_input_logs_it_writes_nothing_and_serves_on() {
    let c = Cluster::servers();
    let rt = runtime();
    let root = raw::root(&c);
    let gone = Identity::generate(2048).unwrap();
    // A registration captured on the wire, to replay, and a member about to be revoked.
    let captured = rt.block_on(async {
        let ep = raw::client_endpoint();
        let km = KeymanagerClient::connect(&ep, c.km_addr, &root)
            .await
            .unwrap();
        let key = Identity::generate(2048).unwrap();
        let spki = key.public().spki_der().to_vec();
        let FromKeymanager::Challenge { nonce } =
            km.request(&ToKeymanager::Challenge).await.unwrap()
        else {
            panic!("no challenge")
        };
        let proof = key
            .sign(&register_proof_input("alice", Role::Member, &spki, &nonce))
            .unwrap();
        let register = ToKeymanager::Register {
            name: "alice".into(),
            role: Role::Member,
            public_key: spki,
            nonce,
            proof,
            invite: None,
        };
        let reply = km.request(&register).await.unwrap();
        assert!(
            matches!(reply, FromKeymanager::Registered { .. }),
            "{reply:?}"
        );
        km.register(&gone, "gone", Role::Member, None)
            .await
            .unwrap();
        register
    });
    c.revoke("gone");

    rt.block_on(async {
        let before = km_entries(&c).await;
        let ep = raw::client_endpoint();
        let conn = raw::connect(&ep, raw::km_client(&c, km::ALPN), c.km_addr)
            .await
            .unwrap();

        let mut lookup_2_40 = vec![2u8]; // ToKeymanager::Lookup { name }
        lookup_2_40.extend(raw::forged_len_2_pow_40());
        let cases = frame_cases(km::MAX_REQUEST_BYTES, lookup_2_40);
        send_cases(&conn, &cases, &c.km, "bad request: ", |case, ex| {
            let reply = ex.body().map(decode_message::<FromKeymanager>);
            assert!(
                matches!(&reply, Some(Ok(FromKeymanager::Error { code: KmErrorCode::BadRequest, message }))
                    if message.contains(&case.says)),
                "{}: {reply:?} ({ex:?})",
                case.what
            );
        })
        .await;

        // The registration replayed, on its own connection and on another: its challenge
        // was spent by the first.
        let replay = raw::frame(&encode_message(&captured).unwrap());
        for on in [conn.clone(), raw::connect(&ep, raw::km_client(&c, km::ALPN), c.km_addr).await.unwrap()] {
            let needle = "registration with an unknown or spent challenge";
            let n = c.km.stderr_count(needle);
            let ex = raw::exchange(&on, &replay).await;
            let reply = ex.body().map(decode_message::<FromKeymanager>);
            assert!(
                matches!(reply, Some(Ok(FromKeymanager::Error { code: KmErrorCode::NoChallenge, .. }))),
                "a replayed registration: {reply:?}"
            );
            c.km.wait_stderr(needle, n);
        }

        // A revoked member registering its name again, with a fresh challenge and a genuine
        // proof.
        let km_client = KeymanagerClient::connect(&ep, c.km_addr, &root).await.unwrap();
        let n = c.km.stderr_count("refused: ");
        let again = km_client.register(&gone, "gone", Role::Member, None).await;
        assert!(
            matches!(
                again,
                Err(conclave_keymanager::KeymanagerError::Refused { code: KmErrorCode::Revoked, .. })
            ),
            "a revoked member registered again: {:?}",
            again.map(|c| c.name().to_owned())
        );
        c.km.wait_stderr("refused: ", n);

        // Another protocol's ALPN, or none the key manager knows.
        refused_alpns(&ep, c.km_addr, &c.km, &[ALPN_RAFT, ALPN_PEER, ALPN_PROXY, b"h3"], |a| {
            raw::km_client(&c, a)
        })
        .await;

        // Served on the same connection and a new one, and nothing was written.
        let ex = raw::exchange(&conn, &raw::frame(&encode_message(&ToKeymanager::List).unwrap())).await;
        assert!(matches!(
            ex.body().map(decode_message::<FromKeymanager>),
            Some(Ok(FromKeymanager::Members { .. }))
        ));
        assert_eq!(km_entries(&c).await, before, "the key manager's members changed");
    });
}

fn trust(c: &Cluster) -> MemberTrust {
    MemberTrust::new(raw::root(c), &[Role::Member], RevokedSerials::new())
}

async fn proxy_client(c: &Cluster, tls: Option<&TlsIdentity>) -> ProxyClient {
    ProxyClient::connect(&raw::client_endpoint(), c.proxy_addr, tls, trust(c))
        .await
        .expect("proxy")
}

/// What the proxy holds about the group: its leader as member `asker` is told, and its
/// members as anyone sees them.
async fn proxy_view(c: &Cluster, asker: &TlsIdentity) -> (proxywire::LeaderInfo, Vec<MemberInfo>) {
    let leader = match proxy_client(c, Some(asker)).await.where_is_leader().await {
        Ok(FromProxy::Leader(l)) => l,
        other => panic!("the proxy knows no leader: {other:?}"),
    };
    let status = proxy_client(c, None).await.status().await.expect("status");
    let mut members: Vec<MemberInfo> = status
        .members
        .into_iter()
        .map(|m| MemberInfo {
            name: m.name,
            node_id: m.node_id,
            addr: m.addr,
            role: m.role,
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    (leader, members)
}

fn leader_of(status: &serde_json::Value) -> Option<String> {
    status["leader"].as_str().map(str::to_owned)
}

#[test]
fn the_proxy_refuses_hostile_input_logs_it_and_its_group_does_not_move() {
    // One voter: no election can move the group while the proxy is under fire, so its view
    // must come out exactly as it went in.
    let c = Cluster::with_peers(1);
    c.wait_status("p1 leads", |s| leader_of(s).as_deref() == Some("p1"));
    let rt = runtime();
    let (p1_key, _, p1_tls) = raw::member_tls(&c, "p1");
    rt.block_on(async {
        // A genuine certificate of someone the group never admitted.
        let (_, _, mallory) = raw::register_outsider(&c, "mallory").await;
        let before = proxy_view(&c, &p1_tls).await;
        let ep = raw::client_endpoint();
        // Anyone may connect without a certificate (`conclave status` does).
        let anon = raw::client(&c, None, &[Role::Proxy], ALPN_PROXY);
        let conn = raw::connect(&ep, anon, c.proxy_addr).await.unwrap();
        let mut announce_2_40 = vec![1u8]; // ToProxy::Announce(SignedAnnouncement { bytes, .. })
        announce_2_40.extend(raw::forged_len_2_pow_40());
        let cases = frame_cases(proxywire::MAX_REQUEST_BYTES, announce_2_40);
        send_cases(&conn, &cases, &c.proxy, "bad request: ", |case, ex| {
            let reply = ex.body().map(decode_message::<FromProxy>);
            assert!(
                matches!(&reply, Some(Ok(FromProxy::Error { message })) if message.contains(&case.says)),
                "{}: {reply:?} ({ex:?})",
                case.what
            );
        })
        .await;

        // Another protocol's ALPN.
        refused_alpns(&ep, c.proxy_addr, &c.proxy, &[ALPN_PEER, ALPN_RAFT, km::ALPN], |a| {
            raw::client(&c, Some(&p1_tls), &[Role::Proxy], a)
        })
        .await;

        // A member certificate from another key manager, naming a real member.
        let n = c.proxy.stderr_count("handshake failed");
        let foreign = raw::foreign_member("p1");
        let why = raw::refused_after_handshake(
            &ep,
            raw::client(&c, Some(&foreign), &[Role::Proxy], ALPN_PROXY),
            c.proxy_addr,
        )
        .await;
        assert!(why.is_some(), "another key manager's member was served");
        c.proxy.wait_stderr("handshake failed", n);

        // The leader's announcement, captured and replayed by someone else over their own
        // connection: not signed by the key that connection presented.
        let (leader, members) = &before;
        let announcement = |term| Announcement {
            group_id: leader.group_id,
            name: leader.name.clone(),
            node_id: leader.node_id,
            addr: leader.addr.clone(),
            term,
            members: members.clone(),
            time_ms: 0,
        };
        let captured = SignedAnnouncement::sign(&p1_key, &announcement(leader.term)).unwrap();
        let as_mallory = proxy_client(&c, Some(&mallory)).await;
        let n = c.proxy.stderr_count("announcement rejected");
        let reply = as_mallory.request(&ToProxy::Announce(captured)).await.unwrap();
        assert!(
            matches!(&reply, FromProxy::Rejected { reason: Rejection::BadSignature, .. }),
            "a replayed announcement: {reply:?}"
        );
        c.proxy.wait_stderr("announcement rejected", n);
        // An older one, replayed over the leader's own connection: a stale term.
        let old = SignedAnnouncement::sign(&p1_key, &announcement(leader.term - 1)).unwrap();
        let as_p1 = proxy_client(&c, Some(&p1_tls)).await;
        let n = c.proxy.stderr_count("announcement rejected");
        let reply = as_p1.request(&ToProxy::Announce(old)).await.unwrap();
        assert!(
            matches!(&reply, FromProxy::Rejected { reason: Rejection::StaleTerm, .. }),
            "an old announcement: {reply:?}"
        );
        c.proxy.wait_stderr("announcement rejected", n);

        // Served on the same connection, and the group did not move.
        let ex = raw::exchange(&conn, &raw::frame(&encode_message(&ToProxy::Status).unwrap())).await;
        assert!(matches!(
            ex.body().map(decode_message::<FromProxy>),
            Some(Ok(FromProxy::Status(_)))
        ));
        assert_eq!(proxy_view(&c, &p1_tls).await, before, "the proxy's group moved");
    });
}

/// One Raft request over a raw connection; `None` if the stream ended without a reply.
async fn raft_call(conn: &quinn::Connection, req: &RaftRequest) -> Option<RaftReply> {
    let ex = raw::exchange(conn, &raw::frame(&encode_message(req).unwrap())).await;
    ex.body()
        .map(|b| decode_message::<RaftReply>(b).expect("a Raft reply"))
}

/// One `conclave/peer/1` request over a raw connection.
async fn peer_call(conn: &quinn::Connection, req: &ToPeer) -> FromPeer {
    let ex = raw::exchange(conn, &raw::frame(&encode_message(req).unwrap())).await;
    let body = ex
        .body()
        .unwrap_or_else(|| panic!("no reply to {req:?}: {ex:?}"));
    decode_message(body).expect("a peer reply")
}

/// The first records block of `author` in a chain: its height and the batch as submitted.
fn batch_of(chain: &[StoredBlock], author: &str) -> (u64, RecordBatch) {
    chain
        .iter()
        .find_map(|b| match &b.block.body {
            BlockBody::Records(batch) if batch.author == author => {
                Some((b.block.header.height, batch.clone()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no records block of {author}"))
}

/// Asserts that a chain holds exactly the records `expected` (author, seq), no refused
/// block, and admissions of exactly `members`: none of the hostile input was written.
fn holds_only(chain: &[StoredBlock], expected: &[(&str, u64)], members: &[&str]) {
    let records = harness::cluster::record_ids(chain);
    let expected: Vec<(String, u64)> = expected.iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(records, expected, "the records in the chain");
    for b in chain {
        assert!(
            !matches!(b.block.body, BlockBody::Refused(_)),
            "a refused block at height {}: {:?}",
            b.block.header.height,
            b.block.body
        );
    }
    let mut admitted: Vec<String> = chain
        .iter()
        .filter_map(|b| match &b.block.body {
            BlockBody::Membership(m) => match &m.change {
                MembershipChange::Admit { cert, .. } => Some(cert.name().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    admitted.sort();
    assert_eq!(admitted, members, "the admissions in the chain");
}

#[test]
fn a_peers_listeners_refuse_hostile_input_log_it_write_nothing_and_serve_on() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("p1 leads three", |s| {
        leader_of(s).as_deref() == Some("p1")
            && s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    c.peer("p2").proc.send_line("before");
    let committed = c.peer("p2").proc.wait_event("committed", |e| e["seq"] == 1);
    let before = c.wait_in_step(3, committed["height"].as_u64().unwrap());

    let rt = runtime();
    let p1 = c.peers["p1"].addr;
    let p1_log = &c.peers["p1"].proc;
    let (p1_key, _, p1_tls) = raw::member_tls(&c, "p1");
    let (_, _, p2_tls) = raw::member_tls(&c, "p2");
    let p2_id = c.identity_of("p2").fingerprint().node_id();
    let p1_id = p1_key.fingerprint().node_id();
    rt.block_on(async {
        let ep = raw::client_endpoint();
        // A genuine certificate of someone the group never admitted.
        let (_, _, mallory) = raw::register_outsider(&c, "mallory").await;

        // conclave/peer/1: every frame is answered with an error.
        let conn = raw::connect(&ep, raw::client(&c, Some(&mallory), &[Role::Member], ALPN_PEER), p1)
            .await
            .unwrap();
        let mut submit_2_40 = vec![1u8]; // ToPeer::Submit { batch }
        submit_2_40.extend(raw::forged_len_2_pow_40());
        let cases = frame_cases(peerwire::MAX_REQUEST_BYTES, submit_2_40);
        send_cases(&conn, &cases, p1_log, "bad peer request: ", |case, ex| {
            let reply = ex.body().map(decode_message::<FromPeer>);
            assert!(
                matches!(&reply, Some(Ok(FromPeer::Error { message, retry: false })) if message.contains(&case.says)),
                "{}: {reply:?} ({ex:?})",
                case.what
            );
        })
        .await;

        // conclave/raft/1: no answer to what does not decode, the stream just ends.
        let raft = raw::connect(&ep, raw::client(&c, Some(&mallory), &[Role::Member], ALPN_RAFT), p1)
            .await
            .unwrap();
        // RaftRequest::Append { vote, prev_log_id, entries: <2^40 of them>, .. }
        let mut append_2_40 = vec![0u8];
        append_2_40.extend(encode_message(&openraft::Vote::new_committed(1, p2_id)).unwrap());
        append_2_40.extend(encode_message(&None::<openraft::LogId<u64>>).unwrap());
        append_2_40.extend(raw::forged_len_2_pow_40());
        let cases = frame_cases(rpc::MAX_REQUEST_BYTES, append_2_40);
        send_cases(&raft, &cases, p1_log, "bad raft request: ", |case, ex| {
            assert!(ex.reply.is_empty(), "{}: answered {ex:?}", case.what);
        })
        .await;

        // A member announcing a snapshot of 2^40 bytes: refused before a byte is read.
        let as_p2 = raw::connect(&ep, raw::client(&c, Some(&p2_tls), &[Role::Member], ALPN_RAFT), p1)
            .await
            .unwrap();
        let n = p1_log.stderr_count("refusing a snapshot");
        let huge = RaftRequest::Snapshot {
            vote: openraft::Vote::new_committed(1, p2_id),
            meta: openraft::SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: "forged".into(),
            },
            len: 1 << 40,
        };
        let reply = raft_call(&as_p2, &huge).await;
        assert!(
            matches!(&reply, Some(RaftReply::SnapshotRefused(why)) if why.contains("exceeds the limit")),
            "{reply:?}"
        );
        p1_log.wait_stderr("refusing a snapshot", n);

        // The leader's Raft traffic (an append carrying p2's batch) replayed by p2: not its
        // node id.
        let old_append = RaftRequest::Append(openraft::raft::AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, p1_id),
            prev_log_id: None,
            entries: vec![openraft::Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, p1_id), 1),
                payload: openraft::EntryPayload::Normal(conclave_peer::types::Proposal {
                    time_ms: 0,
                    kind: conclave_shared::chain::BlockKind::Records.tag(),
                    body: b"an old entry".to_vec(),
                }),
            }],
            leader_commit: None,
        });
        let n = p1_log.stderr_count("raft request with another node's id");
        let reply = raft_call(&as_p2, &old_append).await;
        assert!(
            matches!(&reply, Some(RaftReply::Refused(why)) if why.contains("node id")),
            "{reply:?}"
        );
        p1_log.wait_stderr("raft request with another node's id", n);
        // And under the leader's own key, to a follower that has moved on: a stale vote,
        // taken by nobody.
        let term = before["term"].as_u64().expect("a term");
        let from_p1 = raw::connect(
            &ep,
            raw::client(&c, Some(&p1_tls), &[Role::Member], ALPN_RAFT),
            c.peers["p2"].addr,
        )
        .await
        .unwrap();
        let stale = match old_append {
            RaftRequest::Append(mut a) => {
                a.vote = openraft::Vote::new_committed(0, p1_id);
                RaftRequest::Append(a)
            }
            _ => unreachable!(),
        };
        let reply = raft_call(&from_p1, &stale).await;
        assert!(
            matches!(&reply, Some(RaftReply::Append(Ok(openraft::raft::AppendEntriesResponse::HigherVote(v)))) if v.leader_id().term >= term),
            "a stale append: {reply:?}"
        );
        let old_vote = RaftRequest::Vote(openraft::raft::VoteRequest {
            vote: openraft::Vote::new(0, p1_id),
            last_log_id: None,
        });
        let reply = raft_call(&from_p1, &old_vote).await;
        assert!(
            matches!(&reply, Some(RaftReply::Vote(Ok(v))) if !v.vote_granted),
            "a stale vote: {reply:?}"
        );

        // Another protocol's ALPN, another key manager's certificate, no certificate, a
        // proxy's certificate where only members may speak.
        refused_alpns(&ep, p1, p1_log, &[km::ALPN, ALPN_PROXY, b"h3"], |a| {
            raw::client(&c, Some(&mallory), &[Role::Member], a)
        })
        .await;
        let foreign = raw::foreign_member("p2");
        for alpn in [ALPN_RAFT, ALPN_PEER] {
            for tls in [Some(&foreign), None] {
                let n = p1_log.stderr_count("handshake failed");
                let why = raw::refused_after_handshake(&ep, raw::client(&c, tls, &[Role::Member], alpn), p1).await;
                assert!(why.is_some(), "served without a certificate of this group");
                p1_log.wait_stderr("handshake failed", n);
            }
        }
        let proxy_key = Identity::generate(2048).unwrap();
        let proxy_cert = {
            let km = KeymanagerClient::connect(&ep, c.km_addr, &raw::root(&c)).await.unwrap();
            km.register(&proxy_key, "proxy9", Role::Proxy, None).await.unwrap()
        };
        let proxy_tls = TlsIdentity::new(&proxy_key, Some(proxy_cert.certificate())).unwrap();
        let n = p1_log.stderr_count("may not speak Raft");
        let why = raw::refused_after_handshake(&ep, raw::client(&c, Some(&proxy_tls), &[Role::Member], ALPN_RAFT), p1).await;
        assert!(
            matches!(&why, Some(quinn::ConnectionError::ApplicationClosed(a)) if a.reason.as_ref() == b"members only"),
            "{why:?}"
        );
        p1_log.wait_stderr("may not speak Raft", n);
        let as_proxy = raw::connect(&ep, raw::client(&c, Some(&proxy_tls), &[Role::Member], ALPN_PEER), p1)
            .await
            .unwrap();
        let n = p1_log.stderr_count("only members may do that");
        let reply = peer_call(&as_proxy, &ToPeer::Submit { batch: b"a batch".to_vec() }).await;
        assert!(matches!(&reply, FromPeer::Error { message, retry: false } if message.contains("only members")), "{reply:?}");
        p1_log.wait_stderr("only members may do that", n);

        // The connections that carried all this are still served.
        assert!(matches!(peer_call(&conn, &ToPeer::Status).await, FromPeer::Status(_)));
    });
    // Whether what was refused here was also written is for the chains to say, below. (The
    // leader and term are not compared: on a loaded machine an election may come at any
    // time, hostile input or not.)

    // A batch replayed: p2's, exactly as the chains hold it (read from p3's store while p3
    // is stopped), submitted again by p2 to whoever leads now.
    let p3_addr = c.peers["p3"].addr;
    c.stop("p3");
    let (height, captured) = batch_of(&c.chain_of("p3"), "p2");
    c.start_peer("p3", Some(p3_addr));
    let n = c
        .peers
        .values()
        .map(|p| p.proc.stderr_count("submitted again; nothing written"))
        .sum::<usize>();
    rt.block_on(async {
        let ep = raw::client_endpoint();
        let until = Instant::now() + DEADLINE;
        loop {
            let status = c.status();
            let leader = leader_of(&status)
                .and_then(|l| c.peers.get(&l))
                .map(|p| p.addr);
            if let Some(addr) = leader {
                let conn = raw::connect(
                    &ep,
                    raw::client(&c, Some(&p2_tls), &[Role::Member], ALPN_PEER),
                    addr,
                )
                .await
                .unwrap();
                match peer_call(
                    &conn,
                    &ToPeer::Submit {
                        batch: captured.to_canonical(),
                    },
                )
                .await
                {
                    FromPeer::NotLeader { .. } | FromPeer::Error { retry: true, .. } => {}
                    reply => {
                        assert_eq!(
                            reply,
                            FromPeer::Committed {
                                height,
                                duplicate: true
                            },
                            "a replayed batch"
                        );
                        break;
                    }
                }
            }
            assert!(Instant::now() < until, "no leader took the replayed batch");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let until = Instant::now() + DEADLINE;
    while c
        .peers
        .values()
        .map(|p| p.proc.stderr_count("submitted again; nothing written"))
        .sum::<usize>()
        <= n
    {
        assert!(Instant::now() < until, "the replay was not logged");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The group goes on, and nothing but its members' records was written.
    c.peer("p2").proc.send_line("after");
    let committed = c.peer("p2").proc.wait_event("committed", |e| e["seq"] == 2);
    c.wait_in_step(3, committed["height"].as_u64().unwrap());
    c.stop_all();
    let chains: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| (*n, c.chain_of(n)))
        .collect();
    assert_same_chains(&chains);
    holds_only(&chains[0].1, &[("p2", 1), ("p2", 2)], &["p1", "p2", "p3"]);
}

/// Whether a client with `cfg` is served `Status` at a peer at `addr`.
async fn served_status(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> bool {
    let Ok(conn) = raw::connect(ep, cfg, addr).await else {
        return false;
    };
    let ex = raw::exchange(
        &conn,
        &raw::frame(&encode_message(&ToPeer::Status).unwrap()),
    )
    .await;
    ex.body().is_some()
}

#[test]
fn a_revoked_member_is_refused_everywhere_even_on_connections_it_opened_before() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("three members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    let rt = runtime();
    let (p3_key, _, p3_tls) = raw::member_tls(&c, "p3");
    let (p1, p2) = (c.peers["p1"].addr, c.peers["p2"].addr);
    let ep = rt.block_on(async { raw::client_endpoint() });
    // Connections p3 opens while it is still a member, and keeps.
    let (old_peer, old_raft, old_proxy) = rt.block_on(async {
        let peer = raw::connect(
            &ep,
            raw::client(&c, Some(&p3_tls), &[Role::Member], ALPN_PEER),
            p1,
        )
        .await
        .unwrap();
        let raft = raw::connect(
            &ep,
            raw::client(&c, Some(&p3_tls), &[Role::Member], ALPN_RAFT),
            p2,
        )
        .await
        .unwrap();
        let proxy = proxy_client(&c, Some(&p3_tls)).await;
        assert!(matches!(
            proxy.where_is_leader().await,
            Ok(FromProxy::Leader(_))
        ));
        (peer, raft, proxy)
    });

    c.revoke("p3");
    for on in ["p1", "p2"] {
        c.peer(on)
            .proc
            .wait_event("member_left", |e| e["name"] == "p3");
    }

    rt.block_on(async {
        let p1_log = &c.peers["p1"].proc;
        let p2_log = &c.peers["p2"].proc;
        // A batch p3 signed, on the connection it opened before.
        let record = Record::seal(&conclave_shared::envelope::GroupKey::generate(), "p3", 1000, 1, b"revoked")
            .unwrap();
        let batch = RecordBatch::sign(&p3_key, &[0; 16], "p3", vec![record]).unwrap();
        let n = p1_log.stderr_count("only a member of this group may append");
        let reply = peer_call(&old_peer, &ToPeer::Submit { batch: batch.to_canonical() }).await;
        assert!(
            matches!(&reply, FromPeer::Error { message, retry: false } if message.contains("only a member")),
            "a revoked member's batch: {reply:?}"
        );
        p1_log.wait_stderr("only a member of this group may append", n);
        // Raft on the connection it opened before: its certificate is checked again.
        let n = p2_log.stderr_count("no longer certified");
        let vote = RaftRequest::Vote(openraft::raft::VoteRequest {
            vote: openraft::Vote::new(1000, p3_key.fingerprint().node_id()),
            last_log_id: None,
        });
        let reply = raft_call(&old_raft, &vote).await;
        assert!(
            matches!(&reply, Some(RaftReply::Refused(why)) if why.contains("revoked")),
            "a revoked member's vote: {reply:?}"
        );
        p2_log.wait_stderr("no longer certified", n);
        // A new connection: refused in the handshake.
        let until = Instant::now() + DEADLINE;
        let n = p1_log.stderr_count("handshake failed");
        while served_status(&ep, raw::client(&c, Some(&p3_tls), &[Role::Member], ALPN_PEER), p1).await {
            assert!(Instant::now() < until, "a revoked certificate still opens connections");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p1_log.wait_stderr("handshake failed", n);

        // The proxy learns revocations by polling the key manager: once it has, the old
        // connection asks and announces in vain, and a new one is refused.
        let until = Instant::now() + DEADLINE;
        while old_proxy.where_is_leader().await.is_ok() {
            assert!(Instant::now() < until, "the proxy never learned of the revocation");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let leader = c.status()["leader"].as_str().map(str::to_owned);
        let claim = Announcement {
            group_id: [0; 16],
            name: "p3".into(),
            node_id: p3_key.fingerprint().node_id(),
            addr: c.peers["p3"].addr.to_string(),
            term: 1000,
            members: Vec::new(),
            time_ms: 0,
        };
        let n = c.proxy.stderr_count("Announce without a member certificate");
        let reply = old_proxy
            .request(&ToProxy::Announce(SignedAnnouncement::sign(&p3_key, &claim).unwrap()))
            .await
            .unwrap();
        assert!(
            matches!(&reply, FromProxy::Error { message } if message.contains("revoked")),
            "a revoked member's announcement: {reply:?}"
        );
        c.proxy.wait_stderr("Announce without a member certificate", n);
        let n = c.proxy.stderr_count("handshake failed");
        let cfg = raw::client(&c, Some(&p3_tls), &[Role::Proxy], ALPN_PROXY);
        assert!(raw::refused_after_handshake(&ep, cfg, c.proxy_addr).await.is_some());
        c.proxy.wait_stderr("handshake failed", n);
        assert_ne!(leader.as_deref(), Some("p3"));
        assert_ne!(c.status()["leader"].as_str(), Some("p3"));
    });

    // The others go on; nothing of p3's was written after its removal.
    c.peer("p2").proc.send_line("after the revocation");
    let committed = c.peer("p2").proc.wait_event("committed", |e| e["seq"] == 1);
    let h = committed["height"].as_u64().unwrap();
    c.wait_status("p1 and p2 in step", |s| {
        let m = s["members"].as_array().unwrap();
        m.len() == 2
            && m.iter()
                .all(|x| x["hash"] == m[0]["hash"] && x["height"].as_u64() >= Some(h))
    });
    c.kill9("p3");
    c.stop_all();
    let chains: Vec<_> = ["p1", "p2"].iter().map(|n| (*n, c.chain_of(n))).collect();
    assert_same_chains(&chains);
    holds_only(&chains[0].1, &[("p2", 1)], &["p1", "p2", "p3"]);
}

/// How many connections a flood opens at each listener.
const FLOOD: usize = 2_000;

/// Asserts what the connection cap must have done to a flood of idle connections at a
/// listener capped at `max`: at most `max` held once the server's closes have arrived (a
/// connection closed to make room learns it a moment later), the excess refused at the door
/// or closed to make room, and the log saying so.
async fn capped(what: &str, f: &raw::Flood, max: usize, proc: &Proc, logged_before: usize) {
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for e in &f.failed {
        *kinds.entry(e.as_str()).or_default() += 1;
    }
    eprintln!(
        "{what}: {} handshakes completed, {} refused at the door, other failures {kinds:?}",
        f.held.len(),
        f.refused,
    );
    let until = Instant::now() + Duration::from_secs(10);
    while f.open_now() > max {
        assert!(
            Instant::now() < until,
            "{what}: {} idle connections held, over the cap of {max}",
            f.open_now()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        capped_lines(proc) > logged_before,
        "{what}: the cap left no log line; stderr:\n{}",
        proc.stderr_tail(20)
    );
}

fn capped_lines(proc: &Proc) -> usize {
    proc.stderr_count("too many connections; refusing")
        + proc.stderr_count("closing the connection idle longest")
}

/// Retries `served` until it says yes; a newcomer may have to wait for an idle connection
/// to have been idle long enough to give up its place.
async fn eventually_served<F: std::future::Future<Output = bool>>(
    what: &str,
    served: impl Fn() -> F,
) {
    let until = Instant::now() + DEADLINE;
    while !served().await {
        assert!(Instant::now() < until, "{what} was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn thousands_of_idle_connections_are_capped_and_real_members_are_still_served() {
    let mut c = Cluster::with_peers(2);
    c.wait_status("two members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    let rt = runtime();
    let (_, _, p1_tls) = raw::member_tls(&c, "p1");
    let (_, _, mallory) = rt.block_on(raw::register_outsider(&c, "mallory"));
    let km_before = rt.block_on(km_entries(&c));

    // The key manager and the proxy serve anyone who completes a handshake.
    rt.block_on(async {
        let ep = raw::client_endpoint();
        let n = capped_lines(&c.km);
        let f = raw::flood(&ep, raw::km_client(&c, km::ALPN), c.km_addr, FLOOD).await;
        capped(
            "key manager",
            &f,
            conclave_keymanager::MAX_CONNECTIONS,
            &c.km,
            n,
        )
        .await;
        eventually_served("a key manager client", || async {
            let ep = raw::client_endpoint();
            match KeymanagerClient::connect(&ep, c.km_addr, &raw::root(&c)).await {
                Ok(km) => km.list().await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        // The newcomer took the place of an idle connection, which was told why.
        let evicted = f.closed_reasons().iter().any(|r| {
            matches!(r, quinn::ConnectionError::ApplicationClosed(a)
                if a.reason.as_ref() == conclave_shared::quic::accept::EVICTED_REASON)
        });
        assert!(evicted, "no idle connection gave up its place");
        drop(f);

        let n = capped_lines(&c.proxy);
        let anon = raw::client(&c, None, &[Role::Proxy], ALPN_PROXY);
        let f = raw::flood(&ep, anon, c.proxy_addr, FLOOD).await;
        capped("proxy", &f, conclave_proxy::MAX_CONNECTIONS, &c.proxy, n).await;
        eventually_served("a member asking the proxy", || async {
            let ep = raw::client_endpoint();
            match ProxyClient::connect(&ep, c.proxy_addr, Some(&p1_tls), trust(&c)).await {
                Ok(p) => matches!(p.where_is_leader().await, Ok(FromProxy::Leader(_))),
                Err(_) => false,
            }
        })
        .await;
    });

    // A peer serves certified clients only: a registered outsider may still hold places.
    // The leader's `conclave/peer/1` (members submit there) and a follower's
    // `conclave/raft/1` (the leader replicates there) are flooded, then the follower writes.
    let status = c.wait_status("a leader", |s| leader_of(s).is_some());
    let leader = leader_of(&status).unwrap();
    let follower = if leader == "p1" { "p2" } else { "p1" }.to_owned();
    let (leader_addr, follower_addr) = (c.peers[&leader].addr, c.peers[&follower].addr);
    let floods = rt.block_on(async {
        let ep = raw::client_endpoint();
        let log = &c.peers[&leader].proc;
        let n = capped_lines(log);
        let cfg = raw::client(&c, Some(&mallory), &[Role::Member], ALPN_PEER);
        let at_leader = raw::flood(&ep, cfg, leader_addr, FLOOD).await;
        capped(
            "the leader's conclave/peer/1",
            &at_leader,
            conclave_peer::server::MAX_CONNECTIONS,
            log,
            n,
        )
        .await;
        let log = &c.peers[&follower].proc;
        let n = capped_lines(log);
        let cfg = raw::client(&c, Some(&mallory), &[Role::Member], ALPN_RAFT);
        let at_follower = raw::flood(&ep, cfg, follower_addr, FLOOD).await;
        capped(
            "a follower's conclave/raft/1",
            &at_follower,
            conclave_peer::server::MAX_CONNECTIONS,
            log,
            n,
        )
        .await;
        (ep, at_leader, at_follower)
    });
    c.peer(&follower).proc.send_line("through the crowd");
    c.peer(&follower)
        .proc
        .wait_event("committed", |e| e["seq"] == 1);
    drop(floods);

    // Without a certificate of this group, nobody holds a place past the handshake.
    rt.block_on(async {
        let ep = raw::client_endpoint();
        let log = &c.peers[&leader].proc;
        let n = log.stderr_count("handshake failed");
        let cfg = raw::client(&c, None, &[Role::Member], ALPN_PEER);
        let f = raw::flood(&ep, cfg, leader_addr, FLOOD).await;
        let until = Instant::now() + DEADLINE;
        while f.open_now() > 0 {
            assert!(
                Instant::now() < until,
                "{} uncertified connections still open",
                f.open_now()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log.wait_stderr("handshake failed", n);
    });
    c.peer(&follower).proc.send_line("after the crowd");
    let committed = c
        .peer(&follower)
        .proc
        .wait_event("committed", |e| e["seq"] == 2);

    // Nothing was written: the key manager's members, and the chains but for the two lines.
    assert_eq!(rt.block_on(km_entries(&c)), km_before);
    let h = committed["height"].as_u64().unwrap();
    c.wait_in_step(2, h);
    c.stop_all();
    let chains: Vec<_> = ["p1", "p2"].iter().map(|n| (*n, c.chain_of(n))).collect();
    assert_same_chains(&chains);
    holds_only(
        &chains[0].1,
        &[(follower.as_str(), 1), (follower.as_str(), 2)],
        &["p1", "p2"],
    );
}
