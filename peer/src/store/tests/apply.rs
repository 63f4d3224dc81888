//! Entries become blocks: valid ones as the builder made them, bad ones as refusals.

use conclave_shared::chain::{
    BatchSignature, BlockBody, BlockKind, ChainBuilder, Genesis, Refused, GROUP_ID_BYTES,
};
use openraft::storage::RaftStateMachine;
use tempfile::TempDir;

use super::*;

#[tokio::test]
async fn a_builders_chain_applies_to_the_same_blocks() {
    let dir = TempDir::new().unwrap();
    let mut store = open(dir.path());
    let mut seen = store.chain.subscribe();
    let b = builder();
    let mut entries = vec![blank(1)];
    entries.extend(entries_for(b.blocks(), 2));
    let last = entries.last().unwrap().log_id;
    // Two calls, so that state carries over from one to the next.
    let rest = entries.split_off(3);
    let mut replies = apply(&mut store.state_machine, entries).await;
    replies.extend(apply(&mut store.state_machine, rest).await);

    assert_eq!(replies[0], Applied::Nothing);
    let expected: Vec<Applied> = b.blocks().iter().map(block_reply).collect();
    assert_eq!(replies[1..], expected[..]);
    assert_eq!(all_blocks(&store.chain), b.blocks());
    let summary = verify(&store.chain);
    assert_eq!(summary.count, 7);
    assert_eq!(
        store.chain.head(),
        Some((summary.head_height, summary.head_hash))
    );
    assert!(seen.has_changed().unwrap());
    assert_eq!(seen.borrow_and_update().last_applied, Some(last));

    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(last));
    assert_eq!(store.chain.group_id(), Some(GROUP));
    assert_eq!(store.chain.epoch(), 1);
    assert_eq!(store.chain.member("alice").unwrap().next_seq, 4);
    assert_eq!(store.chain.member("bob").unwrap().next_seq, 2);
    assert_eq!(store.chain.admitted_members().len(), 2);
    let bob_id = ids().bob.fingerprint().node_id();
    assert_eq!(store.chain.member_by_id(bob_id).unwrap().name, "bob");
    assert_eq!(store.chain.block(4).unwrap().as_ref(), b.blocks().get(4));
    assert_eq!(store.chain.block(7).unwrap(), None);
}

#[tokio::test]
async fn a_repeated_batch_is_a_duplicate_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let mut store = open(dir.path());
    let mut b = builder();
    apply(&mut store.state_machine, entries_for(b.blocks(), 1)).await;
    let head = store.chain.head();

    // A retry of alice's last batch, as after a lost answer.
    let a3 = b.head().clone();
    let replies = apply(&mut store.state_machine, vec![entry_for(8, &a3)]).await;
    assert_eq!(replies, vec![Applied::Duplicate { height: 6 }]);
    assert_eq!(store.chain.head(), head);

    // A new batch twice in one call: the second is a duplicate of the first.
    b.records("bob", [b"b2".as_slice()]).unwrap();
    let b2 = b.head().clone();
    let replies = apply(
        &mut store.state_machine,
        vec![entry_for(9, &b2), entry_for(10, &b2)],
    )
    .await;
    assert_eq!(
        replies,
        vec![block_reply(&b2), Applied::Duplicate { height: 7 }]
    );
    assert_eq!(all_blocks(&store.chain), b.blocks());
}

/// Proposals that must be refused, and what each refusal should say.
fn bad_entries(b: &ChainBuilder<'_>, first: u64) -> (Vec<Entry>, Vec<Vec<u8>>) {
    let records = BlockKind::Records.tag();
    let mut forged = b.batch("alice", [b"a4".as_slice()]).unwrap();
    match &mut forged.signature {
        BatchSignature::Author(sig) => {
            let last = sig.len() - 1;
            sig[last] ^= 1;
        }
        BatchSignature::Delegated { signature, .. } => signature[0] ^= 1,
    }
    let genesis = BlockBody::Genesis(Genesis {
        group_id: [1; GROUP_ID_BYTES],
        root_fingerprint: ids().root.fingerprint(),
        rules: RULES,
        leader_sig: Vec::new(),
    });
    let refusal = BlockBody::Refused(Refused {
        entry_digest: [0; 32],
        author: None,
        reason: "made up".into(),
    });
    let bodies = vec![
        (records, BlockBody::Records(forged).to_canonical()),
        (records, b"not a batch".to_vec()),
        (99, Vec::new()),
        (BlockKind::Genesis.tag(), genesis.to_canonical()),
        (BlockKind::Refused.tag(), refusal.to_canonical()),
    ];
    let entries = (first..)
        .zip(&bodies)
        .map(|(i, (kind, body))| raw_entry(i, *kind, body.clone()))
        .collect();
    (entries, bodies.into_iter().map(|(_, body)| body).collect())
}

#[tokio::test]
async fn bad_entries_become_the_same_refused_blocks_on_every_replica() {
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let mut b = builder();
    let (bad, bodies) = bad_entries(&b, 8);
    // After the refusals a valid batch still goes in: refusals change no sequence numbers.
    b.records("alice", [b"a4".as_slice()]).unwrap();
    let mut entries = entries_for(&b.blocks()[..7], 1);
    entries.extend(bad);
    entries.push(entry_for(13, b.head()));

    let mut chains = Vec::new();
    let mut answers = Vec::new();
    for dir in &dirs {
        let mut store = open(dir.path());
        answers.push(apply(&mut store.state_machine, entries.clone()).await);
        chains.push(all_blocks(&store.chain));
        verify(&store.chain);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(chains[0], chains[1]);

    let chain = &chains[0];
    assert_eq!(chain.len(), 13);
    for (i, body) in bodies.iter().enumerate() {
        let height = 7 + i as u64;
        let Applied::Refused { height: h, reason } = &answers[0][7 + i] else {
            panic!("entry {i} was not refused: {:?}", answers[0][7 + i]);
        };
        assert_eq!(*h, height);
        let BlockBody::Refused(r) = &chain[height as usize].block.body else {
            panic!("no refused block at {height}");
        };
        assert_eq!(&r.reason, reason);
        assert_eq!(r.entry_digest, Refused::digest_of(body));
        let author = (i == 0).then(|| "alice".to_owned());
        assert_eq!(r.author, author, "refusal {i}: {reason}");
    }
    assert!(
        matches!(&answers[0][7], Applied::Refused { reason, .. } if reason.contains("signature"))
    );
    assert!(
        matches!(&answers[0][10], Applied::Refused { reason, .. } if reason.contains("second genesis"))
    );
    // The valid batch lands after the refusals, with alice's next seq.
    let last = &chain[12];
    assert_eq!(last.block.header.kind, BlockKind::Records);
    assert_eq!(answers[0][12], block_reply(last));
}

#[tokio::test]
async fn entries_before_genesis_are_refused_without_a_block() {
    let dir = TempDir::new().unwrap();
    let mut store = open(dir.path());
    let b = builder();
    let ids = ids();
    let foreign = ChainBuilder::new(&ids.other_root, &ids.alice, GROUP, RULES).unwrap();

    let mut entries = vec![
        // A records batch first, a genesis of another group's root, a malformed genesis.
        entry_for(1, &b.blocks()[4]),
        entry_for(2, &foreign.blocks()[0]),
        raw_entry(3, BlockKind::Genesis.tag(), vec![1, 2, 3]),
    ];
    entries.extend(entries_for(&b.blocks()[..1], 4));
    let replies = apply(&mut store.state_machine, entries).await;

    for r in &replies[..3] {
        assert!(
            matches!(r, Applied::Refused { height: 0, .. }),
            "{r:?} should be refused at 0"
        );
    }
    assert_eq!(replies[3], block_reply(&b.blocks()[0]));
    assert_eq!(all_blocks(&store.chain), b.blocks()[..1]);
    let (applied, _) = store.state_machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(4));
}
