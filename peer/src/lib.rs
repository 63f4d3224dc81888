//! The peer: a member of the group, running an openraft node that holds the chain.
//!
//! # Layout
//! - [`node::run`]: start a peer (identity, store, Raft, server, joining, tasks) until the
//!   shutdown token is cancelled.
//! - `enrol`: the identity key and the key-manager certificate.
//! - `join`: found the group or be admitted through the proxy and the leader.
//! - `leader`: what a leader does: genesis, admissions, key rotations, announcements.
//! - `server`: `conclave/raft/1` and `conclave/peer/1`, with the after-handshake checks.
//! - `network`, `rpc`: openraft's RPCs over QUIC.
//! - `stepdown`: a leader cut off from its majority stops calling itself leader.
//! - `writer`: the author's outbox, one batch in flight, exactly once.
//! - `console`: the console's questions (`/members`, `/chain`, `/verify`, ...), answered in order.
//! - `observer`, `keyring`, `events`: applied blocks → what the user sees; group keys.
//! - `heads`: the signed head exchange between members, and `head_mismatch`.
//! - `liveness`, `voters`: when each member last answered replication; the leader's
//!   replacement of a dead voter by a caught-up learner.
//! - `store`: redb storage (Raft log, state machine, chain, outbox).
//! - `types`: the openraft type configuration.

pub mod console;
pub mod enrol;
pub mod error;
pub mod events;
pub mod heads;
pub mod join;
pub mod keyring;
pub mod leader;
pub mod link;
pub mod liveness;
pub mod network;
pub mod node;
pub mod observer;
pub mod peerlink;
pub mod rpc;
pub mod server;
pub mod status;
pub mod stepdown;
pub mod store;
pub mod types;
pub mod voters;
pub mod writer;

pub use error::PeerError;
