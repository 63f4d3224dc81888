//! The chain as openraft's state machine: `RaftStateMachine` over redb.
//!
//! `apply` decides every entry of the call in memory first (see `apply`: decoding, RSA
//! checks) on the blocking pool, then writes all blocks, dedup keys and the applied
//! pointers in one write transaction. The deciding happens before the write transaction
//! opens because redb has a single writer, shared with the Raft log: appends must not wait
//! for signature checks.
//!
//! The in-memory state moves into the blocking task and back, so no lock is held across an
//! `.await`. If the task fails (a panic, or the disk refusing the commit) the memory may be
//! ahead of the disk; the state is then dropped and every later call fails with
//! [`StoreError::Poisoned`] until a restart reloads it from disk. Openraft stops on a
//! state-machine error anyway.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use conclave_shared::chain::StoredBlock;
use conclave_shared::codec::Canonical;
use conclave_shared::identity::PublicKey;
use openraft::storage::RaftStateMachine;
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};
use redb::{Database, ReadableDatabase};
use tokio::sync::watch;
use tracing::warn;

use super::apply::SmState;
use super::blocking;
use super::disk::encode;
use super::error::{DbResult, StoreError};
use super::reader::ChainView;
use super::schema::{BLOCKS, DEDUP, LAST_APPLIED, LAST_MEMBERSHIP, SM_META};
use super::snapshot::{self, SnapshotBuilder, SnapshotSlot};
use crate::types::{
    Applied, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The replicated chain. Owned by openraft; read it through a
/// [`ChainReader`](super::ChainReader).
pub struct StateMachineStore {
    db: Arc<Database>,
    root: Arc<PublicKey>,
    /// `None` only while a blocking task holds it, or after a failure (see module docs).
    state: Option<SmState>,
    slot: SnapshotSlot,
    view: watch::Sender<ChainView>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<Database>,
        root: Arc<PublicKey>,
        state: SmState,
        view: watch::Sender<ChainView>,
    ) -> Self {
        Self {
            db,
            root,
            state: Some(state),
            slot: SnapshotSlot::default(),
            view,
        }
    }

    fn state(&self) -> Result<&SmState, StoreError> {
        self.state.as_ref().ok_or(StoreError::Poisoned)
    }

    /// Puts the state back and tells the readers.
    fn settle(&mut self, state: SmState) {
        self.view.send_replace(ChainView::of(&state));
        self.state = Some(state);
    }
}

/// Decides every entry, then writes the outcome in one transaction.
fn apply_entries(
    db: &Database,
    root: &PublicKey,
    state: &mut SmState,
    entries: &[Entry],
) -> Result<Vec<Applied>, StoreError> {
    let mut replies = Vec::with_capacity(entries.len());
    let mut blocks: Vec<StoredBlock> = Vec::new();
    // Dedup keys of this call, not yet in the table: a batch repeated within one call is a
    // duplicate too.
    let mut fresh: BTreeMap<(String, u64), u64> = BTreeMap::new();
    {
        let tx = db.begin_read().db()?;
        let index = tx.open_table(DEDUP).db()?;
        for entry in entries {
            let mut applied_before = |author: &str, seq: u64| -> Result<Option<u64>, StoreError> {
                if let Some(height) = fresh.get(&(author.to_owned(), seq)) {
                    return Ok(Some(*height));
                }
                Ok(index.get((author, seq)).db()?.map(|v| v.value()))
            };
            let outcome = state.apply_entry(root, entry, &mut applied_before)?;
            if let Some(block) = outcome.block {
                if let Some(key) = outcome.dedup {
                    fresh.insert(key, block.height());
                }
                blocks.push(block);
            }
            replies.push(outcome.reply);
        }
    }
    let tx = db.begin_write().db()?;
    {
        let mut table = tx.open_table(BLOCKS).db()?;
        for block in &blocks {
            table
                .insert(block.height(), block.to_canonical().as_slice())
                .db()?;
        }
        let mut index = tx.open_table(DEDUP).db()?;
        for ((author, seq), height) in &fresh {
            index.insert((author.as_str(), *seq), *height).db()?;
        }
        let mut meta = tx.open_table(SM_META).db()?;
        let applied = encode(&state.last_applied, "last applied log id")?;
        let membership = encode(&state.last_membership, "last membership")?;
        meta.insert(LAST_APPLIED, applied.as_slice()).db()?;
        meta.insert(LAST_MEMBERSHIP, membership.as_slice()).db()?;
    }
    tx.commit().db()?;
    Ok(replies)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self
            .state()
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Read))?;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let write_err = |e: StoreError| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write);
        let mut state = self
            .state
            .take()
            .ok_or(StoreError::Poisoned)
            .map_err(write_err)?;
        let db = self.db.clone();
        let root = self.root.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = apply_entries(&db, &root, &mut state, &entries);
            (state, result)
        })
        .await;
        match joined {
            Ok((state, Ok(replies))) => {
                self.settle(state);
                Ok(replies)
            }
            // The memory may be ahead of the disk: keep neither (see module docs).
            Ok((_, Err(e))) => Err(write_err(e)),
            Err(e) => Err(write_err(StoreError::Task(e.to_string()))),
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            slot: self.slot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Verifies the snapshot's chain under the root key, then replaces ours with it. A bad
    /// snapshot is an error and leaves everything as it was.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        // The state is not taken out: a refused snapshot must leave it usable.
        self.state()
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        let data = snapshot.into_inner();
        let db = self.db.clone();
        let root = self.root.clone();
        let m = meta.clone();
        let installed = blocking(move || {
            let checked = snapshot::check(&root, &m, &data)?;
            snapshot::write(&db, &checked, &data)?;
            Ok((checked.state, data))
        })
        .await;
        match installed {
            Ok((state, data)) => {
                self.settle(state);
                self.slot.offer(meta.clone(), data);
                Ok(())
            }
            Err(e) => {
                warn!(snapshot = %meta.snapshot_id, "not installing snapshot: {e}");
                Err(e.into_raft(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                ))
            }
        }
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.slot.current())
    }
}
