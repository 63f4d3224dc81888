//! The peer's listening side: `conclave/raft/1` for openraft's RPCs and `conclave/peer/1`
//! for admission, record submission and status.
//!
//! TLS has already checked the caller's certificate against the root key and the known
//! revocations. Here, after the handshake, the caller's role must fit the protocol, and on
//! Raft the caller must be a current member and every request's node id its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_shared::cert::{Role, VerifiedCert};
use conclave_shared::chain::{BlockKind, RecordBatch};
use conclave_shared::codec::Canonical;
use conclave_shared::quic::{self, MemberTrust, Slot};
use conclave_shared::wire::peer::{self as peerwire, FromPeer, ToPeer};
use conclave_shared::wire::{read_frame, write_frame};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::rpc::{self, RaftReply, RaftRequest};
use crate::status::StatusSource;
use crate::store::StoreError;
use crate::types::{Applied, NodeId, PeerNode, Proposal, Raft, SnapshotMeta, Vote};

pub const MAX_CONNECTIONS: usize = 256;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// A request must arrive whole within this once its stream is open.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The largest record batch a member may submit.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A membership change asked of the leader, handled by its task one at a time.
pub enum LeaderJob {
    /// Admit the member holding `cert`, reachable at `addr`.
    Admit {
        cert: VerifiedCert,
        addr: String,
        reply: oneshot::Sender<FromPeer>,
    },
    /// As `Admit`, for a member that discarded its data (`--resync`): a present member is
    /// dropped from Raft and added back as a learner that catches up from scratch.
    Rejoin {
        cert: VerifiedCert,
        addr: String,
        reply: oneshot::Sender<FromPeer>,
    },
    /// Remove the member holding `cert` at its own request (`/leave`).
    Leave {
        cert: VerifiedCert,
        reply: oneshot::Sender<FromPeer>,
    },
}

impl LeaderJob {
    /// Hands the job to the leader task and waits for its answer.
    pub async fn run(
        self,
        tx: &mpsc::Sender<LeaderJob>,
        rx: oneshot::Receiver<FromPeer>,
    ) -> FromPeer {
        if tx.send(self).await.is_err() {
            return FromPeer::Error {
                message: "this member is shutting down".into(),
                retry: true,
            };
        }
        rx.await.unwrap_or(FromPeer::Error {
            message: "the request was interrupted".into(),
            retry: true,
        })
    }
}

/// What the server needs from the node.
#[derive(Clone)]
pub struct ServerCtx {
    pub raft: Raft,
    pub node_id: NodeId,
    pub trust: MemberTrust,
    pub jobs: mpsc::Sender<LeaderJob>,
    pub status: StatusSource,
    /// The leader a joining member asked to admit it (0: none). Before this member holds a
    /// Raft membership, only that leader may replicate to it.
    pub admitter: Arc<AtomicU64>,
}

pub async fn serve(ctx: ServerCtx, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    let mut tasks =
        quic::accept_connections(&endpoint, MAX_CONNECTIONS, &shutdown, |incoming, slot| {
            let remote = incoming.remote_address();
            connection(ctx.clone(), incoming, slot).instrument(info_span!("conn", %remote))
        })
        .await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn connection(ctx: ServerCtx, incoming: quinn::Incoming, slot: Slot) {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let Some(conn) = slot.handshake(incoming, timeout).await else {
        return;
    };
    let who = match quic::peer_cert(&conn, &ctx.trust) {
        Ok(c) => c,
        Err(e) => {
            warn!("refusing a caller: {e}");
            conn.close(1u32.into(), b"not certified");
            return;
        }
    };
    let alpn = quic::negotiated_alpn(&conn).unwrap_or_default();
    let span = info_span!("peer", caller = %who.name());
    if alpn == rpc::ALPN.to_vec() {
        if who.role() != Role::Member {
            warn!(
                caller = who.name(),
                "a {} certificate may not speak Raft",
                who.role()
            );
            conn.close(1u32.into(), b"members only");
            return;
        }
        raft_connection(ctx, conn, who, slot).instrument(span).await;
    } else if alpn == peerwire::ALPN.to_vec() {
        peer_connection(ctx, conn, who, slot).instrument(span).await;
    } else {
        conn.close(1u32.into(), b"unknown protocol");
    }
}

/// Whether `node` may speak Raft to us: it is in our current Raft membership, or we have no
/// membership yet and it is the leader we asked to admit us.
fn is_member(ctx: &ServerCtx, node: NodeId) -> bool {
    let m = ctx.raft.metrics().borrow().membership_config.clone();
    let membership = m.membership();
    if membership.nodes().next().is_none() {
        return node != 0 && ctx.admitter.load(Ordering::SeqCst) == node;
    }
    membership.get_node(&node).is_some()
}

async fn raft_connection(ctx: ServerCtx, conn: quinn::Connection, who: VerifiedCert, slot: Slot) {
    let caller = who.fingerprint().node_id();
    loop {
        let Some((mut send, mut recv)) = slot.next_stream(&conn).await else {
            return;
        };
        let read = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            read_frame::<_, RaftRequest>(&mut recv, rpc::MAX_REQUEST_BYTES),
        )
        .await;
        let req = match read {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                warn!("bad raft request: {e}");
                let _ = recv.stop(1u32.into());
                continue;
            }
            Err(_) => {
                warn!("raft request timed out");
                continue;
            }
        };
        // A snapshot's data follows its header on this stream: whatever the answer, read no
        // more of it afterwards.
        let streaming = matches!(req, RaftRequest::Snapshot { .. });
        // Revocations learned since the handshake count too.
        let reply = if let Err(e) = quic::peer_cert(&conn, &ctx.trust) {
            warn!(
                caller,
                "raft request from a caller no longer certified: {e}"
            );
            RaftReply::Refused(e.to_string())
        } else if req.claimed_sender() != caller {
            warn!(
                claimed = req.claimed_sender(),
                caller, "raft request with another node's id"
            );
            RaftReply::Refused("the request's node id is not the caller's".into())
        } else if !is_member(&ctx, caller) {
            warn!(caller, "raft request from a non-member");
            RaftReply::Refused("not a member of this group".into())
        } else if let RaftRequest::Snapshot { vote, meta, len } = req {
            receive_snapshot(&ctx, caller, vote, meta, len, &mut recv, &mut send).await
        } else {
            handle_raft(&ctx.raft, req).await
        };
        if streaming {
            let _ = recv.stop(0u32.into());
        }
        if let Err(e) = write_frame(&mut send, &reply, rpc::MAX_RESPONSE_BYTES).await {
            debug!("could not send raft reply: {e}");
            continue;
        }
        let _ = send.finish();
    }
}

async fn handle_raft(raft: &Raft, req: RaftRequest) -> RaftReply {
    match req {
        RaftRequest::Append(r) => RaftReply::Append(raft.append_entries(r).await),
        RaftRequest::Vote(r) => RaftReply::Vote(raft.vote(r).await),
        // Its data is on the stream: see `receive_snapshot`.
        RaftRequest::Snapshot { .. } => {
            RaftReply::SnapshotRefused("a snapshot must come with its data".into())
        }
    }
}

/// The receiving side of a snapshot stream (the sub-protocol in `rpc.rs`): the bytes go to a
/// file of the store's inbox, every block is verified under the root key, and only then does
/// openraft install it (an error inside the state machine would stop this node). A bad
/// snapshot is refused with a warning and changes nothing; the leader offers one again later.
async fn receive_snapshot(
    ctx: &ServerCtx,
    caller: NodeId,
    vote: Vote,
    meta: SnapshotMeta,
    len: u64,
    recv: &mut quinn::RecvStream,
    send: &mut quinn::SendStream,
) -> RaftReply {
    let piece = Duration::from_millis(rpc::SNAPSHOT_CHUNK_TIMEOUT_MS);
    let started = Instant::now();
    let refuse = |why: String| {
        warn!(caller, snapshot = %meta.snapshot_id, len, "refusing a snapshot: {why}");
        RaftReply::SnapshotRefused(why)
    };
    // Checked again while receiving; checked here first so that a forged length does not
    // even make a file.
    if len > rpc::MAX_SNAPSHOT_BYTES {
        let max = rpc::MAX_SNAPSHOT_BYTES;
        return refuse(rpc::SnapshotStreamError::TooLarge { len, max }.to_string());
    }
    let mut incoming = match ctx.status.chain.snapshot_inbox().begin() {
        Ok(i) => i,
        Err(e) => return refuse(e.to_string()),
    };
    let Some(file) = incoming.writer() else {
        return refuse("no file to receive it into".into());
    };
    let received =
        rpc::receive_snapshot_data(recv, file, len, rpc::MAX_SNAPSHOT_BYTES, piece).await;
    if let Err(e) = received {
        return refuse(e.to_string());
    }
    let received = started.elapsed();
    let (snapshot, blocks) = match working(send, incoming.verify(&meta)).await {
        Ok(s) => s,
        Err(StoreError::BadSnapshot(why)) => return refuse(why),
        Err(e) => return refuse(e.to_string()),
    };
    let verified = started.elapsed();
    let result = working(send, ctx.raft.install_full_snapshot(vote, snapshot)).await;
    let done = started.elapsed();
    info!(
        caller,
        snapshot = %meta.snapshot_id,
        len,
        blocks,
        receive_ms = received.as_millis() as u64,
        verify_ms = (verified - received).as_millis() as u64,
        install_ms = (done - verified).as_millis() as u64,
        "snapshot verified and handed to Raft"
    );
    RaftReply::Snapshot(result)
}

/// Awaits `work`, meanwhile sending `Working` so that the sender's time limit per frame
/// holds however long verifying and installing take.
async fn working<F: std::future::Future>(send: &mut quinn::SendStream, work: F) -> F::Output {
    let piece = Duration::from_millis(rpc::SNAPSHOT_CHUNK_TIMEOUT_MS);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(rpc::SNAPSHOT_WORKING_INTERVAL_MS));
    tick.tick().await;
    // If the sender stopped listening the work still finishes: the snapshot is as good.
    let mut listening = true;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick(), if listening => {
                let sent = tokio::time::timeout(
                    piece,
                    write_frame(send, &RaftReply::Working, rpc::MAX_RESPONSE_BYTES),
                )
                .await;
                listening = matches!(sent, Ok(Ok(())));
            }
        }
    }
}

async fn peer_connection(ctx: ServerCtx, conn: quinn::Connection, who: VerifiedCert, slot: Slot) {
    loop {
        let Some((mut send, mut recv)) = slot.next_stream(&conn).await else {
            return;
        };
        let read = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            read_frame::<_, ToPeer>(&mut recv, peerwire::MAX_REQUEST_BYTES),
        )
        .await;
        let reply = match read {
            Ok(Ok(Some(req))) => handle_peer(&ctx, &who, req).await,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                warn!("bad peer request: {e}");
                FromPeer::Error {
                    message: format!("bad request: {e}"),
                    retry: false,
                }
            }
            Err(_) => {
                warn!("peer request timed out");
                let _ = recv.stop(1u32.into());
                continue;
            }
        };
        if let Err(e) = write_frame(&mut send, &reply, peerwire::MAX_RESPONSE_BYTES).await {
            debug!("could not send reply: {e}");
            continue;
        }
        let _ = send.finish();
    }
}

/// A request this member will not serve, whatever happens next: logged, and answered
/// `Error { retry: false }`.
fn refuse(message: impl Into<String>) -> FromPeer {
    let message = message.into();
    warn!("refusing a request: {message}");
    FromPeer::Error {
        message,
        retry: false,
    }
}

async fn handle_peer(ctx: &ServerCtx, who: &VerifiedCert, req: ToPeer) -> FromPeer {
    let rejoin = matches!(req, ToPeer::Rejoin { .. });
    match req {
        ToPeer::Status => FromPeer::Status(ctx.status.status()),
        _ if who.role() != Role::Member => refuse("only members may do that"),
        ToPeer::Admit { cert, addr } | ToPeer::Rejoin { cert, addr } => {
            if &cert != who.certificate() {
                return refuse("the certificate to admit is not the caller's");
            }
            let (reply, rx) = oneshot::channel();
            let cert = who.clone();
            let job = if rejoin {
                LeaderJob::Rejoin { cert, addr, reply }
            } else {
                LeaderJob::Admit { cert, addr, reply }
            };
            job.run(&ctx.jobs, rx).await
        }
        ToPeer::Leave => {
            let (reply, rx) = oneshot::channel();
            LeaderJob::Leave {
                cert: who.clone(),
                reply,
            }
            .run(&ctx.jobs, rx)
            .await
        }
        ToPeer::Head(signed) => {
            ctx.status
                .heads
                .receive(&ctx.status.chain, who, signed)
                .await
        }
        ToPeer::Submit { batch } => {
            // A member forwards its own batches only, and only while it is a member: anyone
            // else would just fill the chain with refusals.
            let author = RecordBatch::from_canonical(&batch).map(|b| b.author);
            let member = ctx
                .status
                .chain
                .member_by_id(who.fingerprint().node_id())
                .is_some_and(|m| m.is_present() && !m.revoked);
            match author {
                Ok(a) if a == who.name() && member => {
                    let reply = submit(&ctx.raft, batch).await;
                    if let FromPeer::Committed {
                        height,
                        duplicate: true,
                    } = reply
                    {
                        // A resend after a lost answer, or a replay: idempotent either way.
                        info!(
                            height,
                            "a batch applied before was submitted again; nothing written"
                        );
                    }
                    reply
                }
                Ok(_) if !member => refuse("only a member of this group may append"),
                Ok(a) => refuse(format!(
                    "{} may not submit records written by {a}",
                    who.name()
                )),
                Err(_) => refuse("not a record batch"),
            }
        }
        other => refuse(format!("unsupported request {other:?}")),
    }
}

/// Proposes a record batch and answers once it is committed and applied.
pub async fn submit(raft: &Raft, batch: Vec<u8>) -> FromPeer {
    if batch.len() > MAX_BATCH_BYTES {
        return refuse(format!(
            "batch of {} bytes exceeds {MAX_BATCH_BYTES}",
            batch.len()
        ));
    }
    // Decoding here only to refuse garbage early; apply decodes again, deterministically.
    if RecordBatch::from_canonical(&batch).is_err() {
        return refuse("not a record batch");
    }
    let proposal = Proposal {
        time_ms: conclave_shared::now_ms(),
        kind: BlockKind::Records.tag(),
        body: batch,
    };
    write_reply(raft.client_write(proposal).await)
}

/// Maps a client write's outcome to the wire.
pub fn write_reply(
    r: Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, PeerNode>>,
    >,
) -> FromPeer {
    use openraft::error::{ClientWriteError, RaftError};
    match r {
        Ok(resp) => match resp.data {
            Applied::Block { height, .. } => FromPeer::Committed {
                height,
                duplicate: false,
            },
            Applied::Duplicate { height } => FromPeer::Committed {
                height,
                duplicate: true,
            },
            Applied::Refused { height, reason } => FromPeer::Refused { height, reason },
            Applied::Nothing => FromPeer::Error {
                message: "the entry made no block".into(),
                retry: false,
            },
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => FromPeer::NotLeader {
            leader: f.leader_node.map(|n| (n.name, n.addr)),
        },
        Err(e) => FromPeer::Error {
            message: e.to_string(),
            retry: true,
        },
    }
}
