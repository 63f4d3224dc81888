//! openraft's network over QUIC: one connection per target, one stream per RPC.
//!
//! The server's certificate must be a member's, and its node id (derived from its key) must be
//! the target's: a peer that answers at a member's address with another key is unreachable,
//! not a voter.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_shared::quic::{self, MemberTrust};
use conclave_shared::wire::{encode_message, read_frame, write_frame};
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use tracing::{debug, info, warn};

use crate::liveness::Liveness;
use crate::rpc::{self, RaftReply, RaftRequest, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::types::{NodeId, PeerNode, Snapshot, TypeConfig, Vote};

/// Calls without a reply in a row after which the connection is dropped and dialled again.
const SILENT_CALLS_BEFORE_REDIAL: u32 = 2;
/// How long dialling a member may take before it counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A dial still unfinished after this long is dropped and a fresh one started. A call gives
/// up waiting on a dial after its own time limit (a heartbeat, 25 ms) but leaves it running,
/// so a handshake slower than one heartbeat (a member that just started) completes for the
/// next call; yet a dial begun while the member was down, whose first packet was lost, is
/// not waited on for QUIC's retransmission of it (about a second): the member may be back.
pub const REDIAL_AFTER_MS: u64 = 150;
/// A request of more entries than this to a member whose log is not known to match is sent
/// first without them (see `RaftConn::append_entries`); a few entries are cheaper to send
/// than a round trip.
pub const PROBE_ABOVE_ENTRIES: usize = 16;
/// After a failed snapshot transfer the next one to the same member waits this long,
/// doubling with each further failure up to [`SNAPSHOT_RETRY_MAX_MS`]. openraft would
/// otherwise offer the snapshot again at the next heartbeat.
pub const SNAPSHOT_RETRY_MIN_MS: u64 = 500;
pub const SNAPSHOT_RETRY_MAX_MS: u64 = 30_000;

/// A plain error with a message, for openraft's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

/// Creates one [`RaftConn`] per replication target.
#[derive(Clone)]
pub struct RaftNetworkFactoryImpl {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    trust: MemberTrust,
    liveness: Liveness,
    retry: Duration,
    pool: Pool,
}

/// The connection to each member, shared by every [`RaftConn`] of this node. openraft makes
/// a new client for each replication stream and election, and rebuilds the streams at every
/// membership change: three times while a newcomer is admitted. A new connection each time
/// would cost a handshake and QUIC's slow start just when the newcomer is being sent the
/// log, and would lose the answers still on their way on the old one.
///
/// It also remembers, per member, the leader vote under which the member's log was last
/// found to match this node's (see `RaftConn::append_entries`): still true for the next
/// stream of the same term.
#[derive(Clone, Default)]
struct Pool {
    // A std mutex: each section is one map lookup or insert, never held across an await.
    conns: Arc<Mutex<HashMap<NodeId, Pooled>>>,
    matched: Arc<Mutex<HashMap<NodeId, Vote>>>,
}

struct Pooled {
    conn: quinn::Connection,
    /// Calls on it in a row, from any client, that got no reply in time.
    silent: u32,
}

impl Pool {
    /// The open connection to `node` at `addr`, if there is one.
    fn get(&self, node: NodeId, addr: &str) -> Option<quinn::Connection> {
        let conns = self.conns.lock().ok()?;
        let c = &conns.get(&node)?.conn;
        let same_place = addr.parse::<SocketAddr>().ok() == Some(c.remote_address());
        (c.close_reason().is_none() && same_place).then(|| c.clone())
    }

    fn put(&self, node: NodeId, conn: &quinn::Connection) {
        if let Ok(mut m) = self.conns.lock() {
            m.insert(
                node,
                Pooled {
                    conn: conn.clone(),
                    silent: 0,
                },
            );
        }
    }

    /// A call on `conn` was answered.
    fn answered(&self, node: NodeId, conn: &quinn::Connection) {
        if let Ok(mut m) = self.conns.lock() {
            if let Some(p) = m.get_mut(&node) {
                if p.conn.stable_id() == conn.stable_id() {
                    p.silent = 0;
                }
            }
        }
    }

    /// A call on `conn` got no reply in time: whether the caller should close it, because
    /// that makes `limit` in a row (it is forgotten here), or because it is not the pooled
    /// connection (two clients dialled at once and the other's was kept): a duplicate that
    /// has stopped answering is not worth a second chance.
    fn silent(&self, node: NodeId, conn: &quinn::Connection, limit: u32) -> bool {
        let Ok(mut m) = self.conns.lock() else {
            return true;
        };
        match m.get_mut(&node) {
            Some(p) if p.conn.stable_id() == conn.stable_id() => {
                p.silent += 1;
                if p.silent >= limit {
                    m.remove(&node);
                    return true;
                }
                false
            }
            _ => true,
        }
    }

    fn matched(&self, node: NodeId, vote: &Vote) -> bool {
        self.matched
            .lock()
            .is_ok_and(|m| m.get(&node).is_some_and(|v| v == vote))
    }

    fn set_matched(&self, node: NodeId, vote: Option<Vote>) {
        if let Ok(mut m) = self.matched.lock() {
            match vote {
                Some(v) => m.insert(node, v),
                None => m.remove(&node),
            };
        }
    }
}

impl RaftNetworkFactoryImpl {
    /// Every answered `Append` is noted in `liveness` (the leader's dead-voter check reads it).
    /// An unreachable member is tried again after `retry` (see [`RaftConn::backoff`]).
    pub fn new(
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        trust: MemberTrust,
        liveness: Liveness,
        retry: Duration,
    ) -> Self {
        Self {
            endpoint,
            client,
            trust,
            liveness,
            retry,
            pool: Pool::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkFactoryImpl {
    type Network = RaftConn;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> RaftConn {
        RaftConn {
            target,
            node: node.clone(),
            endpoint: self.endpoint.clone(),
            client: self.client.clone(),
            trust: self.trust.clone(),
            liveness: self.liveness.clone(),
            retry: self.retry,
            pool: self.pool.clone(),
            conn: None,
            dialing: None,
            snapshot_failures: 0,
            snapshot_failed_at: None,
        }
    }
}

pub struct RaftConn {
    target: NodeId,
    node: PeerNode,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    trust: MemberTrust,
    liveness: Liveness,
    retry: Duration,
    pool: Pool,
    conn: Option<quinn::Connection>,
    /// A dial under way, and when it began (see [`REDIAL_AFTER_MS`]).
    dialing: Option<(
        Instant,
        tokio::task::JoinHandle<Result<quinn::Connection, String>>,
    )>,
    /// Snapshot transfers to this target that failed in a row, and when the last one did.
    snapshot_failures: u32,
    snapshot_failed_at: Option<Instant>,
}

/// Why one snapshot transfer failed.
enum SnapshotError {
    /// No connection: openraft backs off.
    Unreachable(String),
    /// The receiver looked at it and said no (it does not verify, it is too large, the
    /// receiver is busy, or we may not send it): nothing changed there.
    Refused(String),
    /// The stream broke or stalled, or our own file could not be read.
    Network(String),
    /// openraft on the receiver failed.
    Remote(Fatal<NodeId>),
}

/// Why one RPC failed: the peer could not be reached at all, or the exchange broke.
enum CallError {
    Unreachable(String),
    Network(String),
    /// The request would not fit in a frame.
    TooLarge,
}

impl RaftConn {
    async fn connection(&mut self) -> Result<quinn::Connection, CallError> {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if let Some(c) = self.pool.get(self.target, &self.node.addr) {
            self.conn = Some(c.clone());
            return Ok(c);
        }
        if let Some((began, d)) = &self.dialing {
            if began.elapsed() > Duration::from_millis(REDIAL_AFTER_MS) {
                d.abort();
                self.dialing = None;
            }
        }
        let (_, dial) = match &mut self.dialing {
            Some(d) => d,
            None => {
                let task = tokio::spawn(dial(
                    self.endpoint.clone(),
                    self.client.clone(),
                    self.node.addr.clone(),
                    self.trust.clone(),
                    self.target,
                ));
                self.dialing.insert((Instant::now(), task))
            }
        };
        // Cancelled here by the caller's time limit, the dial goes on in its task.
        let done = dial.await;
        self.dialing = None;
        let conn = done
            .map_err(|e| CallError::Unreachable(format!("dial: {e}")))?
            .map_err(CallError::Unreachable)?;
        self.pool.put(self.target, &conn);
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// `silent_limit`: calls in a row without a reply after which the connection is dialled
    /// afresh.
    async fn call(
        &mut self,
        req: &RaftRequest,
        ttl: Duration,
        silent_limit: u32,
    ) -> Result<RaftReply, CallError> {
        let encoded = encode_message(req).map_err(|e| CallError::Network(e.to_string()))?;
        if encoded.len() > MAX_REQUEST_BYTES {
            return Err(CallError::TooLarge);
        }
        // A dead peer must come back as Unreachable (openraft then backs off) rather than as
        // a timeout of every heartbeat.
        let conn = tokio::time::timeout(ttl, self.connection())
            .await
            .map_err(|_| CallError::Unreachable(format!("no connection within {ttl:?}")))??;
        let exchange = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| CallError::Network(e.to_string()))?;
            let len = u32::try_from(encoded.len()).map_err(|_| CallError::TooLarge)?;
            send.write_all(&len.to_be_bytes())
                .await
                .map_err(|e| CallError::Network(e.to_string()))?;
            send.write_all(&encoded)
                .await
                .map_err(|e| CallError::Network(e.to_string()))?;
            let _ = send.finish();
            read_frame::<_, RaftReply>(&mut recv, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| CallError::Network(e.to_string()))?
                .ok_or_else(|| CallError::Network("stream closed without a reply".into()))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(reply)) => {
                self.pool.answered(self.target, &conn);
                Ok(reply)
            }
            Ok(Err(e)) => {
                // A broken connection is dialled afresh next time (the pool keeps only an
                // open one).
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                // A peer killed and restarted on the same address leaves this connection
                // looking alive: the new process cannot reset it (it lacks the old one's
                // reset key), so nothing would end it before QUIC's idle timeout (10 s of a
                // restarted member left behind). Two calls in a row without a reply, and it
                // is dialled afresh; one late reply under load is not enough. The count is
                // the pool's: openraft makes a new client for each election, and a count of
                // the client's own never reached two on a vote (seen: a candidate whose vote
                // requests went to a dead connection for 10 s while the others' reached it).
                if self.pool.silent(self.target, &conn, silent_limit) {
                    debug!(
                        target = self.target,
                        silent_limit, "calls in a row without a reply; dialling afresh"
                    );
                    conn.close(0u32.into(), b"no reply");
                    self.conn = None;
                }
                Err(CallError::Network(format!("no reply within {ttl:?}")))
            }
        }
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<NodeId, PeerNode, E> {
        match e {
            CallError::Unreachable(m) => {
                debug!(target = self.target, "unreachable: {m}");
                RPCError::Unreachable(Unreachable::new(&NetError(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&NetError(m))),
            CallError::TooLarge => RPCError::Network(NetworkError::new(&NetError(
                "request larger than a frame".into(),
            ))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: RaftReply) -> RPCError<NodeId, PeerNode, E> {
        let m = match reply {
            RaftReply::Refused(why) => format!("refused by node {}: {why}", self.target),
            other => format!("unexpected reply from node {}: {other:?}", self.target),
        };
        RPCError::Network(NetworkError::new(&NetError(m)))
    }
}

impl Drop for RaftConn {
    fn drop(&mut self) {
        if let Some((_, d)) = self.dialing.take() {
            d.abort();
        }
    }
}

/// Dials the member at `addr` and checks that it is node `target`.
async fn dial(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: String,
    trust: MemberTrust,
    target: NodeId,
) -> Result<quinn::Connection, String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let connecting = endpoint
        .connect_with(client, addr, quic::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
        .await
        .map_err(|_| format!("{addr}: connect timed out"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let who = quic::peer_cert(&conn, &trust).map_err(|e| format!("{addr}: {e}"))?;
    if who.fingerprint().node_id() != target {
        conn.close(1u32.into(), b"not the node dialled");
        return Err(format!(
            "{addr} answered as {} (node {}), not node {target}",
            who.name(),
            who.fingerprint().node_id(),
        ));
    }
    Ok(conn)
}

impl RaftNetwork<TypeConfig> for RaftConn {
    /// How long openraft waits after an `Unreachable` before trying this member again: 500 ms
    /// by default. A member that restarts stands for election when it hears no leader within
    /// the lease and its election timeout (200-250 ms with the defaults), and its vote request,
    /// of a higher term, deposes the leader: a needless election at every restart. So an
    /// unreachable member is tried again within about a heartbeat.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry))
    }

    /// Until the target is known to hold the entry before the ones to send (a new target, a
    /// new leader, or after a conflict), a request of many entries goes without them: openraft
    /// finds where a new member's log ends by trying one position after another, and each
    /// try carried up to `MAX_LOG_READ_BYTES` of entries that the member refused (or took
    /// longer than a heartbeat to refuse, so the try timed out). openraft allows sending only
    /// a prefix of the entries and answering `PartialSuccess` with the last one sent.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let prev = rpc.prev_log_id;
        let carries = !rpc.entries.is_empty();
        let vote = rpc.vote;
        let probe = prev.is_some()
            && rpc.entries.len() > PROBE_ABOVE_ENTRIES
            && !self.pool.matched(self.target, &vote);
        if probe {
            debug!(target = self.target, prev = ?prev, entries = rpc.entries.len(), "probing without the entries");
            rpc.entries.clear();
        }
        let entries = rpc.entries.len() as u64;
        match self
            .call(
                &RaftRequest::Append(rpc),
                option.hard_ttl(),
                SILENT_CALLS_BEFORE_REDIAL,
            )
            .await
        {
            // Openraft retries with fewer entries.
            Err(CallError::TooLarge) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Ok(RaftReply::Append(Ok(r))) => {
                // Any answer of openraft's (success, conflict, higher vote) shows the member
                // alive and taking part; refusals and errors do not.
                self.liveness.acked(self.target);
                Ok(match r {
                    AppendEntriesResponse::Success if probe => {
                        self.pool.set_matched(self.target, Some(vote));
                        AppendEntriesResponse::PartialSuccess(prev)
                    }
                    AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) => {
                        // A heartbeat (no entries, often no `prev`) shows nothing of the log.
                        if carries {
                            self.pool.set_matched(self.target, Some(vote));
                        }
                        r
                    }
                    AppendEntriesResponse::Conflict => {
                        self.pool.set_matched(self.target, None);
                        r
                    }
                    AppendEntriesResponse::HigherVote(_) => r,
                })
            }
            Ok(RaftReply::Append(Err(e))) => Err(RPCError::RemoteError(
                RemoteError::new_with_node(self.target, self.node.clone(), e),
            )),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        // A live member answers a vote request within its time limit (the election
        // timeout): one without an answer is enough to dial afresh, for the next round.
        match self
            .call(&RaftRequest::Vote(rpc), option.hard_ttl(), 1)
            .await
        {
            Ok(RaftReply::Vote(Ok(r))) => Ok(r),
            Ok(RaftReply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    /// Streams the snapshot file over one new stream of the connection (the sub-protocol
    /// in `rpc.rs`), with a time limit per piece rather than for the whole transfer.
    ///
    /// Failures never reach openraft as storage errors (which would stop this node): a
    /// refusal, a dead receiver or an unreadable file of ours is `Unreachable` or a network
    /// error, and the next attempt to this target first waits out a growing delay, so a
    /// snapshot the receiver keeps refusing is offered again with backoff, not at every
    /// heartbeat.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let target = self.target;
        let attempt = async {
            if let Some(at) = self.snapshot_failed_at {
                let wait = snapshot_retry_delay(self.snapshot_failures);
                tokio::time::sleep_until((at + wait).into()).await;
            }
            self.send_snapshot(vote, snapshot).await
        };
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = attempt => r,
        };
        match result {
            Ok(r) => {
                self.snapshot_failures = 0;
                self.snapshot_failed_at = None;
                Ok(r)
            }
            Err(e) => {
                self.snapshot_failures = self.snapshot_failures.saturating_add(1);
                self.snapshot_failed_at = Some(Instant::now());
                let retry = snapshot_retry_delay(self.snapshot_failures);
                Err(match e {
                    SnapshotError::Unreachable(m) => {
                        debug!(target, "snapshot: unreachable: {m}");
                        StreamingError::Unreachable(Unreachable::new(&NetError(m)))
                    }
                    SnapshotError::Refused(m) => {
                        warn!(target, "node {target} refused our snapshot: {m}; trying again in {retry:?} or later");
                        StreamingError::Unreachable(Unreachable::new(&NetError(m)))
                    }
                    SnapshotError::Network(m) => {
                        warn!(target, "sending a snapshot to node {target} failed: {m}; trying again in {retry:?} or later");
                        StreamingError::Network(NetworkError::new(&NetError(m)))
                    }
                    SnapshotError::Remote(f) => StreamingError::RemoteError(
                        RemoteError::new_with_node(target, self.node.clone(), f),
                    ),
                })
            }
        }
    }
}

/// How long to wait before the next snapshot transfer after `failures` failed ones.
fn snapshot_retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    Duration::from_millis(
        SNAPSHOT_RETRY_MIN_MS
            .saturating_mul(1 << doublings)
            .min(SNAPSHOT_RETRY_MAX_MS),
    )
}

impl RaftConn {
    /// One snapshot transfer: header, the file in pieces, end of stream, then the answer.
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotError> {
        let piece = Duration::from_millis(rpc::SNAPSHOT_CHUNK_TIMEOUT_MS);
        let local =
            |e: &dyn std::fmt::Display| SnapshotError::Network(format!("our snapshot file: {e}"));
        let len = snapshot.snapshot.size().map_err(|e| local(&e))?;
        if len > rpc::MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::Refused(format!(
                "our snapshot of {len} bytes is larger than any member accepts ({} bytes)",
                rpc::MAX_SNAPSHOT_BYTES
            )));
        }
        let mut file = tokio::fs::File::open(snapshot.snapshot.path())
            .await
            .map_err(|e| local(&e))?;
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(CallError::Unreachable(m)) => return Err(SnapshotError::Unreachable(m)),
            Err(CallError::Network(m)) => return Err(SnapshotError::Network(m)),
            Err(CallError::TooLarge) => return Err(SnapshotError::Network("too large".into())),
        };
        let started = Instant::now();
        let net = |e: &dyn std::fmt::Display| SnapshotError::Network(e.to_string());
        let exchange = async {
            let (mut send, mut recv) = tokio::time::timeout(piece, conn.open_bi())
                .await
                .map_err(|_| net(&"no stream within the time limit"))?
                .map_err(|e| net(&e))?;
            let header = RaftRequest::Snapshot {
                vote,
                meta: snapshot.meta.clone(),
                len,
            };
            tokio::time::timeout(piece, write_frame(&mut send, &header, MAX_REQUEST_BYTES))
                .await
                .map_err(|_| net(&"the header did not go out within the time limit"))?
                .map_err(|e| net(&e))?;
            let sent = rpc::send_snapshot_data(&mut file, &mut send, len, piece).await;
            if let Err(e) = sent {
                // The receiver may have stopped reading to tell us why: prefer its answer.
                return match tokio::time::timeout(
                    piece,
                    read_frame::<_, RaftReply>(&mut recv, MAX_RESPONSE_BYTES),
                )
                .await
                {
                    Ok(Ok(Some(RaftReply::SnapshotRefused(m) | RaftReply::Refused(m)))) => {
                        Err(SnapshotError::Refused(m))
                    }
                    _ => Err(net(&e)),
                };
            }
            let _ = send.finish();
            rpc::read_snapshot_reply(&mut recv, piece)
                .await
                .map_err(|e| net(&e))
        };
        let reply = match exchange.await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, SnapshotError::Network(_)) {
                    // A broken connection is dialled afresh next time.
                    self.conn = None;
                }
                return Err(e);
            }
        };
        match reply {
            RaftReply::Snapshot(Ok(r)) => {
                info!(
                    target = self.target,
                    "sent snapshot {} ({len} bytes) in {:?}",
                    snapshot.meta.snapshot_id,
                    started.elapsed()
                );
                Ok(r)
            }
            RaftReply::Snapshot(Err(f)) => Err(SnapshotError::Remote(f)),
            RaftReply::SnapshotRefused(m) | RaftReply::Refused(m) => Err(SnapshotError::Refused(m)),
            other => Err(SnapshotError::Network(format!(
                "unexpected reply to a snapshot: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_retries_back_off_up_to_a_limit() {
        let ms = |n| snapshot_retry_delay(n).as_millis() as u64;
        assert_eq!(ms(1), SNAPSHOT_RETRY_MIN_MS);
        assert_eq!(ms(2), 2 * SNAPSHOT_RETRY_MIN_MS);
        assert_eq!(ms(3), 4 * SNAPSHOT_RETRY_MIN_MS);
        assert_eq!(ms(30), SNAPSHOT_RETRY_MAX_MS);
        assert_eq!(ms(u32::MAX), SNAPSHOT_RETRY_MAX_MS);
    }
}
