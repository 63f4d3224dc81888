//! A run's fault schedule, drawn from its seed: the same seed, duration and peers give the
//! same schedule, byte for byte ([`Schedule::generate`]).
//!
//! A schedule is a sequence of episodes, one at a time: each starts after a quiet gap,
//! applies one fault, holds it, and undoes it (restart, resume, heal, calm) before the next
//! begins. A fault aimed at "the leader" is aimed at whoever leads when it starts, which the
//! seed cannot fix: the replay of a seed repeats the schedule, not the machine's timing.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::net::LinkFaults;

/// Whom a process fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Who {
    /// Whoever leads when the episode starts.
    Leader,
    Peer(String),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Leader => f.write_str("the leader"),
            Who::Peer(p) => f.write_str(p),
        }
    }
}

/// One fault, applied at an episode's start and undone at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Fault {
    /// `kill -9`; restarted with its data and address at the end.
    Kill(Who),
    /// `kill -9` for every peer at once, all restarted at once at the end.
    KillAll,
    /// SIGSTOP; SIGCONT at the end.
    Pause(Who),
    /// Cut off from every other peer; healed at the end.
    Isolate(Who),
    /// The peers split into two sides (this one and the rest); healed at the end.
    Split(Vec<String>),
    /// Two peers cut off from each other; healed at the end.
    Cut(String, String),
    /// Every peer link drops, duplicates, delays and reorders; clean again at the end.
    Degrade(#[serde(skip)] LinkFaults),
}

impl Fault {
    /// The name faults are counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(Who::Leader) => "kill_leader",
            Fault::Kill(_) => "kill",
            Fault::KillAll => "kill_all",
            Fault::Pause(Who::Leader) => "pause_leader",
            Fault::Pause(_) => "pause",
            Fault::Isolate(Who::Leader) => "isolate_leader",
            Fault::Isolate(_) => "isolate",
            Fault::Split(_) => "split",
            Fault::Cut(..) => "cut",
            Fault::Degrade(_) => "degrade",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(w) => write!(f, "kill -9 {w}, restart"),
            Fault::KillAll => write!(f, "kill -9 every peer, restart all"),
            Fault::Pause(w) => write!(f, "SIGSTOP {w}, SIGCONT"),
            Fault::Isolate(w) => write!(f, "isolate {w}, heal"),
            Fault::Split(side) => write!(f, "split {} from the rest, heal", side.join("+")),
            Fault::Cut(a, b) => write!(f, "cut {a} from {b}, heal"),
            Fault::Degrade(l) => write!(
                f,
                "drop {:.0}% dup {:.0}% delay {:?} jitter {:?}, calm",
                l.drop * 100.0,
                l.duplicate * 100.0,
                l.delay,
                l.jitter
            ),
        }
    }
}

/// One fault, when it starts (from the run's start) and how long it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub start: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// Every episode of a run, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub episodes: Vec<Episode>,
}

/// The quiet gap before each episode, in milliseconds.
const GAP_MS: (u64, u64) = (300, 1_500);
/// How long a fault holds, in milliseconds: long enough for elections (the default election
/// timeout is 75–125 ms) and short enough for several episodes per run.
const HOLD_MS: (u64, u64) = (500, 3_000);

impl Schedule {
    /// The schedule of `seed` for a run of `duration` over `peers` (at least three).
    pub fn generate(seed: u64, duration: Duration, peers: &[String]) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut episodes = Vec::new();
        let mut at = Duration::ZERO;
        loop {
            at += Duration::from_millis(rng.gen_range(GAP_MS.0..=GAP_MS.1));
            let hold = Duration::from_millis(rng.gen_range(HOLD_MS.0..=HOLD_MS.1));
            if at + hold > duration {
                break;
            }
            let fault = draw(&mut rng, peers);
            episodes.push(Episode {
                start: at,
                hold,
                fault,
            });
            at += hold;
        }
        Self { seed, episodes }
    }
}

fn who(rng: &mut StdRng, peers: &[String]) -> Who {
    // Half the process faults go to the leader: it is the peer whose loss matters most.
    if rng.gen_bool(0.5) {
        Who::Leader
    } else {
        Who::Peer(pick(rng, peers))
    }
}

fn pick(rng: &mut StdRng, peers: &[String]) -> String {
    peers.choose(rng).cloned().unwrap_or_default()
}

fn draw(rng: &mut StdRng, peers: &[String]) -> Fault {
    match rng.gen_range(0..100u32) {
        0..=24 => Fault::Kill(who(rng, peers)),
        25..=31 => Fault::KillAll,
        32..=45 => Fault::Pause(who(rng, peers)),
        46..=59 => Fault::Isolate(who(rng, peers)),
        60..=71 => {
            let mut shuffled = peers.to_vec();
            shuffled.shuffle(rng);
            let n = rng.gen_range(1..=peers.len().saturating_sub(1).max(1));
            let mut side: Vec<String> = shuffled.into_iter().take(n).collect();
            side.sort();
            Fault::Split(side)
        }
        72..=81 => {
            let mut shuffled = peers.to_vec();
            shuffled.shuffle(rng);
            Fault::Cut(shuffled[0].clone(), shuffled[1 % shuffled.len()].clone())
        }
        _ => Fault::Degrade(LinkFaults {
            drop: rng.gen_range(0.0..0.2),
            duplicate: rng.gen_range(0.0..0.1),
            delay: Duration::from_millis(rng.gen_range(0..20)),
            jitter: Duration::from_millis(rng.gen_range(0..30)),
        }),
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: {} episodes", self.seed, self.episodes.len())?;
        for e in &self.episodes {
            writeln!(
                f,
                "  at {:>6} ms for {:>5} ms: {}",
                e.start.as_millis(),
                e.hold.as_millis(),
                e.fault
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        (1..=5).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn a_seed_gives_the_same_schedule_every_time_and_another_seed_another() {
        let d = Duration::from_secs(30);
        let a = Schedule::generate(42, d, &peers());
        assert_eq!(a, Schedule::generate(42, d, &peers()));
        assert_eq!(
            a.to_string(),
            Schedule::generate(42, d, &peers()).to_string()
        );
        assert_ne!(a, Schedule::generate(43, d, &peers()));
    }

    #[test]
    fn episodes_follow_one_another_within_the_duration() {
        let d = Duration::from_secs(20);
        for seed in 0..50 {
            let s = Schedule::generate(seed, d, &peers());
            assert!(!s.episodes.is_empty(), "seed {seed} has no episode");
            let mut end = Duration::ZERO;
            for e in &s.episodes {
                assert!(e.start >= end, "seed {seed}: episodes overlap");
                end = e.start + e.hold;
            }
            assert!(end <= d, "seed {seed} runs past its duration");
        }
    }

    #[test]
    fn a_hundred_seeds_draw_every_kind_of_fault_and_sane_targets() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..100 {
            for e in Schedule::generate(seed, Duration::from_secs(20), &peers()).episodes {
                kinds.insert(e.fault.kind());
                match &e.fault {
                    Fault::Split(side) => assert!((1..5).contains(&side.len())),
                    Fault::Cut(a, b) => assert_ne!(a, b),
                    _ => {}
                }
            }
        }
        let all = [
            "kill_leader",
            "kill",
            "kill_all",
            "pause_leader",
            "pause",
            "isolate_leader",
            "isolate",
            "split",
            "cut",
            "degrade",
        ];
        for k in all {
            assert!(kinds.contains(k), "no {k} in 100 seeds");
        }
    }
}
