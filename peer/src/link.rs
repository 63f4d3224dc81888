//! This member's line to the proxy: where to join, and (when leading) announcements.

use std::net::SocketAddr;
use std::sync::Arc;

use conclave_proxy::client::ProxyClient;
use conclave_shared::cert::VerifiedCert;
use conclave_shared::quic::{MemberTrust, TlsIdentity};
use conclave_shared::wire::proxy::{FromProxy, SignedAnnouncement};
use tokio::sync::Mutex;

use crate::error::PeerError;

pub struct ProxyLink {
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub tls: Arc<TlsIdentity>,
    /// Accepts only a server holding a proxy certificate.
    pub trust: MemberTrust,
    /// This member's own certificate.
    pub cert: VerifiedCert,
    /// One cached connection. The lock is held across a request, but only the task that owns
    /// this link uses it, so it never waits on anyone else.
    conn: Mutex<Option<ProxyClient>>,
}

impl ProxyLink {
    pub fn new(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        tls: Arc<TlsIdentity>,
        trust: MemberTrust,
        cert: VerifiedCert,
    ) -> Self {
        Self {
            endpoint,
            addr,
            tls,
            trust,
            cert,
            conn: Mutex::new(None),
        }
    }

    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&ProxyClient) -> Result<T, conclave_proxy::ProxyError>,
    ) -> Result<T, PeerError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let c = ProxyClient::connect(
                &self.endpoint,
                self.addr,
                Some(&self.tls),
                self.trust.clone(),
            )
            .await
            .map_err(|e| PeerError::ProxyUnreachable(e.to_string()))?;
            *guard = Some(c);
        }
        let Some(client) = guard.as_ref() else {
            return Err(PeerError::ProxyUnreachable("no connection".into()));
        };
        match f(client).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Dial afresh next time: the proxy may have restarted.
                *guard = None;
                Err(PeerError::ProxyUnreachable(e.to_string()))
            }
        }
    }

    pub async fn where_is_leader(&self) -> Result<FromProxy, PeerError> {
        self.with_client(async |c| c.where_is_leader().await).await
    }

    pub async fn announce(&self, a: &SignedAnnouncement) -> Result<FromProxy, PeerError> {
        self.with_client(async |c| c.announce(a).await).await
    }
}
