//! The sending side of the head exchange: about once a second (less often in a group of more
//! than 17, see `head_interval`), this member's head, read back from its store and hashed
//! again, signed and sent to every other present member over `conclave/peer/1`, one
//! connection per member kept between rounds.
//!
//! The hash sent is that of the head block as the store holds it now, not the one kept in
//! memory since it was applied: what the others compare is what this member would serve.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::chain::BlockHash;
use conclave_shared::identity::Identity;
use conclave_shared::quic::MemberTrust;
use conclave_shared::wire::peer::{FromPeer, Head, SignedHead, ToPeer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::{head_interval, HEAD_INTERVAL_MS};
use crate::peerlink::PeerLink;
use crate::store::ChainReader;
use crate::types::{NodeId, Raft};

/// One head's delivery to one member must end within this; a member still busy with the last
/// one is skipped in the next round, so a dead member holds up nothing.
pub const HEAD_SEND_TIMEOUT_MS: u64 = 3_000;

pub struct HeadSender {
    pub identity: Arc<Identity>,
    pub name: String,
    pub node_id: NodeId,
    pub chain: ChainReader,
    pub raft: Raft,
    pub endpoint: quinn::Endpoint,
    /// A client config offering `conclave/peer/1` with this member's certificate.
    pub client: quinn::ClientConfig,
    pub trust: MemberTrust,
}

type Delivery = (NodeId, PeerLink, Result<FromPeer, String>);

impl HeadSender {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(HEAD_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Idle links by member; a link out on a delivery is in `sending` instead.
        let mut links: HashMap<NodeId, PeerLink> = HashMap::new();
        let mut sending: JoinSet<Delivery> = JoinSet::new();
        let mut busy: std::collections::HashSet<NodeId> = Default::default();
        let mut tasks: HashMap<tokio::task::Id, NodeId> = HashMap::new();
        let mut seq = 0u64;
        let mut last_round = None;
        // Set once the stored head is found to differ from the applied one, to say it once.
        let mut said_altered = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = sending.join_next_with_id(), if !sending.is_empty() => {
                    match done {
                        Ok((id, (node, link, result))) => {
                            tasks.remove(&id);
                            busy.remove(&node);
                            links.insert(node, link);
                            match result {
                                Ok(FromPeer::HeadNoted) => {}
                                Ok(FromPeer::Error { message, .. }) => {
                                    debug!(node, "our head was refused: {message}")
                                }
                                Ok(other) => {
                                    debug!(node, "unexpected answer to our head: {other:?}")
                                }
                                Err(e) => debug!(node, "could not send our head: {e}"),
                            }
                        }
                        // The link went with the task; the next round dials afresh.
                        Err(e) => {
                            if let Some(node) = tasks.remove(&e.id()) {
                                busy.remove(&node);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let targets = self.targets();
                    let due = last_round.is_none_or(|t: tokio::time::Instant| {
                        t.elapsed() + Duration::from_millis(HEAD_INTERVAL_MS / 2)
                            >= head_interval(targets.len() + 1)
                    });
                    if !due {
                        continue;
                    }
                    last_round = Some(tokio::time::Instant::now());
                    seq += 1;
                    let Some(signed) = self.signed_head(seq, &mut said_altered).await else {
                        continue;
                    };
                    for (node, addr) in targets.iter().cloned() {
                        if !busy.insert(node) {
                            continue;
                        }
                        let mut link = links.remove(&node).unwrap_or_else(|| {
                            PeerLink::new(
                                self.endpoint.clone(),
                                self.client.clone(),
                                self.trust.clone(),
                            )
                        });
                        let req = ToPeer::Head(signed.clone());
                        let handle = sending.spawn(async move {
                            let timeout = Duration::from_millis(HEAD_SEND_TIMEOUT_MS);
                            let result = tokio::time::timeout(
                                timeout,
                                link.request(&addr, Some(node), &req, timeout),
                            )
                            .await
                            .unwrap_or_else(|_| Err(format!("{addr}: no answer within {timeout:?}")));
                            (node, link, result)
                        });
                        tasks.insert(handle.id(), node);
                    }
                    // Members no longer in the group keep no connection.
                    links.retain(|n, _| targets.iter().any(|(t, _)| t == n));
                }
            }
        }
        sending.abort_all();
    }

    /// Every other present member and the address to reach it: the one in the Raft membership
    /// (updated when a member comes back elsewhere), else the one it was admitted with.
    fn targets(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        self.chain
            .members()
            .into_iter()
            .filter(|x| x.is_admitted() && x.node_id != self.node_id)
            .map(|x| {
                let addr = membership
                    .get_node(&x.node_id)
                    .map_or(x.addr.clone(), |n| n.addr.clone());
                (x.node_id, addr)
            })
            .collect()
    }

    /// This member's head as stored, signed; `None` before it has a chain.
    async fn signed_head(&self, seq: u64, said_altered: &mut bool) -> Option<SignedHead> {
        let group_id = self.chain.group_id()?;
        let (height, applied) = self.chain.head()?;
        let chain = self.chain.clone();
        let identity = self.identity.clone();
        let name = self.name.clone();
        let node_id = self.node_id;
        let made = tokio::task::spawn_blocking(move || {
            // Hash the block as stored now (see the module docs).
            let stored = chain
                .block(height)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the head block {height} is missing from the store"))?;
            let hash = stored.block.hash();
            let head = Head {
                group_id,
                node_id,
                name,
                height,
                hash: hash.0,
                time_ms: conclave_shared::now_ms(),
                seq,
            };
            let signed = SignedHead::sign(&identity, &head).map_err(|e| e.to_string())?;
            Ok::<(SignedHead, BlockHash), String>((signed, hash))
        })
        .await;
        match made {
            Ok(Ok((signed, hash))) => {
                if hash != applied && !*said_altered {
                    *said_altered = true;
                    error!(
                        height,
                        stored = %hash.to_hex(),
                        applied = %applied.to_hex(),
                        "this member's stored head block no longer hashes to what it applied"
                    );
                }
                Some(signed)
            }
            Ok(Err(e)) => {
                debug!("no head to send this time: {e}");
                None
            }
            Err(e) => {
                debug!("no head to send this time: {e}");
                None
            }
        }
    }
}
