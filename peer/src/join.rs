//! Finding the group: ask the proxy; found the group if it says so, otherwise ask the leader
//! to admit us.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conclave_shared::cert::VerifiedCert;
use conclave_shared::chain::GroupId;
use conclave_shared::identity::write_atomically;
use conclave_shared::wire::peer::{FromPeer, ToPeer, WireRole};
use conclave_shared::wire::proxy::FromProxy;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::PeerError;
use crate::leader::{founding_members, ADMIT_TIMEOUT_MS};
use crate::link::ProxyLink;
use crate::peerlink::PeerLink;
use crate::types::{NodeId, PeerNode, Raft};

pub const GROUP_ID_FILE: &str = "group.id";
/// Pause between questions to the proxy while waiting.
pub const JOIN_RETRY_MS: u64 = 200;

pub enum Joined {
    Founded,
    Admitted {
        role: WireRole,
        leader: String,
        term: u64,
        members: u32,
    },
}

pub struct JoinCtx<'a> {
    pub raft: &'a Raft,
    pub proxy: &'a ProxyLink,
    pub peers: &'a mut PeerLink,
    pub me: PeerNode,
    pub node_id: NodeId,
    pub cert: &'a VerifiedCert,
    pub data_dir: &'a Path,
    pub deadline: Duration,
    pub shutdown: &'a CancellationToken,
    /// The leader this member asked for admission; shared with the server.
    pub admitter: &'a AtomicU64,
    /// This member discarded its data (`--resync`): ask with `Rejoin`, not `Admit`.
    pub resync: bool,
}

/// The group id this member founded, if it founded one.
pub fn founded_group(data_dir: &Path) -> Option<GroupId> {
    let text = std::fs::read_to_string(data_dir.join(GROUP_ID_FILE)).ok()?;
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

pub async fn join(c: JoinCtx<'_>) -> Result<Joined, PeerError> {
    let until = tokio::time::Instant::now() + c.deadline;
    let mut last_error = String::from("no answer yet");
    while tokio::time::Instant::now() < until {
        if c.shutdown.is_cancelled() {
            return Err(PeerError::Join("shutting down".into()));
        }
        match c.proxy.where_is_leader().await {
            Ok(FromProxy::Bootstrap { group_id, .. }) => {
                info!(group = %hex::encode(group_id), "founding the group");
                write_atomically(
                    &c.data_dir.join(GROUP_ID_FILE),
                    hex::encode(group_id).as_bytes(),
                    0o644,
                )?;
                c.raft
                    .initialize(founding_members(c.node_id, c.me.clone()))
                    .await
                    .map_err(|e| PeerError::Raft(e.to_string()))?;
                return Ok(Joined::Founded);
            }
            Ok(FromProxy::Leader(info)) => {
                let mut addr = info.addr.clone();
                let mut expect = Some(info.node_id);
                // Follow at most a couple of redirects before asking the proxy again.
                for _ in 0..3 {
                    // Only the member we ask to admit us may replicate to us before we hold
                    // a membership of our own (see `server`).
                    let leader = match c.peers.connect(&addr, expect).await {
                        Ok(id) => id,
                        Err(e) => {
                            last_error = e;
                            break;
                        }
                    };
                    c.admitter.store(leader, Ordering::SeqCst);
                    let cert = c.cert.certificate().clone();
                    let me = c.me.addr.clone();
                    let req = if c.resync {
                        ToPeer::Rejoin { cert, addr: me }
                    } else {
                        ToPeer::Admit { cert, addr: me }
                    };
                    let timeout = Duration::from_millis(ADMIT_TIMEOUT_MS + 5_000);
                    match c.peers.request(&addr, Some(leader), &req, timeout).await {
                        Ok(FromPeer::Admitted {
                            role,
                            leader,
                            term,
                            members,
                        }) => {
                            return Ok(Joined::Admitted {
                                role,
                                leader,
                                term,
                                members,
                            });
                        }
                        Ok(FromPeer::NotLeader {
                            leader: Some((_, a)),
                        }) => {
                            addr = a;
                            expect = None;
                        }
                        Ok(FromPeer::Error {
                            message,
                            retry: false,
                        }) => {
                            return Err(PeerError::Join(message));
                        }
                        Ok(other) => {
                            last_error = format!("{other:?}");
                            break;
                        }
                        Err(e) => {
                            last_error = e;
                            break;
                        }
                    }
                }
                debug!("admission not done yet: {last_error}");
            }
            Ok(FromProxy::Wait { retry_ms }) => {
                last_error = "the proxy says wait".into();
                tokio::time::sleep(Duration::from_millis(retry_ms.clamp(50, 1_000))).await;
                continue;
            }
            Ok(other) => {
                warn!("unexpected answer from the proxy: {other:?}");
                last_error = format!("{other:?}");
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
    Err(PeerError::Join(format!(
        "gave up after {:?}: {last_error}",
        c.deadline
    )))
}
