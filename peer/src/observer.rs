//! Turns newly applied blocks into what the user sees (`record`, `member_joined`, ...) and
//! keeps this member's key ring: a group key is unwrapped only from a committed key-rotation
//! block that wraps it to this member.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::chain::{BlockBody, MemberRole, MembershipChange, StoredBlock};
use conclave_shared::envelope::unwrap_key;
use conclave_shared::identity::Identity;
use conclave_shared::quic::RevokedSerials;
use conclave_shared::wire::peer::WireRole;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::events::Event;
use crate::keyring::KeyRing;
use crate::store::ChainReader;

/// `head` events come at most this often.
pub const HEAD_EVENT_INTERVAL_MS: u64 = 1_000;
/// Blocks read from the store in one go.
const READ_CHUNK: u64 = 256;

pub struct Observer {
    pub identity: Arc<Identity>,
    pub name: String,
    pub chain: ChainReader,
    pub keys: watch::Sender<KeyRing>,
    pub events: mpsc::Sender<Event>,
    /// The serials TLS refuses; revocations in the chain are added as they are applied.
    pub revoked: RevokedSerials,
    /// Cancelled when this member's own removal is applied.
    pub removed: CancellationToken,
    /// Set once this member's own `member_left` is printed.
    pub left_seen: Arc<AtomicBool>,
}

pub fn wire_role(r: MemberRole) -> WireRole {
    match r {
        MemberRole::Voter => WireRole::Voter,
        MemberRole::Learner => WireRole::Learner,
    }
}

impl Observer {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut heads = self.chain.subscribe();
        // Blocks applied before this start were shown then; only the keys are rebuilt.
        let mut next = 0u64;
        if let Some((h, _)) = self.chain.head() {
            next = self.process(0, h, false).await;
        }
        let mut last_head_event =
            tokio::time::Instant::now() - Duration::from_millis(HEAD_EVENT_INTERVAL_MS);
        let mut head_pending = false;
        let mut snapshots_seen = 0u64;
        loop {
            let view = self.chain.view();
            if view.snapshots_installed != snapshots_seen {
                snapshots_seen = view.snapshots_installed;
                if let Some(h) = view.snapshot_height {
                    // The blocks up to `h` came whole, in a snapshot: one event for them all,
                    // none for each; their keys and revocations are taken in all the same.
                    if h + 1 > next {
                        next = self.process(next, h, false).await;
                    }
                    let _ = self
                        .events
                        .send(Event::SnapshotInstalled { height: h })
                        .await;
                    head_pending = true;
                }
            }
            if let Some((h, hash)) = view.head {
                // Until this member holds a key (the rotation that admits it), only learn
                // keys: the records before its admission are shown once it can tell whether
                // it can read them (under `share_history` that rotation brings their keys).
                if h + 1 > next && self.keys.borrow().current().is_none() {
                    self.process_keys(next, h).await;
                }
                if h + 1 > next && self.keys.borrow().current().is_some() {
                    next = self.process(next, h, true).await;
                    head_pending = true;
                }
                if head_pending
                    && last_head_event.elapsed() >= Duration::from_millis(HEAD_EVENT_INTERVAL_MS)
                {
                    head_pending = false;
                    last_head_event = tokio::time::Instant::now();
                    let _ = self
                        .events
                        .send(Event::Head {
                            height: h,
                            hash: hash.to_hex(),
                        })
                        .await;
                }
            }
            let wait = if head_pending {
                Duration::from_millis(HEAD_EVENT_INTERVAL_MS)
                    .saturating_sub(last_head_event.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = heads.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Processes heights `from..=to`; returns the next height to process.
    async fn process(&self, from: u64, to: u64, announce: bool) -> u64 {
        // Keys first: a newcomer under `share_history` receives the earlier epochs' keys in
        // the rotation that admits it, which comes after the records they open.
        self.process_keys(from, to).await;
        self.process_blocks(from, to, announce).await
    }

    /// Learns the keys of the rotations in `from..=to`, announcing nothing.
    async fn process_keys(&self, from: u64, to: u64) {
        let mut at = from;
        while at <= to {
            let upto = to.min(at + READ_CHUNK - 1);
            let Ok(blocks) = self.chain.blocks(at, upto) else {
                break;
            };
            let Some(last) = blocks.last() else { break };
            at = last.block.header.height + 1;
            for b in &blocks {
                if let BlockBody::KeyRotation(k) = &b.block.body {
                    self.learn_keys(k).await;
                }
            }
        }
    }

    /// Announces the blocks `from..=to`; returns the next height to process.
    async fn process_blocks(&self, from: u64, to: u64, announce: bool) -> u64 {
        let mut next = from;
        while next <= to {
            let upto = to.min(next + READ_CHUNK - 1);
            let blocks = match self.chain.blocks(next, upto) {
                Ok(b) => b,
                Err(e) => {
                    warn!("cannot read blocks {next}..={upto}: {e}");
                    return next;
                }
            };
            if blocks.is_empty() {
                return next;
            }
            for b in blocks {
                next = b.block.header.height + 1;
                self.block(&b, announce).await;
            }
        }
        next
    }

    /// Unwraps the keys a rotation holds for this member (its new epoch, and earlier ones
    /// under `share_history`). Returns whether this member holds the rotation's epoch.
    async fn learn_keys(&self, k: &conclave_shared::chain::KeyRotation) -> bool {
        if self.keys.borrow().get(k.epoch).is_some() {
            return true;
        }
        let me = self.identity.fingerprint().node_id();
        let mut wanted: Vec<(u64, Vec<u8>)> = k
            .history
            .iter()
            .filter(|h| h.node_id == me && self.keys.borrow().get(h.epoch).is_none())
            .map(|h| (h.epoch, h.wrapped.clone()))
            .collect();
        if let Some(mine) = k
            .wrapped
            .iter()
            .find(|w| w.node_id == me && w.name == self.name)
        {
            wanted.push((k.epoch, mine.wrapped.clone()));
        }
        if wanted.is_empty() {
            return false;
        }
        let identity = self.identity.clone();
        let keys = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .filter_map(|(e, w)| match unwrap_key(&identity, &w) {
                    Ok(key) => Some((e, key)),
                    Err(err) => {
                        warn!(epoch = e, "cannot unwrap a group key meant for us: {err}");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        debug!(epochs = keys.len(), "holding group keys");
        self.keys.send_modify(|ring| {
            for (e, key) in keys {
                ring.insert(e, key);
            }
        });
        self.keys.borrow().get(k.epoch).is_some()
    }

    async fn emit(&self, announce: bool, e: Event) {
        if announce {
            let _ = self.events.send(e).await;
        }
    }

    async fn block(&self, b: &StoredBlock, announce: bool) {
        let height = b.block.header.height;
        match &b.block.body {
            BlockBody::Membership(m) => match &m.change {
                MembershipChange::Admit { cert, role, .. } => {
                    self.emit(
                        announce,
                        Event::MemberJoined {
                            name: cert.name().to_owned(),
                            role: wire_role(*role),
                            height,
                        },
                    )
                    .await
                }
                MembershipChange::Remove { name, .. } => {
                    let role = self
                        .chain
                        .member(name)
                        .map_or(WireRole::Learner, |m| wire_role(m.role));
                    self.emit(
                        announce,
                        Event::MemberLeft {
                            name: name.clone(),
                            role,
                            height,
                        },
                    )
                    .await;
                    if *name == self.name {
                        if announce {
                            self.left_seen.store(true, Ordering::SeqCst);
                        } else {
                            self.emit(true, Event::Error {
                                message: "this member was removed from the group; it cannot rejoin with this data".into(),
                            })
                            .await;
                        }
                        self.removed.cancel();
                    }
                }
                MembershipChange::RoleChange { name, role, .. } => {
                    self.emit(
                        announce,
                        Event::RoleChanged {
                            name: name.clone(),
                            role: wire_role(*role),
                            height,
                        },
                    )
                    .await
                }
            },
            BlockBody::Revocation(r) => {
                // From now on no member accepts that certificate on any channel.
                self.revoked.insert(r.revocation.statement.serial);
            }
            BlockBody::KeyRotation(k) if self.learn_keys(k).await => {
                self.emit(
                    announce,
                    Event::KeyRotated {
                        epoch: k.epoch,
                        height,
                    },
                )
                .await;
            }
            BlockBody::Records(batch) if announce => {
                let ring = self.keys.borrow().clone();
                for r in &batch.records {
                    let text = ring
                        .get(r.epoch)
                        .and_then(|k| r.open(k, &batch.author).ok())
                        .map(|pt| String::from_utf8_lossy(&pt).into_owned());
                    self.emit(
                        announce,
                        Event::Record {
                            height,
                            author: batch.author.clone(),
                            seq: r.seq,
                            text,
                            own: batch.author == self.name,
                        },
                    )
                    .await;
                }
            }
            _ => {}
        }
    }
}
