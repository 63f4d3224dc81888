//! The client side of `conclave/peer/1`: a member talking to another (usually the leader).

use std::net::SocketAddr;
use std::time::Duration;

use conclave_shared::identity::NodeId;
use conclave_shared::quic::{self, MemberTrust};
use conclave_shared::wire::peer::{self as peerwire, FromPeer, ToPeer};
use conclave_shared::wire::{read_frame, write_frame};

pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// One connection to one member, re-dialled when it breaks.
pub struct PeerLink {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    trust: MemberTrust,
    conn: Option<(String, NodeId, quinn::Connection)>,
}

impl PeerLink {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig, trust: MemberTrust) -> Self {
        Self {
            endpoint,
            client,
            trust,
            conn: None,
        }
    }

    /// Connects to `addr` (or reuses the connection) and returns who answered. With `expect`,
    /// a member answering with another key than that node's is refused: an address alone
    /// proves nothing.
    pub async fn connect(&mut self, addr: &str, expect: Option<NodeId>) -> Result<NodeId, String> {
        let (_, id) = self.connection(addr, expect).await?;
        Ok(id)
    }

    async fn connection(
        &mut self,
        addr: &str,
        expect: Option<NodeId>,
    ) -> Result<(quinn::Connection, NodeId), String> {
        if let Some((a, id, c)) = &self.conn {
            if a == addr && c.close_reason().is_none() && expect.is_none_or(|e| e == *id) {
                return Ok((c.clone(), *id));
            }
        }
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), sock, quic::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let who = quic::peer_cert(&conn, &self.trust).map_err(|e| format!("{addr}: {e}"))?;
        let id = who.fingerprint().node_id();
        if let Some(e) = expect {
            if e != id {
                conn.close(1u32.into(), b"not the member expected");
                return Err(format!(
                    "{addr} answered as {} (node {id}), not node {e}",
                    who.name()
                ));
            }
        }
        self.conn = Some((addr.to_owned(), id, conn.clone()));
        Ok((conn, id))
    }

    /// Sends one request to the member at `addr` and waits up to `timeout` for the answer.
    pub async fn request(
        &mut self,
        addr: &str,
        expect: Option<NodeId>,
        req: &ToPeer,
        timeout: Duration,
    ) -> Result<FromPeer, String> {
        let (conn, _) = self.connection(addr, expect).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, req, peerwire::MAX_REQUEST_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_frame::<_, FromPeer>(&mut recv, peerwire::MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no reply".to_string())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("{addr}: no reply within {timeout:?}"))
            }
        }
    }
}
