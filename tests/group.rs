//! The group end to end: real key manager, proxy and peer processes on 127.0.0.1.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::cluster::Cluster;
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

#[test]
fn a_group_forms_and_records_reach_every_peer_in_one_order() {
    let mut c = Cluster::with_peers(3);
    let status = c.wait_status("three reachable members with a leader", |s| {
        leader_of(s).is_some()
            && s["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["reachable"] == true))
    });
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
}
