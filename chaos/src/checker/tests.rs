//! The checks over a real, signed chain made with the shared crate's `ChainBuilder`: the
//! extraction and every check pass; a flipped byte fails `chains_verify`; a fork fails
//! `common_prefix`.

use std::sync::OnceLock;

use conclave_shared::chain::{
    Block, BlockBody, ChainBuilder, MemberRole, RecordBatch, Rules, StoredBlock,
};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;

use super::*;
use crate::testkit::{acked, acked_again, messages};

/// Root, alice, bob. Generating RSA keys takes a while, so once.
fn keys() -> &'static [Identity; 3] {
    static KEYS: OnceLock<[Identity; 3]> = OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|_| Identity::generate(2048).expect("keygen")))
}

pub(crate) fn root() -> &'static PublicKey {
    keys()[0].public()
}

// Heights in the fixture chain.
const ALICE_1_2: u64 = 4;
const BOB_1: u64 = 5;
const ALICE_3: u64 = 6;

pub(crate) struct Real {
    /// genesis, admissions of alice and bob, a key rotation, alice 1–2, bob 1, alice 3 and
    /// a checkpoint.
    pub blocks: Vec<StoredBlock>,
    /// Another valid alice seq 3, signed by alice, that could have been at `ALICE_3`.
    pub other_alice_3: RecordBatch,
}

pub(crate) fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        let [root, alice, bob] = keys();
        let rules = Rules {
            max_record_bytes: 1024,
            share_history: false,
            max_voters: 3,
        };
        let mut b = ChainBuilder::new(root, alice, [7; 16], rules).expect("genesis");
        b.admit(alice, "alice", MemberRole::Voter, "127.0.0.1:7000")
            .expect("admit alice");
        b.admit(bob, "bob", MemberRole::Voter, "127.0.0.1:7001")
            .expect("admit bob");
        b.rotate_key().expect("rotate");
        assert_eq!(b.records("alice", [b"a1", b"a2"]).expect("a1"), ALICE_1_2);
        assert_eq!(b.records("bob", [b"b1"]).expect("b1"), BOB_1);
        let other_alice_3 = b.batch("alice", [b"the other a3"]).expect("batch");
        assert_eq!(b.records("alice", [b"a3"]).expect("a3"), ALICE_3);
        b.checkpoint().expect("checkpoint");
        Real {
            blocks: b.into_blocks(),
            other_alice_3,
        }
    })
}

fn history() -> History {
    History {
        appends: vec![
            acked("alice", 1, ALICE_1_2),
            acked("alice", 2, ALICE_1_2),
            acked("bob", 1, BOB_1),
            acked("alice", 3, ALICE_3),
            acked_again("alice", 3, ALICE_3),
        ],
    }
}

/// Alice and bob hold the whole chain; carol lags, up to bob's record.
fn members(blocks: &[StoredBlock]) -> Vec<MemberChain> {
    vec![
        MemberChain::from_blocks("alice", blocks.to_vec()),
        MemberChain::from_blocks("bob", blocks.to_vec()),
        MemberChain::from_blocks("carol", blocks[..=BOB_1 as usize].to_vec()),
    ]
}

#[test]
fn records_are_extracted_by_author_and_seq_at_their_heights() {
    let chain = MemberChain::from_blocks("alice", real().blocks.clone());
    let records: Vec<(u64, String)> = chain.records().map(|(h, id)| (h, id.to_string())).collect();
    assert_eq!(
        records,
        [
            (ALICE_1_2, "alice seq 1".to_owned()),
            (ALICE_1_2, "alice seq 2".to_owned()),
            (BOB_1, "bob seq 1".to_owned()),
            (ALICE_3, "alice seq 3".to_owned()),
        ]
    );
    assert_eq!(chain.head(), Some(7));
    for (info, stored) in chain.blocks.iter().zip(&real().blocks) {
        assert_eq!(info.hash, stored.hash);
    }
}

#[test]
fn a_real_run_passes_every_check() {
    let report = check_all(&history(), &members(&real().blocks), root());
    assert!(report.passed(), "{report}");
    let c = &report.counts;
    assert_eq!(
        (c.acknowledged, c.found, c.lost, c.duplicated),
        (4, 4, 0, 0)
    );
    assert_eq!(c.heads["carol"], Some(BOB_1));
    assert!(
        report.to_string().ends_with("all checks passed"),
        "{report}"
    );
}

#[test]
fn a_flipped_byte_fails_chains_verify_at_its_height() {
    // In memory: a ciphertext byte of bob's record, the stored hash left as it was.
    let mut blocks = real().blocks.clone();
    let BlockBody::Records(batch) = &mut blocks[BOB_1 as usize].block.body else {
        panic!("bob's records are at {BOB_1}");
    };
    batch.records[0].ciphertext[0] ^= 1;
    let mut chains = members(&real().blocks);
    chains[2] = MemberChain::from_blocks("carol", blocks[..=BOB_1 as usize].to_vec());
    let report = check_all(&history(), &chains, root());
    let failed: Vec<_> = report.of(CheckName::ChainsVerify).collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(
        failed[0]
            .message
            .starts_with("carol's chain fails verification at height 5: "),
        "{report}"
    );
    // The content differs, so carol no longer holds the same block as the others either.
    assert_eq!(report.of(CheckName::CommonPrefix).count(), 2, "{report}");

    // On disk: every byte of the stored block in turn. Whether it still decodes or not,
    // verification fails at its height and the blocks below still count.
    let stored = real().blocks[ALICE_3 as usize].to_canonical();
    for i in 0..stored.len() {
        let mut bytes = stored.clone();
        bytes[i] ^= 0x80;
        let read = real().blocks[..ALICE_3 as usize]
            .iter()
            .cloned()
            .map(Ok)
            .chain([StoredBlock::from_canonical(&bytes).map_err(|e| e.to_string())]);
        let chain = MemberChain::from_read("dave", read);
        let found = messages(&chains_verify::check(root(), &[chain]));
        assert_eq!(found.len(), 1, "byte {i}");
        assert!(
            found[0].starts_with("dave's chain fails verification at height 6: "),
            "byte {i}: {found:?}"
        );
    }
}

#[test]
fn a_fork_fails_common_prefix() {
    // Carol took a different, equally valid, alice seq 3 at the same height.
    let real = real();
    let mut forked = real.blocks[..ALICE_3 as usize].to_vec();
    forked.push(StoredBlock::new(Block {
        header: real.blocks[ALICE_3 as usize].block.header.clone(),
        body: BlockBody::Records(real.other_alice_3.clone()),
    }));
    let mut chains = members(&real.blocks);
    chains[2] = MemberChain::from_blocks("carol", forked);
    let report = check_all(&history(), &chains, root());
    assert_eq!(report.of(CheckName::ChainsVerify).count(), 0, "{report}");
    let forks = messages(
        &report
            .of(CheckName::CommonPrefix)
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(forks.len(), 2, "{report}");
    assert!(
        forks[0].starts_with("alice and carol hold different blocks at height 6 "),
        "{report}"
    );
    assert!(forks[1].starts_with("bob and carol "), "{report}");
    assert_eq!(report.counts.divergent_chains, 1);
    // The other checks see nothing wrong: the fork holds the same records.
    assert_eq!(report.violations.len(), 2, "{report}");
}

#[test]
fn chains_built_by_hand_or_empty_fail_chains_verify() {
    let chains = [
        MemberChain::new("hand", Vec::new()),
        MemberChain::from_blocks("empty", Vec::new()),
    ];
    assert_eq!(
        messages(&chains_verify::check(root(), &chains)),
        [
            "hand's chain has no blocks to verify: it was not read from a store",
            "empty's chain fails verification at height 0: the chain is empty: a chain starts \
             with its genesis block",
        ]
    );
}

#[test]
fn reports_cap_each_check_and_render_every_violation() {
    let (history, _) = crate::testkit::correct();
    let mut chains = Vec::new();
    for i in 0..(MAX_VIOLATIONS_PER_CHECK + 5) {
        chains.push(MemberChain::new(format!("m{i:03}"), Vec::new()));
    }
    let report = check_all(&history, &chains, root());
    let verify: Vec<_> = report.of(CheckName::ChainsVerify).collect();
    assert_eq!(verify.len(), MAX_VIOLATIONS_PER_CHECK + 1);
    assert_eq!(
        verify[MAX_VIOLATIONS_PER_CHECK].message,
        "... and 5 more violations of this check"
    );
    assert!(!report.passed());
    assert!(report
        .to_string()
        .contains("acknowledged_once: alice seq 1 was acknowledged at height 2"));
}
