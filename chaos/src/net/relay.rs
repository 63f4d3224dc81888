//! One relay: the address a peer advertises, forwarding to the address it listens on.
//!
//! A datagram arriving at the relay's front socket from source `S` is sent on to the peer
//! from a back socket of `S`'s own, bound when `S` first sends. The peer's replies arrive at
//! that back socket, so the relay knows they are for `S` and sends them back from the front
//! socket, where `S` expects its peer to be. One back socket per source keeps every QUIC
//! connection's 4-tuple stable without parsing a single byte of QUIC.
//!
//! Every datagram, either way, gets its fate from the [`FaultTable`]: dropped, or sent once
//! or twice, at once or after a delay. Delayed datagrams wait in a [`DelayLine`] owned by the
//! task of the socket that sends them.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::faults::{FaultTable, Node};

/// The largest UDP payload.
pub const MAX_DATAGRAM_BYTES: usize = 65_535;
/// Delayed datagrams one socket holds; more are dropped, as a full router queue would.
pub const MAX_QUEUED_DATAGRAMS: usize = 4_096;
/// Distinct sources one relay serves; datagrams from more are dropped and logged.
pub const MAX_SOURCES_PER_RELAY: usize = 256;

/// A datagram waiting for its time.
struct Due {
    at: Instant,
    /// Arrival order, so equal times leave in the order they came.
    n: u64,
    bytes: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.n) == (other.at, other.n)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.n).cmp(&(self.at, self.n))
    }
}

/// Datagrams held back by a delay, sent when due.
#[derive(Default)]
pub(crate) struct DelayLine {
    heap: BinaryHeap<Due>,
    n: u64,
}

impl DelayLine {
    /// Sends at once what has no delay and queues the rest; `copies` is the datagram's fate.
    async fn dispatch(
        &mut self,
        copies: &[Duration],
        bytes: &[u8],
        socket: &Arc<UdpSocket>,
        to: SocketAddr,
    ) {
        for delay in copies {
            if delay.is_zero() {
                send(socket, bytes, to).await;
            } else if self.heap.len() >= MAX_QUEUED_DATAGRAMS {
                debug!(%to, "delay queue full; datagram dropped");
            } else {
                self.n += 1;
                self.heap.push(Due {
                    at: Instant::now() + *delay,
                    n: self.n,
                    bytes: bytes.to_vec(),
                    socket: socket.clone(),
                    to,
                });
            }
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|d| d.at)
    }

    async fn send_due(&mut self) {
        let now = Instant::now();
        while self.heap.peek().is_some_and(|d| d.at <= now) {
            if let Some(d) = self.heap.pop() {
                send(&d.socket, &d.bytes, d.to).await;
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    // UDP promises nothing, and neither does a relay: a failed send is a lost datagram.
    if let Err(e) = socket.send_to(bytes, to).await {
        debug!(%to, "relay send failed: {e}");
    }
}

/// Sleeps until `at`, or forever when nothing waits.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a relay's tasks share.
#[derive(Clone)]
pub(crate) struct RelayCtx {
    /// The peer behind this relay.
    pub name: String,
    pub front: Arc<UdpSocket>,
    /// The peer's listening address; `None` until it is known (datagrams are dropped).
    pub target: watch::Receiver<Option<SocketAddr>>,
    pub table: Arc<Mutex<FaultTable>>,
    pub seed: u64,
    pub cancel: CancellationToken,
}

impl RelayCtx {
    fn fate(&self, from: &Node, to: &Node, rng: &mut StdRng) -> Vec<Duration> {
        // A std mutex: held for one table look-up, never across an await.
        match self.table.lock() {
            Ok(t) => t.fate(from, to, rng).copies,
            Err(p) => p.into_inner().fate(from, to, rng).copies,
        }
    }

    fn node_of(&self, addr: SocketAddr) -> Node {
        match self.table.lock() {
            Ok(t) => t.node_of(addr),
            Err(p) => p.into_inner().node_of(addr),
        }
    }
}

/// The front socket's task: takes datagrams for the peer and sends them on.
pub(crate) async fn run_front(ctx: RelayCtx) {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut line = DelayLine::default();
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let me = Node::Peer(ctx.name.clone());
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = until(line.next_at()) => line.send_due().await,
            got = ctx.front.recv_from(&mut buf) => {
                let (len, src) = match got {
                    Ok(g) => g,
                    Err(e) => {
                        // An ICMP error from an earlier send; the socket still works.
                        debug!(relay = %ctx.name, "relay receive failed: {e}");
                        continue;
                    }
                };
                let Some(target) = *ctx.target.borrow() else {
                    continue;
                };
                let back = match backs.get(&src) {
                    Some(b) => b.clone(),
                    None => {
                        if backs.len() >= MAX_SOURCES_PER_RELAY {
                            warn!(relay = %ctx.name, %src, "too many sources; datagram dropped");
                            continue;
                        }
                        let socket = match UdpSocket::bind("127.0.0.1:0").await {
                            Ok(s) => Arc::new(s),
                            Err(e) => {
                                warn!(relay = %ctx.name, "cannot bind a back socket: {e}");
                                continue;
                            }
                        };
                        let seed = ctx.seed ^ (backs.len() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        tasks.spawn(run_back(ctx.clone(), socket.clone(), src, seed));
                        backs.insert(src, socket.clone());
                        socket
                    }
                };
                let from = ctx.node_of(src);
                let copies = ctx.fate(&from, &me, &mut rng);
                line.dispatch(&copies, &buf[..len], &back, target).await;
            }
        }
    }
    tasks.shutdown().await;
}

/// A back socket's task: takes the peer's replies to `source` and sends them from the front.
async fn run_back(ctx: RelayCtx, socket: Arc<UdpSocket>, source: SocketAddr, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut line = DelayLine::default();
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let me = Node::Peer(ctx.name.clone());
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = until(line.next_at()) => line.send_due().await,
            got = socket.recv_from(&mut buf) => {
                let (len, from) = match got {
                    Ok(g) => g,
                    Err(e) => {
                        debug!(relay = %ctx.name, "relay receive failed: {e}");
                        continue;
                    }
                };
                if Some(from) != *ctx.target.borrow() {
                    debug!(relay = %ctx.name, %from, "datagram from a stranger at a back socket; dropped");
                    continue;
                }
                // Looked up each time: a source may be registered after it first sent.
                let to = ctx.node_of(source);
                let copies = ctx.fate(&me, &to, &mut rng);
                line.dispatch(&copies, &buf[..len], &ctx.front, source).await;
            }
        }
    }
}
