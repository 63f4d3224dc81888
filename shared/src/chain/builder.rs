//! Making valid chains without a running group: for tests, benchmarks and tools.
//!
//! [`ChainBuilder`] plays the key manager (it issues certificates and revocations with the
//! root identity), the leader (it signs system blocks) and the authors (it seals and signs
//! their records). Every block it appends is first checked with [`ChainState::apply`], so
//! what it makes always verifies. [`relink`] rewrites heights, links and hashes the way
//! someone rewriting history would, for tests that check such rewrites are caught.

use std::collections::BTreeMap;

use super::{
    sign_as_leader, Block, BlockBody, BlockHash, BlockHeader, ChainError, ChainState, Checkpoint,
    Genesis, GroupId, KeyRotation, MemberRole, Membership, MembershipChange, Record, RecordBatch,
    Refused, RevocationNotice, Rules, StoredBlock, WrappedKey, FORMAT_VERSION,
};
use crate::cert::{CertBody, Certificate, Revocation, Role, SignedRevocation};
use crate::envelope::{wrap_key, GroupKey};
use crate::identity::{Identity, NodeId};

/// The time of the genesis block a builder makes; each later block is 1 ms later, so that
/// chains made twice from the same calls differ only in random bytes (nonces, keys,
/// signatures).
pub const BUILDER_START_MS: u64 = 1_700_000_000_000;

/// Builds a valid chain block by block. See the module docs.
///
/// ```no_run
/// # use conclave_shared::chain::*;
/// # use conclave_shared::identity::Identity;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = Identity::generate(2048)?;
/// let alice = Identity::generate(2048)?;
/// let rules = Rules { max_record_bytes: 4096, share_history: false, max_voters: 3 };
/// let mut b = ChainBuilder::new(&root, &alice, [1; 16], rules)?;
/// b.admit(&alice, "alice", MemberRole::Voter, "127.0.0.1:7000")?;
/// b.rotate_key()?;
/// b.records("alice", [b"hello".as_slice()])?;
/// let summary = verify_chain(root.public(), b.blocks().iter().cloned().map(Ok::<_, String>))?;
/// assert_eq!(summary.count, 4);
/// # Ok(()) }
/// ```
pub struct ChainBuilder<'a> {
    root: &'a Identity,
    leader: &'a Identity,
    term: u64,
    time_ms: u64,
    next_serial: u64,
    group_id: GroupId,
    state: ChainState,
    authors: BTreeMap<String, &'a Identity>,
    /// `keys[e - 1]` is the key of epoch `e`.
    keys: Vec<GroupKey>,
    blocks: Vec<StoredBlock>,
}

impl<'a> ChainBuilder<'a> {
    /// Starts a chain with its genesis block, signed by `leader` in term 1. The first
    /// admission must then be `leader`'s own, as a voter: it is the founder.
    pub fn new(
        root: &'a Identity,
        leader: &'a Identity,
        group_id: GroupId,
        rules: Rules,
    ) -> Result<Self, ChainError> {
        let time_ms = BUILDER_START_MS;
        let term = 1;
        let mut body = BlockBody::Genesis(Genesis {
            group_id,
            root_fingerprint: root.fingerprint(),
            rules,
            leader_sig: Vec::new(),
        });
        sign_as_leader(leader, &group_id, &mut body, time_ms, term)?;
        let header = BlockHeader {
            version: FORMAT_VERSION,
            height: 0,
            prev_hash: BlockHash::ZERO,
            term,
            leader: leader.fingerprint().node_id(),
            time_ms,
            kind: body.kind(),
        };
        let BlockBody::Genesis(genesis) = &body else {
            unreachable!("built as genesis above")
        };
        let state = ChainState::from_genesis(root.public(), &header, genesis)
            .map_err(ChainError::Rejected)?;
        Ok(Self {
            root,
            leader,
            term,
            time_ms: time_ms + 1,
            next_serial: 1,
            group_id,
            state,
            authors: BTreeMap::new(),
            keys: Vec::new(),
            blocks: vec![StoredBlock::new(Block { header, body })],
        })
    }

    /// Later system blocks are signed by `leader`, and all later blocks carry its id and
    /// `term` in their headers. For the chain to verify, `leader` must be a voter, and
    /// `(term, its node id)` may not be lower than the current leader's (see
    /// [`ChainState::apply`]); a block that breaks this is refused when appended.
    pub fn set_leader(&mut self, leader: &'a Identity, term: u64) {
        self.leader = leader;
        self.term = term;
    }

    /// Checks `body` against the chain so far and appends it as the next block, signing it
    /// as the leader first if it is a system block. Returns its height.
    pub fn append(&mut self, mut body: BlockBody) -> Result<u64, ChainError> {
        if body.kind().is_leader_signed() {
            sign_as_leader(
                self.leader,
                &self.group_id,
                &mut body,
                self.time_ms,
                self.term,
            )?;
        }
        let prev = self.blocks.last().expect("a builder starts with genesis");
        let header = BlockHeader {
            version: FORMAT_VERSION,
            height: prev.height() + 1,
            prev_hash: prev.hash,
            term: self.term,
            leader: self.leader.fingerprint().node_id(),
            time_ms: self.time_ms,
            kind: body.kind(),
        };
        self.state
            .apply(&header, &body)
            .map_err(ChainError::Rejected)?;
        let height = header.height;
        self.blocks.push(StoredBlock::new(Block { header, body }));
        self.time_ms += 1;
        Ok(height)
    }

    /// Issues `identity` a member certificate for `name` (as the key manager would) and
    /// admits it. Returns the admission's height.
    pub fn admit(
        &mut self,
        identity: &'a Identity,
        name: &str,
        role: MemberRole,
        addr: &str,
    ) -> Result<u64, ChainError> {
        let cert = Certificate::issue(
            self.root,
            CertBody {
                name: name.to_owned(),
                role: Role::Member,
                spki_der: identity.public().spki_der().to_vec(),
                serial: self.next_serial,
                issued_at_ms: self.time_ms,
            },
        )?;
        self.next_serial += 1;
        let height = self.append(BlockBody::Membership(Membership {
            change: MembershipChange::Admit {
                cert,
                node_id: identity.fingerprint().node_id(),
                addr: addr.to_owned(),
                role,
            },
            leader_sig: Vec::new(),
        }))?;
        self.authors.insert(name.to_owned(), identity);
        Ok(height)
    }

    fn node_id_of(&self, name: &str) -> Result<NodeId, ChainError> {
        self.state
            .member(name)
            .map(|m| m.node_id)
            .ok_or_else(|| ChainError::Invalid(format!("{name:?} was never admitted")))
    }

    pub fn remove(&mut self, name: &str) -> Result<u64, ChainError> {
        let node_id = self.node_id_of(name)?;
        self.append(BlockBody::Membership(Membership {
            change: MembershipChange::Remove {
                name: name.to_owned(),
                node_id,
            },
            leader_sig: Vec::new(),
        }))
    }

    pub fn change_role(&mut self, name: &str, role: MemberRole) -> Result<u64, ChainError> {
        let node_id = self.node_id_of(name)?;
        self.append(BlockBody::Membership(Membership {
            change: MembershipChange::RoleChange {
                name: name.to_owned(),
                node_id,
                role,
            },
            leader_sig: Vec::new(),
        }))
    }

    /// Draws the next epoch's key and wraps it to every admitted member.
    pub fn rotate_key(&mut self) -> Result<u64, ChainError> {
        let key = GroupKey::generate();
        let mut wrapped = Vec::new();
        for (name, m) in self.state.admitted() {
            wrapped.push(WrappedKey {
                name: name.to_owned(),
                node_id: m.node_id,
                wrapped: wrap_key(m.cert.public_key(), &key)?,
            });
        }
        let height = self.append(BlockBody::KeyRotation(KeyRotation {
            epoch: self.state.epoch() + 1,
            wrapped,
            history: Vec::new(),
            leader_sig: Vec::new(),
        }))?;
        self.keys.push(key);
        Ok(height)
    }

    /// Has the root revoke `name`'s certificate and commits the revocation (the member stays
    /// present until [`ChainBuilder::remove`]).
    pub fn revoke(&mut self, name: &str) -> Result<u64, ChainError> {
        let serial = self
            .state
            .member(name)
            .map(|m| m.cert.serial())
            .ok_or_else(|| ChainError::Invalid(format!("{name:?} was never admitted")))?;
        let revocation = SignedRevocation::issue(
            self.root,
            Revocation {
                serial,
                name: name.to_owned(),
                revoked_at_ms: self.time_ms,
            },
        )?;
        self.append(BlockBody::Revocation(RevocationNotice {
            revocation,
            leader_sig: Vec::new(),
        }))
    }

    /// Seals each plaintext as `author`'s next records under the current epoch's key and
    /// appends them as one batch signed by the author.
    pub fn records<I, P>(&mut self, author: &str, plaintexts: I) -> Result<u64, ChainError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let batch = self.batch(author, plaintexts)?;
        self.append(BlockBody::Records(batch))
    }

    /// The batch [`ChainBuilder::records`] would append, without appending it.
    pub fn batch<I, P>(&self, author: &str, plaintexts: I) -> Result<RecordBatch, ChainError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let identity = self
            .authors
            .get(author)
            .ok_or_else(|| ChainError::Invalid(format!("{author:?} was never admitted")))?;
        let first = self.state.member(author).map_or(1, |m| m.next_seq);
        let epoch = self.state.epoch();
        let key = self.group_key(epoch).ok_or_else(|| {
            ChainError::Invalid("no group key yet: rotate the key after admitting members".into())
        })?;
        let records = plaintexts
            .into_iter()
            .zip(first..)
            .map(|(p, seq)| Record::seal(key, author, seq, epoch, p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::sign(identity, &self.group_id, author, records)
    }

    /// The leader vouches for the last block.
    pub fn checkpoint(&mut self) -> Result<u64, ChainError> {
        self.checkpoint_at(self.head().height())
    }

    /// The leader vouches for the block at `height` (with its hash, if the builder has it).
    pub fn checkpoint_at(&mut self, height: u64) -> Result<u64, ChainError> {
        let hash = usize::try_from(height)
            .ok()
            .and_then(|i| self.blocks.get(i))
            .map_or(BlockHash::ZERO, |b| b.hash);
        self.append(BlockBody::Checkpoint(Checkpoint {
            height,
            hash,
            leader_sig: Vec::new(),
        }))
    }

    /// Records that an entry with these bytes was refused.
    pub fn refused(
        &mut self,
        entry: &[u8],
        author: Option<&str>,
        reason: &str,
    ) -> Result<u64, ChainError> {
        self.append(BlockBody::Refused(Refused {
            entry_digest: Refused::digest_of(entry),
            author: author.map(str::to_owned),
            reason: reason.to_owned(),
        }))
    }

    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    /// The key of `epoch`, if this builder drew it.
    pub fn group_key(&self, epoch: u64) -> Option<&GroupKey> {
        let i = usize::try_from(epoch.checked_sub(1)?).ok()?;
        self.keys.get(i)
    }
    /// The state after the last block.
    pub fn state(&self) -> &ChainState {
        &self.state
    }
    pub fn blocks(&self) -> &[StoredBlock] {
        &self.blocks
    }
    pub fn head(&self) -> &StoredBlock {
        self.blocks.last().expect("a builder starts with genesis")
    }
    pub fn into_blocks(self) -> Vec<StoredBlock> {
        self.blocks
    }
}

/// Rewrites `blocks[from..]` as someone rewriting history would: each block gets its index
/// as height, the previous block's hash as `prev_hash`, and its own new hash.
pub fn relink(blocks: &mut [StoredBlock], from: usize) {
    for i in from..blocks.len() {
        let prev = match i {
            0 => BlockHash::ZERO,
            _ => blocks[i - 1].hash,
        };
        let b = &mut blocks[i];
        b.block.header.height = i as u64;
        b.block.header.prev_hash = prev;
        b.hash = b.block.hash();
    }
}
