//! The proxy: the one known address of a group.
//!
//! A joining member asks it where the leader is (`WhereIsLeader`); before any group exists it
//! hands one asker at a time a bootstrap lease with a fresh group id, and once a leader has
//! announced that group (`Announce`, signed) it only ever serves that group. Its state lives
//! in redb, so a restarted proxy never offers a second bootstrap. `conclave status` asks it
//! (`Status`, no certificate needed) for the group with each member's reachability and head.
//!
//! # Layout
//! - [`Proxy::open`] loads or creates the data directory: identity key (0600), cached
//!   certificate, database.
//! - [`Proxy::register`] gets the proxy's certificate (role `proxy`) from the key manager,
//!   retrying until it answers, or takes the cached one (`enrol`).
//! - [`Proxy::run`] serves `conclave/proxy/1` on an already-bound endpoint until the shutdown
//!   token is cancelled (`server`), polling the key manager's revocations meanwhile.
//! - `state` holds the rules (lease, announcements) as pure functions; `announce` checks a
//!   signed announcement against the announcer's TLS certificate; `actor` owns the state and
//!   persists each change (`store`) before it is answered; `status` probes members over
//!   `conclave/peer/1`; `confirm` asks the known voters, with those probes, to confirm a new
//!   leader before the proxy moves (from the connection's task, never the actor's).
//! - [`client::ProxyClient`] is what peers and `conclave status` use.

mod actor;
mod announce;
pub mod client;
mod confirm;
mod enrol;
mod error;
mod server;
mod state;
mod status;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use conclave_shared::cert::{validate_name, Role, VerifiedCert};
use conclave_shared::identity::{Fingerprint, Identity, PublicKey};
use conclave_shared::quic::{MemberTrust, RevokedSerials, TlsIdentity};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use announce::{MAX_ADDR_BYTES, MAX_MEMBERS};
pub use confirm::{CONFIRM_MIN_INTERVAL_MS, CONFIRM_PROBE_TIMEOUT_MS};
pub use enrol::REVOCATION_POLL_MS;
pub use error::ProxyError;
pub use server::{
    DRAIN_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS, MAX_CONNECTIONS, MAX_REQUESTS_PER_CONNECTION,
    REQUEST_TIMEOUT_MS,
};
pub use state::{LEASE_MS, WAIT_RETRY_MS};
pub use status::{STATUS_CACHE_MS, STATUS_PROBE_TIMEOUT_MS};
pub use store::STORE_FORMAT_VERSION;

pub const IDENTITY_FILE: &str = "identity.pem";
/// The key manager's certificate for the proxy, canonical bytes (`docs/chain-format.md`).
pub const CERT_FILE: &str = "proxy.cert";
pub const DB_FILE: &str = "proxy.redb";
/// The name the proxy registers under unless told otherwise.
pub const DEFAULT_NAME: &str = "proxy";
pub const DEFAULT_KEY_BITS: usize = 2048;

/// What the proxy needs to start; the binary fills it from config and flags.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub data_dir: PathBuf,
    /// The name registered at the key manager (role `proxy`).
    pub name: String,
    /// Modulus size if the identity key must be created.
    pub key_bits: usize,
    /// How long a bootstrap lease lasts ([`LEASE_MS`] by default).
    pub lease_ms: u64,
    /// An invitation token, for a key manager in invite mode; `None` in open mode.
    pub invite: Option<String>,
}

impl ProxyOptions {
    /// The defaults, keeping everything in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            name: DEFAULT_NAME.to_owned(),
            key_bits: DEFAULT_KEY_BITS,
            lease_ms: LEASE_MS,
            invite: None,
        }
    }
}

/// Where the proxy's certificate came from and whom it trusts.
struct Registration {
    cert: VerifiedCert,
    root: PublicKey,
    keymanager: SocketAddr,
}

/// An opened proxy; [`register`](Proxy::register), then [`run`](Proxy::run).
pub struct Proxy {
    opts: ProxyOptions,
    identity: Identity,
    created: bool,
    store: store::Store,
    state: state::GroupState,
    registration: Option<Registration>,
}

impl Proxy {
    /// Loads the identity key and database from `opts.data_dir`, creating them on first start.
    pub fn open(opts: ProxyOptions) -> Result<Self, ProxyError> {
        validate_name(&opts.name).map_err(|e| ProxyError::Options(e.to_string()))?;
        if opts.lease_ms == 0 {
            return Err(ProxyError::Options("lease_ms must be above 0".into()));
        }
        create_private_dir(&opts.data_dir)?;
        let (identity, created) =
            Identity::load_or_generate(&opts.data_dir.join(IDENTITY_FILE), opts.key_bits)?;
        let store = store::Store::open(&opts.data_dir.join(DB_FILE))?;
        let state = store.load()?;
        if let Some(g) = &state.group {
            info!(group = %hex::encode(g.group_id), leader = ?g.leader.as_ref().map(|l| (&l.name, l.term)), members = g.members.len(), "proxy state loaded");
        }
        Ok(Self {
            opts,
            identity,
            created,
            store,
            state,
            registration: None,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Whether this start created the identity key.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether a group was founded through this proxy (it then never offers a bootstrap).
    pub fn established(&self) -> bool {
        self.state.established()
    }

    /// The proxy's certificate, once registered.
    pub fn certificate(&self) -> Option<&VerifiedCert> {
        self.registration.as_ref().map(|r| &r.cert)
    }

    /// Gets the proxy's certificate: the cached one if the root issued it to this key and
    /// name, otherwise by registering at the key manager at `keymanager`, retrying until it
    /// answers or `deadline` passes (either may start first). A new certificate is cached.
    pub async fn register(
        &mut self,
        endpoint: &quinn::Endpoint,
        keymanager: SocketAddr,
        root: PublicKey,
        deadline: Duration,
    ) -> Result<&VerifiedCert, ProxyError> {
        let path = self.opts.data_dir.join(CERT_FILE);
        let cert = match enrol::load_cached(&path, &self.identity, &self.opts.name, &root) {
            Some(cert) => {
                info!(name = %cert.name(), serial = cert.serial(), "using the cached proxy certificate");
                cert
            }
            None => {
                let cert = enrol::register(
                    endpoint,
                    keymanager,
                    &root,
                    &self.identity,
                    &self.opts.name,
                    self.opts.invite.clone(),
                    deadline,
                )
                .await?;
                enrol::save_cert(&path, &cert)?;
                info!(name = %cert.name(), serial = cert.serial(), "registered at the key manager");
                cert
            }
        };
        Ok(&self
            .registration
            .insert(Registration {
                cert,
                root,
                keymanager,
            })
            .cert)
    }

    /// Serves until `shutdown` is cancelled. The endpoint may be bound already (tests bind
    /// port 0); its server configuration is set here. Returns once connections are drained
    /// and the database is closed, so the data directory can be opened again at once.
    pub async fn run(
        self,
        endpoint: quinn::Endpoint,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let reg = self.registration.ok_or(ProxyError::NotRegistered)?;
        let tls = TlsIdentity::new(&self.identity, Some(reg.cert.certificate()))
            .map_err(|e| ProxyError::Quic(e.to_string()))?;
        let revoked = RevokedSerials::new();
        let members = MemberTrust::new(reg.root.clone(), &[Role::Member], revoked.clone());
        let prober = status::Prober::new(endpoint.clone(), &tls, members.clone())?;
        let (state, actor) = actor::StateHandle::spawn(self.store, self.state, self.opts.lease_ms);
        let shared = Arc::new(server::Shared {
            members,
            state,
            prober,
            attempts: confirm::Attempts::default(),
        });
        let stop_polling = shutdown.child_token();
        let poller = tokio::spawn(enrol::poll_revocations(
            endpoint.clone(),
            reg.keymanager,
            reg.root,
            revoked,
            reg.cert.serial(),
            stop_polling.clone(),
        ));
        let served = server::serve(&tls, shared, &endpoint, shutdown).await;
        stop_polling.cancel();
        let _ = poller.await;
        // Every handle on the state actor is gone with the connection tasks; it closes the
        // database and ends.
        let _ = actor.await;
        served
    }
}

/// Creates the data directory readable by its owner only: it holds the identity key.
fn create_private_dir(dir: &Path) -> Result<(), ProxyError> {
    let err = |source| ProxyError::DataDir {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(err)?;
    }
    Ok(())
}
