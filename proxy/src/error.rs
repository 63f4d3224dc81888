use std::net::SocketAddr;
use std::path::PathBuf;

use conclave_keymanager::KeymanagerError;
use conclave_shared::cert::CertError;
use conclave_shared::identity::IdentityError;
use conclave_shared::wire::WireError;
use thiserror::Error;

/// What went wrong in the proxy, or in a client talking to it. Variants name who is at fault.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The proxy's own database failed, or holds bytes it cannot read.
    #[error("proxy store failed: {0}")]
    Store(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The options are unusable (for example a name the key manager would refuse).
    #[error("bad proxy option: {0}")]
    Options(String),
    #[error("QUIC setup failed: {0}")]
    Quic(String),
    /// Registration could not reach the key manager before the deadline, and there is no
    /// cached certificate to fall back on.
    #[error(
        "key manager at {addr} did not answer within {after_ms} ms and no cached proxy \
         certificate exists: start the key manager, or check its address and root key ({why})"
    )]
    KeymanagerUnreachable {
        addr: SocketAddr,
        after_ms: u64,
        why: String,
    },
    /// The key manager answered but refused or failed the registration.
    #[error("registering the proxy failed: {0}")]
    Keymanager(#[from] KeymanagerError),
    /// `run` was called before `register` gave the proxy a certificate.
    #[error("the proxy has no certificate: call register before run")]
    NotRegistered,
    /// Client side: the proxy could not be reached (or is not a proxy of this root).
    #[error("proxy at {addr} is unreachable: {why}")]
    Unreachable { addr: SocketAddr, why: String },
    /// Client side: the proxy answered with an error.
    #[error("the proxy refused the request: {message}")]
    Refused { message: String },
    /// Client side: the proxy answered something this request does not allow.
    #[error("proxy protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}
