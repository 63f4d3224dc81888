//! Snapshots carry the chain to another store through a file, and a bad one changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use openraft::storage::RaftStateMachine;
use openraft::{Membership, RaftSnapshotBuilder};
use tempfile::TempDir;

use conclave_shared::chain::ChainBuilder;

use super::*;
use crate::store::spool::{SnapshotFile, Spool};
use crate::store::{StoreError, SNAPSHOT_DIR};
use crate::types::{PeerNode, Snapshot, SnapshotMeta};

/// A store holding the builder's chain and a membership entry; and its snapshot.
async fn source(dir: &Path, chain: &ChainBuilder<'_>) -> (Store, Snapshot) {
    let mut store = open(dir);
    let membership = Entry {
        log_id: log_id(1, alice_id(), 1),
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([alice_id()])],
            BTreeMap::from([(
                alice_id(),
                PeerNode {
                    name: "alice".into(),
                    addr: "127.0.0.1:7001".into(),
                },
            )]),
        )),
    };
    let mut entries = vec![membership];
    entries.extend(entries_for(chain.blocks(), 2));
    apply(&mut store.state_machine, entries).await;
    let snap = store
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (store, snap)
}

fn bytes_of(file: &SnapshotFile) -> Vec<u8> {
    std::fs::read(file.path()).unwrap()
}

/// A snapshot file holding `data`, made in `spool`.
fn file_with(spool: &Spool, data: &[u8]) -> Box<SnapshotFile> {
    let (mut f, handle) = spool.create("test").unwrap();
    f.write_all(data).unwrap();
    Box::new(handle)
}

/// What the receiving server does with `data`: write it into the inbox and verify it.
async fn through_inbox(
    store: &Store,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(Snapshot, u64), StoreError> {
    use tokio::io::AsyncWriteExt;
    let mut incoming = store.chain.snapshot_inbox().begin().unwrap();
    incoming.writer().unwrap().write_all(data).await.unwrap();
    incoming.verify(meta).await
}

type Seen = (
    Option<(u64, conclave_shared::chain::BlockHash)>,
    Vec<StoredBlock>,
    (Option<LogId>, crate::types::StoredMembership),
);

async fn seen(s: &mut Store) -> Seen {
    (
        s.chain.head(),
        all_blocks(&s.chain),
        s.state_machine.applied_state().await.unwrap(),
    )
}

#[tokio::test]
async fn a_snapshot_moves_the_chain_to_a_fresh_store() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut chain = builder();
    let (mut a, snap) = source(dir_a.path(), &chain).await;
    let current = a
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(bytes_of(&current.snapshot), bytes_of(&snap.snapshot));

    // The receiving side: the bytes arrive in the inbox, are verified, then installed.
    let mut b = open(dir_b.path());
    assert_eq!(b.chain.view().snapshots_installed, 0);
    let (verified, blocks) = through_inbox(&b, &snap.meta, &bytes_of(&snap.snapshot))
        .await
        .unwrap();
    assert_eq!(blocks, chain.blocks().len() as u64);
    b.state_machine
        .install_snapshot(&verified.meta, verified.snapshot)
        .await
        .unwrap();
    assert_eq!(b.chain.head(), a.chain.head());
    assert_eq!(all_blocks(&b.chain), all_blocks(&a.chain));
    assert_eq!(
        b.state_machine.applied_state().await.unwrap(),
        a.state_machine.applied_state().await.unwrap()
    );
    assert_eq!(b.chain.members(), a.chain.members());
    // Readers learn that the blocks up to the head came by snapshot.
    let view = b.chain.view();
    assert_eq!(view.snapshots_installed, 1);
    assert_eq!(view.snapshot_height, Some(chain.head().height()));
    let installed = b
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(installed.meta, snap.meta);
    assert_eq!(bytes_of(&installed.snapshot), bytes_of(&snap.snapshot));

    // The receiver rebuilt the dedup index and the chain state from the blocks.
    let retry = entry_for(9, chain.head());
    chain.records("bob", [b"b2".as_slice()]).unwrap();
    let next = entry_for(10, chain.head());
    let replies = apply(&mut b.state_machine, vec![retry, next]).await;
    assert_eq!(
        replies,
        vec![Applied::Duplicate { height: 6 }, block_reply(chain.head())]
    );
    // A later apply keeps telling readers about the snapshot.
    assert_eq!(b.chain.view().snapshots_installed, 1);
    // And it survives a restart.
    drop(b);
    let b = open(dir_b.path());
    assert_eq!(b.chain.head(), Some((7, chain.head().hash)));
}

#[tokio::test]
async fn a_snapshot_without_proof_is_verified_when_installed() {
    let (dir_a, dir_b, spool_dir) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let chain = builder();
    let (a, snap) = source(dir_a.path(), &chain).await;
    let spool = Spool::open(spool_dir.path()).unwrap();
    let mut b = open(dir_b.path());
    b.state_machine
        .install_snapshot(&snap.meta, file_with(&spool, &bytes_of(&snap.snapshot)))
        .await
        .unwrap();
    assert_eq!(all_blocks(&b.chain), all_blocks(&a.chain));
}

#[tokio::test]
async fn snapshot_files_go_with_their_last_handle_and_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    let chain = builder();
    let (mut a, snap) = source(dir.path(), &chain).await;
    let path = snap.snapshot.path().to_owned();
    assert!(path.starts_with(dir.path().join(SNAPSHOT_DIR)));
    // The slot still holds it.
    drop(snap);
    assert!(path.exists());
    // A newer snapshot replaces it in the slot.
    let newer = a
        .state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert!(!path.exists());
    let newer_path = newer.snapshot.path().to_owned();
    assert!(newer_path.exists());
    drop(newer);
    drop(a);
    // Left behind by a process that died: gone when the store opens again.
    let stale = dir.path().join(SNAPSHOT_DIR).join("incoming-dead.snap");
    std::fs::write(&stale, b"half a snapshot").unwrap();
    let _a = open(dir.path());
    assert!(!stale.exists());
    assert!(!newer_path.exists());
}

#[tokio::test]
async fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let (dir_a, dir_b, dir_c, spool_dir) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let spool = Spool::open(spool_dir.path()).unwrap();
    let chain = builder();
    let (_a, snap) = source(dir_a.path(), &chain).await;
    let data = bytes_of(&snap.snapshot);
    let meta = snap.meta;

    // A snapshot of another group's chain: it does not verify under our root.
    let foreign = {
        let ids = ids();
        let other = ChainBuilder::new(&ids.other_root, &ids.alice, GROUP, RULES).unwrap();
        let mut c = Store::open(dir_c.path(), ids.other_root.public().clone()).unwrap();
        apply(&mut c.state_machine, entries_for(other.blocks(), 1)).await;
        c.state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };

    let mut flipped = data.clone();
    let at = flipped.len() - 40;
    flipped[at] ^= 1;
    let mut versioned = data.clone();
    versioned[18] = 2;
    let mut other_meta = meta.clone();
    other_meta.last_log_id = Some(log_id(1, alice_id(), 99));
    // A block count far beyond what follows must not be trusted for anything.
    let mut counted = data.clone();
    let head_len = u32::from_be_bytes(counted[19..23].try_into().unwrap()) as usize;
    let count_at = 23 + head_len;
    counted[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    let cases: Vec<(&str, SnapshotMeta, Vec<u8>)> = vec![
        ("a flipped byte", meta.clone(), flipped),
        (
            "a truncated snapshot",
            meta.clone(),
            data[..data.len() - 10].to_vec(),
        ),
        (
            "trailing bytes",
            meta.clone(),
            [data.clone(), vec![0]].concat(),
        ),
        ("an unknown version", meta.clone(), versioned),
        ("metadata for other entries", other_meta, data.clone()),
        (
            "another group's chain",
            foreign.meta.clone(),
            bytes_of(&foreign.snapshot),
        ),
        ("a forged block count", meta.clone(), counted),
        ("no snapshot at all", meta.clone(), b"hello".to_vec()),
        ("nothing", meta.clone(), Vec::new()),
    ];

    let mut b = open(dir_b.path());
    apply(&mut b.state_machine, entries_for(&chain.blocks()[..3], 1)).await;
    let before = seen(&mut b).await;
    for (what, meta, bytes) in cases {
        // Refused where the server checks it, before openraft hears of it ...
        let checked = through_inbox(&b, &meta, &bytes).await;
        assert!(
            matches!(checked, Err(StoreError::BadSnapshot(_))),
            "{what} passed the inbox's check: {:?}",
            checked.err()
        );
        // ... and by the state machine itself, should one ever reach it unchecked.
        let result = b
            .state_machine
            .install_snapshot(&meta, file_with(&spool, &bytes))
            .await;
        assert!(result.is_err(), "{what} was installed");
        assert_eq!(seen(&mut b).await, before, "{what} changed the state");
        assert_eq!(b.chain.view().snapshots_installed, 0);
        assert!(b
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .is_none());
    }
    // Nothing is left in the inbox's directory.
    let left = std::fs::read_dir(dir_b.path().join(SNAPSHOT_DIR))
        .unwrap()
        .count();
    assert_eq!(left, 0, "refused snapshots left files behind");
    // Still usable: the rest of the chain applies.
    let replies = apply(&mut b.state_machine, entries_for(&chain.blocks()[3..], 4)).await;
    assert_eq!(replies.last(), Some(&block_reply(chain.head())));
    verify(&b.chain);
}

#[tokio::test]
async fn a_file_changed_after_its_check_is_not_installed() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let chain = builder();
    let (_a, snap) = source(dir_a.path(), &chain).await;
    let data = bytes_of(&snap.snapshot);
    let mut b = open(dir_b.path());
    let before = seen(&mut b).await;
    let (verified, _) = through_inbox(&b, &snap.meta, &data).await.unwrap();
    // Same length, one byte different: it would still decode, but it is not what was checked.
    let mut changed = data.clone();
    let at = changed.len() - 40;
    changed[at] ^= 1;
    std::fs::write(verified.snapshot.path(), &changed).unwrap();
    let result = b
        .state_machine
        .install_snapshot(&verified.meta, verified.snapshot)
        .await;
    assert!(result.is_err());
    assert_eq!(seen(&mut b).await, before);
}

#[tokio::test]
async fn the_inbox_takes_a_bounded_number_of_snapshots_at_once() {
    let dir = TempDir::new().unwrap();
    let b = open(dir.path());
    let inbox = b.chain.snapshot_inbox();
    let held: Vec<_> = (0..crate::store::MAX_INCOMING_SNAPSHOTS)
        .map(|_| inbox.begin().unwrap())
        .collect();
    assert!(matches!(inbox.begin(), Err(StoreError::SnapshotsBusy(_))));
    drop(held);
    assert!(inbox.begin().is_ok());
}
