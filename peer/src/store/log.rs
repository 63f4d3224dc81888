//! The Raft log and the vote: openraft's `RaftLogStorage`. The entries live in the
//! write-ahead log (`wal/`); the vote, the committed hint and the last purged id in redb.
//!
//! An append is written at once without an fsync, so openraft can read the entries and
//! start replicating them while they are made durable; the WAL's flusher then makes them
//! durable with one `fdatasync` and only then tells openraft they are flushed. Appends that
//! arrive while a sync runs share the next one. A crash loses only appends that were never
//! reported flushed, which Raft allows. Votes, truncations and purges are durable before
//! they return. Work runs on the blocking pool (or the flusher's thread) so that an fsync
//! never holds up the runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase};

use super::blocking;
use super::disk::{encode, get_meta};
use super::error::{DbResult, StoreError};
use super::schema::{COMMITTED, LAST_PURGED, RAFT_META, VOTE};
use super::sync::Syncer;
use super::wal::{Encoded, Flusher, Wal};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The most entries one bounded read returns (`limited_get_log_entries`).
pub const MAX_ENTRIES_PER_READ: usize = 1024;
/// The most entry bytes one bounded read returns; at least one entry is always returned.
///
/// A bounded read is what one replication request carries, and openraft gives every
/// AppendEntries request the heartbeat interval (25 ms by default) to be sent, appended,
/// synced and answered. A follower far behind a fast leader once got 16 MiB requests that
/// could never finish in time, was sent the same request again and again, and never caught
/// up: with the other voter dead, the group could not commit at all. 512 KiB is sent,
/// decoded, written and synced in a few milliseconds here, even under load.
pub const MAX_LOG_READ_BYTES: usize = 512 * 1024;

/// Appends up to this many encoded bytes are written on the calling task.
const INLINE_APPEND_BYTES: usize = 256 * 1024;

/// The Raft log and vote. Cheap to clone: it is its own log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    wal: Arc<Wal>,
    flusher: Flusher,
    syncer: Syncer,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>, wal: Arc<Wal>, syncer: Syncer) -> Self {
        let flusher = Flusher::new(&wal);
        Self {
            db,
            wal,
            flusher,
            syncer,
        }
    }
}

fn log_state(db: &Database, wal: &Wal) -> Result<LogState<TypeConfig>, StoreError> {
    let last_purged: Option<LogId> = read_meta(db, LAST_PURGED)?;
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: wal.last_log_id().max(last_purged),
    })
}

fn put_meta(
    db: &Database,
    key: &str,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), StoreError> {
    let mut tx = db.begin_write().db()?;
    tx.set_durability(durability).db()?;
    tx.open_table(RAFT_META).db()?.insert(key, bytes).db()?;
    tx.commit().db()?;
    Ok(())
}

pub(crate) fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(RAFT_META).db()?;
    get_meta(&meta, key)
}

fn read_err(e: StoreError) -> StorageError {
    e.into_raft(ErrorSubject::Logs, ErrorVerb::Read)
}
fn write_err(e: StoreError) -> StorageError {
    e.into_raft(ErrorSubject::Logs, ErrorVerb::Write)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        if let Some(entries) = self.wal.read_recent(range, usize::MAX, usize::MAX) {
            return Ok(entries);
        }
        let wal = self.wal.clone();
        blocking(move || wal.read(range, usize::MAX, usize::MAX))
            .await
            .map_err(read_err)
    }

    /// Returns at most [`MAX_ENTRIES_PER_READ`] entries and about [`MAX_LOG_READ_BYTES`],
    /// so that one replication round never loads the whole log.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        if let Some(entries) = self
            .wal
            .read_recent(range, MAX_ENTRIES_PER_READ, MAX_LOG_READ_BYTES)
        {
            return Ok(entries);
        }
        let wal = self.wal.clone();
        blocking(move || wal.read(range, MAX_ENTRIES_PER_READ, MAX_LOG_READ_BYTES))
            .await
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let wal = self.wal.clone();
        blocking(move || log_state(&db, &wal))
            .await
            .map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let bytes =
            encode(vote, "vote").map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))?;
        let syncer = self.syncer.clone();
        // A durable commit persists the state machine's earlier commits too, which must
        // never get ahead of the log they were applied from: the WAL is synced first.
        blocking(move || {
            syncer.sync_wal()?;
            put_meta(&db, VOTE, &bytes, Durability::Immediate)
        })
        .await
        .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, VOTE))
            .await
            .map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Committed is only a hint for re-applying after a restart (the state machine is
    /// durable on its own), so it is written without an fsync of its own: the next append
    /// or vote makes it durable, and losing it in a crash only means applying less at start.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let bytes = encode(&committed, "committed log id").map_err(write_err)?;
        blocking(move || put_meta(&db, COMMITTED, &bytes, Durability::None))
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta::<Option<LogId>>(&db, COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(read_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = match Encoded::new(entries.into_iter().collect()) {
            // A small append is a copy into the page cache: done here, it spares a trip to
            // the blocking pool on every write's path (the leader's and each follower's).
            // A large one, or one that starts a segment (an fsync), goes to the pool.
            Ok(e) if e.bytes <= INLINE_APPEND_BYTES && !self.wal.would_roll() => {
                self.wal.append_encoded(e)
            }
            Ok(e) => {
                let wal = self.wal.clone();
                blocking(move || wal.append_encoded(e)).await
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                // Readable now; reported flushed once the flusher's fdatasync is done.
                self.flusher.raft(callback).map_err(write_err)
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let wal = self.wal.clone();
        blocking(move || wal.truncate(log_id.index))
            .await
            .map_err(write_err)
    }

    /// Records the purge durably first, with everything the state machine applied before it
    /// (its commits skip the fsync; the entries they came from are about to go), then lets
    /// the WAL delete what it no longer needs.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        let wal = self.wal.clone();
        let syncer = self.syncer.clone();
        blocking(move || {
            let bytes = encode(&log_id, "last purged log id")?;
            syncer.sync_wal()?;
            put_meta(&db, LAST_PURGED, &bytes, Durability::Immediate)?;
            wal.purge(log_id.index)
        })
        .await
        .map_err(write_err)
    }
}
