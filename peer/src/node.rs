//! Starting a peer: identity, storage, Raft, the listening side, joining, and the tasks that
//! run while it is a member. All of them stop on one cancellation token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::Role;
use conclave_shared::chain::Rules;
use conclave_shared::identity::PublicKey;
use conclave_shared::quic::{
    self, ClientAuth, MemberTrust, RevokedSerials, ServerTrust, TlsIdentity,
};
use conclave_shared::wire::peer::{self as peerwire, WireRole};
use openraft::{Config, SnapshotPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::enrol::{enrol, EnrolOptions};
use crate::error::PeerError;
use crate::events::Event;
use crate::heads::send::HeadSender;
use crate::heads::HeadBook;
use crate::join::{join, JoinCtx, Joined, GROUP_ID_FILE};
use crate::keyring::KeyRing;
use crate::leader::LeaderCtx;
use crate::link::ProxyLink;
use crate::liveness::Liveness;
use crate::network::RaftNetworkFactoryImpl;
use crate::observer::Observer;
use crate::peerlink::PeerLink;
use crate::rpc;
use crate::server::{self, ServerCtx};
use crate::status::StatusSource;
use crate::store::{Store, StoreError};
use crate::types::{PeerNode, Raft};
use crate::writer::{Command, Writer};

/// Openraft sends at most this many entries in one append request; a request that would not
/// fit in a frame is refused locally with a hint to send fewer (see `network`).
pub const MAX_PAYLOAD_ENTRIES: u64 = 512;
/// How long joining may take before the peer gives up (exit 1).
pub const JOIN_DEADLINE_MS: u64 = 120_000;
/// How long the key manager may stay unreachable on a first start.
pub const REGISTER_DEADLINE_MS: u64 = 60_000;
pub const STORE_DIR: &str = "raft";

#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub name: String,
    pub data_dir: PathBuf,
    /// The address others dial; defaults to the bound address.
    pub advertise: Option<SocketAddr>,
    pub keymanager: SocketAddr,
    pub proxy: SocketAddr,
    pub root: PublicKey,
    pub key_bits: usize,
    pub invite: Option<String>,
    /// `--resync`: discard the stored chain and Raft state before starting and rejoin the
    /// group as a new learner under the same identity.
    pub resync: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Snapshot every this many applied entries; 0: never (`raft.snapshot_every_entries`).
    pub snapshot_every_entries: u64,
    /// Entries inside a snapshot kept in the log anyway (`raft.keep_log_entries`).
    pub keep_log_entries: u64,
    /// A leader replaces a voter silent for this long with a caught-up learner
    /// (`raft.dead_voter_after`).
    pub dead_voter_after: Duration,
    /// Written into the genesis block if this peer founds the group.
    pub rules: Rules,
}

/// Runs a peer until `shutdown` is cancelled.
pub async fn run(
    opts: PeerOptions,
    endpoint: quinn::Endpoint,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Result<(), PeerError> {
    create_private_dir(&opts.data_dir)?;
    let enrolled = enrol(
        &endpoint,
        EnrolOptions {
            data_dir: &opts.data_dir,
            name: &opts.name,
            key_bits: opts.key_bits,
            keymanager: opts.keymanager,
            root: &opts.root,
            invite: opts.invite.clone(),
            deadline: Duration::from_millis(REGISTER_DEADLINE_MS),
        },
    )
    .await?;
    let node_id = enrolled.cert.fingerprint().node_id();
    let span = tracing::info_span!("peer", name = %opts.name, node = node_id);
    if opts.resync {
        discard_group_data(&opts.data_dir)?;
    }
    async move {
        loop {
            let once = run_once(
                &opts,
                &enrolled,
                &endpoint,
                &mut commands,
                &events,
                &shutdown,
            )
            .await?;
            if !once || shutdown.is_cancelled() {
                return Ok(());
            }
            // Founded a group the proxy does not serve: drop it and join the real one.
            warn!("dropping this member's one-node group to join the real one");
            let _ = std::fs::remove_dir_all(opts.data_dir.join(STORE_DIR));
            let _ = std::fs::remove_file(opts.data_dir.join(GROUP_ID_FILE));
        }
    }
    .instrument(span)
    .await
}

/// One life of the Raft node. Returns `Ok(true)` if the peer must wipe its group and rejoin.
async fn run_once(
    opts: &PeerOptions,
    enrolled: &crate::enrol::Enrolled,
    endpoint: &quinn::Endpoint,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<Event>,
    shutdown: &CancellationToken,
) -> Result<bool, PeerError> {
    let identity = enrolled.identity.clone();
    let cert = enrolled.cert.clone();
    let node_id = cert.fingerprint().node_id();
    let bound = endpoint
        .local_addr()
        .map_err(|e| PeerError::Quic(e.to_string()))?;
    let advertise = opts.advertise.unwrap_or(bound).to_string();
    let me = PeerNode {
        name: opts.name.clone(),
        addr: advertise.clone(),
    };

    let tls = Arc::new(
        TlsIdentity::new(&identity, Some(cert.certificate()))
            .map_err(|e| PeerError::Quic(e.to_string()))?,
    );
    let revoked = RevokedSerials::new();
    let callers = MemberTrust::new(
        opts.root.clone(),
        &[Role::Member, Role::Proxy],
        revoked.clone(),
    );
    let members = MemberTrust::new(opts.root.clone(), &[Role::Member], revoked.clone());
    let proxies = MemberTrust::new(opts.root.clone(), &[Role::Proxy], revoked.clone());
    let quic_err = |e: quic::QuicError| PeerError::Quic(e.to_string());
    endpoint.set_server_config(Some(
        quic::server_config(
            &tls,
            ClientAuth::Members(callers.clone()),
            &[rpc::ALPN, peerwire::ALPN],
        )
        .map_err(quic_err)?,
    ));
    let raft_client = quic::client_config(
        Some(&tls),
        ServerTrust::Members(members.clone()),
        &[rpc::ALPN],
    )
    .map_err(quic_err)?;
    let peer_client = quic::client_config(
        Some(&tls),
        ServerTrust::Members(members.clone()),
        &[peerwire::ALPN],
    )
    .map_err(quic_err)?;

    let store_dir = opts.data_dir.join(STORE_DIR);
    let root = opts.root.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, root))
        .await
        .map_err(|e| PeerError::Internal(e.to_string()))?
        .map_err(|e| match e {
            StoreError::Chain(f) => PeerError::BadChain {
                height: f.height,
                reason: f.reason.to_string(),
            },
            e => PeerError::Store(e.to_string()),
        })?;
    let (log_store, state_machine, chain, outbox) = store.into_parts();
    // Applied blocks are committed without fsync (the Raft log is the durable copy); a clean
    // stop makes them durable so the stopped store holds everything it showed.
    let syncer = outbox.clone();

    let config = Config {
        cluster_name: "conclave".into(),
        heartbeat_interval: opts.heartbeat_ms,
        election_timeout_min: opts.election_timeout_min_ms,
        election_timeout_max: opts.election_timeout_max_ms,
        snapshot_policy: match opts.snapshot_every_entries {
            0 => SnapshotPolicy::Never,
            n => SnapshotPolicy::LogsSinceLast(n),
        },
        max_in_snapshot_log_to_keep: opts.keep_log_entries,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| PeerError::Raft(e.to_string()))?;
    let liveness = Liveness::default();
    let network = RaftNetworkFactoryImpl::new(
        endpoint.clone(),
        raft_client,
        members.clone(),
        liveness.clone(),
        Duration::from_millis(opts.heartbeat_ms),
    );
    let raft = Raft::new(node_id, Arc::new(config), network, log_store, state_machine)
        .await
        .map_err(|e| PeerError::Raft(e.to_string()))?;

    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let status = StatusSource {
        name: opts.name.clone(),
        node_id,
        raft: raft.clone(),
        chain: chain.clone(),
        heads: HeadBook::new(events.clone()),
    };
    let (jobs_tx, jobs_rx) = mpsc::channel(16);
    let admitter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tasks.spawn(
        server::serve(
            ServerCtx {
                raft: raft.clone(),
                node_id,
                trust: callers,
                jobs: jobs_tx.clone(),
                status: status.clone(),
                admitter: admitter.clone(),
            },
            endpoint.clone(),
            stop.clone(),
        )
        .in_current_span(),
    );

    let (keys_tx, keys_rx) = watch::channel(KeyRing::default());
    // Cancelled when this member sees its own removal in the chain.
    let removed = CancellationToken::new();
    let left_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tasks.spawn(
        Observer {
            identity: identity.clone(),
            name: opts.name.clone(),
            chain: chain.clone(),
            keys: keys_tx,
            events: events.clone(),
            revoked: revoked.clone(),
            removed: removed.clone(),
            left_seen: left_seen.clone(),
        }
        .run(stop.clone())
        .in_current_span(),
    );
    tasks.spawn(leader_events(raft.clone(), events.clone(), stop.clone()).in_current_span());
    // The followers' lease plus election timeout: they have elected another by then.
    let step_down_after = Duration::from_millis(2 * opts.election_timeout_max_ms);
    tasks
        .spawn(crate::stepdown::run(raft.clone(), step_down_after, stop.clone()).in_current_span());
    tasks.spawn(
        HeadSender {
            identity: identity.clone(),
            name: opts.name.clone(),
            node_id,
            chain: chain.clone(),
            raft: raft.clone(),
            endpoint: endpoint.clone(),
            client: peer_client.clone(),
            trust: members.clone(),
        }
        .run(stop.clone())
        .in_current_span(),
    );

    let (rejoin_tx, mut rejoin_rx) = mpsc::channel(1);
    let proxy_link = || {
        ProxyLink::new(
            endpoint.clone(),
            opts.proxy,
            tls.clone(),
            proxies.clone(),
            cert.clone(),
        )
    };
    tasks.spawn(
        crate::leader::run(
            LeaderCtx {
                identity: identity.clone(),
                name: opts.name.clone(),
                node_id,
                addr: advertise.clone(),
                raft: raft.clone(),
                chain: chain.clone(),
                rules: opts.rules,
                data_dir: opts.data_dir.clone(),
                proxy: proxy_link(),
                status: status.clone(),
                rejoin: rejoin_tx,
                keymanager: opts.keymanager,
                endpoint: endpoint.clone(),
                keys: keys_rx.clone(),
                liveness,
                dead_voter_after: opts.dead_voter_after,
            },
            jobs_rx,
            stop.clone(),
        )
        .in_current_span(),
    );

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| PeerError::Raft(e.to_string()))?;
    let joined = if initialized {
        info!("restarting as a member");
        None
    } else {
        let link = proxy_link();
        let mut peers = PeerLink::new(endpoint.clone(), peer_client.clone(), members.clone());
        let j = join(JoinCtx {
            raft: &raft,
            proxy: &link,
            peers: &mut peers,
            me: me.clone(),
            node_id,
            cert: &cert,
            data_dir: &opts.data_dir,
            deadline: Duration::from_millis(JOIN_DEADLINE_MS),
            shutdown: &stop,
            admitter: &admitter,
            resync: opts.resync,
        });
        let j = tokio::select! {
            j = j => j,
            _ = stop.cancelled() => return shut_down(raft, tasks, &syncer, false).await,
        };
        match j {
            Ok(j) => Some(j),
            Err(e) => {
                let _ = shut_down(raft, tasks, &syncer, false).await;
                return Err(e);
            }
        }
    };

    // Tell the user once this member holds a group key: only then can it read and write.
    let mut keys_watch = keys_rx.clone();
    let ready = async {
        while keys_watch.borrow().current().is_none() {
            if keys_watch.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = ready => {}
        _ = stop.cancelled() => return shut_down(raft, tasks, &syncer, false).await,
        _ = removed.cancelled() => return shut_down(raft, tasks, &syncer, false).await,
        Some(()) = rejoin_rx.recv() => return shut_down(raft, tasks, &syncer, true).await,
    }
    let _ = events.send(joined_event(&status, &chain, joined)).await;

    let writer = Writer {
        identity,
        name: opts.name.clone(),
        raft: raft.clone(),
        chain: chain.clone(),
        outbox,
        keys: keys_rx,
        peers: Some(PeerLink::new(endpoint.clone(), peer_client, members)),
        cert: cert.clone(),
        jobs: jobs_tx,
        left_seen: left_seen.clone(),
        status,
        events: events.clone(),
        max_record_bytes: chain
            .rules()
            .map(|r| r.max_record_bytes as usize)
            .unwrap_or(0),
        batch_key: None,
    };
    let writer_stop = stop.clone();
    let writing = writer.run(commands, writer_stop);
    tokio::pin!(writing);
    let rejoin = tokio::select! {
        _ = &mut writing => false,
        _ = stop.cancelled() => false,
        _ = removed.cancelled() => false,
        Some(()) = rejoin_rx.recv() => true,
    };
    shut_down(raft, tasks, &syncer, rejoin).await
}

fn joined_event(
    status: &StatusSource,
    chain: &crate::store::ChainReader,
    joined: Option<Joined>,
) -> Event {
    let s = status.status();
    let height = chain.head().map(|(h, _)| h).unwrap_or(0);
    let members = chain.admitted_members().len() as u32;
    match joined {
        Some(Joined::Admitted {
            role,
            leader,
            term,
            members,
        }) => Event::Joined {
            name: s.name,
            role,
            leader,
            term,
            members,
            height,
        },
        _ => Event::Joined {
            name: s.name,
            role: s.role.unwrap_or(WireRole::Voter),
            leader: s.leader.unwrap_or_default(),
            term: s.term,
            members,
            height,
        },
    }
}

/// Emits a `leader` event whenever this member learns of a new leader.
async fn leader_events(raft: Raft, events: mpsc::Sender<Event>, stop: CancellationToken) {
    let mut metrics = raft.metrics();
    let mut last = None;
    loop {
        let (leader, term, name) = {
            let m = metrics.borrow();
            let name = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.name.clone())
            });
            (m.current_leader, m.current_term, name)
        };
        if let (Some(id), Some(name)) = (leader, name) {
            if last != Some((id, term)) {
                last = Some((id, term));
                let _ = events.send(Event::Leader { name, term }).await;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            c = metrics.changed() => if c.is_err() { return },
        }
    }
}

async fn shut_down(
    raft: Raft,
    mut tasks: JoinSet<()>,
    store: &crate::store::Outbox,
    rejoin: bool,
) -> Result<bool, PeerError> {
    tasks.abort_all();
    if let Err(e) = raft.shutdown().await {
        warn!("raft did not shut down cleanly: {e}");
    }
    while tasks.join_next().await.is_some() {}
    if let Err(e) = store.sync() {
        warn!("could not make the store durable on the way out: {e}");
    }
    Ok(rejoin)
}

/// `--resync`: removes this member's copy of the group (the store directory, which holds the
/// Raft log and vote, the chain and the outbox, and the group id a founder was given), keeping
/// its identity (`identity.pem`, `certificate.bin`). Records in the outbox that were not yet
/// committed are lost with it.
fn discard_group_data(data_dir: &std::path::Path) -> Result<(), PeerError> {
    let store = data_dir.join(STORE_DIR);
    warn!(dir = %store.display(), "--resync: discarding this member's stored chain and Raft state");
    let failed = |path: std::path::PathBuf, e: std::io::Error| PeerError::DataDir {
        path,
        why: format!("cannot discard it for --resync: {e}"),
    };
    match std::fs::remove_dir_all(&store) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(store, e)),
        _ => {}
    }
    let group_id = data_dir.join(GROUP_ID_FILE);
    match std::fs::remove_file(&group_id) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(group_id, e)),
        _ => Ok(()),
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), PeerError> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| PeerError::DataDir {
        path: dir.to_owned(),
        why: e.to_string(),
    })
}
