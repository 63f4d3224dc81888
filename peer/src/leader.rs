//! What the leader does besides replicating: found the chain, admit members, keep the proxy
//! told. One task, so membership changes happen one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::{SignedRevocation, VerifiedCert};
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
use crate::server::LeaderJob;
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
/// How often a leader asks the key manager for revocations.
pub const REVOCATION_POLL_MS: u64 = 2_000;
/// Blocks read at a time when looking back for the last key rotation.
const LOOKBACK_CHUNK: u64 = 256;

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
    /// The keys this member holds, to hand earlier epochs to newcomers (`share_history`).
    pub keys: tokio::sync::watch::Receiver<crate::keyring::KeyRing>,
    /// When each member last answered this node's replication (see `voters`).
    pub liveness: crate::liveness::Liveness,
    /// A voter silent for longer is replaced by a caught-up learner (`raft.dead_voter_after`).
    pub dead_voter_after: Duration,
    /// Where to poll for revocations.
    pub keymanager: std::net::SocketAddr,
    pub endpoint: quinn::Endpoint,
}

pub async fn run(ctx: LeaderCtx, mut jobs: mpsc::Receiver<LeaderJob>, shutdown: CancellationToken) {
    // The height this leader last checkpointed (or found checkpointed).
    let mut checkpointed: Option<u64> = None;
    let mut revocations = tokio::time::interval(Duration::from_millis(REVOCATION_POLL_MS));
    revocations.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = ctx.raft.metrics();
    let mut led_term: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(ANNOUNCE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this member's current leadership began: nobody has had the chance to answer it
    // before, so nobody counts as silent for longer than that.
    let mut leading_since = std::time::Instant::now();
    let mut voters = crate::voters::VoterWatch::default();
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
                    leading_since = std::time::Instant::now();
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
                    if let Err(e) = ctx.checkpoint(&mut checkpointed).await {
                        debug!("no checkpoint this time: {e}");
                    }
                    // Only once this term's duties were taken up (`on_elected` reconciled).
                    if led_term.is_some() {
                        if let Err(e) = ctx.keep_voters(leading_since, &mut voters).await {
                            warn!("could not replace a dead voter this time: {e}");
                        }
                    }
                }
            }
            _ = revocations.tick() => {
                if ctx.status.is_leader() {
                    if let Err(e) = ctx.enforce_revocations().await {
                        debug!("revocations not enforced this time: {e}");
                    }
                }
            }
            job = jobs.recv() => {
                let Some(job) = job else { return };
                ctx.handle(job).await;
            }
        }
    }
}

impl LeaderCtx {
    async fn handle(&self, job: LeaderJob) {
        let (name, reply, work) = match job {
            LeaderJob::Admit { cert, addr, reply } => {
                let name = cert.name().to_owned();
                (name, reply, Work::Admit(cert, addr))
            }
            LeaderJob::Rejoin { cert, addr, reply } => {
                let name = cert.name().to_owned();
                (name, reply, Work::Rejoin(cert, addr))
            }
            LeaderJob::Leave { cert, reply } => {
                let name = cert.name().to_owned();
                (name, reply, Work::Leave(cert))
            }
        };
        if !self.status.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let outcome = tokio::time::timeout(Duration::from_millis(ADMIT_TIMEOUT_MS), async {
            match &work {
                Work::Admit(cert, addr) => self.admit(cert, addr).await,
                Work::Rejoin(cert, addr) => self.rejoin(cert, addr).await,
                Work::Leave(cert) => self.leave(cert).await,
            }
        })
        .await;
        let answer = match outcome {
            Ok(Ok(r)) => {
                // The proxy learns the new member list now, not a second later.
                self.announce().await;
                r
            }
            Ok(Err(e)) => {
                warn!(%name, "membership change failed: {e}");
                FromPeer::Error {
                    message: e.to_string(),
                    retry: true,
                }
            }
            Err(_) => FromPeer::Error {
                message: "the membership change timed out".into(),
                retry: true,
            },
        };
        let _ = reply.send(answer);
    }

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
    pub(crate) async fn propose_system(&self, mut body: BlockBody) -> Result<Applied, PeerError> {
        let time_ms = conclave_shared::now_ms();
        // The signature covers `term` and this node's id, and every replica checks them
        // against the log id openraft gives the entry (`ChainState::apply`). They agree as long
        // as this node is still the leader of `term` when `client_write` appends the entry
        // (a leader appends only under its own vote). If it lost that term in between (deposed
        // and re-elected later, or metrics that lagged), the entry commits under another term,
        // is refused alike everywhere (`BadLeaderSignature`), and this returns an error below:
        // acceptable, the caller retries and signs afresh. (A genesis signature is checked only
        // at the founder's admission; a founder alone in its group keeps its term.)
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
        self.reconcile().await?;
        // A leader that removed itself could not rotate (it must never draw the next key):
        // the next one does.
        self.rotate_if_stale().await
    }

    fn identity_root_fingerprint(&self) -> conclave_shared::identity::Fingerprint {
        self.chain.root().fingerprint()
    }

    fn status_cert(&self) -> conclave_shared::cert::VerifiedCert {
        self.proxy.cert.clone()
    }

    /// Openraft may hold members the chain never admitted (a leader died between the two),
    /// or members the chain removed (a leader that removed itself stepped down first): they
    /// are dropped from Raft; the first kind rejoins through the proxy.
    async fn reconcile(&self) -> Result<(), PeerError> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let strays: BTreeSet<NodeId> = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| {
                *id != self.node_id
                    && !self
                        .chain
                        .member_by_id(*id)
                        .is_some_and(|m| m.is_present() && !m.revoked)
            })
            .collect();
        if !strays.is_empty() {
            warn!(
                ?strays,
                "removing Raft members the chain never admitted or removed"
            );
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
        }
        // The other way round: the chain admitted a voter, but a leader died before Raft
        // promoted it (admission writes the chain first). Promote it now.
        let m = self.raft.metrics().borrow().membership_config.clone();
        let unpromoted: BTreeSet<NodeId> = m
            .membership()
            .learner_ids()
            .filter(|id| {
                self.chain
                    .member_by_id(*id)
                    .is_some_and(|x| x.is_present() && !x.revoked && x.role == MemberRole::Voter)
            })
            .collect();
        if !unpromoted.is_empty() {
            info!(
                ?unpromoted,
                "promoting chain voters that Raft still has as learners"
            );
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(unpromoted), false)
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
        }
        // And a voter the chain demoted (a dead voter replaced) that Raft still counts: a
        // leader died between the two.
        self.demote_chain_learners().await
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
        self.rotate_key_for(Some(&cert)).await
    }

    /// Draws a fresh group key and wraps it to every admitted member.
    async fn rotate_key(&self) -> Result<(), PeerError> {
        self.rotate_key_for(None).await
    }

    /// As [`Self::rotate_key`]; with `newcomer` and the genesis rule `share_history`, the
    /// earlier epochs' keys this leader holds are wrapped to the newcomer as well.
    async fn rotate_key_for(&self, newcomer: Option<&VerifiedCert>) -> Result<(), PeerError> {
        let members = self.chain.admitted_members();
        let epoch = self.chain.epoch() + 1;
        let share = self.chain.rules().is_some_and(|r| r.share_history);
        let earlier: Vec<(u64, GroupKey)> = match newcomer {
            Some(_) if share => self
                .keys
                .borrow()
                .all()
                .filter(|(e, _)| *e < epoch)
                .map(|(e, k)| (e, k.clone()))
                .collect(),
            _ => Vec::new(),
        };
        let newcomer = newcomer.map(|c| (c.fingerprint().node_id(), c.public_key().clone()));
        let history = tokio::task::spawn_blocking(move || {
            let Some((node_id, key)) = newcomer else {
                return Ok(Vec::new());
            };
            earlier
                .iter()
                .map(|(e, k)| {
                    wrap_key(&key, k).map(|w| conclave_shared::chain::HistoryKey {
                        node_id,
                        epoch: *e,
                        wrapped: w,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| PeerError::Internal(e.to_string()))?
        .map_err(|e| PeerError::Internal(e.to_string()))?;
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
            history,
            leader_sig: Vec::new(),
        }))
        .await?;
        Ok(())
    }

    async fn admit(&self, cert: &VerifiedCert, addr: &str) -> Result<FromPeer, PeerError> {
        let cert = cert.clone();
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
        info!(%name, %addr, "admitting");
        let node = PeerNode {
            name: name.clone(),
            addr: addr.to_owned(),
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
        // The group's rule, as its genesis fixed it, not this member's config.
        let max_voters = self
            .chain
            .rules()
            .map_or(self.rules.max_voters, |r| r.max_voters);
        let role = if (voters as u32) < max_voters {
            MemberRole::Voter
        } else {
            MemberRole::Learner
        };
        // The chain first, then Raft: a member Raft counts as a voter is always one the chain
        // admitted, so whoever it elects can sign system blocks. (A crash in between leaves a
        // chain voter that Raft has as a learner, which is harmless.)
        self.admit_in_chain(cert, addr.to_owned(), role).await?;
        if role == MemberRole::Voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
        }
        info!(%name, ?role, "admitted");
        Ok(admitted(
            match role {
                MemberRole::Voter => WireRole::Voter,
                MemberRole::Learner => WireRole::Learner,
            },
            self,
        ))
    }

    /// `--resync`: a member that discarded its data asks to come back. If the chain has it
    /// present under the same key, its old Raft membership entry is dropped (it lost its log
    /// and its vote, so it must not stay a voter that could vote twice in a term), it is
    /// added back as a learner that catches up from scratch, and then its chain role is
    /// restored. Its chain membership is unchanged, so no block is committed: it re-learns its
    /// keys from the replicated chain. Anyone else is admitted as by `Admit`.
    async fn rejoin(&self, cert: &VerifiedCert, addr: &str) -> Result<FromPeer, PeerError> {
        let node_id = cert.fingerprint().node_id();
        let name = cert.name().to_owned();
        let Some(member) = self
            .chain
            .member(&name)
            .filter(|m| m.node_id == node_id && m.is_present())
        else {
            return self.admit(cert, addr).await;
        };
        if node_id == self.node_id {
            return Ok(FromPeer::Error {
                message: "a leader cannot rejoin its own group".into(),
                retry: true,
            });
        }
        let raft_err = |e: openraft::error::RaftError<NodeId, _>| PeerError::Raft(e.to_string());
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        if m.voter_ids().any(|v| v == node_id) {
            self.raft
                .change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                    false,
                )
                .await
                .map_err(raft_err)?;
        } else if m.get_node(&node_id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await
                .map_err(raft_err)?;
        }
        info!(%name, %addr, "dropped the Raft membership entry of a resynced member; it rejoins as a learner");
        let node = PeerNode {
            name: name.clone(),
            addr: addr.to_owned(),
        };
        self.raft
            .add_learner(node_id, node, true)
            .await
            .map_err(|e| PeerError::Raft(e.to_string()))?;
        let role = if member.role == MemberRole::Voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                .await
                .map_err(raft_err)?;
            WireRole::Voter
        } else {
            WireRole::Learner
        };
        info!(%name, ?role, "resynced member rejoined");
        Ok(FromPeer::Admitted {
            role,
            leader: self.name.clone(),
            term: self.term(),
            members: self.chain.admitted_members().len() as u32,
        })
    }

    pub(crate) async fn announce(&self) {
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

impl LeaderCtx {
    /// While the chain grows, at most once a tick (a second): a signed checkpoint of the
    /// last block applied here. Whoever drops, reorders or rewrites blocks and recomputes
    /// the hashes cannot make the leaders' signatures over the old hashes match.
    async fn checkpoint(&self, last: &mut Option<u64>) -> Result<(), PeerError> {
        let Some((height, hash)) = self.chain.head() else {
            return Ok(());
        };
        if *last == Some(height) {
            return Ok(());
        }
        // A checkpoint of a checkpoint says nothing new.
        if let Ok(Some(b)) = self.chain.block(height) {
            if matches!(b.block.body, BlockBody::Checkpoint(_)) {
                *last = Some(height);
                return Ok(());
            }
        }
        self.propose_system(BlockBody::Checkpoint(conclave_shared::chain::Checkpoint {
            height,
            hash,
            leader_sig: Vec::new(),
        }))
        .await?;
        *last = Some(height);
        Ok(())
    }
}

/// What the leader task was asked to do.
enum Work {
    Admit(VerifiedCert, String),
    Rejoin(VerifiedCert, String),
    Leave(VerifiedCert),
}

impl LeaderCtx {
    /// `/leave`: the member's removal, then (unless the leader removed itself) a new key.
    async fn leave(&self, cert: &VerifiedCert) -> Result<FromPeer, PeerError> {
        let node_id = cert.fingerprint().node_id();
        let Some(m) = self
            .chain
            .member(cert.name())
            .filter(|m| m.node_id == node_id)
        else {
            return Ok(FromPeer::Error {
                message: format!("{} is not a member", cert.name()),
                retry: false,
            });
        };
        if !m.is_present() {
            // Already gone: a retry after a lost reply.
            return Ok(FromPeer::Left {
                height: self.chain.head().map_or(0, |(h, _)| h),
            });
        }
        let height = self.remove_member(cert.name(), node_id, None).await?;
        Ok(FromPeer::Left { height })
    }

    /// Removes a member: the revocation (if any) and the removal go into the chain first, so
    /// every member sees why; then Raft drops it; then everyone left gets a new key. Returns
    /// the removal's height.
    async fn remove_member(
        &self,
        name: &str,
        node_id: NodeId,
        revocation: Option<SignedRevocation>,
    ) -> Result<u64, PeerError> {
        info!(%name, revoked = revocation.is_some(), "removing");
        if let Some(r) = revocation {
            self.propose_system(BlockBody::Revocation(
                conclave_shared::chain::RevocationNotice {
                    revocation: r,
                    leader_sig: Vec::new(),
                },
            ))
            .await?;
        }
        let applied = self
            .propose_system(BlockBody::Membership(Membership {
                change: MembershipChange::Remove {
                    name: name.to_owned(),
                    node_id,
                },
                leader_sig: Vec::new(),
            }))
            .await?;
        let height = match applied {
            Applied::Block { height, .. } => height,
            _ => self.chain.head().map_or(0, |(h, _)| h),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        if m.voter_ids().any(|v| v == node_id) {
            self.raft
                .change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                    false,
                )
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
        } else if m.get_node(&node_id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                .await
                .map_err(|e| PeerError::Raft(e.to_string()))?;
        }
        if node_id != self.node_id {
            self.rotate_key().await?;
        }
        Ok(height)
    }

    /// Asks the key manager for revocations and removes every revoked member still present.
    async fn enforce_revocations(&self) -> Result<(), PeerError> {
        let client = conclave_keymanager::client::KeymanagerClient::connect(
            &self.endpoint,
            self.keymanager,
            self.chain.root(),
        )
        .await
        .map_err(|e| PeerError::KeymanagerUnreachable(e.to_string()))?;
        let revocations = client
            .revocations()
            .await
            .map_err(|e| PeerError::KeymanagerUnreachable(e.to_string()))?;
        client.close();
        for r in revocations {
            let Some(m) = self.chain.member(&r.statement.name) else {
                continue;
            };
            if m.cert.serial() != r.statement.serial || !m.is_present() {
                continue;
            }
            let revocation = (!m.revoked).then_some(r.clone());
            if m.node_id == self.node_id {
                // A revoked leader can still record its own revocation, but nothing signed by
                // a revoked member is valid after that: it steps down, and the next leader
                // removes it and rotates the key.
                if let Some(r) = revocation {
                    self.propose_system(BlockBody::Revocation(
                        conclave_shared::chain::RevocationNotice {
                            revocation: r,
                            leader_sig: Vec::new(),
                        },
                    ))
                    .await?;
                }
                warn!("this member's certificate is revoked; stepping down");
                self.raft
                    .change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([self.node_id])),
                        false,
                    )
                    .await
                    .map_err(|e| PeerError::Raft(e.to_string()))?;
                return Ok(());
            }
            self.remove_member(&m.name, m.node_id, revocation).await?;
            self.announce().await;
        }
        Ok(())
    }

    /// Rotates the key if the newest one was not wrapped to exactly the present members.
    async fn rotate_if_stale(&self) -> Result<(), PeerError> {
        let admitted: BTreeSet<NodeId> = self
            .chain
            .admitted_members()
            .iter()
            .map(|m| m.node_id)
            .collect();
        if admitted.is_empty() {
            return Ok(());
        }
        match self.last_rotation_recipients()? {
            Some(r) if r == admitted => Ok(()),
            _ => {
                info!("the group key does not match the members; rotating");
                self.rotate_key().await
            }
        }
    }

    /// Who received the newest group key, found by reading back from the head.
    fn last_rotation_recipients(&self) -> Result<Option<BTreeSet<NodeId>>, PeerError> {
        let Some((mut to, _)) = self.chain.head() else {
            return Ok(None);
        };
        loop {
            let from = to.saturating_sub(LOOKBACK_CHUNK - 1);
            let blocks = self
                .chain
                .blocks(from, to)
                .map_err(|e| PeerError::Store(e.to_string()))?;
            for b in blocks.iter().rev() {
                if let BlockBody::KeyRotation(k) = &b.block.body {
                    return Ok(Some(k.wrapped.iter().map(|w| w.node_id).collect()));
                }
            }
            if from == 0 {
                return Ok(None);
            }
            to = from - 1;
        }
    }
}
