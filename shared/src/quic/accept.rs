//! The accept loop every server shares: a cap on concurrent connections, one task per
//! connection, each with a [`Slot`] that tells the loop when the connection sits idle.
//!
//! Keep-alives keep a connection open for as long as the peer's endpoint lives, so a cap
//! alone would let anyone who completes a handshake (the key manager and the proxy serve
//! strangers; a registered outsider may connect to a peer) hold every place with connections
//! that never ask anything, and real members would be refused for good. So at the cap a
//! newcomer takes the place of the connection that has been idle longest (handshaking, or
//! waiting for its next stream), provided that one has been idle for at least
//! [`EVICT_IDLE_AFTER_MS`]; the evicted connection is closed with a reason. Only when every
//! connection is busy, or has just arrived, is the newcomer refused at once (never queued).
//! A connection that keeps asking cannot be told from a client, and keeps its place.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// At the cap, a connection idle at least this long may be closed to let a newcomer in.
/// Long enough that a burst of newcomers does not churn connections that just arrived,
/// short enough that a real client retrying is soon let in.
pub const EVICT_IDLE_AFTER_MS: u64 = 1_000;

/// The application close code of a connection closed to make room for another.
pub const EVICTED_CODE: u32 = 2;
/// The close reason of a connection closed to make room for another.
pub const EVICTED_REASON: &[u8] = b"idle connection closed: the server is at its connection limit";

/// `idle_since_ms` while the connection is serving a request.
const BUSY: u64 = u64::MAX;

/// What the accept loop and one connection's task share.
struct SlotState {
    remote: SocketAddr,
    /// Milliseconds since the loop started when the connection last became idle, or
    /// [`BUSY`].
    idle_since_ms: AtomicU64,
    /// Set once the loop chose this connection to make room: it is no longer counted.
    evicted: AtomicBool,
    evict: CancellationToken,
    epoch: Instant,
}

impl SlotState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One connection's place under the cap, handed to the connection's task.
pub struct Slot {
    state: Arc<SlotState>,
    shutdown: CancellationToken,
}

impl Slot {
    /// Cancelled when the server shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Completes the handshake within `timeout`. `None` (logged) if it fails, times out,
    /// the server shuts down, or the place is given to a newcomer first.
    pub async fn handshake(
        &self,
        incoming: quinn::Incoming,
        timeout: Duration,
    ) -> Option<quinn::Connection> {
        let result = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            _ = self.state.evict.cancelled() => {
                info!("{}", String::from_utf8_lossy(EVICTED_REASON));
                return None;
            }
            r = tokio::time::timeout(timeout, incoming) => r,
        };
        match result {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                warn!("handshake failed: {e}");
                None
            }
            Err(_) => {
                warn!("handshake timed out after {timeout:?}");
                None
            }
        }
    }

    /// Waits for the connection's next bidirectional stream, counting the wait as idle
    /// time; the connection is busy from then until the next call. `None` when the
    /// connection closed, the server shuts down, or the place was given to a newcomer (then
    /// the connection is closed with [`EVICTED_REASON`]).
    pub async fn next_stream(
        &self,
        conn: &quinn::Connection,
    ) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        let s = &self.state;
        s.idle_since_ms.store(s.now_ms(), Ordering::SeqCst);
        let stream = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            _ = s.evict.cancelled() => {
                info!("{}", String::from_utf8_lossy(EVICTED_REASON));
                conn.close(EVICTED_CODE.into(), EVICTED_REASON);
                return None;
            }
            stream = conn.accept_bi() => stream,
        };
        s.idle_since_ms.store(BUSY, Ordering::SeqCst);
        match stream {
            Ok(s) => Some(s),
            Err(e) => {
                debug!("connection closed: {e}");
                None
            }
        }
    }
}

/// Accepts connections on `endpoint` until `shutdown` is cancelled or the endpoint closes,
/// running `handle(incoming, slot)` for each in its own task while fewer than `max` run (see
/// the module docs for what happens at the cap). Returns the still-running tasks, so the
/// caller decides how to drain them.
pub async fn accept_connections<F, Fut>(
    endpoint: &quinn::Endpoint,
    max: usize,
    shutdown: &CancellationToken,
    mut handle: F,
) -> JoinSet<()>
where
    F: FnMut(quinn::Incoming, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let epoch = Instant::now();
    let mut slots: HashMap<tokio::task::Id, Arc<SlotState>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                let counted = slots.values().filter(|s| !s.evicted.load(Ordering::SeqCst)).count();
                if counted >= max && !evict_idlest(&slots, epoch) {
                    warn!(%remote, "too many connections; refusing");
                    incoming.refuse();
                    continue;
                }
                let state = Arc::new(SlotState {
                    remote,
                    // A handshake not yet done is idle time: a stalled one may be evicted.
                    idle_since_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
                    evicted: AtomicBool::new(false),
                    evict: CancellationToken::new(),
                    epoch,
                });
                let slot = Slot { state: state.clone(), shutdown: shutdown.child_token() };
                let id = tasks.spawn(handle(incoming, slot)).id();
                slots.insert(id, state);
            }
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        warn!("connection task failed: {e}");
                        e.id()
                    }
                };
                slots.remove(&id);
            }
        }
    }
    tasks
}

/// Gives the place of the connection idle longest, if idle for [`EVICT_IDLE_AFTER_MS`], to
/// a newcomer; returns whether there was one.
fn evict_idlest(slots: &HashMap<tokio::task::Id, Arc<SlotState>>, epoch: Instant) -> bool {
    let now = epoch.elapsed().as_millis() as u64;
    let idlest = slots
        .values()
        .filter(|s| !s.evicted.load(Ordering::SeqCst))
        .filter_map(|s| {
            let since = s.idle_since_ms.load(Ordering::SeqCst);
            (since != BUSY && now.saturating_sub(since) >= EVICT_IDLE_AFTER_MS)
                .then_some((since, s))
        })
        .min_by_key(|(since, _)| *since);
    let Some((since, victim)) = idlest else {
        return false;
    };
    victim.evicted.store(true, Ordering::SeqCst);
    victim.evict.cancel();
    info!(
        remote = %victim.remote,
        idle_ms = now.saturating_sub(since),
        "at the connection limit: closing the connection idle longest to make room"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::test_key;
    use crate::quic::{client_config, server_config, ClientAuth, ServerTrust, TlsIdentity};

    const ALPN: &[u8] = b"conclave/test/1";
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Acknowledges every stream with one byte at once, then answers with what it read once
    /// the client finished it: a stream left open keeps its connection busy.
    async fn echo(incoming: quinn::Incoming, slot: Slot) {
        let Some(conn) = slot.handshake(incoming, DEADLINE).await else {
            return;
        };
        while let Some((mut send, mut recv)) = slot.next_stream(&conn).await {
            let _ = send.write_all(b"+").await;
            let Ok(bytes) = recv.read_to_end(64).await else {
                return;
            };
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
        }
    }

    async fn connect(
        ep: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let cfg = client_config(
            None,
            ServerTrust::PinnedRoot(test_key(0).public().clone()),
            &[ALPN],
        )
        .unwrap();
        let connecting = ep
            .connect_with(cfg, addr, crate::quic::SERVER_NAME)
            .unwrap();
        tokio::time::timeout(DEADLINE, connecting).await.unwrap()
    }

    /// Opens a stream and sends a byte without finishing, and waits until the server has
    /// taken it up: the connection is busy from then until [`finish`].
    async fn busy(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        let mut ack = [0u8; 1];
        tokio::time::timeout(DEADLINE, recv.read_exact(&mut ack))
            .await
            .unwrap()
            .unwrap();
        (send, recv)
    }

    async fn finish(mut s: (quinn::SendStream, quinn::RecvStream)) -> Vec<u8> {
        s.0.finish().unwrap();
        tokio::time::timeout(DEADLINE, s.1.read_to_end(64))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn at_the_cap_busy_connections_keep_their_place_and_an_idle_one_gives_it_up() {
        let tls = TlsIdentity::new(test_key(0), None).unwrap();
        let server = quinn::Endpoint::server(
            server_config(&tls, ClientAuth::None, &[ALPN]).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let serving = tokio::spawn(async move {
            let mut tasks = accept_connections(&server, 2, &stop, echo).await;
            tasks.abort_all();
        });
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

        // Two connections, both in the middle of a request: the cap is reached and nobody
        // is idle, so a third is refused however long they have been there.
        let a = connect(&ep, addr).await.unwrap();
        let b = connect(&ep, addr).await.unwrap();
        let a_req = busy(&a).await;
        let b_req = busy(&b).await;
        let refused = connect(&ep, addr).await.unwrap_err();
        assert!(
            matches!(refused, quinn::ConnectionError::ConnectionClosed(_)),
            "{refused:?}"
        );

        // B's request completes and B sits idle: a newcomer soon takes its place.
        assert_eq!(finish(b_req).await, b"x");
        let until = Instant::now() + DEADLINE;
        let c = loop {
            if let Ok(c) = connect(&ep, addr).await {
                break c;
            }
            assert!(
                Instant::now() < until,
                "an idle connection was never evicted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let why = tokio::time::timeout(DEADLINE, b.closed()).await.unwrap();
        assert!(
            matches!(&why, quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == EVICTED_CODE.into() && close.reason.as_ref() == EVICTED_REASON),
            "{why:?}"
        );
        // A, busy all along, kept its place and is served; so is the newcomer.
        assert!(a.close_reason().is_none());
        assert_eq!(finish(a_req).await, b"x");
        assert_eq!(finish(busy(&c).await).await, b"x");

        shutdown.cancel();
        serving.await.unwrap();
    }
}
