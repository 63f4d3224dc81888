//! Reading a stopped peer's chain into a [`MemberChain`].
//!
//! The store is opened read-only with `conclave_peer::store::inspect::BlockFile`, which
//! verifies nothing (unlike `Store::open`, which refuses a damaged store outright): a block
//! that cannot be read ends the chain there, and `chains_verify` reports it at its height
//! while the other checks still see every block before it.

use std::path::{Path, PathBuf};

use conclave_peer::node::STORE_DIR;
use conclave_peer::store::inspect::{BlockFile, InspectError};
use thiserror::Error;

use crate::model::MemberChain;

/// Why a member's chain could not be read at all.
#[derive(Debug, Error)]
pub enum ReadChainError {
    #[error("cannot read {member}'s chain in {dir}: {source}")]
    Open {
        member: String,
        dir: PathBuf,
        /// Boxed: redb's errors are large, and this is returned on the good path too.
        source: Box<InspectError>,
    },
}

/// Reads `member`'s chain from its store directory (the peer's `DATA_DIR/raft`). The peer
/// must be stopped: redb locks a store that is in use.
pub fn read_store(member: &str, store_dir: &Path) -> Result<MemberChain, ReadChainError> {
    let file = BlockFile::open(store_dir).map_err(|source| ReadChainError::Open {
        member: member.to_owned(),
        dir: store_dir.to_owned(),
        source: Box::new(source),
    })?;
    Ok(MemberChain::from_read(member, file.blocks(0)))
}

/// Reads `member`'s chain from the peer's data directory (the one holding its key and
/// its [`STORE_DIR`]).
pub fn read_peer(member: &str, data_dir: &Path) -> Result<MemberChain, ReadChainError> {
    read_store(member, &data_dir.join(STORE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_store_is_an_error_naming_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_peer("carol", dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read carol's chain"),
            "{err}"
        );
    }
}
