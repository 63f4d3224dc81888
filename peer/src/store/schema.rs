//! The tables of the peer's redb file, its format version, and opening it.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::disk::{decode, MAX_ENTRY_BYTES};
use super::error::{DbResult, StoreError};
use super::outbox;
use super::wal::Wal;
use crate::types::Entry;

/// Bumped when a table changes shape; an unknown version is refused, never guessed at.
/// Format 2 moved the Raft log's entries out of redb into the WAL; a format-1 file is
/// migrated when it opens ([`migrate_log`]).
pub const STORE_FORMAT_VERSION: u64 = 2;
/// The oldest format this build opens (and migrates).
pub const OLDEST_FORMAT_VERSION: u64 = 1;

/// The file inside the peer's data directory.
pub const DB_FILE: &str = "peer.redb";

/// Small counters: [`FORMAT_KEY`], [`OUTBOX_NEXT_SEQ`], [`JOURNAL_SETTLED`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const FORMAT_KEY: &str = "format_version";
pub(crate) const OUTBOX_NEXT_SEQ: &str = "outbox_next_seq";
/// The in-flight journal's generation whose batch the outbox has settled (`journal.rs`).
pub(crate) const JOURNAL_SETTLED: &str = "journal_settled";

/// Raft log index → bincode of the openraft `Entry`. Format 1 only: empty after
/// [`migrate_log`].
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// [`VOTE`], [`COMMITTED`], [`LAST_PURGED`] → bincode.
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const LAST_PURGED: &str = "last_purged";

/// [`LAST_APPLIED`], [`LAST_MEMBERSHIP`] → bincode. Always written in the same transaction
/// as the blocks they cover, so after a crash they never disagree with the chain.
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(crate) const LAST_APPLIED: &str = "last_applied";
pub(crate) const LAST_MEMBERSHIP: &str = "last_membership";

/// Height → canonical `StoredBlock` bytes (docs/chain-format.md), exactly as hashed.
pub(crate) const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// (author, first seq of a batch) → height of the block that holds the batch. Derived from
/// the blocks: a snapshot does not carry it, the receiver rebuilds it.
pub(crate) const DEDUP: TableDefinition<(&str, u64), u64> = TableDefinition::new("dedup");

/// This member's outbox: seq → the record's plaintext, stored before anything is sent.
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// [`INFLIGHT_BATCH`] → the signed batch's canonical bytes, resent unchanged after a crash.
pub(crate) const OUTBOX_INFLIGHT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("outbox_inflight");
pub(crate) const INFLIGHT_BATCH: &str = "batch";

/// Opens or creates the file, refusing one written by an unknown format version, and makes
/// sure every table exists so that readers never meet a missing one. Returns the format
/// version the file has.
pub(crate) fn open_db(path: &Path) -> Result<(Database, u64), StoreError> {
    let db = Database::create(path).db()?;
    let tx = db.begin_write().db()?;
    let found = {
        let mut meta = tx.open_table(META).db()?;
        let found = meta.get(FORMAT_KEY).db()?.map(|v| v.value());
        match found {
            None => {
                meta.insert(FORMAT_KEY, STORE_FORMAT_VERSION).db()?;
            }
            Some(OLDEST_FORMAT_VERSION..=STORE_FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnknownFormat {
                    path: path.to_owned(),
                    found,
                    supported: STORE_FORMAT_VERSION,
                })
            }
        }
        tx.open_table(RAFT_LOG).db()?;
        tx.open_table(RAFT_META).db()?;
        tx.open_table(SM_META).db()?;
        tx.open_table(BLOCKS).db()?;
        tx.open_table(DEDUP).db()?;
        tx.open_table(OUTBOX).db()?;
        tx.open_table(OUTBOX_INFLIGHT).db()?;
        found.unwrap_or(STORE_FORMAT_VERSION)
    };
    outbox::reconcile_counter(&tx)?;
    tx.commit().db()?;
    Ok((db, found))
}

/// Format 1 → 2: moves the Raft log's entries from redb into the WAL, durably, then empties
/// the table and records the new format in one commit. A crash in between leaves format 1
/// with the rows still there, and the next open does it again from the start.
pub(crate) fn migrate_log(db: &Database, wal: &Wal) -> Result<(), StoreError> {
    let entries: Vec<Entry> = {
        let tx = db.begin_read().db()?;
        let table = tx.open_table(RAFT_LOG).db()?;
        let mut out = Vec::new();
        for row in table.iter().db()? {
            let (k, v) = row.db()?;
            let entry: Entry = decode::<_, MAX_ENTRY_BYTES>(v.value(), "raft log entry")?;
            if entry.log_id.index != k.value() {
                return Err(StoreError::corrupt(
                    "raft log entry",
                    format!("entry {} is stored at index {}", entry.log_id, k.value()),
                ));
            }
            out.push(entry);
        }
        out
    };
    if let Some(first) = entries.first() {
        wal.truncate(first.log_id.index)?;
        wal.append(&entries)?;
        wal.sync()?;
    }
    let tx = db.begin_write().db()?;
    {
        tx.open_table(RAFT_LOG).db()?.retain(|_, _| false).db()?;
        tx.open_table(META)
            .db()?
            .insert(FORMAT_KEY, STORE_FORMAT_VERSION)
            .db()?;
    }
    tx.commit().db()?;
    tracing::info!(
        entries = entries.len(),
        "moved the raft log out of the database into its write-ahead log (store format {STORE_FORMAT_VERSION})"
    );
    Ok(())
}
