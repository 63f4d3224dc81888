//! The named workloads and the closed-loop runner both systems go through: `in_flight`
//! appenders, each appending one record and waiting for its acknowledgement before the next,
//! so exactly that many records are in flight at every moment.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::Latency;
use crate::BenchError;

/// One workload of `conclave bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One writer, one record at a time.
    Seq,
    /// That many records in flight from several writers.
    InFlight(usize),
    /// SIGKILL the leader under light load; time to the next acknowledged record.
    Failover,
    /// A new member joins after 10,000 records; time until it holds the head.
    Catchup,
    /// Offline verification of a chain of 100,000 records.
    Verify,
    /// 5 voters and 45 learners at 1,000 records/s.
    Scale,
    /// The group left alone: elections counted (there should be none).
    Idle,
}

impl Workload {
    /// What `conclave bench` runs when no workload is named (`scale` starts 50 processes and
    /// `idle` waits ten minutes; they run only when named).
    pub const DEFAULT: &'static [Workload] = &[
        Workload::Seq,
        Workload::InFlight(16),
        Workload::InFlight(64),
        Workload::InFlight(256),
        Workload::Failover,
        Workload::Catchup,
        Workload::Verify,
    ];

    pub fn name(&self) -> String {
        match self {
            Workload::Seq => "seq".into(),
            Workload::InFlight(n) => format!("c{n}"),
            Workload::Failover => "failover".into(),
            Workload::Catchup => "catchup".into(),
            Workload::Verify => "verify".into(),
            Workload::Scale => "scale".into(),
            Workload::Idle => "idle".into(),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "seq" => Ok(Workload::Seq),
            "failover" => Ok(Workload::Failover),
            "catchup" => Ok(Workload::Catchup),
            "verify" => Ok(Workload::Verify),
            "scale" => Ok(Workload::Scale),
            "idle" => Ok(Workload::Idle),
            c if c.starts_with('c') => match c[1..].parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => Ok(Workload::InFlight(n)),
                _ => Err(format!("{s:?}: cN takes N from 1 to 4096 (c16, c64, c256)")),
            },
            _ => Err(format!(
                "unknown workload {s:?}: seq, c16, c64, c256 (any cN), failover, catchup, verify, scale, idle"
            )),
        }
    }
}

/// Something that appends one record through slot `slot` and resolves when it is
/// acknowledged, with the latency from the call. A slot is one of the in-flight appenders;
/// for etcd it is one connection, for Conclave one of the writing peers.
pub trait Appender: Sync {
    fn append(
        &self,
        slot: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Duration, BenchError>> + Send + '_>>;
}

/// The result of a closed-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub in_flight: usize,
    pub records: usize,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub latency: Option<Latency>,
    pub errors: usize,
    pub first_error: Option<String>,
}

/// Runs `in_flight` appenders for `warmup + measure`; counts and times only the
/// acknowledgements inside the measuring window.
pub async fn closed_loop(
    app: &dyn Appender,
    in_flight: usize,
    warmup: Duration,
    measure: Duration,
) -> Throughput {
    let start = Instant::now();
    let from = start + warmup;
    let until = from + measure;
    let one = |slot: usize| async move {
        let mut lat = Vec::new();
        let mut errors = 0usize;
        let mut first_error = None;
        while Instant::now() < until {
            match app.append(slot).await {
                Ok(d) => {
                    let done = Instant::now();
                    if done >= from && done <= until {
                        lat.push(d);
                    }
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                    // An error usually means a gone process or no leader: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        (lat, errors, first_error)
    };
    let results = futures::future::join_all((0..in_flight).map(one)).await;
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for (l, e, f) in results {
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let seconds = measure.as_secs_f64();
    Throughput {
        in_flight,
        records: lat.len(),
        seconds,
        records_per_sec: lat.len() as f64 / seconds,
        latency: Latency::of(&lat),
        errors,
        first_error,
    }
}

/// One kill under load, the method both systems share. `senders` open-loop senders each
/// start `send(i)` every `every`, each on its own so a stalled append holds back nothing;
/// `send` resolves to the time of its acknowledgement, or `None`. After `settle`, `kill`
/// runs. Returns the time from the kill to the first acknowledgement of an append *sent*
/// after it; the load stops then and what is still in flight is let finish.
pub async fn kill_under_load<S, SF, K, KF>(
    senders: usize,
    every: Duration,
    settle: Duration,
    deadline: Duration,
    send: S,
    kill: K,
) -> Result<Duration, BenchError>
where
    S: Fn(usize) -> SF,
    SF: Future<Output = Option<Instant>>,
    K: FnOnce() -> KF,
    KF: Future<Output = Result<(), BenchError>>,
{
    let stop = std::sync::atomic::AtomicBool::new(false);
    let killed_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let first_after: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let acked = tokio::sync::Notify::new();
    let (stop, killed_at, first_after, acked, send) =
        (&stop, &killed_at, &first_after, &acked, &send);
    let load = |i: usize| async move {
        use std::sync::atomic::Ordering;
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut next = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if stopping && inflight.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()), if !stopping => {
                    next += every;
                    inflight.push(async move {
                        let sent = Instant::now();
                        let Some(at) = send(i).await else { return };
                        let k = killed_at.lock().ok().and_then(|k| *k);
                        if k.is_some_and(|k| sent >= k) {
                            if let Ok(mut f) = first_after.lock() {
                                if f.is_none_or(|f| at < f) {
                                    *f = Some(at);
                                }
                            }
                            acked.notify_one();
                        }
                    });
                }
                Some(()) = futures::StreamExt::next(&mut inflight), if !inflight.is_empty() => {}
                // Wake now and then to see `stop`.
                _ = tokio::time::sleep(Duration::from_millis(5)), if stopping => {}
            }
        }
    };
    let driver = async {
        tokio::time::sleep(settle).await;
        let t = Instant::now();
        if let Ok(mut k) = killed_at.lock() {
            *k = Some(t);
        }
        kill().await?;
        let until = tokio::time::Instant::from_std(t + deadline);
        loop {
            if let Some(f) = first_after.lock().ok().and_then(|f| *f) {
                return Ok(f.saturating_duration_since(t));
            }
            if tokio::time::timeout_at(until, acked.notified())
                .await
                .is_err()
            {
                return Err(BenchError::Deadline(
                    "an acknowledged append after the leader's kill".into(),
                ));
            }
        }
    };
    let (gap, _) = futures::future::join(
        async {
            let r = driver.await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        },
        futures::future::join_all((0..senders).map(load)),
    )
    .await;
    gap
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn only_appends_sent_after_the_kill_count() {
        let killed = std::sync::Mutex::new(None::<Instant>);
        // Appends take 30 ms before the kill; after it, only those sent 40 ms later succeed.
        let gap = kill_under_load(
            2,
            Duration::from_millis(5),
            Duration::from_millis(50),
            Duration::from_secs(5),
            |_| async {
                let sent = Instant::now();
                let k = *killed.lock().unwrap();
                match k {
                    Some(k) if sent < k + Duration::from_millis(40) => None,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Some(Instant::now())
                    }
                }
            },
            || async {
                *killed.lock().unwrap() = Some(Instant::now());
                Ok(())
            },
        )
        .await
        .unwrap();
        assert!(gap >= Duration::from_millis(70), "{gap:?}");
        assert!(gap < Duration::from_secs(2), "{gap:?}");
    }

    #[test]
    fn names_round_trip_and_bad_names_explain() {
        for w in Workload::DEFAULT
            .iter()
            .chain([&Workload::Scale, &Workload::Idle])
        {
            assert_eq!(w.name().parse::<Workload>().unwrap(), *w);
        }
        assert_eq!("c7".parse::<Workload>().unwrap(), Workload::InFlight(7));
        assert!("c0".parse::<Workload>().unwrap_err().contains("cN"));
        assert!("fast"
            .parse::<Workload>()
            .unwrap_err()
            .contains("unknown workload"));
    }

    /// Acknowledges after 2 ms; every 10th append fails.
    struct Fake(AtomicUsize);
    impl Appender for Fake {
        fn append(
            &self,
            _slot: usize,
        ) -> Pin<Box<dyn Future<Output = Result<Duration, BenchError>> + Send + '_>> {
            Box::pin(async move {
                let n = self.0.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
                if n % 10 == 9 {
                    Err(BenchError::Other("fake failure".into()))
                } else {
                    Ok(Duration::from_millis(2))
                }
            })
        }
    }

    #[tokio::test]
    async fn the_closed_loop_keeps_n_in_flight_and_counts_only_the_window() {
        let fake = Fake(AtomicUsize::new(0));
        let t = closed_loop(
            &fake,
            8,
            Duration::from_millis(50),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(t.in_flight, 8);
        assert!(t.records > 0 && t.errors > 0, "{t:?}");
        // 8 in flight at ≥ 2 ms each cannot exceed 4,000/s (plus the sleeps after errors).
        assert!(t.records_per_sec <= 4_000.0, "{t:?}");
        assert_eq!(t.first_error.as_deref(), Some("fake failure"));
        assert_eq!(t.latency.unwrap().p50_ms, 2.0);
    }
}
