use super::*;

/// etcd 3.4.23's answer to a put, captured byte for byte.
const PUT_200: &[u8] = b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Headers: accept, content-type, authorization\r\nAccess-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\nGrpc-Metadata-Content-Type: application/grpc\r\nDate: Sun, 22 Nov 2026 04:05:42 GMT\r\nContent-Length: 113\r\n\r\n{\"header\":{\"cluster_id\":\"9708483045251700335\",\"member_id\":\"7393435589761182460\",\"revision\":\"24\",\"raft_term\":\"4\"}}";

/// etcd 3.4.23 refusing a member add: errors come chunked, with a gRPC trailer.
const ADD_503_CHUNKED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nAccess-Control-Allow-Headers: accept, content-type, authorization\r\nAccess-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\nTrailer: Grpc-Trailer-Content-Type\r\nDate: Sun, 22 Nov 2026 04:05:55 GMT\r\nTransfer-Encoding: chunked\r\n\r\n5d\r\n{\"error\":\"etcdserver: unhealthy cluster\",\"message\":\"etcdserver: unhealthy cluster\",\"code\":14}\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";

fn decode_all(body: &[u8]) -> Result<Option<(Vec<u8>, usize)>, BenchError> {
    let mut d = ChunkedDecoder::default();
    Ok(d.advance(body)?.map(|n| (d.into_body(), n)))
}

#[test]
fn content_length_response() {
    let head = parse_response(PUT_200).unwrap().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.body, BodyLen::Length(113));
    assert!(!head.close);
    assert_eq!(PUT_200.len() - head.header_len, 113);
    assert!(PUT_200[head.header_len..].starts_with(b"{\"header\""));
}

#[test]
fn chunked_response_with_trailer() {
    let head = parse_response(ADD_503_CHUNKED).unwrap().unwrap();
    assert_eq!(head.status, 503);
    assert_eq!(head.body, BodyLen::Chunked);
    let body = &ADD_503_CHUNKED[head.header_len..];
    let (decoded, consumed) = decode_all(body).unwrap().unwrap();
    assert_eq!(consumed, body.len());
    assert!(decoded.starts_with(b"{\"error\":\"etcdserver: unhealthy cluster\""));
    assert!(decoded.ends_with(b"\"code\":14}"));
}

#[test]
fn every_split_of_the_head_is_incomplete_then_complete() {
    for cut in 0..PUT_200.len() {
        let part = &PUT_200[..cut];
        let parsed = parse_response(part).unwrap();
        let head_len = PUT_200.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(parsed.is_some(), cut >= head_len, "cut at {cut}");
    }
}

#[test]
fn chunked_body_fed_byte_by_byte() {
    let head = parse_response(ADD_503_CHUNKED).unwrap().unwrap();
    let body = &ADD_503_CHUNKED[head.header_len..];
    let mut d = ChunkedDecoder::default();
    for cut in 0..body.len() {
        assert_eq!(d.advance(&body[..cut]).unwrap(), None, "cut at {cut}");
    }
    assert_eq!(d.advance(body).unwrap(), Some(body.len()));
    assert_eq!(d.into_body().len(), 0x5d);
}

#[test]
fn chunked_several_chunks_and_extensions() {
    let body = b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\nHTTP/1.1 next";
    let (decoded, consumed) = decode_all(body).unwrap().unwrap();
    assert_eq!(decoded, b"abcdefg");
    assert_eq!(&body[consumed..], b"HTTP/1.1 next");
}

#[test]
fn oversized_head_refused() {
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() < MAX_HEADER_BYTES {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let err = parse_response(&big).unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
}

#[test]
fn oversized_bodies_refused() {
    let too_long = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    assert!(parse_response(too_long.as_bytes()).is_err());
    let huge_chunk = format!("{:x}\r\n", MAX_BODY_BYTES + 1);
    assert!(decode_all(huge_chunk.as_bytes()).is_err());
    assert!(decode_all(b"fffffffffffffffffffff\r\n").is_err());
    let endless_size_line = vec![b'1'; MAX_CHUNK_LINE_BYTES + 10];
    assert!(decode_all(&endless_size_line).is_err());
}

#[test]
fn garbage_refused() {
    for bad in [
        &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        assert!(
            parse_response(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(decode_all(b"zz\r\n").is_err());
    assert!(decode_all(b"3\r\nabcXY").is_err());
}

#[test]
fn status_without_body_and_close() {
    let head = parse_response(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.body, BodyLen::Length(0));
    let head = parse_response(b"HTTP/1.0 200 OK\r\n\r\nrest")
        .unwrap()
        .unwrap();
    assert_eq!(head.body, BodyLen::UntilClose);
    assert!(head.close);
    let head = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(head.close);
}

/// A cheap stand-in for a fuzz target: mutated captures must give `Ok` or `Err`, never panic.
#[test]
fn mutated_captures_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for base in [PUT_200, ADD_503_CHUNKED] {
        for _ in 0..2000 {
            let mut m = base.to_vec();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            m.truncate((next() as usize) % (m.len() + 1));
            if let Ok(Some(head)) = parse_response(&m) {
                let _ = decode_all(&m[head.header_len..]);
            }
            let _ = decode_all(&m);
        }
    }
}

#[tokio::test]
async fn round_trip_against_a_local_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        // Two requests on one connection, answered with both body framings and split writes.
        for answer in [PUT_200, ADD_503_CHUNKED] {
            loop {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
                if got.ends_with(b"{\"k\":1}") {
                    got.clear();
                    break;
                }
            }
            let (a, b) = answer.split_at(answer.len() / 2);
            s.write_all(a).await.unwrap();
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
            s.write_all(b).await.unwrap();
        }
    });
    let mut conn = HttpConn::connect(addr).await.unwrap();
    let (status, body) = conn.post_json("/v3/kv/put", b"{\"k\":1}").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), 113);
    let (status, body) = conn.post_json("/v3/kv/put", b"{\"k\":1}").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.ends_with(b"\"code\":14}"));
    server.await.unwrap();
}

#[tokio::test]
async fn cut_short_and_abandoned_requests_leave_a_clear_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // First connection: half an answer, then close.
        let (mut s, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b).await.unwrap();
        s.write_all(&PUT_200[..PUT_200.len() - 10]).await.unwrap();
        drop(s);
        // Second connection: never answers, so the client's timeout fires.
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.read(&mut b).await;
        let _ = s.read(&mut b).await;
    });
    let mut conn = HttpConn::connect(addr).await.unwrap();
    let err = conn.post_json("/v3/kv/put", b"{}").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("closed before the end of the response body"),
        "{err}"
    );

    let mut conn = HttpConn::connect(addr).await.unwrap();
    let slow = conn.post_json("/v3/kv/put", b"{}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    let err = conn.post_json("/v3/kv/put", b"{}").await.unwrap_err();
    assert!(err.to_string().contains("reconnect"), "{err}");
    assert!(conn.post_json("no slash", b"{}").await.is_err());
    drop(conn);
    server.await.unwrap();
}
