//! The signed head exchange: about once a second every member signs its head (height, hash)
//! and sends it to every other member (`send`); a receiver checks it and compares it with its
//! own block at that height (here). A different hash at a height both hold is an alarm,
//! `head_mismatch`: in the events, in the log, and in this member's status.
//!
//! Who differs from whom cannot be told from one pair: each side reports the other. In a
//! group of three or more, the odd one out is the member the others all name.
//!
//! What a receiver refuses, and why, is in [`HeadBook::receive`]. Heads received also tell a
//! follower which members are reachable and how far they got (`/members`), which otherwise
//! only the leader knows.

pub mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_shared::cert::VerifiedCert;
use conclave_shared::chain::BlockHash;
use conclave_shared::wire::peer::{
    FromPeer, Head, HeadMismatch, SignedHead, MAX_REPORTED_MISMATCHES,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::events::Event;
use crate::store::ChainReader;
use crate::types::NodeId;

/// How often a member sends its head, in a group of up to [`MAX_HEADS_PER_SECOND`] + 1.
pub const HEAD_INTERVAL_MS: u64 = 1_000;
/// Every member receives a head from every other, so a large group sends its heads less
/// often: about this many reach one member per second at most (see [`head_interval`]).
pub const MAX_HEADS_PER_SECOND: usize = 16;
/// A sender's heads closer together than this are refused before their signature is checked,
/// so no member can make another verify signatures faster than about twice a second.
pub const MIN_HEAD_INTERVAL_MS: u64 = 400;
/// A head stamped further than this from the receiver's clock, either way, is refused: one
/// from far in the future could otherwise shut out every later genuine one as a "replay".
pub const MAX_HEAD_CLOCK_SKEW_MS: u64 = 60_000;
/// A member whose last head is younger than this many intervals counts as reachable
/// (`/members`).
pub const HEAD_FRESH_INTERVALS: u32 = 3;

/// How often each member sends its head in a group of `members`: once a second up to
/// [`MAX_HEADS_PER_SECOND`] + 1 members, then a second more per [`MAX_HEADS_PER_SECOND`]
/// further members, so the exchange costs each member a bounded number of signature checks
/// and requests a second (not one per member) whatever the group's size.
pub fn head_interval(members: usize) -> Duration {
    let others = members.saturating_sub(1).max(1);
    let seconds = others.div_ceil(MAX_HEADS_PER_SECOND).max(1) as u64;
    Duration::from_millis(HEAD_INTERVAL_MS.saturating_mul(seconds))
}

/// A member's last head as this member received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenHead {
    pub height: u64,
    pub hash: BlockHash,
    pub age: Duration,
}

/// What this member knows of the others' heads; cloneable, every clone shares it. Only
/// present members of this member's chain get an entry, so it is bounded by the group.
#[derive(Clone)]
pub struct HeadBook {
    // A std mutex: every section is a few map operations, never held across an await.
    peers: Arc<Mutex<HashMap<NodeId, PeerHeads>>>,
    events: mpsc::Sender<Event>,
}

#[derive(Default)]
struct PeerHeads {
    /// When the last head from this sender arrived, accepted or not (the rate limit).
    last_attempt: Option<Instant>,
    /// `(time_ms, seq)` of the last accepted head: a later head must be greater.
    last_order: Option<(u64, u64)>,
    last_head: Option<(u64, BlockHash, Instant)>,
    /// The first disagreement found since the heads last agreed.
    mismatch: Option<HeadMismatch>,
}

/// Why a head was refused; logged, and sent back as the `Error` answer.
#[derive(Debug, thiserror::Error)]
pub enum HeadRefusal {
    #[error("{0} is not a present member of this group")]
    NotAMember(String),
    #[error("{0} was removed or revoked")]
    Gone(String),
    #[error("heads from {0} come faster than one per {MIN_HEAD_INTERVAL_MS} ms")]
    TooSoon(String),
    #[error("the head's signature does not verify under {0}'s key")]
    BadSignature(String),
    #[error(
        "the head says it is from {claimed:?} (node {node:016x}), not from the caller {caller}"
    )]
    NotTheCaller {
        caller: String,
        claimed: String,
        node: NodeId,
    },
    #[error("the head of {0} is for another group")]
    OtherGroup(String),
    #[error("the head of {who} is stamped {skew_ms} ms away from this member's clock")]
    Skewed { who: String, skew_ms: u64 },
    #[error("the head of {0} is not newer than the last one taken (a replay?)")]
    Replayed(String),
    #[error("this member has no chain to compare with yet")]
    NoChain,
    #[error("cannot check the head: {0}")]
    Internal(String),
}

impl HeadRefusal {
    /// The same head may be taken if sent again later.
    fn retry(&self) -> bool {
        matches!(
            self,
            HeadRefusal::TooSoon(_)
                | HeadRefusal::NoChain
                | HeadRefusal::NotAMember(_)
                | HeadRefusal::Internal(_)
        )
    }
}

impl HeadBook {
    /// `head_mismatch` events go to `events`.
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        Self {
            peers: Arc::new(Mutex::new(HashMap::new())),
            events,
        }
    }

    /// Checks a head the member `who` (as TLS verified it) sent and compares it with this
    /// member's chain; the answer for the wire.
    pub async fn receive(
        &self,
        chain: &ChainReader,
        who: &VerifiedCert,
        signed: SignedHead,
    ) -> FromPeer {
        match self.check(chain, who, signed).await {
            Ok(()) => FromPeer::HeadNoted,
            Err(e) => {
                match &e {
                    // A member this one's chain does not hold yet may be one it is about to
                    // apply; and heads that come too fast are only throttled.
                    HeadRefusal::NotAMember(_) | HeadRefusal::TooSoon(_) | HeadRefusal::NoChain => {
                        debug!(caller = who.name(), "head refused: {e}")
                    }
                    _ => warn!(caller = who.name(), "head refused: {e}"),
                }
                FromPeer::Error {
                    retry: e.retry(),
                    message: e.to_string(),
                }
            }
        }
    }

    async fn check(
        &self,
        chain: &ChainReader,
        who: &VerifiedCert,
        signed: SignedHead,
    ) -> Result<(), HeadRefusal> {
        let caller = who.fingerprint().node_id();
        let name = who.name().to_owned();
        let (Some(group_id), Some((our_height, _))) = (chain.group_id(), chain.head()) else {
            return Err(HeadRefusal::NoChain);
        };
        // Cheap checks first: nothing below costs a signature check unless the caller is a
        // present member whose last head is not too recent.
        let member = chain
            .member_by_id(caller)
            .filter(|m| m.name == name)
            .ok_or_else(|| HeadRefusal::NotAMember(name.clone()))?;
        if !member.is_admitted() {
            return Err(HeadRefusal::Gone(name));
        }
        let now = Instant::now();
        {
            let mut peers = self.lock();
            let p = peers.entry(caller).or_default();
            if p.last_attempt.is_some_and(|t| {
                now.duration_since(t) < Duration::from_millis(MIN_HEAD_INTERVAL_MS)
            }) {
                return Err(HeadRefusal::TooSoon(name));
            }
            p.last_attempt = Some(now);
        }
        let key = member.cert.public_key().clone();
        let reader = chain.clone();
        let who_name = name.clone();
        // The signature check and the read of our block at that height, off the runtime.
        let (head, ours) = tokio::task::spawn_blocking(move || {
            let head = signed
                .open(&key)
                .map_err(|_| HeadRefusal::BadSignature(who_name))?;
            let ours = if head.height <= our_height {
                reader
                    .block(head.height)
                    .map_err(|e| HeadRefusal::Internal(e.to_string()))?
                    .map(|b| b.hash)
            } else {
                None
            };
            Ok::<_, HeadRefusal>((head, ours))
        })
        .await
        .map_err(|e| HeadRefusal::Internal(e.to_string()))??;
        check_head(&head, caller, &name, &group_id, conclave_shared::now_ms())?;
        let theirs = BlockHash(head.hash);
        let (found, cleared) = {
            let mut peers = self.lock();
            let p = peers.entry(caller).or_default();
            let order = (head.time_ms, head.seq);
            if p.last_order.is_some_and(|last| order <= last) {
                return Err(HeadRefusal::Replayed(name));
            }
            p.last_order = Some(order);
            p.last_head = Some((head.height, theirs, now));
            match ours {
                Some(ours) if ours != theirs => {
                    let first = p.mismatch.is_none();
                    if first {
                        p.mismatch = Some(HeadMismatch {
                            peer: name.clone(),
                            height: head.height,
                            ours: ours.to_hex(),
                            theirs: theirs.to_hex(),
                        });
                    }
                    (first.then(|| p.mismatch.clone()).flatten(), false)
                }
                Some(_) => (None, p.mismatch.take().is_some()),
                None => (None, false),
            }
        };
        if let Some(m) = found {
            warn!(
                peer = %m.peer,
                height = m.height,
                ours = %m.ours,
                theirs = %m.theirs,
                "head_mismatch: {} holds another block at height {} than this member",
                m.peer,
                m.height
            );
            let _ = self
                .events
                .send(Event::HeadMismatch {
                    peer: m.peer,
                    height: m.height,
                    ours: m.ours,
                    theirs: m.theirs,
                })
                .await;
        }
        if cleared {
            info!(peer = %name, height = head.height, "the head of {name} agrees with this member's chain again");
        }
        Ok(())
    }

    /// The disagreements found with the members `keep` accepts (the present ones: a member
    /// that left is no longer reported), one per member, by name; at most
    /// [`MAX_REPORTED_MISMATCHES`].
    pub fn mismatches(&self, keep: impl Fn(NodeId) -> bool) -> Vec<HeadMismatch> {
        let mut out: Vec<HeadMismatch> = self
            .lock()
            .iter()
            .filter(|(id, _)| keep(**id))
            .filter_map(|(_, p)| p.mismatch.clone())
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out.truncate(MAX_REPORTED_MISMATCHES);
        out
    }

    /// The last head taken from `node`, if any.
    pub fn seen(&self, node: NodeId) -> Option<SeenHead> {
        self.lock().get(&node).and_then(|p| {
            p.last_head.map(|(height, hash, at)| SeenHead {
                height,
                hash,
                age: at.elapsed(),
            })
        })
    }

    /// The disagreement with `node`, if one stands.
    pub fn mismatch_with(&self, node: NodeId) -> Option<HeadMismatch> {
        self.lock().get(&node).and_then(|p| p.mismatch.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerHeads>> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The checks on a head whose signature verified: it names the caller, this group, and a
/// time near this member's `now_ms`.
fn check_head(
    head: &Head,
    caller: NodeId,
    name: &str,
    group_id: &[u8; 16],
    now_ms: u64,
) -> Result<(), HeadRefusal> {
    if head.node_id != caller || head.name != name {
        return Err(HeadRefusal::NotTheCaller {
            caller: name.to_owned(),
            claimed: head.name.clone(),
            node: head.node_id,
        });
    }
    if &head.group_id != group_id {
        return Err(HeadRefusal::OtherGroup(name.to_owned()));
    }
    let skew_ms = head.time_ms.abs_diff(now_ms);
    if skew_ms > MAX_HEAD_CLOCK_SKEW_MS {
        return Err(HeadRefusal::Skewed {
            who: name.to_owned(),
            skew_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            group_id: [1; 16],
            node_id: 7,
            name: "bob".into(),
            height: 3,
            hash: [2; 32],
            time_ms: 1_000_000,
            seq: 1,
        }
    }

    #[test]
    fn large_groups_send_heads_less_often() {
        let s = |n| head_interval(n).as_millis() as u64;
        assert_eq!(s(1), HEAD_INTERVAL_MS);
        assert_eq!(s(3), HEAD_INTERVAL_MS);
        assert_eq!(s(MAX_HEADS_PER_SECOND + 1), HEAD_INTERVAL_MS);
        assert_eq!(s(MAX_HEADS_PER_SECOND + 2), 2 * HEAD_INTERVAL_MS);
        assert_eq!(s(50), 4 * HEAD_INTERVAL_MS);
    }

    #[test]
    fn a_head_must_name_the_caller_this_group_and_a_near_time() {
        let now = 1_000_000;
        assert!(check_head(&head(), 7, "bob", &[1; 16], now).is_ok());
        assert!(matches!(
            check_head(&head(), 8, "bob", &[1; 16], now),
            Err(HeadRefusal::NotTheCaller { .. })
        ));
        assert!(matches!(
            check_head(&head(), 7, "carol", &[1; 16], now),
            Err(HeadRefusal::NotTheCaller { .. })
        ));
        assert!(matches!(
            check_head(&head(), 7, "bob", &[9; 16], now),
            Err(HeadRefusal::OtherGroup(_))
        ));
        let far = now + MAX_HEAD_CLOCK_SKEW_MS + 1;
        assert!(matches!(
            check_head(&head(), 7, "bob", &[1; 16], far),
            Err(HeadRefusal::Skewed { .. })
        ));
        let behind = now - MAX_HEAD_CLOCK_SKEW_MS - 1;
        assert!(matches!(
            check_head(&head(), 7, "bob", &[1; 16], behind),
            Err(HeadRefusal::Skewed { .. })
        ));
    }
}
