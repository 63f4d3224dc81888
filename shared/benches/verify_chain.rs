//! How fast `verify_chain` checks a chain of 100,000 records.
//!
//! Builds a chain (two members, one key rotation, then 100,000 records of 256-byte plaintext
//! sealed with the group key, signed in batches of 100), then times verifying it twice: from
//! blocks in memory, and from their stored bytes (decoding included), as `conclave verify`
//! would read them.
//!
//! Run: `cargo bench -p conclave-shared --bench verify_chain`. Without `--bench` (as under
//! `cargo test --all-targets`) it checks a small chain instead, so tests stay fast.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use conclave_shared::chain::{verify_chain, ChainBuilder, MemberRole, Rules, StoredBlock};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;

const RECORDS: usize = 100_000;
const RECORDS_PER_BATCH: usize = 100;
const PLAINTEXT_BYTES: usize = 256;
const KEY_BITS: usize = 2048;

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let full = std::env::args().any(|a| a == "--bench");
    let records = if full { RECORDS } else { 1_000 };

    let t = Instant::now();
    let root = Identity::generate(KEY_BITS)?;
    let alice = Identity::generate(KEY_BITS)?;
    let bob = Identity::generate(KEY_BITS)?;
    let keygen = t.elapsed();

    let t = Instant::now();
    let rules = Rules {
        max_record_bytes: 64 * 1024,
        share_history: false,
        max_voters: 5,
    };
    let mut b = ChainBuilder::new(&root, &alice, [7; 16], rules)?;
    b.admit(&alice, "alice", MemberRole::Voter, "127.0.0.1:7001")?;
    b.admit(&bob, "bob", MemberRole::Voter, "127.0.0.1:7002")?;
    b.rotate_key()?;
    let plaintext = [0x5a_u8; PLAINTEXT_BYTES];
    for i in 0..records / RECORDS_PER_BATCH {
        let author = if i % 2 == 0 { "alice" } else { "bob" };
        b.records(author, std::iter::repeat_n(&plaintext, RECORDS_PER_BATCH))?;
    }
    let blocks = b.into_blocks();
    let build = t.elapsed();

    let bytes: Vec<Vec<u8>> = blocks.iter().map(Canonical::to_canonical).collect();
    let total_bytes: usize = bytes.iter().map(Vec::len).sum();

    let t = Instant::now();
    let summary = verify_chain(root.public(), blocks.into_iter().map(Ok::<_, Infallible>))?;
    let verify_mem = t.elapsed();

    let t = Instant::now();
    let from_bytes = verify_chain(
        root.public(),
        bytes.iter().map(|b| StoredBlock::from_canonical(b)),
    )?;
    let verify_bytes = t.elapsed();
    assert_eq!(summary, from_bytes);

    println!(
        "chain: {} blocks, {records} records of {PLAINTEXT_BYTES} bytes in batches of \
         {RECORDS_PER_BATCH}, {:.1} MB stored; head {}",
        summary.count,
        total_bytes as f64 / 1e6,
        summary.head_hash
    );
    println!("keygen (3 x {KEY_BITS} bits): {keygen:.2?}");
    println!(
        "build:  {build:.2?} ({:.0} records/s, sealing and signing)",
        per_second(records, build)
    );
    println!(
        "verify, blocks in memory: {verify_mem:.2?} ({:.0} records/s, {:.0} blocks/s)",
        per_second(records, verify_mem),
        per_second(summary.count as usize, verify_mem)
    );
    println!(
        "verify, from stored bytes: {verify_bytes:.2?} ({:.0} records/s, {:.0} MB/s)",
        per_second(records, verify_bytes),
        total_bytes as f64 / 1e6 / verify_bytes.as_secs_f64()
    );
    Ok(())
}
