//! Serving `conclave/proxy/1`: an accept loop, one task per connection, one request per
//! stream. Shaped like the key manager's server.

use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::VerifiedCert;
use conclave_shared::quic::{self, ClientAuth, MemberTrust, Slot, TlsIdentity};
use conclave_shared::wire::proxy::{self, FromProxy, Rejection, SignedAnnouncement, ToProxy};
use conclave_shared::wire::{read_frame, write_frame, WireError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::actor::{AnnounceOutcome, StateHandle};
use crate::announce::VerifiedAnnouncement;
use crate::confirm::{self, Attempts};
use crate::error::ProxyError;
use crate::state::{Accepted, ConfirmRequest, Decision};
use crate::status::Prober;

/// More simultaneous connections than this are refused at once rather than queued.
pub const MAX_CONNECTIONS: usize = 512;
/// Requests one connection may make before it must reconnect.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 10_000;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a client may take to send one request once it opened its stream.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long shutdown waits for connections to drain.
pub const DRAIN_TIMEOUT_MS: u64 = 3_000;

/// What every connection task reads; the state itself lives in the actor.
pub(crate) struct Shared {
    /// Members only: what a request that needs an identity must present.
    pub members: MemberTrust,
    pub state: StateHandle,
    pub prober: Prober,
    /// Confirmation rounds by claimant (`confirm`).
    pub attempts: Attempts,
}

pub(crate) async fn serve(
    tls: &TlsIdentity,
    shared: Arc<Shared>,
    endpoint: &quinn::Endpoint,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    // Members may present their certificate, `conclave status` presents none; each request
    // that needs an identity checks it after the handshake.
    let cfg = quic::server_config(
        tls,
        ClientAuth::OptionalMembers(shared.members.clone()),
        &[proxy::ALPN],
    )
    .map_err(|e| ProxyError::Quic(e.to_string()))?;
    endpoint.set_server_config(Some(cfg));
    let addr = endpoint.local_addr().ok();
    info!(?addr, fingerprint = %tls.fingerprint(), "proxy serving");

    let mut tasks =
        quic::accept_connections(endpoint, MAX_CONNECTIONS, &shutdown, |incoming, slot| {
            let remote = incoming.remote_address();
            connection(shared.clone(), incoming, slot).instrument(info_span!("proxy_conn", %remote))
        })
        .await;
    info!("proxy shutting down");
    endpoint.set_server_config(None);
    endpoint.close(0u32.into(), b"proxy shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
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
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some((mut send, mut recv)) = slot.next_stream(&conn).await else {
            return;
        };
        let request = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            read_frame::<_, ToProxy>(&mut recv, proxy::MAX_REQUEST_BYTES),
        )
        .await;
        let reply = match request {
            Ok(Ok(Some(req))) => {
                tokio::select! {
                    _ = slot.shutdown().cancelled() => return,
                    reply = handle(&shared, &conn, req) => reply,
                }
            }
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                warn!("bad request: {e}");
                if matches!(e, WireError::TooLarge { .. }) {
                    // The rest of the oversized frame is never read; tell the sender to stop.
                    let _ = recv.stop(1u32.into());
                }
                error_reply(format!("bad request: {e}"))
            }
            Err(_) => {
                warn!("request timed out");
                let _ = recv.stop(1u32.into());
                continue;
            }
        };
        if let Err(e) = write_frame(&mut send, &reply, proxy::MAX_RESPONSE_BYTES).await {
            warn!("could not send reply: {e}");
            continue;
        }
        let _ = send.finish();
    }
    conn.close(0u32.into(), b"request limit reached");
}

fn error_reply(message: impl Into<String>) -> FromProxy {
    FromProxy::Error {
        message: message.into(),
    }
}

fn internal(e: ProxyError) -> FromProxy {
    tracing::error!("request failed: {e}");
    error_reply("the proxy failed; try again")
}

/// The member on the other end, checked now (revocations learned since the handshake count),
/// or the message that refuses the request.
fn member(shared: &Shared, conn: &quinn::Connection, what: &str) -> Result<VerifiedCert, String> {
    quic::peer_cert(conn, &shared.members).map_err(|e| {
        warn!("{what} without a member certificate: {e}");
        format!("{what} needs a member certificate presented in the TLS handshake: {e}")
    })
}

async fn handle(shared: &Shared, conn: &quinn::Connection, req: ToProxy) -> FromProxy {
    match req {
        ToProxy::WhereIsLeader => {
            let who = match member(shared, conn, "WhereIsLeader") {
                Ok(w) => w,
                Err(message) => return error_reply(message),
            };
            match shared.state.where_is_leader(who.name().to_owned()).await {
                Ok(answer) => {
                    debug!(asker = %who.name(), ?answer, "where is the leader");
                    answer
                }
                Err(e) => internal(e),
            }
        }
        ToProxy::Announce(signed) => {
            let who = match member(shared, conn, "Announce") {
                Ok(w) => w,
                Err(message) => return error_reply(message),
            };
            announce(shared, &who, &signed).await
        }
        ToProxy::Status => match shared.state.snapshot().await {
            Ok(state) => FromProxy::Status(shared.prober.status(&state).await),
            Err(e) => internal(e),
        },
        other => {
            warn!("request not handled by this version: {other:?}");
            error_reply("request not supported by this proxy")
        }
    }
}

async fn announce(shared: &Shared, who: &VerifiedCert, signed: &SignedAnnouncement) -> FromProxy {
    let checked = match VerifiedAnnouncement::check(signed, who) {
        Ok(v) => v,
        Err(refusal) => {
            warn!(announcer = %who.name(), reason = ?refusal.reason, "announcement rejected: {}", refusal.message);
            let leader = shared
                .state
                .snapshot()
                .await
                .ok()
                .and_then(|s| s.leader_info());
            return FromProxy::Rejected {
                reason: refusal.reason,
                message: refusal.message,
                leader,
            };
        }
    };
    let (term, group) = (
        checked.announcement().term,
        hex::encode(checked.announcement().group_id),
    );
    let outcome = match shared.state.announce(checked.clone(), None).await {
        Ok(outcome) => outcome,
        Err(e) => return internal(e),
    };
    let outcome = match outcome.result {
        Ok(Decision::Confirm(req)) => {
            match confirm_claim(shared, who, checked, &req, outcome.leader).await {
                Ok(outcome) => outcome,
                Err(reply) => return reply,
            }
        }
        _ => outcome,
    };
    match outcome.result {
        Ok(Decision::Accepted(accepted)) => {
            match accepted {
                Accepted::Founded => {
                    info!(leader = %who.name(), term, %group, "group founded")
                }
                Accepted::NewLeader => info!(leader = %who.name(), term, "new leader"),
                Accepted::Refreshed => debug!(leader = %who.name(), term, "leader refreshed"),
            }
            FromProxy::Accepted
        }
        Ok(Decision::Confirm(_)) => {
            // Only an announcement without votes asks for them, and this one had votes.
            internal(ProxyError::Store(
                "the state asked twice to confirm one announcement".into(),
            ))
        }
        Err(refusal) => {
            warn!(announcer = %who.name(), term, reason = ?refusal.reason, "announcement rejected: {}", refusal.message);
            FromProxy::Rejected {
                reason: refusal.reason,
                message: refusal.message,
                leader: outcome.leader,
            }
        }
    }
}

/// Asks the known voters about a new claim (outside the state actor, which goes on serving
/// joiners with the old leader meanwhile), then submits their votes to the actor, which
/// decides. `Err` is the reply when no round may run now.
async fn confirm_claim(
    shared: &Shared,
    who: &VerifiedCert,
    checked: VerifiedAnnouncement,
    req: &ConfirmRequest,
    leader: Option<proxy::LeaderInfo>,
) -> Result<AnnounceOutcome, FromProxy> {
    let _slot = match shared.attempts.begin(req.node_id) {
        Ok(slot) => slot,
        Err(why) => {
            debug!(announcer = %who.name(), term = req.term, "announcement not confirmed: {why}");
            return Err(FromProxy::Rejected {
                reason: Rejection::NotConfirmed,
                message: why,
                leader,
            });
        }
    };
    let asked: Vec<&str> = req.ask.iter().map(|m| m.name.as_str()).collect();
    info!(
        claimant = %req.claimant,
        term = req.term,
        ?asked,
        needed = req.needed,
        voters = req.voters,
        "confirming a new leader with the known voters"
    );
    let round = confirm::ask_voters(&shared.prober, req).await;
    let answers = round.answers.join("; ");
    let mut outcome = shared
        .state
        .announce(checked, Some(round.votes))
        .await
        .map_err(internal)?;
    match &mut outcome.result {
        Err(refusal) if refusal.reason == Rejection::NotConfirmed => {
            refusal.message = format!("{} (asked: {answers})", refusal.message);
        }
        Ok(Decision::Accepted(Accepted::NewLeader)) => {
            info!(claimant = %req.claimant, term = req.term, %answers, "new leader confirmed");
        }
        _ => {}
    }
    Ok(outcome)
}
