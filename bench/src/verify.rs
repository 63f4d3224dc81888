//! `verify`: offline verification of a long chain, as `conclave verify` does it — from the
//! stored bytes, decoding included, under nothing but the root public key.

use std::time::Instant;

use conclave_shared::chain::{verify_chain, ChainBuilder, MemberRole, Rules, StoredBlock};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;
use serde::Serialize;

use crate::group::RECORD_BYTES;
use crate::BenchError;

#[derive(Debug, Clone, Serialize)]
pub struct Verify {
    pub records: usize,
    pub records_per_block: usize,
    pub blocks: u64,
    pub stored_bytes: usize,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub blocks_per_sec: f64,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// Builds a chain of two members and `records` records of [`RECORD_BYTES`] (sealed under the
/// group key, signed by their author `per_block` at a time), then times verifying its stored
/// bytes.
pub fn verify(records: usize, per_block: usize) -> Result<Verify, BenchError> {
    let per_block = per_block.max(1);
    let root = Identity::generate(2048).map_err(err)?;
    let alice = Identity::generate(2048).map_err(err)?;
    let bob = Identity::generate(2048).map_err(err)?;
    let rules = Rules {
        max_record_bytes: 64 * 1024,
        share_history: false,
        max_voters: 5,
    };
    let mut b = ChainBuilder::new(&root, &alice, [7; 16], rules).map_err(err)?;
    b.admit(&alice, "alice", MemberRole::Voter, "127.0.0.1:7001")
        .map_err(err)?;
    b.admit(&bob, "bob", MemberRole::Voter, "127.0.0.1:7002")
        .map_err(err)?;
    b.rotate_key().map_err(err)?;
    let plaintext = [0x5a_u8; RECORD_BYTES];
    let mut left = records;
    let mut i = 0;
    while left > 0 {
        let n = left.min(per_block);
        let author = if i % 2 == 0 { "alice" } else { "bob" };
        b.records(author, std::iter::repeat_n(&plaintext, n))
            .map_err(err)?;
        left -= n;
        i += 1;
    }
    let bytes: Vec<Vec<u8>> = b
        .into_blocks()
        .iter()
        .map(Canonical::to_canonical)
        .collect();
    let stored_bytes = bytes.iter().map(Vec::len).sum();
    let t = Instant::now();
    let summary = verify_chain(
        root.public(),
        bytes.iter().map(|b| StoredBlock::from_canonical(b)),
    )
    .map_err(|f| BenchError::Other(format!("the built chain does not verify: {f:?}")))?;
    let seconds = t.elapsed().as_secs_f64();
    Ok(Verify {
        records,
        records_per_block: per_block,
        blocks: summary.count,
        stored_bytes,
        seconds,
        records_per_sec: records as f64 / seconds,
        blocks_per_sec: summary.count as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_chain_verifies_and_is_counted() {
        let v = super::verify(250, 100).unwrap();
        assert_eq!(v.records, 250);
        // genesis, two admissions, a rotation, then 3 record blocks
        assert_eq!(v.blocks, 4 + 3);
        assert!(v.stored_bytes > 250 * super::RECORD_BYTES);
        assert!(v.records_per_sec > 0.0);
    }
}
