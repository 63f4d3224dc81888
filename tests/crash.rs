//! Crash safety: one peer of three is killed with SIGKILL at a random moment while lines are
//! being written to its standard input, again and again, each time a peer chosen at random
//! (the leader too). After every kill its store must verify as it was left (`conclave
//! verify`), it must restart (its store opens) and catch up with the others; at the end every
//! chain must verify, and the history checker (`conclave-chaos`) holds the chains to what
//! the writers were told: every acknowledged record in every chain exactly once, nothing no
//! writer appended, one sequence, each author in order.
//!
//! The run is seeded: the seed is printed, and `CONCLAVE_CRASH_SEED=N` repeats a run
//! (`CONCLAVE_CRASH_ITERATIONS` changes its length).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use conclave_chaos::{Append, History, MemberChain, Outcome, RecordId};
use harness::cluster::Cluster;
use serde_json::Value;

const PEERS: [&str; 3] = ["p1", "p2", "p3"];
const DEFAULT_ITERATIONS: usize = 15;
/// At most this many lines are written to the victim in one iteration before it dies.
const MAX_LINES_BEFORE_KILL: u64 = 40;
/// The pause between two lines, at most.
const MAX_LINE_GAP_MS: u64 = 15;

/// SplitMix64: enough randomness for choosing moments, and the same moments for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Every line one life of a peer printed, kept after it died.
struct Life {
    name: String,
    events: Vec<Value>,
}

/// Writes every life's events and the stderr of `procs` into the group's directory, so that
/// a failed run kept with `CONCLAVE_KEEP_FAILED` can be read afterwards.
fn record_lives(c: &Cluster, lives: &[Life], stderrs: &[(String, String)]) {
    let dir = c.path().join("lives");
    let _ = std::fs::create_dir_all(&dir);
    for (i, life) in lives.iter().enumerate() {
        let text: Vec<String> = life.events.iter().map(|e| e.to_string()).collect();
        let _ = std::fs::write(
            dir.join(format!("{i:02}-{}.events", life.name)),
            text.join("\n"),
        );
    }
    for (i, (name, err)) in stderrs.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("{i:02}-{name}.stderr")), err);
    }
}

/// The highest height any acknowledgement named, over `lives` and the running peers.
fn highest_acknowledged(c: &mut Cluster, lives: &[Life]) -> u64 {
    let mut running = Vec::new();
    for p in PEERS {
        let peer = c.peer(p);
        peer.proc.drain();
        running.extend(peer.proc.seen_events());
    }
    lives
        .iter()
        .flat_map(|l| &l.events)
        .chain(&running)
        .filter(|e| e["event"] == "committed")
        .filter_map(|e| e["height"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The writers' history, as the checker reads it, from every life's `committed` and
/// `refused` events (each peer writes its own lines, so the author is the peer). Records the
/// chains hold that nobody acknowledged are added as started with an unknown outcome if
/// their text is a line this test wrote (what a member decrypted, from the `record` events);
/// anything else stays out, for `no_phantoms` to find.
fn history_of(lives: &[Life], sent: &BTreeSet<String>, chains: &[MemberChain]) -> History {
    let mut appends = Vec::new();
    let mut texts: BTreeMap<RecordId, String> = BTreeMap::new();
    for (i, life) in lives.iter().enumerate() {
        let origin = format!("{} life {i}", life.name);
        for e in &life.events {
            let outcome = match e["event"].as_str() {
                Some("committed") => Outcome::Acknowledged {
                    height: e["height"].as_u64(),
                    duplicate: e["duplicate"].as_bool().unwrap_or(false),
                    time_ms: 0,
                },
                Some("refused") => Outcome::Refused {
                    reason: e["reason"].as_str().unwrap_or_default().to_owned(),
                    time_ms: 0,
                },
                Some("record") => {
                    if let (Some(author), Some(seq), Some(text)) =
                        (e["author"].as_str(), e["seq"].as_u64(), e["text"].as_str())
                    {
                        let id = RecordId::new(author, seq);
                        if let Some(before) = texts.insert(id.clone(), text.to_owned()) {
                            assert_eq!(before, text, "{id} decrypted as two different texts");
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let seq = e["seq"].as_u64().expect("an append's seq");
            appends.push(Append {
                record: RecordId::new(life.name.as_str(), seq),
                started_ms: 0,
                outcome,
                origin: origin.clone(),
            });
        }
    }
    let known: BTreeSet<RecordId> = appends.iter().map(|a| a.record.clone()).collect();
    let in_chains: BTreeSet<&RecordId> = chains
        .iter()
        .flat_map(|c| c.records().map(|(_, id)| id))
        .collect();
    for id in in_chains {
        if known.contains(id) {
            continue;
        }
        if texts.get(id).is_some_and(|t| sent.contains(t)) {
            appends.push(Append {
                record: id.clone(),
                started_ms: 0,
                outcome: Outcome::Indeterminate {
                    reason: "written, then its author was killed before the answer".into(),
                },
                origin: "stdin".into(),
            });
        }
    }
    // A line the chain holds twice, under two sequence numbers, would be a resend that
    // took a new number: the (author, seq) checks cannot see it, its text can.
    if let Some(agreed) = conclave_chaos::checker::agreed(chains) {
        let mut lines = BTreeMap::<&str, Vec<&RecordId>>::new();
        for (_, id) in agreed.records() {
            if let Some(t) = texts.get(id) {
                lines.entry(t.as_str()).or_default().push(id);
            }
        }
        for (text, ids) in lines {
            assert_eq!(ids.len(), 1, "the line {text:?} is in the chain as {ids:?}");
        }
    }
    History { appends }
}

#[test]
fn kill_9_while_appending_loses_nothing_acknowledged_and_doubles_nothing() {
    let seed = env_number("CONCLAVE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let iterations = env_number("CONCLAVE_CRASH_ITERATIONS")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_ITERATIONS);
    eprintln!(
        "crash test: seed {seed}, {iterations} iterations (CONCLAVE_CRASH_SEED={seed} repeats it)"
    );
    let mut rng = Rng(seed);

    let mut c = Cluster::with_peers(PEERS.len());
    c.wait_in_step(PEERS.len(), 0);
    let mut lives = Vec::new();
    let mut stderrs = Vec::new();
    let mut sent = BTreeSet::new();
    let started = Instant::now();

    for it in 0..iterations {
        let victim = PEERS[rng.below(PEERS.len() as u64) as usize];
        let lines = 1 + rng.below(MAX_LINES_BEFORE_KILL);
        for j in 0..lines {
            let text = format!("crash {it} line {j} by {victim}");
            c.peer(victim).proc.send_line(&text);
            sent.insert(text);
            std::thread::sleep(Duration::from_millis(rng.below(MAX_LINE_GAP_MS + 1)));
        }
        // Whatever it was doing, mid-batch or mid-append, it dies now.
        let dead = c.kill9_and_read(victim);
        stderrs.push((victim.to_owned(), dead.proc.stderr()));
        lives.push(Life {
            name: victim.to_owned(),
            events: dead.proc.seen_events(),
        });
        eprintln!(
            "iteration {it}: killed {victim} after {lines} lines, {:?} into the run",
            started.elapsed()
        );

        // The store it left verifies as it is.
        let out = c.verify(victim);
        assert_eq!(
            out.code(),
            Some(0),
            "{victim}'s store does not verify after kill -9 (seed {seed}, iteration {it}):\n{}\n{}",
            out.stdout.join("\n"),
            out.stderr
        );

        // It opens its store, rejoins and catches up with what was acknowledged so far.
        c.start_peer(victim, Some(dead.addr));
        c.wait_joined(victim);
        let h = highest_acknowledged(&mut c, &lives);
        c.wait_in_step(PEERS.len(), h);
    }

    // Every member applies everything acknowledged; then all stop cleanly. A restarted
    // member's resent batch may be acknowledged while the others are waited for, so this
    // repeats until no new acknowledgement raises the height (bounded).
    let mut h = highest_acknowledged(&mut c, &lives);
    for _ in 0..10 {
        c.wait_in_step(PEERS.len(), h);
        let now = highest_acknowledged(&mut c, &lives);
        if now == h {
            break;
        }
        h = now;
    }
    for p in PEERS {
        let peer = c.peer(p);
        peer.proc.drain();
        lives.push(Life {
            name: p.to_owned(),
            events: peer.proc.seen_events(),
        });
    }
    for p in PEERS {
        let mut peer = c.peers.remove(p).expect("a running peer");
        let status = peer.proc.terminate();
        std::thread::sleep(Duration::from_millis(100));
        stderrs.push((p.to_owned(), peer.proc.stderr()));
        record_lives(&c, &lives, &stderrs);
        assert_eq!(status.code(), Some(0), "{p} did not stop cleanly");
    }

    let root = conclave_shared::identity::PublicKey::load_pem(&c.root_key()).unwrap();
    let chains: Vec<MemberChain> = PEERS
        .iter()
        .map(|p| MemberChain::from_blocks(*p, c.chain_of(p)))
        .collect();
    let history = history_of(&lives, &sent, &chains);
    // Every acknowledged record is in every member's chain, exactly once: all three caught
    // up past every acknowledgement before they stopped.
    let acked: BTreeSet<&RecordId> = history
        .appends
        .iter()
        .filter(|a| a.is_acknowledged())
        .map(|a| &a.record)
        .collect();
    for chain in &chains {
        let mut held = BTreeMap::<&RecordId, usize>::new();
        for (_, id) in chain.records() {
            *held.entry(id).or_default() += 1;
        }
        for id in &acked {
            let n = held.get(id).copied().unwrap_or(0);
            assert_eq!(
                n, 1,
                "{}'s chain holds acknowledged {id} {n} times (seed {seed})",
                chain.member
            );
        }
    }
    let report = conclave_chaos::check_all(&history, &chains, &root);
    eprintln!("seed {seed}, {:?}:\n{report}", started.elapsed());
    assert!(report.passed(), "seed {seed}:\n{report}");
    assert!(
        report.counts.acknowledged > 0,
        "nothing was acknowledged: the run tested nothing"
    );
}
