//! The key manager: Conclave's root of trust.
//!
//! It holds the root RSA key, enrols members and the proxy (each registers its own public key
//! and proves it holds the private key), answers look-ups and revokes. State lives in redb and
//! survives restarts and crashes.
//!
//! # Layout
//! - [`Keymanager::open`] loads or creates the data directory: root key (0600), root public
//!   key, admin token (0600), database.
//! - [`Keymanager::run`] serves `conclave/km/1` on an already-bound endpoint until the
//!   shutdown token is cancelled (`server`).
//! - [`client::KeymanagerClient`] is what peers, the proxy and the admin commands use.
//! - `store` is the redb schema and its transactions.

pub mod client;
mod error;
mod server;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_shared::config::EnrolmentMode;
use conclave_shared::identity::{write_atomically, Fingerprint, Identity};
use rand::RngCore;
use tokio_util::sync::CancellationToken;

pub use error::KeymanagerError;
pub use server::MAX_CONNECTIONS;
pub use store::STORE_FORMAT_VERSION;

pub const ROOT_KEY_FILE: &str = "root.key.pem";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DB_FILE: &str = "keymanager.redb";

/// What the key manager needs to start; the binary fills it from config and flags.
#[derive(Debug, Clone)]
pub struct KeymanagerOptions {
    pub data_dir: PathBuf,
    pub mode: EnrolmentMode,
    /// Where to publish the root public key for everyone else.
    pub root_public_key: PathBuf,
    /// Modulus size if the root key must be created.
    pub key_bits: usize,
}

/// An opened key manager, ready to serve.
pub struct Keymanager {
    shared: Arc<server::Shared>,
    created: bool,
}

impl Keymanager {
    /// Loads the root key and database from `opts.data_dir`, creating them on first start.
    pub fn open(opts: &KeymanagerOptions) -> Result<Self, KeymanagerError> {
        create_private_dir(&opts.data_dir)?;
        let (root, created) =
            Identity::load_or_generate(&opts.data_dir.join(ROOT_KEY_FILE), opts.key_bits)?;
        // Published on every start, so a deleted or stale copy heals itself.
        root.public().save_pem(&opts.root_public_key)?;
        let token_path = opts.data_dir.join(ADMIN_TOKEN_FILE);
        if !token_path.exists() {
            let mut t = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut t);
            write_atomically(&token_path, hex::encode(t).as_bytes(), 0o600)?;
        }
        let admin_token = read_admin_token(&token_path)?;
        let store = store::Store::open(&opts.data_dir.join(DB_FILE))?;
        Ok(Self {
            shared: Arc::new(server::Shared {
                root,
                store,
                mode: opts.mode,
                admin_token,
            }),
            created,
        })
    }

    pub fn root_fingerprint(&self) -> Fingerprint {
        self.shared.root.fingerprint()
    }

    /// Whether this start created the root key.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Serves until `shutdown` is cancelled. The endpoint may be bound already (tests bind
    /// port 0); its server configuration is set here, from the root key.
    pub async fn run(
        self,
        endpoint: quinn::Endpoint,
        shutdown: CancellationToken,
    ) -> Result<(), KeymanagerError> {
        server::serve(self.shared, endpoint, shutdown).await
    }
}

/// Creates the data directory readable by its owner only: it holds the root key, the admin
/// token and the database.
fn create_private_dir(dir: &Path) -> Result<(), KeymanagerError> {
    let err = |source| KeymanagerError::DataDir {
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

/// Reads an admin token file written by [`Keymanager::open`].
pub fn read_admin_token(path: &Path) -> Result<String, KeymanagerError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeymanagerError::AdminToken {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}
