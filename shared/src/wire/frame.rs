//! Length-prefixed frames: a big-endian `u32` length, then that many bytes of bincode.
//!
//! The length is checked against the protocol's maximum before anything is allocated, and the
//! body is decoded with a byte limit, so a forged prefix or a forged inner length costs the
//! sender a refused stream and the receiver nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// No frame of any protocol may be larger than this, whatever its own maximum says.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
const LEN_PREFIX_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message could not be encoded: {0}")]
    Encode(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("i/o error on the stream: {0}")]
    Io(#[from] std::io::Error),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes a message body (without length prefix).
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(msg, bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a whole message body; trailing bytes are an error, so one message has one encoding.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T, max: usize) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = encode_message(msg)?;
    let max = max.min(MAX_FRAME_BYTES);
    if body.len() > max {
        return Err(WireError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max,
    })?;
    let mut buf = Vec::with_capacity(LEN_PREFIX_BYTES + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes. `Ok(None)` means the stream ended cleanly before a
/// frame began; ending inside one is [`WireError::Truncated`].
pub async fn read_frame<R, T>(r: &mut R, max: usize) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    let mut got = 0;
    while got < LEN_PREFIX_BYTES {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    let max = max.min(MAX_FRAME_BYTES);
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    // Allocation is bounded by `max`, checked above.
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(e)
        }
    })?;
    decode_message(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Msg {
        a: u32,
        b: Vec<u8>,
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        let m = Msg {
            a: 7,
            b: vec![1, 2, 3],
        };
        write_frame(&mut buf, &m, 1024).await.unwrap();
        write_frame(&mut buf, &m, 1024).await.unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame::<_, Msg>(&mut r, 1024).await.unwrap(), Some(m));
        assert!(read_frame::<_, Msg>(&mut r, 1024).await.unwrap().is_some());
        assert!(read_frame::<_, Msg>(&mut r, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_forged_length_is_refused_before_allocating() {
        let buf = (1u32 << 30).to_be_bytes();
        let err = read_frame::<_, Msg>(&mut buf.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::TooLarge { len, .. } if len == 1 << 30));
    }

    #[tokio::test]
    async fn a_forged_inner_length_is_a_decode_error() {
        // Field `b` claims 2^40 elements inside a 12-byte frame.
        let mut body = vec![7u8, 253];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        let err = read_frame::<_, Msg>(&mut buf.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Decode(_)), "{err:?}");
    }

    #[tokio::test]
    async fn truncation_and_trailing_bytes_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Msg { a: 1, b: vec![9] }, 64)
            .await
            .unwrap();
        let cut = &buf[..buf.len() - 1];
        assert!(matches!(
            read_frame::<_, Msg>(&mut &cut[..], 64).await,
            Err(WireError::Truncated)
        ));
        let mut body = encode_message(&Msg { a: 1, b: vec![] }).unwrap();
        body.push(0);
        assert!(matches!(
            decode_message::<Msg>(&body),
            Err(WireError::Trailing(1))
        ));
    }

    #[tokio::test]
    async fn writing_an_oversized_message_is_refused() {
        let mut buf = Vec::new();
        let err = write_frame(
            &mut buf,
            &Msg {
                a: 1,
                b: vec![0; 100],
            },
            50,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }));
        assert!(buf.is_empty());
    }
}
