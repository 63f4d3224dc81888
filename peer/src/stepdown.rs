//! A leader that has not heard from a majority for a while steps down (Raft's "check
//! quorum", which openraft 0.9 does not do by itself). Cut off from the group, it would
//! otherwise go on calling itself leader until a message of a higher term reached it: its
//! console and status would say so, and it would keep announcing itself to the proxy, while
//! the rest of the group has long elected another. It can commit nothing either way; this
//! only makes it say so.
//!
//! openraft 0.9 has no call to make a leader step down (its `trigger().elect()` ignores a
//! leader). A leader does step down when it grants a vote to a higher term, so this hands
//! its own Raft a vote request of the next term from [`NOBODY`], a node id no member has,
//! with this node's own last log id (so the log check passes). The leader's lease (from its
//! own election) expired long ago, so it grants the vote, saves it, and becomes a follower of
//! that term with no leader. Nobody can win that term's election; a term is spent, which Raft
//! allows (a candidate that crashes spends one too). After its election timeout the node
//! stands itself, cannot win while cut off, and follows the real leader once it hears it.

use std::time::Duration;

use openraft::ServerState;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::types::{LogId, NodeId, Raft, Vote};

/// The candidate the step-down vote goes to: not a member's id (ids are taken from key
/// fingerprints), so the vote elects no one.
const NOBODY: NodeId = 0;

/// Asks a majority to confirm this leader every `after` (a heartbeat round, the same check
/// a linearizable read makes) and steps down after two rounds in a row that got no answer
/// within `after`. `after` should exceed the followers' lease and election timeout (they elect
/// another by then); two misses keep a slow but reachable majority from deposing it.
/// (openraft's own `millis_since_quorum_ack` metric is only refreshed when something else
/// changes, so an idle, cut-off leader's value never grows: it cannot be used here.)
pub async fn run(raft: Raft, after: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(after);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(term) = leading(&raft) else {
            misses = 0;
            continue;
        };
        let confirmed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(after, raft.get_read_log_id()) => matches!(r, Ok(Ok(_))),
        };
        if confirmed {
            misses = 0;
            continue;
        }
        misses += 1;
        if misses < 2 || leading(&raft) != Some(term) {
            continue;
        }
        misses = 0;
        warn!(
            term,
            "no majority has confirmed this leader for {} ms; stepping down",
            2 * after.as_millis()
        );
        if let Err(e) = step_down(&raft, term).await {
            warn!("could not step down: {e}");
        }
    }
}

/// This node's term if it leads a group of more than one voter.
fn leading(raft: &Raft) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader && m.membership_config.membership().voter_ids().count() > 1)
        .then_some(m.current_term)
}

/// Makes this leader of `term` a follower of `term + 1`; see the module docs.
async fn step_down(raft: &Raft, term: u64) -> Result<(), String> {
    // A leader's last entry is its own, of its own term (it appends a blank one when elected).
    let last_log_id = {
        let m = raft.metrics();
        let m = m.borrow();
        if m.current_term != term {
            return Ok(());
        }
        m.last_log_index
            .map(|index| LogId::new(openraft::CommittedLeaderId::new(term, m.id), index))
    };
    let request = openraft::raft::VoteRequest::new(Vote::new(term + 1, NOBODY), last_log_id);
    let answer = raft.vote(request).await.map_err(|e| e.to_string())?;
    if answer.vote_granted {
        Ok(())
    } else {
        Err(format!("the vote was not granted (now {})", answer.vote))
    }
}
