//! Turning committed entries into blocks, the same way on every replica.
//!
//! A normal entry carries a [`Proposal`]; it becomes the block at the next height whose
//! `term` and `leader` are the entry's log id's, whose `time_ms` and `kind` are the
//! proposal's, and whose body is the proposal's body, decoded canonically. The in-memory
//! [`ChainState`] then checks it exactly as `conclave verify` would. Outcomes, in order:
//!
//! 1. The body does not decode, is too large, has an unknown kind, or is a `refused` body
//!    (those are made here, never proposed) → a `refused` block.
//! 2. No genesis yet: a valid genesis founds the chain at height 0. Anything else, a genesis
//!    for another root included, is answered `Refused { height: 0 }` and **nothing is
//!    written**: a refusal is a block, and a block cannot exist before genesis. Every
//!    replica skips the same entries, so they stay identical.
//! 3. A records batch whose `(author, first seq)` is in the dedup index →
//!    `Duplicate { height }` of the block that has it; nothing is written. This is the
//!    author's retry after a lost answer.
//! 4. `ChainState::apply` accepts it → the block. Otherwise → a `refused` block naming the
//!    batch's author (records only) and the reason, cut to `MAX_REASON_BYTES`. Those checks
//!    include the leader signature of a system block against the entry's log id: a leader
//!    that signed for another term than the one its entry got is refused here like any other
//!    bad signature, alike on every replica.
//!
//! A refused block's `entry_digest` is SHA-256 of the proposal's body bytes as proposed, so
//! an author can recognise its own refused batch by hashing the bytes it sent.
//!
//! Nothing here returns an error for a bad entry (openraft stops on a state-machine error);
//! the only errors are the dedup index failing to read and broken internal invariants.

use conclave_shared::chain::{
    Block, BlockBody, BlockHash, BlockHeader, BlockKind, ChainState, FailureReason, Refused,
    StoredBlock, FORMAT_VERSION, HEADER_BYTES, MAX_BLOCK_BYTES, MAX_REASON_BYTES,
};
use conclave_shared::codec::Reader;
use conclave_shared::identity::PublicKey;
use openraft::EntryPayload;

use super::error::StoreError;
use crate::types::{Applied, Entry, LogId, Proposal, StoredMembership};

/// The state machine in memory: what deciding the next entry needs. It is rebuilt from the
/// stored blocks when the store opens.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmState {
    /// `None` until a genesis block is applied.
    pub chain: Option<ChainState>,
    pub head: Option<(u64, BlockHash)>,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// What applying one entry produced, and what must be written for it.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub reply: Applied,
    pub block: Option<StoredBlock>,
    /// The dedup key of a records batch that became a block.
    pub dedup: Option<(String, u64)>,
}

impl Outcome {
    fn reply(reply: Applied) -> Self {
        Self {
            reply,
            block: None,
            dedup: None,
        }
    }
}

/// Looks up `(author, first seq)` in the dedup index: the height of the batch's block.
pub(crate) type AppliedBefore<'a> = dyn FnMut(&str, u64) -> Result<Option<u64>, StoreError> + 'a;

impl SmState {
    pub(crate) fn apply_entry(
        &mut self,
        root: &PublicKey,
        entry: &Entry,
        applied_before: &mut AppliedBefore<'_>,
    ) -> Result<Outcome, StoreError> {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => Ok(Outcome::reply(Applied::Nothing)),
            EntryPayload::Membership(m) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                Ok(Outcome::reply(Applied::Nothing))
            }
            EntryPayload::Normal(p) => self.apply_proposal(root, &entry.log_id, p, applied_before),
        }
    }

    fn apply_proposal(
        &mut self,
        root: &PublicKey,
        log_id: &LogId,
        p: &Proposal,
        applied_before: &mut AppliedBefore<'_>,
    ) -> Result<Outcome, StoreError> {
        let header = self.next_header(log_id, p.time_ms);
        let body = match decode_proposal(p) {
            Ok(body) => body,
            Err(reason) => return self.refuse(header, p, None, reason),
        };
        let header = BlockHeader {
            kind: body.kind(),
            ..header
        };
        let Some(chain) = self.chain.as_mut() else {
            return Ok(self.found(root, header, body));
        };
        let mut dedup = None;
        if let BlockBody::Records(batch) = &body {
            if let Some(first) = batch.first_seq() {
                if let Some(height) = applied_before(&batch.author, first)? {
                    return Ok(Outcome::reply(Applied::Duplicate { height }));
                }
                dedup = Some((batch.author.clone(), first));
            }
        }
        match chain.apply(&header, &body) {
            Ok(()) => {
                let block = self.link(header, body);
                Ok(Outcome {
                    reply: Applied::Block {
                        height: block.height(),
                        hash: block.hash,
                    },
                    block: Some(block),
                    dedup,
                })
            }
            Err(reason) => {
                let author = dedup.map(|(author, _)| author);
                self.refuse(header, p, author, reason.to_string())
            }
        }
    }

    /// The header the next block gets; `kind` is filled in by the caller.
    fn next_header(&self, log_id: &LogId, time_ms: u64) -> BlockHeader {
        BlockHeader {
            version: FORMAT_VERSION,
            height: self.head.map_or(0, |(h, _)| h.saturating_add(1)),
            prev_hash: self.head.map_or(BlockHash::ZERO, |(_, hash)| hash),
            term: log_id.leader_id.term,
            leader: log_id.leader_id.node_id,
            time_ms,
            kind: BlockKind::Refused,
        }
    }

    /// Before genesis: only a valid genesis for our root starts the chain.
    fn found(&mut self, root: &PublicKey, header: BlockHeader, body: BlockBody) -> Outcome {
        let started = match &body {
            BlockBody::Genesis(genesis) => ChainState::from_genesis(root, &header, genesis),
            _ => Err(FailureReason::NotGenesis {
                kind: header.kind,
                height: header.height,
            }),
        };
        match started {
            Ok(state) => {
                self.chain = Some(state);
                let block = self.link(header, body);
                Outcome {
                    reply: Applied::Block {
                        height: block.height(),
                        hash: block.hash,
                    },
                    block: Some(block),
                    dedup: None,
                }
            }
            Err(reason) => Outcome::reply(Applied::Refused {
                height: 0,
                reason: cut_reason(reason.to_string()),
            }),
        }
    }

    /// Commits a `refused` block for `p` at the next height (nothing before genesis).
    fn refuse(
        &mut self,
        header: BlockHeader,
        p: &Proposal,
        author: Option<String>,
        reason: String,
    ) -> Result<Outcome, StoreError> {
        let reason = cut_reason(reason);
        let Some(chain) = self.chain.as_mut() else {
            return Ok(Outcome::reply(Applied::Refused { height: 0, reason }));
        };
        let header = BlockHeader {
            kind: BlockKind::Refused,
            ..header
        };
        let body = BlockBody::Refused(Refused {
            entry_digest: Refused::digest_of(&p.body),
            author,
            reason: reason.clone(),
        });
        // A refusal always passes: it is signed by nobody, and its place (the next height,
        // the entry's term and leader) passes because openraft commits log ids in order of
        // (term, leader). If it ever did not, the rules changed under us and going on would
        // fork this replica from the others.
        chain.apply(&header, &body).map_err(|e| {
            StoreError::Invariant(format!("a refused block did not pass the chain rules: {e}"))
        })?;
        let block = self.link(header, body);
        Ok(Outcome {
            reply: Applied::Refused {
                height: block.height(),
                reason,
            },
            block: Some(block),
            dedup: None,
        })
    }

    /// Makes the block the new head.
    fn link(&mut self, header: BlockHeader, body: BlockBody) -> StoredBlock {
        let block = StoredBlock::new(Block { header, body });
        self.head = Some((block.height(), block.hash));
        block
    }
}

/// Decodes the proposal's body for its kind, as a whole slice; the error is the refusal's
/// reason.
fn decode_proposal(p: &Proposal) -> Result<BlockBody, String> {
    let kind = BlockKind::from_tag(p.kind)
        .map_err(|e| FailureReason::Malformed(e.to_string()).to_string())?;
    if kind == BlockKind::Refused {
        return Err(FailureReason::Malformed(
            "refused blocks are made by every replica when applying; they cannot be proposed"
                .into(),
        )
        .to_string());
    }
    let len = HEADER_BYTES.saturating_add(p.body.len());
    if len > MAX_BLOCK_BYTES {
        return Err(FailureReason::BlockTooLarge {
            len,
            max: MAX_BLOCK_BYTES,
        }
        .to_string());
    }
    let mut r = Reader::new(&p.body);
    BlockBody::decode_for(kind, &mut r)
        .and_then(|body| r.finish().map(|()| body))
        .map_err(|e| FailureReason::Malformed(format!("{kind} body: {e}")).to_string())
}

/// Cuts a reason to `MAX_REASON_BYTES` at a character boundary.
fn cut_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = cut_reason(long);
        assert!(cut.len() <= MAX_REASON_BYTES);
        assert!(cut.len() >= MAX_REASON_BYTES - 1);
        assert_eq!(cut_reason("short".into()), "short");
    }

    #[test]
    fn proposals_of_unknown_or_refused_kinds_do_not_decode() {
        let p = |kind, body: &[u8]| Proposal {
            time_ms: 0,
            kind,
            body: body.to_vec(),
        };
        assert!(decode_proposal(&p(99, b"")).is_err());
        assert!(decode_proposal(&p(BlockKind::Refused.tag(), &[0; 40])).is_err());
        assert!(decode_proposal(&p(BlockKind::Records.tag(), b"junk")).is_err());
        let huge = vec![0; MAX_BLOCK_BYTES];
        let err = decode_proposal(&p(BlockKind::Records.tag(), &huge)).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
    }
}
