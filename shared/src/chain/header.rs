//! A block's header: where it sits in the chain and which Raft entry it was.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{BlockHash, FORMAT_VERSION};
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::NodeId;

/// The canonical size of a header: version, height, prev_hash, term, leader, time_ms, kind.
pub const HEADER_BYTES: usize = 2 + 8 + 32 + 8 + 8 + 8 + 1;

/// What a block's body holds; the tag appears once, in the header, and picks the body layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Genesis,
    Records,
    Membership,
    KeyRotation,
    Revocation,
    Checkpoint,
    Refused,
}

impl BlockKind {
    pub const ALL: [BlockKind; 7] = [
        BlockKind::Genesis,
        BlockKind::Records,
        BlockKind::Membership,
        BlockKind::KeyRotation,
        BlockKind::Revocation,
        BlockKind::Checkpoint,
        BlockKind::Refused,
    ];

    pub fn tag(self) -> u8 {
        match self {
            BlockKind::Genesis => 1,
            BlockKind::Records => 2,
            BlockKind::Membership => 3,
            BlockKind::KeyRotation => 4,
            BlockKind::Revocation => 5,
            BlockKind::Checkpoint => 6,
            BlockKind::Refused => 7,
        }
    }

    pub fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|k| k.tag() == tag)
            .ok_or(DecodeError::UnknownTag {
                what: "block kind",
                tag: u64::from(tag),
            })
    }

    /// Whether blocks of this kind carry the proposing leader's signature. Records carry
    /// their author's instead; refusals are made by every replica alike at apply time.
    pub fn is_leader_signed(self) -> bool {
        !matches!(self, BlockKind::Records | BlockKind::Refused)
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockKind::Genesis => "genesis",
            BlockKind::Records => "records",
            BlockKind::Membership => "membership",
            BlockKind::KeyRotation => "key_rotation",
            BlockKind::Revocation => "revocation",
            BlockKind::Checkpoint => "checkpoint",
            BlockKind::Refused => "refused",
        })
    }
}

/// Everything about a block but its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// Always [`FORMAT_VERSION`] in blocks this code writes or reads.
    pub version: u16,
    /// Genesis is 0; each block is one more than the one before.
    pub height: u64,
    /// The previous block's hash; [`BlockHash::ZERO`] for genesis.
    pub prev_hash: BlockHash,
    /// The Raft term of the entry's log id.
    pub term: u64,
    /// The node id of the log id's leader, the one that proposed the entry.
    pub leader: NodeId,
    /// Milliseconds since the Unix epoch, put in by the leader when it proposed the entry.
    pub time_ms: u64,
    pub kind: BlockKind,
}

impl Canonical for BlockHeader {
    fn encode_to(&self, w: &mut Writer) {
        w.u16(self.version)
            .u64(self.height)
            .raw(&self.prev_hash.0)
            .u64(self.term)
            .u64(self.leader)
            .u64(self.time_ms)
            .u8(self.kind.tag());
    }

    /// Refuses any version but [`FORMAT_VERSION`]: the layout of what follows the version
    /// belongs to that version, so a v1 reader cannot read further.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u16("format version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownTag {
                what: "format version",
                tag: u64::from(version),
            });
        }
        Ok(Self {
            version,
            height: r.u64("height")?,
            prev_hash: BlockHash::decode_from(r)?,
            term: r.u64("term")?,
            leader: r.u64("leader")?,
            time_ms: r.u64("time")?,
            kind: BlockKind::from_tag(r.u8("block kind")?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example in docs/chain-format.md; keep the two in step.
    #[test]
    fn header_bytes_match_the_documented_example() {
        let h = BlockHeader {
            version: FORMAT_VERSION,
            height: 5,
            prev_hash: BlockHash([0xab; 32]),
            term: 2,
            leader: 0x0102_0304_0506_0708,
            time_ms: 1_700_000_000_000,
            kind: BlockKind::Records,
        };
        let bytes = h.to_canonical();
        assert_eq!(bytes.len(), HEADER_BYTES);
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "0001",
                "0000000000000005",
                "abababababababababababababababababababababababababababababababab",
                "0000000000000002",
                "0102030405060708",
                "0000018bcfe56800",
                "02"
            )
        );
        assert_eq!(BlockHeader::from_canonical(&bytes).unwrap(), h);
    }

    #[test]
    fn kind_tags_round_trip_and_unknown_tags_are_refused() {
        for k in BlockKind::ALL {
            assert_eq!(BlockKind::from_tag(k.tag()).unwrap(), k);
        }
        assert!(BlockKind::from_tag(0).is_err());
        assert!(BlockKind::from_tag(8).is_err());
    }

    #[test]
    fn other_versions_are_refused() {
        let mut bytes = BlockHeader {
            version: FORMAT_VERSION,
            height: 0,
            prev_hash: BlockHash::ZERO,
            term: 0,
            leader: 0,
            time_ms: 0,
            kind: BlockKind::Genesis,
        }
        .to_canonical();
        bytes[1] = 2;
        assert!(matches!(
            BlockHeader::from_canonical(&bytes),
            Err(DecodeError::UnknownTag { tag: 2, .. })
        ));
    }
}
