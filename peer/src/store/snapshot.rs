//! Snapshots: the whole state machine as one versioned byte string, kept in a file.
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
//! receiver rebuilds it instead of trusting another replica's copy.
//!
//! - **Building** reads everything from one redb read transaction, so its blocks and pointers
//!   belong together, and writes the layout to a file of the [`Spool`] a block at a time.
//! - **Checking** ([`check`]) reads a file a block at a time and verifies every block under the
//!   root key with `ChainVerifier` (the checks of `verify_chain`); it writes nothing and
//!   returns a [`Verified`]: the state the snapshot leads to and the SHA-256 of the bytes
//!   checked. Memory stays bounded by one block, whatever the file's size.
//! - **Installing** ([`write`]) reads the file again in one write transaction, rebuilding the
//!   dedup index, and commits only if the bytes hash to what was verified.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use conclave_shared::chain::{StoredBlock, MAX_BLOCK_BYTES};
use conclave_shared::codec::{Canonical, Writer};
use conclave_shared::identity::PublicKey;
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::apply::SmState;
use super::blocking;
use super::disk::{decode, encode, get_meta, MAX_META_BYTES};
use super::error::{DbResult, StoreError};
use super::replay::{dedup_entry, Replay};
use super::schema::{BLOCKS, DEDUP, LAST_APPLIED, LAST_MEMBERSHIP, SM_META};
use super::spool::{SnapshotFile, Spool};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// The snapshot layout this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 17] = b"conclave-snapshot";
/// A stored block is a block and its 32-byte hash.
const MAX_STORED_BLOCK_BYTES: usize = MAX_BLOCK_BYTES + 32;
/// Buffer size for reading and writing snapshot files.
const IO_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// The last snapshot built or installed, for `get_current_snapshot`. Held in memory only (its
/// file is removed at the next start): after a restart openraft builds a new one when it
/// needs one. A std mutex, because it is only ever held to swap or clone a handle, never
/// across an `.await`.
#[derive(Clone, Default)]
pub(crate) struct SnapshotSlot(Arc<Mutex<Option<Held>>>);

struct Held {
    meta: SnapshotMeta,
    file: SnapshotFile,
}

impl SnapshotSlot {
    /// Keeps `meta`/`file` unless the slot holds a later one (a build racing an install).
    pub(crate) fn offer(&self, meta: SnapshotMeta, file: SnapshotFile) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_some_and(|held| held.meta.last_log_id > meta.last_log_id)
        {
            return;
        }
        *slot = Some(Held {
            meta,
            file: file.share(),
        });
    }

    pub(crate) fn current(&self) -> Option<Snapshot> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|held| Snapshot {
            meta: held.meta.clone(),
            snapshot: Box::new(held.file.share()),
        })
    }
}

/// Builds snapshots for openraft, concurrently with applying.
pub struct SnapshotBuilder {
    pub(crate) db: Arc<Database>,
    pub(crate) spool: Spool,
    pub(crate) slot: SnapshotSlot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let spool = self.spool.clone();
        let (head, file) = blocking(move || build(&db, &spool))
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        let meta = SnapshotMeta {
            last_log_id: head.last_applied,
            last_membership: head.last_membership,
            snapshot_id: snapshot_id(head.last_applied.as_ref()),
        };
        self.slot.offer(meta.clone(), file.share());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
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

/// Writes everything of one read transaction into a new spool file, in the layout above.
fn build(db: &Database, spool: &Spool) -> Result<(SnapshotHead, SnapshotFile), StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(SM_META).db()?;
    let head = SnapshotHead {
        last_applied: get_meta::<Option<LogId>, _>(&meta, LAST_APPLIED)?.flatten(),
        last_membership: get_meta(&meta, LAST_MEMBERSHIP)?.unwrap_or_default(),
    };
    let blocks = tx.open_table(BLOCKS).db()?;
    let (file, handle) = spool.create("built")?;
    let io = |e: std::io::Error| StoreError::SnapshotFile {
        path: handle.path().to_owned(),
        source: e,
    };
    let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
    let mut w = Writer::new();
    w.raw(MAGIC)
        .u16(SNAPSHOT_FORMAT_VERSION)
        .bytes(&encode(&head, "snapshot head")?)
        .u64(blocks.len().db()?);
    out.write_all(&w.finish()).map_err(io)?;
    for row in blocks.iter().db()? {
        let (k, v) = row.db()?;
        let bytes = v.value();
        // Checked so that a damaged value cannot make the writer panic; the receiver
        // verifies the content.
        if bytes.len() > MAX_STORED_BLOCK_BYTES {
            return Err(StoreError::corrupt(
                "block",
                format!("block {} is {} bytes", k.value(), bytes.len()),
            ));
        }
        let len = u32::try_from(bytes.len()).map_err(|_| StoreError::corrupt("block", "size"))?;
        out.write_all(&len.to_be_bytes()).map_err(io)?;
        out.write_all(bytes).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok((head, handle))
}

fn bad(why: impl std::fmt::Display) -> StoreError {
    StoreError::BadSnapshot(why.to_string())
}

/// Reads the layout from a file, hashing every byte it reads.
struct Layout<R: Read> {
    input: R,
    digest: Sha256,
    path: std::path::PathBuf,
    head: SnapshotHead,
    count: u64,
}

impl Layout<BufReader<File>> {
    /// Opens `path` and reads everything before the blocks.
    fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::SnapshotFile {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        Self::read_header(BufReader::with_capacity(IO_BUFFER_BYTES, file), path)
    }
}

impl<R: Read> Layout<R> {
    fn read_header(input: R, path: &Path) -> Result<Self, StoreError> {
        let mut l = Layout {
            input,
            digest: Sha256::new(),
            path: path.to_owned(),
            head: SnapshotHead {
                last_applied: None,
                last_membership: StoredMembership::default(),
            },
            count: 0,
        };
        let mut magic = [0u8; 17];
        l.exact(&mut magic, "magic")?;
        if &magic != MAGIC {
            return Err(bad("it does not start with the snapshot magic"));
        }
        let version = u16::from_be_bytes(l.array("version")?);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads only {SNAPSHOT_FORMAT_VERSION}"
            )));
        }
        let head_bytes = l.bytes("head", MAX_META_BYTES)?;
        l.head =
            decode::<_, MAX_META_BYTES>(&head_bytes, "snapshot head").map_err(|e| match e {
                StoreError::Corrupt { why, .. } => bad(format!("its head does not decode: {why}")),
                other => other,
            })?;
        l.count = u64::from_be_bytes(l.array("block count")?);
        Ok(l)
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), StoreError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(format!("it ends inside the {what}"))
            } else {
                StoreError::SnapshotFile {
                    path: self.path.clone(),
                    source: e,
                }
            }
        })?;
        self.digest.update(&*buf);
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], StoreError> {
        let mut a = [0u8; N];
        self.exact(&mut a, what)?;
        Ok(a)
    }

    /// A `u32` length and that many bytes; the length is checked before anything is allocated.
    fn bytes(&mut self, what: &str, max: usize) -> Result<Vec<u8>, StoreError> {
        let len = u32::from_be_bytes(self.array(what)?) as usize;
        if len > max {
            return Err(bad(format!(
                "its {what} claims {len} bytes, more than {max}"
            )));
        }
        let mut v = vec![0u8; len];
        self.exact(&mut v, what)?;
        Ok(v)
    }

    /// The next block's canonical bytes.
    fn block(&mut self) -> Result<Vec<u8>, StoreError> {
        self.bytes("block", MAX_STORED_BLOCK_BYTES)
    }

    /// Requires the end of the file; returns the SHA-256 of everything read.
    fn finish(mut self) -> Result<[u8; 32], StoreError> {
        let mut one = [0u8; 1];
        loop {
            match self.input.read(&mut one) {
                Ok(0) => return Ok(self.digest.finalize().into()),
                Ok(_) => return Err(bad("bytes follow the last block")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StoreError::SnapshotFile {
                        path: self.path,
                        source,
                    })
                }
            }
        }
    }
}

/// Proof that a snapshot file was read whole and every block verified under the root key,
/// for the metadata it came with. Only [`check`] makes one.
pub(crate) struct Verified {
    meta: SnapshotMeta,
    digest: [u8; 32],
    state: SmState,
    blocks: u64,
}

impl Verified {
    /// Whether this proof is for a snapshot with metadata `meta`.
    pub(crate) fn is_for(&self, meta: &SnapshotMeta) -> bool {
        self.meta == *meta
    }
    /// The number of blocks the snapshot holds.
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }
}

/// Reads the snapshot at `path` and verifies every block under `root`, as `verify_chain`
/// would, checking that it covers the entries `meta` says. Nothing is written. Blocking, and
/// as slow as verifying the chain (RSA checks of every admission and batch).
pub(crate) fn check(
    root: &PublicKey,
    meta: &SnapshotMeta,
    path: &Path,
) -> Result<Verified, StoreError> {
    let mut layout = Layout::open(path)?;
    if layout.head.last_applied != meta.last_log_id
        || layout.head.last_membership != meta.last_membership
    {
        return Err(bad(
            "its contents cover other log entries than its metadata says",
        ));
    }
    let mut replay = Replay::new(root);
    // The count is not trusted for allocation: each block is read (bounded) before the next.
    for _ in 0..layout.count {
        let bytes = layout.block().map_err(|e| match e {
            StoreError::BadSnapshot(why) => bad(replay.fail_read(why)),
            other => other,
        })?;
        let block = StoredBlock::from_canonical(&bytes).map_err(|e| bad(replay.fail_read(e)))?;
        replay.push(&block).map_err(bad)?;
    }
    let SnapshotHead {
        last_applied,
        last_membership,
    } = std::mem::replace(
        &mut layout.head,
        SnapshotHead {
            last_applied: None,
            last_membership: StoredMembership::default(),
        },
    );
    let blocks = layout.count;
    let digest = layout.finish()?;
    let state = replay.finish(last_applied, last_membership);
    if state.head.is_some() && state.last_applied.is_none() {
        return Err(bad("it holds blocks but no applied log id"));
    }
    Ok(Verified {
        meta: meta.clone(),
        digest,
        state,
        blocks,
    })
}

/// Replaces the stored state machine with the verified snapshot at `path`, in one write
/// transaction, which commits only if the file still holds the bytes that were verified.
/// Returns the state it leads to.
pub(crate) fn write(db: &Database, verified: Verified, path: &Path) -> Result<SmState, StoreError> {
    let mut layout = Layout::open(path)?;
    let tx = db.begin_write().db()?;
    {
        let mut blocks = tx.open_table(BLOCKS).db()?;
        blocks.retain(|_, _| false).db()?;
        let mut dedup = tx.open_table(DEDUP).db()?;
        dedup.retain(|_, _| false).db()?;
        for _ in 0..layout.count {
            let bytes = layout.block()?;
            // It decoded when it was verified; failing now means the file changed.
            let block = StoredBlock::from_canonical(&bytes).map_err(|e| {
                StoreError::Invariant(format!("a verified snapshot block no longer decodes: {e}"))
            })?;
            blocks.insert(block.height(), bytes.as_slice()).db()?;
            if let Some(((author, seq), height)) = dedup_entry(&block) {
                dedup.insert((author.as_str(), seq), height).db()?;
            }
        }
        let mut meta = tx.open_table(SM_META).db()?;
        let applied = encode(&verified.state.last_applied, "last applied log id")?;
        let membership = encode(&verified.state.last_membership, "last membership")?;
        meta.insert(LAST_APPLIED, applied.as_slice()).db()?;
        meta.insert(LAST_MEMBERSHIP, membership.as_slice()).db()?;
    }
    // Dropping the transaction uncommitted leaves the store as it was.
    if layout.finish()? != verified.digest {
        return Err(StoreError::Invariant(
            "the snapshot file changed after it was verified".into(),
        ));
    }
    tx.commit().db()?;
    Ok(verified.state)
}
