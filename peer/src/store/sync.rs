//! Group commit for the peer's one redb file: whoever needs its earlier writes durable (the
//! Raft log after an append, the outbox before a batch is sent) asks the syncer, and one
//! `Durability::Immediate` commit serves everyone who asked before it began. redb persists
//! every earlier non-durable commit with a durable one, so the writes themselves skip the
//! fsync. On this machine a durable redb commit costs about as much as the rest of a write's
//! path together, and several writers' requests often share one.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Weak};

use openraft::storage::LogFlushed;
use redb::{Database, Durability};

use super::error::{DbResult, StoreError};
use crate::types::TypeConfig;

/// Someone waiting for durability.
enum Waiter {
    /// openraft, after an append: told through its callback.
    Raft(LogFlushed<TypeConfig>),
    /// Anyone else.
    Notify(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// A handle on the syncer thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub(crate) struct Syncer {
    waiting: Sender<Waiter>,
}

impl Syncer {
    pub(crate) fn new(db: &Arc<Database>) -> Self {
        let (waiting, rx) = channel();
        // A weak handle, so that the database closes when its users drop it (a reopen must
        // not find it still open).
        let db = Arc::downgrade(db);
        let spawned = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || run(&db, &rx));
        if let Err(e) = spawned {
            // Without it nothing is ever reported durable: Raft and the writer stall, loudly.
            tracing::error!("cannot start the store's sync thread: {e}");
        }
        Self { waiting }
    }

    /// Calls `callback` once every commit made before this call is durable.
    pub(crate) fn raft(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError> {
        self.waiting.send(Waiter::Raft(callback)).map_err(|unsent| {
            if let Waiter::Raft(cb) = unsent.0 {
                cb.log_io_completed(Err(std::io::Error::other(
                    "the store's sync thread stopped",
                )));
            }
            StoreError::Task("the store's sync thread stopped".into())
        })
    }

    /// Returns once every commit made before this call is durable.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .send(Waiter::Notify(tx))
            .map_err(|_| StoreError::Task("the store's sync thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Task("the store's sync thread stopped".into()))?
            .map_err(StoreError::Task)
    }
}

fn run(db: &Weak<Database>, waiting: &Receiver<Waiter>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        // Every waiter's writes committed before it queued itself, so this commit, which
        // begins after, persists all of them.
        let result = match db.upgrade() {
            Some(db) => durable_commit(&db).map_err(|e| {
                tracing::error!("cannot make the store durable: {e}");
                e.to_string()
            }),
            None => Err("the store is closed".to_string()),
        };
        for w in batch {
            match w {
                Waiter::Raft(cb) => {
                    cb.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Waiter::Notify(tx) => {
                    let _ = tx.send(result.clone());
                }
            }
        }
    }
}

/// An empty durable commit: redb persists every non-durable commit before it.
pub(crate) fn durable_commit(db: &Database) -> Result<(), StoreError> {
    let mut tx = db.begin_write().db()?;
    tx.set_durability(Durability::Immediate).db()?;
    tx.commit().db()?;
    Ok(())
}
