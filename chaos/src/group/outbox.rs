//! What a killed peer's outbox holds, read before it is started again.
//!
//! A line a writer handed to a peer that was then killed may or may not have reached the
//! peer's outbox (enqueueing is committed without fsync, and the line may still have been
//! in the pipe). The outbox decides what the restarted peer will do: a line it holds is
//! sent and answered by the next life; one it lost is gone and its sequence number will be
//! given to the next line. The store is opened the way the peer will open it, on a private
//! copy, so the original is left exactly as the restarted peer will find it.

use std::collections::BTreeSet;
use std::path::Path;

use conclave_peer::store::Store;
use conclave_shared::identity::PublicKey;

use super::GroupError;

/// A stopped peer's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxState {
    /// The sequence number the next line will get.
    pub next_seq: u64,
    /// Sequence numbers stored and not yet answered (pending or in flight): the next life
    /// sends them and prints their outcome.
    pub held: BTreeSet<u64>,
}

/// Reads the outbox of the stopped peer whose store is `store_dir` (its `DATA/raft`).
/// Blocking, and as slow as opening the store (it verifies the chain).
pub fn read_outbox(store_dir: &Path, root: &PublicKey) -> Result<OutboxState, GroupError> {
    let fail = |why: String| GroupError::Outbox {
        dir: store_dir.to_owned(),
        why,
    };
    let copy = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    copy_dir(store_dir, copy.path()).map_err(|e| fail(format!("copying: {e}")))?;
    let store = Store::open(copy.path(), root.clone()).map_err(|e| fail(e.to_string()))?;
    let (_, _, _, outbox) = store.into_parts();
    let next_seq = outbox.next_seq().map_err(|e| fail(e.to_string()))?;
    let mut held: BTreeSet<u64> = outbox
        .pending(usize::MAX, usize::MAX)
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    if let Some((_, seqs)) = outbox.inflight().map_err(|e| fail(e.to_string()))? {
        held.extend(seqs);
    }
    Ok(OutboxState { next_seq, held })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
