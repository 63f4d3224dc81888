//! When each member last answered this node's Raft replication (an `Append`, heartbeats
//! included). openraft 0.9's metrics give only the log index each follower matched, which
//! stands still while the chain is idle; the network layer, which sees every answer, notes
//! the time here, and the leader's dead-voter check reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::types::NodeId;

/// Cloneable; every clone sees the same times.
#[derive(Clone, Default)]
pub struct Liveness {
    // A std mutex: each section is one map lookup or insert, never held across an await.
    acked: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Liveness {
    /// `node` answered an `Append` just now.
    pub fn acked(&self, node: NodeId) {
        if let Ok(mut m) = self.acked.lock() {
            m.insert(node, Instant::now());
        }
    }

    /// When `node` last answered an `Append` of this node's, if ever since it started.
    pub fn last_ack(&self, node: NodeId) -> Option<Instant> {
        self.acked.lock().ok().and_then(|m| m.get(&node).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_is_remembered_per_node() {
        let l = Liveness::default();
        assert!(l.last_ack(1).is_none());
        let before = Instant::now();
        l.clone().acked(1);
        assert!(l.last_ack(1).is_some_and(|t| t >= before));
        assert!(l.last_ack(2).is_none());
    }
}
