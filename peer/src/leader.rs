//! What the leader does besides replicating: found the chain, admit members, keep the proxy
//! told. One task, so membership changes happen one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::chain::{
    sign_as_leader, BlockBody, Genesis, GroupId, KeyRotation, MemberRole, Membership,
    MembershipChange, Rules, WrappedKey,
};
use conclave_shared::envelope::{wrap_key, GroupKey};
use conclave_shared::identity::Identity;
use conclave_shared::wire::peer::{FromPeer, WireRole};
use conclave_shared::wire::proxy::{
    Announcement, FromProxy, MemberInfo, Rejection, SignedAnnouncement,
};
use openraft::ChangeMembers;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::PeerError;
use crate::link::ProxyLink;
use crate::server::AdmitJob;
use crate::status::{role_of, StatusSource};
use crate::store::ChainReader;
use crate::types::{Applied, NodeId, PeerNode, Proposal, Raft};

/// How often a leader repeats its announcement, so a restarted proxy learns it soon.
pub const ANNOUNCE_INTERVAL_MS: u64 = 1_000;
/// How long admitting one member may take (catching up included) before the joiner is told
/// to retry.
pub const ADMIT_TIMEOUT_MS: u64 = 60_000;
/// How long a new leader waits to apply its log before taking up its duties.
pub const ELECTED_CATCH_UP_MS: u64 = 30_000;

pub struct LeaderCtx {
    pub identity: Arc<Identity>,
    pub name: String,
    pub node_id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub chain: ChainReader,
    pub rules: Rules,
    /// Where a founder finds the group id the proxy gave it (see `join::founded_group`).
    pub data_dir: std::path::PathBuf,
    pub proxy: ProxyLink,
    pub status: StatusSource,
    /// Told when the proxy says this member's group is not the real one.
    pub rejoin: mpsc::Sender<()>,
}

pub async fn run(
    ctx: LeaderCtx,
    mut admits: mpsc::Receiver<AdmitJob>,
    shutdown: CancellationToken,
) {
    let mut metrics = ctx.raft.metrics();
    let mut led_term: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(ANNOUNCE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let term = metrics.borrow().current_term;
                if ctx.status.is_leader() && led_term != Some(term) {
                    led_term = Some(term);
                    info!(term, "leading");
                    if let Err(e) = ctx.on_elected(term).await {
                        warn!("could not take up leadership duties: {e}");
                    }
                    ctx.announce().await;
                } else if !ctx.status.is_leader() {
                    led_term = None;
                }
            }
            _ = tick.tick() => {
                if ctx.status.is_leader() {
                    ctx.announce().await;
                }
            }
            job = admits.recv() => {
                let Some(job) = job else { return };
                let reply = if ctx.status.is_leader() {
                    match tokio::time::timeout(Duration::from_millis(ADMIT_TIMEOUT_MS), ctx.admit(&job)).await {
                        Ok(Ok(r)) => {
                            // The proxy learns the new member list now, not a second later.
                            ctx.announce().await;
                            r
                        }
                        Ok(Err(e)) => {
                            warn!(name = job.cert.name(), "admission failed: {e}");
                            FromPeer::Error { message: e.to_string(), retry: true }
                        }
                        Err(_) => FromPeer::Error { message: "admission timed out".into(), retry: true },
                    }
                } else {
                    ctx.not_leader()
                };
                let _ = job.reply.send(reply);
            }
        }
    }
}

impl LeaderCtx {
    /// The group's id: from the chain once it has a genesis, else the one this member was
    /// given to found.
    fn group_id(&self) -> Option<GroupId> {
        self.chain
            .group_id()
            .or_else(|| crate::join::founded_group(&self.data_dir))
    }

    fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    fn not_leader(&self) -> FromPeer {
        let m = self.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
            .map(|n| (n.name, n.addr));
        FromPeer::NotLeader { leader }
    }

    /// Signs a system block as this leader and commits it.
    async fn propose_system(&self, mut body: BlockBody) -> Result<Applied, PeerError> {
        let time_ms = conclave_shared::now_ms();
        let term = self.term();
        let group_id = self
            .group_id()
            .ok_or_else(|| PeerError::Internal("no group id to sign for".into()))?;
        let identity = self.identity.clone();
        let body = tokio::task::spawn_blocking(move || {
            sign_as_leader(&identity, &group_id, &mut body, time_ms, term).map(|_| body)
        })
        .await
        .map_err(|e| PeerError::Internal(e.to_string()))?
        .map_err(|e| PeerError::Internal(e.to_string()))?;
        let resp = self
            .raft
            .client_write(Proposal::new(time_ms, &body))
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        match &resp.data {
            Applied::Refused { reason, .. } => Err(PeerError::Internal(format!(
                "our own {:?} block was refused: {reason}",
                body.kind()
            ))),
            _ => Ok(resp.data),
        }
    }

    /// A new leader first makes the chain whole: the genesis if this member founded the group
    /// and crashed before writing it, and its own admission.
    async fn on_elected(&self, _term: u64) -> Result<(), PeerError> {
        // Decide nothing from a chain that lags the log: wait until every entry this leader
        // holds (its own blank entry of the new term included) is applied.
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(Duration::from_millis(ELECTED_CATCH_UP_MS)))
            .metrics(
                |m| m.last_applied.map(|l| l.index) >= last,
                "the new leader applies its log",
            )
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        if self.chain.head().is_none() {
            let Some(group_id) = crate::join::founded_group(&self.data_dir) else {
                return Err(PeerError::Internal(
                    "leading a group with no chain and no group id to found it with".into(),
                ));
            };
            info!("founding the chain");
            let genesis = BlockBody::Genesis(Genesis {
                group_id,
                root_fingerprint: self.identity_root_fingerprint(),
                rules: self.rules,
                leader_sig: Vec::new(),
            });
            self.propose_system(genesis).await?;
        }
        if self.chain.member(&self.name).is_none() {
            self.admit_in_chain(self.status_cert(), self.addr.clone(), MemberRole::Voter)
                .await?;
        }
        self.reconcile().await
    }

    fn identity_root_fingerprint(&self) -> conclave_shared::identity::Fingerprint {
        self.chain.root().fingerprint()
    }

    fn status_cert(&self) -> conclave_shared::cert::VerifiedCert {
        self.proxy.cert.clone()
    }

    /// Openraft may hold members the chain never admitted (a leader died between the two):
    /// they are dropped from Raft, and rejoin through the proxy.
    async fn reconcile(&self) -> Result<(), PeerError> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let strays: BTreeSet<NodeId> = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.node_id && self.chain.member_by_id(*id).is_none())
            .collect();
        if strays.is_empty() {
            return Ok(());
        }
        warn!(?strays, "removing Raft members the chain never admitted");
        let voters: BTreeSet<NodeId> = membership
            .voter_ids()
            .filter(|v| strays.contains(v))
            .collect();
        if !voters.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(strays), false)
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Commits the admission block and a key rotation that includes the new member.
    async fn admit_in_chain(
        &self,
        cert: conclave_shared::cert::VerifiedCert,
        addr: String,
        role: MemberRole,
    ) -> Result<(), PeerError> {
        let node_id = cert.fingerprint().node_id();
        self.propose_system(BlockBody::Membership(Membership {
            change: MembershipChange::Admit {
                cert: cert.certificate().clone(),
                node_id,
                addr,
                role,
            },
            leader_sig: Vec::new(),
        }))
        .await?;
        self.rotate_key().await
    }

    /// Draws a fresh group key and wraps it to every admitted member.
    async fn rotate_key(&self) -> Result<(), PeerError> {
        let members = self.chain.admitted_members();
        let epoch = self.chain.epoch() + 1;
        let wrapped = tokio::task::spawn_blocking(move || {
            let key = GroupKey::generate();
            members
                .iter()
                .map(|m| {
                    wrap_key(m.cert.public_key(), &key).map(|w| WrappedKey {
                        name: m.name.clone(),
                        node_id: m.node_id,
                        wrapped: w,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| PeerError::Internal(e.to_string()))?
        .map_err(|e| PeerError::Internal(e.to_string()))?;
        self.propose_system(BlockBody::KeyRotation(KeyRotation {
            epoch,
            wrapped,
            leader_sig: Vec::new(),
        }))
        .await?;
        Ok(())
    }

    async fn admit(&self, job: &AdmitJob) -> Result<FromPeer, PeerError> {
        let cert = job.cert.clone();
        let node_id = cert.fingerprint().node_id();
        let name = cert.name().to_owned();
        let admitted = |role: WireRole, this: &Self| FromPeer::Admitted {
            role,
            leader: this.name.clone(),
            term: this.term(),
            members: this.chain.admitted_members().len() as u32,
        };
        if let Some(m) = self.chain.member(&name) {
            if m.node_id == node_id && m.is_present() {
                // A retry after a lost reply, or a restart: already in.
                let role = role_of(
                    self.raft.metrics().borrow().membership_config.membership(),
                    node_id,
                )
                .unwrap_or(WireRole::Learner);
                return Ok(admitted(role, self));
            }
        }
        info!(%name, addr = %job.addr, "admitting");
        let node = PeerNode {
            name: name.clone(),
            addr: job.addr.clone(),
        };
        self.raft
            .add_learner(node_id, node, true)
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        let role = if (voters as u32) < self.rules.max_voters {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
            MemberRole::Voter
        } else {
            MemberRole::Learner
        };
        self.admit_in_chain(cert, job.addr.clone(), role).await?;
        info!(%name, ?role, "admitted");
        Ok(admitted(
            match role {
                MemberRole::Voter => WireRole::Voter,
                MemberRole::Learner => WireRole::Learner,
            },
            self,
        ))
    }

    async fn announce(&self) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let members: Vec<MemberInfo> = membership
            .nodes()
            .map(|(id, n)| MemberInfo {
                name: n.name.clone(),
                node_id: *id,
                addr: n.addr.clone(),
                role: role_of(membership, *id)
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "learner".into()),
            })
            .collect();
        let Some(group_id) = self.group_id() else {
            return;
        };
        let a = Announcement {
            group_id,
            name: self.name.clone(),
            node_id: self.node_id,
            addr: self.addr.clone(),
            term: m.current_term,
            members,
            time_ms: conclave_shared::now_ms(),
        };
        let identity = self.identity.clone();
        let signed = match tokio::task::spawn_blocking(move || {
            SignedAnnouncement::sign(&identity, &a)
        })
        .await
        {
            Ok(Ok(s)) => s,
            other => {
                warn!("could not sign the announcement: {other:?}");
                return;
            }
        };
        match self.proxy.announce(&signed).await {
            Ok(FromProxy::Accepted) => debug!("proxy accepted the announcement"),
            Ok(FromProxy::Rejected {
                reason: Rejection::OtherGroup,
                message,
                leader,
            }) => {
                // Founded too late: another group is the real one. A lone founder drops its
                // state and joins; a group with members keeps going and is reported.
                if self.chain.admitted_members().len() <= 1 {
                    warn!(
                        ?leader,
                        "the proxy serves another group: {message}; rejoining it"
                    );
                    let _ = self.rejoin.try_send(());
                } else {
                    warn!("the proxy serves another group: {message}");
                }
            }
            Ok(other) => warn!("proxy did not accept the announcement: {other:?}"),
            Err(e) => debug!("proxy unreachable: {e}"),
        }
    }
}

/// The map openraft wants for a one-member initialisation.
pub fn founding_members(node_id: NodeId, node: PeerNode) -> BTreeMap<NodeId, PeerNode> {
    BTreeMap::from([(node_id, node)])
}
