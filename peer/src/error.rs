use thiserror::Error;

/// Why a peer stopped or an operation failed.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot use data directory {path}: {why}")]
    DataDir {
        path: std::path::PathBuf,
        why: String,
    },
    #[error(transparent)]
    Identity(#[from] conclave_shared::identity::IdentityError),
    #[error("the name {name:?} is registered to another key: choose another name, or use the data directory that holds its key")]
    NameTaken { name: String },
    #[error("the key manager refused to register {name:?}: {why}")]
    Registration { name: String, why: String },
    #[error("the key manager is unreachable: {0}")]
    KeymanagerUnreachable(String),
    #[error("the proxy is unreachable: {0}")]
    ProxyUnreachable(String),
    #[error("could not join the group: {0}")]
    Join(String),
    #[error(
        "this member's stored chain fails verification at height {height}: {reason}; run again \
         with --resync to discard this member's data and rejoin"
    )]
    BadChain { height: u64, reason: String },
    #[error("storage failed: {0}")]
    Store(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("QUIC setup failed: {0}")]
    Quic(String),
    #[error("{0}")]
    Internal(String),
}
