//! Snapshots end to end: peers that snapshot every 500 Raft entries and purge their logs; a
//! member joining later can only be brought up to date by a snapshot.

mod harness;

use std::time::{Duration, Instant};

use harness::cluster::{assert_same_chains, record_ids, Cluster};
use serde_json::Value;

const RECORDS: u64 = 2_000;
const SNAPSHOT_EVERY: u64 = 500;

/// The shipped config with snapshots every 500 entries and a short log behind them.
fn snapshot_config() -> String {
    let shipped = include_str!("../config.yml");
    let text = shipped
        .replace(
            "snapshot_every_entries: 10000",
            &format!("snapshot_every_entries: {SNAPSHOT_EVERY}"),
        )
        .replace("keep_log_entries: 1000", "keep_log_entries: 20");
    assert_ne!(
        text, shipped,
        "config.yml no longer has the values this test edits"
    );
    text
}

fn members(s: &Value) -> &[Value] {
    s["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `n` reachable members, one leader, and every head the same hash at `height` or above.
fn same_heads(s: &Value, n: usize, height: u64) -> bool {
    let m = members(s);
    s["leader"].is_string()
        && m.len() == n
        && m.iter().all(|x| {
            x["reachable"] == true
                && x["hash"].is_string()
                && x["hash"] == m[0]["hash"]
                && x["height"].as_u64().is_some_and(|h| h >= height)
        })
}

#[test]
fn a_peer_joining_after_2000_records_gets_a_snapshot_and_the_same_head() {
    let (mut c, config) = Cluster::with_peers_config(3, &snapshot_config());
    let config = config.to_str().unwrap().to_owned();
    c.wait_status("three members led by p1", |s| {
        same_heads(s, 3, 0) && s["leader"] == "p1"
    });

    // One line at a time, each waiting for its `committed`: every record is its own batch,
    // so its own Raft entry, and the log passes four snapshot points.
    let started = Instant::now();
    let mut last_height = 0;
    for i in 1..=RECORDS {
        let p1 = c.peer("p1");
        p1.proc.send_line(&format!("record {i}"));
        let ev = p1.proc.wait_event("committed", |_| true);
        assert_eq!(ev["seq"].as_u64(), Some(i), "{ev}");
        last_height = ev["height"].as_u64().unwrap();
    }
    eprintln!(
        "{RECORDS} records committed one by one in {:?}; head at height {last_height}",
        started.elapsed()
    );
    c.wait_status("three equal heads at the last record", |s| {
        same_heads(s, 3, last_height)
    });

    // The newcomer's first entries are long purged: only a snapshot can bring it up.
    let spawned = Instant::now();
    c.start_peer_with("p4", None, &["--config", &config]);
    let installed = c.peer("p4").proc.wait_event("snapshot_installed", |_| true);
    let at = installed["height"].as_u64().expect("height");
    eprintln!(
        "p4: snapshot_installed at height {at} after {:?}",
        spawned.elapsed()
    );
    assert!(
        at >= SNAPSHOT_EVERY && at <= last_height + 10,
        "snapshot at height {at}, head {last_height}"
    );
    c.wait_joined("p4");
    let s = c.wait_status("four equal heads", |s| same_heads(s, 4, last_height));
    eprintln!(
        "p4 joined and has the group's head after {:?}: {s}",
        spawned.elapsed()
    );

    // The blocks the snapshot brought were not announced one by one.
    let p4 = c.peer("p4");
    p4.proc.drain();
    let events = p4.proc.seen_events();
    let early: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "record" && e["height"].as_u64().is_some_and(|h| h <= at))
        .collect();
    assert!(early.is_empty(), "p4 announced snapshot blocks: {early:?}");
    let p4_log = p4.proc.stderr();

    // A member whose log was purged restarts (openraft rebuilds its snapshot from the chain
    // at start-up) and keeps up with one more record.
    let p2_addr = c.peer("p2").addr;
    c.stop("p2");
    c.start_peer_with("p2", Some(p2_addr), &["--config", &config]);
    c.wait_joined("p2");
    let p1 = c.peer("p1");
    p1.proc.send_line("after the restart");
    let ev = p1.proc.wait_event("committed", |_| true);
    let last_height = ev["height"].as_u64().unwrap();
    c.wait_status("four equal heads after p2's restart", |s| {
        same_heads(s, 4, last_height)
    });

    // Stopped, every stored chain verifies with the root key alone and all are the same.
    c.stop_all();
    let chains: Vec<_> = ["p1", "p2", "p3", "p4"]
        .iter()
        .map(|n| (*n, c.chain_of(n)))
        .collect();
    assert_same_chains(&chains);
    let ids = record_ids(&chains[0].1);
    assert_eq!(ids.len() as u64, RECORDS + 1);
    assert!(ids.iter().zip(1..).all(|((a, s), i)| a == "p1" && *s == i));
    let line = p4_log
        .lines()
        .find(|l| l.contains("snapshot verified and handed to Raft"))
        .unwrap_or_else(|| panic!("p4 did not log its snapshot:\n{p4_log}"));
    eprintln!("p4: {line}");
}

#[test]
fn without_snapshots_in_the_config_a_joiner_replays_the_log() {
    // The shipped defaults snapshot only every 10,000 entries: far away here.
    let mut c = Cluster::with_peers(2);
    for i in 1..=5 {
        let p1 = c.peer("p1");
        p1.proc.send_line(&format!("line {i}"));
        p1.proc.wait_event("committed", |_| true);
    }
    c.start_peer("p3", None);
    c.wait_joined("p3");
    let p3 = c.peer("p3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |p: &harness::Proc| {
        p.seen_events()
            .iter()
            .filter(|e| e["event"] == "record")
            .count()
    };
    while count(&p3.proc) < 5 && Instant::now() < deadline {
        let _ = p3.proc.next_line(Duration::from_millis(200));
    }
    let records = count(&p3.proc);
    assert_eq!(records, 5, "p3 did not replay the records");
    assert!(
        !p3.proc
            .seen_events()
            .iter()
            .any(|e| e["event"] == "snapshot_installed"),
        "no snapshot is needed when the log is whole"
    );
}

mod forged {
    use super::*;
    use conclave_peer::rpc::{self, RaftReply, RaftRequest};
    use conclave_shared::cert::{Certificate, Role};
    use conclave_shared::codec::Canonical;
    use conclave_shared::identity::{Identity, PublicKey};
    use conclave_shared::quic::{self, MemberTrust, RevokedSerials, ServerTrust, TlsIdentity};
    use conclave_shared::wire::{write_frame, ALPN_RAFT};

    /// Sends `target` a snapshot stream as member `who` (its own key and certificate, its own
    /// node id in the vote): the header announcing `len` bytes, then `data`, then the end.
    async fn send_as(
        c: &Cluster,
        who: &str,
        target: std::net::SocketAddr,
        term: u64,
        len: u64,
        data: &[u8],
    ) -> Result<RaftReply, String> {
        let root = PublicKey::load_pem(&c.root_key()).unwrap();
        let dir = c.path().join("peers").join(who);
        let id = Identity::load_pem(&dir.join("identity.pem")).unwrap();
        let cert =
            Certificate::from_canonical(&std::fs::read(dir.join("certificate.bin")).unwrap())
                .unwrap();
        let tls = TlsIdentity::new(&id, Some(&cert)).unwrap();
        let trust = MemberTrust::new(root, &[Role::Member], RevokedSerials::new());
        let cfg =
            quic::client_config(Some(&tls), ServerTrust::Members(trust), &[ALPN_RAFT]).unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let node = id.fingerprint().node_id();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let conn = ep
            .connect_with(cfg, target, quic::SERVER_NAME)
            .map_err(|e| err(&e))?
            .await
            .map_err(|e| err(&e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(&e))?;
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(term, node),
                1_000_000,
            )),
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        };
        let header = RaftRequest::Snapshot {
            vote: openraft::Vote::new_committed(term, node),
            meta,
            len,
        };
        write_frame(&mut send, &header, rpc::MAX_REQUEST_BYTES)
            .await
            .map_err(|e| err(&e))?;
        // The receiver may stop reading early; its answer says why.
        let _ = send.write_all(data).await;
        let _ = send.finish();
        rpc::read_snapshot_reply(&mut recv, Duration::from_secs(10))
            .await
            .map_err(|e| err(&e))
    }

    #[test]
    fn a_forged_or_broken_snapshot_is_refused_and_changes_nothing() {
        let mut c = Cluster::with_peers(2);
        let p1 = c.peer("p1");
        p1.proc.send_line("before");
        let h = p1.proc.wait_event("committed", |_| true)["height"]
            .as_u64()
            .unwrap();
        let before = c.wait_status("two equal heads", |s| {
            same_heads(s, 2, h) && s["leader"] == "p1"
        });
        let term = before["term"].as_u64().unwrap();
        let target = c.peers["p2"].addr;

        // Garbage after the snapshot magic, a stream cut short, and a length over the limit.
        let mut garbage = b"conclave-snapshot".to_vec();
        garbage.extend_from_slice(&[0, 1]);
        garbage.extend((0..100_000u32).map(|i| (i % 253) as u8));
        let cases: Vec<(&str, u64, Vec<u8>)> = vec![
            ("garbage", garbage.len() as u64, garbage.clone()),
            ("a cut stream", 5 * 1024 * 1024, garbage.clone()),
            ("too large", rpc::MAX_SNAPSHOT_BYTES + 1, Vec::new()),
        ];
        let rt = tokio::runtime::Runtime::new().unwrap();
        for (what, len, data) in cases {
            let reply = rt.block_on(send_as(&c, "p1", target, term, len, &data));
            assert!(
                matches!(&reply, Ok(RaftReply::SnapshotRefused(_))),
                "{what}: {reply:?}"
            );
        }
        let after = c.status();
        assert_eq!(
            after["members"], before["members"],
            "a refused snapshot changed a head"
        );
        let p2_log = c.peer("p2").proc.stderr();
        for l in p2_log.lines().filter(|l| l.contains("refusing a snapshot")) {
            eprintln!("p2: {l}");
        }
        assert!(
            p2_log.matches("refusing a snapshot").count() >= 3,
            "p2's log:\n{p2_log}"
        );

        // The group goes on as before.
        let p1 = c.peer("p1");
        p1.proc.send_line("after");
        let h = p1.proc.wait_event("committed", |_| true)["height"]
            .as_u64()
            .unwrap();
        c.wait_status("two equal heads after", |s| same_heads(s, 2, h));
        c.stop_all();
        let chains: Vec<_> = ["p1", "p2"].iter().map(|n| (*n, c.chain_of(n))).collect();
        assert_same_chains(&chains);
        assert_eq!(record_ids(&chains[0].1).len(), 2);
    }
}
