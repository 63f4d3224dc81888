//! Turns newly applied blocks into what the user sees (`record`, `member_joined`, ...) and
//! keeps this member's key ring: a group key is unwrapped only from a committed key-rotation
//! block that wraps it to this member.

use std::sync::Arc;
use std::time::Duration;

use conclave_shared::chain::{BlockBody, MemberRole, MembershipChange, StoredBlock};
use conclave_shared::envelope::unwrap_key;
use conclave_shared::identity::Identity;
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
        loop {
            let head = self.chain.head();
            if let Some((h, hash)) = head {
                if h + 1 > next {
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
                    self.emit(
                        announce,
                        Event::MemberLeft {
                            name: name.clone(),
                            role: WireRole::Learner,
                            height,
                        },
                    )
                    .await
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
            BlockBody::KeyRotation(k) => {
                let Some(mine) = k.wrapped.iter().find(|w| w.name == self.name) else {
                    return;
                };
                let identity = self.identity.clone();
                let wrapped = mine.wrapped.clone();
                match tokio::task::spawn_blocking(move || unwrap_key(&identity, &wrapped)).await {
                    Ok(Ok(key)) => {
                        self.keys.send_modify(|ring| ring.insert(k.epoch, key));
                        debug!(epoch = k.epoch, "holding the group key");
                        self.emit(
                            announce,
                            Event::KeyRotated {
                                epoch: k.epoch,
                                height,
                            },
                        )
                        .await;
                    }
                    other => warn!(
                        epoch = k.epoch,
                        "cannot unwrap the group key meant for us: {other:?}"
                    ),
                }
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
