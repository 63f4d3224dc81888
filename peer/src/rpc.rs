//! The Raft protocol, ALPN `conclave/raft/1`: openraft's own RPC types, one request per
//! bidirectional stream, framed as every other protocol (see docs/protocol.md).

use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

pub use conclave_shared::wire::ALPN_RAFT as ALPN;
/// An append request holds at most `MAX_PAYLOAD_ENTRIES` entries, each at most one record
/// batch (`MAX_BATCH_BYTES`); this leaves room for both.
pub const MAX_REQUEST_BYTES: usize = conclave_shared::wire::frame::MAX_FRAME_BYTES;
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Snapshots travel whole over one stream until the trust issue streams them in pieces.
pub const MAX_SNAPSHOT_BYTES: usize = conclave_shared::wire::frame::MAX_FRAME_BYTES;

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
}

impl RaftRequest {
    /// The node the request claims to come from; it must be the caller's certified identity.
    pub fn claimed_sender(&self) -> NodeId {
        let vote = match self {
            RaftRequest::Append(r) => &r.vote,
            RaftRequest::Vote(r) => &r.vote,
            RaftRequest::Snapshot { vote, .. } => vote,
        };
        vote.leader_id().voted_for().unwrap_or_default()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// The caller is not allowed to speak Raft here (not a member, or the node id in the
    /// request is not its own).
    Refused(String),
}
