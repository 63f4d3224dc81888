//! `conclave verify` and `conclave chain` on stopped peers' data directories, and a tampered
//! block found by `verify` at its height.

mod harness;

use conclave_shared::chain::{BlockBody, StoredBlock};
use conclave_shared::codec::Canonical;
use harness::cluster::Cluster;
use harness::{conclave, run, Output};
use serde_json::Value;

fn inspect(c: &Cluster, args: &[&str]) -> Output {
    let mut cmd = conclave(c.path());
    cmd.arg("--json").args(args);
    run(cmd)
}

/// Writes `text` from `author` and waits until every peer in `on` has applied it.
fn write(c: &mut Cluster, author: &str, text: &str, on: &[&str]) {
    c.peer(author).proc.send_line(text);
    for p in on {
        c.peer(p).proc.wait_event("record", |v| v["text"] == text);
    }
}

/// The (text) of every record in `conclave --json chain` output, in chain order.
fn texts(out: &Output) -> Vec<Value> {
    out.json_lines()
        .iter()
        .filter(|b| b["event"] == "block")
        .flat_map(|b| b["records"].as_array().cloned().unwrap_or_default())
        .map(|r| r["text"].clone())
        .collect()
}

#[test]
fn verify_and_chain_read_stopped_peers() {
    let mut c = Cluster::with_peers(2);
    write(&mut c, "p1", "alpha one", &["p1", "p2"]);
    write(&mut c, "p2", "beta two", &["p1", "p2"]);
    c.start_peer("p3", None);
    c.wait_joined("p3");
    write(&mut c, "p3", "gamma three", &["p1", "p2", "p3"]);
    c.stop_all();

    let chain = c.chain_of("p1");
    let head = chain.last().expect("a chain");
    let head_hash = head.hash.to_hex();

    let v = inspect(&c, &["verify", "--data", "peers/p1"]);
    assert_eq!(v.code(), Some(0), "verify failed: {v:?}");
    let ev = &v.json_lines()[0];
    assert_eq!(ev["event"], "verified", "{ev}");
    assert_eq!(ev["count"], chain.len() as u64);
    assert_eq!(ev["head_height"], head.height());
    assert_eq!(ev["head_hash"], head_hash.as_str());
    assert_eq!(ev["records"], 3);
    assert!(v.stderr.contains("blocks/s"), "no speed: {}", v.stderr);

    let p2 = inspect(&c, &["chain", "--data", "peers/p2"]);
    assert_eq!(p2.code(), Some(0), "chain failed: {p2:?}");
    let blocks = p2.json_lines();
    assert_eq!(blocks.len(), chain.len(), "one line a block");
    assert_eq!(blocks.last().expect("blocks")["hash"], head_hash.as_str());
    assert_eq!(
        texts(&p2),
        vec![
            Value::from("alpha one"),
            Value::from("beta two"),
            Value::from("gamma three")
        ]
    );
    let authors: Vec<&Value> = blocks
        .iter()
        .filter(|b| b["kind"] == "records")
        .map(|b| &b["author"])
        .collect();
    assert_eq!(authors, ["p1", "p2", "p3"]);

    // p3 joined after the first two records, without share_history: it cannot read them.
    let p3 = inspect(&c, &["chain", "--data", "peers/p3"]);
    assert_eq!(p3.code(), Some(0), "chain failed: {p3:?}");
    assert_eq!(
        texts(&p3),
        vec![Value::Null, Value::Null, Value::from("gamma three")]
    );
    assert_eq!(
        p3.json_lines().last().expect("blocks")["hash"],
        head_hash.as_str()
    );

    let from = inspect(
        &c,
        &[
            "chain",
            "--data",
            "peers/p1",
            "--from",
            &head.height().to_string(),
        ],
    );
    assert_eq!(from.code(), Some(0), "chain --from failed: {from:?}");
    assert_eq!(from.json_lines().len(), 1);

    let missing = inspect(&c, &["verify", "--data", "peers/nobody"]);
    assert_eq!(missing.code(), Some(2), "{missing:?}");
}

/// The offset of `needle` in `hay`, searching from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[test]
fn verify_names_a_tampered_block() {
    let mut c = Cluster::with_peers(2);
    write(&mut c, "p1", "first record", &["p1", "p2"]);
    write(&mut c, "p2", "the record we alter", &["p1", "p2"]);
    write(&mut c, "p1", "a record after it", &["p1", "p2"]);

    // A running peer holds the file: verify says so instead of reading it.
    let running = inspect(&c, &["verify", "--data", "peers/p1"]);
    assert_eq!(running.code(), Some(1), "{running:?}");
    assert!(
        running.stderr.contains("is running; stop it first"),
        "{}",
        running.stderr
    );
    c.stop_all();

    let chain = c.chain_of("p1");
    let target: &StoredBlock = chain
        .iter()
        .find(|b| matches!(&b.block.body, BlockBody::Records(batch) if batch.author == "p2"))
        .expect("p2's records block");
    let BlockBody::Records(batch) = &target.block.body else {
        unreachable!()
    };
    let canonical = target.to_canonical();
    let ct = &batch.records[0].ciphertext;
    let ct_at = find(&canonical, ct, 0).expect("the ciphertext in the block's bytes");

    let file = c.path().join("peers/p1/raft/peer.redb");
    let mut bytes = std::fs::read(&file).expect("read the store");
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = find(&bytes, &canonical, at) {
        found.push(i);
        at = i + 1;
    }
    assert!(!found.is_empty(), "the block's bytes are not in the file");
    // Every copy (redb may keep an older page with the same block): one ciphertext byte each.
    for i in &found {
        bytes[i + ct_at + ct.len() / 2] ^= 0x01;
    }
    std::fs::write(&file, &bytes).expect("write the store");

    let v = inspect(&c, &["verify", "--data", "peers/p1"]);
    assert_eq!(v.code(), Some(1), "verify passed a tampered chain: {v:?}");
    let ev = &v.json_lines()[0];
    assert_eq!(ev["event"], "verify_failed", "{ev}");
    assert_eq!(ev["height"], target.height(), "{ev}");
    let line = format!("at height {}", target.height());
    assert!(v.stderr.contains(&line), "{}", v.stderr);
    assert_eq!(v.stderr.trim().lines().count(), 1, "{}", v.stderr);

    // p2's copy is untouched and still verifies.
    let ok = inspect(&c, &["verify", "--data", "peers/p2"]);
    assert_eq!(ok.code(), Some(0), "{ok:?}");
}

/// A peer killed with SIGKILL leaves a file redb must repair; `verify` reads a repaired copy
/// and leaves the original as it was.
#[test]
fn verify_reads_the_store_of_a_killed_peer_without_touching_it() {
    let mut c = Cluster::with_peers(2);
    write(&mut c, "p1", "before the crash", &["p1", "p2"]);
    c.kill9("p2");
    let file = c.path().join("peers/p2/raft/peer.redb");
    let before = std::fs::read(&file).expect("p2's store");

    let v = inspect(&c, &["verify", "--data", "peers/p2"]);
    assert_eq!(v.code(), Some(0), "verify failed: {v:?}");
    let ev = &v.json_lines()[0];
    assert_eq!(ev["event"], "verified", "{ev}");
    assert!(ev["count"].as_u64().unwrap() > 0, "{ev}");
    assert!(v.stderr.contains("not closed cleanly"), "{}", v.stderr);
    assert_eq!(
        std::fs::read(&file).expect("p2's store"),
        before,
        "verify changed the killed peer's file"
    );
}
