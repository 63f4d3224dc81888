//! The client side of `conclave/km/1`, used by peers, the proxy and the admin commands.
//!
//! The key manager is pinned by the root public key: a server that cannot prove it holds the
//! root key is never spoken to, and every certificate or revocation it returns is checked
//! against the root key again before it is handed out.

use std::net::SocketAddr;
use std::time::Duration;

use conclave_shared::cert::{Role, SignedRevocation, VerifiedCert};
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::quic::{self, ServerTrust};
use conclave_shared::wire::km::{self, register_proof_input, FromKeymanager, ToKeymanager};
use conclave_shared::wire::{read_frame, write_frame};
use tracing::debug;

use crate::error::KeymanagerError;

/// How long one request may take end to end (a registration includes an fsync).
pub const CLIENT_REQUEST_TIMEOUT_MS: u64 = 15_000;
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Pause between attempts of [`KeymanagerClient::connect_retrying`].
pub const RETRY_INTERVAL_MS: u64 = 250;

/// A registered name with its verified certificate.
#[derive(Debug, Clone)]
pub struct Entry {
    pub cert: VerifiedCert,
    pub revoked: bool,
}

pub struct KeymanagerClient {
    conn: quinn::Connection,
    root: PublicKey,
    addr: SocketAddr,
}

impl KeymanagerClient {
    /// Connects once, pinning the server to `root`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        root: &PublicKey,
    ) -> Result<Self, KeymanagerError> {
        let unreachable = |why: String| KeymanagerError::Unreachable { addr, why };
        let cfg = quic::client_config(None, ServerTrust::PinnedRoot(root.clone()), &[km::ALPN])
            .map_err(|e| KeymanagerError::Quic(e.to_string()))?;
        let connecting = endpoint
            .connect_with(cfg, addr, quic::SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| unreachable("no answer within the connect timeout".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            conn,
            root: root.clone(),
            addr,
        })
    }

    /// Connects, retrying until `deadline` passes, so either side may start first.
    pub async fn connect_retrying(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        root: &PublicKey,
        deadline: Duration,
    ) -> Result<Self, KeymanagerError> {
        let until = tokio::time::Instant::now() + deadline;
        let mut warned = false;
        loop {
            match Self::connect(endpoint, addr, root).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if tokio::time::Instant::now() + Duration::from_millis(RETRY_INTERVAL_MS)
                        < until =>
                {
                    // Once where a person sees it (it may simply not be started yet), then quietly.
                    if !warned {
                        tracing::warn!(
                            "key manager at {addr} not reachable yet ({e}); retrying for up to {} s",
                            deadline.as_secs()
                        );
                        warned = true;
                    }
                    debug!("key manager not reachable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one raw request on a new stream and reads the reply.
    pub async fn request(&self, req: &ToKeymanager) -> Result<FromKeymanager, KeymanagerError> {
        let exchange = async {
            let (mut send, mut recv) =
                self.conn
                    .open_bi()
                    .await
                    .map_err(|e| KeymanagerError::Unreachable {
                        addr: self.addr,
                        why: e.to_string(),
                    })?;
            write_frame(&mut send, req, km::MAX_REQUEST_BYTES).await?;
            let _ = send.finish();
            read_frame::<_, FromKeymanager>(&mut recv, km::MAX_RESPONSE_BYTES)
                .await?
                .ok_or_else(|| KeymanagerError::Protocol("the key manager sent no reply".into()))
        };
        tokio::time::timeout(Duration::from_millis(CLIENT_REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| KeymanagerError::Unreachable {
                addr: self.addr,
                why: "no reply within the request timeout".into(),
            })?
    }

    async fn call(&self, req: &ToKeymanager) -> Result<FromKeymanager, KeymanagerError> {
        match self.request(req).await? {
            FromKeymanager::Error { code, message } => {
                Err(KeymanagerError::Refused { code, message })
            }
            other => Ok(other),
        }
    }

    fn unexpected(reply: FromKeymanager) -> KeymanagerError {
        KeymanagerError::Protocol(format!("unexpected reply: {reply:?}"))
    }

    /// Registers `identity` as `name` and returns its verified certificate. Registering the
    /// same name with the same key again returns the same certificate.
    pub async fn register(
        &self,
        identity: &Identity,
        name: &str,
        role: Role,
        invite: Option<String>,
    ) -> Result<VerifiedCert, KeymanagerError> {
        let nonce = match self.call(&ToKeymanager::Challenge).await? {
            FromKeymanager::Challenge { nonce } => nonce,
            other => return Err(Self::unexpected(other)),
        };
        let spki = identity.public().spki_der().to_vec();
        let proof = identity.sign(&register_proof_input(name, role, &spki, &nonce))?;
        let reply = self
            .call(&ToKeymanager::Register {
                name: name.to_owned(),
                role,
                public_key: spki.clone(),
                nonce,
                proof,
                invite,
            })
            .await?;
        let FromKeymanager::Registered { cert } = reply else {
            return Err(Self::unexpected(reply));
        };
        let v = cert
            .verify(&self.root)?
            .expect_key(&spki)?
            .expect_role(role)?;
        if v.name() != name {
            return Err(KeymanagerError::Protocol(format!(
                "asked for {name:?}, got a certificate for {:?}",
                v.name()
            )));
        }
        Ok(v)
    }

    pub async fn lookup(&self, name: &str) -> Result<Option<Entry>, KeymanagerError> {
        match self
            .call(&ToKeymanager::Lookup { name: name.into() })
            .await?
        {
            FromKeymanager::Found { entry: None } => Ok(None),
            FromKeymanager::Found { entry: Some(e) } => Ok(Some(Entry {
                cert: e.cert.verify(&self.root)?,
                revoked: e.revoked,
            })),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn list(&self) -> Result<Vec<Entry>, KeymanagerError> {
        match self.call(&ToKeymanager::List).await? {
            FromKeymanager::Members { entries } => entries
                .into_iter()
                .map(|e| {
                    Ok(Entry {
                        cert: e.cert.verify(&self.root)?,
                        revoked: e.revoked,
                    })
                })
                .collect(),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Every revocation, each checked against the root key.
    pub async fn revocations(&self) -> Result<Vec<SignedRevocation>, KeymanagerError> {
        match self.call(&ToKeymanager::Revocations).await? {
            FromKeymanager::Revocations { revocations } => {
                for r in &revocations {
                    r.verify(&self.root)?;
                }
                Ok(revocations)
            }
            other => Err(Self::unexpected(other)),
        }
    }

    /// Admin: a one-time registration token for `name`.
    pub async fn invite(&self, admin_token: &str, name: &str) -> Result<String, KeymanagerError> {
        match self
            .call(&ToKeymanager::Invite {
                admin_token: admin_token.into(),
                name: name.into(),
            })
            .await?
        {
            FromKeymanager::Invited { token } => Ok(token),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Admin: revokes `name`; returns the root-signed statement.
    pub async fn revoke(
        &self,
        admin_token: &str,
        name: &str,
    ) -> Result<SignedRevocation, KeymanagerError> {
        match self
            .call(&ToKeymanager::Revoke {
                admin_token: admin_token.into(),
                name: name.into(),
            })
            .await?
        {
            FromKeymanager::Revoked { revocation } => {
                revocation.verify(&self.root)?;
                Ok(revocation)
            }
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
