//! The peer's durable state: the Raft log's entries in a write-ahead log (`DIR/wal/`), and
//! one redb file (`DIR/peer.redb`) holding the vote, the chain and the outbox.
//!
//! [`Store::open`] opens both, refuses an unknown format version, replays every
//! stored block through the chain verifier under the group's root key (a damaged or altered
//! file is refused, naming the first bad height) and hands out the pieces:
//!
//! - [`LogStore`]: openraft's `RaftLogStorage` (log, vote, committed, purged).
//! - [`StateMachineStore`]: openraft's `RaftStateMachine`: committed entries become blocks
//!   (see `apply.rs` for the rules), snapshots are built and installed.
//! - [`ChainReader`]: cloneable read access (head, members, blocks) and a watch of changes.
//! - [`Outbox`]: this member's records waiting to reach the chain.
//!
//! They share one `Arc<redb::Database>` (it is `Send + Sync`; redb serialises writers, so
//! there is no lock of ours around it). Everything the async Raft paths do runs on the
//! blocking pool.
//!
//! # Layout
//! - `schema`: tables and the format version; `disk`: bounded bincode for openraft's types.
//! - `log`: [`LogStore`]. `apply`: entry → block, deterministically. `replay`: rebuilding
//!   and verifying. `state_machine`: [`StateMachineStore`]. `snapshot`: the snapshot layout,
//!   building, checking and installing. `spool`: snapshot files ([`SnapshotFile`], openraft's
//!   snapshot data). `inbox`: [`SnapshotInbox`], receiving and verifying another member's.
//! - `reader`: [`ChainReader`], [`ChainView`], [`MemberInfo`]. `outbox`: [`Outbox`], with
//!   `journal`: the durable copy of its batch in flight (two small slot files).
//! - `wal`: the Raft log's entries, append-only segment files with group commit.
//! - `sync`: group commit for redb: one fsync for everyone waiting (outbox, applied chain).
//! - `error`: [`StoreError`].
//! - [`inspect`]: a stopped peer's blocks, read-only and unverified, for `conclave verify`
//!   and `conclave chain`.

mod apply;
mod disk;
mod error;
mod inbox;
pub mod inspect;
mod journal;
mod log;
mod outbox;
mod reader;
mod replay;
mod schema;
mod snapshot;
mod spool;
mod state_machine;
mod sync;
mod wal;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use conclave_shared::identity::PublicKey;
use tokio::sync::watch;

pub use error::StoreError;
pub use inbox::{Incoming, SnapshotInbox, MAX_INCOMING_SNAPSHOTS};
pub use log::{LogStore, MAX_ENTRIES_PER_READ, MAX_LOG_READ_BYTES};
pub use outbox::{InflightBatch, Outbox};
pub use reader::{ChainReader, ChainView, MemberInfo, MAX_BLOCKS_PER_READ, MAX_BLOCK_READ_BYTES};
pub use schema::{DB_FILE, STORE_FORMAT_VERSION};
pub use snapshot::{SnapshotBuilder, SNAPSHOT_FORMAT_VERSION};
pub use spool::{SnapshotFile, SNAPSHOT_DIR};
pub use state_machine::StateMachineStore;

/// The opened store, in the pieces its users need.
pub struct Store {
    /// Give to openraft as its log store.
    pub log: LogStore,
    /// Give to openraft as its state machine.
    pub state_machine: StateMachineStore,
    /// For the node, the console and status.
    pub chain: ChainReader,
    /// For this member's writer.
    pub outbox: Outbox,
}

impl Store {
    /// Opens or creates the store in `dir` for the group whose root key is `root`.
    ///
    /// Blocking, and as slow as verifying the whole stored chain (RSA checks of every
    /// admission and batch): call it at start-up, or in `spawn_blocking`.
    pub fn open(dir: &Path, root: PublicKey) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let (db, found) = schema::open_db(&dir.join(DB_FILE))?;
        let db = Arc::new(db);
        let purged: Option<crate::types::LogId> = log::read_meta(&db, schema::LAST_PURGED)?;
        let wal = wal::Wal::open(
            &dir.join(wal::WAL_DIR),
            purged.map(|p| p.index),
            wal::SEGMENT_BYTES,
        )?;
        if found < STORE_FORMAT_VERSION {
            schema::migrate_log(&db, &wal)?;
        }
        let (journal, newest) = journal::Journal::open(dir)?;
        outbox::restore_from_journal(&db, newest)?;
        let state = replay::recover(&db, &root)?;
        let spool = spool::Spool::open(dir)?;
        let root = Arc::new(root);
        let (view_tx, view_rx) = watch::channel(ChainView::of(&state));
        let inbox = SnapshotInbox::new(spool.clone(), root.clone());
        let syncer = sync::Syncer::new(&db, &wal);
        Ok(Store {
            log: LogStore::new(db.clone(), wal, syncer.clone()),
            state_machine: StateMachineStore::new(
                db.clone(),
                root.clone(),
                state,
                spool,
                view_tx,
                syncer.clone(),
            ),
            chain: ChainReader::new(db.clone(), root, view_rx, inbox),
            outbox: Outbox::new(db, syncer, Arc::new(journal)),
        })
    }

    /// The pieces, in the order openraft's `Raft::new` takes the first two.
    pub fn into_parts(self) -> (LogStore, StateMachineStore, ChainReader, Outbox) {
        (self.log, self.state_machine, self.chain, self.outbox)
    }
}

/// Runs redb work on the blocking pool. A panic in it becomes [`StoreError::Task`].
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
