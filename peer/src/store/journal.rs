//! The in-flight journal: the durable copy of the author's batch in flight, written before
//! the batch is sent.
//!
//! The outbox keeps the batch in redb, where making it durable costs a durable redb commit
//! (0.5-0.7 ms here) on every batch's path. The journal makes the same promise with one
//! small `pwrite` and `fdatasync` (about 0.1 ms): it holds the signed batch, the plaintexts
//! of its records (needed to seal them again under a newer key) and the next free seq, so
//! that after a crash the outbox can be put back exactly as it was when the batch left.
//!
//! Two slot files are written in turn, each entry under a generation number one above the
//! last and checked with SHA-256; opening takes the valid slot with the higher generation.
//! A write torn by a crash therefore leaves the previous entry readable. The outbox records
//! the generation it has settled (completed, refused or resealed) in redb, and on open puts
//! a newer, unsettled journal entry back if redb lost it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::disk::{decode, encode, MAX_ENTRY_BYTES};
use super::error::StoreError;

const MAGIC: [u8; 8] = *b"CNCLJRNL";
/// magic, generation, payload length, SHA-256 of the generation and payload.
const HEADER_LEN: usize = 8 + 8 + 4 + 32;
/// The journal's files inside the store directory.
pub const JOURNAL_FILES: [&str; 2] = ["inflight.0", "inflight.1"];
/// Preallocated per slot, so that a typical entry's sync changes no file metadata.
const SLOT_BYTES: u64 = 1024 * 1024;

/// What one journal entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    /// The signed batch's canonical bytes, as sent.
    pub batch: Vec<u8>,
    /// Its records' seqs and plaintexts, in order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// The outbox's next free seq when the batch was stored.
    pub next_seq: u64,
}

struct Slots {
    files: [File; 2],
    /// The generation of the newest entry written or found (0: none).
    generation: u64,
}

/// The two slot files. Written by the writer task only; the lock just makes it `Sync`.
pub(crate) struct Journal {
    dir: PathBuf,
    slots: Mutex<Slots>,
}

impl Journal {
    /// Opens (or creates) the slots in `dir`; returns the journal and its newest valid entry.
    pub(crate) fn open(dir: &Path) -> Result<(Journal, Option<(u64, JournalEntry)>), StoreError> {
        let mut newest: Option<(u64, JournalEntry)> = None;
        let mut files = Vec::with_capacity(2);
        for name in JOURNAL_FILES {
            let path = dir.join(name);
            // Plaintext of records not yet on the chain: the owner's eyes only.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|source| io(&path, source))?;
            if let Some((generation, entry)) = read_slot(&file, &path)? {
                if newest.as_ref().is_none_or(|(g, _)| generation > *g) {
                    newest = Some((generation, entry));
                }
            }
            files.push(file);
        }
        let [a, b]: [File; 2] = files
            .try_into()
            .map_err(|_| StoreError::Invariant("two journal slots".into()))?;
        let generation = newest.as_ref().map(|(g, _)| *g).unwrap_or(0);
        Ok((
            Journal {
                dir: dir.to_owned(),
                slots: Mutex::new(Slots {
                    files: [a, b],
                    generation,
                }),
            },
            newest,
        ))
    }

    /// The newest generation written or found (0: none).
    pub(crate) fn generation(&self) -> u64 {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// Writes `entry` durably under the next generation, into the slot not holding the
    /// newest; returns that generation. Blocking (an `fdatasync`).
    pub(crate) fn write(&self, entry: &JournalEntry) -> Result<u64, StoreError> {
        let payload = encode(entry, "in-flight journal entry")?;
        if payload.len() > MAX_JOURNAL_PAYLOAD {
            return Err(StoreError::Encode {
                what: "in-flight journal entry",
                why: format!("{} bytes, more than {MAX_JOURNAL_PAYLOAD}", payload.len()),
            });
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let generation = slots.generation + 1;
        let slot = (generation % 2) as usize;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&generation.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&digest(generation, &payload));
        bytes.extend_from_slice(&payload);
        let path = self.dir.join(JOURNAL_FILES[slot]);
        let file = &slots.files[slot];
        let size = file.metadata().map_err(|e| io(&path, e))?.len();
        if size < SLOT_BYTES {
            preallocate(file, SLOT_BYTES).map_err(|e| io(&path, e))?;
        }
        file.write_all_at(&bytes, 0)
            .and_then(|()| {
                if size < SLOT_BYTES {
                    // A new or grown file: its size must be durable too.
                    file.sync_all()
                } else {
                    file.sync_data()
                }
            })
            .map_err(|e| io(&path, e))?;
        slots.generation = generation;
        Ok(generation)
    }
}

/// The largest entry: a batch (at most a block) and its plaintexts.
const MAX_JOURNAL_PAYLOAD: usize = 2 * MAX_ENTRY_BYTES;

fn digest(generation: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(generation.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// A slot's entry, or None if it is empty, torn or damaged (the other slot then holds the
/// newest entry that was completely written).
fn read_slot(file: &File, path: &Path) -> Result<Option<(u64, JournalEntry)>, StoreError> {
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    if size < HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| io(path, e))?;
    if header[..8] != MAGIC {
        return Ok(None);
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&header[8..16]);
    let generation = u64::from_le_bytes(g);
    let mut l = [0u8; 4];
    l.copy_from_slice(&header[16..20]);
    let len = u32::from_le_bytes(l) as usize;
    if len > MAX_JOURNAL_PAYLOAD || (HEADER_LEN + len) as u64 > size {
        tracing::warn!(path = %path.display(), "in-flight journal slot torn or damaged; ignored");
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, HEADER_LEN as u64)
        .map_err(|e| io(path, e))?;
    if digest(generation, &payload)[..] != header[20..52] {
        tracing::warn!(path = %path.display(), "in-flight journal slot torn or damaged; ignored");
        return Ok(None);
    }
    match decode::<JournalEntry, MAX_JOURNAL_PAYLOAD>(&payload, "in-flight journal entry") {
        Ok(entry) => Ok(Some((generation, entry))),
        Err(e) => {
            // The digest matched, so this is not a torn write: say so loudly, but the
            // outbox in redb may still hold the batch, so carry on without it.
            tracing::error!(path = %path.display(), "in-flight journal entry unreadable: {e}");
            Ok(None)
        }
    }
}

#[cfg(target_os = "linux")]
fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    let len = i64::try_from(bytes).map_err(std::io::Error::other)?;
    match nix::fcntl::posix_fallocate(file, 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_file: &File, _bytes: u64) -> std::io::Result<()> {
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Wal {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> JournalEntry {
        JournalEntry {
            batch: vec![n; 10],
            records: vec![(u64::from(n), vec![n; 3])],
            next_seq: u64::from(n) + 1,
        }
    }

    #[test]
    fn the_newest_whole_entry_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_none());
        for name in JOURNAL_FILES {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert_eq!(j.write(&entry(1)).unwrap(), 1);
        assert_eq!(j.write(&entry(2)).unwrap(), 2);
        assert_eq!(j.write(&entry(3)).unwrap(), 3);
        drop(j);
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found, Some((3, entry(3))));
        assert_eq!(j.write(&entry(4)).unwrap(), 4);
        drop(j);

        // Entry 4 went to slot 0; tear it: entry 3 in slot 1 is what is left.
        let slot0 = dir.path().join(JOURNAL_FILES[0]);
        let f = OpenOptions::new().write(true).open(&slot0).unwrap();
        f.write_all_at(&[0xff; 4], HEADER_LEN as u64 + 2).unwrap();
        drop(f);
        let (j, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found, Some((3, entry(3))));
        // The next write goes over the torn slot, above the newest generation seen.
        assert_eq!(j.write(&entry(5)).unwrap(), 4);
        drop(j);
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found, Some((4, entry(5))));
    }

    #[test]
    fn a_forged_length_is_refused_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 32]);
        std::fs::write(dir.path().join(JOURNAL_FILES[1]), &bytes).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_none());
    }
}
