//! Snapshot files: openraft's `SnapshotData` is a file in `<store>/snapshots/`, never the
//! whole chain in memory.
//!
//! A [`SnapshotFile`] is a handle to one file; the file is removed when the last handle to it
//! is dropped (the slot of the current snapshot, a sender streaming it, openraft installing
//! it). Nothing in the directory outlives the process that made it: every file is either
//! rebuilt on demand (openraft builds a snapshot at start-up when the log was purged) or was a
//! transfer that did not finish, so the directory is emptied when the store opens.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::StoreError;
use super::snapshot::Verified;

/// The directory inside the store's directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Where snapshot files are made; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    dir: Arc<PathBuf>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::SnapshotFile {
        path: path.to_owned(),
        source,
    }
}

impl Spool {
    /// Creates `<store_dir>/snapshots` (owner only) and removes what an earlier run left.
    pub(crate) fn open(store_dir: &Path) -> Result<Self, StoreError> {
        let dir = store_dir.join(SNAPSHOT_DIR);
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&dir).map_err(file_err(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(file_err(&dir))? {
            let entry = entry.map_err(file_err(&dir))?;
            let path = entry.path();
            if path.is_file() {
                std::fs::remove_file(&path).map_err(file_err(&path))?;
            }
        }
        Ok(Self { dir: Arc::new(dir) })
    }

    /// A new empty file `<what>-<random>.snap`, open for writing, and the handle that owns it.
    pub(crate) fn create(&self, what: &str) -> Result<(File, SnapshotFile), StoreError> {
        let name = format!("{what}-{}.snap", hex::encode(rand::random::<[u8; 8]>()));
        let path = self.dir.join(name);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&path).map_err(file_err(&path))?;
        Ok((
            file,
            SnapshotFile {
                owned: Arc::new(Owned { path }),
                verified: None,
            },
        ))
    }
}

/// Removes the file when the last handle goes.
#[derive(Debug)]
struct Owned {
    path: PathBuf,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One snapshot's bytes in a file (the layout of `snapshot.rs`): openraft's `SnapshotData`.
///
/// A handle that came through `SnapshotInbox` also carries the proof that its bytes were
/// verified under the root key ([`Verified`], which only `snapshot::check` makes), so the
/// state machine installs it without checking every signature a second time.
pub struct SnapshotFile {
    owned: Arc<Owned>,
    verified: Option<Verified>,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.owned.path
    }

    /// The file's length in bytes now.
    pub fn size(&self) -> Result<u64, StoreError> {
        std::fs::metadata(self.path())
            .map(|m| m.len())
            .map_err(file_err(self.path()))
    }

    /// Another handle to the same file, without the proof of verification.
    pub(crate) fn share(&self) -> SnapshotFile {
        SnapshotFile {
            owned: self.owned.clone(),
            verified: None,
        }
    }

    pub(crate) fn with_verified(mut self, v: Verified) -> Self {
        self.verified = Some(v);
        self
    }

    pub(crate) fn take_verified(&mut self) -> Option<Verified> {
        self.verified.take()
    }
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("path", &self.owned.path)
            .field("verified", &self.verified.is_some())
            .finish()
    }
}
