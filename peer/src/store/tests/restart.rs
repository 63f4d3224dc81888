//! Dropping and reopening the store keeps everything, and a damaged file is refused.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use redb::{Database, ReadableTable};
use tempfile::TempDir;

use super::*;
use crate::store::schema::{BLOCKS, DB_FILE, FORMAT_KEY, META};
use crate::store::StoreError;
use crate::types::Vote;

#[tokio::test]
async fn reopening_keeps_log_vote_blocks_and_outbox() {
    let dir = TempDir::new().unwrap();
    let mut b = builder();
    let entries = entries_for(b.blocks(), 1);
    let last = entries.last().unwrap().log_id;
    let vote = Vote::new(3, alice_id());
    {
        let mut store = open(dir.path());
        store.log.save_vote(&vote).await.unwrap();
        store.log.blocking_append(entries.clone()).await.unwrap();
        store.log.save_committed(Some(last)).await.unwrap();
        apply(&mut store.state_machine, entries.clone()).await;
        assert_eq!(store.outbox.enqueue(b"hello").unwrap(), 1);
    }

    let mut store = open(dir.path());
    assert_eq!(store.log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.log.read_committed().await.unwrap(), Some(last));
    let state = store.log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(last));
    assert_eq!(state.last_purged_log_id, None);
    let logged = store.log.try_get_log_entries(..).await.unwrap();
    assert_eq!(format!("{logged:?}"), format!("{entries:?}"));

    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(last));
    assert_eq!(all_blocks(&store.chain), b.blocks());
    assert_eq!(store.chain.head(), Some((6, b.head().hash)));
    assert_eq!(store.chain.member("alice").unwrap().next_seq, 4);
    assert_eq!(store.outbox.next_seq().unwrap(), 2);
    assert_eq!(
        store.outbox.pending(10, 1 << 20).unwrap(),
        vec![(1, b"hello".to_vec())]
    );

    // The rebuilt chain state decides as the old one did.
    let retry = entry_for(8, b.head());
    b.records("bob", [b"b2".as_slice()]).unwrap();
    let next = entry_for(9, b.head());
    let replies = apply(&mut store.state_machine, vec![retry, next]).await;
    assert_eq!(
        replies,
        vec![Applied::Duplicate { height: 6 }, block_reply(b.head())]
    );
}

#[tokio::test]
async fn purge_and_truncate_survive_reopening() {
    let dir = TempDir::new().unwrap();
    let entries: Vec<Entry> = (1..=10).map(blank).collect();
    {
        let mut store = open(dir.path());
        store.log.blocking_append(entries).await.unwrap();
        store.log.purge(log_id(1, alice_id(), 3)).await.unwrap();
        store.log.truncate(log_id(1, alice_id(), 8)).await.unwrap();
    }
    let mut store = open(dir.path());
    let state = store.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, alice_id(), 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, alice_id(), 7)));
    let indexes: Vec<u64> = store
        .log
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![4, 5, 6, 7]);
}

fn write_db(dir: &std::path::Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let tx = db.begin_write().unwrap();
    f(&tx);
    tx.commit().unwrap();
}

#[tokio::test]
async fn a_tampered_block_is_found_when_opening() {
    let dir = TempDir::new().unwrap();
    let b = builder();
    {
        let mut store = open(dir.path());
        apply(&mut store.state_machine, entries_for(b.blocks(), 1)).await;
    }
    write_db(dir.path(), |tx| {
        let mut blocks = tx.open_table(BLOCKS).unwrap();
        let mut bytes = blocks.get(3).unwrap().unwrap().value().to_vec();
        // Rewrite the time in the header: the stored hash no longer matches.
        bytes[2 + 8 + 32 + 8 + 8 + 7] ^= 1;
        blocks.insert(3, bytes.as_slice()).unwrap();
    });
    match Store::open(dir.path(), ids().root.public().clone()) {
        Err(StoreError::Chain(f)) => assert_eq!(f.height, 3, "{f}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a tampered chain was accepted"),
    }
}

#[tokio::test]
async fn another_groups_root_cannot_open_the_chain() {
    let dir = TempDir::new().unwrap();
    {
        let mut store = open(dir.path());
        apply(
            &mut store.state_machine,
            entries_for(&builder().blocks()[..1], 1),
        )
        .await;
    }
    let err = Store::open(dir.path(), ids().other_root.public().clone())
        .err()
        .expect("the wrong root is refused");
    assert!(
        matches!(&err, StoreError::Chain(f) if f.height == 0),
        "{err}"
    );
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path()));
    write_db(dir.path(), |tx| {
        tx.open_table(META).unwrap().insert(FORMAT_KEY, 99).unwrap();
    });
    let err = Store::open(dir.path(), ids().root.public().clone())
        .err()
        .expect("format 99 is refused");
    assert!(
        matches!(
            err,
            StoreError::UnknownFormat {
                found: 99,
                supported: crate::store::STORE_FORMAT_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("format 99"), "{err}");
}

/// A format-1 store kept the Raft log's entries in redb: opening it moves them into the
/// WAL, once, and a crash that left the move half done (entries already in the WAL, the
/// rows still there) is finished the same way.
#[tokio::test]
async fn a_format_1_log_moves_into_the_wal() {
    use crate::store::disk::encode;
    use crate::store::schema::RAFT_LOG;
    let dir = TempDir::new().unwrap();
    let entries: Vec<Entry> = (1..=6).map(blank).collect();
    {
        // Half done: the first three are in the WAL already.
        let mut store = open(dir.path());
        store
            .log
            .blocking_append(entries[..3].to_vec())
            .await
            .unwrap();
    }
    write_db(dir.path(), |tx| {
        tx.open_table(META).unwrap().insert(FORMAT_KEY, 1).unwrap();
        let mut log = tx.open_table(RAFT_LOG).unwrap();
        for e in &entries {
            let bytes = encode(e, "entry").unwrap();
            log.insert(e.log_id.index, bytes.as_slice()).unwrap();
        }
    });
    for _ in 0..2 {
        let mut store = open(dir.path());
        let logged = store.log.try_get_log_entries(..).await.unwrap();
        assert_eq!(format!("{logged:?}"), format!("{entries:?}"));
        let state = store.log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, alice_id(), 6)));
    }
    let db = Database::create(dir.path().join(DB_FILE)).unwrap();
    let tx = db.begin_read().unwrap();
    use redb::{ReadableDatabase, ReadableTableMetadata};
    assert_eq!(tx.open_table(RAFT_LOG).unwrap().len().unwrap(), 0);
    assert_eq!(
        tx.open_table(META)
            .unwrap()
            .get(FORMAT_KEY)
            .unwrap()
            .map(|v| v.value()),
        Some(crate::store::STORE_FORMAT_VERSION)
    );
}

/// The chain state a peer decides with (members, the order of terms and leaders, the window
/// of recent hashes that checkpoints are checked against) is rebuilt by replaying verified
/// blocks: after a restart and after a snapshot install it is the state the live peer had.
#[tokio::test]
async fn replay_and_snapshot_rebuild_the_live_chain_state_exactly() {
    let (dir, other) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let ids = ids();
    let mut b = builder();
    b.checkpoint_at(4).expect("checkpoint");
    b.set_leader(&ids.bob, 2);
    b.rotate_key().expect("rotation by bob");
    b.records("alice", [b"a4".as_slice()]).expect("a4");
    b.checkpoint().expect("checkpoint of the head");
    let live = {
        let mut store = open(dir.path());
        apply(&mut store.state_machine, entries_for(b.blocks(), 1)).await;
        assert!(
            all_blocks(&store.chain) == b.blocks(),
            "not the builder's blocks"
        );
        let state = store.chain.view().state.expect("a chain state");
        assert_eq!(&*state, b.state());
        assert_eq!(
            state.term_and_leader(),
            (2, ids.bob.fingerprint().node_id())
        );
        assert_eq!(state.recent_hash(4), Some(b.blocks()[4].hash));

        let snap = store
            .state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut fresh = open(other.path());
        fresh
            .state_machine
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(fresh.chain.view().state, Some(state.clone()));
        state
    };
    let reopened = open(dir.path());
    assert_eq!(reopened.chain.view().state, Some(live.clone()));
    let reopened = open(other.path());
    assert_eq!(reopened.chain.view().state, Some(live));
}
