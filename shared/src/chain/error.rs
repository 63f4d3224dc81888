//! What can be wrong with a chain, and where; and what can go wrong making one.

use std::fmt;

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
        "a key rotation hands out earlier keys, but the group's genesis does not share history"
    )]
    HistoryNotShared,
    #[error(
        "a key rotation hands node {node_id} the key of epoch {epoch}: it must go to an \
         admitted member, once, for an epoch before this rotation's"
    )]
    BadHistoryKey { node_id: u64, epoch: u64 },
    #[error(
        "{author:?} record {seq} is sealed under epoch {epoch} while the current epoch is \
         {current}: only the current and the previous epoch (never epoch 0, never one \
         drawn before the last removal) are accepted"
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
    #[error(
        "checkpoint vouches that block {height} has hash {vouched}, but it has {actual}: blocks \
         up to {height} were altered, dropped, inserted or reordered and the hashes recomputed; \
         restore the chain from another member"
    )]
    CheckpointMismatch {
        height: u64,
        vouched: BlockHash,
        actual: BlockHash,
    },
    #[error(
        "checkpoint at height {at} vouches for block {checkpoint}, more than {window} blocks \
         back: verifiers keep only the last {window} hashes, so a checkpoint must name a \
         recent block"
    )]
    CheckpointOutsideWindow {
        checkpoint: u64,
        at: u64,
        window: u64,
    },
    #[error(
        "the {kind} block carries no leader signature: system blocks are signed by the leader \
         that proposed them, so this one was stripped or not made by a Conclave leader"
    )]
    MissingLeaderSignature { kind: BlockKind },
    #[error(
        "the {kind} block's leader signature does not verify under the key of its header's \
         leader {name:?} ({leader:016x}): the body or the header's time, term or leader was \
         altered, or the leader signed for another term than its entry got (deposed between \
         signing and proposing; it proposes again)"
    )]
    BadLeaderSignature {
        kind: BlockKind,
        leader: NodeId,
        name: String,
    },
    #[error(
        "the {kind} block is signed by {signer:?}, not by its header's leader {leader:016x}: \
         only the leader that proposed an entry signs it, so the header's leader was rewritten \
         or the signature taken from elsewhere"
    )]
    SignerNotLeader {
        kind: BlockKind,
        signer: String,
        leader: NodeId,
    },
    #[error(
        "the {kind} block's leader {leader:016x} {standing} here: only a present, unrevoked \
         voter may lead and sign system blocks"
    )]
    SignerNotVoter {
        kind: BlockKind,
        leader: NodeId,
        standing: SignerStanding,
    },
    #[error(
        "a {kind} block before the founder was admitted: the first system block after genesis \
         must admit the genesis block's leader {founder:016x} as a voter, signed by it"
    )]
    FounderNotAdmitted { kind: BlockKind, founder: NodeId },
    #[error(
        "the genesis block's leader signature does not verify under the certificate of the \
         founder {founder:?} admitted here: the genesis block (height 0) was altered or forged"
    )]
    BadGenesisSignature { founder: String },
    #[error(
        "the chain ends before its founder was admitted, so the genesis block's leader \
         signature cannot be checked: a chain verifies once it holds the founding admission"
    )]
    GenesisUnverifiable,
    #[error(
        "term {got} follows term {previous}: terms never decrease along a chain, so blocks were \
         reordered or a header's term rewritten"
    )]
    TermWentBack { previous: u64, got: u64 },
    #[error(
        "leader {got:016x} follows leader {previous:016x} in term {term}: within a term the \
         leader only ever changes to a higher node id (openraft orders leaders by term, then \
         node id), so blocks were reordered or a header's leader rewritten"
    )]
    LeaderWentBack {
        term: u64,
        previous: NodeId,
        got: NodeId,
    },
    #[error("malformed block: {0}")]
    Malformed(String),
    #[error("cannot read the block: {0}")]
    Read(String),
}

/// Why the header's leader may not sign a system block at that height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerStanding {
    /// No member, present or removed, has that node id.
    NotAMember,
    Learner,
    /// Its certificate's revocation is in the chain (it may still be present until removed).
    Revoked,
    Removed,
}

impl fmt::Display for SignerStanding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignerStanding::NotAMember => "is not a member",
            SignerStanding::Learner => "is a learner",
            SignerStanding::Revoked => "was revoked",
            SignerStanding::Removed => "was removed",
        })
    }
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
