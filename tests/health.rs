//! The group's health, end to end with real processes: members exchange signed heads and
//! report a member whose stored chain differs (`head_mismatch`); the leader replaces a voter
//! that stays unreachable with a caught-up learner, so the group keeps its quorum.

mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::cluster::{assert_same_chains, record_ids, Cluster};
use harness::DEADLINE;
use serde_json::Value;

fn members(s: &Value) -> &[Value] {
    s["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Every member reachable, one leader, and all heads the same hash.
fn same_heads(s: &Value, n: usize) -> bool {
    let m = members(s);
    s["leader"].is_string()
        && m.len() == n
        && m.iter()
            .all(|x| x["reachable"] == true && x["hash"].is_string() && x["hash"] == m[0]["hash"])
}

/// Name → role ("voter" / "learner") as the status lists them.
fn roles(s: &Value) -> BTreeMap<String, String> {
    members(s)
        .iter()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_owned(),
                m["role"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn line_of<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(String::as_str)
}

/// Asks `/members` on `peer` until `pred` holds for its lines; returns them.
fn wait_members(
    c: &mut Cluster,
    peer: &str,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let until = Instant::now() + DEADLINE;
    loop {
        let lines = c.ask(peer, "/members", "members");
        if pred(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < until,
            "{peer}'s /members never showed {what}: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The head a `/members` line shows: its last two words, height and short hash.
fn head_in(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    words[words.len().saturating_sub(2)..].join(" ")
}

/// Waits for an event as [`harness::Proc::wait_event`] does, unless one was read already
/// (say, while waiting for another).
fn wait_seen(c: &mut Cluster, peer: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let p = &mut c.peer(peer).proc;
    p.drain();
    match p
        .seen_events()
        .into_iter()
        .find(|e| e["event"] == name && pred(e))
    {
        Some(e) => e,
        None => p.wait_event(name, pred),
    }
}

/// The `head_mismatch` events `peer` printed so far.
fn mismatches_seen(c: &mut Cluster, peer: &str) -> Vec<Value> {
    let p = c.peer(peer);
    p.proc.drain();
    p.proc
        .seen_events()
        .into_iter()
        .filter(|e| e["event"] == "head_mismatch")
        .collect()
}

/// Deletes the last block of a stopped peer's store, as restoring an older backup of the
/// chain would, and leaves everything else (the Raft log, and the applied pointer that says
/// that block was applied) as it was. Returns the height removed.
fn roll_back_head_block(file: &Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    // The peer's block table (peer/src/store/schema.rs): height → stored block.
    const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
    let db = redb::Database::open(file).expect("open the stopped peer's store");
    let head = {
        let tx = db.begin_read().expect("read transaction");
        let table = tx.open_table(BLOCKS).expect("blocks table");
        let last = table.last().expect("read the last block");
        last.map(|(k, _)| k.value()).expect("a stored block")
    };
    let tx = db.begin_write().expect("write transaction");
    {
        let mut table = tx.open_table(BLOCKS).expect("blocks table");
        table.remove(head).expect("remove the head block");
    }
    tx.commit().expect("commit");
    head
}

/// A chain altered behind a member's back cannot be seen by the member itself: redb keeps
/// the pages a running peer wrote in its own cache (and applied blocks are committed without
/// fsync), so bytes flipped in the file under a running peer are neither read back nor
/// guaranteed to survive; and an altered block that breaks a hash, a signature or a
/// checkpoint is refused when the store opens (tests/resync.rs). So the alteration here is
/// one that every check passes: while the member is stopped its last block is deleted, as a
/// restore from an older backup would do, and its Raft state still says that entry was
/// applied. Started again, it builds its next blocks on the older head: its chain verifies on
/// its own and differs from everyone's at every height from there on. Only the head exchange
/// can tell, and the others must report it.
#[test]
fn a_member_whose_stored_chain_is_altered_is_reported_by_the_others() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("p1 leads", |s| s["leader"] == "p1");
    for i in 0..3 {
        c.peer("p2")
            .proc
            .send_line(&format!("before the rollback {i}"));
    }
    c.peer("p3")
        .proc
        .wait_event("record", |e| e["text"] == "before the rollback 2");
    c.wait_status("equal heads", |s| same_heads(s, 3));

    // Followers know the others' heads from the exchange alone (only the leader tracks
    // replication): p3's /members shows p2 reachable, at p3's own head.
    let lines = wait_members(&mut c, "p3", "p2's head equal to p3's", |lines| {
        match (line_of(lines, "p2"), line_of(lines, "p3")) {
            (Some(p2), Some(p3)) => p2.contains("yes, head") && head_in(p2) == head_in(p3),
            _ => false,
        }
    });
    assert!(lines.iter().all(|l| !l.contains("MISMATCH")), "{lines:#?}");
    // A healthy group reports nothing.
    for p in ["p1", "p2", "p3"] {
        let seen = mismatches_seen(&mut c, p);
        assert!(
            seen.is_empty(),
            "{p} reported a mismatch in a healthy group: {seen:#?}"
        );
    }

    let p3_addr = c.peer("p3").addr;
    c.stop("p3");
    let removed = roll_back_head_block(&c.path().join("peers/p3/raft/peer.redb"));
    c.start_peer("p3", Some(p3_addr));
    c.wait_joined("p3");
    // A new block for everyone: p3 builds it at the height it lost, on another block.
    c.peer("p1").proc.send_line("after the rollback");
    c.peer("p3")
        .proc
        .wait_event("record", |e| e["text"] == "after the rollback");

    let from_p1 = c
        .peer("p1")
        .proc
        .wait_event("head_mismatch", |e| e["peer"] == "p3");
    let from_p2 = c
        .peer("p2")
        .proc
        .wait_event("head_mismatch", |e| e["peer"] == "p3");
    for ev in [&from_p1, &from_p2] {
        assert!(ev["height"].as_u64().is_some_and(|h| h >= removed), "{ev}");
        assert_ne!(ev["ours"], ev["theirs"], "{ev}");
    }
    // Nobody blames a member whose chain is intact.
    for p in ["p1", "p2"] {
        let wrong: Vec<Value> = mismatches_seen(&mut c, p)
            .into_iter()
            .filter(|e| e["peer"] != "p3")
            .collect();
        assert!(wrong.is_empty(), "{p} blamed an intact member: {wrong:#?}");
    }

    // `conclave status` shows what p1 and p2 found; so do their /status and /members.
    c.wait_status("p1 and p2 reporting p3", |s| {
        members(s)
            .iter()
            .filter(|m| m["name"] == "p1" || m["name"] == "p2")
            .all(|m| {
                m["head_mismatches"]
                    .as_array()
                    .is_some_and(|x| x.iter().any(|x| x["peer"] == "p3"))
            })
    });
    let status = c.ask("p1", "/status", "status");
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("head_mismatch p3 at height")),
        "{status:#?}"
    );
    wait_members(&mut c, "p2", "a mismatch on p3's line", |lines| {
        line_of(lines, "p3").is_some_and(|l| l.contains("HEAD MISMATCH"))
            && line_of(lines, "p1").is_some_and(|l| !l.contains("HEAD MISMATCH"))
    });

    // The hashes reported are the ones the chains hold at that height.
    c.stop_all();
    let p1 = c.chain_of("p1");
    let p3 = c.chain_of("p3");
    let h = from_p1["height"].as_u64().expect("a height") as usize;
    assert_eq!(from_p1["ours"], p1[h].hash.to_hex().as_str());
    assert_eq!(from_p1["theirs"], p3[h].hash.to_hex().as_str());
    assert_eq!(
        p1[..removed as usize],
        p3[..removed as usize],
        "the chains agree below the rollback"
    );
}

/// The shipped config with three voters at most and a short `dead_voter_after`.
fn replacement_config() -> String {
    let shipped = include_str!("../config.yml");
    let text = shipped
        .replace("max_voters: 5", "max_voters: 3")
        .replace("dead_voter_after: 10s", "dead_voter_after: 2s");
    assert_eq!(
        text.matches("max_voters: 3").count() + text.matches("dead_voter_after: 2s").count(),
        2,
        "config.yml no longer has the values this test edits"
    );
    text
}

/// Waits until the status lists exactly `voters` as the voters among `alive`, `alive`
/// reachable with one head, and one of them leads.
fn wait_voters(c: &Cluster, what: &str, alive: &[&str], n_voters: usize) -> Value {
    c.wait_status(what, |s| {
        let r = roles(s);
        let leader = s["leader"].as_str().unwrap_or("");
        let live: Vec<&Value> = members(s)
            .iter()
            .filter(|m| alive.iter().any(|a| m["name"] == *a))
            .collect();
        alive.contains(&leader)
            && live.len() == alive.len()
            && live
                .iter()
                .all(|m| m["reachable"] == true && m["hash"] == live[0]["hash"])
            && alive
                .iter()
                .filter(|a| r.get(**a).map(String::as_str) == Some("voter"))
                .count()
                == n_voters
            && r.values().filter(|x| *x == "voter").count() == n_voters
    })
}

#[test]
fn dead_voters_are_replaced_by_learners_and_the_group_keeps_committing() {
    let (mut c, config) = Cluster::with_peers_config(5, &replacement_config());
    let config = config.to_str().expect("a UTF-8 path").to_owned();
    let s = wait_voters(
        &c,
        "three voters, two learners",
        &["p1", "p2", "p3", "p4", "p5"],
        3,
    );
    let r = roles(&s);
    assert_eq!(
        r.iter()
            .filter(|(_, x)| *x == "voter")
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["p1", "p2", "p3"],
        "{s:#}"
    );

    // First the leader: another voter takes over, and after dead_voter_after replaces it.
    let a = s["leader"].as_str().expect("a leader").to_owned();
    let a_addr = c.kill9(&a);
    let alive: Vec<String> = ["p1", "p2", "p3", "p4", "p5"]
        .into_iter()
        .filter(|n| *n != a)
        .map(str::to_owned)
        .collect();
    let alive_refs: Vec<&str> = alive.iter().map(String::as_str).collect();
    let s = wait_voters(
        &c,
        "a learner promoted in place of the dead leader",
        &alive_refs,
        3,
    );
    let r = roles(&s);
    assert_eq!(r.get(&a).map(String::as_str), Some("learner"), "{s:#}");
    let promoted: Vec<&str> = ["p4", "p5"]
        .into_iter()
        .filter(|n| r.get(*n).map(String::as_str) == Some("voter"))
        .collect();
    assert_eq!(promoted.len(), 1, "{s:#}");
    let leader = s["leader"].as_str().expect("a leader").to_owned();
    // Every member saw the role changes in the chain.
    for p in &alive {
        wait_seen(&mut c, p, "role_changed", |e| {
            e["name"] == a.as_str() && e["role"] == "learner"
        });
        wait_seen(&mut c, p, "role_changed", |e| {
            e["name"] == promoted[0] && e["role"] == "voter"
        });
    }

    // Then a voter that does not lead: the two voters left are a majority of three, and the
    // leader replaces the dead one with the last learner.
    let b = ["p1", "p2", "p3"]
        .into_iter()
        .find(|n| *n != a && *n != leader)
        .expect("another original voter")
        .to_owned();
    c.kill9(&b);
    let alive: Vec<String> = alive.into_iter().filter(|n| *n != b).collect();
    let alive_refs: Vec<&str> = alive.iter().map(String::as_str).collect();
    let s = wait_voters(
        &c,
        "the last learner promoted in place of the second dead voter",
        &alive_refs,
        3,
    );
    let r = roles(&s);
    assert_eq!(r.get(&b).map(String::as_str), Some("learner"), "{s:#}");
    assert!(
        alive
            .iter()
            .all(|n| r.get(n).map(String::as_str) == Some("voter")),
        "{s:#}"
    );

    // Two of the three original voters are dead, and the group still commits.
    let writer = alive
        .iter()
        .find(|n| **n != leader)
        .expect("a follower")
        .clone();
    let text = "written with two of three first voters dead";
    let p = c.peer(&writer);
    p.proc.send_line(text);
    let committed = p.proc.wait_event("committed", |_| true);
    assert_eq!(committed["duplicate"], false, "{committed}");
    for n in &alive {
        wait_seen(&mut c, n, "record", |e| e["text"] == text);
    }

    // The first one comes back, as a learner, and catches up (the record included).
    c.start_peer_with(&a, Some(a_addr), &["--config", &config]);
    c.wait_joined(&a);
    wait_seen(&mut c, &a, "record", |e| e["text"] == text);
    let mut back = alive.clone();
    back.push(a.clone());
    let back_refs: Vec<&str> = back.iter().map(String::as_str).collect();
    let s = wait_voters(&c, "the first dead voter back and caught up", &back_refs, 3);
    assert_eq!(
        roles(&s).get(&a).map(String::as_str),
        Some("learner"),
        "{s:#}"
    );

    // One chain, with the record once.
    c.stop_all();
    let chains: Vec<(&str, _)> = back.iter().map(|n| (n.as_str(), c.chain_of(n))).collect();
    assert_same_chains(&chains);
    let ids = record_ids(&chains[0].1);
    assert_eq!(
        ids.iter().filter(|(author, _)| *author == writer).count(),
        1,
        "{ids:?}"
    );
}
