//! Background durability for the peer's redb file: its writes (applied blocks, the outbox)
//! skip the fsync, and about once a second the state machine asks this thread for one
//! `Durability::Immediate` commit, which persists every earlier non-durable commit, so that
//! a restart replays little of the log. Nothing on a write's path waits for it: the Raft
//! log has its own WAL, and the batch in flight its journal.
//!
//! Every durable commit here syncs the Raft log (`wal/`) first: the state machine's commits
//! it persists were applied from log entries, and a restart must never find the chain ahead
//! of the log it came from (when both were in redb, commit order gave this for free).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Weak};

use redb::{Database, Durability};

use super::error::{DbResult, StoreError};
use super::wal::Wal;

/// Someone waiting for durability (a dropped receiver only asked for it to happen soon).
type Waiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// A handle on the syncer thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub(crate) struct Syncer {
    waiting: Sender<Waiter>,
    wal: Weak<Wal>,
}

impl Syncer {
    pub(crate) fn new(db: &Arc<Database>, wal: &Arc<Wal>) -> Self {
        let (waiting, rx) = channel();
        // Weak handles, so that the files close when their users drop them (a reopen must
        // not find the database still open).
        let db = Arc::downgrade(db);
        let wal = Arc::downgrade(wal);
        let thread_wal = wal.clone();
        let spawned = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || run(&db, &thread_wal, &rx));
        if let Err(e) = spawned {
            // Without it nothing is ever reported durable: Raft and the writer stall, loudly.
            tracing::error!("cannot start the store's sync thread: {e}");
        }
        Self { waiting, wal }
    }

    /// Makes the Raft log's appends durable, before a durable commit of the database.
    pub(crate) fn sync_wal(&self) -> Result<(), StoreError> {
        match self.wal.upgrade() {
            Some(wal) => wal.sync(),
            None => Ok(()),
        }
    }

    /// Asks for a durable commit soon, without waiting for it.
    pub(crate) fn nudge(&self) {
        let (tx, _) = tokio::sync::oneshot::channel();
        let _ = self.waiting.send(tx);
    }
}

fn run(db: &Weak<Database>, wal: &Weak<Wal>, waiting: &Receiver<Waiter>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        // Every waiter's writes committed before it queued itself, so this commit, which
        // begins after, persists all of them.
        let wal_synced = match wal.upgrade() {
            Some(wal) => wal.sync(),
            None => Ok(()),
        };
        let result = match db.upgrade() {
            Some(db) => wal_synced.and_then(|()| durable_commit(&db)).map_err(|e| {
                tracing::error!("cannot make the store durable: {e}");
                e.to_string()
            }),
            None => Err("the store is closed".to_string()),
        };
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}

/// An empty durable commit: redb persists every non-durable commit before it. Callers
/// sync the WAL first (see the module's docs).
fn durable_commit(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().db()?;
    tx.set_durability(Durability::Immediate).db()?;
    tx.commit().db()?;
    Ok(())
}
