//! Confirming a new leader before joiners are sent to it: one member's word does not move
//! the proxy (the design's "Joining", step 3).
//!
//! A claim that is not a refresh (another leader, or the known leader at a higher term) comes
//! back from the state actor as a [`ConfirmRequest`] naming the known voters to ask. The
//! connection task that received the announcement asks them over `conclave/peer/1`
//! (`ToPeer::Status`, with the proxy's certificate, as `status` does), all at once, each
//! within [`CONFIRM_PROBE_TIMEOUT_MS`], and stops as soon as the outcome is certain. It then
//! submits the votes to the actor, which counts them again against the voters it knows by
//! then and re-checks group, term and membership. The actor never waits on the network, and
//! joiners keep getting the old leader meanwhile.
//!
//! Asking costs one connection per voter, so each claimant gets at most one round in flight
//! and at most one round per [`CONFIRM_MIN_INTERVAL_MS`]; an announcement beyond that is
//! refused `NotConfirmed` at once. A real leader announces every second and so is confirmed on
//! a later announcement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use conclave_shared::wire::peer::PeerStatus;

use crate::state::{ConfirmRequest, Votes};
use crate::status::Prober;

/// How long one voter has to answer (connect, handshake, reply) whom it follows before it
/// counts as not confirming.
pub const CONFIRM_PROBE_TIMEOUT_MS: u64 = 1_500;
/// The least time between the starts of two confirmation rounds for one claimant. Below the
/// peers' announcement interval (1 s), so that jitter does not make every other announcement
/// of a real leader miss its turn.
pub const CONFIRM_MIN_INTERVAL_MS: u64 = 500;

/// What a round of asking found.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub votes: Votes,
    /// One line per voter asked, for the log and the refusal message.
    pub answers: Vec<String>,
}

/// Whether `status`, the answer of a known voter, confirms `req`: it follows the claimant, by
/// name (the name a certificate binds, which the announcement was checked against), at
/// exactly the claimed term. A voter at a higher term may be electing someone else; one at a
/// lower term has not heard of the claimant's election.
pub fn confirms(status: &PeerStatus, req: &ConfirmRequest) -> bool {
    status.leader.as_deref() == Some(req.claimant.as_str()) && status.term == req.term
}

/// Asks the voters `req` names whom they follow. Ends within `CONFIRM_PROBE_TIMEOUT_MS` (plus
/// scheduling): as soon as `req.needed` confirmed, or so many did not that the rest cannot
/// make up for them, the remaining probes are dropped.
pub async fn ask_voters(prober: &Prober, req: &ConfirmRequest) -> Round {
    let mut round = Round {
        votes: Votes {
            claimant: req.node_id,
            term: req.term,
            confirmed_by: Vec::new(),
        },
        answers: Vec::new(),
    };
    let mut pending = req.ask.len();
    if req.needed > pending {
        round.answers.push(format!(
            "only {pending} other voters are known; {} would have to confirm",
            req.needed
        ));
        return round;
    }
    let mut probes = prober.spawn_probes(&req.ask, Duration::from_millis(CONFIRM_PROBE_TIMEOUT_MS));
    while round.votes.confirmed_by.len() < req.needed
        && round.votes.confirmed_by.len() + pending >= req.needed
    {
        // Every probe ends within its timeout, so this ends too.
        let Some(done) = probes.join_next().await else {
            break;
        };
        pending -= 1;
        let Ok((i, answer)) = done else {
            round.answers.push("a probe failed".into());
            continue;
        };
        let m = &req.ask[i];
        round.answers.push(match answer {
            Ok(s) if confirms(&s, req) => {
                round.votes.confirmed_by.push(m.node_id);
                format!("{} confirms", m.name)
            }
            Ok(s) => format!(
                "{} follows {} at term {}",
                m.name,
                s.leader.as_deref().unwrap_or("nobody"),
                s.term
            ),
            Err(why) => format!("{} did not answer: {why}", m.name),
        });
    }
    round
}

/// Confirmation rounds by claimant (node id), to bound how often the proxy asks.
#[derive(Default)]
pub struct Attempts {
    rounds: Mutex<HashMap<u64, Attempt>>,
}

struct Attempt {
    started: Instant,
    in_flight: bool,
}

/// A claimant's round in flight; dropping it ends the round.
pub struct Slot<'a> {
    attempts: &'a Attempts,
    claimant: u64,
}

impl Attempts {
    /// Starts a round for `claimant`, or says why not: one is in flight, or the last one
    /// started less than `CONFIRM_MIN_INTERVAL_MS` ago.
    pub fn begin(&self, claimant: u64) -> Result<Slot<'_>, String> {
        let now = Instant::now();
        let min = Duration::from_millis(CONFIRM_MIN_INTERVAL_MS);
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        // Only claimants that asked recently are kept: at most the known members.
        rounds.retain(|_, a| a.in_flight || now.duration_since(a.started) < min);
        match rounds.get(&claimant) {
            Some(a) if a.in_flight => {
                Err("a confirmation of this claim is under way; announce again later".into())
            }
            Some(a) => Err(format!(
                "a confirmation for this announcer ran {} ms ago (at most one per {} ms); \
                 announce again later",
                now.duration_since(a.started).as_millis(),
                CONFIRM_MIN_INTERVAL_MS
            )),
            None => {
                rounds.insert(
                    claimant,
                    Attempt {
                        started: now,
                        in_flight: true,
                    },
                );
                Ok(Slot {
                    attempts: self,
                    claimant,
                })
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut rounds = self
            .attempts
            .rounds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(a) = rounds.get_mut(&self.claimant) {
            a.in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_per_claimant_at_a_time_and_not_too_often() {
        let attempts = Attempts::default();
        let slot = attempts.begin(1).unwrap();
        assert!(attempts.begin(1).err().unwrap().contains("under way"));
        let other = attempts
            .begin(2)
            .expect("another claimant has its own turn");
        drop(slot);
        assert!(attempts.begin(1).err().unwrap().contains("ago"));
        drop(other);
        std::thread::sleep(Duration::from_millis(CONFIRM_MIN_INTERVAL_MS));
        assert!(attempts.begin(1).is_ok());
    }

    #[test]
    fn a_voter_confirms_by_name_at_exactly_the_claimed_term() {
        let req = ConfirmRequest {
            claimant: "bob".into(),
            node_id: 2,
            term: 7,
            ask: Vec::new(),
            needed: 1,
            voters: 3,
        };
        let status = |leader: Option<&str>, term| PeerStatus {
            name: "carol".into(),
            node_id: 3,
            role: None,
            leader: leader.map(str::to_owned),
            term,
            head_height: None,
            head_hash: None,
            head_mismatches: Vec::new(),
        };
        assert!(confirms(&status(Some("bob"), 7), &req));
        assert!(!confirms(&status(Some("bob"), 6), &req));
        assert!(!confirms(&status(Some("bob"), 8), &req));
        assert!(!confirms(&status(Some("alice"), 7), &req));
        assert!(!confirms(&status(None, 7), &req));
    }
}
