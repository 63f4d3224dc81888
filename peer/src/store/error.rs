//! What can go wrong with the peer's store, and how it reaches openraft.

use std::path::PathBuf;

use conclave_shared::chain::ChainFailure;
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use thiserror::Error;

use crate::types::{NodeId, StorageError};

/// Why the store failed. A bad *entry* is never an error (it becomes a `refused` block);
/// these are failures of the disk, of the file's contents, or of the caller.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the raft log file {path} failed: {source}")]
    Wal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the peer database failed: {0}")]
    Db(#[from] redb::Error),
    #[error(
        "{path} has store format {found}; this build reads only format {supported}: run the \
         Conclave that wrote it, or move the directory away and rejoin with --resync"
    )]
    UnknownFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error(
        "the stored {what} is corrupt ({why}): restore the data directory from a backup or \
         rejoin with --resync"
    )]
    Corrupt { what: String, why: String },
    #[error("cannot encode {what}: {why}")]
    Encode { what: &'static str, why: String },
    #[error(
        "the stored chain fails verification at height {}: {}; the data directory was altered \
         or damaged: rejoin with --resync",
        .0.height,
        .0.reason
    )]
    Chain(ChainFailure),
    #[error("a record of {len} bytes is larger than the format's {max}")]
    RecordTooLarge { len: usize, max: usize },
    #[error("a batch is already in flight: complete or drop it before storing another")]
    InflightBusy,
    #[error("the batch does not match the outbox: {0}")]
    BatchMismatch(String),
    #[error("the snapshot is refused: {0}")]
    BadSnapshot(String),
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("already receiving {0} snapshots; try again later")]
    SnapshotsBusy(usize),
    #[error("an internal check failed: {0}; this is a bug in Conclave, please report it")]
    Invariant(String),
    #[error("a storage task failed: {0}")]
    Task(String),
    #[error(
        "the state machine is unusable after an earlier failure: restart the peer to reload it \
         from disk"
    )]
    Poisoned,
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// Wraps this error for openraft, which treats every storage error as fatal.
    pub(crate) fn into_raft(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// `.db()?` turns any of redb's error types into a [`StoreError`].
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db(e.into()))
    }
}
