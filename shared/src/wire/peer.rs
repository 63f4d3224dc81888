//! The member-to-member protocol, ALPN `conclave/peer/1`: admission, record submission (a
//! follower forwards to the leader), and status. Both sides present member certificates;
//! the proxy may also connect (with its proxy certificate) to ask for status.

use serde::{Deserialize, Serialize};

use crate::cert::Certificate;

pub use super::ALPN_PEER as ALPN;
/// Requests carry at most one record batch, bounded well below this.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A member's role, as the wire and the console name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireRole {
    Voter,
    Learner,
}

impl std::fmt::Display for WireRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireRole::Voter => "voter",
            WireRole::Learner => "learner",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToPeer {
    /// Admit the caller (whose TLS certificate must be `cert`) as a member reachable at `addr`.
    Admit { cert: Certificate, addr: String },
    /// Append one record batch (canonical `RecordBatch` bytes) signed by its author.
    Submit { batch: Vec<u8> },
    /// Who leads, at which term, and this member's head.
    Status,
    /// Remove the caller from the group (its `/leave`).
    Leave,
    /// As `Admit`, from a member that discarded its data (`conclave peer --resync`): if it is
    /// already a member, the leader drops its Raft membership entry (it lost its log and its
    /// vote) and adds it back as a learner that catches up from scratch, then restores its
    /// role. Answered like `Admit`. (New variants go last: bincode numbers variants in order.)
    Rejoin { cert: Certificate, addr: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromPeer {
    Admitted {
        role: WireRole,
        leader: String,
        term: u64,
        members: u32,
    },
    /// This member does not lead; try `leader` (name, address) if known.
    NotLeader {
        leader: Option<(String, String)>,
    },
    /// The batch is committed at `height` (`duplicate`: it was already, earlier).
    Committed {
        height: u64,
        duplicate: bool,
    },
    /// The batch was committed as a `refused` block at `height`.
    Refused {
        height: u64,
        reason: String,
    },
    Status(PeerStatus),
    /// A failure; `retry` says whether the same request may succeed later.
    Error {
        message: String,
        retry: bool,
    },
    /// The caller's removal is committed at `height`. (New variants go last: bincode
    /// numbers variants in order.)
    Left {
        height: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u64,
    pub role: Option<WireRole>,
    pub leader: Option<String>,
    pub term: u64,
    pub head_height: Option<u64>,
    /// Lowercase hex.
    pub head_hash: Option<String>,
}
