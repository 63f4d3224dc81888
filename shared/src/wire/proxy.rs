//! The proxy protocol, ALPN `conclave/proxy/1`.
//!
//! The proxy is the one known address. A joining member asks it where the leader is; the
//! leader tells it, in signed announcements, that it leads. `conclave status` asks it too,
//! without a client certificate.
//!
//! The proxy's server asks for a client certificate but does not require one: a member
//! presents its member certificate, `conclave status` presents none. Requests that need an
//! identity (`WhereIsLeader`, `Announce`) are answered `Error` on a connection without a
//! member certificate. The proxy itself presents a proxy-role certificate, and clients accept
//! no other. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::identity::{signing_input, Identity, IdentityError, PublicKey};

pub use super::ALPN_PROXY as ALPN;
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const ANNOUNCE_DOMAIN: &str = "conclave/announce/v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToProxy {
    /// A member (its TLS certificate says which) asks where to join. Answered `Leader`,
    /// `Bootstrap` or `Wait`.
    WhereIsLeader,
    /// A leader says it leads; see [`SignedAnnouncement`]. It must be signed by the key of the
    /// member certificate this connection presented, and name that member. Answered
    /// `Accepted` or `Rejected`.
    Announce(SignedAnnouncement),
    /// Anyone, no certificate needed: the group as the proxy knows it, with each member's
    /// reachability and head. Answered `Status`.
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromProxy {
    /// Join through this leader.
    Leader(LeaderInfo),
    /// No group exists yet: the asker may found one with this id, if it announces
    /// leadership within `lease_ms` (what is left of its lease; asking again does not extend a
    /// live lease). One asker holds the lease at a time; when it passes to another asker the
    /// group id is drawn afresh, so a founder that was too late is told `OtherGroup`.
    Bootstrap {
        group_id: [u8; 16],
        lease_ms: u64,
    },
    /// Someone else holds the bootstrap lease, or the group has no known leader right now:
    /// ask again after `retry_ms`.
    Wait {
        retry_ms: u64,
    },
    /// The announcement was accepted: the proxy now sends joiners to the announcer.
    Accepted,
    /// The announcement was not accepted; `leader` is where the real group is, if known. A
    /// peer that founded a group too late drops it and joins this one.
    Rejected {
        reason: Rejection,
        message: String,
        leader: Option<LeaderInfo>,
    },
    Status(GroupStatus),
    /// The request was malformed, needs a member certificate this connection lacks, or the
    /// proxy failed; the message is for people.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    /// Signature, certificate or encoding is wrong: not signed by the key of the presented
    /// certificate, naming someone else than that certificate, or malformed contents.
    BadSignature,
    /// The proxy serves another group.
    OtherGroup,
    /// A newer term is already known, or this term is led by another member.
    StaleTerm,
    /// The announcer is not a member the proxy knows.
    NotAMember,
    /// The announcer claims a new leadership (another leader, or a higher term) that a
    /// majority of the voters the proxy knows did not confirm: asked whom they follow at
    /// which term, too few answered "the announcer, at the announced term" (or a round for
    /// this announcer ran moments ago). Nothing changed; announce again later.
    NotConfirmed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub group_id: [u8; 16],
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    /// "voter" or "learner".
    pub role: String,
}

/// What a leader claims. Signed as bytes, so the signature covers exactly what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub group_id: [u8; 16],
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    pub term: u64,
    pub members: Vec<MemberInfo>,
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    /// bincode (`wire::encode_message`) of an [`Announcement`].
    pub bytes: Vec<u8>,
    /// RSA-PSS by the announcer over `signing_input("conclave/announce/v1", [bytes])`.
    pub signature: Vec<u8>,
}

impl SignedAnnouncement {
    pub fn sign(identity: &Identity, a: &Announcement) -> Result<Self, IdentityError> {
        let bytes = super::encode_message(a).map_err(|e| IdentityError::Sign(e.to_string()))?;
        let signature = identity.sign(&signing_input(ANNOUNCE_DOMAIN, &[&bytes]))?;
        Ok(Self { bytes, signature })
    }

    /// Checks the signature with `key`, then decodes what it covers.
    pub fn open(&self, key: &PublicKey) -> Result<Announcement, IdentityError> {
        key.verify(
            &signing_input(ANNOUNCE_DOMAIN, &[&self.bytes]),
            &self.signature,
        )?;
        super::decode_message(&self.bytes).map_err(|_| IdentityError::BadSignature)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group_id: Option<[u8; 16]>,
    pub leader: Option<LeaderInfo>,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub node_id: u64,
    pub addr: String,
    pub role: String,
    pub reachable: bool,
    pub head_height: Option<u64>,
    pub head_hash: Option<String>,
    /// What the member reported: others whose signed head differs from its own chain.
    pub head_mismatches: Vec<super::peer::HeadMismatch>,
}
