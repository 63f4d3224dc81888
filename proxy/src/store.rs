//! The proxy's durable state in one redb file.
//!
//! The whole [`GroupState`] is one small record (a group id, a leader, at most
//! `MAX_MEMBERS` members, a lease), written in one transaction with immediate durability, so
//! it is replaced wholly or not at all and every change is on disk before the answer that
//! depends on it is sent. A proxy that established a group and crashed finds it again and
//! never offers a second bootstrap.
//!
//! Tables: `meta` (`format_version` → u64) and `state` (`group` → bincode of [`GroupState`],
//! decoded with a byte limit like any untrusted input).

use std::path::Path;

use conclave_shared::wire::{decode_message, encode_message};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::ProxyError;
use crate::state::GroupState;

/// Bumped when the stored shape changes; an unknown version is refused, never guessed at.
pub const STORE_FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const FORMAT: &str = "format_version";
const GROUP: &str = "group";

pub struct Store {
    db: Database,
}

fn db_err(e: impl Into<redb::Error>) -> ProxyError {
    ProxyError::Store(e.into().to_string())
}

impl Store {
    /// Opens or creates the database, refusing one written by an unknown format version.
    pub fn open(path: &Path) -> Result<Self, ProxyError> {
        let db = Database::create(path).map_err(|e| {
            ProxyError::Store(format!(
                "cannot open {}: {}",
                path.display(),
                redb::Error::from(e)
            ))
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta.get(FORMAT).map_err(db_err)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(FORMAT, STORE_FORMAT_VERSION).map_err(db_err)?;
                }
                Some(STORE_FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(ProxyError::Store(format!(
                        "{} has store format {v}; this build reads only {STORE_FORMAT_VERSION}",
                        path.display()
                    )))
                }
            }
            tx.open_table(STATE).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// The stored state, or the empty state of a proxy that has seen nobody yet.
    pub fn load(&self) -> Result<GroupState, ProxyError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(STATE).map_err(db_err)?;
        let Some(bytes) = table.get(GROUP).map_err(db_err)? else {
            return Ok(GroupState::default());
        };
        decode_message(bytes.value())
            .map_err(|e| ProxyError::Store(format!("stored group state is corrupt: {e}")))
    }

    /// Replaces the stored state; returns once it is durable.
    pub fn save(&self, state: &GroupState) -> Result<(), ProxyError> {
        let bytes = encode_message(state)
            .map_err(|e| ProxyError::Store(format!("cannot encode the group state: {e}")))?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(STATE)
            .map_err(db_err)?
            .insert(GROUP, bytes.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Lease;

    #[test]
    fn state_round_trips_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), GroupState::default());
        let state = GroupState {
            group: None,
            lease: Some(Lease {
                group_id: [3; 16],
                holder: "alice".into(),
                expires_at_ms: 42,
            }),
        };
        store.save(&state).unwrap();
        drop(store);
        assert_eq!(Store::open(&path).unwrap().load().unwrap(), state);
    }

    #[test]
    fn an_unknown_format_or_corrupt_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.redb");
        {
            let store = Store::open(&path).unwrap();
            let tx = store.db.begin_write().unwrap();
            tx.open_table(STATE)
                .unwrap()
                .insert(GROUP, [0xffu8; 9].as_slice())
                .unwrap();
            tx.commit().unwrap();
            assert!(matches!(store.load(), Err(ProxyError::Store(m)) if m.contains("corrupt")));
            let tx = store.db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert(FORMAT, 99).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(Store::open(&path), Err(ProxyError::Store(m)) if m.contains("format 99")));
    }
}
