//! openraft's network over QUIC: one connection per target, one stream per RPC.
//!
//! The server's certificate must be a member's, and its node id (derived from its key) must be
//! the target's: a peer that answers at a member's address with another key is unreachable,
//! not a voter.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use conclave_shared::quic::{self, MemberTrust};
use conclave_shared::wire::{encode_message, read_frame};
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use tracing::debug;

use crate::rpc::{RaftReply, RaftRequest, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::types::{NodeId, PeerNode, Snapshot, TypeConfig, Vote};

/// How long dialling a member may take before it counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

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
}

impl RaftNetworkFactoryImpl {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig, trust: MemberTrust) -> Self {
        Self {
            endpoint,
            client,
            trust,
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
            conn: None,
        }
    }
}

pub struct RaftConn {
    target: NodeId,
    node: PeerNode,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    trust: MemberTrust,
    conn: Option<quinn::Connection>,
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
        let addr: SocketAddr = self.node.addr.parse().map_err(|e| {
            CallError::Unreachable(format!("bad address {:?}: {e}", self.node.addr))
        })?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, quic::SERVER_NAME)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| CallError::Unreachable(format!("{addr}: connect timed out")))?
            .map_err(|e| CallError::Unreachable(format!("{addr}: {e}")))?;
        let who = quic::peer_cert(&conn, &self.trust)
            .map_err(|e| CallError::Unreachable(format!("{addr}: {e}")))?;
        if who.fingerprint().node_id() != self.target {
            conn.close(1u32.into(), b"not the node dialled");
            return Err(CallError::Unreachable(format!(
                "{addr} answered as {} (node {}), not node {}",
                who.name(),
                who.fingerprint().node_id(),
                self.target
            )));
        }
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn call(&mut self, req: &RaftRequest, ttl: Duration) -> Result<RaftReply, CallError> {
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
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                // A broken connection is dialled afresh next time.
                self.conn = None;
                Err(e)
            }
            Err(_) => Err(CallError::Network(format!("no reply within {ttl:?}"))),
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

impl RaftNetwork<TypeConfig> for RaftConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        match self
            .call(&RaftRequest::Append(rpc), option.hard_ttl())
            .await
        {
            // Openraft retries with fewer entries.
            Err(CallError::TooLarge) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Ok(RaftReply::Append(Ok(r))) => Ok(r),
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
        match self.call(&RaftRequest::Vote(rpc), option.hard_ttl()).await {
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

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let req = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta.clone(),
            data: snapshot.snapshot.into_inner(),
        };
        let call = self.call(&req, option.hard_ttl());
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = call => r,
        };
        match reply {
            Ok(RaftReply::Snapshot(Ok(r))) => Ok(r),
            Ok(RaftReply::Snapshot(Err(e))) => Err(StreamingError::RemoteError(
                RemoteError::new_with_node(self.target, self.node.clone(), e),
            )),
            Ok(other) => Err(StreamingError::Network(NetworkError::new(&NetError(
                format!("unexpected reply to a snapshot: {other:?}"),
            )))),
            Err(CallError::Unreachable(m)) => {
                Err(StreamingError::Unreachable(Unreachable::new(&NetError(m))))
            }
            Err(CallError::Network(m)) => {
                Err(StreamingError::Network(NetworkError::new(&NetError(m))))
            }
            Err(CallError::TooLarge) => Err(StreamingError::Network(NetworkError::new(&NetError(
                "the snapshot is larger than a frame".into(),
            )))),
        }
    }
}
