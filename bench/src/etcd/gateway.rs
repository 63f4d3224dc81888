//! etcd 3.4's HTTP/JSON gateway: the few calls the benchmark makes and the shapes of their
//! answers.
//!
//! The gateway is grpc-gateway over etcd's protobuf API, which explains its quirks: uint64
//! fields (ids, revisions, indexes) are JSON strings, fields equal to zero are left out
//! (a member with no leader simply has no `leader`), and errors are
//! `{"error","message","code"}` with a gRPC status code, usually sent chunked.

use serde::{Deserialize, Deserializer};

use crate::http::HttpConn;
use crate::BenchError;

/// A uint64 as the gateway writes it (a string), also accepting a bare number; absent is 0.
fn u64_field<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Str(String),
        Num(u64),
    }
    match Either::deserialize(d)? {
        Either::Str(s) => s.parse().map_err(serde::de::Error::custom),
        Either::Num(n) => Ok(n),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Header {
    #[serde(default, deserialize_with = "u64_field")]
    pub member_id: u64,
    #[serde(default, deserialize_with = "u64_field")]
    pub revision: u64,
    #[serde(default, deserialize_with = "u64_field")]
    pub raft_term: u64,
}

/// Answer to `/v3/kv/put`.
#[derive(Debug, Deserialize)]
pub struct PutResponse {
    #[serde(default)]
    pub header: Header,
}

/// Answer to `/v3/maintenance/status`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    #[serde(default)]
    pub header: Header,
    /// 0 (left out by the gateway) while the member knows no leader.
    #[serde(default, deserialize_with = "u64_field")]
    pub leader: u64,
    /// Highest committed raft index this member knows.
    #[serde(default, deserialize_with = "u64_field")]
    pub raft_index: u64,
    #[serde(default, deserialize_with = "u64_field")]
    pub raft_applied_index: u64,
    #[serde(default, deserialize_with = "u64_field")]
    pub raft_term: u64,
    /// Alarms and conditions such as "etcdserver: no leader".
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    #[serde(rename = "ID", default, deserialize_with = "u64_field")]
    pub id: u64,
    /// Empty until the member has started and published itself.
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
}

/// Answer to `/v3/cluster/member/add`.
#[derive(Debug, Deserialize)]
pub struct MemberAddResponse {
    pub member: Member,
    #[serde(default)]
    pub members: Vec<Member>,
}

/// Answer to `/v3/cluster/member/list`.
#[derive(Debug, Deserialize)]
pub struct MemberListResponse {
    #[serde(default)]
    pub members: Vec<Member>,
}

/// The gateway's error body.
#[derive(Debug, Deserialize)]
pub struct GatewayError {
    #[serde(default)]
    pub error: String,
    /// gRPC status: 14 (unavailable) for "no leader" and "unhealthy cluster", 4 or 2 for
    /// deadlines, 3 for a malformed request.
    #[serde(default)]
    pub code: i32,
}

/// Longest excerpt of a non-JSON error body quoted in an error message.
const MAX_QUOTED_BODY_BYTES: usize = 200;

/// Turns an HTTP answer into `T` on 200, or into an error that quotes etcd's own message
/// (so "etcdserver: no leader" reaches whoever decides to retry elsewhere).
pub fn decode<T: for<'de> Deserialize<'de>>(
    from: &str,
    status: u16,
    body: &[u8],
) -> Result<T, BenchError> {
    if status == 200 {
        return serde_json::from_slice(body).map_err(|e| BenchError::Protocol {
            from: from.to_string(),
            why: format!("cannot decode etcd's answer: {e}"),
        });
    }
    let why = match serde_json::from_slice::<GatewayError>(body) {
        Ok(e) if !e.error.is_empty() => {
            format!("HTTP {status}: {} (gRPC code {})", e.error, e.code)
        }
        _ => {
            let quoted = &body[..body.len().min(MAX_QUOTED_BODY_BYTES)];
            format!("HTTP {status}: {}", String::from_utf8_lossy(quoted).trim())
        }
    };
    Err(BenchError::Protocol {
        from: from.to_string(),
        why,
    })
}

/// Posts `body` to `path` on `conn` and decodes the answer.
pub async fn call<T: for<'de> Deserialize<'de>>(
    conn: &mut HttpConn,
    path: &str,
    body: &[u8],
) -> Result<T, BenchError> {
    let (status, answer) = conn.post_json(path, body).await?;
    decode(&format!("etcd at {}", conn.addr()), status, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies captured from etcd 3.4.23 (Debian bookworm) on 127.0.0.1.
    const PUT: &str = r#"{"header":{"cluster_id":"9708483045251700335","member_id":"3698584100501020715","revision":"2","raft_term":"2"}}"#;
    const STATUS: &str = r#"{"header":{"cluster_id":"9708483045251700335","member_id":"3698584100501020715","revision":"2","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"7393435589761182460","raftIndex":"9","raftTerm":"2","raftAppliedIndex":"9","dbSizeInUse":"16384"}"#;
    const STATUS_NO_LEADER: &str = r#"{"header":{"cluster_id":"9708483045251700335","member_id":"3698584100501020715","revision":"24","raft_term":"4"},"version":"3.4.23","dbSize":"24576","raftIndex":"39","raftTerm":"4","raftAppliedIndex":"39","errors":["etcdserver: no leader"],"dbSizeInUse":"20480"}"#;
    const MEMBER_ADD: &str = r#"{"header":{"cluster_id":"9708483045251700335","member_id":"7393435589761182460","raft_term":"4"},"member":{"ID":"3592716232341862857","peerURLs":["http://127.0.0.1:23803"]},"members":[{"ID":"3592716232341862857","peerURLs":["http://127.0.0.1:23803"]},{"ID":"3698584100501020715","name":"m0","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]},{"ID":"7393435589761182460","name":"m1","peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]},{"ID":"10172145308729752280","name":"m2","peerURLs":["http://127.0.0.1:23802"],"clientURLs":["http://127.0.0.1:23792"]}]}"#;
    const MEMBER_LIST: &str = r#"{"header":{"cluster_id":"9708483045251700335","member_id":"7393435589761182460","raft_term":"2"},"members":[{"ID":"3698584100501020715","name":"m0","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]},{"ID":"7393435589761182460","name":"m1","peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]},{"ID":"10172145308729752280","name":"m2","peerURLs":["http://127.0.0.1:23802"],"clientURLs":["http://127.0.0.1:23792"]}]}"#;
    const NO_LEADER: &str =
        r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
    const LEADER_LOST: &str = r#"{"error":"etcdserver: request timed out, possibly due to previous leader failure","message":"etcdserver: request timed out, possibly due to previous leader failure","code":14}"#;
    const DEADLINE: &str =
        r#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":2}"#;

    #[test]
    fn put_revision_is_a_string() {
        let put: PutResponse = decode("t", 200, PUT.as_bytes()).unwrap();
        assert_eq!(put.header.revision, 2);
        assert_eq!(put.header.member_id, 3_698_584_100_501_020_715);
    }

    #[test]
    fn status_fields() {
        let s: StatusResponse = decode("t", 200, STATUS.as_bytes()).unwrap();
        assert_eq!(s.leader, 7_393_435_589_761_182_460);
        assert_eq!((s.raft_index, s.raft_applied_index, s.raft_term), (9, 9, 2));
        assert!(s.errors.is_empty());
    }

    #[test]
    fn status_without_leader_leaves_the_field_out() {
        let s: StatusResponse = decode("t", 200, STATUS_NO_LEADER.as_bytes()).unwrap();
        assert_eq!(s.leader, 0);
        assert_eq!(s.errors, ["etcdserver: no leader"]);
        assert_eq!(s.raft_index, 39);
    }

    #[test]
    fn member_add_and_list_ids_above_i64() {
        let add: MemberAddResponse = decode("t", 200, MEMBER_ADD.as_bytes()).unwrap();
        assert_eq!(add.member.id, 3_592_716_232_341_862_857);
        assert_eq!(add.member.peer_urls, ["http://127.0.0.1:23803"]);
        assert!(add.member.name.is_empty());
        assert_eq!(add.members.len(), 4);
        let list: MemberListResponse = decode("t", 200, MEMBER_LIST.as_bytes()).unwrap();
        assert_eq!(list.members[2].id, 10_172_145_308_729_752_280);
        assert_eq!(list.members[2].client_urls, ["http://127.0.0.1:23792"]);
    }

    #[test]
    fn errors_name_etcds_message() {
        for (status, body, needle) in [
            (503, NO_LEADER, "etcdserver: no leader (gRPC code 14)"),
            (503, LEADER_LOST, "previous leader failure"),
            (500, DEADLINE, "context deadline exceeded"),
            (404, "Not Found\n", "HTTP 404: Not Found"),
        ] {
            let err = decode::<PutResponse>("etcd at x", status, body.as_bytes()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(needle) && text.contains("etcd at x"),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_json_on_200_is_an_error() {
        assert!(decode::<PutResponse>("t", 200, b"{\"header\":{\"revision\":\"x\"}}").is_err());
        assert!(decode::<PutResponse>("t", 200, b"\xff\xfe").is_err());
        assert!(decode::<StatusResponse>("t", 200, b"").is_err());
        let n: PutResponse = decode("t", 200, b"{\"header\":{\"revision\":7}}").unwrap();
        assert_eq!(n.header.revision, 7);
    }
}
