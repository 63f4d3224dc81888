use std::net::SocketAddr;

use conclave_shared::cert::CertError;
use conclave_shared::identity::IdentityError;
use conclave_shared::wire::km::KmErrorCode;
use conclave_shared::wire::WireError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeymanagerError {
    #[error("key manager store failed: {0}")]
    Store(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("QUIC setup failed: {0}")]
    Quic(String),
    #[error("key manager at {addr} is unreachable: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    #[error("key manager refused: {message}")]
    Refused { code: KmErrorCode, message: String },
    #[error("key manager protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("no admin token at {path}: run this on the key manager's machine or pass --admin-token FILE ({source})")]
    AdminToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
