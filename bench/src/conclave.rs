//! The workloads against a local Conclave group.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::group::Group;
use crate::stats::{ms, Latency, Spread};
use crate::workload::{kill_under_load, Appender};
use crate::BenchError;

/// How long one append may wait for its acknowledgement before it counts as an error.
pub const APPEND_DEADLINE: Duration = Duration::from_secs(30);

/// Appends through the given peers, slot `i` through `writers[i % len]`.
pub struct ConclaveAppender<'a> {
    pub group: &'a Group,
    pub writers: Vec<usize>,
}

impl Appender for ConclaveAppender<'_> {
    fn append(
        &self,
        slot: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Duration, BenchError>> + Send + '_>> {
        let peer = self.writers[slot % self.writers.len()];
        Box::pin(self.group.append(peer, APPEND_DEADLINE))
    }
}

/// One failover: kill to the first acknowledgement of a record appended after the kill.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    pub killed: String,
    pub kill_to_next_ack_ms: f64,
    pub caught_up_after_restart_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub runs: Vec<FailoverRun>,
    pub kill_to_next_ack: Option<Spread>,
    pub load_records_per_sec: f64,
}

/// The light load during a failover: each writer appends one record every this long.
const FAILOVER_LOAD_EVERY: Duration = Duration::from_millis(10);

/// `runs` times: under a light load from the other members, SIGKILL the leader, time from the
/// kill to the first acknowledgement of a record appended after it, then start the killed
/// member again and wait until it holds the group's head.
pub async fn failover(g: &Group, runs: usize) -> Result<Failover, BenchError> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let leader = g.leader().await?;
        let writers: Vec<usize> = g.running().into_iter().filter(|&i| i != leader).collect();
        if writers.is_empty() {
            return Err(BenchError::Other(
                "failover needs at least two members".into(),
            ));
        }
        let gap = kill_under_load(
            writers.len(),
            FAILOVER_LOAD_EVERY,
            Duration::from_millis(500),
            APPEND_DEADLINE,
            |i| {
                let w = writers[i];
                async move {
                    let sent = Instant::now();
                    g.append(w, APPEND_DEADLINE).await.ok().map(|l| sent + l)
                }
            },
            || async {
                g.kill9(leader).await;
                Ok(())
            },
        )
        .await;
        let gap = gap?;
        let back = Instant::now();
        g.restart(leader).await?;
        wait_caught_up(g, leader).await?;
        out.push(FailoverRun {
            killed: g.peers[leader].name.clone(),
            kill_to_next_ack_ms: ms(gap),
            caught_up_after_restart_ms: ms(back.elapsed()),
        });
    }
    let gaps: Vec<Duration> = out
        .iter()
        .map(|r| Duration::from_secs_f64(r.kill_to_next_ack_ms / 1000.0))
        .collect();
    Ok(Failover {
        kill_to_next_ack: Spread::of(&gaps),
        runs: out,
        load_records_per_sec: 1000.0 / FAILOVER_LOAD_EVERY.as_millis() as f64,
    })
}

/// Waits until peer `i` has applied the highest height any running member reports.
async fn wait_caught_up(g: &Group, i: usize) -> Result<(), BenchError> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let target = g
            .running()
            .into_iter()
            .filter(|&j| j != i)
            .map(|j| g.peers[j].height())
            .max()
            .unwrap_or(0);
        if g.peers[i].height() >= target && target > 0 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(BenchError::Deadline(format!(
                "{} catching up to height {target}",
                g.peers[i].name
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Catchup {
    pub records: usize,
    pub head_height: u64,
    /// From starting the new member's process to it applying the head: asking the proxy,
    /// admission and replay. Its key was made and registered before (enrolment is an
    /// operator's step, as `member add` is etcd's), so RSA key generation is not in it.
    pub spawn_to_head_ms: f64,
    /// From its first applied record to the head: the replay alone.
    pub first_record_to_head_ms: Option<f64>,
    pub replay_records_per_sec: Option<f64>,
}

/// Writes `records` records (64 in flight), then starts a new member and times it until it
/// has applied the head the others hold.
pub async fn catchup(g: &mut Group, records: usize) -> Result<Catchup, BenchError> {
    let writers = g.running();
    let app = ConclaveAppender {
        group: g,
        writers: writers.clone(),
    };
    let slots = 64.min(records.max(1));
    let per_slot = records.div_ceil(slots);
    let one = |slot: usize| {
        let app = &app;
        async move {
            for _ in 0..per_slot {
                app.append(slot).await?;
            }
            Ok::<(), BenchError>(())
        }
    };
    for r in futures::future::join_all((0..slots).map(one)).await {
        r?;
    }
    let head = writers
        .iter()
        .map(|&i| g.peers[i].height())
        .max()
        .unwrap_or(0);
    // Every member holds the head before the newcomer starts.
    for &i in &writers {
        wait_caught_up(g, i).await?;
    }
    let mut seen = g.watch_records();
    let (newcomer, spawned) = g.add_enrolled_peer().await?;
    // Any event with a height counts (the head may be a checkpoint, not a record); the
    // first record it applies marks the start of the replay.
    let mut first = None;
    let until = spawned + Duration::from_secs(120);
    let reached = loop {
        while let Ok(s) = seen.try_recv() {
            if s.peer == newcomer {
                first.get_or_insert(s.at);
            }
        }
        if g.peers[newcomer].height() >= head {
            break Instant::now();
        }
        if Instant::now() > until {
            g.stop_watching();
            return Err(BenchError::Deadline(format!(
                "the new member applying height {head} (its height: {}; its log ends:\n{})",
                g.peers[newcomer].height(),
                g.peers[newcomer].log_tail(&g.dir, 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    g.stop_watching();
    g.wait_joined(newcomer).await?;
    let replay = first.map(|f| reached.saturating_duration_since(f));
    Ok(Catchup {
        records: per_slot * slots,
        head_height: head,
        spawn_to_head_ms: ms(reached.saturating_duration_since(spawned)),
        first_record_to_head_ms: replay.map(ms),
        replay_records_per_sec: replay
            .filter(|d| !d.is_zero())
            .map(|d| (per_slot * slots) as f64 / d.as_secs_f64()),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub voters: usize,
    pub learners: usize,
    pub target_records_per_sec: f64,
    pub achieved_records_per_sec: f64,
    pub commit: Option<Latency>,
    /// From the append to the moment the last member applied it, per record.
    pub all_members_hold: Option<Latency>,
    pub records_everyone_saw: usize,
    pub records_acknowledged: usize,
}

/// Grows the group to `members`, then appends at `rate` records/s (open loop, spread over the
/// voters) for `duration`, timing each acknowledgement and when the last member applied it.
pub async fn scale(
    g: &mut Group,
    members: usize,
    rate: f64,
    duration: Duration,
) -> Result<Scale, BenchError> {
    while g.peers.len() < members {
        let i = g.add_peer().await?;
        g.wait_joined(i).await?;
    }
    let writers: Vec<usize> = (0..g.peers.len().min(5)).collect();
    let mut seen = g.watch_records();
    let sent: Mutex<Vec<(u64, Instant, Option<Duration>)>> = Mutex::new(Vec::new());
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut pending = Vec::new();
    let mut k = 0usize;
    while start.elapsed() < duration {
        let w = writers[k % writers.len()];
        k += 1;
        let id = g.next_id();
        let t0 = Instant::now();
        let rx = g.peers[w].send(id).await?;
        let sent = &sent;
        pending.push(async move {
            let acked = tokio::time::timeout(APPEND_DEADLINE, rx).await;
            let lat = match acked {
                Ok(Ok(at)) => Some(at.saturating_duration_since(t0)),
                _ => None,
            };
            if let Ok(mut s) = sent.lock() {
                s.push((id, t0, lat));
            }
        });
        let next = start + every * k as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    let elapsed = start.elapsed();
    futures::future::join_all(pending).await;
    // Give the last records time to reach every member.
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.stop_watching();
    let n = g.peers.len();
    let mut last_seen: std::collections::HashMap<u64, (usize, Instant)> = Default::default();
    let mut per_peer: std::collections::HashMap<u64, std::collections::HashSet<usize>> =
        Default::default();
    while let Ok(s) = seen.try_recv() {
        if per_peer.entry(s.id).or_default().insert(s.peer) {
            let e = last_seen.entry(s.id).or_insert((0, s.at));
            e.0 += 1;
            if s.at > e.1 {
                e.1 = s.at;
            }
        }
    }
    let sent = sent.into_inner().unwrap_or_default();
    let commits: Vec<Duration> = sent.iter().filter_map(|s| s.2).collect();
    let everyone: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t0, _)| {
            last_seen
                .get(id)
                .filter(|(count, _)| *count == n)
                .map(|(_, at)| at.saturating_duration_since(*t0))
        })
        .collect();
    Ok(Scale {
        voters: 5.min(n),
        learners: n.saturating_sub(5),
        target_records_per_sec: rate,
        achieved_records_per_sec: sent.len() as f64 / elapsed.as_secs_f64(),
        commit: Latency::of(&commits),
        all_members_hold: Latency::of(&everyone),
        records_everyone_saw: everyone.len(),
        records_acknowledged: commits.len(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub term_before: u64,
    pub term_after: u64,
    /// Elections while nothing happened: each raises the term at least once.
    pub elections: u64,
    pub leader_before: String,
    pub leader_after: String,
}

/// Leaves the group alone for `duration` and counts the elections (term changes) meanwhile:
/// with no fault, a healthy leader keeps its term.
pub async fn idle(g: &Group, duration: Duration) -> Result<Idle, BenchError> {
    let term = |v: &serde_json::Value| v["term"].as_u64().unwrap_or(0);
    let name = |v: &serde_json::Value| v["leader"].as_str().unwrap_or("").to_owned();
    let before = g.status().await?;
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let after = g.status().await?;
    Ok(Idle {
        seconds: start.elapsed().as_secs_f64(),
        term_before: term(&before),
        term_after: term(&after),
        elections: term(&after).saturating_sub(term(&before)),
        leader_before: name(&before),
        leader_after: name(&after),
    })
}
