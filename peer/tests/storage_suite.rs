//! openraft's storage conformance suite over the peer's redb store.
//!
//! The suite applies only blank and membership entries and moves a snapshot of a state
//! machine with no chain in it, so it checks the Raft side of the store; the chain side is
//! covered by the unit tests in `peer/src/store/tests`.

use conclave_peer::store::{LogStore, StateMachineStore, Store};
use conclave_peer::types::{StorageError, TypeConfig};
use conclave_shared::identity::{Identity, PublicKey};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

struct Builder {
    root: PublicKey,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let store = Store::open(dir.path(), self.root.clone())
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn the_store_passes_openraft_storage_suite() {
    let root = Identity::generate(2048).expect("root key");
    let builder = Builder {
        root: root.public().clone(),
    };
    Suite::test_all(builder).expect("openraft storage suite");
}
