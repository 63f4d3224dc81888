//! The Raft log as an append-only write-ahead log: a directory of preallocated segment files
//! (`segment.rs`), appended with one `pwrite` and made durable with one `fdatasync`.
//!
//! Why not redb, which holds everything else: a durable redb commit rewrites the changed
//! B-tree pages, the allocator state and the header before its fsync, 0.5-0.7 ms on this
//! machine against 0.08 ms for a small `fdatasync` into a preallocated file, and the log is
//! on every write's path twice (the leader's append and each follower's). redb keeps the
//! chain, the vote and the outbox.
//!
//! - An append is written at once (readable by the replication tasks from the page cache)
//!   and reported flushed by the flusher thread after its `fdatasync`; appends that arrive
//!   during one sync share the next (group commit).
//! - Memory holds one small location per entry (segment, offset, length, check, log id);
//!   entries are read back with `pread` and decoded with a byte limit.
//! - A truncation zeroes the first removed frame and syncs before it returns, so removed
//!   entries cannot come back after a crash; a purge deletes whole segments once every
//!   entry in them is purged (the store records `last_purged` durably first).
//! - Opening scans every segment. A tail that stops early in the last segment is a write
//!   the crash cut short and is dropped (never reported flushed, so Raft allows it); a gap or
//!   a bad frame anywhere else is damage and is refused.

mod segment;

use std::collections::VecDeque;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use openraft::storage::LogFlushed;

use super::disk::{decode, encode, MAX_ENTRY_BYTES};
use super::error::StoreError;
use crate::types::{Entry, LogId, TypeConfig};
use segment::{Header, Segment, FRAME_LEN, HEADER_LEN};

/// The directory inside the store directory.
pub const WAL_DIR: &str = "wal";
/// A segment's preallocated size; a segment is closed once it passes it.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where one entry lies.
#[derive(Clone)]
struct Loc {
    segment: Arc<Segment>,
    /// Where its frame starts.
    offset: u64,
    len: u32,
    check: u64,
    log_id: LogId,
}

struct State {
    dir: PathBuf,
    segment_bytes: u64,
    /// Every segment on disk, oldest first; the last is written to.
    segments: Vec<Arc<Segment>>,
    /// Consecutive entries, oldest first.
    entries: VecDeque<Loc>,
    /// Where the next frame goes in the last segment, and the check it follows.
    tail: u64,
    tail_check: u64,
    /// The highest index purged (entries at or below it are gone or going).
    purged: Option<u64>,
    /// Set by a failed write: the file may hold a partial frame, so nothing more is written
    /// until a restart rescans it.
    failed: Option<String>,
    /// The last entries written, decoded, with their encoded sizes: replication and the
    /// state machine read what was just appended, and serving it from here spares them a
    /// trip to the blocking pool. Always a suffix of `entries`.
    recent: VecDeque<(Entry, usize)>,
    recent_bytes: usize,
}

/// Bounds of the recent entries kept in memory.
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 8 * 1024 * 1024;

/// Entries encoded for [`Wal::append_encoded`].
pub(crate) struct Encoded {
    entries: Vec<(Entry, usize)>,
    payloads: Vec<(LogId, Vec<u8>)>,
    /// Their encoded size in all.
    pub bytes: usize,
}

impl Encoded {
    pub(crate) fn new(entries: Vec<Entry>) -> Result<Encoded, StoreError> {
        let mut payloads = Vec::with_capacity(entries.len());
        let mut sized = Vec::with_capacity(entries.len());
        let mut total = 0usize;
        for entry in entries {
            let bytes = encode(&entry, "raft log entry")?;
            // Refused here rather than written: an entry we could not read back would stop
            // this peer at its next start.
            if bytes.len() > MAX_ENTRY_BYTES {
                return Err(StoreError::Encode {
                    what: "raft log entry",
                    why: format!(
                        "entry {} is {} bytes, more than {MAX_ENTRY_BYTES}",
                        entry.log_id,
                        bytes.len()
                    ),
                });
            }
            total = total.saturating_add(bytes.len());
            payloads.push((entry.log_id, bytes));
            let len = payloads.last().map(|(_, b)| b.len()).unwrap_or(0);
            sized.push((entry, len));
        }
        Ok(Encoded {
            entries: sized,
            payloads,
            bytes: total,
        })
    }
}

/// The first index `range` asks for, but not before `first`.
fn start_of(range: &(Bound<u64>, Bound<u64>), first: u64) -> u64 {
    match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => first,
    }
    .max(first)
}

fn inside(range: &(Bound<u64>, Bound<u64>), index: u64) -> bool {
    match range.1 {
        Bound::Included(e) => index <= e,
        Bound::Excluded(e) => index < e,
        Bound::Unbounded => true,
    }
}

/// The write-ahead log. Shared by the log store and its readers; the lock is held only for
/// bookkeeping and the `pwrite` of an append, never across an `fsync` or a read.
pub(crate) struct Wal {
    state: Mutex<State>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, dropping entries at or below `purged`.
    pub(crate) fn open(
        dir: &Path,
        purged: Option<u64>,
        segment_bytes: u64,
    ) -> Result<Arc<Wal>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut names = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|source| wal_io(dir, source))?;
        for item in listing {
            let item = item.map_err(|source| wal_io(dir, source))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A segment whose creation a crash interrupted: it never held an entry.
                let _ = std::fs::remove_file(item.path());
            } else if let Some(first) = segment::parse_name(&name) {
                names.push((first, item.path()));
            }
        }
        names.sort();

        let mut state = State {
            dir: dir.to_owned(),
            segment_bytes,
            segments: Vec::new(),
            entries: VecDeque::new(),
            tail: HEADER_LEN,
            tail_check: 0,
            purged,
            failed: None,
            recent: VecDeque::new(),
            recent_bytes: 0,
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let scanned = segment::scan(&path, MAX_ENTRY_BYTES)?;
            let is_last = i + 1 == count;
            let damaged =
                |why: String| StoreError::corrupt(format!("raft log {}", path.display()), why);
            if scanned.header.first_index != first {
                return Err(damaged(format!(
                    "its header says it starts at index {}",
                    scanned.header.first_index
                )));
            }
            let all_purged = state.last_index().is_none_or(|l| Some(l) <= purged);
            if all_purged {
                // Nothing before this segment is still needed; it may start anywhere (a
                // snapshot installed past the end, or a fresh start after a full purge).
                state.entries.clear();
            } else if state.next_index() != Some(first) {
                return Err(damaged(format!(
                    "it starts at index {first}, but the log before it ends at {:?}",
                    state.last_index()
                )));
            } else if scanned.header.prev_check != state.tail_check {
                return Err(damaged("it does not follow the segment before it".into()));
            }
            let seg = Arc::new(Segment::open(path.clone(), scanned.header)?);
            for (index, found) in (first..).zip(&scanned.records) {
                let entry: Entry = decode::<_, MAX_ENTRY_BYTES>(&found.payload, "raft log entry")?;
                if entry.log_id.index != index {
                    return Err(damaged(format!(
                        "entry {} is stored at index {index}",
                        entry.log_id
                    )));
                }
                state.entries.push_back(Loc {
                    segment: seg.clone(),
                    offset: found.offset,
                    len: found.payload.len() as u32,
                    check: found.check,
                    log_id: entry.log_id,
                });
            }
            // Stopping early is normal before the end of a segment that a truncation cut
            // and later appends did not fill again (stale frames follow, which no longer
            // chain). Damage shows as the next segment not following; in the last segment it
            // is a write a crash cut short.
            if let (Some(why), true) = (&scanned.stopped, is_last) {
                tracing::warn!(
                    segment = %path.display(),
                    "the raft log ends at {why}: a write cut short by a crash, dropped"
                );
            }
            state.tail = scanned.end;
            state.tail_check = scanned
                .records
                .last()
                .map(|r| r.check)
                .unwrap_or(scanned.header.prev_check);
            state.segments.push(seg);
        }
        state.drop_purged();
        if let Some(why) = state.delete_purged_segments() {
            tracing::warn!("{why}");
        }
        Ok(Arc::new(Wal {
            state: Mutex::new(state),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bookkeeping that matches the files (every
        // step updates memory after the disk), so the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the next append starts a new segment (which syncs and creates a file).
    pub(crate) fn would_roll(&self) -> bool {
        let st = self.lock();
        st.segments.is_empty() || st.tail >= st.segment_bytes
    }

    /// The last entry's log id, if any entry is held.
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.lock().entries.back().map(|l| l.log_id)
    }

    /// Writes `entries` (which must follow the last entry held, or start afresh after a
    /// purge past the end). They are readable when this returns, durable after [`Wal::sync`].
    pub(crate) fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.append_encoded(Encoded::new(entries.to_vec())?)
    }

    /// [`Wal::append`] of entries encoded beforehand (so that a caller can tell their size).
    pub(crate) fn append_encoded(&self, encoded: Encoded) -> Result<(), StoreError> {
        let Encoded {
            entries, payloads, ..
        } = encoded;
        let mut st = self.lock();
        if let Some(why) = &st.failed {
            return Err(StoreError::Invariant(format!(
                "the raft log refused writes after an earlier failure ({why}); restart the peer"
            )));
        }
        let mut buf = Vec::new();
        let mut pending: Vec<Loc> = Vec::new();
        for (log_id, bytes) in payloads {
            let index = log_id.index;
            let next = pending
                .last()
                .map(|l| l.log_id.index + 1)
                .or_else(|| st.next_index());
            let fresh_start = if next == Some(index) {
                false
            } else if pending.is_empty() && st.last_index().is_none_or(|l| Some(l) <= st.purged) {
                // Nothing held that is still needed (a new log, or all purged): the log
                // may start again at any index.
                true
            } else {
                return Err(StoreError::Invariant(format!(
                    "raft log append of index {index} after {:?}",
                    next.map(|n| n - 1)
                )));
            };
            let full = st.segments.is_empty() || st.tail >= st.segment_bytes;
            if fresh_start || full {
                // Write out what is gathered for the old segment first.
                st.write(&buf, &mut pending)?;
                buf.clear();
                if fresh_start {
                    st.entries.clear();
                    st.recent.clear();
                    st.tail_check = 0;
                }
                st.roll(index)?;
            }
            let offset = st.tail + buf.len() as u64;
            let check = segment::frame(
                pending.last().map(|l| l.check).unwrap_or(st.tail_check),
                &bytes,
                &mut buf,
            );
            let segment = st.segments.last().cloned().ok_or_else(|| {
                StoreError::Invariant("raft log has no segment after rolling".into())
            })?;
            pending.push(Loc {
                segment,
                offset,
                len: bytes.len() as u32,
                check,
                log_id,
            });
            if st.tail + buf.len() as u64 >= st.segment_bytes {
                st.write(&buf, &mut pending)?;
                buf.clear();
            }
        }
        st.write(&buf, &mut pending)?;
        st.remember(entries);
        Ok(())
    }

    /// [`Wal::read`] served from the recent entries kept in memory, without touching the
    /// files; None if the range starts before them.
    pub(crate) fn read_recent(
        &self,
        range: (Bound<u64>, Bound<u64>),
        max_entries: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        let st = self.lock();
        let first_held = st.entries.front()?.log_id.index;
        let start = start_of(&range, first_held);
        let first_recent = st.recent.front().map(|(e, _)| e.log_id.index)?;
        if start < first_recent {
            return None;
        }
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for (e, len) in st.recent.iter().skip((start - first_recent) as usize) {
            if !inside(&range, e.log_id.index) {
                break;
            }
            if !out.is_empty()
                && (out.len() >= max_entries || bytes.saturating_add(*len) > max_bytes)
            {
                break;
            }
            bytes = bytes.saturating_add(*len);
            out.push(e.clone());
        }
        Some(out)
    }

    /// Reads entries in `range`: at most `max_entries`, and at most `max_bytes` of them
    /// unless the first alone is larger.
    pub(crate) fn read(
        &self,
        range: (Bound<u64>, Bound<u64>),
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let locs: Vec<Loc> = {
            let st = self.lock();
            let Some(first) = st.entries.front().map(|l| l.log_id.index) else {
                return Ok(Vec::new());
            };
            let start = start_of(&range, first);
            let skip = (start - first) as usize;
            let mut bytes = 0usize;
            let mut out = Vec::new();
            for l in st.entries.iter().skip(skip) {
                if !inside(&range, l.log_id.index) {
                    break;
                }
                let len = l.len as usize;
                if !out.is_empty()
                    && (out.len() >= max_entries || bytes.saturating_add(len) > max_bytes)
                {
                    break;
                }
                bytes = bytes.saturating_add(len);
                out.push(l.clone());
            }
            out
        };
        let mut entries = Vec::with_capacity(locs.len());
        for l in locs {
            let mut payload = vec![0u8; l.len as usize];
            l.segment
                .file
                .read_exact_at(&mut payload, l.offset + FRAME_LEN)
                .map_err(|source| wal_io(&l.segment.path, source))?;
            let entry: Entry = decode::<_, MAX_ENTRY_BYTES>(&payload, "raft log entry")?;
            if entry.log_id != l.log_id {
                return Err(StoreError::corrupt(
                    format!("raft log {}", l.segment.path.display()),
                    format!("entry {} read where {} was written", entry.log_id, l.log_id),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Removes every entry at or after `index`, durably.
    pub(crate) fn truncate(&self, index: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        let Some(first) = st.entries.front().map(|l| l.log_id.index) else {
            return Ok(());
        };
        let at = index.saturating_sub(first) as usize;
        let Some(cut) = st.entries.get(at).cloned() else {
            return Ok(());
        };
        // Later segments go whole; the cut frame's length and check are zeroed, which ends
        // every scan there.
        while st
            .segments
            .last()
            .is_some_and(|s| !Arc::ptr_eq(s, &cut.segment))
        {
            if let Some(s) = st.segments.pop() {
                std::fs::remove_file(&s.path).map_err(|e| wal_io(&s.path, e))?;
            }
        }
        cut.segment
            .file
            .write_all_at(&[0u8; FRAME_LEN as usize], cut.offset)
            .and_then(|()| cut.segment.file.sync_data())
            .map_err(|e| wal_io(&cut.segment.path, e))?;
        segment::sync_dir(&st.dir)?;
        st.tail_check = match at.checked_sub(1).and_then(|p| st.entries.get(p)) {
            Some(prev) if Arc::ptr_eq(&prev.segment, &cut.segment) => prev.check,
            _ => cut.segment.header.prev_check,
        };
        st.tail = cut.offset;
        st.entries.truncate(at);
        while st
            .recent
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, len)) = st.recent.pop_back() {
                st.recent_bytes -= len;
            }
        }
        Ok(())
    }

    /// Forgets entries at or below `index` and deletes the segments that hold nothing else.
    /// The caller has recorded the purge durably first.
    pub(crate) fn purge(&self, index: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.purged = st.purged.max(Some(index));
        st.drop_purged();
        match st.delete_purged_segments() {
            Some(why) => Err(StoreError::Invariant(why)),
            None => Ok(()),
        }
    }

    /// The file a sync must flush to cover every write made before this call.
    fn sync_target(&self) -> Option<Arc<Segment>> {
        // Earlier segments were synced when the log moved on from them.
        self.lock().segments.last().cloned()
    }

    /// Makes every append made before this call durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        match self.sync_target() {
            Some(s) => s.file.sync_data().map_err(|e| wal_io(&s.path, e)),
            None => Ok(()),
        }
    }
}

impl State {
    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|l| l.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.last_index().map(|l| l + 1)
    }

    /// Writes gathered frames at the tail and records their locations.
    fn write(&mut self, buf: &[u8], pending: &mut Vec<Loc>) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(seg) = self.segments.last().cloned() else {
            return Err(StoreError::Invariant(
                "raft log write with no segment".into(),
            ));
        };
        if let Err(e) = seg.file.write_all_at(buf, self.tail) {
            self.failed = Some(e.to_string());
            return Err(wal_io(&seg.path, e));
        }
        self.tail += buf.len() as u64;
        if let Some(last) = pending.last() {
            self.tail_check = last.check;
        }
        self.entries.extend(pending.drain(..));
        Ok(())
    }

    /// Closes the current segment (synced, so that only the last ever needs a sync) and
    /// starts a new one whose first entry is `first_index`.
    fn roll(&mut self, first_index: u64) -> Result<(), StoreError> {
        if let Some(old) = self.segments.last() {
            old.file.sync_data().map_err(|e| wal_io(&old.path, e))?;
        }
        let header = Header {
            first_index,
            prev_check: self.tail_check,
        };
        if self
            .segments
            .last()
            .is_some_and(|s| s.header.first_index == first_index)
        {
            // An empty segment at this index (everything in it truncated): start it again.
            if let Some(s) = self.segments.pop() {
                std::fs::remove_file(&s.path).map_err(|e| wal_io(&s.path, e))?;
            }
        }
        let seg = Segment::create(&self.dir, header, self.segment_bytes)?;
        self.segments.push(Arc::new(seg));
        self.tail = HEADER_LEN;
        self.tail_check = header.prev_check;
        Ok(())
    }

    fn drop_purged(&mut self) {
        let Some(purged) = self.purged else { return };
        while self
            .entries
            .front()
            .is_some_and(|l| l.log_id.index <= purged)
        {
            self.entries.pop_front();
        }
        while self
            .recent
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= purged)
        {
            if let Some((_, len)) = self.recent.pop_front() {
                self.recent_bytes -= len;
            }
        }
    }

    /// Keeps the entries just written in memory (they follow the recent ones, which end at
    /// the tail), dropping the oldest beyond the bounds.
    fn remember(&mut self, entries: Vec<(Entry, usize)>) {
        let follows = match (self.recent.back(), entries.first()) {
            (Some((last, _)), Some((first, _))) => last.log_id.index + 1 == first.log_id.index,
            _ => true,
        };
        if !follows {
            // An earlier append failed half way: start the suffix again here.
            self.recent.clear();
            self.recent_bytes = 0;
        }
        for (e, len) in entries {
            self.recent_bytes += len;
            self.recent.push_back((e, len));
        }
        while self.recent.len() > RECENT_ENTRIES || self.recent_bytes > RECENT_BYTES {
            match self.recent.pop_front() {
                Some((_, len)) => self.recent_bytes -= len,
                None => break,
            }
        }
    }

    /// Deletes every segment but the last whose entries are all purged (those before the
    /// first entry still held). Returns why it could not, if it could not.
    fn delete_purged_segments(&mut self) -> Option<String> {
        let keep_from = match self.entries.front() {
            Some(l) => l.segment.header.first_index,
            None => self.segments.last()?.header.first_index,
        };
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].header.first_index < keep_from {
            let s = self.segments.remove(0);
            if let Err(e) = std::fs::remove_file(&s.path) {
                return Some(format!(
                    "cannot delete purged raft log segment {}: {e}",
                    s.path.display()
                ));
            }
            removed = true;
        }
        if removed {
            if let Err(e) = segment::sync_dir(&self.dir) {
                return Some(e.to_string());
            }
        }
        None
    }
}

fn wal_io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Wal {
        path: path.to_owned(),
        source,
    }
}

/// The flusher thread's handle: after an append, openraft's callback is queued here, and
/// one `fdatasync` serves every callback queued before it began (group commit). Cheap to
/// clone; the thread ends with the last handle.
#[derive(Clone)]
pub(crate) struct Flusher {
    waiting: Sender<LogFlushed<TypeConfig>>,
}

impl Flusher {
    pub(crate) fn new(wal: &Arc<Wal>) -> Self {
        let (waiting, rx) = channel();
        // Weak, so that the files close with the store.
        let wal = Arc::downgrade(wal);
        let spawned = std::thread::Builder::new()
            .name("wal-flush".into())
            .spawn(move || run(&wal, &rx));
        if let Err(e) = spawned {
            // Without it nothing is ever reported durable: Raft stalls, loudly.
            tracing::error!("cannot start the raft log's flusher thread: {e}");
        }
        Self { waiting }
    }

    /// Calls `callback` once every append made before this call is durable.
    pub(crate) fn raft(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError> {
        self.waiting.send(callback).map_err(|unsent| {
            unsent
                .0
                .log_io_completed(Err(std::io::Error::other("the raft log's flusher stopped")));
            StoreError::Task("the raft log's flusher stopped".into())
        })
    }
}

fn run(wal: &Weak<Wal>, waiting: &Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        let result = match wal.upgrade() {
            Some(wal) => wal.sync().map_err(|e| {
                tracing::error!("cannot make the raft log durable: {e}");
                e.to_string()
            }),
            None => Err("the raft log is closed".to_string()),
        };
        for cb in batch {
            cb.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests;
