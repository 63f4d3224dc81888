//! The hashes of the most recent blocks, so that a checkpoint can be checked while streaming.

use std::fmt;
use std::sync::Arc;

use super::BlockHash;

/// How far back a checkpoint may vouch: a checkpoint at height `h` names one of the heights
/// `h - CHECKPOINT_WINDOW ..= h - 1`. [`super::ChainState`] keeps this many recent hashes
/// (2 MiB), whatever the length of the chain.
pub const CHECKPOINT_WINDOW: u64 = 65_536;

/// Hashes per chunk. Chunks are shared between clones of a state and copied only when
/// written, so cloning a [`super::ChainState`] (a peer does it after every apply) costs a
/// few hundred pointer copies, and the next block copies one 16 KiB chunk, not 2 MiB.
const CHUNK: usize = 512;
const CHUNKS: usize = (CHECKPOINT_WINDOW as usize) / CHUNK;

/// A ring of the hashes of heights `end - CHECKPOINT_WINDOW .. end` (from 0 while the chain is
/// shorter), indexed by height modulo the window. Heights are pushed in order, from 0.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct HashWindow {
    chunks: Vec<Arc<Vec<BlockHash>>>,
    /// One past the last height pushed: the number of hashes ever pushed.
    end: u64,
}

impl HashWindow {
    /// One past the last height held.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Adds the hash of height [`HashWindow::end`], dropping the oldest once full.
    pub(crate) fn push(&mut self, hash: BlockHash) {
        let slot = (self.end % CHECKPOINT_WINDOW) as usize;
        let (chunk, at) = (slot / CHUNK, slot % CHUNK);
        if chunk == self.chunks.len() {
            self.chunks.push(Arc::new(vec![BlockHash::ZERO; CHUNK]));
        }
        Arc::make_mut(&mut self.chunks[chunk])[at] = hash;
        self.end += 1;
    }

    /// The hash of `height`, if it is still held.
    pub(crate) fn get(&self, height: u64) -> Option<BlockHash> {
        if height >= self.end || self.end - height > CHECKPOINT_WINDOW {
            return None;
        }
        let slot = (height % CHECKPOINT_WINDOW) as usize;
        self.chunks
            .get(slot / CHUNK)
            .and_then(|c| c.get(slot % CHUNK))
            .copied()
    }
}

impl fmt::Debug for HashWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.end.saturating_sub(CHECKPOINT_WINDOW);
        write!(f, "HashWindow({start}..{})", self.end)
    }
}

const _: () = assert!(CHUNKS * CHUNK == CHECKPOINT_WINDOW as usize);

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> BlockHash {
        BlockHash::of(&n.to_be_bytes())
    }

    #[test]
    fn keeps_exactly_the_last_window_of_hashes() {
        let mut w = HashWindow::default();
        assert_eq!(w.get(0), None);
        let total = CHECKPOINT_WINDOW + 1000;
        for n in 0..total {
            w.push(h(n));
        }
        assert_eq!(w.end(), total);
        assert_eq!(w.chunks.len(), CHUNKS);
        assert_eq!(w.get(total), None);
        assert_eq!(w.get(total - 1), Some(h(total - 1)));
        assert_eq!(
            w.get(total - CHECKPOINT_WINDOW),
            Some(h(total - CHECKPOINT_WINDOW))
        );
        assert_eq!(w.get(total - CHECKPOINT_WINDOW - 1), None);
        assert_eq!(w.get(0), None);
    }

    #[test]
    fn clones_share_chunks_until_written() {
        let mut a = HashWindow::default();
        let n = CHUNK as u64 + 1;
        for i in 0..n {
            a.push(h(i));
        }
        let mut b = a.clone();
        b.push(h(9999));
        assert!(
            Arc::ptr_eq(&a.chunks[0], &b.chunks[0]),
            "an unwritten chunk is shared"
        );
        assert!(
            !Arc::ptr_eq(&a.chunks[1], &b.chunks[1]),
            "a written chunk is copied"
        );
        assert_eq!(a.get(n), None);
        assert_eq!(b.get(n), Some(h(9999)));
        assert_eq!(a.get(CHUNK as u64), b.get(CHUNK as u64));
        assert_ne!(a, b);
    }
}
