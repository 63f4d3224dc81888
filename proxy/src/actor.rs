//! The one owner of the group state: an actor on a blocking thread, fed over a bounded
//! channel with `oneshot` replies.
//!
//! Decisions must be serialised (two askers at the same instant must not both get the lease)
//! and each change must be durable before it is answered, which means an fsync inside the
//! critical section. A thread of the blocking pool owns the state and the database and does
//! exactly that, so no lock is held across an `.await` and the runtime never waits on disk.

use conclave_shared::wire::proxy::{FromProxy, LeaderInfo};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::info;

use crate::announce::{Refusal, VerifiedAnnouncement};
use crate::error::ProxyError;
use crate::state::{Decision, GroupState, Votes};
use crate::store::Store;

/// Requests waiting for the actor beyond this make their senders wait (backpressure).
pub const STATE_QUEUE: usize = 64;

/// What an announcement came to, with the leader the proxy knows afterwards.
#[derive(Debug)]
pub struct AnnounceOutcome {
    pub result: Result<Decision, Refusal>,
    pub leader: Option<LeaderInfo>,
}

enum Command {
    WhereIsLeader {
        asker: String,
        reply: oneshot::Sender<Result<FromProxy, ProxyError>>,
    },
    Announce {
        announcement: Box<VerifiedAnnouncement>,
        votes: Option<Votes>,
        reply: oneshot::Sender<Result<AnnounceOutcome, ProxyError>>,
    },
    Snapshot {
        reply: oneshot::Sender<GroupState>,
    },
}

/// A cloneable handle on the state actor.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Command>,
}

fn stopped() -> ProxyError {
    ProxyError::Store("the proxy's state task has stopped".into())
}

impl StateHandle {
    /// Starts the actor. It ends, closing the database, once every handle is dropped; await
    /// the returned task to know the database is closed.
    pub fn spawn(store: Store, state: GroupState, lease_ms: u64) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(STATE_QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            Actor {
                store,
                state,
                lease_ms,
            }
            .run(rx)
        });
        (Self { tx }, task)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ProxyError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// `WhereIsLeader` from the member named `asker`.
    pub async fn where_is_leader(&self, asker: String) -> Result<FromProxy, ProxyError> {
        self.ask(|reply| Command::WhereIsLeader { asker, reply })
            .await?
    }

    /// A checked announcement; `votes`, once the known voters were asked about it (see
    /// `GroupState::announce`). Never waits on the network: a claim that needs confirming
    /// comes back as `Decision::Confirm`, for the caller to ask the voters and submit again.
    pub async fn announce(
        &self,
        announcement: VerifiedAnnouncement,
        votes: Option<Votes>,
    ) -> Result<AnnounceOutcome, ProxyError> {
        self.ask(|reply| Command::Announce {
            announcement: Box::new(announcement),
            votes,
            reply,
        })
        .await?
    }

    /// A copy of the current state.
    pub async fn snapshot(&self) -> Result<GroupState, ProxyError> {
        self.ask(|reply| Command::Snapshot { reply }).await
    }
}

struct Actor {
    store: Store,
    state: GroupState,
    lease_ms: u64,
}

impl Actor {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            // A requester that gave up (timeout, shutdown) no longer listens; the change it
            // caused is durable all the same.
            match cmd {
                Command::WhereIsLeader { asker, reply } => {
                    let _ = reply.send(self.where_is_leader(&asker));
                }
                Command::Announce {
                    announcement,
                    votes,
                    reply,
                } => {
                    let _ = reply.send(self.announce(&announcement, votes.as_ref()));
                }
                Command::Snapshot { reply } => {
                    let _ = reply.send(self.state.clone());
                }
            }
        }
    }

    /// Decides on a copy and adopts it only once it is on disk, so memory never runs ahead
    /// of what a restart would find.
    fn where_is_leader(&mut self, asker: &str) -> Result<FromProxy, ProxyError> {
        let mut next = self.state.clone();
        let now = conclave_shared::now_ms();
        let (answer, changed) = next.where_is_leader(asker, now, self.lease_ms, fresh_group_id);
        if changed {
            self.store.save(&next)?;
            if let FromProxy::Bootstrap { group_id, lease_ms } = &answer {
                info!(holder = %asker, group = %hex::encode(group_id), lease_ms, "bootstrap lease granted");
            }
            self.state = next;
        }
        Ok(answer)
    }

    fn announce(
        &mut self,
        v: &VerifiedAnnouncement,
        votes: Option<&Votes>,
    ) -> Result<AnnounceOutcome, ProxyError> {
        let mut next = self.state.clone();
        let result = next.announce(v, votes);
        if matches!(result, Ok(Decision::Accepted(_))) {
            self.store.save(&next)?;
            self.state = next;
        }
        Ok(AnnounceOutcome {
            result,
            leader: self.state.leader_info(),
        })
    }
}

fn fresh_group_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}
