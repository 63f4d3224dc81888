//! The outbox keeps records and the in-flight batch across restarts.

use conclave_shared::chain::MAX_RECORD_PLAINTEXT_BYTES;
use tempfile::TempDir;

use super::*;
use crate::store::StoreError;

fn texts(pending: Vec<(u64, Vec<u8>)>) -> Vec<(u64, String)> {
    pending
        .into_iter()
        .map(|(s, t)| (s, String::from_utf8(t).unwrap()))
        .collect()
}

fn pending(store: &Store) -> Vec<(u64, String)> {
    texts(store.outbox.pending(100, 1 << 20).unwrap())
}

#[test]
fn the_outbox_survives_reopening() {
    let dir = TempDir::new().unwrap();
    let batch = alice_batch(&[1, 2]);
    {
        let store = open(dir.path());
        let outbox = &store.outbox;
        assert_eq!(outbox.next_seq().unwrap(), 1);
        for (i, t) in ["r1", "r2", "r3"].iter().enumerate() {
            assert_eq!(outbox.enqueue(t.as_bytes()).unwrap(), i as u64 + 1);
        }
        outbox.set_inflight(&batch, &[1, 2]).unwrap();
        assert!(matches!(
            outbox.set_inflight(&batch, &[1, 2]),
            Err(StoreError::InflightBusy)
        ));
        assert_eq!(pending(&store), vec![(3, "r3".into())]);
    }
    {
        let store = open(dir.path());
        assert_eq!(
            store.outbox.inflight().unwrap(),
            Some((batch.clone(), vec![1, 2]))
        );
        assert_eq!(store.outbox.next_seq().unwrap(), 4);
        assert_eq!(pending(&store), vec![(3, "r3".into())]);
        assert_eq!(store.outbox.complete_inflight().unwrap(), 2);
        assert_eq!(store.outbox.inflight().unwrap(), None);
        assert_eq!(store.outbox.complete_inflight().unwrap(), 0);
    }
    let store = open(dir.path());
    assert_eq!(store.outbox.next_seq().unwrap(), 4);
    assert_eq!(pending(&store), vec![(3, "r3".into())]);
}

#[test]
fn a_refused_batch_gives_its_seqs_back() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    for t in ["r1", "r2", "r3", "r4"] {
        store.outbox.enqueue(t.as_bytes()).unwrap();
    }
    store
        .outbox
        .set_inflight(&alice_batch(&[1, 2]), &[1, 2])
        .unwrap();
    assert_eq!(store.outbox.drop_inflight_and_renumber().unwrap(), 2);
    assert_eq!(store.outbox.inflight().unwrap(), None);
    assert_eq!(pending(&store), vec![(1, "r3".into()), (2, "r4".into())]);
    assert_eq!(store.outbox.next_seq().unwrap(), 3);
    assert_eq!(store.outbox.enqueue(b"r5").unwrap(), 3);
}

#[test]
fn only_a_batch_of_the_oldest_records_goes_in_flight() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    store.outbox.enqueue(b"r1").unwrap();
    store.outbox.enqueue(b"r2").unwrap();
    let refused = |r: Result<(), StoreError>| matches!(r, Err(StoreError::BatchMismatch(_)));
    assert!(refused(store.outbox.set_inflight(&alice_batch(&[2]), &[2])));
    assert!(refused(
        store.outbox.set_inflight(&alice_batch(&[1]), &[1, 2])
    ));
    assert!(refused(store.outbox.set_inflight(b"junk", &[1])));
    assert!(refused(
        store
            .outbox
            .set_inflight(&alice_batch(&[1, 2, 3]), &[1, 2, 3])
    ));
    store.outbox.set_inflight(&alice_batch(&[1]), &[1]).unwrap();
}

#[test]
fn pending_is_bounded_but_never_stuck() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    store.outbox.enqueue(&[b'x'; 100]).unwrap();
    store.outbox.enqueue(b"small").unwrap();
    store.outbox.enqueue(b"small").unwrap();
    // A first record larger than the byte budget still comes out, alone.
    let got = store.outbox.pending(10, 10).unwrap();
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1]);
    assert_eq!(store.outbox.pending(2, 1000).unwrap().len(), 2);
    let too_big = vec![0; MAX_RECORD_PLAINTEXT_BYTES + 1];
    assert!(matches!(
        store.outbox.enqueue(&too_big),
        Err(StoreError::RecordTooLarge { .. })
    ));
}

#[test]
fn advancing_past_the_chain_renumbers_pending_records() {
    let dir = TempDir::new().unwrap();
    let store = open(dir.path());
    store.outbox.enqueue(b"r1").unwrap();
    store.outbox.enqueue(b"r2").unwrap();
    assert_eq!(store.outbox.advance_next_seq(5).unwrap(), 7);
    assert_eq!(pending(&store), vec![(5, "r1".into()), (6, "r2".into())]);
    assert_eq!(store.outbox.advance_next_seq(3).unwrap(), 7);
    assert_eq!(pending(&store), vec![(5, "r1".into()), (6, "r2".into())]);
    store.outbox.set_inflight(&alice_batch(&[5]), &[5]).unwrap();
    assert!(matches!(
        store.outbox.advance_next_seq(9),
        Err(StoreError::InflightBusy)
    ));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.outbox.next_seq().unwrap(), 7);
    // An empty outbox just moves its counter.
    let dir = TempDir::new().unwrap();
    let empty = open(dir.path());
    assert_eq!(empty.outbox.advance_next_seq(42).unwrap(), 42);
    assert_eq!(empty.outbox.enqueue(b"x").unwrap(), 42);
    drop(store);
}

/// The database as it was at some point, put back later: what a crash leaves when redb's
/// commits after that point were never made durable (they skip the fsync).
struct DbCopy(Vec<u8>);

impl DbCopy {
    fn take(dir: &std::path::Path) -> DbCopy {
        DbCopy(std::fs::read(dir.join(crate::store::DB_FILE)).unwrap())
    }
    fn put_back(&self, dir: &std::path::Path) {
        std::fs::write(dir.join(crate::store::DB_FILE), &self.0).unwrap();
    }
}

#[test]
fn a_batch_in_flight_that_redb_lost_comes_back_from_the_journal() {
    let dir = TempDir::new().unwrap();
    let batch = alice_batch(&[1, 2]);
    {
        let store = open(dir.path());
        for t in ["r1", "r2", "r3"] {
            store.outbox.enqueue(t.as_bytes()).unwrap();
        }
    }
    let before = DbCopy::take(dir.path());
    {
        let store = open(dir.path());
        store.outbox.set_inflight(&batch, &[1, 2]).unwrap();
    }
    before.put_back(dir.path());
    let store = open(dir.path());
    assert_eq!(
        store.outbox.inflight().unwrap(),
        Some((batch, vec![1, 2])),
        "the batch that may have been sent is resent as it was"
    );
    assert_eq!(pending(&store), vec![(3, "r3".into())]);
    assert_eq!(store.outbox.next_seq().unwrap(), 4);
}

#[test]
fn a_completion_that_redb_lost_is_not_resent_over_the_next_batch() {
    let dir = TempDir::new().unwrap();
    let second = alice_batch(&[3, 4]);
    {
        let store = open(dir.path());
        for t in ["r1", "r2"] {
            store.outbox.enqueue(t.as_bytes()).unwrap();
        }
        store
            .outbox
            .set_inflight(&alice_batch(&[1, 2]), &[1, 2])
            .unwrap();
    }
    let before = DbCopy::take(dir.path());
    {
        let store = open(dir.path());
        assert_eq!(store.outbox.complete_inflight().unwrap(), 2);
        for t in ["r3", "r4"] {
            store.outbox.enqueue(t.as_bytes()).unwrap();
        }
        store.outbox.set_inflight(&second, &[3, 4]).unwrap();
    }
    // redb forgot the completion and everything after it; the journal did not.
    before.put_back(dir.path());
    let store = open(dir.path());
    assert_eq!(store.outbox.inflight().unwrap(), Some((second, vec![3, 4])));
    assert_eq!(pending(&store), vec![], "r1 and r2 were completed");
    assert_eq!(
        store.outbox.next_seq().unwrap(),
        5,
        "3 and 4 are never reused"
    );
}

#[test]
fn a_settled_journal_entry_stays_settled() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(dir.path());
        for t in ["r1", "r2", "r3"] {
            store.outbox.enqueue(t.as_bytes()).unwrap();
        }
        store
            .outbox
            .set_inflight(&alice_batch(&[1, 2]), &[1, 2])
            .unwrap();
        store.outbox.complete_inflight().unwrap();
    }
    {
        let store = open(dir.path());
        assert_eq!(store.outbox.inflight().unwrap(), None);
        assert_eq!(pending(&store), vec![(3, "r3".into())]);
        store.outbox.set_inflight(&alice_batch(&[3]), &[3]).unwrap();
        // Refused: its seq is given back, durably, and the journal's copy is settled.
        assert_eq!(store.outbox.drop_inflight_and_renumber().unwrap(), 1);
    }
    let store = open(dir.path());
    assert_eq!(store.outbox.inflight().unwrap(), None);
    assert_eq!(pending(&store), vec![]);
    assert_eq!(store.outbox.next_seq().unwrap(), 3);
}
