//! Cheap histories and chains for the checks' tests.

use conclave_shared::chain::BlockHash;

use crate::history::{Append, History, Outcome};
use crate::model::{BlockInfo, MemberChain, RecordId};

/// A block whose hash is made from `tag`, holding `records` as `(author, seq)`.
pub(crate) fn block(height: u64, tag: u8, records: &[(&str, u64)]) -> BlockInfo {
    BlockInfo {
        height,
        hash: BlockHash([tag; 32]),
        records: records.iter().map(|(a, s)| RecordId::new(*a, *s)).collect(),
    }
}

fn append(author: &str, seq: u64, outcome: Outcome) -> Append {
    Append {
        record: RecordId::new(author, seq),
        started_ms: 1,
        outcome,
        origin: format!("{author}.jsonl"),
    }
}

pub(crate) fn acked(author: &str, seq: u64, height: u64) -> Append {
    append(
        author,
        seq,
        Outcome::Acknowledged {
            height: Some(height),
            duplicate: false,
            time_ms: 2,
        },
    )
}

pub(crate) fn acked_again(author: &str, seq: u64, height: u64) -> Append {
    append(
        author,
        seq,
        Outcome::Acknowledged {
            height: Some(height),
            duplicate: true,
            time_ms: 3,
        },
    )
}

pub(crate) fn refused(author: &str, seq: u64) -> Append {
    append(
        author,
        seq,
        Outcome::Refused {
            reason: "stale epoch".into(),
            time_ms: 2,
        },
    )
}

pub(crate) fn indeterminate(author: &str, seq: u64) -> Append {
    append(
        author,
        seq,
        Outcome::Indeterminate {
            reason: "timed out".into(),
        },
    )
}

/// The blocks of a correct run: genesis and an admission, then alice 1–2 (one batch),
/// bob 1, alice 3, bob 2.
pub(crate) fn blocks() -> Vec<BlockInfo> {
    vec![
        block(0, 0, &[]),
        block(1, 1, &[]),
        block(2, 2, &[("alice", 1), ("alice", 2)]),
        block(3, 3, &[("bob", 1)]),
        block(4, 4, &[("alice", 3)]),
        block(5, 5, &[("bob", 2)]),
    ]
}

/// A correct run: three members, carol lagging at height 3. Bob's seq 2 timed out but made
/// it, his seq 3 timed out and did not; alice's seq 3 was first refused, then reused and
/// acknowledged twice (once as a duplicate); alice's seq 4 was refused and never reused.
pub(crate) fn correct() -> (History, Vec<MemberChain>) {
    let history = History {
        appends: vec![
            acked("alice", 1, 2),
            acked("alice", 2, 2),
            refused("alice", 3),
            acked("alice", 3, 4),
            acked_again("alice", 3, 4),
            refused("alice", 4),
            acked("bob", 1, 3),
            indeterminate("bob", 2),
            indeterminate("bob", 3),
        ],
    };
    let chains = vec![
        MemberChain::new("alice", blocks()),
        MemberChain::new("bob", blocks()),
        MemberChain::new("carol", blocks()[..4].to_vec()),
    ];
    (history, chains)
}

/// The messages of `violations`, for assertions.
pub(crate) fn messages(violations: &[crate::checker::Violation]) -> Vec<String> {
    violations.iter().map(|v| v.message.clone()).collect()
}
