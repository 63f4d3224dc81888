//! Unit tests of the store, over real chains made by `ChainBuilder` (real certificates and
//! signatures), in temporary directories.

mod apply;
mod outbox;
mod restart;
mod snapshot;

use std::path::Path;
use std::sync::OnceLock;

use conclave_shared::chain::{verify_chain, ChainBuilder, ChainSummary, MemberRole, Rules};
use conclave_shared::chain::{Record, RecordBatch, StoredBlock};
use conclave_shared::codec::Canonical;
use conclave_shared::envelope::GroupKey;
use conclave_shared::identity::{Identity, NodeId};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

use super::{ChainReader, StateMachineStore, Store};
use crate::types::{Applied, Entry, LogId, Proposal};

pub(super) struct Ids {
    pub root: Identity,
    pub alice: Identity,
    pub bob: Identity,
    /// The root of another group.
    pub other_root: Identity,
}

/// Key generation is the slow part of these tests: once per test binary.
pub(super) fn ids() -> &'static Ids {
    static IDS: OnceLock<Ids> = OnceLock::new();
    IDS.get_or_init(|| {
        let key = || Identity::generate(2048).expect("key generation");
        Ids {
            root: key(),
            alice: key(),
            bob: key(),
            other_root: key(),
        }
    })
}

pub(super) const GROUP: [u8; 16] = [7; 16];
pub(super) const RULES: Rules = Rules {
    max_record_bytes: 4096,
    share_history: false,
    max_voters: 3,
};

pub(super) fn alice_id() -> NodeId {
    ids().alice.fingerprint().node_id()
}

/// genesis (alice leads), admit alice, admit bob, key rotation, alice [a1 a2], bob [b1],
/// alice [a3]: heights 0 to 6.
pub(super) fn builder() -> ChainBuilder<'static> {
    let ids = ids();
    let mut b = ChainBuilder::new(&ids.root, &ids.alice, GROUP, RULES).expect("genesis");
    b.admit(&ids.alice, "alice", MemberRole::Voter, "127.0.0.1:7001")
        .expect("admit alice");
    b.admit(&ids.bob, "bob", MemberRole::Voter, "127.0.0.1:7002")
        .expect("admit bob");
    b.rotate_key().expect("rotate");
    b.records("alice", [b"a1".as_slice(), b"a2"])
        .expect("a1 a2");
    b.records("bob", [b"b1".as_slice()]).expect("b1");
    b.records("alice", [b"a3".as_slice()]).expect("a3");
    b
}

pub(super) fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// The Raft entry a leader would have proposed for `block`, at log `index`.
pub(super) fn entry_for(index: u64, block: &StoredBlock) -> Entry {
    let h = &block.block.header;
    Entry {
        log_id: log_id(h.term, h.leader, index),
        payload: EntryPayload::Normal(Proposal::new(h.time_ms, &block.block.body)),
    }
}

/// A proposal of any bytes, by alice in term 1.
pub(super) fn raw_entry(index: u64, kind: u8, body: Vec<u8>) -> Entry {
    Entry {
        log_id: log_id(1, alice_id(), index),
        payload: EntryPayload::Normal(Proposal {
            time_ms: 1_700_000_001_000 + index,
            kind,
            body,
        }),
    }
}

pub(super) fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(1, alice_id(), index),
        payload: EntryPayload::Blank,
    }
}

/// The builder's blocks as entries at indexes `first..`.
pub(super) fn entries_for(blocks: &[StoredBlock], first: u64) -> Vec<Entry> {
    (first..)
        .zip(blocks)
        .map(|(i, b)| entry_for(i, b))
        .collect()
}

pub(super) fn open(dir: &Path) -> Store {
    Store::open(dir, ids().root.public().clone()).expect("open store")
}

pub(super) fn all_blocks(chain: &ChainReader) -> Vec<StoredBlock> {
    chain.blocks(0, u64::MAX).expect("read blocks")
}

pub(super) fn verify(chain: &ChainReader) -> ChainSummary {
    let blocks = all_blocks(chain).into_iter().map(Ok::<_, String>);
    verify_chain(ids().root.public(), blocks).expect("the stored chain verifies")
}

pub(super) async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> Vec<Applied> {
    sm.apply(entries)
        .await
        .expect("apply never fails for bad entries")
}

pub(super) fn block_reply(b: &StoredBlock) -> Applied {
    Applied::Block {
        height: b.height(),
        hash: b.hash,
    }
}

/// A batch of alice's records with these seqs, sealed under some key, as canonical bytes.
pub(super) fn alice_batch(seqs: &[u64]) -> Vec<u8> {
    let key = GroupKey::generate();
    let records = seqs
        .iter()
        .map(|s| Record::seal(&key, "alice", *s, 1, b"text").expect("seal"))
        .collect();
    RecordBatch::sign(&ids().alice, &GROUP, "alice", records)
        .expect("sign")
        .to_canonical()
}
