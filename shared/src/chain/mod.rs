//! The chain: format version 1 (see `docs/chain-format.md`) and its verification.
//!
//! A block is one committed Raft entry. Its bytes are the canonical encoding of
//! [`crate::codec`], its hash is SHA-256 over those bytes, and each block names the hash of
//! the one before. Anyone holding the blocks and the root public key can check the whole
//! chain: admissions carry root-signed certificates, record batches carry their author's
//! signature, revocations carry the root's signed statement.
//!
//! # Layout
//! - [`BlockHash`], [`BlockHeader`] and [`BlockKind`], [`Block`] and [`StoredBlock`]: the frame.
//! - One body a file: [`Genesis`] and [`Rules`], [`RecordBatch`] and [`Record`],
//!   [`Membership`], [`KeyRotation`], [`RevocationNotice`], [`Checkpoint`], [`Refused`];
//!   [`BlockBody`] picks one by kind.
//! - [`leader_signing_bytes`]: what a system block's leader signature covers.
//! - [`ChainState`]: the per-block rules and the little state they need (members, sequence
//!   numbers, epoch, the last term and leader, the last [`CHECKPOINT_WINDOW`] hashes). The
//!   verifier uses it, and a peer reuses it at apply time so that every replica refuses the
//!   same entries.
//! - [`ChainVerifier`] and [`verify_chain`]: streaming verification with the root key alone.
//! - [`ChainBuilder`] and [`relink`]: make valid chains (and rewritten ones) for tests,
//!   benchmarks and tools.
//! - [`FailureReason`], [`ChainFailure`], [`ChainError`]: what went wrong, and where.

mod batch_key;
mod block;
mod body;
mod builder;
mod checkpoint;
mod error;
mod genesis;
mod hash;
mod header;
mod key_rotation;
mod leader;
mod membership;
mod records;
mod refused;
mod revocation;
mod state;
mod verify;
mod window;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use batch_key::{
    delegation_signing_bytes, BatchKey, Delegation, BATCH_KEY_BYTES, BATCH_KEY_DOMAIN,
    BATCH_SIG_BYTES,
};
pub use block::{Block, StoredBlock};
pub use body::BlockBody;
pub use builder::{relink, ChainBuilder};
pub use checkpoint::Checkpoint;
pub use error::{ChainError, ChainFailure, FailureReason, SignerStanding};
pub use genesis::{Genesis, Rules};
pub use hash::BlockHash;
pub use header::{BlockHeader, BlockKind, HEADER_BYTES};
pub use key_rotation::{HistoryKey, KeyRotation, WrappedKey, MAX_HISTORY_KEYS};
pub use leader::{leader_signing_bytes, sign_as_leader, LEADER_DOMAIN};
pub use membership::{MemberRole, Membership, MembershipChange};
pub use records::{
    record_aad, BatchSignature, Record, RecordBatch, MAX_BATCH_SIGNATURE_BYTES, RECORDS_DOMAIN,
};
pub use refused::Refused;
pub use revocation::RevocationNotice;
pub use state::{ChainState, Member};
pub use verify::{verify_chain, ChainSummary, ChainVerifier};
pub use window::CHECKPOINT_WINDOW;

use crate::cert::{validate_name, MAX_NAME_BYTES};
use crate::codec::{DecodeError, Reader};

/// The format this module reads and writes. A header with any other version is refused.
pub const FORMAT_VERSION: u16 = 1;

/// A group's id: 16 random bytes drawn once, at genesis.
pub const GROUP_ID_BYTES: usize = 16;
pub type GroupId = [u8; GROUP_ID_BYTES];

/// The most records one batch (and so one block) may hold.
pub const MAX_RECORDS_PER_BATCH: usize = 4096;
/// The format's cap on one record's plaintext. A group's own cap, `Rules::max_record_bytes`,
/// may only be lower; the verifier checks records against the group's cap.
pub const MAX_RECORD_PLAINTEXT_BYTES: usize = 1024 * 1024;
/// The format's cap on one record's ciphertext: the largest plaintext plus the AES-GCM tag.
pub const MAX_RECORD_CIPHERTEXT_BYTES: usize =
    MAX_RECORD_PLAINTEXT_BYTES + crate::envelope::TAG_BYTES;
/// The most members (voters and learners, revoked but not yet removed included) a group has.
pub const MAX_MEMBERS: usize = 1024;
/// A key rotation wraps the new key once per member.
pub const MAX_WRAPPED_KEYS: usize = MAX_MEMBERS;
/// An RSA-OAEP ciphertext under a 4096-bit key is 512 bytes.
pub const MAX_WRAPPED_KEY_BYTES: usize = 512;
/// A member's advertised `host:port`.
pub const MAX_ADDR_BYTES: usize = 256;
/// The text of a refusal.
pub const MAX_REASON_BYTES: usize = 256;
/// The largest canonical block (header and body, without the stored hash). Writers split
/// batches to stay under it; it keeps one Raft entry, one frame and one decode bounded.
pub const MAX_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// Reads a member name and checks it against the certificate name rules, so that a block
/// holding a name no certificate could carry does not decode.
pub(crate) fn read_name(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    let name = r.string(what, MAX_NAME_BYTES)?;
    validate_name(&name).map_err(|_| DecodeError::Invalid {
        what,
        why: format!("{name:?} is not a valid name (1 to 64 of A-Z a-z 0-9 . _ -)"),
    })?;
    Ok(name)
}
