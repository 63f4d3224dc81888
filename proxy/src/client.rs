//! The client side of `conclave/proxy/1`, for peers (with their member certificate) and for
//! `conclave status` (with none).
//!
//! The server must hold a valid *proxy* certificate from the root the caller trusts: a member,
//! or anything else, answering at the proxy's address is refused in the handshake.

use std::net::SocketAddr;
use std::time::Duration;

use conclave_shared::cert::Role;
use conclave_shared::quic::{self, MemberTrust, ServerTrust, TlsIdentity};
use conclave_shared::wire::proxy::{self, FromProxy, GroupStatus, SignedAnnouncement, ToProxy};
use conclave_shared::wire::{read_frame, write_frame};
use tracing::debug;

use crate::error::ProxyError;

pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one request may take end to end; `Status` includes the proxy's probes of every
/// member (`STATUS_PROBE_TIMEOUT_MS` each, in parallel).
pub const CLIENT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Pause between attempts of [`ProxyClient::connect_retrying`].
pub const RETRY_INTERVAL_MS: u64 = 250;

pub struct ProxyClient {
    conn: quinn::Connection,
    addr: SocketAddr,
}

impl ProxyClient {
    /// Connects once. `tls` is the member's identity (`None` for status only); `trust` gives
    /// the root and the known revocations, and the server is accepted only with a proxy
    /// certificate, whatever roles `trust` allows.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        tls: Option<&TlsIdentity>,
        trust: MemberTrust,
    ) -> Result<Self, ProxyError> {
        let unreachable = |why: String| ProxyError::Unreachable { addr, why };
        let proxy_only = MemberTrust::new(
            trust.root().clone(),
            &[Role::Proxy],
            trust.revoked().clone(),
        );
        let cfg = quic::client_config(tls, ServerTrust::Members(proxy_only), &[proxy::ALPN])
            .map_err(|e| ProxyError::Quic(e.to_string()))?;
        let connecting = endpoint
            .connect_with(cfg, addr, quic::SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| unreachable("no answer within the connect timeout".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self { conn, addr })
    }

    /// Connects, retrying until `deadline` passes, so the proxy may start after its clients.
    pub async fn connect_retrying(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        tls: Option<&TlsIdentity>,
        trust: MemberTrust,
        deadline: Duration,
    ) -> Result<Self, ProxyError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            match Self::connect(endpoint, addr, tls, trust.clone()).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if tokio::time::Instant::now() + Duration::from_millis(RETRY_INTERVAL_MS)
                        < until =>
                {
                    debug!("proxy not reachable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one raw request on a new stream and reads the reply (bounded in size and time).
    pub async fn request(&self, req: &ToProxy) -> Result<FromProxy, ProxyError> {
        let unreachable = |why: String| ProxyError::Unreachable {
            addr: self.addr,
            why,
        };
        let exchange = async {
            let (mut send, mut recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            write_frame(&mut send, req, proxy::MAX_REQUEST_BYTES).await?;
            let _ = send.finish();
            read_frame::<_, FromProxy>(&mut recv, proxy::MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| match e {
                    // A refused client certificate shows up here, as the connection closing.
                    conclave_shared::wire::WireError::Io(io) => unreachable(io.to_string()),
                    other => other.into(),
                })?
                .ok_or_else(|| ProxyError::Protocol("the proxy sent no reply".into()))
        };
        tokio::time::timeout(Duration::from_millis(CLIENT_REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| unreachable("no reply within the request timeout".into()))?
    }

    async fn call(&self, req: &ToProxy) -> Result<FromProxy, ProxyError> {
        match self.request(req).await? {
            FromProxy::Error { message } => Err(ProxyError::Refused { message }),
            other => Ok(other),
        }
    }

    fn unexpected(reply: FromProxy) -> ProxyError {
        ProxyError::Protocol(format!("unexpected reply: {reply:?}"))
    }

    /// Where to join; needs a member certificate. The answer is always `Leader`, `Bootstrap`
    /// or `Wait`: an `Error` reply is [`ProxyError::Refused`], anything else
    /// [`ProxyError::Protocol`].
    pub async fn where_is_leader(&self) -> Result<FromProxy, ProxyError> {
        match self.call(&ToProxy::WhereIsLeader).await? {
            reply @ (FromProxy::Leader(_)
            | FromProxy::Bootstrap { .. }
            | FromProxy::Wait { .. }) => Ok(reply),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Tells the proxy this member leads; needs the member certificate of the signer. The
    /// answer is always `Accepted` or `Rejected { reason, message, leader }` (`leader`: where
    /// the real group is, if the proxy knows).
    pub async fn announce(
        &self,
        announcement: &SignedAnnouncement,
    ) -> Result<FromProxy, ProxyError> {
        match self.call(&ToProxy::Announce(announcement.clone())).await? {
            reply @ (FromProxy::Accepted | FromProxy::Rejected { .. }) => Ok(reply),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The group as the proxy knows it; needs no certificate.
    pub async fn status(&self) -> Result<GroupStatus, ProxyError> {
        match self.call(&ToProxy::Status).await? {
            FromProxy::Status(s) => Ok(s),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The underlying connection, for tests that speak the raw protocol.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }
}
