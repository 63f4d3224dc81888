//! The same workloads against etcd: one HTTP/1.1 keep-alive connection per record in flight
//! (the gateway answers one request at a time per connection), 256-byte values, the
//! connections spread over the members the way Conclave's writers are.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::etcd::{self, EtcdCluster};
use crate::group::{record_text, RECORD_BYTES};
use crate::http::HttpConn;
use crate::stats::{ms, Spread};
use crate::workload::{kill_under_load, Appender};
use crate::BenchError;

/// How long one put may take before the connection is dropped and the put counts as failed.
const PUT_DEADLINE: Duration = Duration::from_secs(10);

/// Puts through `slots` connections; slot `i` starts on member `i % members` and moves to
/// the next member after an error.
pub struct EtcdAppender {
    addrs: Vec<SocketAddr>,
    conns: Vec<tokio::sync::Mutex<(usize, Option<HttpConn>)>>,
    next_key: AtomicUsize,
}

impl EtcdAppender {
    pub fn new(addrs: Vec<SocketAddr>, slots: usize) -> Self {
        EtcdAppender {
            conns: (0..slots)
                .map(|i| tokio::sync::Mutex::new((i, None)))
                .collect(),
            addrs,
            next_key: AtomicUsize::new(0),
        }
    }

    async fn put(&self, slot: usize) -> Result<Duration, BenchError> {
        let id = self.next_key.fetch_add(1, Ordering::Relaxed) as u64;
        let key = format!("bench/{id:016x}");
        let value = record_text(id);
        debug_assert_eq!(value.len(), RECORD_BYTES);
        let mut c = self.conns[slot % self.conns.len()].lock().await;
        let t0 = Instant::now();
        let (member, conn) = &mut *c;
        let result = tokio::time::timeout(PUT_DEADLINE, async {
            if conn.is_none() {
                *conn = Some(HttpConn::connect(self.addrs[*member % self.addrs.len()]).await?);
            }
            match conn.as_mut() {
                Some(h) => etcd::put(h, key.as_bytes(), value.as_bytes()).await,
                None => Err(BenchError::Other("no connection".into())),
            }
        })
        .await;
        match result {
            Ok(Ok(_)) => Ok(t0.elapsed()),
            Ok(Err(e)) => {
                *conn = None;
                *member += 1;
                Err(e)
            }
            Err(_) => {
                *conn = None;
                *member += 1;
                Err(BenchError::Deadline("an etcd put".into()))
            }
        }
    }
}

impl Appender for EtcdAppender {
    fn append(
        &self,
        slot: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Duration, BenchError>> + Send + '_>> {
        Box::pin(self.put(slot))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdFailoverRun {
    pub killed: String,
    pub kill_to_next_ack_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdFailover {
    pub runs: Vec<EtcdFailoverRun>,
    pub kill_to_next_ack: Option<Spread>,
    pub load_records_per_sec: f64,
}

/// The same method as Conclave's: a put every 10 ms from each surviving member's client,
/// each put on its own connection so a stalled one does not hold back the next; SIGKILL the
/// leader; time to the first acknowledgement of a put sent after the kill; restart it and
/// wait until it has caught up.
pub async fn failover(c: &mut EtcdCluster, runs: usize) -> Result<EtcdFailover, BenchError> {
    let every = Duration::from_millis(10);
    let mut out = Vec::new();
    for _ in 0..runs {
        let leader = c.leader().await?;
        let targets: Vec<SocketAddr> = c
            .members()
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != leader && m.pid.is_some())
            .map(|(_, m)| m.client)
            .collect();
        let name = c.members()[leader].name.clone();
        let counter = AtomicUsize::new(0);
        let counter = &counter;
        let gap = kill_under_load(
            targets.len(),
            every,
            Duration::from_millis(500),
            Duration::from_secs(30),
            |i| {
                let addr = targets[i];
                async move {
                    let id = counter.fetch_add(1, Ordering::Relaxed);
                    // A connection of its own: a put stalled in the election holds no other.
                    let put = async {
                        let mut h = HttpConn::connect(addr).await?;
                        let key = format!("failover/{id}");
                        etcd::put(&mut h, key.as_bytes(), record_text(id as u64).as_bytes()).await
                    };
                    match tokio::time::timeout(PUT_DEADLINE, put).await {
                        Ok(Ok(_)) => Some(Instant::now()),
                        _ => None,
                    }
                }
            },
            || async { c.kill9(leader) },
        )
        .await;
        let gap = gap?;
        c.restart(leader).await?;
        wait_caught_up(c, leader).await?;
        out.push(EtcdFailoverRun {
            killed: name,
            kill_to_next_ack_ms: ms(gap),
        });
    }
    let gaps: Vec<Duration> = out
        .iter()
        .map(|r| Duration::from_secs_f64(r.kill_to_next_ack_ms / 1000.0))
        .collect();
    Ok(EtcdFailover {
        kill_to_next_ack: Spread::of(&gaps),
        runs: out,
        load_records_per_sec: 1000.0 / every.as_millis() as f64,
    })
}

/// Waits until member `i` has applied what the leader had committed when this was called.
async fn wait_caught_up(c: &EtcdCluster, i: usize) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let leader = c.leader().await?;
    let target = c.raft_index(leader).await?;
    let until = start + Duration::from_secs(120);
    loop {
        if let Ok(applied) = c.applied_index(i).await {
            if applied >= target {
                return Ok(start.elapsed());
            }
        }
        if Instant::now() > until {
            return Err(BenchError::Deadline(format!(
                "etcd member {i} catching up to raft index {target}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdCatchup {
    pub records: usize,
    pub target_raft_index: u64,
    /// From the new member's process start (after `member/add` was accepted) to its applied
    /// index reaching the leader's, as Conclave's figure counts from its process's start.
    /// etcd refuses `member/add` for about 5 s after a member (re)started; that wait is left
    /// out.
    pub add_to_caught_up_ms: f64,
}

/// Writes `records` puts (64 in flight), adds a member, and times it until it has applied
/// the leader's raft index of the moment.
pub async fn catchup(c: &mut EtcdCluster, records: usize) -> Result<EtcdCatchup, BenchError> {
    let app = EtcdAppender::new(c.client_addrs(), 64);
    let slots = 64.min(records.max(1));
    let per_slot = records.div_ceil(slots);
    let one = |slot: usize| {
        let app = &app;
        async move {
            let mut done = 0;
            let mut errors = 0;
            while done < per_slot {
                match app.put(slot).await {
                    Ok(_) => done += 1,
                    Err(e) if errors < 100 => {
                        errors += 1;
                        tracing::debug!("etcd put: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<(), BenchError>(())
        }
    };
    for r in futures::future::join_all((0..slots).map(one)).await {
        r?;
    }
    let leader = c.leader().await?;
    let target = c.raft_index(leader).await?;
    let i = c.add_member().await?;
    let started = c.members()[i].started.unwrap_or_else(Instant::now);
    let until = started + Duration::from_secs(120);
    loop {
        if let Ok(applied) = c.applied_index(i).await {
            if applied >= target {
                break;
            }
        }
        if Instant::now() > until {
            return Err(BenchError::Deadline(format!(
                "the new etcd member reaching raft index {target}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(EtcdCatchup {
        records: per_slot * slots,
        target_raft_index: target,
        add_to_caught_up_ms: ms(started.elapsed()),
    })
}
