//! Wire protocols: one versioned ALPN per protocol, one `#[non_exhaustive]` message enum per
//! direction, and length-prefixed bincode frames (see `docs/protocol.md`).

pub mod frame;
pub mod km;
pub mod peer;
pub mod proxy;

/// The ALPNs of the group's protocols.
pub const ALPN_PROXY: &[u8] = b"conclave/proxy/1";
pub const ALPN_RAFT: &[u8] = b"conclave/raft/1";
pub const ALPN_PEER: &[u8] = b"conclave/peer/1";

pub use frame::{decode_message, encode_message, read_frame, write_frame, WireError};
