//! A block, and a block as it is stored: with the hash it was written with.

use super::{BlockBody, BlockHash, BlockHeader, MAX_BLOCK_BYTES};
use crate::codec::{Canonical, DecodeError, Reader, Writer};

/// A header and its body. Its canonical bytes are the header's then the body's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub body: BlockBody,
}

impl Block {
    /// SHA-256 of the canonical header followed by the canonical body.
    pub fn hash(&self) -> BlockHash {
        BlockHash::of(&self.to_canonical())
    }
}

impl Canonical for Block {
    fn encode_to(&self, w: &mut Writer) {
        self.header.encode_to(w);
        self.body.encode_to(w);
    }
    /// The header's kind picks the body layout, so a body of another kind cannot decode;
    /// a block longer than [`MAX_BLOCK_BYTES`] is refused.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let before = r.remaining();
        let header = BlockHeader::decode_from(r)?;
        let body = BlockBody::decode_for(header.kind, r)?;
        let len = before - r.remaining();
        if len > MAX_BLOCK_BYTES {
            return Err(DecodeError::TooLong {
                what: "block",
                len,
                max: MAX_BLOCK_BYTES,
            });
        }
        Ok(Self { header, body })
    }
}

/// A block with the hash it was stored under. Its canonical bytes are the block's then the
/// 32 hash bytes. The hash is a claim: the verifier recomputes it and compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub block: Block,
    pub hash: BlockHash,
}

impl StoredBlock {
    /// Stores `block` under its own hash.
    pub fn new(block: Block) -> Self {
        let hash = block.hash();
        Self { block, hash }
    }
    pub fn height(&self) -> u64 {
        self.block.header.height
    }
}

impl Canonical for StoredBlock {
    fn encode_to(&self, w: &mut Writer) {
        self.block.encode_to(w);
        w.raw(&self.hash.0);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            block: Block::decode_from(r)?,
            hash: BlockHash::decode_from(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{BlockKind, Refused, FORMAT_VERSION};

    /// The worked example in docs/chain-format.md; keep the two in step.
    #[test]
    fn a_small_block_matches_the_documented_example() {
        let block = Block {
            header: BlockHeader {
                version: FORMAT_VERSION,
                height: 7,
                prev_hash: BlockHash([0x11; 32]),
                term: 3,
                leader: 0x0a0b_0c0d_0e0f_1011,
                time_ms: 1_700_000_000_000,
                kind: BlockKind::Refused,
            },
            body: BlockBody::Refused(Refused {
                entry_digest: [0x22; 32],
                author: Some("bob".into()),
                reason: "stale epoch".into(),
            }),
        };
        let stored = StoredBlock::new(block);
        let bytes = stored.to_canonical();
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                // header
                "0001",
                "0000000000000007",
                "1111111111111111111111111111111111111111111111111111111111111111",
                "0000000000000003",
                "0a0b0c0d0e0f1011",
                "0000018bcfe56800",
                "07",
                // refused body
                "2222222222222222222222222222222222222222222222222222222222222222",
                "01",
                "00000003626f62",
                "0000000b7374616c652065706f6368",
                // stored hash
                "b811f10e8bf8330d17e06d4b3080532d701601688b2bbbd333cfd548a3d59655",
            )
        );
        assert_eq!(
            stored.hash.to_string(),
            "b811f10e8bf8330d17e06d4b3080532d701601688b2bbbd333cfd548a3d59655"
        );
        assert_eq!(StoredBlock::from_canonical(&bytes).unwrap(), stored);
    }
}
