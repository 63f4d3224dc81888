//! The Raft log and the vote: openraft's `RaftLogStorage` over redb.
//!
//! An append is committed at once without an fsync (`Durability::None`), so openraft can read
//! the entries and start replicating them while they are made durable; the store's syncer
//! (`sync.rs`) then makes them durable with one `Durability::Immediate` commit (redb persists
//! every earlier non-durable commit with it) and only then tells openraft they are flushed.
//! Appends (and outbox batches) that arrive while an fsync runs share the next one. Before this, the leader's
//! fsync had to finish before replication began, so a write waited for two fsyncs in a row
//! (the leader's, then the followers'), not two at once.
//!
//! A crash loses only appends that were never reported flushed, which Raft allows. Votes,
//! truncations and purges are committed durably before they return. Work runs on the
//! blocking pool (or the syncer's thread) so that an fsync never holds up the runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use super::blocking;
use super::disk::{decode, encode, get_meta, MAX_ENTRY_BYTES};
use super::error::{DbResult, StoreError};
use super::schema::{COMMITTED, LAST_PURGED, RAFT_LOG, RAFT_META, VOTE};
use super::sync::Syncer;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The most entries one bounded read returns (`limited_get_log_entries`).
pub const MAX_ENTRIES_PER_READ: usize = 1024;
/// The most entry bytes one bounded read returns; at least one entry is always returned.
pub const MAX_LOG_READ_BYTES: usize = 16 * 1024 * 1024;

/// The Raft log and vote. Cheap to clone: it is its own log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    syncer: Syncer,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>, syncer: Syncer) -> Self {
        Self { db, syncer }
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    let entry: Entry = decode::<_, MAX_ENTRY_BYTES>(bytes, "raft log entry")?;
    if entry.log_id.index != index {
        return Err(StoreError::corrupt(
            "raft log entry",
            format!("entry {} is stored at index {index}", entry.log_id),
        ));
    }
    Ok(entry)
}

fn read_entries(
    db: &Database,
    range: (Bound<u64>, Bound<u64>),
    max_entries: usize,
    max_bytes: usize,
) -> Result<Vec<Entry>, StoreError> {
    if is_empty_range(&range) {
        return Ok(Vec::new());
    }
    let tx = db.begin_read().db()?;
    let table = tx.open_table(RAFT_LOG).db()?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in table.range(range).db()? {
        let (k, v) = row.db()?;
        let len = v.value().len();
        if !out.is_empty() && (out.len() >= max_entries || bytes.saturating_add(len) > max_bytes) {
            break;
        }
        bytes = bytes.saturating_add(len);
        out.push(decode_entry(k.value(), v.value())?);
    }
    Ok(out)
}

/// Whether no index lies in `range` (redb, like `BTreeMap`, must not see start > end).
fn is_empty_range(range: &(Bound<u64>, Bound<u64>)) -> bool {
    let start = match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => match s.checked_add(1) {
            Some(s) => s,
            None => return true,
        },
        Bound::Unbounded => 0,
    };
    match range.1 {
        Bound::Included(e) => start > e,
        Bound::Excluded(e) => start >= e,
        Bound::Unbounded => false,
    }
}

fn owned_range<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

fn log_state(db: &Database) -> Result<LogState<TypeConfig>, StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(RAFT_META).db()?;
    let last_purged: Option<LogId> = get_meta(&meta, LAST_PURGED)?;
    let log = tx.open_table(RAFT_LOG).db()?;
    let last = match log.last().db()? {
        Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
        None => None,
    };
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last.or(last_purged),
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

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(RAFT_META).db()?;
    get_meta(&meta, key)
}

/// Commits `entries` without an fsync; the syncer makes them durable.
fn append_entries(db: &Database, entries: &[Entry]) -> Result<(), StoreError> {
    let mut tx = db.begin_write().db()?;
    tx.set_durability(Durability::None).db()?;
    {
        let mut log = tx.open_table(RAFT_LOG).db()?;
        for entry in entries {
            let bytes = encode(entry, "raft log entry")?;
            // Refused here rather than written: an entry we could not read back would stop
            // this peer at its next start.
            if bytes.len() > MAX_ENTRY_BYTES {
                return Err(StoreError::Encode {
                    what: "raft log entry",
                    why: format!(
                        "entry {} is {} bytes, more than {MAX_ENTRY_BYTES}",
                        entry.log_id,
                        bytes.len()
                    ),
                });
            }
            log.insert(entry.log_id.index, bytes.as_slice()).db()?;
        }
    }
    tx.commit().db()?;
    Ok(())
}

/// Deletes the entries at `range` in one transaction; with `purged`, records it too.
fn delete_entries(
    db: &Database,
    range: (Bound<u64>, Bound<u64>),
    purged: Option<&LogId>,
) -> Result<(), StoreError> {
    let tx = db.begin_write().db()?;
    {
        if let Some(purged) = purged {
            let bytes = encode(purged, "last purged log id")?;
            let mut meta = tx.open_table(RAFT_META).db()?;
            meta.insert(LAST_PURGED, bytes.as_slice()).db()?;
        }
        if !is_empty_range(&range) {
            let mut log = tx.open_table(RAFT_LOG).db()?;
            log.retain_in(range, |_, _| false).db()?;
        }
    }
    tx.commit().db()?;
    Ok(())
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
        let db = self.db.clone();
        let range = owned_range(&range);
        blocking(move || read_entries(&db, range, usize::MAX, usize::MAX))
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
        let db = self.db.clone();
        let range = (Bound::Included(start), Bound::Excluded(end));
        blocking(move || read_entries(&db, range, MAX_ENTRIES_PER_READ, MAX_LOG_READ_BYTES))
            .await
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || log_state(&db)).await.map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let bytes =
            encode(vote, "vote").map_err(|e| e.into_raft(ErrorSubject::Vote, ErrorVerb::Write))?;
        blocking(move || put_meta(&db, VOTE, &bytes, Durability::Immediate))
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        match blocking(move || append_entries(&db, &entries)).await {
            Ok(()) => {
                // Readable now; reported flushed once the syncer's fsync is done.
                self.syncer.raft(callback).map_err(write_err)
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        let range = (Bound::Included(log_id.index), Bound::Unbounded);
        blocking(move || delete_entries(&db, range, None))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        let range = (Bound::Unbounded, Bound::Included(log_id.index));
        blocking(move || delete_entries(&db, range, Some(&log_id)))
            .await
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ranges_are_recognised() {
        use Bound::*;
        assert!(is_empty_range(&(Included(3), Excluded(3))));
        assert!(is_empty_range(&(Included(5), Included(4))));
        assert!(is_empty_range(&(Excluded(u64::MAX), Unbounded)));
        assert!(!is_empty_range(&(Included(3), Included(3))));
        assert!(!is_empty_range(&(Unbounded, Unbounded)));
    }
}
