//! The chain as openraft's state machine: `RaftStateMachine` over redb.
//!
//! `apply` decides every entry of the call in memory first (see `apply`: decoding, RSA
//! checks) on the blocking pool, then writes all blocks, dedup keys and the applied
//! pointers in one write transaction. The deciding happens before the write transaction
//! opens because redb has a single writer, shared with the outbox: the author's writes must
//! not wait for signature checks.
//!
//! The in-memory state moves into the blocking task and back, so no lock is held across an
//! `.await`. If the task fails (a panic, or the disk refusing the commit) the memory may be
//! ahead of the disk; the state is then dropped and every later call fails with
//! [`StoreError::Poisoned`] until a restart reloads it from disk. Openraft stops on a
//! state-machine error anyway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use super::spool::{SnapshotFile, Spool};
use super::sync::Syncer;
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
    spool: Spool,
    view: watch::Sender<ChainView>,
    /// Snapshots installed since the store opened, and the head height of the last one: told
    /// to readers with every view (see [`ChainView::snapshots_installed`]).
    installed: (u64, Option<u64>),
    /// Applied blocks skip the fsync; about once a second the syncer is asked to make them
    /// durable, so that a restart replays at most that much of the log.
    syncer: Syncer,
    nudged: Instant,
}

/// How often applied blocks are made durable in the background.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<Database>,
        root: Arc<PublicKey>,
        state: SmState,
        spool: Spool,
        view: watch::Sender<ChainView>,
        syncer: Syncer,
    ) -> Self {
        Self {
            db,
            root,
            state: Some(state),
            slot: SnapshotSlot::default(),
            spool,
            view,
            installed: (0, None),
            syncer,
            nudged: Instant::now(),
        }
    }

    fn state(&self) -> Result<&SmState, StoreError> {
        self.state.as_ref().ok_or(StoreError::Poisoned)
    }

    /// Puts the state back and tells the readers.
    fn settle(&mut self, state: SmState) {
        let mut view = ChainView::of(&state);
        (view.snapshots_installed, view.snapshot_height) = self.installed;
        self.view.send_replace(view);
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
    // No fsync: the Raft log holds every applied entry durably, and a crash that loses this
    // commit rolls `last applied` back with it, so openraft applies the entries again. The
    // next durable commit (the syncer's, a purge's, a vote's) makes this one durable too.
    let mut tx = db.begin_write().db()?;
    tx.set_durability(redb::Durability::None).db()?;
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
                if self.nudged.elapsed() >= DURABLE_EVERY {
                    self.nudged = Instant::now();
                    self.syncer.nudge();
                }
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
            spool: self.spool.clone(),
            slot: self.slot.clone(),
        }
    }

    /// Only for openraft's chunked transfer, which Conclave does not use: snapshots arrive
    /// through `SnapshotInbox` (see `server.rs`).
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let (_, file) = self
            .spool
            .create("raft")
            .map_err(|e| e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    /// Replaces our chain with the snapshot's, in one write transaction.
    ///
    /// A snapshot from `SnapshotInbox` was verified before openraft saw it (an error here
    /// stops the node, so a bad snapshot must be refused earlier); its proof is checked
    /// against `meta` and the file's hash. Any other snapshot is verified here first, under
    /// the root key, block by block. Either way nothing changes unless every block verified.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        // The state is not taken out: a refused snapshot must leave it usable.
        self.state()
            .map_err(|e| e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        let mut file = *snapshot;
        let proof = file.take_verified().filter(|v| v.is_for(meta));
        let db = self.db.clone();
        let root = self.root.clone();
        let m = meta.clone();
        let path = file.path().to_owned();
        let installed = blocking(move || {
            let verified = match proof {
                Some(v) => v,
                None => snapshot::check(&root, &m, &path)?,
            };
            snapshot::write(&db, verified, &path)
        })
        .await;
        match installed {
            Ok(state) => {
                self.installed = (self.installed.0 + 1, state.head.map(|(h, _)| h));
                self.settle(state);
                self.slot.offer(meta.clone(), file);
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
