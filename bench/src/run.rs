//! What `conclave bench` does: start a group (and, to compare, an etcd cluster), run the named
//! workloads, alternating between the systems workload by workload, and collect the results
//! with the CPU each system used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conclave::{self, Catchup, ConclaveAppender, Failover, Idle, Scale};
use crate::cpu::cpu_seconds;
use crate::etcd::EtcdCluster;
use crate::group::Group;
use crate::verify::{self, Verify};
use crate::vs_etcd::{self, EtcdAppender, EtcdCatchup, EtcdFailover};
use crate::workload::{closed_loop, Throughput, Workload};
use crate::BenchError;

/// Durability in force for every Conclave figure.
pub const CONCLAVE_DURABILITY: &str = "fsync before acknowledging (the default and only mode): \
    every Raft log append (on the leader and on the followers that make the majority) is \
    fdatasync'd in the write-ahead log, the author's in-flight batch in its journal and every \
    vote by an fsync'd redb commit, before a record is acknowledged; concurrent appends share \
    one sync (group commit). Applied blocks and outbox bookkeeping are committed without \
    fsync: the durable log replays them after a crash";
/// Durability in force for every etcd figure.
pub const ETCD_DURABILITY: &str = "etcd defaults: the WAL is fsynced before a put is acknowledged";

#[derive(Debug, Clone)]
pub struct Options {
    /// The `conclave` binary every process runs.
    pub bin: PathBuf,
    /// Where the group's (and etcd's) data and logs go.
    pub dir: PathBuf,
    pub peers: usize,
    pub workloads: Vec<Workload>,
    pub warmup: Duration,
    pub duration: Duration,
    pub failover_runs: usize,
    pub catchup_records: usize,
    pub verify_records: usize,
    pub scale_members: usize,
    pub scale_rate: f64,
    pub scale_duration: Duration,
    pub idle: Duration,
    /// A config file every peer reads (`--config`), e.g. other Raft timings; `None`: the
    /// built-in defaults.
    pub peer_config: Option<PathBuf>,
    pub compare_etcd: bool,
    /// Attach to this group's proxy instead of starting one (only the writers are ours).
    pub proxy: Option<SocketAddr>,
}

/// One system's figure for one workload.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Figure {
    Throughput(Throughput),
    Failover(Failover),
    EtcdFailover(EtcdFailover),
    Catchup(Catchup),
    EtcdCatchup(EtcdCatchup),
    Verify(Verify),
    Scale(Scale),
    Idle(Idle),
    Skipped { why: String },
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub figure: Figure,
    /// CPU seconds (user + system) of the system's processes during the workload.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl Measured {
    /// A figure with nothing measured (skipped, or failed before it started).
    fn unmeasured(figure: Figure) -> Self {
        Measured {
            figure,
            cpu_seconds: 0.0,
            wall_seconds: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub conclave: Measured,
    pub etcd: Option<Measured>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub peers: usize,
    /// The config every peer read, if not the built-in defaults.
    pub peer_config: Option<String>,
    pub record_bytes: usize,
    pub conclave_durability: String,
    pub etcd_durability: Option<String>,
    pub machine: String,
    pub started: String,
    pub rows: Vec<Row>,
}

/// A line about the machine: cores, model, kernel.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} cores, {model}, Linux {kernel}")
}

async fn measured<F, Fut>(pids: impl Fn() -> Vec<u32>, f: F) -> Measured
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Figure, BenchError>>,
{
    let before = pids();
    let cpu0 = cpu_seconds(&before);
    let t = Instant::now();
    let figure = f().await.unwrap_or_else(|e| Figure::Failed {
        error: e.to_string(),
    });
    let wall_seconds = t.elapsed().as_secs_f64();
    // A process killed during the workload takes its CPU time with it: failover figures
    // undercount, throughput figures (nothing killed) are exact.
    let cpu1 = cpu_seconds(&pids());
    Measured {
        figure,
        cpu_seconds: (cpu1 - cpu0).max(0.0),
        wall_seconds,
    }
}

/// Runs everything `opts` names; `progress` gets a line as each workload starts and ends.
pub async fn run(opts: &Options, progress: &dyn Fn(&str)) -> Result<Report, BenchError> {
    let started = humantime_now();
    let mut rows = Vec::new();
    std::fs::create_dir_all(&opts.dir)?;
    progress(&format!(
        "starting a group of {} peers in {}",
        opts.peers,
        opts.dir.display()
    ));
    let mut group = match opts.proxy {
        Some(_) => {
            return Err(BenchError::Other(
                "attaching to a running group (--proxy) is not built yet".into(),
            ))
        }
        None => {
            Group::start(
                &opts.bin,
                &opts.dir.join("conclave"),
                opts.peers,
                &peer_args(opts),
            )
            .await?
        }
    };
    let mut etcd = if opts.compare_etcd {
        tokio::task::spawn_blocking(crate::etcd::ensure_installed)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))??;
        progress("starting a 3-member etcd cluster");
        let dir = opts.dir.join("etcd");
        std::fs::create_dir_all(&dir)?;
        Some(EtcdCluster::start(&dir, 3).await?)
    } else {
        None
    };
    for w in &opts.workloads {
        progress(&format!("{} ...", w.name()));
        let etcd_m = match etcd.as_mut() {
            Some(c) => Some(run_etcd(c, *w, opts).await),
            None => None,
        };
        let conclave_m = run_conclave(&mut group, *w, opts).await;
        progress(&format!("{} done", w.name()));
        rows.push(Row {
            workload: w.name(),
            conclave: conclave_m,
            etcd: etcd_m,
        });
    }
    Ok(Report {
        peers: opts.peers,
        peer_config: opts.peer_config.as_ref().map(|p| p.display().to_string()),
        record_bytes: crate::group::RECORD_BYTES,
        conclave_durability: CONCLAVE_DURABILITY.into(),
        etcd_durability: opts.compare_etcd.then(|| ETCD_DURABILITY.into()),
        machine: machine(),
        started,
        rows,
    })
}

fn peer_args(opts: &Options) -> Vec<String> {
    match &opts.peer_config {
        Some(c) => vec!["--config".into(), c.display().to_string()],
        None => Vec::new(),
    }
}

fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs} (seconds since 1970)")
}

async fn run_conclave(g: &mut Group, w: Workload, opts: &Options) -> Measured {
    match w {
        Workload::Seq | Workload::InFlight(_) => {
            let (n, writers) = match w {
                Workload::Seq => (1, vec![0]),
                Workload::InFlight(n) => (n, g.running()),
                _ => unreachable!("matched above"),
            };
            let pids = g.pids();
            let app = ConclaveAppender { group: g, writers };
            measured(
                || pids.clone(),
                || async {
                    Ok(Figure::Throughput(
                        closed_loop(&app, n, opts.warmup, opts.duration).await,
                    ))
                },
            )
            .await
        }
        Workload::Failover => {
            let pids = g.pids();
            measured(
                || pids.clone(),
                || async {
                    conclave::failover(g, opts.failover_runs)
                        .await
                        .map(Figure::Failover)
                },
            )
            .await
        }
        Workload::Catchup => {
            // A group of its own, so the newcomer replays exactly these records (and not the
            // other workloads' ones), as etcd's fresh cluster does.
            let dir = opts.dir.join("catchup");
            let mut fresh = match Group::start(&g.bin, &dir, opts.peers, &peer_args(opts)).await {
                Ok(f) => f,
                Err(e) => {
                    return Measured::unmeasured(Figure::Failed {
                        error: e.to_string(),
                    })
                }
            };
            let pids = fresh.pids();
            measured(
                || pids.clone(),
                || async {
                    conclave::catchup(&mut fresh, opts.catchup_records)
                        .await
                        .map(Figure::Catchup)
                },
            )
            .await
        }
        Workload::Verify => {
            let records = opts.verify_records;
            measured(
                || vec![std::process::id()],
                || async move {
                    tokio::task::spawn_blocking(move || verify::verify(records, 100))
                        .await
                        .map_err(|e| BenchError::Other(e.to_string()))?
                        .map(Figure::Verify)
                },
            )
            .await
        }
        Workload::Idle => {
            let pids = g.pids();
            measured(
                || pids.clone(),
                || async { conclave::idle(g, opts.idle).await.map(Figure::Idle) },
            )
            .await
        }
        Workload::Scale => {
            let pids = g.pids();
            measured(
                || pids.clone(),
                || async {
                    conclave::scale(g, opts.scale_members, opts.scale_rate, opts.scale_duration)
                        .await
                        .map(Figure::Scale)
                },
            )
            .await
        }
    }
}

async fn run_etcd(c: &mut EtcdCluster, w: Workload, opts: &Options) -> Measured {
    let pids = c.pids();
    match w {
        Workload::Seq | Workload::InFlight(_) => {
            let n = match w {
                Workload::InFlight(n) => n,
                _ => 1,
            };
            let app = EtcdAppender::new(c.client_addrs(), n);
            measured(
                || pids.clone(),
                || async {
                    Ok(Figure::Throughput(
                        closed_loop(&app, n, opts.warmup, opts.duration).await,
                    ))
                },
            )
            .await
        }
        Workload::Failover => {
            measured(
                || pids.clone(),
                || async {
                    vs_etcd::failover(c, opts.failover_runs)
                        .await
                        .map(Figure::EtcdFailover)
                },
            )
            .await
        }
        Workload::Catchup => {
            let dir = opts.dir.join("etcd-catchup");
            let fresh = match std::fs::create_dir_all(&dir) {
                Ok(()) => EtcdCluster::start(&dir, 3).await,
                Err(e) => Err(e.into()),
            };
            let mut fresh = match fresh {
                Ok(f) => f,
                Err(e) => {
                    return Measured::unmeasured(Figure::Failed {
                        error: e.to_string(),
                    })
                }
            };
            let pids = fresh.pids();
            measured(
                || pids.clone(),
                || async {
                    vs_etcd::catchup(&mut fresh, opts.catchup_records)
                        .await
                        .map(Figure::EtcdCatchup)
                },
            )
            .await
        }
        Workload::Verify | Workload::Scale | Workload::Idle => {
            Measured::unmeasured(Figure::Skipped {
                why: "etcd has no such workload (no signed chain to verify; scale and idle are \
                      Conclave's own targets)"
                    .into(),
            })
        }
    }
}
