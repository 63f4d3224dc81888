//! The author's side of appending: every line is stored in the durable outbox before anything
//! is sent; at most one signed batch is in flight; it is resent unchanged after a crash or a
//! leader change, so each (author, seq) reaches the chain exactly once. A record is
//! acknowledged (`committed`) only once the leader has committed and applied it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::VerifiedCert;
use conclave_shared::chain::{BatchKey, Record, RecordBatch};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::Identity;
use conclave_shared::wire::peer::{FromPeer, ToPeer, WireRole};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::console::{Console, Query};
use crate::events::Event;
use crate::keyring::KeyRing;
use crate::peerlink::PeerLink;
use crate::server::LeaderJob;
use crate::status::StatusSource;
use crate::store::{ChainReader, Outbox};
use crate::types::Raft;

/// Records one batch may carry; more wait for the next batch.
pub const MAX_BATCH_RECORDS: usize = 512;
/// Plaintext bytes one batch may carry (the sealed batch stays under `MAX_BATCH_BYTES`).
pub const MAX_BATCH_PLAINTEXT_BYTES: usize = 2 * 1024 * 1024;
/// Pause before resending after a failure (leader unreachable, leader changed).
pub const RESEND_BACKOFF_MS: u64 = 50;
/// Part of the refusal a record sealed under a retired key gets (`FailureReason::RecordEpoch`).
const EPOCH_REFUSAL: &str = "is sealed under epoch";
/// How long a submission waits for an election to produce a leader before it counts as a
/// failure (and is retried after the backoff).
pub const LEADER_WAIT_MS: u64 = 3_000;
/// How long one submission may wait for its commit before it is resent.
pub const SUBMIT_TIMEOUT_MS: u64 = 10_000;
/// How long, at most, a busy writer gathers lines for its next batch (see `Writer::run`).
pub const GATHER_US: u64 = 1_000;
/// Console questions waiting for their answers; more are refused with an error.
const QUERY_QUEUE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Append(String),
    /// Leave the group: deliver what is pending, then ask for this member's removal.
    Leave,
    /// A console question; the answer comes as an `Event::Info` (or `Event::Error`), in the
    /// order asked, from a task of its own so appends never wait for it.
    Query(Query),
}

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Shut down (or its input closed for good).
    Stopped,
    /// This member's removal is committed.
    Left,
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
    /// This member's certificate, for asking its own leader task to remove it.
    pub cert: VerifiedCert,
    /// The leader task's queue, used when this member leads.
    pub jobs: mpsc::Sender<LeaderJob>,
    /// Set by the observer once it printed this member's own `member_left`.
    pub left_seen: Arc<AtomicBool>,
    pub status: StatusSource,
    pub events: mpsc::Sender<Event>,
    pub max_record_bytes: usize,
    /// This process's batch key (see `conclave_shared::chain::BatchKey`): drawn and certified
    /// with the member's RSA key for the first batch, held only in memory.
    pub batch_key: Option<Arc<BatchKey>>,
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
    ) -> WriterEnd {
        // Never reuse a sequence number the chain already holds for us (say, the outbox was
        // restored from an older copy): the chain would take new records for duplicates.
        if let Some(me) = self.chain.member(&self.name) {
            match self.outbox.advance_next_seq(me.next_seq) {
                // A batch in flight is resent as stored; the chain's dedup answers it, and
                // what follows it is numbered after it already.
                Ok(_) | Err(crate::store::StoreError::InflightBusy) => {}
                Err(e) => self.error(format!("cannot update the outbox: {e}")).await,
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
        let (done_tx, mut done_rx) = mpsc::channel::<(Outgoing, Result<FromPeer, Undelivered>)>(1);
        let (send_tx, send_rx) = mpsc::channel::<Outgoing>(1);
        let Some(peers) = self.peers.take() else {
            return WriterEnd::Stopped;
        };
        let submitter = Submitter {
            raft: self.raft.clone(),
            status: self.status.clone(),
            peers,
            cert: self.cert.clone(),
            jobs: self.jobs.clone(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(submitter.run(send_rx, done_tx, shutdown.child_token()));
        let (query_tx, query_rx) = mpsc::channel::<Query>(QUERY_QUEUE);
        let console = Console {
            name: self.name.clone(),
            raft: self.raft.clone(),
            chain: self.chain.clone(),
            status: self.status.clone(),
            keys: self.keys.clone(),
            events: self.events.clone(),
        };
        tasks.spawn(console.run(query_rx, shutdown.child_token()));
        let mut sending = false;
        let mut commands_open = true;
        let mut leaving = false;
        // Under load (the last batch carried several records), the lines answering its
        // acknowledgement arrive one by one: forming a batch at the first would send one
        // record and make the rest wait a whole round. So the next batch waits up to
        // `GATHER_US` for as many lines as the last one carried. A lone line (the last batch
        // had one) never waits.
        let mut last_batch = 0usize;
        let mut queued = 0usize;
        let mut gather_until: Option<tokio::time::Instant> = None;
        loop {
            if !sending {
                if inflight.is_none() {
                    let now = tokio::time::Instant::now();
                    let gathering = last_batch > 1 && queued > 0 && queued < last_batch;
                    let wait = gathering
                        && now
                            < *gather_until.get_or_insert(now + Duration::from_micros(GATHER_US));
                    if !wait {
                        gather_until = None;
                        inflight = self.form_batch().await;
                        if let Some(b) = &inflight {
                            last_batch = b.seqs.len();
                            queued = queued.saturating_sub(b.seqs.len());
                        }
                    }
                }
                let next = match inflight.take() {
                    Some(batch) => Some(Outgoing::Batch(batch)),
                    // Everything written before `/leave` is delivered first.
                    None if leaving => Some(Outgoing::Leave),
                    None => None,
                };
                if let Some(out) = next {
                    if send_tx.send(out).await.is_err() {
                        return WriterEnd::Stopped;
                    }
                    sending = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return WriterEnd::Stopped,
                cmd = commands.recv(), if commands_open && !leaving => match cmd {
                    Some(Command::Append(text)) => {
                        // Lines that queued up meanwhile are stored in one transaction.
                        let mut texts = vec![text];
                        let mut next = None;
                        while texts.len() < MAX_BATCH_RECORDS {
                            match commands.try_recv() {
                                Ok(Command::Append(t)) => texts.push(t),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        queued += self.enqueue(texts).await;
                        match next {
                            Some(Command::Leave) => leaving = true,
                            Some(Command::Query(q)) => self.ask(&query_tx, q).await,
                            Some(Command::Append(_)) | None => {}
                        }
                    }
                    Some(Command::Leave) => leaving = true,
                    Some(Command::Query(q)) => self.ask(&query_tx, q).await,
                    None => commands_open = false,
                },
                Some((out, result)) = done_rx.recv() => {
                    sending = false;
                    // A new leader is known: no reason to wait before resending to it.
                    let at_once = matches!(result, Err(Undelivered::LeaderChanged));
                    let retry = match out {
                        Outgoing::Batch(batch) => {
                            inflight = self.settle(batch, result).await;
                            inflight.is_some()
                        }
                        Outgoing::Leave => match result {
                            Ok(FromPeer::Left { height }) => {
                                info!(height, "left the group");
                                // The removal may never reach this member (Raft drops it
                                // next), so say it here unless the observer already did.
                                if !self.left_seen.load(Ordering::SeqCst) {
                                    let role = self.status.status().role.unwrap_or(WireRole::Learner);
                                    let _ = self
                                        .events
                                        .send(Event::MemberLeft { name: self.name.clone(), role, height })
                                        .await;
                                }
                                return WriterEnd::Left;
                            }
                            Ok(FromPeer::Error { message, retry: false }) => {
                                self.error(format!("cannot leave: {message}")).await;
                                leaving = false;
                                false
                            }
                            other => {
                                debug!("leave not done yet: {other:?}");
                                true
                            }
                        },
                    };
                    if retry && !at_once {
                        tokio::select! {
                            _ = shutdown.cancelled() => return WriterEnd::Stopped,
                            _ = tokio::time::sleep(Duration::from_millis(RESEND_BACKOFF_MS)) => {}
                        }
                    }
                }
                _ = tokio::time::sleep_until(gather_until.unwrap_or_else(tokio::time::Instant::now)),
                    if gather_until.is_some() && !sending && inflight.is_none() => {}
                changed = self.keys.changed(), if !sending && inflight.is_none() => {
                    if changed.is_err() {
                        return WriterEnd::Stopped;
                    }
                }
            }
        }
    }

    async fn error(&self, message: String) {
        warn!("{message}");
        let _ = self.events.send(Event::Error { message }).await;
    }

    async fn ask(&self, queries: &mpsc::Sender<Query>, q: Query) {
        if queries.try_send(q).is_err() {
            self.error(format!(
                "too many questions waiting; /{} not asked",
                q.name()
            ))
            .await;
        }
    }

    /// Stores the lines that fit in the outbox; returns how many it stored.
    async fn enqueue(&mut self, texts: Vec<String>) -> usize {
        let mut fitting: Vec<&[u8]> = Vec::with_capacity(texts.len());
        for text in &texts {
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
            } else {
                fitting.push(text.as_bytes());
            }
        }
        if fitting.is_empty() {
            return 0;
        }
        if let Err(e) = self.outbox.enqueue_all(&fitting) {
            self.error(format!("could not store the record: {e}")).await;
            return 0;
        }
        fitting.len()
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
        let batch_key = self
            .batch_key
            .clone()
            .filter(|k| *k.group_id() == group_id && k.author() == author);
        let signed = tokio::task::spawn_blocking(move || {
            let bk = match batch_key {
                Some(k) => k,
                None => Arc::new(
                    BatchKey::generate(&identity, &group_id, &author).map_err(|e| e.to_string())?,
                ),
            };
            let records = pending
                .iter()
                .map(|(seq, text)| Record::seal(&key, &author, *seq, epoch, text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            RecordBatch::sign_with(&bk, records)
                .map(|b| (b.to_canonical(), bk))
                .map_err(|e| e.to_string())
        })
        .await;
        let bytes = match signed {
            Ok(Ok((b, key))) => {
                self.batch_key = Some(key);
                b
            }
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
        if let Err(e) = self.outbox.store_inflight(&bytes, &seqs).await {
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
        result: Result<FromPeer, Undelivered>,
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
            Ok(FromPeer::Refused { reason, .. }) if reason.contains(EPOCH_REFUSAL) => {
                // Sealed under a key the group no longer uses (a member left meanwhile): seal
                // the same records again under the newest key, same seqs, once we hold it.
                debug!("batch sealed under a retired key; sealing it again: {reason}");
                if let Err(e) = self.outbox.reset_inflight() {
                    self.error(format!("could not update the outbox: {e}"))
                        .await;
                }
                let sealed_with = RecordBatch::from_canonical(&batch.bytes)
                    .ok()
                    .and_then(|b| b.records.first().map(|r| r.epoch))
                    .unwrap_or(0);
                let _ = tokio::time::timeout(
                    Duration::from_millis(LEADER_WAIT_MS),
                    self.keys
                        .wait_for(|k| k.current().is_some_and(|(e, _)| e > sealed_with)),
                )
                .await;
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

/// Why a submission got no answer.
#[derive(Debug)]
enum Undelivered {
    /// The leader changed while we waited: resend to the new one at once.
    LeaderChanged,
    Failed(String),
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undelivered::LeaderChanged => f.write_str("the leader changed"),
            Undelivered::Failed(why) => f.write_str(why),
        }
    }
}

/// What the submitting task delivers to the leader.
enum Outgoing {
    Batch(InFlight),
    Leave,
}

/// Delivers batches (and a `/leave`) to whoever leads now, over one cached connection.
struct Submitter {
    raft: Raft,
    status: StatusSource,
    peers: PeerLink,
    cert: VerifiedCert,
    jobs: mpsc::Sender<LeaderJob>,
}

impl Submitter {
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<Outgoing>,
        done: mpsc::Sender<(Outgoing, Result<FromPeer, Undelivered>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                b = batches.recv() => match b { Some(b) => b, None => return },
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.send(&batch) => r,
            };
            if done.send((batch, result)).await.is_err() {
                return;
            }
        }
    }

    async fn send(&mut self, out: &Outgoing) -> Result<FromPeer, Undelivered> {
        // During an election there is no leader for a moment: wait for one rather than
        // failing and sleeping a fixed backoff.
        let elected = self
            .raft
            .wait(Some(Duration::from_millis(LEADER_WAIT_MS)))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        if elected.is_err() {
            return Err(Undelivered::Failed("no leader known".into()));
        }
        if self.status.is_leader() {
            return Ok(match out {
                Outgoing::Batch(b) => crate::server::submit(&self.raft, b.bytes.clone()).await,
                Outgoing::Leave => {
                    let (reply, rx) = tokio::sync::oneshot::channel();
                    LeaderJob::Leave {
                        cert: self.cert.clone(),
                        reply,
                    }
                    .run(&self.jobs, rx)
                    .await
                }
            });
        }
        let mut metrics = self.raft.metrics();
        let (leader_id, leader) = {
            let m = metrics.borrow_and_update();
            let id = m.current_leader;
            let node = id.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
            (id, node)
        };
        let leader = leader.ok_or_else(|| Undelivered::Failed("no leader known".to_string()))?;
        let submit = match out {
            Outgoing::Batch(b) => ToPeer::Submit {
                batch: b.bytes.clone(),
            },
            Outgoing::Leave => ToPeer::Leave,
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
            r = request => r.map_err(Undelivered::Failed),
            _ = leader_changed => Err(Undelivered::LeaderChanged),
        }
    }
}
