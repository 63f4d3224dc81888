//! Receiving a snapshot from another member: a file to write it into, and the check that
//! must pass before openraft sees it.
//!
//! openraft treats any error of `install_snapshot` as fatal and stops the node, so a bad
//! snapshot must be refused *before* `Raft::install_full_snapshot`: [`Incoming::verify`]
//! reads the received file and verifies every block under the root key (the checks of
//! `verify_chain`), changing nothing. Only what passes becomes a [`Snapshot`] whose data
//! carries the proof, which the state machine then installs without checking every signature
//! again.

use std::sync::Arc;

use conclave_shared::identity::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::StoreError;
use super::snapshot;
use super::spool::{SnapshotFile, Spool};
use crate::types::{Snapshot, SnapshotMeta};

/// At most this many snapshots are received (and their files kept) at the same time; more
/// are refused, and their senders retry later.
pub const MAX_INCOMING_SNAPSHOTS: usize = 2;

/// Where this member receives snapshots; cheap to clone.
#[derive(Clone)]
pub struct SnapshotInbox {
    spool: Spool,
    root: Arc<PublicKey>,
    slots: Arc<Semaphore>,
}

impl SnapshotInbox {
    pub(crate) fn new(spool: Spool, root: Arc<PublicKey>) -> Self {
        Self {
            spool,
            root,
            slots: Arc::new(Semaphore::new(MAX_INCOMING_SNAPSHOTS)),
        }
    }

    /// A new empty file to receive one snapshot into, or [`StoreError::SnapshotsBusy`].
    pub fn begin(&self) -> Result<Incoming, StoreError> {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| StoreError::SnapshotsBusy(MAX_INCOMING_SNAPSHOTS))?;
        let (file, data) = self.spool.create("incoming")?;
        Ok(Incoming {
            file: Some(tokio::fs::File::from_std(file)),
            data: Some(data),
            root: self.root.clone(),
            _permit: permit,
        })
    }
}

/// One snapshot being received. Dropping it removes the file (unless a verified snapshot
/// made from it is still held) and frees its place in the inbox.
pub struct Incoming {
    file: Option<tokio::fs::File>,
    data: Option<SnapshotFile>,
    root: Arc<PublicKey>,
    _permit: OwnedSemaphorePermit,
}

impl Incoming {
    /// Where to write the received bytes, until [`Incoming::verify`].
    pub fn writer(&mut self) -> Option<&mut tokio::fs::File> {
        self.file.as_mut()
    }

    /// Checks the received bytes as a snapshot for `meta`, on the blocking pool: every block
    /// verifies under the root key and the contents cover the entries `meta` names. Returns
    /// the snapshot for `install_full_snapshot` and its number of blocks, or why it is
    /// refused. Changes nothing either way; may be called once.
    pub async fn verify(&mut self, meta: &SnapshotMeta) -> Result<(Snapshot, u64), StoreError> {
        if let Some(mut file) = self.file.take() {
            use tokio::io::AsyncWriteExt;
            let path = self.data.as_ref().map(|d| d.path().to_owned());
            file.flush()
                .await
                .map_err(|source| StoreError::SnapshotFile {
                    path: path.unwrap_or_default(),
                    source,
                })?;
        }
        let data = self
            .data
            .take()
            .ok_or_else(|| StoreError::Invariant("a snapshot verified twice".into()))?;
        let root = self.root.clone();
        let m = meta.clone();
        let path = data.path().to_owned();
        let verified = super::blocking(move || snapshot::check(&root, &m, &path)).await?;
        let blocks = verified.blocks();
        Ok((
            Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(data.with_verified(verified)),
            },
            blocks,
        ))
    }
}
