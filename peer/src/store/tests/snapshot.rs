//! Snapshots carry the chain to another store, and a bad one changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{Membership, RaftSnapshotBuilder};
use tempfile::TempDir;

use conclave_shared::chain::ChainBuilder;

use super::*;
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

    let mut b = open(dir_b.path());
    b.state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(b.chain.head(), a.chain.head());
    assert_eq!(all_blocks(&b.chain), all_blocks(&a.chain));
    assert_eq!(
        b.state_machine.applied_state().await.unwrap(),
        a.state_machine.applied_state().await.unwrap()
    );
    assert_eq!(b.chain.members(), a.chain.members());
    let installed = b
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(installed.meta, snap.meta);

    // The receiver rebuilt the dedup index and the chain state from the blocks.
    let retry = entry_for(9, chain.head());
    chain.records("bob", [b"b2".as_slice()]).unwrap();
    let next = entry_for(10, chain.head());
    let replies = apply(&mut b.state_machine, vec![retry, next]).await;
    assert_eq!(
        replies,
        vec![Applied::Duplicate { height: 6 }, block_reply(chain.head())]
    );
    // And it survives a restart.
    drop(b);
    let b = open(dir_b.path());
    assert_eq!(b.chain.head(), Some((7, chain.head().hash)));
}

fn with(meta: &SnapshotMeta, data: Vec<u8>) -> (SnapshotMeta, Box<Cursor<Vec<u8>>>) {
    (meta.clone(), Box::new(Cursor::new(data)))
}

#[tokio::test]
async fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let (dir_a, dir_b, dir_c) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let chain = builder();
    let (_a, snap) = source(dir_a.path(), &chain).await;
    let data = snap.snapshot.into_inner();
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
    let cases = vec![
        ("a flipped byte", with(&meta, flipped)),
        (
            "a truncated snapshot",
            with(&meta, data[..data.len() - 10].to_vec()),
        ),
        (
            "trailing bytes",
            with(&meta, [data.clone(), vec![0]].concat()),
        ),
        ("an unknown version", with(&meta, versioned)),
        (
            "metadata for other entries",
            with(&other_meta, data.clone()),
        ),
        (
            "another group's chain",
            (foreign.meta.clone(), foreign.snapshot),
        ),
        ("no snapshot at all", with(&meta, b"hello".to_vec())),
    ];

    let mut b = open(dir_b.path());
    apply(&mut b.state_machine, entries_for(&chain.blocks()[..3], 1)).await;
    let before = (
        b.chain.head(),
        all_blocks(&b.chain),
        b.state_machine.applied_state().await.unwrap(),
    );
    for (what, (meta, bytes)) in cases {
        let result = b.state_machine.install_snapshot(&meta, bytes).await;
        assert!(result.is_err(), "{what} was installed");
        let after = (
            b.chain.head(),
            all_blocks(&b.chain),
            b.state_machine.applied_state().await.unwrap(),
        );
        assert_eq!(after, before, "{what} changed the state");
        assert!(b
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .is_none());
    }
    // Still usable: the rest of the chain applies.
    let replies = apply(&mut b.state_machine, entries_for(&chain.blocks()[3..], 4)).await;
    assert_eq!(replies.last(), Some(&block_reply(chain.head())));
    verify(&b.chain);
}
