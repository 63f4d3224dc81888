//! Verifying a chain with the root public key alone, block by block.

use std::fmt::Display;

use serde::{Deserialize, Serialize};

use super::{
    BlockBody, BlockHash, ChainFailure, ChainState, FailureReason, StoredBlock, FORMAT_VERSION,
    MAX_BLOCK_BYTES,
};
use crate::codec::Canonical;
use crate::identity::PublicKey;

/// What a verified chain amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSummary {
    /// How many blocks verified (the head's height plus one).
    pub count: u64,
    pub head_height: u64,
    pub head_hash: BlockHash,
}

/// Checks blocks one at a time, in order, as they are read or arrive. It keeps the last
/// block's height and hash and a [`ChainState`], never the blocks themselves.
///
/// Checked: the stored hash, the version, the kind, heights and links, the genesis root and
/// rules, that terms (and leaders within a term) never go back, leader signatures of system
/// blocks by voters (the genesis block's at the founder's admission), certificates of
/// admissions, membership changes, author signatures, sequence numbers, record sizes and
/// epochs, key rotations' epochs and recipients, revocations' root signatures, and
/// checkpoints' hashes within the last [`super::CHECKPOINT_WINDOW`] blocks (see
/// `docs/chain-format.md`).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    root: PublicKey,
    state: Option<ChainState>,
    head: Option<(u64, BlockHash)>,
    failed: Option<ChainFailure>,
}

impl ChainVerifier {
    pub fn new(root: &PublicKey) -> Self {
        Self {
            root: root.clone(),
            state: None,
            head: None,
            failed: None,
        }
    }

    /// The height the next block must have.
    pub fn next_height(&self) -> u64 {
        self.head.map_or(0, |(h, _)| h + 1)
    }

    /// Checks the next block and takes it in. After a failure every later call returns the
    /// same failure: the chain is broken there and nothing after it can be trusted.
    pub fn push(&mut self, stored: &StoredBlock) -> Result<(), ChainFailure> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let height = self.next_height();
        match self.check(stored, height) {
            Ok(()) => {
                self.head = Some((height, stored.hash));
                Ok(())
            }
            Err(reason) => Err(self.fail(height, reason)),
        }
    }

    /// Records that the next block could not be read, and returns the failure.
    pub fn fail_read(&mut self, why: impl Display) -> ChainFailure {
        if let Some(f) = &self.failed {
            return f.clone();
        }
        self.fail(self.next_height(), FailureReason::Read(why.to_string()))
    }

    fn fail(&mut self, height: u64, reason: FailureReason) -> ChainFailure {
        let f = ChainFailure { height, reason };
        self.failed = Some(f.clone());
        f
    }

    /// Checks `stored` and applies it to the state; on failure nothing changes
    /// ([`ChainState::apply`] is all or nothing).
    fn check(&mut self, stored: &StoredBlock, height: u64) -> Result<(), FailureReason> {
        let block = &stored.block;
        let header = &block.header;
        let bytes = block.to_canonical();
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(FailureReason::BlockTooLarge {
                len: bytes.len(),
                max: MAX_BLOCK_BYTES,
            });
        }
        let computed = BlockHash::of(&bytes);
        if computed != stored.hash {
            return Err(FailureReason::WrongHash {
                stored: stored.hash,
                computed,
            });
        }
        if header.version != FORMAT_VERSION {
            return Err(FailureReason::WrongVersion {
                expected: FORMAT_VERSION,
                got: header.version,
            });
        }
        if header.kind != block.body.kind() {
            return Err(FailureReason::KindMismatch {
                header: header.kind,
                body: block.body.kind(),
            });
        }
        let (Some((_, prev_hash)), Some(state)) = (self.head, self.state.as_mut()) else {
            // The first block.
            let BlockBody::Genesis(genesis) = &block.body else {
                return Err(FailureReason::NotGenesis {
                    kind: header.kind,
                    height: header.height,
                });
            };
            if header.height != 0 {
                return Err(FailureReason::NotGenesis {
                    kind: header.kind,
                    height: header.height,
                });
            }
            check_link(BlockHash::ZERO, header.prev_hash)?;
            self.state = Some(ChainState::from_genesis(&self.root, header, genesis)?);
            return Ok(());
        };
        if header.height != height {
            return Err(FailureReason::HeightGap {
                expected: height,
                got: header.height,
            });
        }
        check_link(prev_hash, header.prev_hash)?;
        state.apply(header, &block.body)
    }

    /// The chain so far, or `None` before the first block verified.
    pub fn summary(&self) -> Option<ChainSummary> {
        self.head.map(|(h, hash)| ChainSummary {
            count: h + 1,
            head_height: h,
            head_hash: hash,
        })
    }

    /// The state after the last verified block.
    pub fn state(&self) -> Option<&ChainState> {
        self.state.as_ref()
    }

    /// The summary of a chain that ended here. An empty chain fails at height 0, and so does
    /// one that ends before its founder's admission: its genesis signature is unchecked.
    pub fn finish(&self) -> Result<ChainSummary, ChainFailure> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if self
            .state
            .as_ref()
            .is_some_and(|s| s.founder_pending().is_some())
        {
            return Err(ChainFailure {
                height: 0,
                reason: FailureReason::GenesisUnverifiable,
            });
        }
        self.summary().ok_or(ChainFailure {
            height: 0,
            reason: FailureReason::Empty,
        })
    }
}

fn check_link(expected: BlockHash, got: BlockHash) -> Result<(), FailureReason> {
    if expected == got {
        Ok(())
    } else {
        Err(FailureReason::BrokenLink { expected, got })
    }
}

/// Verifies a whole chain, streaming: blocks are read one at a time and dropped once
/// checked, so memory grows with the membership, not with the chain. A read error becomes a
/// failure at the height it was reading. Returns the first height that fails.
pub fn verify_chain<I, E>(root: &PublicKey, blocks: I) -> Result<ChainSummary, ChainFailure>
where
    I: IntoIterator<Item = Result<StoredBlock, E>>,
    E: Display,
{
    let mut v = ChainVerifier::new(root);
    for item in blocks {
        match item {
            Ok(block) => v.push(&block)?,
            Err(e) => return Err(v.fail_read(e)),
        }
    }
    v.finish()
}
