//! The openraft type configuration and what a Raft entry carries.

use conclave_shared::chain::{BlockBody, BlockHash, BlockKind};
use serde::{Deserialize, Serialize};

pub type NodeId = conclave_shared::identity::NodeId;

openraft::declare_raft_types!(
    /// Conclave's Raft types: entries carry [`Proposal`]s, applying one yields [`Applied`].
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// What openraft keeps about each member: how to reach it and what it is called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    /// The address others dial (`--advertise`).
    pub addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// The payload of a normal Raft entry: a block body as its proposer made it, plus the time
/// the proposer stamped on it. Everything random or local (time, leader signature, wrapped
/// keys) is in here, fixed before replication, so that applying is deterministic.
///
/// The body travels as its canonical bytes: a malformed body from a buggy or hostile
/// proposer then fails to decode identically on every replica and becomes a `refused` block,
/// instead of failing deserialisation inside openraft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub time_ms: u64,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Proposal {
    pub fn new(time_ms: u64, body: &BlockBody) -> Self {
        Self {
            time_ms,
            kind: body.kind().tag(),
            body: body.to_canonical(),
        }
    }

    pub fn kind(&self) -> Option<BlockKind> {
        BlockKind::from_tag(self.kind).ok()
    }
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal(kind {}, {} bytes)", self.kind, self.body.len())
    }
}

/// What applying an entry did, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Openraft's own entries (blank, membership) make no block.
    Nothing,
    /// A new block at `height`.
    Block { height: u64, hash: BlockHash },
    /// A record batch whose first `(author, seq)` was applied before, at `height`: nothing
    /// new was written. The author treats it as committed.
    Duplicate { height: u64 },
    /// The entry failed a check; a `refused` block records that at `height`.
    Refused { height: u64, reason: String },
}
