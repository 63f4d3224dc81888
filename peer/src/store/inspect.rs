//! Read-only access to a stopped peer's stored chain, for `conclave verify` and
//! `conclave chain`.
//!
//! Unlike [`super::Store::open`], opening a [`BlockFile`] verifies nothing, writes nothing
//! and never creates the file: it checks the format version and hands out the blocks in
//! height order, read in bounded chunks, each decoded with the format's bounds. A block that
//! cannot be read or decoded is an `Err` item at its place, so the caller (a
//! `ChainVerifier`) can name the first bad height itself.
//!
//! redb locks the file while a peer has it open; [`InspectError::Running`] says so. A file
//! left by a peer that was killed needs redb's repair, which a read-only open cannot do: the
//! file is then copied to a private temporary directory, the copy repaired and read, and the
//! original left untouched.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use conclave_shared::chain::StoredBlock;
use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableError};
use thiserror::Error;

use super::error::{DbResult, StoreError};
use super::reader::{MAX_BLOCKS_PER_READ, MAX_BLOCK_READ_BYTES};
use super::replay::decode_block;
use super::schema::{
    BLOCKS, DB_FILE, FORMAT_KEY, META, OLDEST_FORMAT_VERSION, STORE_FORMAT_VERSION,
};

/// Why a stored chain cannot be opened for reading.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("there is no peer store at {0}: is this a peer's data directory?")]
    Missing(PathBuf),
    #[error("the peer using {0} is running; stop it first")]
    Running(PathBuf),
    #[error("cannot open {path}: {why}")]
    Open { path: PathBuf, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A peer's redb file, opened read-only; see the module docs.
pub struct BlockFile {
    db: Db,
}

enum Db {
    ReadOnly(ReadOnlyDatabase),
    /// A repaired copy, deleted with its directory when dropped (after the database, which
    /// is declared first and so dropped first).
    Copy {
        db: Database,
        _dir: RepairDir,
    },
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::ReadOnly(d) => d.begin_read(),
            Db::Copy { db, .. } => db.begin_read(),
        }
    }
}

/// A private temporary directory, removed when dropped.
struct RepairDir(PathBuf);

impl Drop for RepairDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `path` into a fresh private directory and opens the copy, letting redb repair it.
fn open_repaired_copy(path: &Path) -> Result<Db, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("conclave-inspect-{}-{nanos}", std::process::id()));
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(&dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let dir = RepairDir(dir);
    let copy = dir.0.join(DB_FILE);
    std::fs::copy(path, &copy).map_err(|e| format!("cannot copy it for repair: {e}"))?;
    let db = Database::create(&copy).map_err(|e| format!("its repair failed: {e}"))?;
    Ok(Db::Copy { db, _dir: dir })
}

impl BlockFile {
    /// Opens `store_dir/peer.redb` (the peer's `DIR/raft`) without writing to it.
    pub fn open(store_dir: &Path) -> Result<Self, InspectError> {
        let path = store_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(InspectError::Missing(path));
        }
        let db = match ReadOnlyDatabase::open(&path) {
            Ok(db) => Db::ReadOnly(db),
            // Left by a killed peer: read a repaired copy.
            Err(redb::DatabaseError::RepairAborted) => {
                tracing::info!(
                    "{} was not closed cleanly; reading a repaired copy",
                    path.display()
                );
                open_repaired_copy(&path).map_err(|why| InspectError::Open {
                    path: path.clone(),
                    why,
                })?
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let dir = store_dir.parent().unwrap_or(store_dir);
                return Err(InspectError::Running(dir.to_owned()));
            }
            Err(e) => {
                return Err(InspectError::Open {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let tx = db.begin_read().db()?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => {
                return Err(StoreError::corrupt("store", "it has no format version").into())
            }
            Err(e) => return Err(StoreError::Db(e.into()).into()),
        };
        match meta.get(FORMAT_KEY).db()?.map(|v| v.value()) {
            Some(OLDEST_FORMAT_VERSION..=STORE_FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnknownFormat {
                    path,
                    found,
                    supported: STORE_FORMAT_VERSION,
                }
                .into())
            }
            None => return Err(StoreError::corrupt("store", "it has no format version").into()),
        }
        drop(meta);
        drop(tx);
        Ok(Self { db })
    }

    /// The height of the last stored block; `None` if no block is stored.
    pub fn last_height(&self) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().db()?;
        let blocks = match tx.open_table(BLOCKS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StoreError::Db(e.into())),
        };
        let last = blocks.last().db()?.map(|(k, _)| k.value());
        Ok(last)
    }

    /// The stored blocks from height `from` on, in height order, read in chunks of at most
    /// [`MAX_BLOCKS_PER_READ`] blocks or about [`MAX_BLOCK_READ_BYTES`] bytes. After the
    /// first `Err` the iterator ends.
    pub fn blocks(&self, from: u64) -> Blocks<'_> {
        Blocks {
            file: self,
            next: Some(from),
            buffered: VecDeque::new(),
        }
    }

    /// Reads the next chunk from `from`; the rows' keys are their heights.
    fn chunk(&self, from: u64, out: &mut VecDeque<Result<StoredBlock, StoreError>>) -> Option<u64> {
        let rows = (|| -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
            let tx = self.db.begin_read().db()?;
            let table = match tx.open_table(BLOCKS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::Db(e.into())),
            };
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            for row in table.range(from..).db()? {
                let (k, v) = row.db()?;
                bytes += v.value().len();
                rows.push((k.value(), v.value().to_vec()));
                if rows.len() >= MAX_BLOCKS_PER_READ || bytes >= MAX_BLOCK_READ_BYTES {
                    break;
                }
            }
            Ok(rows)
        })();
        match rows {
            Err(e) => {
                out.push_back(Err(e));
                None
            }
            Ok(rows) => {
                let next = rows.last().and_then(|(h, _)| h.checked_add(1));
                for (height, bytes) in rows {
                    match decode_block(height, &bytes) {
                        Ok(b) => out.push_back(Ok(b)),
                        Err(why) => {
                            out.push_back(Err(StoreError::corrupt(
                                format!("block at height {height}"),
                                why,
                            )));
                            return None;
                        }
                    }
                }
                next
            }
        }
    }
}

/// The iterator of [`BlockFile::blocks`].
pub struct Blocks<'a> {
    file: &'a BlockFile,
    next: Option<u64>,
    buffered: VecDeque<Result<StoredBlock, StoreError>>,
}

impl Iterator for Blocks<'_> {
    type Item = Result<StoredBlock, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffered.is_empty() {
            let from = self.next?;
            self.next = self.file.chunk(from, &mut self.buffered);
        }
        let item = self.buffered.pop_front()?;
        if item.is_err() {
            self.next = None;
            self.buffered.clear();
        }
        Some(item)
    }
}
