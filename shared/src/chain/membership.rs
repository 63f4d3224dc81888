//! Membership blocks: admission with a certificate, removal, role change.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{read_name, MAX_ADDR_BYTES};
use crate::cert::Certificate;
use crate::codec::{Canonical, DecodeError, Reader, Writer};
use crate::identity::{NodeId, MAX_SIGNATURE_BYTES};

/// A member's part in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Votes and may become leader.
    Voter,
    /// Replicates and appends but does not vote.
    Learner,
}

impl MemberRole {
    pub fn tag(self) -> u8 {
        match self {
            MemberRole::Voter => 1,
            MemberRole::Learner => 2,
        }
    }
    pub fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(MemberRole::Voter),
            2 => Ok(MemberRole::Learner),
            t => Err(DecodeError::UnknownTag {
                what: "member role",
                tag: u64::from(t),
            }),
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        })
    }
}

/// One change to the group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Tag 1. Admits the holder of `cert`, a root-signed member certificate; `node_id` must be
    /// the node id of the certificate's key.
    Admit {
        cert: Certificate,
        node_id: NodeId,
        /// Where the member listens, `host:port`, at most [`MAX_ADDR_BYTES`].
        addr: String,
        role: MemberRole,
    },
    /// Tag 2. The member leaves the group (it may be admitted again later).
    Remove { name: String, node_id: NodeId },
    /// Tag 3. A voter becomes a learner or the other way round.
    RoleChange {
        name: String,
        node_id: NodeId,
        role: MemberRole,
    },
}

impl MembershipChange {
    /// The member the change is about.
    pub fn name(&self) -> &str {
        match self {
            MembershipChange::Admit { cert, .. } => cert.name(),
            MembershipChange::Remove { name, .. } | MembershipChange::RoleChange { name, .. } => {
                name
            }
        }
    }
    pub fn node_id(&self) -> NodeId {
        match self {
            MembershipChange::Admit { node_id, .. }
            | MembershipChange::Remove { node_id, .. }
            | MembershipChange::RoleChange { node_id, .. } => *node_id,
        }
    }
}

impl Canonical for MembershipChange {
    fn encode_to(&self, w: &mut Writer) {
        match self {
            MembershipChange::Admit {
                cert,
                node_id,
                addr,
                role,
            } => {
                w.u8(1);
                cert.encode_to(w);
                w.u64(*node_id).str(addr).u8(role.tag());
            }
            MembershipChange::Remove { name, node_id } => {
                w.u8(2).str(name).u64(*node_id);
            }
            MembershipChange::RoleChange {
                name,
                node_id,
                role,
            } => {
                w.u8(3).str(name).u64(*node_id).u8(role.tag());
            }
        }
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("membership change")? {
            1 => Ok(MembershipChange::Admit {
                cert: Certificate::decode_from(r)?,
                node_id: r.u64("node id")?,
                addr: r.string("member address", MAX_ADDR_BYTES)?,
                role: MemberRole::from_tag(r.u8("member role")?)?,
            }),
            2 => Ok(MembershipChange::Remove {
                name: read_name(r, "member name")?,
                node_id: r.u64("node id")?,
            }),
            3 => Ok(MembershipChange::RoleChange {
                name: read_name(r, "member name")?,
                node_id: r.u64("node id")?,
                role: MemberRole::from_tag(r.u8("member role")?)?,
            }),
            t => Err(DecodeError::UnknownTag {
                what: "membership change",
                tag: u64::from(t),
            }),
        }
    }
}

/// The body of a `membership` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub change: MembershipChange,
    /// The proposing leader's signature; see [`super::leader_signing_bytes`].
    pub leader_sig: Vec<u8>,
}

impl Membership {
    pub(crate) fn encode_unsigned(&self, w: &mut Writer) {
        self.change.encode_to(w);
    }
}

impl Canonical for Membership {
    fn encode_to(&self, w: &mut Writer) {
        self.encode_unsigned(w);
        w.bytes(&self.leader_sig);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            change: MembershipChange::decode_from(r)?,
            leader_sig: r.bytes("leader signature", MAX_SIGNATURE_BYTES)?,
        })
    }
}
