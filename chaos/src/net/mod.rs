//! The fault layer: a UDP relay in front of every peer, and the table of faults the relays
//! apply, which a test or the chaos runner changes while the group runs.
//!
//! Each peer listens on its own address and advertises its relay's (`--advertise`), so
//! every other peer, and the proxy, reaches it through the relay; QUIC runs over UDP, so the
//! peers' own code runs unchanged. Every peer sends from its listening socket, so the source
//! address of a datagram names the peer that sent it ([`Faults::register`]).
//!
//! ```text
//!   p1 (listen L1) ──► relay(p2) front R2 ──► back socket for L1 ──► p2 (listen L2)
//!   p1 ◄── R2 ◄────── back socket for L1 ◄────────────────────────── p2 replies
//! ```
//!
//! # Layout
//! - [`faults`]: [`FaultTable`], [`LinkFaults`], [`Node`]: what happens to a datagram.
//! - `relay`: the relay's tasks and delay queue.
//! - here: [`Network`] (the relays) and [`Faults`] (the handle that changes the table).

pub mod faults;
mod relay;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use faults::{Fate, FaultTable, LinkFaults, Node};
pub use relay::{MAX_DATAGRAM_BYTES, MAX_QUEUED_DATAGRAMS, MAX_SOURCES_PER_RELAY};

#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot bind a relay for {name} on 127.0.0.1: {source}")]
    Bind {
        name: String,
        source: std::io::Error,
    },
    #[error("no relay for {0}: call Network::relay first")]
    NoRelay(String),
}

/// A cloneable handle on the fault table; every change takes effect at the next datagram.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultTable>>);

impl Faults {
    /// A std mutex: every use is one short section with no await, and relays only read.
    fn table(&self) -> MutexGuard<'_, FaultTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Datagrams from `addr` are `name`'s from now on.
    pub fn register(&self, name: &str, addr: SocketAddr) {
        self.table().register(name, addr);
    }
    pub fn cut(&self, a: &str, b: &str) {
        self.table().cut(a, b);
    }
    pub fn isolate(&self, name: &str) {
        self.table().isolate(name);
    }
    pub fn split<S: AsRef<str>>(&self, one: &[S], other: &[S]) {
        self.table().split(one, other);
    }
    pub fn heal(&self) {
        self.table().heal();
    }
    pub fn clear(&self) {
        self.table().clear();
    }
    pub fn set_all(&self, faults: LinkFaults) {
        self.table().set_all(faults);
    }
    pub fn set_link(&self, from: &str, to: &str, faults: LinkFaults) {
        self.table().set_link(from, to, faults);
    }
    pub fn is_blocked(&self, from: &str, to: &str) -> bool {
        self.table().is_blocked(from, to)
    }
    pub fn cut_pairs(&self) -> Vec<(String, String)> {
        self.table().cut_pairs()
    }
}

struct Relay {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
}

/// Every relay of a group. Dropping it stops them all.
pub struct Network {
    faults: Faults,
    relays: BTreeMap<String, Relay>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
    seed: u64,
}

impl Network {
    /// No relays yet; each relay's random draws are seeded from `seed` and its rank.
    pub fn new(seed: u64) -> Self {
        Self {
            faults: Faults::default(),
            relays: BTreeMap::new(),
            tasks: JoinSet::new(),
            cancel: CancellationToken::new(),
            seed,
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The address `name` advertises: its relay's, bound now on 127.0.0.1 port 0 if it has
    /// none yet. Datagrams to it are dropped until [`Network::attach`] names the peer's
    /// listening address.
    pub async fn relay(&mut self, name: &str) -> Result<SocketAddr, NetError> {
        if let Some(r) = self.relays.get(name) {
            return Ok(r.addr);
        }
        let bind = |source| NetError::Bind {
            name: name.to_owned(),
            source,
        };
        let front = UdpSocket::bind("127.0.0.1:0").await.map_err(bind)?;
        let addr = front.local_addr().map_err(bind)?;
        let (target, target_rx) = watch::channel(None);
        let rank = self.relays.len() as u64 + 1;
        self.tasks.spawn(relay::run_front(relay::RelayCtx {
            name: name.to_owned(),
            front: Arc::new(front),
            target: target_rx,
            table: self.faults.0.clone(),
            seed: self.seed ^ rank.wrapping_mul(0xd1b5_4a32_d192_ed03),
            cancel: self.cancel.child_token(),
        }));
        self.relays.insert(name.to_owned(), Relay { addr, target });
        Ok(addr)
    }

    /// `name` listens (and sends) on `listen`: its relay forwards there, and its datagrams
    /// are recognised as its own at every relay.
    pub fn attach(&self, name: &str, listen: SocketAddr) -> Result<(), NetError> {
        let relay = self
            .relays
            .get(name)
            .ok_or_else(|| NetError::NoRelay(name.to_owned()))?;
        relay.target.send_replace(Some(listen));
        self.faults.register(name, listen);
        Ok(())
    }

    /// The relay address of `name`, if it has a relay.
    pub fn advertised(&self, name: &str) -> Option<SocketAddr> {
        self.relays.get(name).map(|r| r.addr)
    }

    /// Stops every relay and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests;
