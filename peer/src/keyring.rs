//! The group keys this member holds, by epoch. Keys come only from committed key-rotation
//! blocks (never from bytes off the network), so the `rsa` crate's private-key timing leak
//! (RUSTSEC-2023-0071) is never exercised on attacker-chosen input.

use std::collections::BTreeMap;
use std::sync::Arc;

use conclave_shared::envelope::GroupKey;

#[derive(Debug, Default, Clone)]
pub struct KeyRing {
    keys: BTreeMap<u64, Arc<GroupKey>>,
}

impl KeyRing {
    pub fn insert(&mut self, epoch: u64, key: GroupKey) {
        self.keys.insert(epoch, Arc::new(key));
    }
    pub fn get(&self, epoch: u64) -> Option<&GroupKey> {
        self.keys.get(&epoch).map(|k| k.as_ref())
    }
    /// Every key held, oldest first.
    pub fn all(&self) -> impl Iterator<Item = (u64, &GroupKey)> {
        self.keys.iter().map(|(e, k)| (*e, k.as_ref()))
    }

    /// The newest key, for sealing new records.
    pub fn current(&self) -> Option<(u64, Arc<GroupKey>)> {
        self.keys.iter().next_back().map(|(e, k)| (*e, k.clone()))
    }
}
