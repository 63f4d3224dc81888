//! Snapshots: the whole state machine as one versioned byte string (streaming comes later).
//!
//! Layout, in the canonical codec of `conclave_shared::codec` (big-endian integers, byte
//! strings with a `u32` length):
//!
//! | field | encoding |
//! |---|---|
//! | magic | the 17 bytes `conclave-snapshot` |
//! | version | `u16`, [`SNAPSHOT_FORMAT_VERSION`] |
//! | head | `bytes(≤ 4 MiB)`: bincode of `{ last_applied: Option<LogId>, last_membership }` |
//! | count | `u64` N |
//! | blocks | N × `bytes(≤ MAX_BLOCK_BYTES + 32)`: canonical `StoredBlock`s, heights 0 to N-1 |
//!
//! Nothing may follow. The dedup index is not carried: it follows from the blocks, so the
//! receiver rebuilds it instead of trusting another replica's copy. A snapshot is built from
//! one redb read transaction, so its blocks and pointers belong together; it is installed
//! only after every block verified under the root key, in one write transaction.

use std::io::Cursor;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use conclave_shared::chain::{StoredBlock, MAX_BLOCK_BYTES};
use conclave_shared::codec::{Canonical, Reader, Writer};
use conclave_shared::identity::PublicKey;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::apply::SmState;
use super::blocking;
use super::disk::{decode, encode, get_meta, MAX_META_BYTES};
use super::error::{DbResult, StoreError};
use super::replay::{DedupEntry, Replay};
use super::schema::{BLOCKS, DEDUP, LAST_APPLIED, LAST_MEMBERSHIP, SM_META};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The snapshot layout this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 17] = b"conclave-snapshot";
/// A stored block is a block and its 32-byte hash.
const MAX_STORED_BLOCK_BYTES: usize = MAX_BLOCK_BYTES + 32;

#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// The last snapshot built or installed, for `get_current_snapshot`. Held in memory only:
/// after a restart openraft builds a new one when it needs one. A std mutex, because it is
/// only ever held to swap or clone the value, never across an `.await`.
#[derive(Clone, Default)]
pub(crate) struct SnapshotSlot(Arc<Mutex<Option<Held>>>);

struct Held {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl SnapshotSlot {
    /// Keeps `meta`/`data` unless the slot holds a later one (a build racing an install).
    pub(crate) fn offer(&self, meta: SnapshotMeta, data: Vec<u8>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_some_and(|held| held.meta.last_log_id > meta.last_log_id)
        {
            return;
        }
        *slot = Some(Held { meta, data });
    }

    pub(crate) fn current(&self) -> Option<Snapshot> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|held| Snapshot {
            meta: held.meta.clone(),
            snapshot: Box::new(Cursor::new(held.data.clone())),
        })
    }
}

/// Builds snapshots for openraft, concurrently with applying.
pub struct SnapshotBuilder {
    pub(crate) db: Arc<Database>,
    pub(crate) slot: SnapshotSlot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let (head, data) = blocking(move || build(&db))
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        let meta = SnapshotMeta {
            last_log_id: head.last_applied,
            last_membership: head.last_membership,
            snapshot_id: snapshot_id(head.last_applied.as_ref()),
        };
        self.slot.offer(meta.clone(), data.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Names a snapshot by what it covers and when it was made.
fn snapshot_id(last: Option<&LogId>) -> String {
    let at = conclave_shared::now_ms();
    match last {
        Some(l) => format!("{}-{}-{at}", l.leader_id.term, l.index),
        None => format!("none-{at}"),
    }
}

/// Reads everything from one read transaction into the layout above.
fn build(db: &Database) -> Result<(SnapshotHead, Vec<u8>), StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(SM_META).db()?;
    let head = SnapshotHead {
        last_applied: get_meta::<Option<LogId>, _>(&meta, LAST_APPLIED)?.flatten(),
        last_membership: get_meta(&meta, LAST_MEMBERSHIP)?.unwrap_or_default(),
    };
    let blocks = tx.open_table(BLOCKS).db()?;
    let mut w = Writer::new();
    w.raw(MAGIC)
        .u16(SNAPSHOT_FORMAT_VERSION)
        .bytes(&encode(&head, "snapshot head")?)
        .u64(blocks.len().db()?);
    for row in blocks.iter().db()? {
        let (k, v) = row.db()?;
        // Checked so that a damaged value cannot make the writer panic; the receiver
        // verifies the content.
        if v.value().len() > MAX_STORED_BLOCK_BYTES {
            return Err(StoreError::corrupt(
                "block",
                format!("block {} is {} bytes", k.value(), v.value().len()),
            ));
        }
        w.bytes(v.value());
    }
    Ok((head, w.finish()))
}

fn bad(why: impl std::fmt::Display) -> StoreError {
    StoreError::BadSnapshot(why.to_string())
}

/// A decoded, verified snapshot: the state it leads to and where its blocks are in `data`.
pub(crate) struct Checked {
    pub state: SmState,
    blocks: Vec<(u64, Range<usize>)>,
    dedup: Vec<DedupEntry>,
}

/// Decodes `data` with bounds and verifies every block under `root`. Nothing is written.
/// The verification runs before the write transaction opens, since redb has one writer and
/// the Raft log must not wait for RSA checks.
pub(crate) fn check(
    root: &PublicKey,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<Checked, StoreError> {
    let mut r = Reader::new(data);
    let magic: [u8; 17] = r.array("snapshot magic").map_err(bad)?;
    if &magic != MAGIC {
        return Err(bad("it does not start with the snapshot magic"));
    }
    let version = r.u16("snapshot version").map_err(bad)?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}; this build reads only {SNAPSHOT_FORMAT_VERSION}"
        )));
    }
    let head_bytes = r.bytes("snapshot head", MAX_META_BYTES).map_err(bad)?;
    let head: SnapshotHead =
        decode::<_, MAX_META_BYTES>(&head_bytes, "snapshot head").map_err(bad)?;
    if head.last_applied != meta.last_log_id || head.last_membership != meta.last_membership {
        return Err(bad(
            "its contents cover other log entries than its metadata says",
        ));
    }
    let count = r.u64("snapshot block count").map_err(bad)?;
    let mut replay = Replay::new(root);
    let mut blocks = Vec::new();
    // The count is not trusted for allocation: each block is read (bounded) before the next.
    for _ in 0..count {
        let start = data.len() - r.remaining() + 4;
        let bytes = r
            .bytes("snapshot block", MAX_STORED_BLOCK_BYTES)
            .map_err(|e| bad(replay.fail_read(e)))?;
        let block = StoredBlock::from_canonical(&bytes).map_err(|e| bad(replay.fail_read(e)))?;
        replay.push(&block).map_err(bad)?;
        blocks.push((block.height(), start..start + bytes.len()));
    }
    r.finish().map_err(bad)?;
    let (state, dedup) = replay.finish(head.last_applied, head.last_membership);
    if state.head.is_some() && state.last_applied.is_none() {
        return Err(bad("it holds blocks but no applied log id"));
    }
    Ok(Checked {
        state,
        blocks,
        dedup,
    })
}

/// Replaces the stored state machine with a checked snapshot, in one write transaction.
pub(crate) fn write(db: &Database, checked: &Checked, data: &[u8]) -> Result<(), StoreError> {
    let tx = db.begin_write().db()?;
    {
        let mut blocks = tx.open_table(BLOCKS).db()?;
        blocks.retain(|_, _| false).db()?;
        for (height, span) in &checked.blocks {
            blocks.insert(*height, &data[span.clone()]).db()?;
        }
        let mut dedup = tx.open_table(DEDUP).db()?;
        dedup.retain(|_, _| false).db()?;
        for ((author, seq), height) in &checked.dedup {
            dedup.insert((author.as_str(), *seq), *height).db()?;
        }
        let mut meta = tx.open_table(SM_META).db()?;
        let applied = encode(&checked.state.last_applied, "last applied log id")?;
        let membership = encode(&checked.state.last_membership, "last membership")?;
        meta.insert(LAST_APPLIED, applied.as_slice()).db()?;
        meta.insert(LAST_MEMBERSHIP, membership.as_slice()).db()?;
    }
    tx.commit().db()?;
    Ok(())
}
