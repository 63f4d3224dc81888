//! What can be wrong with a chain, and where; and what can go wrong making one.

use thiserror::Error;

use super::{BlockHash, BlockKind};
use crate::cert::CertError;
use crate::envelope::EnvelopeError;
use crate::identity::{Fingerprint, IdentityError, NodeId};

/// The first block that fails verification, and why. Every block below `height` verified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("block {height}: {reason}")]
pub struct ChainFailure {
    pub height: u64,
    pub reason: FailureReason,
}

/// Why a block fails. The messages say what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FailureReason {
    #[error("the chain is empty: a chain starts with its genesis block")]
    Empty,
    #[error(
        "the first block must be the genesis block at height 0, found a {kind} block at \
         height {height}: the chain's beginning is missing"
    )]
    NotGenesis { kind: BlockKind, height: u64 },
    #[error("a second genesis block: a chain has exactly one, at height 0")]
    SecondGenesis,
    #[error("format version {got} is not {expected}: use a Conclave that reads version {got}")]
    WrongVersion { expected: u16, got: u16 },
    #[error("height {got} where {expected} was expected: blocks are missing or out of order")]
    HeightGap { expected: u64, got: u64 },
    #[error(
        "prev_hash {got} is not the previous block's hash {expected}: a block before this one \
         was altered, dropped or reordered"
    )]
    BrokenLink { expected: BlockHash, got: BlockHash },
    #[error(
        "stored hash {stored} is not the hash of the block's bytes {computed}: the block was \
         altered after it was written; restore it from another member"
    )]
    WrongHash {
        stored: BlockHash,
        computed: BlockHash,
    },
    #[error("the header says {header} but the body is {body}")]
    KindMismatch { header: BlockKind, body: BlockKind },
    #[error("the block is {len} bytes, more than the format's {max}")]
    BlockTooLarge { len: usize, max: usize },
    #[error(
        "genesis names root key {in_chain} but verification was given root key {given}: pass \
         this group's root public key"
    )]
    WrongRoot {
        given: Fingerprint,
        in_chain: Fingerprint,
    },
    #[error("genesis rules are unusable: {0}")]
    BadRules(String),
    #[error("admission of {name:?}: {why}")]
    BadCertificate { name: String, why: String },
    #[error("{name:?} is already a member: remove it before admitting it again")]
    AlreadyMember { name: String },
    #[error("node id {node_id:016x} already belongs to member {by:?}")]
    NodeIdInUse { node_id: NodeId, by: String },
    #[error("the group already has its most members ({max})")]
    GroupFull { max: usize },
    #[error("the group already has its most voters ({max}): admit as a learner")]
    TooManyVoters { max: u32 },
    #[error("{name:?} with node id {node_id:016x} is not a member")]
    NotAMember { name: String, node_id: NodeId },
    #[error(
        "the signature of {author:?}'s batch does not verify under its certificate: the \
         records were altered or signed by another key"
    )]
    BadAuthorSignature { author: String },
    #[error(
        "{author:?} is not an admitted member here (never admitted, removed, or revoked), \
         so it cannot append"
    )]
    AuthorNotAdmitted { author: String },
    #[error(
        "{author:?} sequence {got} was already used (expected {expected}): a batch was \
         repeated or blocks were reordered"
    )]
    SequenceRepeated {
        author: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "{author:?} sequence {got} skips {expected}: records of this author are missing or \
         blocks were reordered"
    )]
    SequenceSkipped {
        author: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "{author:?} record {seq} has a {len}-byte ciphertext, more than the group's {max} \
         (max_record_bytes plus the tag)"
    )]
    RecordTooLarge {
        author: String,
        seq: u64,
        len: usize,
        max: usize,
    },
    #[error(
        "key rotation to epoch {got}, but the current epoch is {current}: epochs go up by one"
    )]
    EpochOutOfOrder { current: u64, got: u64 },
    #[error(
        "{author:?} record {seq} is sealed under epoch {epoch} while the current epoch is \
         {current}: only the current and the previous epoch (and never epoch 0) are accepted"
    )]
    RecordEpoch {
        author: String,
        seq: u64,
        epoch: u64,
        current: u64,
    },
    #[error("the key rotation wraps a key to {name:?}, which is not an admitted member with that node id")]
    KeyWrappedToNonMember { name: String },
    #[error("the key rotation wraps the key to {name:?} more than once")]
    KeyWrappedTwice { name: String },
    #[error("the key rotation wraps no key to admitted member {name:?}")]
    KeyNotWrappedFor { name: String },
    #[error("revocation of {name:?} is not signed by the root key")]
    BadRevocation { name: String },
    #[error("checkpoint vouches for height {checkpoint}, which is not below its own height {at}")]
    CheckpointAhead { checkpoint: u64, at: u64 },
    #[error("malformed block: {0}")]
    Malformed(String),
    #[error("cannot read the block: {0}")]
    Read(String),
}

/// Why making a block failed (see [`super::ChainBuilder`], [`super::RecordBatch::sign`]).
#[derive(Debug, Error)]
pub enum ChainError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sign(#[from] IdentityError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("the block would not verify: {0}")]
    Rejected(FailureReason),
}
