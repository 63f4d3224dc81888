//! The group end to end: real key manager, proxy and peer processes on 127.0.0.1.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::cluster::{record_ids, Cluster};
use harness::DEADLINE;
use serde_json::Value;

/// (author, seq) → text of every `record` event a peer printed, in the order printed, with
/// the height of each.
fn records(events: &[Value]) -> Vec<(u64, String, u64)> {
    events
        .iter()
        .filter(|e| e["event"] == "record")
        .map(|e| {
            (
                e["height"].as_u64().unwrap(),
                e["author"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until every listed peer has printed `n` records, collecting its events.
fn wait_records(
    c: &mut Cluster,
    names: &[&str],
    n: usize,
) -> BTreeMap<String, Vec<(u64, String, u64)>> {
    let mut out = BTreeMap::new();
    for name in names {
        let until = Instant::now() + DEADLINE;
        let p = c.peer(name);
        loop {
            p.proc.drain();
            let got = records(&p.proc.seen_events());
            if got.len() >= n {
                out.insert(name.to_string(), got);
                break;
            }
            if Instant::now() > until {
                panic!(
                    "{name} saw {} of {n} records\nstderr:\n{}",
                    got.len(),
                    p.proc.stderr()
                );
            }
            let _ = p.proc.next_line(Duration::from_millis(100));
        }
    }
    out
}

fn leader_of(status: &Value) -> Option<String> {
    status["leader"].as_str().map(str::to_owned)
}

/// Waits until the status shows three reachable members and a leader.
fn wait_three_with_a_leader(c: &Cluster) -> Value {
    c.wait_status("three reachable members with a leader", |s| {
        leader_of(s).is_some()
            && s["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["reachable"] == true))
    })
}

#[test]
fn a_group_forms_and_records_reach_every_peer_in_one_order() {
    let mut c = Cluster::with_peers(3);
    let status = wait_three_with_a_leader(&c);
    assert_eq!(
        leader_of(&status).as_deref(),
        Some("p1"),
        "the founder leads"
    );

    for (i, name) in ["p1", "p2", "p3"].iter().enumerate() {
        for j in 0..5 {
            c.peer(name)
                .proc
                .send_line(&format!("message {j} from peer {i}"));
        }
    }
    let seen = wait_records(&mut c, &["p1", "p2", "p3"], 15);
    let first = &seen["p1"];
    for (name, got) in &seen {
        assert_eq!(got, first, "{name} saw another order");
    }
    // Every author's records appear in its own sequence order, each once.
    for author in ["p1", "p2", "p3"] {
        let seqs: Vec<u64> = first
            .iter()
            .filter(|r| r.1 == author)
            .map(|r| r.2)
            .collect();
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>(), "{author}'s sequence");
    }
    let last = first.iter().map(|r| r.0).max().unwrap();
    c.wait_status("equal heads at or past the last record", |s| {
        let m = s["members"].as_array().unwrap();
        m.iter().all(|x| {
            x["hash"] == m[0]["hash"] && x["hash"].is_string() && x["height"].as_u64() >= Some(last)
        })
    });
    // Stopped, every stored chain verifies with the root key alone and all are the same.
    let chains = c.stop_and_compare_chains(&["p1", "p2", "p3"]);
    assert_eq!(record_ids(&chains[0].1).len(), 15);
}

fn joined_members(v: &Value) -> u64 {
    v["members"].as_u64().unwrap_or(0)
}

#[test]
fn two_peers_started_at_the_same_instant_make_one_group() {
    let mut c = Cluster::servers();
    c.start_peer("a", None);
    c.start_peer("b", None);
    let ja = c.wait_joined("a");
    let jb = c.wait_joined("b");
    assert_eq!(ja["leader"], jb["leader"], "one leader: {ja} {jb}");
    let status = c.wait_status("one group of two", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2) && s["leader"].is_string()
    });
    assert!(status["group"].is_string());
    assert_eq!(joined_members(&ja).max(joined_members(&jb)), 2);
}

#[test]
fn a_restarted_proxy_offers_no_second_bootstrap() {
    let mut c = Cluster::with_peers(1);
    c.wait_status("p1 leads", |s| leader_of(s).as_deref() == Some("p1"));
    let group = c.status()["group"].clone();
    // The proxy dies and comes back on the same address with the same data.
    c.proxy.kill9();
    let mut cmd = harness::conclave(c.path());
    cmd.args([
        "--json",
        "proxy",
        "--listen",
        &c.proxy_addr.to_string(),
        "--data",
        "proxy",
        "--keymanager",
        &c.km_addr.to_string(),
    ]);
    c.proxy = harness::Proc::spawn(&mut cmd);
    c.proxy.wait_event("listening", |_| true);
    c.start_peer("p2", None);
    let j = c.wait_joined("p2");
    assert_eq!(
        j["leader"], "p1",
        "p2 must join p1's group, not found another: {j}"
    );
    assert_eq!(joined_members(&j), 2);
    let status = c.wait_status("two members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    assert_eq!(status["group"], group, "the group changed");
}

#[test]
fn the_leader_fails_over_appends_go_on_and_a_later_peer_joins_the_new_leader() {
    let mut c = Cluster::with_peers(3);
    let before = c.wait_status("p1 leads three", |s| {
        leader_of(s).as_deref() == Some("p1")
            && s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    let term = before["term"].as_u64().unwrap();
    c.peer("p2").proc.send_line("before the failover");
    wait_records(&mut c, &["p2", "p3"], 1);

    let killed_at = Instant::now();
    let p1_addr = c.kill9("p1");
    c.peer("p2").proc.send_line("after the failover");
    let seen = wait_records(&mut c, &["p2", "p3"], 2);
    let failover = killed_at.elapsed();
    assert_eq!(seen["p2"], seen["p3"]);
    let after = c.wait_status("a new leader with a higher term", |s| {
        leader_of(s).is_some_and(|l| l != "p1") && s["term"].as_u64().is_some_and(|t| t > term)
    });
    let new_leader = leader_of(&after).unwrap();
    eprintln!("kill -9 of the leader to the next record seen everywhere: {failover:?}");

    // A fourth peer asks the proxy and is sent to the new leader.
    c.start_peer("p4", None);
    let j = c.wait_joined("p4");
    assert_eq!(j["leader"], new_leader.as_str());
    // The killed leader comes back with its data and port, and catches up.
    c.start_peer("p1", Some(p1_addr));
    c.peer("p3").proc.send_line("everyone is back");
    wait_records(&mut c, &["p1"], 1);
    let s = c.wait_status("four equal heads", |s| {
        let m = s["members"].as_array().unwrap();
        m.len() == 4
            && m.iter()
                .all(|x| x["reachable"] == true && x["hash"] == m[0]["hash"])
    });
    assert_eq!(leader_of(&s), Some(new_leader));
    let chains = c.stop_and_compare_chains(&["p1", "p2", "p3", "p4"]);
    assert_eq!(record_ids(&chains[0].1).len(), 3);
}

/// The highest height among a peer's `committed` events.
fn last_committed_height(events: &[Value]) -> u64 {
    events
        .iter()
        .filter(|e| e["event"] == "committed")
        .filter_map(|e| e["height"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Every reachable member's head is at or past `h`, and all are equal. Stopping peers only
/// after this makes sure followers applied what the leader committed (they learn of a commit
/// from the leader's next message).
fn heads_at_least(s: &Value, h: u64, reachable: usize) -> bool {
    let m = s["members"].as_array().unwrap();
    let up: Vec<&Value> = m.iter().filter(|x| x["reachable"] == true).collect();
    up.len() == reachable
        && up
            .iter()
            .all(|x| x["hash"] == up[0]["hash"] && x["height"].as_u64() >= Some(h))
}

/// Committed seqs a peer printed.
fn committed(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "committed")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn every_record_is_in_every_chain_exactly_once_through_leader_and_author_crashes() {
    const N: u64 = 300;
    let mut c = Cluster::with_peers(3);
    c.wait_status("p1 leads", |s| leader_of(s).as_deref() == Some("p1"));

    // p2 (a follower) writes 300 records; p3 writes too, and is killed midway.
    for i in 1..=N / 2 {
        c.peer("p2").proc.send_line(&format!("p2 record {i}"));
    }
    for i in 1..=50 {
        c.peer("p3").proc.send_line(&format!("p3 record {i}"));
    }
    // Wait for some of p2's to commit, then kill the leader under the rest.
    let until = Instant::now() + DEADLINE;
    while committed(&c.peer("p2").proc.seen_events()).len() < 20 {
        assert!(Instant::now() < until, "p2 never committed");
        let _ = c.peer("p2").proc.next_line(Duration::from_millis(50));
    }
    let p1_addr = c.kill9("p1");
    for i in N / 2 + 1..=N {
        c.peer("p2").proc.send_line(&format!("p2 record {i}"));
    }
    // Kill the other author mid-stream, then bring it back with its data.
    c.peer("p3").proc.drain();
    let p3_before = committed(&c.peer("p3").proc.seen_events());
    let p3_addr = c.kill9("p3");
    c.start_peer("p3", Some(p3_addr));
    for i in 51..=60 {
        c.peer("p3").proc.send_line(&format!("p3 record {i}"));
    }
    c.start_peer("p1", Some(p1_addr));

    // Everything p2 wrote commits, exactly once.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let p = c.peer("p2");
        p.proc.drain();
        let mut seqs = committed(&p.proc.seen_events());
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.len() as u64 == N {
            break;
        }
        assert!(
            Instant::now() < until,
            "p2 committed {} of {N}\n{}",
            seqs.len(),
            p.proc.stderr()
        );
        let _ = p.proc.next_line(Duration::from_millis(100));
    }
    // p3's acknowledged records (before and after its crash) must all be there.
    let until = Instant::now() + Duration::from_secs(60);
    let p3_after = loop {
        let p = c.peer("p3");
        p.proc.drain();
        let got = committed(&p.proc.seen_events());
        if got.len() >= 10 {
            break got;
        }
        assert!(
            Instant::now() < until,
            "restarted p3 committed only {}",
            got.len()
        );
        let _ = p.proc.next_line(Duration::from_millis(100));
    };
    let h = ["p2", "p3"]
        .iter()
        .map(|n| last_committed_height(&c.peer(n).proc.seen_events()))
        .max()
        .unwrap();
    c.wait_status("three equal heads past every commit", |s| {
        heads_at_least(s, h, 3)
    });
    let chains = c.stop_and_compare_chains(&["p1", "p2", "p3"]);
    let ids = record_ids(&chains[0].1);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a record appears twice");
    let p2: Vec<u64> = ids
        .iter()
        .filter(|(a, _)| a == "p2")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        p2,
        (1..=N).collect::<Vec<_>>(),
        "p2's records, in order, each once"
    );
    let p3: Vec<u64> = ids
        .iter()
        .filter(|(a, _)| a == "p3")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        p3,
        (1..=p3.len() as u64).collect::<Vec<_>>(),
        "p3's sequence has a gap or repeat"
    );
    for s in p3_before.iter().chain(&p3_after) {
        assert!(p3.contains(s), "p3's acknowledged record {s} is lost");
    }
}

mod strangers {
    use super::*;
    use conclave_keymanager::client::KeymanagerClient;
    use conclave_peer::rpc::{RaftReply, RaftRequest};
    use conclave_shared::cert::{CertBody, Certificate, Role};
    use conclave_shared::identity::{Identity, PublicKey};
    use conclave_shared::quic::{self, MemberTrust, RevokedSerials, ServerTrust, TlsIdentity};
    use conclave_shared::wire::{read_frame, write_frame, ALPN_RAFT};

    /// Opens a Raft connection as `tls` and sends a vote request claiming `claimed` as its
    /// node id at a high term. Returns the reply, or the error that stopped the exchange.
    async fn raft_vote(
        target: std::net::SocketAddr,
        tls: &TlsIdentity,
        root: &PublicKey,
        claimed: u64,
    ) -> Result<RaftReply, String> {
        let trust = MemberTrust::new(root.clone(), &[Role::Member], RevokedSerials::new());
        let cfg =
            quic::client_config(Some(tls), ServerTrust::Members(trust), &[ALPN_RAFT]).unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let exchange = async {
            let conn = ep
                .connect_with(cfg, target, quic::SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let req = RaftRequest::Vote(openraft::raft::VoteRequest {
                vote: openraft::Vote::new(1000, claimed),
                last_log_id: None,
            });
            write_frame(&mut send, &req, 1 << 20)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_frame::<_, RaftReply>(&mut recv, 1 << 20)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no reply".to_string())
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    #[test]
    fn strangers_and_non_members_cannot_speak_raft_or_move_the_group() {
        let c = Cluster::with_peers(2);
        let before = c.wait_status("p1 leads two", |s| {
            leader_of(s).as_deref() == Some("p1")
                && s["members"].as_array().is_some_and(|m| m.len() == 2)
        });
        let root = PublicKey::load_pem(&c.root_key()).unwrap();
        let target = c.peers["p2"].addr;
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            // Certified by another root: the TLS handshake itself fails.
            let fake_root = Identity::generate(2048).unwrap();
            let mallory = Identity::generate(2048).unwrap();
            let forged = Certificate::issue(
                &fake_root,
                CertBody {
                    name: "mallory".into(),
                    role: Role::Member,
                    spki_der: mallory.public().spki_der().to_vec(),
                    serial: 1,
                    issued_at_ms: 0,
                },
            )
            .unwrap();
            let tls = TlsIdentity::new(&mallory, Some(&forged)).unwrap();
            let r = raft_vote(target, &tls, &root, mallory.fingerprint().node_id()).await;
            assert!(r.is_err(), "a foreign certificate got a Raft reply: {r:?}");

            // Really registered, but never admitted: refused after the handshake.
            let eve = Identity::generate(2048).unwrap();
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let km = KeymanagerClient::connect(&ep, c.km_addr, &root)
                .await
                .unwrap();
            let cert = km.register(&eve, "eve", Role::Member, None).await.unwrap();
            let tls = TlsIdentity::new(&eve, Some(cert.certificate())).unwrap();
            let r = raft_vote(target, &tls, &root, eve.fingerprint().node_id()).await;
            assert!(
                matches!(&r, Ok(RaftReply::Refused(why)) if why.contains("not a member")),
                "a non-member was heard: {r:?}"
            );
            // Claiming a member's node id does not help either.
            let p1_id = {
                let id = Identity::load_pem(&c.path().join("peers/p1/identity.pem")).unwrap();
                id.fingerprint().node_id()
            };
            let r = raft_vote(target, &tls, &root, p1_id).await;
            assert!(
                matches!(&r, Ok(RaftReply::Refused(why)) if why.contains("node id")),
                "a request under another node's id was heard: {r:?}"
            );
            // Nor may a non-member append, even with a batch it signed itself.
            let key = conclave_shared::envelope::GroupKey::generate();
            let record = conclave_shared::chain::Record::seal(&key, "eve", 1, 1, b"hello").unwrap();
            let batch = conclave_shared::chain::RecordBatch::sign(&eve, &[0; 16], "eve", vec![record]).unwrap();
            let trust = MemberTrust::new(root.clone(), &[Role::Member], RevokedSerials::new());
            let cfg = quic::client_config(Some(&tls), ServerTrust::Members(trust), &[conclave_shared::wire::ALPN_PEER]).unwrap();
            let conn = ep.connect_with(cfg, c.peers["p1"].addr, quic::SERVER_NAME).unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let req = conclave_shared::wire::peer::ToPeer::Submit {
                batch: conclave_shared::codec::Canonical::to_canonical(&batch),
            };
            write_frame(&mut send, &req, 1 << 20).await.unwrap();
            let _ = send.finish();
            let reply = read_frame::<_, conclave_shared::wire::peer::FromPeer>(&mut recv, 1 << 20).await;
            assert!(
                matches!(&reply, Ok(Some(conclave_shared::wire::peer::FromPeer::Error { message, .. })) if message.contains("only a member")),
                "a non-member's batch was taken: {reply:?}"
            );
        });
        // Nothing moved: same leader, same term.
        let after = c.status();
        assert_eq!(leader_of(&after).as_deref(), Some("p1"));
        assert_eq!(after["term"], before["term"]);
    }
}

fn committed_count(c: &mut Cluster, name: &str) -> usize {
    let p = c.peer(name);
    p.proc.drain();
    committed(&p.proc.seen_events()).len()
}

fn wait_committed(c: &mut Cluster, name: &str, n: usize) {
    let until = Instant::now() + DEADLINE;
    while committed_count(c, name) < n {
        assert!(
            Instant::now() < until,
            "{name} committed fewer than {n}\n{}",
            c.peer(name).proc.stderr_tail(30)
        );
        let _ = c.peer(name).proc.next_line(Duration::from_millis(50));
    }
}

#[test]
fn exit_commands_and_signals_stop_a_peer_cleanly_and_end_of_input_does_not() {
    let mut c = Cluster::with_peers(4);
    // End of input does not stop a peer: p2 goes on receiving records.
    c.peer("p2").proc.close_stdin();
    c.peer("p1").proc.send_line("after p2's input ended");
    wait_records(&mut c, &["p2"], 1);
    // Ctrl-C, /exit and $exit stop a peer with exit code 0, without leaving the group.
    let mut p2 = c.peers.remove("p2").unwrap();
    assert_eq!(
        p2.proc.interrupt().code(),
        Some(0),
        "{}",
        p2.proc.stderr_tail(20)
    );
    for (name, cmd) in [("p3", "/exit"), ("p4", "$exit")] {
        let mut p = c.peers.remove(name).unwrap();
        p.proc.send_line(cmd);
        assert_eq!(
            p.proc.wait_exit_status().code(),
            Some(0),
            "{name}: {}",
            p.proc.stderr_tail(20)
        );
    }
    // They are unreachable members now, not removed ones.
    let s = c.wait_status("p2, p3, p4 unreachable but listed", |s| {
        let m = s["members"].as_array().unwrap();
        m.len() == 4 && m.iter().filter(|x| x["reachable"] == false).count() == 3
    });
    assert_eq!(leader_of(&s).as_deref(), Some("p1"));
}

#[test]
fn acknowledged_records_survive_kill_9_of_every_peer() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("three members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    for i in 1..=20 {
        c.peer("p2")
            .proc
            .send_line(&format!("before the blackout {i}"));
    }
    wait_committed(&mut c, "p2", 20);
    let addrs: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| (*n, c.kill9(n)))
        .collect();
    for (name, addr) in &addrs {
        c.start_peer(name, Some(*addr));
    }
    c.peer("p3").proc.send_line("after the blackout");
    wait_committed(&mut c, "p3", 1);
    let h = last_committed_height(&c.peer("p3").proc.seen_events());
    c.wait_status("three equal heads after the restart", |s| {
        leader_of(s).is_some() && heads_at_least(s, h, 3)
    });
    let chains = c.stop_and_compare_chains(&["p1", "p2", "p3"]);
    let ids = record_ids(&chains[0].1);
    let p2: Vec<u64> = ids
        .iter()
        .filter(|(a, _)| a == "p2")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(p2, (1..=20).collect::<Vec<_>>());
    assert!(ids.contains(&("p3".to_string(), 1)));
}

#[test]
fn a_member_that_founded_a_group_the_proxy_does_not_serve_drops_it_and_joins() {
    let mut c = Cluster::with_peers(1);
    let p1_addr = c.kill9("p1");
    // The proxy loses its group state (it keeps its identity): p2 founds a new group there.
    c.proxy.kill9();
    let (old, new) = (c.path().join("proxy"), c.path().join("proxy-new"));
    std::fs::create_dir_all(&new).unwrap();
    for f in [conclave_proxy::IDENTITY_FILE, conclave_proxy::CERT_FILE] {
        std::fs::copy(old.join(f), new.join(f)).unwrap();
    }
    let mut cmd = harness::conclave(c.path());
    cmd.args([
        "--json",
        "proxy",
        "--listen",
        &c.proxy_addr.to_string(),
        "--data",
        "proxy-new",
        "--keymanager",
        &c.km_addr.to_string(),
    ]);
    c.proxy = harness::Proc::spawn(&mut cmd);
    c.proxy.wait_event("listening", |_| true);
    c.start_peer("p2", None);
    c.wait_joined("p2");
    // p1 comes back leading its old one-member group; the proxy says it serves another.
    c.start_peer("p1", Some(p1_addr));
    let j = c
        .peer("p1")
        .proc
        .wait_event("joined", |v| v["leader"] == "p2");
    assert_eq!(j["members"], 2, "{j}");
    c.wait_status("one group of two led by p2", |s| {
        leader_of(s).as_deref() == Some("p2")
            && s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
}

#[test]
fn a_name_taken_by_another_key_is_exit_1_saying_so() {
    let mut c = Cluster::with_peers(1);
    // Same name, another data directory: another key.
    let mut cmd = harness::conclave(c.path());
    cmd.args([
        "--json",
        "peer",
        "--name",
        "p1",
        "--listen",
        "127.0.0.1:0",
        "--data",
        "elsewhere/p1",
        "--keymanager",
        &c.km_addr.to_string(),
        "--proxy",
        &c.proxy_addr.to_string(),
    ]);
    let out = harness::run(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("registered to another key"),
        "{}",
        out.stderr
    );
    // The real p1 is untouched and still leads.
    let s = c.status();
    assert_eq!(leader_of(&s).as_deref(), Some("p1"));
    c.peer("p1").proc.send_line("still here");
    wait_records(&mut c, &["p1"], 1);
    // Its key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(c.path().join("peers/p1/identity.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A member that restarts must not depose a healthy leader. It comes back holding its vote
/// for that leader; if it then heard nothing within the lease and its election timeout, it
/// would stand, and its vote request of a higher term makes the leader step down (openraft
/// 0.9 has no pre-vote): an election at every restart. So the leader must reach it in time:
/// it tries an unreachable member again after a heartbeat (openraft's default is 500 ms),
/// and a handshake slower than one heartbeat is finished rather than started over.
#[test]
fn a_restarted_member_does_not_depose_the_leader() {
    let mut c = Cluster::with_peers(3);
    let s = wait_three_with_a_leader(&c);
    let leader = leader_of(&s).unwrap();
    let term = s["term"].as_u64().unwrap();
    let names = ["p1", "p2", "p3"];
    let restarted = *names.iter().find(|n| **n != leader).unwrap();
    let witness = *names
        .iter()
        .find(|n| **n != leader && **n != restarted)
        .unwrap();
    for round in 1..=3usize {
        c.peer(&leader)
            .proc
            .send_line(&format!("before restart {round}"));
        wait_records(&mut c, &[witness], round);
        let addr = c.kill9(restarted);
        // Long enough for the leader to find it unreachable and back off.
        std::thread::sleep(Duration::from_millis(300));
        c.start_peer(restarted, Some(addr));
        c.wait_in_step(3, 0);
        // Well past the restarted member's lease and election timeout.
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = c.wait_in_step(3, 0);
    assert_eq!(leader_of(&s).as_deref(), Some(leader.as_str()), "{s:#}");
    assert_eq!(
        s["term"].as_u64(),
        Some(term),
        "a restart caused an election: {s:#}"
    );
    let w = c.peer(witness);
    w.proc.drain();
    let leaders: Vec<Value> = w
        .proc
        .seen_events()
        .into_iter()
        .filter(|e| e["event"] == "leader")
        .collect();
    assert!(
        leaders.iter().all(|e| e["term"].as_u64() == Some(term)),
        "{witness} saw another leader: {leaders:?}"
    );
}

/// A member that joins far behind receives a long log: the leader first finds where the
/// newcomer's log ends with requests that carry no entries (see `RaftConn::append_entries`),
/// then sends the entries from there. Records written one at a time are one Raft entry each,
/// so the newcomer needs many more than one request's worth of probing and sending.
#[test]
fn a_member_joining_late_receives_the_whole_log() {
    let mut c = Cluster::with_peers(2);
    const N: u64 = 120;
    for i in 1..=N {
        let p = c.peer("p1");
        p.proc.send_line(&format!("record {i}"));
        p.proc
            .wait_event("committed", |e| e["seq"].as_u64() == Some(i));
    }
    c.start_peer("p3", None);
    c.wait_joined("p3");
    let seen = wait_records(&mut c, &["p1", "p3"], N as usize);
    assert_eq!(
        seen["p1"], seen["p3"],
        "the newcomer shows the records in the group's order"
    );
    let s = c.wait_in_step(3, 0);
    assert_eq!(s["members"].as_array().map(Vec::len), Some(3), "{s:#}");
    let chains = c.stop_and_compare_chains(&["p1", "p2", "p3"]);
    assert_eq!(record_ids(&chains[2].1).len(), N as usize);
}

/// A raft config with these election timings, from the shipped `config.yml`.
fn timings(min_ms: u64, max_ms: u64) -> String {
    let shipped = include_str!("../config.yml");
    let text = shipped
        .replace(
            "election_timeout_min_ms: 75",
            &format!("election_timeout_min_ms: {min_ms}"),
        )
        .replace(
            "election_timeout_max_ms: 125",
            &format!("election_timeout_max_ms: {max_ms}"),
        );
    assert_ne!(
        text, shipped,
        "config.yml no longer has the values this test edits"
    );
    text
}

/// A member keeps its connection to another across elections (one per member, shared by
/// openraft's clients). If the other is killed and restarted on the same port, that
/// connection looks alive (the new process cannot reset it): the vote requests sent on it
/// must make the member dial afresh. Otherwise a candidate that stands first every round
/// (here p1, whose timeouts are shorter than the restarted p3's) asks a dead connection
/// round after round, p3's rarer candidacies are of lower terms, and no leader is elected
/// until QUIC's idle timeout, tens of terms later.
#[test]
fn a_candidate_reaches_a_member_restarted_since_it_last_spoke_to_it() {
    let mut c = Cluster::servers();
    let slow = c.write_config("slow.yml", &timings(400, 800));
    let slow = slow.to_str().unwrap().to_owned();
    c.start_peer("p1", None);
    c.wait_joined("p1");
    c.start_peer("p2", None);
    c.wait_joined("p2");
    c.start_peer_with("p3", None, &["--config", &slow]);
    c.wait_joined("p3");
    let s = wait_three_with_a_leader(&c);
    // p1 founded the group and leads it: it has dialled both others.
    assert_eq!(leader_of(&s).as_deref(), Some("p1"), "{s:#}");
    let term = s["term"].as_u64().unwrap();
    // Paused past the others' timeouts, it comes back as a follower of p2 (p3 is slower),
    // still holding its connections.
    c.peer("p1").proc.pause();
    c.wait_status("p2 leading", |s| {
        leader_of(s).as_deref() == Some("p2") && s["term"].as_u64() > Some(term)
    });
    c.peer("p1").proc.resume();
    c.peer("p2").proc.send_line("p1 is back");
    wait_records(&mut c, &["p1"], 1);
    // p3 restarts: p1's connection to it now leads to a dead process.
    let addr = c.kill9("p3");
    c.start_peer_with("p3", Some(addr), &["--config", &slow]);
    c.peer("p2").proc.send_line("p3 is back");
    wait_records(&mut c, &["p1"], 2);
    let before = c.wait_in_step(3, 0);
    assert_eq!(leader_of(&before).as_deref(), Some("p2"), "{before:#}");
    let term = before["term"].as_u64().unwrap();
    // The leader dies; p1 stands first every round and must reach p3.
    c.kill9("p2");
    c.peer("p1").proc.send_line("after p2 died");
    wait_records(&mut c, &["p1"], 3);
    let after = c.wait_status("p1 or p3 leading", |s| {
        leader_of(s).is_some_and(|l| l == "p1" || l == "p3")
    });
    let elected_at = after["term"].as_u64().unwrap();
    assert!(
        elected_at <= term + 30,
        "{} terms went by before a leader was elected: {after:#}",
        elected_at - term
    );
    c.stop_and_compare_chains(&["p1", "p3"]);
}
