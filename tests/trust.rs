//! The group's trust, end to end: leaving, revocation, key rotation on every change.

mod harness;

use std::collections::BTreeSet;

use conclave_shared::chain::{BlockBody, StoredBlock};
use conclave_shared::envelope::unwrap_key;
use conclave_shared::identity::Identity;
use harness::cluster::{assert_same_chains, Cluster};
use serde_json::Value;

fn leader_of(status: &Value) -> Option<String> {
    status["leader"].as_str().map(str::to_owned)
}

/// The key rotations of a chain: (height, epoch, recipients' node ids).
fn rotations(chain: &[StoredBlock]) -> Vec<(u64, u64, BTreeSet<u64>)> {
    chain
        .iter()
        .filter_map(|b| match &b.block.body {
            BlockBody::KeyRotation(k) => Some((
                b.block.header.height,
                k.epoch,
                k.wrapped.iter().map(|w| w.node_id).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Asserts `who` can unwrap no key of any rotation after `height`, and that records written
/// after it are sealed under such keys.
fn holds_no_key_after(chain: &[StoredBlock], who: &Identity, height: u64) {
    let id = who.fingerprint().node_id();
    let mut later_epochs = BTreeSet::new();
    for b in chain.iter().filter(|b| b.block.header.height > height) {
        match &b.block.body {
            BlockBody::KeyRotation(k) => {
                assert!(
                    k.wrapped.iter().all(|w| w.node_id != id),
                    "epoch {} wrapped to the removed member",
                    k.epoch
                );
                for w in &k.wrapped {
                    assert!(
                        unwrap_key(who, &w.wrapped).is_err(),
                        "the removed member unwrapped epoch {}",
                        k.epoch
                    );
                }
                later_epochs.insert(k.epoch);
            }
            BlockBody::Records(batch) => {
                for r in &batch.records {
                    assert!(
                        later_epochs.contains(&r.epoch),
                        "a record after the removal used an old epoch {}",
                        r.epoch
                    );
                }
            }
            _ => {}
        }
    }
    assert!(
        !later_epochs.is_empty(),
        "no key rotation after the removal"
    );
}

fn member_left(events: &[Value], name: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == "member_left" && e["name"] == name)
}

fn wait_member_left(c: &mut Cluster, on: &str, name: &str) {
    let p = c.peer(on);
    if member_left(&p.proc.seen_events(), name) {
        return;
    }
    p.proc.wait_event("member_left", |e| e["name"] == name);
}

#[test]
fn a_member_that_leaves_holds_no_later_key_and_the_group_goes_on() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("three members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    c.peer("p3").proc.send_line("p3 says goodbye");
    c.peer("p3").proc.send_line("/leave");
    let mut p3 = c.peers.remove("p3").unwrap();
    assert_eq!(
        p3.proc.wait_exit_status().code(),
        Some(0),
        "{}",
        p3.proc.stderr_tail(20)
    );
    assert!(
        member_left(&p3.proc.seen_events(), "p3"),
        "the leaver prints member_left"
    );
    wait_member_left(&mut c, "p1", "p3");
    wait_member_left(&mut c, "p2", "p3");
    // The group goes on without it.
    c.peer("p2").proc.send_line("after p3 left");
    c.peer("p1")
        .proc
        .wait_event("record", |e| e["text"] == "after p3 left");
    c.wait_status("two members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    c.stop_all();

    let chains: Vec<_> = ["p1", "p2"].iter().map(|n| (*n, c.chain_of(n))).collect();
    assert_same_chains(&chains);
    let chain = &chains[0].1;
    let p3_id = c.identity_of("p3");
    let removal = chain
        .iter()
        .find(|b| matches!(&b.block.body, BlockBody::Membership(m) if matches!(&m.change, conclave_shared::chain::MembershipChange::Remove { name, .. } if name == "p3")))
        .expect("a removal block")
        .block
        .header
        .height;
    // Its goodbye was delivered before it left.
    assert!(chain
        .iter()
        .any(|b| matches!(&b.block.body, BlockBody::Records(r) if r.author == "p3")));
    holds_no_key_after(chain, &p3_id, removal);
    // A restart with its old data does not bring it back.
    let mut again = harness::Proc::spawn(&mut c.peer_command("p3", None));
    let out_code = again.wait_exit_status().code();
    assert_eq!(out_code, Some(0));
    assert!(
        again.seen_events().iter().any(|e| e["event"] == "error")
            || again.stderr().contains("removed")
    );
}

#[test]
fn a_revoked_member_is_removed_rotated_out_and_refused() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("three members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    c.revoke("p3");
    wait_member_left(&mut c, "p1", "p3");
    wait_member_left(&mut c, "p2", "p3");
    // The revoked member stops by itself if its removal reaches it; the members may refuse
    // its certificate before that (they learn the revocation first), so it may also just be
    // locked out. Either way it stops cleanly when told.
    let mut p3 = c.peers.remove("p3").unwrap();
    assert_eq!(
        p3.proc.terminate().code(),
        Some(0),
        "{}",
        p3.proc.stderr_tail(20)
    );
    c.peer("p1").proc.send_line("after the revocation");
    c.peer("p2")
        .proc
        .wait_event("record", |e| e["text"] == "after the revocation");
    c.wait_status("two members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    c.stop_all();
    let chains: Vec<_> = ["p1", "p2"].iter().map(|n| (*n, c.chain_of(n))).collect();
    assert_same_chains(&chains);
    let chain = &chains[0].1;
    let revocation = chain
        .iter()
        .find(|b| matches!(&b.block.body, BlockBody::Revocation(r) if r.revocation.statement.name == "p3"))
        .expect("a revocation block")
        .block
        .header
        .height;
    holds_no_key_after(chain, &c.identity_of("p3"), revocation);
}

#[test]
fn a_leader_that_leaves_is_rotated_out_by_the_next_leader() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("p1 leads three", |s| {
        leader_of(s).as_deref() == Some("p1")
            && s["members"].as_array().is_some_and(|m| m.len() == 3)
    });
    c.peer("p1").proc.send_line("/leave");
    let mut p1 = c.peers.remove("p1").unwrap();
    assert_eq!(
        p1.proc.wait_exit_status().code(),
        Some(0),
        "{}",
        p1.proc.stderr_tail(20)
    );
    wait_member_left(&mut c, "p2", "p1");
    c.wait_status("a new leader of two", |s| {
        leader_of(s).is_some_and(|l| l != "p1")
            && s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    c.peer("p2").proc.send_line("after the leader left");
    c.peer("p3")
        .proc
        .wait_event("record", |e| e["text"] == "after the leader left");
    c.stop_all();
    let chains: Vec<_> = ["p2", "p3"].iter().map(|n| (*n, c.chain_of(n))).collect();
    assert_same_chains(&chains);
    let chain = &chains[0].1;
    let p1_id = c.identity_of("p1");
    let removal = chain
        .iter()
        .find(|b| matches!(&b.block.body, BlockBody::Membership(m) if matches!(&m.change, conclave_shared::chain::MembershipChange::Remove { name, .. } if name == "p1")))
        .expect("a removal block")
        .block
        .header
        .clone();
    // The removal was signed by p1 itself; the next rotation by another leader.
    let rot = rotations(chain);
    let (h, _, who) = rot
        .iter()
        .find(|(h, _, _)| *h > removal.height)
        .expect("a rotation after p1 left");
    assert!(!who.contains(&p1_id.fingerprint().node_id()));
    let rotated_by = chain[*h as usize].block.header.leader;
    assert_ne!(
        rotated_by,
        p1_id.fingerprint().node_id(),
        "the leaver must not draw the next key"
    );
    holds_no_key_after(chain, &p1_id, removal.height);
}

/// An event the peer printed already, or the next one to match.
fn seen_or_wait(p: &mut harness::cluster::Peer, pred: impl Fn(&Value) -> bool) -> Value {
    if let Some(e) = p.proc.seen_events().into_iter().find(|e| pred(e)) {
        return e;
    }
    let name = "record";
    p.proc.wait_event(name, |e| pred(e))
}

/// Starts p3 after p1 wrote a record, and returns the text p3 sees for that record (None:
/// it cannot decrypt it) and for one written after it joined.
fn newcomer_reads(share_history: bool) -> (Option<String>, Option<String>) {
    let yaml = include_str!("../config.yml").replace(
        "share_history: false",
        &format!("share_history: {share_history}"),
    );
    let (mut c, config) = Cluster::with_peers_config(2, &yaml);
    let config = config.to_str().unwrap().to_owned();
    c.peer("p1").proc.send_line("written before p3 joined");
    c.peer("p2")
        .proc
        .wait_event("record", |e| e["text"] == "written before p3 joined");
    c.start_peer_with("p3", None, &["--config", &config]);
    c.wait_joined("p3");
    let before = seen_or_wait(c.peer("p3"), |e| {
        e["event"] == "record" && e["author"] == "p1" && e["seq"] == 1
    });
    c.peer("p1").proc.send_line("written after p3 joined");
    let after = seen_or_wait(c.peer("p3"), |e| {
        e["event"] == "record" && e["author"] == "p1" && e["seq"] == 2
    });
    (
        before["text"].as_str().map(str::to_owned),
        after["text"].as_str().map(str::to_owned),
    )
}

#[test]
fn with_share_history_a_newcomer_reads_what_was_written_before_it_joined() {
    let (before, after) = newcomer_reads(true);
    assert_eq!(before.as_deref(), Some("written before p3 joined"));
    assert_eq!(after.as_deref(), Some("written after p3 joined"));
}

#[test]
fn without_share_history_a_newcomer_reads_only_from_its_admission_on() {
    let (before, after) = newcomer_reads(false);
    assert_eq!(
        before, None,
        "a newcomer decrypted a record from before its admission"
    );
    assert_eq!(after.as_deref(), Some("written after p3 joined"));
}

/// Sends a Raft vote request as peer `name` (its own key and certificate) to `target`;
/// returns the reply, or why the exchange failed.
fn raft_vote_as(
    c: &Cluster,
    name: &str,
    target: std::net::SocketAddr,
) -> Result<conclave_peer::rpc::RaftReply, String> {
    use conclave_shared::cert::{Certificate, Role};
    use conclave_shared::codec::Canonical;
    use conclave_shared::quic::{self, MemberTrust, RevokedSerials, ServerTrust, TlsIdentity};
    use conclave_shared::wire::{read_frame, write_frame, ALPN_RAFT};
    let id = c.identity_of(name);
    let cert = Certificate::from_canonical(
        &std::fs::read(c.path().join("peers").join(name).join("certificate.bin")).unwrap(),
    )
    .unwrap();
    let root = conclave_shared::identity::PublicKey::load_pem(&c.root_key()).unwrap();
    let tls = TlsIdentity::new(&id, Some(&cert)).unwrap();
    let trust = MemberTrust::new(root, &[Role::Member], RevokedSerials::new());
    let cfg = quic::client_config(Some(&tls), ServerTrust::Members(trust), &[ALPN_RAFT]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let exchange = async {
            let conn = ep
                .connect_with(cfg, target, quic::SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let req = conclave_peer::rpc::RaftRequest::Vote(openraft::raft::VoteRequest {
                vote: openraft::Vote::new(1000, id.fingerprint().node_id()),
                last_log_id: None,
            });
            write_frame(&mut send, &req, 1 << 20)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_frame::<_, conclave_peer::rpc::RaftReply>(&mut recv, 1 << 20)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no reply".to_string())
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn a_member_that_left_cannot_speak_raft_and_a_revoked_one_cannot_even_connect() {
    let mut c = Cluster::with_peers(4);
    c.wait_status("four members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 4)
    });
    c.peer("p3").proc.send_line("/leave");
    let mut p3 = c.peers.remove("p3").unwrap();
    assert_eq!(p3.proc.wait_exit_status().code(), Some(0));
    c.revoke("p4");
    wait_member_left(&mut c, "p1", "p3");
    wait_member_left(&mut c, "p1", "p4");
    let target = c.peers["p2"].addr;
    let left = raft_vote_as(&c, "p3", target);
    assert!(
        matches!(&left, Ok(conclave_peer::rpc::RaftReply::Refused(why)) if why.contains("not a member")),
        "a member that left was heard on Raft: {left:?}"
    );
    let revoked = raft_vote_as(&c, "p4", target);
    assert!(
        revoked.is_err(),
        "a revoked certificate opened a channel: {revoked:?}"
    );
    // The group goes on, and its leader and term did not move.
    c.peer("p2").proc.send_line("still going");
    c.peer("p1")
        .proc
        .wait_event("record", |e| e["text"] == "still going");
}
