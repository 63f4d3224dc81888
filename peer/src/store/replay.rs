//! Rebuilding the in-memory state from blocks, verifying every block on the way.
//!
//! Used when the store opens (the stored chain must verify under the root key before the
//! peer serves anything from it) and when a snapshot is installed (another replica's chain
//! is checked before it replaces ours). Both go through `ChainVerifier`, so what a peer
//! accepts is exactly what `conclave verify` accepts.

use conclave_shared::chain::{BlockBody, ChainFailure, ChainVerifier, StoredBlock};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::PublicKey;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::apply::SmState;
use super::disk::get_meta;
use super::error::{DbResult, StoreError};
use super::schema::{BLOCKS, LAST_APPLIED, LAST_MEMBERSHIP, SM_META};
use crate::types::LogId;

/// A dedup index entry: (author, first seq of a batch) and the height of its block.
pub(crate) type DedupEntry = ((String, u64), u64);

/// The dedup index entry a block makes, if it holds a batch of records.
pub(crate) fn dedup_entry(block: &StoredBlock) -> Option<DedupEntry> {
    match &block.block.body {
        BlockBody::Records(batch) => batch
            .first_seq()
            .map(|first| ((batch.author.clone(), first), block.height())),
        _ => None,
    }
}

/// Feeds blocks in height order through a [`ChainVerifier`]. It keeps the chain state, never
/// the blocks, so it verifies a chain of any length in bounded memory.
pub(crate) struct Replay {
    verifier: ChainVerifier,
}

impl Replay {
    pub(crate) fn new(root: &PublicKey) -> Self {
        Self {
            verifier: ChainVerifier::new(root),
        }
    }

    pub(crate) fn push(&mut self, block: &StoredBlock) -> Result<(), ChainFailure> {
        self.verifier.push(block)
    }

    /// The next block could not be read or decoded.
    pub(crate) fn fail_read(&mut self, why: impl std::fmt::Display) -> ChainFailure {
        self.verifier.fail_read(why)
    }

    /// The state after the last block, with the given Raft pointers.
    pub(crate) fn finish(
        self,
        last_applied: Option<LogId>,
        last_membership: crate::types::StoredMembership,
    ) -> SmState {
        SmState {
            chain: self.verifier.state().cloned(),
            head: self
                .verifier
                .summary()
                .map(|s| (s.head_height, s.head_hash)),
            last_applied,
            last_membership,
        }
    }
}

/// Reads the state machine back from disk: the Raft pointers and every block, verified.
pub(crate) fn recover(db: &Database, root: &PublicKey) -> Result<SmState, StoreError> {
    let tx = db.begin_read().db()?;
    let meta = tx.open_table(SM_META).db()?;
    let last_applied: Option<LogId> = get_meta::<Option<LogId>, _>(&meta, LAST_APPLIED)?.flatten();
    let last_membership = get_meta(&meta, LAST_MEMBERSHIP)?.unwrap_or_default();
    let blocks = tx.open_table(BLOCKS).db()?;
    let mut replay = Replay::new(root);
    for row in blocks.iter().db()? {
        let (k, v) = row.db()?;
        let block = match decode_block(k.value(), v.value()) {
            Ok(b) => b,
            Err(why) => return Err(StoreError::Chain(replay.fail_read(why))),
        };
        replay.push(&block).map_err(StoreError::Chain)?;
    }
    let state = replay.finish(last_applied, last_membership);
    if state.head.is_some() && state.last_applied.is_none() {
        return Err(StoreError::corrupt(
            "state machine",
            "blocks are stored but no applied log id",
        ));
    }
    Ok(state)
}

/// Decodes the block stored under `height`, checking that it says the same height.
pub(crate) fn decode_block(height: u64, bytes: &[u8]) -> Result<StoredBlock, String> {
    let block = StoredBlock::from_canonical(bytes).map_err(|e| format!("block {height}: {e}"))?;
    if block.height() != height {
        return Err(format!(
            "the block stored at height {height} says height {}",
            block.height()
        ));
    }
    Ok(block)
}
