//! The tables of the peer's redb file, its format version, and opening it.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::error::{DbResult, StoreError};
use super::outbox;

/// Bumped when a table changes shape; an unknown version is refused, never guessed at.
pub const STORE_FORMAT_VERSION: u64 = 1;

/// The file inside the peer's data directory.
pub const DB_FILE: &str = "peer.redb";

/// Small counters: [`FORMAT_KEY`], [`OUTBOX_NEXT_SEQ`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const FORMAT_KEY: &str = "format_version";
pub(crate) const OUTBOX_NEXT_SEQ: &str = "outbox_next_seq";

/// Raft log index → bincode of the openraft `Entry`.
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
/// sure every table exists so that readers never meet a missing one.
pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path).db()?;
    let tx = db.begin_write().db()?;
    {
        let mut meta = tx.open_table(META).db()?;
        let found = meta.get(FORMAT_KEY).db()?.map(|v| v.value());
        match found {
            None => {
                meta.insert(FORMAT_KEY, STORE_FORMAT_VERSION).db()?;
            }
            Some(STORE_FORMAT_VERSION) => {}
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
    }
    outbox::reconcile_counter(&tx)?;
    tx.commit().db()?;
    Ok(db)
}
