//! What the checks see of a member's chain: per block its height, its hash and the records
//! it holds, named by `(author, seq)`.
//!
//! [`MemberChain::from_blocks`] and [`MemberChain::from_read`] extract this from real blocks
//! (keeping the blocks themselves for `chains_verify`); tests build it by hand with
//! [`MemberChain::new`] and [`BlockInfo`], which is much cheaper than signing real chains.
//!
//! A record is identified in the chain by the batch's `author` (`RecordBatch::author`, the
//! author's certificate name) and the record's `seq` (`Record::seq`, the author's sequence
//! number, 1 for its first record). Only `records` blocks hold records; a `refused` block
//! names an author but no sequence number, so it holds none.

use std::fmt;

use conclave_shared::chain::{BlockBody, BlockHash, StoredBlock};
use serde::{Deserialize, Serialize};

/// One record, as writers and the chain both name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId {
    /// The author's member name.
    pub author: String,
    /// The author's sequence number for the record.
    pub seq: u64,
}

impl RecordId {
    pub fn new(author: impl Into<String>, seq: u64) -> Self {
        Self {
            author: author.into(),
            seq,
        }
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} seq {}", self.author, self.seq)
    }
}

/// One block as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub height: u64,
    /// The hash of the block's content, recomputed when extracted (not the hash stored with
    /// it, which is only a claim): two members hold the same block exactly when these match.
    pub hash: BlockHash,
    /// The records the block holds, in the block's order; empty for every kind but `records`.
    pub records: Vec<RecordId>,
}

impl BlockInfo {
    /// Extracts what the checks need from one stored block.
    pub fn of(stored: &StoredBlock) -> Self {
        let records = match &stored.block.body {
            BlockBody::Records(batch) => batch
                .records
                .iter()
                .map(|r| RecordId::new(batch.author.clone(), r.seq))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            height: stored.block.header.height,
            hash: stored.block.hash(),
            records,
        }
    }
}

/// The blocks a member's store held, as read, for `chains_verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChain {
    /// The blocks read, in height order, up to the first that could not be read.
    pub blocks: Vec<StoredBlock>,
    /// Why the next block could not be read, if reading stopped early.
    pub read_error: Option<String>,
}

/// One member's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChain {
    /// The member's name, as messages name it.
    pub member: String,
    /// Its blocks in the order it holds them (height order, unless the store is broken).
    pub blocks: Vec<BlockInfo>,
    /// The blocks themselves. `None` for a chain built by hand, which `chains_verify`
    /// reports: there is nothing to verify.
    pub raw: Option<RawChain>,
}

impl MemberChain {
    /// A chain built by hand, without blocks to verify.
    pub fn new(member: impl Into<String>, blocks: Vec<BlockInfo>) -> Self {
        Self {
            member: member.into(),
            blocks,
            raw: None,
        }
    }

    /// Extracts `member`'s chain from its blocks.
    pub fn from_blocks(member: impl Into<String>, blocks: Vec<StoredBlock>) -> Self {
        Self {
            member: member.into(),
            blocks: blocks.iter().map(BlockInfo::of).collect(),
            raw: Some(RawChain {
                blocks,
                read_error: None,
            }),
        }
    }

    /// Extracts `member`'s chain from blocks as they are read; the first read error ends
    /// the chain and is kept for `chains_verify` to report at its height.
    pub fn from_read<I, E>(member: impl Into<String>, blocks: I) -> Self
    where
        I: IntoIterator<Item = Result<StoredBlock, E>>,
        E: fmt::Display,
    {
        let mut read = Vec::new();
        let mut read_error = None;
        for item in blocks {
            match item {
                Ok(b) => read.push(b),
                Err(e) => {
                    read_error = Some(e.to_string());
                    break;
                }
            }
        }
        let mut chain = Self::from_blocks(member, read);
        if let Some(raw) = chain.raw.as_mut() {
            raw.read_error = read_error;
        }
        chain
    }

    /// The height of the last block held, if any.
    pub fn head(&self) -> Option<u64> {
        self.blocks.last().map(|b| b.height)
    }

    /// The block held at `height`. Chains are normally held densely from height 0, so the
    /// block is first looked for at index `height`.
    pub fn block_at(&self, height: u64) -> Option<&BlockInfo> {
        let direct = usize::try_from(height)
            .ok()
            .and_then(|i| self.blocks.get(i))
            .filter(|b| b.height == height);
        direct.or_else(|| self.blocks.iter().find(|b| b.height == height))
    }

    /// Every record held, with its block's height, in chain order.
    pub fn records(&self) -> impl Iterator<Item = (u64, &RecordId)> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| b.records.iter().map(move |r| (b.height, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::block;

    #[test]
    fn block_at_finds_blocks_held_sparsely_too() {
        let dense = MemberChain::new("a", vec![block(0, 0, &[]), block(1, 1, &[])]);
        assert_eq!(dense.block_at(1).map(|b| b.hash), Some(BlockHash([1; 32])));
        let sparse = MemberChain::new("b", vec![block(0, 0, &[]), block(5, 5, &[])]);
        assert_eq!(sparse.block_at(5).map(|b| b.hash), Some(BlockHash([5; 32])));
        assert!(sparse.block_at(1).is_none());
        assert_eq!(sparse.head(), Some(5));
    }
}
