//! The peer's listening side: `conclave/raft/1` for openraft's RPCs and `conclave/peer/1`
//! for admission, record submission and status.
//!
//! TLS has already checked the caller's certificate against the root key and the known
//! revocations. Here, after the handshake, the caller's role must fit the protocol, and on
//! Raft the caller must be a current member and every request's node id its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::{Role, VerifiedCert};
use conclave_shared::chain::{BlockKind, RecordBatch};
use conclave_shared::codec::Canonical;
use conclave_shared::quic::{self, MemberTrust};
use conclave_shared::wire::peer::{self as peerwire, FromPeer, ToPeer};
use conclave_shared::wire::{read_frame, write_frame};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::rpc::{self, RaftReply, RaftRequest};
use crate::status::StatusSource;
use crate::types::{Applied, NodeId, PeerNode, Proposal, Raft};

pub const MAX_CONNECTIONS: usize = 256;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// A request must arrive whole within this once its stream is open.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The largest record batch a member may submit.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A request to admit a member, handled by the leader's admission task one at a time.
pub struct AdmitJob {
    pub cert: VerifiedCert,
    pub addr: String,
    pub reply: oneshot::Sender<FromPeer>,
}

/// What the server needs from the node.
#[derive(Clone)]
pub struct ServerCtx {
    pub raft: Raft,
    pub node_id: NodeId,
    pub trust: MemberTrust,
    pub admit: mpsc::Sender<AdmitJob>,
    pub status: StatusSource,
    /// The leader a joining member asked to admit it (0: none). Before this member holds a
    /// Raft membership, only that leader may replicate to it.
    pub admitter: Arc<AtomicU64>,
}

pub async fn serve(ctx: ServerCtx, endpoint: quinn::Endpoint, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(remote = %incoming.remote_address(), "too many connections; refusing");
                    incoming.refuse();
                    continue;
                };
                let remote = incoming.remote_address();
                let ctx = ctx.clone();
                let stop = shutdown.child_token();
                tasks.spawn(async move {
                    connection(ctx, incoming, stop).instrument(info_span!("conn", %remote)).await;
                    drop(permit);
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    warn!("connection task failed: {e}");
                }
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn connection(ctx: ServerCtx, incoming: quinn::Incoming, stop: CancellationToken) {
    let conn =
        match tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!("handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!("handshake timed out");
                return;
            }
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
        raft_connection(ctx, conn, who, stop).instrument(span).await;
    } else if alpn == peerwire::ALPN.to_vec() {
        peer_connection(ctx, conn, who, stop).instrument(span).await;
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

async fn raft_connection(
    ctx: ServerCtx,
    conn: quinn::Connection,
    who: VerifiedCert,
    stop: CancellationToken,
) {
    let caller = who.fingerprint().node_id();
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = stop.cancelled() => return,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
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
        // Revocations learned since the handshake count too.
        let reply = if let Err(e) = quic::peer_cert(&conn, &ctx.trust) {
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
        } else {
            handle_raft(&ctx.raft, req).await
        };
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
        RaftRequest::Snapshot { vote, meta, data } => {
            let snapshot = openraft::Snapshot {
                meta,
                snapshot: Box::new(std::io::Cursor::new(data)),
            };
            RaftReply::Snapshot(raft.install_full_snapshot(vote, snapshot).await)
        }
    }
}

async fn peer_connection(
    ctx: ServerCtx,
    conn: quinn::Connection,
    who: VerifiedCert,
    stop: CancellationToken,
) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = stop.cancelled() => return,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
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
            Err(_) => continue,
        };
        if let Err(e) = write_frame(&mut send, &reply, peerwire::MAX_RESPONSE_BYTES).await {
            debug!("could not send reply: {e}");
            continue;
        }
        let _ = send.finish();
    }
}

fn refuse(message: impl Into<String>) -> FromPeer {
    FromPeer::Error {
        message: message.into(),
        retry: false,
    }
}

async fn handle_peer(ctx: &ServerCtx, who: &VerifiedCert, req: ToPeer) -> FromPeer {
    match req {
        ToPeer::Status => FromPeer::Status(ctx.status.status()),
        _ if who.role() != Role::Member => refuse("only members may do that"),
        ToPeer::Admit { cert, addr } => {
            if &cert != who.certificate() {
                return refuse("the certificate to admit is not the caller's");
            }
            let (reply, rx) = oneshot::channel();
            let job = AdmitJob {
                cert: who.clone(),
                addr,
                reply,
            };
            if ctx.admit.send(job).await.is_err() {
                return FromPeer::Error {
                    message: "this member is shutting down".into(),
                    retry: true,
                };
            }
            rx.await.unwrap_or(FromPeer::Error {
                message: "admission was interrupted".into(),
                retry: true,
            })
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
                Ok(a) if a == who.name() && member => submit(&ctx.raft, batch).await,
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
