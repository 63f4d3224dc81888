//! The Raft protocol, ALPN `conclave/raft/1`: openraft's own RPC types, one request per
//! bidirectional stream, framed as every other protocol (see docs/protocol.md).
//!
//! # Snapshots: one stream, in pieces
//!
//! A snapshot can be far larger than a frame, so it has its own sub-protocol on one
//! bidirectional stream (the sender's `full_snapshot` in `network.rs`, the receiver's
//! `receive_snapshot` in `server.rs`):
//!
//! 1. sender → receiver: one frame `RaftRequest::Snapshot { vote, meta, len }`;
//! 2. sender → receiver: exactly `len` raw bytes (the snapshot file, `store/snapshot.rs`),
//!    written in pieces of at most [`SNAPSHOT_CHUNK_BYTES`], then the end of the stream
//!    (`finish`);
//! 3. receiver → sender: frames `RaftReply::Working`, about every
//!    [`SNAPSHOT_WORKING_INTERVAL_MS`] while it verifies and installs, then one final frame:
//!    `Snapshot(..)` (openraft's answer), `SnapshotRefused(why)` (too large, truncated, busy, or
//!    it does not verify) or `Refused(why)` (the caller may not speak Raft here).
//!
//! Nothing bounds the whole transfer's time: every piece, and every reply frame, must move
//! within [`SNAPSHOT_CHUNK_TIMEOUT_MS`] (openraft's single deadline for a whole snapshot is what
//! makes big transfers retry forever). The receiver refuses a `len` over
//! [`MAX_SNAPSHOT_BYTES`] before reading any of it, a stream that ends early, and any byte
//! beyond `len`.

use std::time::Duration;

use conclave_shared::wire::{read_frame, WireError};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse};
use openraft::raft::{VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

pub use conclave_shared::wire::ALPN_RAFT as ALPN;
/// An append request holds at most `MAX_PAYLOAD_ENTRIES` entries, each at most one record
/// batch (`MAX_BATCH_BYTES`); this leaves room for both.
pub const MAX_REQUEST_BYTES: usize = conclave_shared::wire::frame::MAX_FRAME_BYTES;
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The largest snapshot a member sends or accepts (the receiver spools it to disk first).
pub const MAX_SNAPSHOT_BYTES: u64 = 1024 * 1024 * 1024;
/// Snapshot bytes are written and read in pieces of at most this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Each piece of a snapshot, and each reply frame after it, must move within this.
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;
/// While it verifies and installs, the receiver sends `Working` about this often.
pub const SNAPSHOT_WORKING_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// The head of a snapshot stream: `len` bytes of snapshot follow on the same stream (see
    /// the module docs).
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        len: u64,
    },
}

impl RaftRequest {
    /// The node the request claims to come from; it must be the caller's certified identity.
    pub fn claimed_sender(&self) -> NodeId {
        let vote = match self {
            RaftRequest::Append(r) => &r.vote,
            RaftRequest::Vote(r) => &r.vote,
            RaftRequest::Snapshot { vote, .. } => vote,
        };
        vote.leader_id().voted_for().unwrap_or_default()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// The caller is not allowed to speak Raft here (not a member, or the node id in the
    /// request is not its own).
    Refused(String),
    /// On a snapshot stream only: still verifying or installing; another frame follows.
    Working,
    /// On a snapshot stream only: the snapshot was not taken (see the module docs), and
    /// nothing changed. The sender may try again later.
    SnapshotRefused(String),
}

/// Why moving snapshot bytes or reading the answer failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStreamError {
    #[error("a snapshot of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("the stream ended after {got} of {want} snapshot bytes")]
    Truncated { got: u64, want: u64 },
    #[error("more snapshot bytes than the {want} announced")]
    Overlong { want: u64 },
    #[error("nothing moved on the snapshot stream for {0:?}")]
    Stalled(Duration),
    #[error("reading the snapshot to send: {0}")]
    Source(std::io::Error),
    #[error("writing the received snapshot: {0}")]
    Sink(std::io::Error),
    #[error("snapshot stream: {0}")]
    Stream(std::io::Error),
    #[error("snapshot reply: {0}")]
    Reply(WireError),
    #[error("the stream ended without a reply to the snapshot")]
    NoReply,
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, SnapshotStreamError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| SnapshotStreamError::Stalled(limit))
}

/// Sender: copies exactly `len` bytes of `src` to `dst`, at most [`SNAPSHOT_CHUNK_BYTES`] at
/// a time; each piece must be written within `chunk_timeout`.
pub async fn send_snapshot_data<R, W>(
    src: &mut R,
    dst: &mut W,
    len: u64,
    chunk_timeout: Duration,
) -> Result<(), SnapshotStreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let n = src
            .read(&mut buf[..want])
            .await
            .map_err(SnapshotStreamError::Source)?;
        if n == 0 {
            return Err(SnapshotStreamError::Source(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the snapshot file ended after {sent} of {len} bytes"),
            )));
        }
        within(chunk_timeout, dst.write_all(&buf[..n]))
            .await?
            .map_err(SnapshotStreamError::Stream)?;
        sent += n as u64;
    }
    Ok(())
}

/// Receiver: reads exactly `len` bytes of `src` into `dst`, then requires the end of the
/// stream. Refuses a `len` over `max` before reading anything; each read (at most
/// [`SNAPSHOT_CHUNK_BYTES`]) must bring data within `chunk_timeout`.
pub async fn receive_snapshot_data<R, W>(
    src: &mut R,
    dst: &mut W,
    len: u64,
    max: u64,
    chunk_timeout: Duration,
) -> Result<(), SnapshotStreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if len > max {
        return Err(SnapshotStreamError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let n = within(chunk_timeout, src.read(&mut buf[..want]))
            .await?
            .map_err(SnapshotStreamError::Stream)?;
        if n == 0 {
            return Err(SnapshotStreamError::Truncated { got, want: len });
        }
        dst.write_all(&buf[..n])
            .await
            .map_err(SnapshotStreamError::Sink)?;
        got += n as u64;
    }
    dst.flush().await.map_err(SnapshotStreamError::Sink)?;
    let mut one = [0u8; 1];
    match within(chunk_timeout, src.read(&mut one))
        .await?
        .map_err(SnapshotStreamError::Stream)?
    {
        0 => Ok(()),
        _ => Err(SnapshotStreamError::Overlong { want: len }),
    }
}

/// Sender: reads reply frames, each within `frame_timeout`, until one that is not
/// [`RaftReply::Working`].
pub async fn read_snapshot_reply<R>(
    src: &mut R,
    frame_timeout: Duration,
) -> Result<RaftReply, SnapshotStreamError>
where
    R: AsyncRead + Unpin,
{
    loop {
        match within(
            frame_timeout,
            read_frame::<_, RaftReply>(src, MAX_RESPONSE_BYTES),
        )
        .await?
        .map_err(SnapshotStreamError::Reply)?
        {
            Some(RaftReply::Working) => continue,
            Some(reply) => return Ok(reply),
            None => return Err(SnapshotStreamError::NoReply),
        }
    }
}

#[cfg(test)]
mod tests {
    use conclave_shared::wire::write_frame;
    use tokio::io::duplex;

    use super::*;

    const T: Duration = Duration::from_millis(300);

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// What the receiver makes of `bytes` sent as a snapshot announced as `len`; the sender
    /// closes its side after writing, unless `hold`.
    async fn receive(
        bytes: Vec<u8>,
        len: u64,
        max: u64,
        hold: bool,
    ) -> Result<Vec<u8>, SnapshotStreamError> {
        let (mut tx, mut rx) = duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&bytes).await;
            if hold {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            drop(tx);
        });
        let mut out = Vec::new();
        let r = receive_snapshot_data(&mut rx, &mut out, len, max, T).await;
        writer.abort();
        r.map(|()| out)
    }

    #[tokio::test]
    async fn a_snapshot_crosses_in_pieces() {
        let bytes = data(3 * SNAPSHOT_CHUNK_BYTES + 12_345);
        let (mut a, mut b) = duplex(64 * 1024);
        let src = bytes.clone();
        let len = src.len() as u64;
        let sender = tokio::spawn(async move {
            send_snapshot_data(&mut src.as_slice(), &mut a, len, T).await?;
            a.shutdown().await.map_err(SnapshotStreamError::Stream)
        });
        let mut out = Vec::new();
        receive_snapshot_data(&mut b, &mut out, len, MAX_SNAPSHOT_BYTES, T)
            .await
            .unwrap();
        sender.await.unwrap().unwrap();
        assert_eq!(out, bytes);
    }

    #[tokio::test]
    async fn an_empty_snapshot_is_just_the_end_of_the_stream() {
        assert_eq!(receive(Vec::new(), 0, 10, false).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn a_truncated_stream_is_refused() {
        let err = receive(data(1000), 1001, 1 << 20, false).await.unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotStreamError::Truncated {
                    got: 1000,
                    want: 1001
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn more_bytes_than_announced_are_refused() {
        let err = receive(data(1001), 1000, 1 << 20, false).await.unwrap_err();
        assert!(
            matches!(err, SnapshotStreamError::Overlong { want: 1000 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_oversize_snapshot_is_refused_before_reading() {
        // Nothing is sent at all: the announced length alone is refused.
        let err = receive(Vec::new(), MAX_SNAPSHOT_BYTES + 1, MAX_SNAPSHOT_BYTES, true)
            .await
            .unwrap_err();
        assert!(matches!(err, SnapshotStreamError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_sender_times_out_per_piece() {
        let err = receive(data(500), 1000, 1 << 20, true).await.unwrap_err();
        assert!(matches!(err, SnapshotStreamError::Stalled(_)), "{err}");
        // Having sent everything but the end of the stream is a stall too.
        let err = receive(data(1000), 1000, 1 << 20, true).await.unwrap_err();
        assert!(matches!(err, SnapshotStreamError::Stalled(_)), "{err}");
    }

    #[tokio::test]
    async fn a_source_shorter_than_its_length_is_an_error() {
        let (mut a, _b) = duplex(64 * 1024);
        let err = send_snapshot_data(&mut data(10).as_slice(), &mut a, 11, T)
            .await
            .unwrap_err();
        assert!(matches!(err, SnapshotStreamError::Source(_)), "{err}");
    }

    #[tokio::test]
    async fn working_frames_keep_the_reply_alive() {
        let (mut a, mut b) = duplex(64 * 1024);
        let receiver = tokio::spawn(async move {
            for _ in 0..3 {
                write_frame(&mut a, &RaftReply::Working, MAX_RESPONSE_BYTES)
                    .await
                    .unwrap();
                tokio::time::sleep(T / 2).await;
            }
            write_frame(
                &mut a,
                &RaftReply::SnapshotRefused("bad".into()),
                MAX_RESPONSE_BYTES,
            )
            .await
            .unwrap();
            a
        });
        // Longer in total than one frame timeout, but each gap is shorter.
        let reply = read_snapshot_reply(&mut b, T).await.unwrap();
        assert!(matches!(reply, RaftReply::SnapshotRefused(w) if w == "bad"));
        let a = receiver.await.unwrap();
        drop(a);
        assert!(matches!(
            read_snapshot_reply(&mut b, T).await,
            Err(SnapshotStreamError::NoReply)
        ));
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out() {
        let (_a, mut b) = duplex(1024);
        let err = read_snapshot_reply(&mut b, T).await.unwrap_err();
        assert!(matches!(err, SnapshotStreamError::Stalled(_)), "{err}");
    }
}
