//! A minimal HTTP/1.1 keep-alive client, enough to drive etcd's JSON gateway.
//!
//! A general HTTP client (hyper, reqwest) would pull a large dependency tree into the
//! workspace for one benchmark; etcd's gateway only needs `POST` with a JSON body and answers
//! with `Content-Length` or chunked bodies. The response parsers are pure functions over a
//! byte buffer so they can be tested on captured etcd answers without a socket.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BenchError;

/// Largest response head (status line and headers) accepted; etcd's are about 400 bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest response body accepted, after chunked decoding; checked before buffering more.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest chunk-size line accepted (hex size plus extensions).
const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How the body that follows a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// `Content-Length` bytes (0 for 1xx, 204 and 304 answers).
    Length(usize),
    /// `Transfer-Encoding: chunked`, decoded by [`ChunkedDecoder`].
    Chunked,
    /// Neither: the body runs until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head including the blank line; the body starts here.
    pub header_len: usize,
    pub body: BodyLen,
    /// The server will close the connection after this response.
    pub close: bool,
}

fn malformed(why: impl Into<String>) -> BenchError {
    BenchError::Protocol {
        from: "HTTP response".into(),
        why: why.into(),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is incomplete.
///
/// Refuses a head longer than [`MAX_HEADER_BYTES`], a `Content-Length` above
/// [`MAX_BODY_BYTES`], conflicting lengths and anything that is not an HTTP/1.x response,
/// so a confused server cannot make the client buffer without bound.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, BenchError> {
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_HEADER_BYTES {
            return Err(malformed(format!(
                "response head longer than {MAX_HEADER_BYTES} bytes"
            )));
        }
        return Ok(None);
    };
    let header_len = end + 4;
    let mut lines = buf[..end].split(|&b| b == b'\n').map(|l| match l {
        [rest @ .., b'\r'] => rest,
        l => l,
    });
    let status_line = lines.next().unwrap_or_default();
    let (version, status) = parse_status_line(status_line)?;
    let mut close = version == b"HTTP/1.0";
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(malformed("header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or_else(|| malformed("bad Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            if n > MAX_BODY_BYTES {
                return Err(malformed(format!(
                    "body of {n} bytes is over the {MAX_BODY_BYTES}-byte limit"
                )));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding says how the message ends (RFC 9112 §6.3).
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(malformed("unsupported Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyLen::Length(0)
    } else if chunked {
        if content_length.is_some() {
            return Err(malformed("both Content-Length and chunked"));
        }
        BodyLen::Chunked
    } else if let Some(n) = content_length {
        BodyLen::Length(n)
    } else {
        close = true;
        BodyLen::UntilClose
    };
    Ok(Some(ResponseHead {
        status,
        header_len,
        body,
        close,
    }))
}

fn parse_status_line(line: &[u8]) -> Result<(&[u8], u16), BenchError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(malformed("not an HTTP/1.x status line"));
    }
    let code = parts.next().unwrap_or_default();
    let status = (code.len() == 3)
        .then(|| parse_decimal(code))
        .flatten()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| malformed("bad status code"))?;
    Ok((version, status as u16))
}

/// Incremental decoder of a chunked body: fed the growing buffer that starts at the body,
/// it resumes where it stopped, so a large body costs one pass however it was split.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    /// Offset in the body buffer of the next chunk-size line (or trailer line).
    pos: usize,
    body: Vec<u8>,
    in_trailers: bool,
    /// Offset where the trailers begin, to bound their total size.
    trailers_from: usize,
}

impl ChunkedDecoder {
    /// Decodes what `buf` holds; `Ok(Some(consumed))` once the last chunk and trailers are
    /// in, `consumed` being the bytes of `buf` the body took.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, BenchError> {
        loop {
            let rest = &buf[self.pos.min(buf.len())..];
            let Some(eol) = find_crlf(rest) else {
                let limit = if self.in_trailers {
                    MAX_HEADER_BYTES
                } else {
                    MAX_CHUNK_LINE_BYTES
                };
                if rest.len() > limit {
                    return Err(malformed("chunk-size or trailer line too long"));
                }
                return Ok(None);
            };
            let line = &rest[..eol];
            if self.in_trailers {
                if self.pos + eol + 2 - self.trailers_from > MAX_HEADER_BYTES {
                    return Err(malformed("chunked trailers too long"));
                }
                self.pos += eol + 2;
                if line.is_empty() {
                    return Ok(Some(self.pos));
                }
                continue;
            }
            if eol > MAX_CHUNK_LINE_BYTES {
                return Err(malformed("chunk-size line too long"));
            }
            let size_hex = trim(line.split(|&b| b == b';').next().unwrap_or_default());
            let size = parse_hex(size_hex).ok_or_else(|| malformed("bad chunk size"))?;
            if size > MAX_BODY_BYTES - self.body.len() {
                return Err(malformed(format!(
                    "chunked body over the {MAX_BODY_BYTES}-byte limit"
                )));
            }
            if size == 0 {
                self.pos += eol + 2;
                self.in_trailers = true;
                self.trailers_from = self.pos;
                continue;
            }
            let data_start = eol + 2;
            if rest.len() < data_start + size + 2 {
                return Ok(None);
            }
            if &rest[data_start + size..data_start + size + 2] != b"\r\n" {
                return Err(malformed("chunk not followed by CRLF"));
            }
            self.body
                .extend_from_slice(&rest[data_start..data_start + size]);
            self.pos += data_start + size + 2;
        }
    }

    /// The decoded body, once [`advance`](Self::advance) returned `Some`.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

fn parse_hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 15 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// One keep-alive connection; requests on it are sequential, so `N` requests in flight
/// take `N` connections, as etcd's own benchmark tool does with its clients.
pub struct HttpConn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the previous response (normally none: requests are not pipelined).
    buf: Vec<u8>,
    /// Set while a request is under way and left set if its future is dropped (a caller's
    /// timeout), or the server said it closes: the byte stream is then out of step and the
    /// connection must not be reused.
    broken: bool,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are single small writes; Nagle would hold each behind the last ACK.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            addr,
            buf: Vec::new(),
            broken: false,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// POST a JSON body to `path`; returns (status, body bytes). Bounded: headers ≤ 64 KiB,
    /// body ≤ 16 MiB (Content-Length or chunked), a clear error otherwise; never panics on
    /// input. Not cancel-safe by nature: if this future is dropped the connection refuses
    /// further requests, and the caller reconnects.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), BenchError> {
        if self.broken {
            return Err(BenchError::Protocol {
                from: self.addr.to_string(),
                why: "connection left mid-response or closed by the server; reconnect".into(),
            });
        }
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(BenchError::Other(format!("not a request path: {path:?}")));
        }
        self.broken = true;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let (status, body, close) = self.read_response().await?;
        self.broken = close;
        Ok((status, body))
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>, bool), BenchError> {
        let head = loop {
            match parse_response(&self.buf).map_err(|e| self.blame(e))? {
                Some(head) if (100..200).contains(&head.status) => {
                    self.buf.drain(..head.header_len);
                }
                Some(head) => break head,
                None => self.fill("the response head").await?,
            }
        };
        self.buf.drain(..head.header_len);
        let body = match head.body {
            BodyLen::Length(n) => {
                while self.buf.len() < n {
                    self.fill("the response body").await?;
                }
                self.buf.drain(..n).collect()
            }
            BodyLen::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.advance(&self.buf).map_err(|e| self.blame(e))? {
                        Some(consumed) => {
                            self.buf.drain(..consumed);
                            break decoder.into_body();
                        }
                        None => self.fill("the chunked body").await?,
                    }
                }
            }
            BodyLen::UntilClose => {
                while self.read_some().await? > 0 {
                    if self.buf.len() > MAX_BODY_BYTES {
                        return Err(self.blame(malformed(format!(
                            "body over the {MAX_BODY_BYTES}-byte limit"
                        ))));
                    }
                }
                std::mem::take(&mut self.buf)
            }
        };
        Ok((head.status, body, head.close))
    }

    /// Reads more bytes; the server closing here means the answer was cut short.
    async fn fill(&mut self, waiting_for: &str) -> Result<(), BenchError> {
        if self.read_some().await? == 0 {
            return Err(BenchError::Protocol {
                from: self.addr.to_string(),
                why: format!("connection closed before the end of {waiting_for}"),
            });
        }
        Ok(())
    }

    async fn read_some(&mut self) -> Result<usize, BenchError> {
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK_BYTES, 0);
        let n = self.stream.read(&mut self.buf[old..]).await;
        self.buf.truncate(old + *n.as_ref().unwrap_or(&0));
        Ok(n?)
    }

    fn blame(&self, e: BenchError) -> BenchError {
        match e {
            BenchError::Protocol { why, .. } => BenchError::Protocol {
                from: self.addr.to_string(),
                why,
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests;
