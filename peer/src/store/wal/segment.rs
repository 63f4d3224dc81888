//! One segment file of the Raft log: a header, then framed records, each checksummed over
//! its predecessor's checksum as well as its own bytes (the layout is in
//! docs/ARCHITECTURE.md, "A peer's files").
//!
//! The chained checksum is what makes a preallocated, overwritten file safe to read back: a
//! scan stops at the first frame that is not the successor of the one before, so bytes left
//! behind by a truncation, a torn write, or an older life of the file can never be taken for
//! entries, even when they are well-formed records of their own.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::error::StoreError;

pub(crate) const MAGIC: [u8; 8] = *b"CNCLVWAL";
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// magic, version, reserved, first index, previous check.
pub(crate) const HEADER_LEN: u64 = 8 + 4 + 4 + 8 + 8;
/// Payload length (u32) and check (u64), little-endian, before every payload.
pub(crate) const FRAME_LEN: u64 = 4 + 8;
const SUFFIX: &str = ".wal";

/// A segment's fixed header: the index of its first record and the check of the record
/// before it (in the previous segment; 0 when the log starts afresh here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub first_index: u64,
    pub prev_check: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_index.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_check.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8], path: &Path) -> Result<Header, StoreError> {
        let bad =
            |why: String| StoreError::corrupt(format!("raft log segment {}", path.display()), why);
        if b.len() < HEADER_LEN as usize {
            return Err(bad(format!("{} bytes, shorter than its header", b.len())));
        }
        if b[..8] != MAGIC {
            return Err(bad("not a Conclave raft log segment (bad magic)".into()));
        }
        let version = u32_at(b, 8);
        if version != SEGMENT_VERSION {
            return Err(bad(format!(
                "segment format {version}; this build reads only {SEGMENT_VERSION}"
            )));
        }
        Ok(Header {
            first_index: u64_at(b, 16),
            prev_check: u64_at(b, 24),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The check of a payload that follows a record whose check was `prev`: the first 8 bytes
/// of SHA-256 over both (and the length).
pub(crate) fn check(prev: u64, payload: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(prev.to_le_bytes());
    h.update((payload.len() as u32).to_le_bytes());
    h.update(payload);
    let d = h.finalize();
    u64_at(&d, 0)
}

/// Appends the frame of `payload` (following a record checked `prev`) to `out`; returns
/// its check. The caller bounds the payload's size.
pub(crate) fn frame(prev: u64, payload: &[u8], out: &mut Vec<u8>) -> u64 {
    let c = check(prev, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(payload);
    c
}

pub(crate) fn file_name(first_index: u64) -> String {
    format!("{first_index:020}{SUFFIX}")
}

/// The first index a segment's file name gives, or None for any other file.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One record found by a scan.
pub(crate) struct Found {
    /// Where its frame starts.
    pub offset: u64,
    pub check: u64,
    pub payload: Vec<u8>,
}

/// What a scan of one segment found.
pub(crate) struct Scanned {
    pub header: Header,
    pub records: Vec<Found>,
    /// Where the next frame would go: just after the last valid record.
    pub end: u64,
    /// Why the scan stopped before the end of the file, if it did for any reason other than
    /// meeting zeros (the unwritten, preallocated rest).
    pub stopped: Option<String>,
}

/// Reads a segment from its header to the first frame that is not a valid successor: a zero
/// or oversized length, a frame running past the end of the file, or a wrong check. Only
/// the caller knows whether stopping early is a torn tail or damage.
pub(crate) fn scan(path: &Path, max_payload: usize) -> Result<Scanned, StoreError> {
    let io = |e: std::io::Error| StoreError::Wal {
        path: path.to_owned(),
        source: e,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut file);
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_up_to(&mut reader, &mut head).map_err(io)?;
    let header = Header::decode(&head[..got], path)?;
    let mut prev = header.prev_check;
    let mut offset = HEADER_LEN;
    let mut records = Vec::new();
    let mut stopped = None;
    loop {
        if offset + FRAME_LEN > size {
            break;
        }
        let mut fh = [0u8; FRAME_LEN as usize];
        if read_up_to(&mut reader, &mut fh).map_err(io)? < fh.len() {
            break;
        }
        let len = u32_at(&fh, 0) as u64;
        let want = u64_at(&fh, 4);
        if len == 0 && want == 0 {
            break;
        }
        if len == 0 || len > max_payload as u64 || offset + FRAME_LEN + len > size {
            stopped = Some(format!("a frame of {len} bytes at offset {offset}"));
            break;
        }
        let mut payload = vec![0u8; len as usize];
        if read_up_to(&mut reader, &mut payload).map_err(io)? < payload.len() {
            stopped = Some(format!("a short frame at offset {offset}"));
            break;
        }
        let c = check(prev, &payload);
        if c != want {
            stopped = Some(format!(
                "a frame at offset {offset} whose check does not follow"
            ));
            break;
        }
        records.push(Found {
            offset,
            check: c,
            payload,
        });
        prev = c;
        offset += FRAME_LEN + len;
    }
    Ok(Scanned {
        header,
        records,
        end: offset,
        stopped,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// An open segment file.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub file: File,
    pub header: Header,
}

impl Segment {
    pub(crate) fn open(path: PathBuf, header: Header) -> Result<Segment, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Wal {
                path: path.clone(),
                source,
            })?;
        Ok(Segment { path, file, header })
    }

    /// Creates a segment durably: written under a temporary name, preallocated to `bytes`
    /// (so that later appends change no file metadata and `fdatasync` stays cheap), synced,
    /// renamed into place and the directory synced. A crash leaves either no segment or a
    /// whole one; a leftover temporary file is removed at the next open.
    pub(crate) fn create(dir: &Path, header: Header, bytes: u64) -> Result<Segment, StoreError> {
        let path = dir.join(file_name(header.first_index));
        let tmp = dir.join(format!("{}.tmp", file_name(header.first_index)));
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Wal { path: p, source }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        preallocate(&file, bytes).map_err(io(&tmp))?;
        file.write_all_at(&header.encode(), 0).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(dir)?;
        Ok(Segment { path, file, header })
    }
}

#[cfg(target_os = "linux")]
fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    let len = i64::try_from(bytes).map_err(std::io::Error::other)?;
    match nix::fcntl::posix_fallocate(file, 0, len) {
        Ok(()) => Ok(()),
        // A file system without fallocate: the file grows as it is written, which is
        // correct, only slower to sync.
        Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_file: &File, _bytes: u64) -> std::io::Result<()> {
    Ok(())
}

/// Makes a directory's entries (a created, renamed or removed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Wal {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("00000000000000000042.wal.tmp"), None);
        assert_eq!(parse_name("42.wal"), None);
        assert_eq!(parse_name("peer.redb"), None);
    }

    #[test]
    fn a_scan_stops_at_a_frame_that_does_not_follow() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            first_index: 7,
            prev_check: 99,
        };
        let seg = Segment::create(dir.path(), header, 4096).unwrap();
        let mut buf = Vec::new();
        let c1 = frame(99, b"one", &mut buf);
        let c2 = frame(c1, b"two", &mut buf);
        // A well-formed record, but the successor of something else: left over from before.
        frame(12345, b"stale", &mut buf);
        seg.file.write_all_at(&buf, HEADER_LEN).unwrap();

        let s = scan(&seg.path, 1024).unwrap();
        assert_eq!(s.header, header);
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.records[1].check, c2);
        assert_eq!(s.records[1].payload, b"two");
        assert_eq!(s.end, HEADER_LEN + 2 * FRAME_LEN + 6);
        assert!(s.stopped.is_some(), "the stale frame is not taken");
    }

    #[test]
    fn zeros_end_a_segment_quietly_and_oversized_frames_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            first_index: 1,
            prev_check: 0,
        };
        let seg = Segment::create(dir.path(), header, 4096).unwrap();
        let s = scan(&seg.path, 1024).unwrap();
        assert!(s.records.is_empty() && s.stopped.is_none());
        assert_eq!(s.end, HEADER_LEN);

        let mut forged = Vec::new();
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        forged.extend_from_slice(&1u64.to_le_bytes());
        seg.file.write_all_at(&forged, HEADER_LEN).unwrap();
        let s = scan(&seg.path, 1024).unwrap();
        assert!(s.records.is_empty());
        assert!(s.stopped.is_some());
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        std::fs::write(&path, b"SQLite format 3\0 and more bytes here").unwrap();
        assert!(matches!(scan(&path, 1024), Err(StoreError::Corrupt { .. })));
    }
}
