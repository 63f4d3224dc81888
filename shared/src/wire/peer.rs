//! The member-to-member protocol, ALPN `conclave/peer/1`: admission, record submission (a
//! follower forwards to the leader), status, and the signed head every member sends every
//! other about once a second. Both sides present member certificates; the proxy may also
//! connect (with its proxy certificate) to ask for status.

use serde::{Deserialize, Serialize};

use crate::cert::Certificate;
use crate::identity::{signing_input, Identity, IdentityError, PublicKey, MAX_SIGNATURE_BYTES};

pub use super::ALPN_PEER as ALPN;
/// Requests carry at most one record batch, bounded well below this.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The domain of a member's signature over its [`Head`].
pub const HEAD_DOMAIN: &str = "conclave/head/v1";
/// A [`Head`]'s bincode is well below this (a name is at most 64 bytes); a longer one is
/// refused before its signature is checked.
pub const MAX_HEAD_BYTES: usize = 512;
/// At most this many [`HeadMismatch`]es go into one [`PeerStatus`], so that it fits a response
/// frame whatever the group's size.
pub const MAX_REPORTED_MISMATCHES: usize = 32;

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
    /// The caller's head, signed by it (about once a second, to every member it knows). The
    /// receiver compares it with its own block at that height. Answered `HeadNoted`, or
    /// `Error` if the head is refused (unknown or revoked sender, another group, a replay, a
    /// bad signature, too soon after the last one).
    Head(SignedHead),
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
    /// The caller's head was checked and taken (whether or not it matched ours).
    HeadNoted,
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
    /// The members whose signed head differs from this member's block at that height, at
    /// most [`MAX_REPORTED_MISMATCHES`]; empty while every head agrees.
    pub head_mismatches: Vec<HeadMismatch>,
}

/// `peer`'s signed head had another hash at `height` than this member's own block there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadMismatch {
    pub peer: String,
    pub height: u64,
    /// This member's block hash at `height`, lowercase hex.
    pub ours: String,
    /// The hash `peer` signed for `height`, lowercase hex.
    pub theirs: String,
}

/// What a member states about its chain: it holds a block of hash `hash` at `height`, the
/// last one, in group `group_id`. `time_ms` (the sender's clock) and `seq` (counting up
/// within one run of the sender) order one sender's heads, so a replayed one is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub group_id: [u8; 16],
    pub node_id: u64,
    pub name: String,
    pub height: u64,
    pub hash: [u8; 32],
    pub time_ms: u64,
    pub seq: u64,
}

/// A [`Head`] signed by the member it names. Signed as bytes, so the signature covers exactly
/// what was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// bincode (`wire::encode_message`) of a [`Head`], at most [`MAX_HEAD_BYTES`].
    pub bytes: Vec<u8>,
    /// RSA-PSS by the member over `signing_input("conclave/head/v1", [bytes])`.
    pub signature: Vec<u8>,
}

impl SignedHead {
    pub fn sign(identity: &Identity, head: &Head) -> Result<Self, IdentityError> {
        let bytes = super::encode_message(head).map_err(|e| IdentityError::Sign(e.to_string()))?;
        let signature = identity.sign(&signing_input(HEAD_DOMAIN, &[&bytes]))?;
        Ok(Self { bytes, signature })
    }

    /// Checks the sizes and the signature with `key`, then decodes what it covers.
    pub fn open(&self, key: &PublicKey) -> Result<Head, IdentityError> {
        if self.bytes.len() > MAX_HEAD_BYTES || self.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(IdentityError::BadSignature);
        }
        key.verify(&signing_input(HEAD_DOMAIN, &[&self.bytes]), &self.signature)?;
        super::decode_message(&self.bytes).map_err(|_| IdentityError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            group_id: [7; 16],
            node_id: 42,
            name: "alice".into(),
            height: 12,
            hash: [9; 32],
            time_ms: 1_700_000_000_000,
            seq: 3,
        }
    }

    #[test]
    fn a_signed_head_opens_under_its_key_only() {
        let alice = Identity::generate(2048).unwrap();
        let bob = Identity::generate(2048).unwrap();
        let signed = SignedHead::sign(&alice, &head()).unwrap();
        assert_eq!(signed.open(alice.public()).unwrap(), head());
        assert!(signed.open(bob.public()).is_err());
        let mut changed = signed.clone();
        let last = changed.bytes.len() - 1;
        changed.bytes[last] ^= 1;
        assert!(changed.open(alice.public()).is_err());
        let mut long = signed;
        long.bytes.resize(MAX_HEAD_BYTES + 1, 0);
        assert!(long.open(alice.public()).is_err());
    }

    #[test]
    fn head_messages_round_trip() {
        let alice = Identity::generate(2048).unwrap();
        let msg = ToPeer::Head(SignedHead::sign(&alice, &head()).unwrap());
        let bytes = super::super::encode_message(&msg).unwrap();
        assert_eq!(super::super::decode_message::<ToPeer>(&bytes).unwrap(), msg);
        let bytes = super::super::encode_message(&FromPeer::HeadNoted).unwrap();
        assert_eq!(
            super::super::decode_message::<FromPeer>(&bytes).unwrap(),
            FromPeer::HeadNoted
        );
    }
}
