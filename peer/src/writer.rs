//! The author's side of appending: every line is stored in the durable outbox before anything
//! is sent; at most one signed batch is in flight; it is resent unchanged after a crash or a
//! leader change, so each (author, seq) reaches the chain exactly once. A record is
//! acknowledged (`committed`) only once the leader has committed and applied it.

use std::sync::Arc;
use std::time::Duration;

use conclave_shared::chain::{Record, RecordBatch};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;
use conclave_shared::wire::peer::{FromPeer, ToPeer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Event;
use crate::keyring::KeyRing;
use crate::peerlink::PeerLink;
use crate::status::StatusSource;
use crate::store::{ChainReader, Outbox};
use crate::types::Raft;

/// Records one batch may carry; more wait for the next batch.
pub const MAX_BATCH_RECORDS: usize = 512;
/// Plaintext bytes one batch may carry (the sealed batch stays under `MAX_BATCH_BYTES`).
pub const MAX_BATCH_PLAINTEXT_BYTES: usize = 2 * 1024 * 1024;
/// Pause before resending after a failure (leader unreachable, leader changed).
pub const RESEND_BACKOFF_MS: u64 = 50;
/// How long a submission waits for an election to produce a leader before it counts as a
/// failure (and is retried after the backoff).
pub const LEADER_WAIT_MS: u64 = 3_000;
/// How long one submission may wait for its commit before it is resent.
pub const SUBMIT_TIMEOUT_MS: u64 = 10_000;

pub enum Command {
    Append(String),
}

pub struct Writer {
    pub identity: Arc<Identity>,
    pub name: String,
    pub raft: Raft,
    pub chain: ChainReader,
    pub outbox: Outbox,
    pub keys: watch::Receiver<KeyRing>,
    /// Taken by the submitting task when the writer starts.
    pub peers: Option<PeerLink>,
    pub status: StatusSource,
    pub events: mpsc::Sender<Event>,
    pub max_record_bytes: usize,
}

/// A signed batch on its way, exactly as stored.
struct InFlight {
    bytes: Vec<u8>,
    seqs: Vec<u64>,
}

impl Writer {
    pub async fn run(
        mut self,
        commands: &mut mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        // Never reuse a sequence number the chain already holds for us (say, the outbox was
        // restored from an older copy): the chain would take new records for duplicates.
        if let Some(me) = self.chain.member(&self.name) {
            if let Err(e) = self.outbox.advance_next_seq(me.next_seq) {
                self.error(format!("cannot update the outbox: {e}")).await;
            }
        }
        let mut inflight: Option<InFlight> = match self.outbox.inflight() {
            Ok(Some((bytes, seqs))) => {
                info!(
                    records = seqs.len(),
                    "resending the batch that was in flight"
                );
                Some(InFlight { bytes, seqs })
            }
            Ok(None) => None,
            Err(e) => {
                self.error(format!("cannot read the outbox: {e}")).await;
                None
            }
        };
        let (done_tx, mut done_rx) = mpsc::channel::<(InFlight, Result<FromPeer, String>)>(1);
        let (send_tx, send_rx) = mpsc::channel::<InFlight>(1);
        let Some(peers) = self.peers.take() else {
            return;
        };
        let submitter = Submitter {
            raft: self.raft.clone(),
            status: self.status.clone(),
            peers,
        };
        tokio::spawn(submitter.run(send_rx, done_tx, shutdown.child_token()));
        let mut sending = false;
        let mut commands_open = true;
        loop {
            if !sending {
                if inflight.is_none() {
                    inflight = self.form_batch().await;
                }
                if let Some(batch) = inflight.take() {
                    if send_tx.send(batch).await.is_err() {
                        return;
                    }
                    sending = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Append(text)) => self.enqueue(text).await,
                    None => commands_open = false,
                },
                Some((batch, result)) = done_rx.recv() => {
                    sending = false;
                    inflight = self.settle(batch, result).await;
                    if inflight.is_some() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(RESEND_BACKOFF_MS)) => {}
                        }
                    }
                }
                changed = self.keys.changed(), if !sending && inflight.is_none() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn error(&self, message: String) {
        warn!("{message}");
        let _ = self.events.send(Event::Error { message }).await;
    }

    async fn enqueue(&mut self, text: String) {
        if text.len() > self.max_record_bytes {
            let _ = self
                .events
                .send(Event::Refused {
                    seq: 0,
                    reason: format!(
                        "a record may hold at most {} bytes; this one has {}",
                        self.max_record_bytes,
                        text.len()
                    ),
                })
                .await;
            return;
        }
        if let Err(e) = self.outbox.enqueue(text.as_bytes()) {
            self.error(format!("could not store the record: {e}")).await;
        }
    }

    /// Seals what is pending under the newest key, signs it and stores it as in flight.
    async fn form_batch(&mut self) -> Option<InFlight> {
        let pending = match self
            .outbox
            .pending(MAX_BATCH_RECORDS, MAX_BATCH_PLAINTEXT_BYTES)
        {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return None,
            Err(e) => {
                self.error(format!("cannot read the outbox: {e}")).await;
                return None;
            }
        };
        let (epoch, key) = self.keys.borrow().current()?;
        let group_id = *self.chain.group_id().as_ref()?;
        let identity = self.identity.clone();
        let author = self.name.clone();
        let seqs: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
        let signed = tokio::task::spawn_blocking(move || {
            let records = pending
                .iter()
                .map(|(seq, text)| Record::seal(&key, &author, *seq, epoch, text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            RecordBatch::sign(&identity, &group_id, &author, records)
                .map(|b| b.to_canonical())
                .map_err(|e| e.to_string())
        })
        .await;
        let bytes = match signed {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.error(format!("could not seal and sign records: {e}"))
                    .await;
                return None;
            }
            Err(e) => {
                self.error(format!("sealing task failed: {e}")).await;
                return None;
            }
        };
        if let Err(e) = self.outbox.set_inflight(&bytes, &seqs) {
            self.error(format!("could not store the batch: {e}")).await;
            return None;
        }
        debug!(records = seqs.len(), epoch, "batch formed");
        Some(InFlight { bytes, seqs })
    }

    /// Handles the answer to a submission; returns the batch if it must be resent.
    async fn settle(
        &mut self,
        batch: InFlight,
        result: Result<FromPeer, String>,
    ) -> Option<InFlight> {
        match result {
            Ok(FromPeer::Committed { height, duplicate }) => {
                if let Err(e) = self.outbox.complete_inflight() {
                    self.error(format!("could not clear the outbox: {e}")).await;
                }
                for seq in batch.seqs {
                    let _ = self
                        .events
                        .send(Event::Committed {
                            seq,
                            height,
                            duplicate,
                        })
                        .await;
                }
                None
            }
            Ok(FromPeer::Refused { reason, .. }) => {
                warn!("batch refused: {reason}");
                // The chain did not take these sequence numbers, so they are given back: the
                // refused records are dropped and later ones renumbered.
                if let Err(e) = self.outbox.drop_inflight_and_renumber() {
                    self.error(format!("could not clear the outbox: {e}")).await;
                }
                for seq in batch.seqs {
                    let _ = self
                        .events
                        .send(Event::Refused {
                            seq,
                            reason: reason.clone(),
                        })
                        .await;
                }
                None
            }
            Ok(other) => {
                debug!("batch not committed yet: {other:?}");
                Some(batch)
            }
            Err(e) => {
                debug!("batch not delivered: {e}");
                Some(batch)
            }
        }
    }
}

/// Delivers batches to whoever leads now, over one cached connection.
struct Submitter {
    raft: Raft,
    status: StatusSource,
    peers: PeerLink,
}

impl Submitter {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<InFlight>,
        done: mpsc::Sender<(InFlight, Result<FromPeer, String>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                b = batches.recv() => match b { Some(b) => b, None => return },
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.send(&batch.bytes) => r,
            };
            if done.send((batch, result)).await.is_err() {
                return;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<FromPeer, String> {
        // During an election there is no leader for a moment: wait for one rather than
        // failing and sleeping a fixed backoff.
        let elected = self
            .raft
            .wait(Some(Duration::from_millis(LEADER_WAIT_MS)))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        if elected.is_err() {
            return Err("no leader known".into());
        }
        if self.status.is_leader() {
            return Ok(crate::server::submit(&self.raft, bytes.to_vec()).await);
        }
        let mut metrics = self.raft.metrics();
        let (leader_id, leader) = {
            let m = metrics.borrow_and_update();
            let id = m.current_leader;
            let node = id.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
            (id, node)
        };
        let leader = leader.ok_or_else(|| "no leader known".to_string())?;
        let submit = ToPeer::Submit {
            batch: bytes.to_vec(),
        };
        let request = self.peers.request(
            &leader.addr,
            leader_id,
            &submit,
            Duration::from_millis(SUBMIT_TIMEOUT_MS),
        );
        // If the leader changes meanwhile (it died, say), stop waiting on it and resend to
        // the new one; the batch is the same, so a commit by the old one is a duplicate.
        let leader_changed = async {
            loop {
                if metrics.changed().await.is_err() {
                    return;
                }
                if metrics.borrow_and_update().current_leader != leader_id {
                    return;
                }
            }
        };
        tokio::select! {
            r = request => r,
            _ = leader_changed => Err("the leader changed".into()),
        }
    }
}
