//! etcd as the yardstick: a local cluster of real `etcd` processes (Debian's 3.4 packages)
//! driven through its HTTP/JSON gateway, so the comparison needs no protobuf toolchain and
//! the same load generator shape serves both systems.
//!
//! Layout: `install` finds or installs the binaries, `cluster` runs and breaks the members,
//! `gateway` knows the JSON shapes of etcd's answers.

mod cluster;
pub mod gateway;
mod install;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

pub use cluster::{EtcdCluster, EtcdMember, ELECTION_TIMEOUT_MS, HEARTBEAT_INTERVAL_MS};
pub use install::{ensure_installed, find_etcd};

use crate::http::HttpConn;
use crate::BenchError;

/// A put through the gateway: key and value base64 in JSON; Ok(revision) on 200, an Err
/// naming etcd's error otherwise (e.g. no leader) so a caller can retry on another member.
///
/// etcd holds a put that arrives during an election for up to about 7 s before answering
/// "request timed out, possibly due to previous leader failure"; a caller timing failover
/// wraps this in its own timeout and, having dropped the future, opens a new connection.
pub async fn put(conn: &mut HttpConn, key: &[u8], value: &[u8]) -> Result<u64, BenchError> {
    // The base64 alphabet needs no JSON escaping, so the body is built without serde.
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        BASE64.encode(key),
        BASE64.encode(value)
    );
    let answer: gateway::PutResponse = gateway::call(conn, "/v3/kv/put", body.as_bytes()).await?;
    Ok(answer.header.revision)
}
