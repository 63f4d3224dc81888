//! The WAL on its own: appends across segments, reopening, torn tails, truncation, purges,
//! and damage that must be refused rather than read around.

use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload};

use super::segment::{self, FRAME_LEN};
use super::Wal;
use crate::store::error::StoreError;
use crate::types::{Entry, LogId};

/// Small segments, so that a few entries span several files.
const SMALL: u64 = 512;

fn entry(term: u64, index: u64, size: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(crate::types::Proposal {
            time_ms: index,
            kind: 1,
            body: vec![term as u8; size],
        }),
    }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i, 40)).collect()
}

fn all(wal: &Wal) -> Vec<Entry> {
    wal.read((Bound::Unbounded, Bound::Unbounded), usize::MAX, usize::MAX)
        .expect("read")
}

fn ids(es: &[Entry]) -> Vec<(u64, u64)> {
    es.iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| segment::parse_name(&e.unwrap().file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn appends_span_segments_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=10)).unwrap();
    wal.append(&entries(2, 11..=30)).unwrap();
    wal.sync().unwrap();
    assert!(segments(dir.path()).len() > 3, "{:?}", segments(dir.path()));
    let before = all(&wal);
    assert_eq!(before.len(), 30);
    drop(wal);

    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    assert_eq!(all(&wal), before);
    assert_eq!(wal.last_log_id().map(|l| l.index), Some(30));
    // Bounded reads: by count, by bytes (but always one), by range.
    let r = wal
        .read((Bound::Included(5), Bound::Excluded(25)), 3, usize::MAX)
        .unwrap();
    assert_eq!(ids(&r), vec![(1, 5), (1, 6), (1, 7)]);
    let r = wal
        .read((Bound::Included(12), Bound::Unbounded), usize::MAX, 1)
        .unwrap();
    assert_eq!(ids(&r), vec![(2, 12)]);
    // And it goes on where it stopped.
    wal.append(&entries(2, 31..=32)).unwrap();
    assert_eq!(all(&wal).len(), 32);
}

#[test]
fn an_append_that_does_not_follow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=3)).unwrap();
    assert!(matches!(
        wal.append(&entries(1, 5..=5)),
        Err(StoreError::Invariant(_))
    ));
    assert!(matches!(
        wal.append(&entries(1, 3..=3)),
        Err(StoreError::Invariant(_))
    ));
    assert_eq!(all(&wal).len(), 3);
}

#[test]
fn a_torn_tail_is_dropped_and_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, 1 << 20).unwrap();
    wal.append(&entries(1, 1..=5)).unwrap();
    drop(wal);
    // The last frame's payload half written, as a crash during the write leaves it.
    let path = dir.path().join(segment::file_name(1));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let s = segment::scan(&path, 1 << 20).unwrap();
    let last = s.records.last().unwrap().offset;
    file.write_all_at(&[0u8; 20], last + FRAME_LEN + 10)
        .unwrap();
    drop(file);

    let wal = Wal::open(dir.path(), None, 1 << 20).unwrap();
    assert_eq!(ids(&all(&wal)), ids(&entries(1, 1..=4)));
    wal.append(&entries(2, 5..=6)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), None, 1 << 20).unwrap();
    assert_eq!(
        ids(&all(&wal)),
        vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
    );
}

#[test]
fn truncated_entries_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=12)).unwrap();
    // Cut inside an earlier segment, then write entries of the same sizes over it: the old
    // frames after them are well formed, but no longer follow.
    wal.truncate(4).unwrap();
    assert_eq!(wal.last_log_id().map(|l| l.index), Some(3));
    wal.append(&entries(2, 4..=5)).unwrap();
    let expected = vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)];
    assert_eq!(ids(&all(&wal)), expected);
    drop(wal);
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    assert_eq!(ids(&all(&wal)), expected);

    // Truncating everything, then starting again at the same index.
    wal.truncate(1).unwrap();
    assert!(all(&wal).is_empty());
    wal.append(&entries(3, 1..=2)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    assert_eq!(ids(&all(&wal)), vec![(3, 1), (3, 2)]);
}

#[test]
fn purges_delete_whole_segments_and_a_snapshot_may_start_the_log_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=40)).unwrap();
    let before = segments(dir.path());
    wal.purge(30).unwrap();
    let after = segments(dir.path());
    assert!(after.len() < before.len(), "{before:?} → {after:?}");
    assert!(after[0] <= 31, "the segment holding 31 stays: {after:?}");
    assert_eq!(all(&wal).first().map(|e| e.log_id.index), Some(31));
    drop(wal);
    let wal = Wal::open(dir.path(), Some(30), SMALL).unwrap();
    assert_eq!(all(&wal).first().map(|e| e.log_id.index), Some(31));
    assert_eq!(all(&wal).len(), 10);

    // A snapshot installed far ahead: everything held is purged and the log restarts.
    wal.purge(1000).unwrap();
    assert!(all(&wal).is_empty());
    wal.append(&entries(5, 1001..=1003)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), Some(1000), SMALL).unwrap();
    assert_eq!(ids(&all(&wal)), vec![(5, 1001), (5, 1002), (5, 1003)]);
    assert_eq!(segments(dir.path()), vec![1001]);
}

#[test]
fn damage_before_the_last_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=30)).unwrap();
    drop(wal);
    let first = dir.path().join(segment::file_name(1));
    let s = segment::scan(&first, 1 << 20).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap();
    file.write_all_at(b"\xff", s.records[1].offset + FRAME_LEN + 3)
        .unwrap();
    drop(file);
    match Wal::open(dir.path(), None, SMALL) {
        Err(StoreError::Corrupt { what, .. }) => assert!(what.contains("raft log"), "{what}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a damaged segment before the last was read around"),
    }
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    wal.append(&entries(1, 1..=30)).unwrap();
    drop(wal);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(dir.path().join(segment::file_name(segs[1]))).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), None, SMALL),
        Err(StoreError::Corrupt { .. })
    ));
}

/// The entries kept in memory are always exactly what the files hold at their indexes,
/// through appends, truncations, purges and a fresh start; and they are a bounded suffix.
#[test]
fn recent_entries_in_memory_match_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    let same = |wal: &Wal, from: u64| {
        let range = (Bound::Included(from), Bound::Unbounded);
        let files = wal.read(range, usize::MAX, usize::MAX).unwrap();
        match wal.read_recent(range, usize::MAX, usize::MAX) {
            Some(mem) => assert_eq!(ids(&mem), ids(&files), "from {from}"),
            None => panic!("entries from {from} should be in memory"),
        }
    };
    wal.append(&entries(1, 1..=20)).unwrap();
    same(&wal, 1);
    same(&wal, 15);
    wal.truncate(10).unwrap();
    same(&wal, 5);
    wal.append(&entries(2, 10..=12)).unwrap();
    same(&wal, 1);
    wal.purge(4).unwrap();
    same(&wal, 0);
    wal.purge(500).unwrap();
    wal.append(&entries(3, 501..=503)).unwrap();
    same(&wal, 0);
    assert_eq!(
        ids(&wal
            .read_recent((Bound::Unbounded, Bound::Unbounded), 2, usize::MAX)
            .unwrap()),
        vec![(3, 501), (3, 502)]
    );

    // Past the bound, the oldest come from the files only.
    let many = super::RECENT_ENTRIES as u64 + 10;
    wal.append(&entries(3, 504..=503 + many)).unwrap();
    assert!(wal
        .read_recent((Bound::Included(501), Bound::Unbounded), 1, usize::MAX)
        .is_none());
    same(&wal, 503 + many - 5);
    // A reopened log has nothing in memory and reads from the files.
    drop(wal);
    let wal = Wal::open(dir.path(), Some(500), SMALL).unwrap();
    assert!(wal
        .read_recent((Bound::Unbounded, Bound::Unbounded), 1, usize::MAX)
        .is_none());
    assert_eq!(all(&wal).len() as u64, 3 + many);
}

/// A segment cut by a truncation and refilled with smaller entries before the log moved on
/// holds stale bytes after its last record: that is not damage.
#[test]
fn a_refilled_segment_may_end_early_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    let big: Vec<Entry> = (1..=4).map(|i| entry(1, i, 300)).collect();
    wal.append(&big).unwrap();
    wal.truncate(2).unwrap();
    wal.append(&entries(2, 2..=9)).unwrap();
    assert!(segments(dir.path()).len() >= 2);
    let first = segment::scan(&dir.path().join(segment::file_name(1)), 1 << 20).unwrap();
    assert!(
        first.stopped.is_some(),
        "stale bytes follow the refilled records"
    );
    let before = ids(&all(&wal));
    drop(wal);
    let wal = Wal::open(dir.path(), None, SMALL).unwrap();
    assert_eq!(ids(&all(&wal)), before);
    assert_eq!(before.len(), 9);
}
