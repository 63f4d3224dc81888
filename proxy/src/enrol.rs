//! The proxy's own certificate: registered at the key manager (role `proxy`), cached in the
//! data directory so a later start works while the key manager is down, and the key
//! manager's revocations, polled so a revoked member stops moving the proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use conclave_keymanager::client::{KeymanagerClient, RETRY_INTERVAL_MS};
use conclave_keymanager::KeymanagerError;
use conclave_shared::cert::{Certificate, Role, VerifiedCert};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::{write_atomically, Identity, PublicKey};
use conclave_shared::quic::RevokedSerials;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::ProxyError;

/// How often a running proxy asks the key manager for revocations.
pub const REVOCATION_POLL_MS: u64 = 10_000;
/// The certificate is public; the file need not be private.
const CERT_FILE_MODE: u32 = 0o644;

/// The cached certificate at `path`, if it is one the root issued to this key, as a proxy,
/// under `name`. Anything else is ignored with a warning (and replaced on registration).
pub(crate) fn load_cached(
    path: &Path,
    identity: &Identity,
    name: &str,
    root: &PublicKey,
) -> Option<VerifiedCert> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), "cannot read the cached certificate: {e}");
            return None;
        }
    };
    let checked = Certificate::from_canonical(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            c.verify(root)
                .and_then(|v| v.expect_key(identity.public().spki_der()))
                .and_then(|v| v.expect_role(Role::Proxy))
                .map_err(|e| e.to_string())
        });
    match checked {
        Ok(v) if v.name() == name => Some(v),
        Ok(v) => {
            warn!(path = %path.display(), cached = %v.name(), wanted = %name, "the cached certificate is for another name; registering again");
            None
        }
        Err(why) => {
            warn!(path = %path.display(), "ignoring the cached certificate: {why}");
            None
        }
    }
}

pub(crate) fn save_cert(path: &Path, cert: &VerifiedCert) -> Result<(), ProxyError> {
    write_atomically(path, &cert.certificate().to_canonical(), CERT_FILE_MODE)?;
    Ok(())
}

/// Registers `identity` as the proxy `name`, retrying until the key manager answers or
/// `deadline` passes. A refusal (name taken, invitation wanted) ends it at once.
pub(crate) async fn register(
    endpoint: &quinn::Endpoint,
    km_addr: SocketAddr,
    root: &PublicKey,
    identity: &Identity,
    name: &str,
    invite: Option<String>,
    deadline: Duration,
) -> Result<VerifiedCert, ProxyError> {
    let start = tokio::time::Instant::now();
    let until = start + deadline;
    let unreachable = |why: String| ProxyError::KeymanagerUnreachable {
        addr: km_addr,
        after_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        why,
    };
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        // Logs each failed attempt at debug. Bounded here too: one attempt's connect timeout
        // may be longer than what is left.
        let client = tokio::time::timeout(
            left,
            KeymanagerClient::connect_retrying(endpoint, km_addr, root, left),
        )
        .await
        .map_err(|_| unreachable("no answer before the deadline".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let result = client
            .register(identity, name, Role::Proxy, invite.clone())
            .await;
        client.close();
        match result {
            Ok(cert) => return Ok(cert),
            // The connection broke between connect and reply: try again while time is left.
            Err(KeymanagerError::Unreachable { why, .. }) => {
                let pause = Duration::from_millis(RETRY_INTERVAL_MS);
                if tokio::time::Instant::now() + pause >= until {
                    return Err(unreachable(why));
                }
                debug!("registration attempt failed: {why}");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Adds the key manager's revocations to `revoked` now and every `REVOCATION_POLL_MS`, until
/// `shutdown`. An unreachable key manager is logged at debug and tried again next time.
pub(crate) async fn poll_revocations(
    endpoint: quinn::Endpoint,
    km_addr: SocketAddr,
    root: PublicKey,
    revoked: RevokedSerials,
    own_serial: u64,
    shutdown: CancellationToken,
) {
    loop {
        let fetch = async {
            let client = KeymanagerClient::connect(&endpoint, km_addr, &root).await?;
            let list = client.revocations().await;
            client.close();
            list
        };
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = fetch => r,
        };
        match fetched {
            Ok(list) => {
                for r in list {
                    if revoked.insert(r.statement.serial) {
                        info!(name = %r.statement.name, serial = r.statement.serial, "learned a revocation");
                        if r.statement.serial == own_serial {
                            error!("the key manager revoked this proxy's certificate; members will refuse it");
                        }
                    }
                }
            }
            Err(e) => debug!("cannot fetch revocations from the key manager: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(REVOCATION_POLL_MS)) => {}
        }
    }
}
