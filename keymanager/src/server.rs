//! Serving `conclave/km/1`: an accept loop, one task per connection, one request per stream.

use std::sync::Arc;
use std::time::Duration;

use conclave_shared::config::EnrolmentMode;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::quic::{self, ClientAuth, Slot, TlsIdentity};
use conclave_shared::wire::km::{
    self, register_proof_input, FromKeymanager, KmErrorCode, ToKeymanager, CHALLENGE_BYTES,
};
use conclave_shared::wire::{read_frame, write_frame, WireError};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::error::KeymanagerError;
use crate::store::{Refusal, RegisterRequest, Store};

/// More simultaneous connections than this are refused at once rather than queued.
pub const MAX_CONNECTIONS: usize = 512;
/// Requests one connection may make before it must reconnect, so no client holds a
/// connection task forever.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 10_000;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a client may take to send one request once it opened its stream.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long shutdown waits for connections to drain.
pub const DRAIN_TIMEOUT_MS: u64 = 3_000;
/// Challenges one connection may hold unanswered; the oldest is dropped beyond this.
pub const MAX_OUTSTANDING_CHALLENGES: usize = 16;

/// What every connection task reads; nothing here is mutated after start, so no lock.
pub(crate) struct Shared {
    pub root: Identity,
    pub store: Store,
    pub mode: EnrolmentMode,
    pub admin_token: String,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) -> Result<(), KeymanagerError> {
    let tls =
        TlsIdentity::new(&shared.root, None).map_err(|e| KeymanagerError::Quic(e.to_string()))?;
    let cfg = quic::server_config(&tls, ClientAuth::None, &[km::ALPN])
        .map_err(|e| KeymanagerError::Quic(e.to_string()))?;
    endpoint.set_server_config(Some(cfg));
    let addr = endpoint.local_addr().ok();
    info!(?addr, fingerprint = %shared.root.fingerprint(), "key manager serving");

    let mut tasks =
        quic::accept_connections(&endpoint, MAX_CONNECTIONS, &shutdown, |incoming, slot| {
            let remote = incoming.remote_address();
            connection(shared.clone(), incoming, slot).instrument(info_span!("km_conn", %remote))
        })
        .await;
    info!("key manager shutting down");
    endpoint.set_server_config(None);
    endpoint.close(0u32.into(), b"key manager shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    let _ = tokio::time::timeout(
        Duration::from_millis(DRAIN_TIMEOUT_MS),
        endpoint.wait_idle(),
    )
    .await;
    Ok(())
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, slot: Slot) {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let Some(conn) = slot.handshake(incoming, timeout).await else {
        return;
    };
    // Challenges live only on this connection and are good for one registration each.
    let mut challenges = Challenges::default();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some((mut send, mut recv)) = slot.next_stream(&conn).await else {
            return;
        };
        let request = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            read_frame::<_, ToKeymanager>(&mut recv, km::MAX_REQUEST_BYTES),
        )
        .await;
        let reply = match request {
            Ok(Ok(Some(req))) => handle(&shared, req, &mut challenges).await,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                warn!("bad request: {e}");
                let reply = error_reply(KmErrorCode::BadRequest, format!("bad request: {e}"));
                if matches!(e, WireError::TooLarge { .. }) {
                    // The rest of the oversized frame is never read; tell the sender to stop.
                    let _ = recv.stop(1u32.into());
                }
                reply
            }
            Err(_) => {
                warn!("request timed out");
                let _ = recv.stop(1u32.into());
                continue;
            }
        };
        if let Err(e) = write_frame(&mut send, &reply, km::MAX_RESPONSE_BYTES).await {
            warn!("could not send reply: {e}");
            continue;
        }
        let _ = send.finish();
    }
    conn.close(0u32.into(), b"request limit reached");
}

/// The outstanding challenges of one connection, oldest first.
#[derive(Default)]
struct Challenges(std::collections::VecDeque<[u8; CHALLENGE_BYTES]>);

impl Challenges {
    fn issue(&mut self) -> [u8; CHALLENGE_BYTES] {
        let mut nonce = [0u8; CHALLENGE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        if self.0.len() == MAX_OUTSTANDING_CHALLENGES {
            self.0.pop_front();
        }
        self.0.push_back(nonce);
        nonce
    }
    /// Spends `nonce` if it is outstanding.
    fn take(&mut self, nonce: &[u8; CHALLENGE_BYTES]) -> bool {
        match self.0.iter().position(|n| n == nonce) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
}

fn error_reply(code: KmErrorCode, message: impl Into<String>) -> FromKeymanager {
    FromKeymanager::Error {
        code,
        message: message.into(),
    }
}

fn refusal(r: Refusal) -> FromKeymanager {
    warn!(code = ?r.code, "refused: {}", r.message);
    error_reply(r.code, r.message)
}

fn internal(e: KeymanagerError) -> FromKeymanager {
    tracing::error!("request failed: {e}");
    error_reply(KmErrorCode::Internal, "the key manager failed; try again")
}

/// Compares tokens by their hashes, so the time taken says nothing about the token.
fn admin_ok(shared: &Shared, given: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(shared.admin_token.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Runs store work (fsync, root signatures) off the async runtime.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, KeymanagerError> + Send + 'static,
) -> Result<T, KeymanagerError> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| KeymanagerError::Store(format!("store task failed: {e}")))?
}

async fn handle(
    shared: &Arc<Shared>,
    req: ToKeymanager,
    challenges: &mut Challenges,
) -> FromKeymanager {
    match req {
        ToKeymanager::Challenge => FromKeymanager::Challenge {
            nonce: challenges.issue(),
        },
        ToKeymanager::Register {
            name,
            role,
            public_key,
            nonce,
            proof,
            invite,
        } => {
            if !challenges.take(&nonce) {
                warn!(%name, "registration with an unknown or spent challenge");
                return error_reply(
                    KmErrorCode::NoChallenge,
                    "the challenge is unknown or used: ask for a challenge on this connection \
                     and register once with it",
                );
            }
            let key = match PublicKey::from_spki_der(&public_key) {
                Ok(k) => k,
                Err(e) => {
                    warn!(%name, "registration of a malformed public key: {e}");
                    return error_reply(KmErrorCode::BadRequest, e.to_string());
                }
            };
            let input = register_proof_input(&name, role, &public_key, &nonce);
            if key.verify(&input, &proof).is_err() {
                warn!(%name, "registration without proof of possession");
                return error_reply(
                    KmErrorCode::BadProof,
                    "the proof does not verify: sign the challenge with the key being registered",
                );
            }
            let now = conclave_shared::now_ms();
            let result = blocking(shared, move |s| {
                s.store.register(
                    &s.root,
                    &RegisterRequest {
                        name: &name,
                        role,
                        key: &key,
                        invite: invite.as_deref(),
                        invite_required: s.mode == EnrolmentMode::Invite,
                    },
                    now,
                )
            })
            .await;
            match result {
                Ok(Ok(cert)) => {
                    info!(name = %cert.body.name, serial = cert.body.serial, role = %cert.body.role, "registered");
                    FromKeymanager::Registered { cert }
                }
                Ok(Err(r)) => refusal(r),
                Err(e) => internal(e),
            }
        }
        ToKeymanager::Lookup { name } => {
            match blocking(shared, move |s| s.store.lookup(&name)).await {
                Ok(entry) => FromKeymanager::Found { entry },
                Err(e) => internal(e),
            }
        }
        ToKeymanager::List => match blocking(shared, |s| s.store.list()).await {
            Ok(entries) => FromKeymanager::Members { entries },
            Err(e) => internal(e),
        },
        ToKeymanager::Revocations => match blocking(shared, |s| s.store.revocations()).await {
            Ok(revocations) => FromKeymanager::Revocations { revocations },
            Err(e) => internal(e),
        },
        ToKeymanager::Invite { admin_token, name } => {
            if !admin_ok(shared, &admin_token) {
                warn!("invite with a wrong admin token");
                return error_reply(KmErrorCode::NotAuthorized, "wrong admin token");
            }
            let mut t = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut t);
            let token = hex::encode(t);
            let stored = token.clone();
            match blocking(shared, move |s| s.store.invite(&name, &stored)).await {
                Ok(Ok(())) => {
                    info!("invitation issued");
                    FromKeymanager::Invited { token }
                }
                Ok(Err(r)) => refusal(r),
                Err(e) => internal(e),
            }
        }
        ToKeymanager::Revoke { admin_token, name } => {
            if !admin_ok(shared, &admin_token) {
                warn!("revoke with a wrong admin token");
                return error_reply(KmErrorCode::NotAuthorized, "wrong admin token");
            }
            let now = conclave_shared::now_ms();
            match blocking(shared, move |s| s.store.revoke(&s.root, &name, now)).await {
                Ok(Ok(revocation)) => {
                    info!(name = %revocation.statement.name, serial = revocation.statement.serial, "revoked");
                    FromKeymanager::Revoked { revocation }
                }
                Ok(Err(r)) => refusal(r),
                Err(e) => internal(e),
            }
        }
        other => {
            warn!("request not handled by this version: {other:?}");
            error_reply(
                KmErrorCode::BadRequest,
                "request not supported by this key manager",
            )
        }
    }
}
