//! Read-only access to the chain for the node, the console and status.
//!
//! Two sources, both cheap to clone:
//! - [`ChainView`] on a `watch` channel: the head, the last applied log id and the chain
//!   state (members, epoch, group id, rules) after the last `apply` or snapshot install.
//!   Reading it takes no I/O. It moves only after the blocks it describes are committed.
//! - Blocks, read from redb on request ([`ChainReader::block`], [`ChainReader::blocks`]).
//!
//! To follow new blocks, `subscribe()` and on each change read `blocks(next, head)`: a watch
//! never lags or overflows, and after a snapshot install the reader sees the head jump and
//! simply reads what it has not seen.

use std::sync::Arc;

use conclave_shared::cert::VerifiedCert;
use conclave_shared::chain::{
    BlockHash, ChainState, GroupId, Member, MemberRole, Rules, StoredBlock,
};
use conclave_shared::identity::{NodeId, PublicKey};
use redb::{Database, ReadableDatabase};
use tokio::sync::watch;

use super::apply::SmState;
use super::error::{DbResult, StoreError};
use super::inbox::SnapshotInbox;
use super::replay::decode_block;
use super::schema::BLOCKS;
use crate::types::LogId;

/// The most blocks one [`ChainReader::blocks`] call returns.
pub const MAX_BLOCKS_PER_READ: usize = 1024;
/// About the most block bytes one [`ChainReader::blocks`] call returns (at least one block).
pub const MAX_BLOCK_READ_BYTES: usize = 16 * 1024 * 1024;

/// The chain after the last apply; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ChainView {
    /// Height and hash of the last block; `None` before genesis.
    pub head: Option<(u64, BlockHash)>,
    /// The last Raft entry applied (blank and membership entries included).
    pub last_applied: Option<LogId>,
    /// The chain's rules and members at the head; `None` before genesis.
    pub state: Option<Arc<ChainState>>,
    /// How many snapshots were installed since the store opened. A follower that sees this
    /// change knows the blocks up to [`ChainView::snapshot_height`] came whole, not applied
    /// one by one.
    pub snapshots_installed: u64,
    /// The head height of the last snapshot installed; `None` if none was (or it was empty).
    pub snapshot_height: Option<u64>,
}

impl ChainView {
    pub(crate) fn of(state: &SmState) -> Self {
        Self {
            head: state.head,
            last_applied: state.last_applied,
            state: state.chain.clone().map(Arc::new),
            snapshots_installed: 0,
            snapshot_height: None,
        }
    }
}

/// A member as the chain knows it at the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub node_id: NodeId,
    /// The certificate of its latest admission.
    pub cert: VerifiedCert,
    pub role: MemberRole,
    /// The address it advertised when admitted.
    pub addr: String,
    /// The `seq` its next record must have.
    pub next_seq: u64,
    pub removed: bool,
    pub revoked: bool,
}

impl MemberInfo {
    fn new(name: &str, m: &Member) -> Self {
        Self {
            name: name.to_owned(),
            node_id: m.node_id,
            cert: m.cert.clone(),
            role: m.role,
            addr: m.addr.clone(),
            next_seq: m.next_seq,
            removed: m.removed,
            revoked: m.revoked,
        }
    }
    /// May append and is given each new key.
    pub fn is_admitted(&self) -> bool {
        !self.removed && !self.revoked
    }
    /// Part of the group (admitted, or revoked but not yet removed).
    pub fn is_present(&self) -> bool {
        !self.removed
    }
}

/// Read-only, cloneable access to the chain; see the module docs.
#[derive(Clone)]
pub struct ChainReader {
    db: Arc<Database>,
    root: Arc<PublicKey>,
    view: watch::Receiver<ChainView>,
    inbox: SnapshotInbox,
}

impl ChainReader {
    pub(crate) fn new(
        db: Arc<Database>,
        root: Arc<PublicKey>,
        view: watch::Receiver<ChainView>,
        inbox: SnapshotInbox,
    ) -> Self {
        Self {
            db,
            root,
            view,
            inbox,
        }
    }

    /// Where snapshots from other members are received and checked under this chain's root
    /// key before anything is installed. Checking changes nothing; installing is openraft's.
    pub fn snapshot_inbox(&self) -> &SnapshotInbox {
        &self.inbox
    }

    /// The group's root key, which the chain verifies under (known before genesis too).
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// A receiver that wakes on every applied batch and installed snapshot.
    pub fn subscribe(&self) -> watch::Receiver<ChainView> {
        self.view.clone()
    }

    /// The current view (cheap: the chain state is shared, not copied).
    pub fn view(&self) -> ChainView {
        self.view.borrow().clone()
    }

    pub fn head(&self) -> Option<(u64, BlockHash)> {
        self.view.borrow().head
    }

    /// The number of blocks: the head's height plus one.
    pub fn len(&self) -> u64 {
        self.head().map_or(0, |(h, _)| h + 1)
    }

    pub fn is_empty(&self) -> bool {
        self.head().is_none()
    }

    fn with_state<T>(&self, f: impl FnOnce(&ChainState) -> T) -> Option<T> {
        self.view.borrow().state.as_deref().map(f)
    }

    pub fn group_id(&self) -> Option<GroupId> {
        self.with_state(|s| *s.group_id())
    }

    pub fn rules(&self) -> Option<Rules> {
        self.with_state(|s| *s.rules())
    }

    /// The latest key epoch; 0 before genesis and before the first key rotation.
    pub fn epoch(&self) -> u64 {
        self.with_state(ChainState::epoch).unwrap_or(0)
    }

    pub fn member(&self, name: &str) -> Option<MemberInfo> {
        self.with_state(|s| s.member(name).map(|m| MemberInfo::new(name, m)))
            .flatten()
    }

    /// The member with this node id, preferring a present one over a removed one.
    pub fn member_by_id(&self, node_id: NodeId) -> Option<MemberInfo> {
        self.with_state(|s| {
            let mut matching = s.members().filter(|(_, m)| m.node_id == node_id);
            let first = matching.next()?;
            let (name, m) = std::iter::once(first)
                .chain(matching)
                .find(|(_, m)| m.is_present())
                .unwrap_or(first);
            Some(MemberInfo::new(name, m))
        })
        .flatten()
    }

    /// Everyone ever admitted, removed members included, by name.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.with_state(|s| s.members().map(|(n, m)| MemberInfo::new(n, m)).collect())
            .unwrap_or_default()
    }

    /// The members who may append and must get each new key, by name.
    pub fn admitted_members(&self) -> Vec<MemberInfo> {
        self.with_state(|s| s.admitted().map(|(n, m)| MemberInfo::new(n, m)).collect())
            .unwrap_or_default()
    }

    /// The block at `height`, if stored. A short redb read.
    pub fn block(&self, height: u64) -> Result<Option<StoredBlock>, StoreError> {
        let tx = self.db.begin_read().db()?;
        let table = tx.open_table(BLOCKS).db()?;
        let Some(v) = table.get(height).db()? else {
            return Ok(None);
        };
        decode_block(height, v.value())
            .map(Some)
            .map_err(|why| StoreError::corrupt("block", why))
    }

    /// Blocks `from..=to` in order, at most [`MAX_BLOCKS_PER_READ`] and about
    /// [`MAX_BLOCK_READ_BYTES`]: fewer than asked for means "ask again from the next one".
    /// A short redb read; from async code, run it in `spawn_blocking` if it may be long.
    pub fn blocks(&self, from: u64, to: u64) -> Result<Vec<StoredBlock>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().db()?;
        let table = tx.open_table(BLOCKS).db()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in table.range(from..=to).db()? {
            let (k, v) = row.db()?;
            let len = v.value().len();
            if !out.is_empty()
                && (out.len() >= MAX_BLOCKS_PER_READ
                    || bytes.saturating_add(len) > MAX_BLOCK_READ_BYTES)
            {
                break;
            }
            bytes = bytes.saturating_add(len);
            out.push(
                decode_block(k.value(), v.value())
                    .map_err(|why| StoreError::corrupt("block", why))?,
            );
        }
        Ok(out)
    }
}
