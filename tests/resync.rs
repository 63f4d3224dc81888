//! `conclave peer --resync`: a peer whose stored chain fails verification refuses to start,
//! naming the bad height; with `--resync` it discards its data and rejoins from scratch under
//! the same identity, and the leader drops its old Raft membership entry.

mod harness;

use std::time::{Duration, Instant};

use conclave_shared::chain::{BlockBody, MembershipChange, StoredBlock};
use harness::cluster::{assert_same_chains, Cluster};
use harness::DEADLINE;

/// Waits until peer `name` has printed at least `n` `record` events.
fn wait_records(c: &mut Cluster, name: &str, n: usize) {
    let until = Instant::now() + DEADLINE;
    let p = c.peer(name);
    loop {
        p.proc.drain();
        let got = p
            .proc
            .seen_events()
            .iter()
            .filter(|e| e["event"] == "record")
            .count();
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{name} saw {got} of {n} records\nstderr:\n{}",
            p.proc.stderr()
        );
        let _ = p.proc.next_line(Duration::from_millis(100));
    }
}

fn wait_equal_heads(c: &Cluster, members: usize) {
    c.wait_status("equal heads", |s| {
        let Some(m) = s["members"].as_array() else {
            return false;
        };
        m.len() == members
            && m.iter()
                .all(|x| x["hash"].is_string() && x["hash"] == m[0]["hash"])
    });
}

/// The height and first record's ciphertext of the first records block.
fn a_records_block(chain: &[StoredBlock]) -> (u64, Vec<u8>) {
    chain
        .iter()
        .find_map(|b| match &b.block.body {
            BlockBody::Records(batch) => batch
                .records
                .first()
                .map(|r| (b.block.header.height, r.ciphertext.clone())),
            _ => None,
        })
        .expect("a records block")
}

/// Flips one byte in every copy of `needle` in `file` (the block table, and the Raft log
/// entry it came from); returns how many copies there were.
fn flip_in_file(file: &std::path::Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).expect("read the peer database");
    let mut found = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + needle.len() / 2] ^= 0x01;
            found += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).expect("write the peer database");
    found
}

fn admissions_of(chain: &[StoredBlock], name: &str) -> usize {
    chain
        .iter()
        .filter(|b| match &b.block.body {
            BlockBody::Membership(m) => match &m.change {
                MembershipChange::Admit { cert, .. } => cert.name() == name,
                _ => false,
            },
            _ => false,
        })
        .count()
}

#[test]
fn a_damaged_chain_is_refused_and_resync_rejoins_from_scratch() {
    let mut c = Cluster::with_peers(3);
    c.wait_status("p1 leads", |s| s["leader"] == "p1");
    for i in 0..3 {
        c.peer("p2")
            .proc
            .send_line(&format!("before the damage {i}"));
    }
    wait_records(&mut c, "p3", 3);
    wait_equal_heads(&c, 3);
    c.stop("p3");

    // Damage one stored block of p3's chain.
    let before = c.chain_of("p3");
    let (height, needle) = a_records_block(&before);
    let db = c
        .path()
        .join("peers/p3")
        .join(conclave_peer::node::STORE_DIR)
        .join(conclave_peer::store::DB_FILE);
    assert!(
        flip_in_file(&db, &needle) > 0,
        "the block's bytes are not in {db:?}"
    );

    // The group goes on without p3.
    for i in 0..2 {
        c.peer("p1")
            .proc
            .send_line(&format!("while p3 is away {i}"));
    }
    wait_records(&mut c, "p2", 5);

    // (a) p3 refuses to start, naming the bad height, and offers --resync.
    let out = harness::run(c.peer_command("p3", None));
    assert_eq!(out.code(), Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("conclave:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line; stderr:\n{}", out.stderr);
    let line = lines[0];
    assert!(
        line.contains(&format!("at height {height}")),
        "the bad height {height} is named: {line}"
    );
    assert!(
        line.contains("run again with --resync to discard this member's data and rejoin"),
        "{line}"
    );

    // (b) With --resync it discards its data and rejoins under the same identity.
    c.start_peer_with("p3", None, &["--resync"]);
    let joined = c.wait_joined("p3");
    assert_eq!(
        joined["role"], "voter",
        "its chain role is restored: {joined}"
    );
    // It re-learns its keys from the replicated chain: every record reads again.
    wait_records(&mut c, "p3", 5);
    wait_equal_heads(&c, 3);
    let p3_err = c.peer("p3").proc.stderr();
    assert!(
        p3_err.contains("--resync: discarding"),
        "p3 stderr:\n{p3_err}"
    );
    // The leader dropped p3's old Raft membership entry (it lost its log and its vote) and
    // added it back as a learner that caught up before it could vote again.
    let p1_err = c.peer("p1").proc.stderr();
    assert!(
        p1_err
            .lines()
            .any(|l| l.contains("dropped the Raft membership entry") && l.contains("p3")),
        "p1 stderr:\n{p1_err}"
    );
    c.peer("p3").proc.send_line("after the resync");
    wait_records(&mut c, "p1", 6);
    wait_equal_heads(&c, 3);

    c.stop_all();
    let chains: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| (*n, c.chain_of(n)))
        .collect();
    assert_same_chains(&chains);
    let after = &chains[2].1;
    assert!(after.len() > before.len());
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the resynced chain holds the original blocks"
    );
    // Same member, same key: no second admission.
    assert_eq!(admissions_of(after, "p3"), 1);
}
