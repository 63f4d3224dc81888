//! `Status`: the group as the proxy knows it, with each member asked, in parallel and with a
//! short timeout, for its head over `conclave/peer/1`.
//!
//! Anyone may ask for status without a certificate, and each answer would otherwise cost the
//! proxy one outgoing connection per member; so results are kept for `STATUS_CACHE_MS` and
//! concurrent askers share one round of probes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_shared::quic::{self, MemberTrust, ServerTrust, TlsIdentity};
use conclave_shared::wire::peer::{self, FromPeer, PeerStatus, ToPeer};
use conclave_shared::wire::proxy::{GroupStatus, MemberStatus};
use conclave_shared::wire::{read_frame, write_frame};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::debug;

use crate::error::ProxyError;
use crate::state::{GroupState, KnownMember};

/// How long one member has to answer (connect, handshake, reply) before it counts as
/// unreachable.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 1_500;
/// How long a round of probes answers later `Status` requests for the same member list.
pub const STATUS_CACHE_MS: u64 = 1_000;
/// A head hash is SHA-256 in lowercase hex; anything else a member reports is dropped.
const HEAD_HASH_HEX_LEN: usize = 64;

pub struct Prober {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    trust: MemberTrust,
    /// The last round. A tokio mutex, held across the probes on purpose: a second asker
    /// waits for the round in flight and then reads its result instead of starting another.
    last: Mutex<Option<Round>>,
}

struct Round {
    at: Instant,
    members: Vec<KnownMember>,
    statuses: Vec<MemberStatus>,
}

impl Prober {
    /// Probes from `endpoint`, presenting the proxy's certificate, to servers holding a member
    /// certificate under `trust` (which must allow members only).
    pub fn new(
        endpoint: quinn::Endpoint,
        tls: &TlsIdentity,
        trust: MemberTrust,
    ) -> Result<Self, ProxyError> {
        let config = quic::client_config(
            Some(tls),
            ServerTrust::Members(trust.clone()),
            &[peer::ALPN],
        )
        .map_err(|e| ProxyError::Quic(e.to_string()))?;
        Ok(Self {
            endpoint,
            config,
            trust,
            last: Mutex::new(None),
        })
    }

    pub async fn status(&self, state: &GroupState) -> GroupStatus {
        let members = state
            .group
            .as_ref()
            .map(|g| g.members.clone())
            .unwrap_or_default();
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().filter(|r| {
            r.members == members && r.at.elapsed() < Duration::from_millis(STATUS_CACHE_MS)
        });
        let statuses = match fresh {
            Some(round) => round.statuses.clone(),
            None => {
                let statuses = self.probe_all(&members).await;
                *last = Some(Round {
                    at: Instant::now(),
                    members,
                    statuses: statuses.clone(),
                });
                statuses
            }
        };
        GroupStatus {
            group_id: state.group.as_ref().map(|g| g.group_id),
            leader: state.leader_info(),
            members: statuses,
        }
    }

    /// Asks each of `members` for its status, all at once, each within `timeout`: one task
    /// per member, yielding the member's index in `members` and its answer (or why there is
    /// none). Dropping the set aborts the probes still running.
    pub(crate) fn spawn_probes(
        &self,
        members: &[KnownMember],
        timeout: Duration,
    ) -> JoinSet<(usize, Result<PeerStatus, String>)> {
        let mut probes = JoinSet::new();
        for (i, m) in members.iter().enumerate() {
            let (endpoint, config, trust, m) = (
                self.endpoint.clone(),
                self.config.clone(),
                self.trust.clone(),
                m.clone(),
            );
            probes.spawn(async move {
                let answer = tokio::time::timeout(timeout, probe(&endpoint, config, &trust, &m))
                    .await
                    .unwrap_or_else(|_| Err("no answer within the probe timeout".into()));
                if let Err(why) = &answer {
                    debug!(member = %m.name, addr = %m.addr, "member unreachable: {why}");
                }
                (i, answer)
            });
        }
        probes
    }

    async fn probe_all(&self, members: &[KnownMember]) -> Vec<MemberStatus> {
        let mut probes = self.spawn_probes(members, Duration::from_millis(STATUS_PROBE_TIMEOUT_MS));
        // Every probe ends within its timeout, so this ends too.
        let mut out: Vec<Option<MemberStatus>> = vec![None; members.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, answer)) = done {
                out[i] = Some(member_status(&members[i], answer.ok()));
            }
        }
        out.into_iter()
            .zip(members)
            .map(|(s, m)| s.unwrap_or_else(|| member_status(m, None)))
            .collect()
    }
}

fn member_status(m: &KnownMember, answer: Option<PeerStatus>) -> MemberStatus {
    let reachable = answer.is_some();
    let is_hash = |h: &String| {
        h.len() == HEAD_HASH_HEX_LEN
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (head_height, head_hash, head_mismatches) = match answer {
        Some(s) => (
            s.head_height,
            s.head_hash.filter(is_hash),
            s.head_mismatches
                .into_iter()
                .filter(|m| is_hash(&m.ours) && is_hash(&m.theirs))
                .take(peer::MAX_REPORTED_MISMATCHES)
                .collect(),
        ),
        None => (None, None, Vec::new()),
    };
    MemberStatus {
        name: m.name.clone(),
        node_id: m.node_id,
        addr: m.addr.clone(),
        role: m.role.clone(),
        reachable,
        head_height,
        head_hash,
        head_mismatches,
    }
}

/// Asks one member for its status, checking that the member answering is the one listed.
async fn probe(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    trust: &MemberTrust,
    m: &KnownMember,
) -> Result<PeerStatus, String> {
    let addr = resolve(&m.addr).await?;
    let conn = endpoint
        .connect_with(config, addr, quic::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let who = quic::peer_cert(&conn, trust).map_err(|e| e.to_string())?;
        let fp = who.fingerprint();
        if who.name() != m.name
            || fp.node_id() != m.node_id
            || m.fingerprint.is_some_and(|known| known != fp.0)
        {
            return Err(format!(
                "{} is answered by {:?} (node {:016x}), not the listed member",
                m.addr,
                who.name(),
                fp.node_id()
            ));
        }
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &ToPeer::Status, peer::MAX_REQUEST_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        match read_frame::<_, FromPeer>(&mut recv, peer::MAX_RESPONSE_BYTES).await {
            Ok(Some(FromPeer::Status(s))) if s.name == m.name && s.node_id == m.node_id => Ok(s),
            Ok(Some(FromPeer::Status(s))) => Err(format!(
                "the member reports itself as {:?} (node {:016x})",
                s.name, s.node_id
            )),
            Ok(other) => Err(format!("unexpected reply: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    conn.close(0u32.into(), b"status done");
    result
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}
