//! One seed of the chaos run: a group behind relays, a writer on every peer, the seed's
//! [`Schedule`] of faults, then heal, settle, stop and judge with [`check_all`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checker::{check_all, Counts, Violation};
use crate::group::{Group, GroupError, GroupOptions};
use crate::history::{History, HistoryError};
use crate::net::LinkFaults;
use crate::schedule::{Fault, Schedule, Who};
use crate::store::ReadChainError;
use crate::writer::WriterStats;

/// How long, after the faults, the writers may take to hear about their last lines.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(90);
/// How long the peers' heads may take to agree once the writers are done.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
/// How long the writers keep appending on the healed group before they stop.
const AFTER_HEAL: Duration = Duration::from_secs(2);

/// What one seed needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub bin: PathBuf,
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    pub peers: usize,
    /// The seed's directory (wiped first): data, logs, histories, the schedule.
    pub dir: PathBuf,
    /// A writer's pause between an answer and its next line.
    pub pace: Duration,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Group(#[from] GroupError),
    #[error("cannot prepare {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("the history does not load: {0}")]
    History(#[from] HistoryError),
    #[error("a chain does not read: {0}")]
    Chain(#[from] ReadChainError),
    #[error("{fault}: {source}")]
    Fault { fault: String, source: GroupError },
    #[error("interrupted")]
    Interrupted,
}

/// What a seed found.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub dir: PathBuf,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    pub counts: Counts,
    pub violations: Vec<Violation>,
    pub writers: Vec<WriterStats>,
    /// Things that went wrong besides the checks (a writer that lost its numbering, peers
    /// that did not settle or stop cleanly): each fails the seed.
    pub problems: Vec<String>,
    /// Whether every peer's head agreed before the stop.
    pub converged: bool,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.problems.is_empty()
    }

    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// Runs one seed to its report. `cancel` (Ctrl-C) stops it early with
/// [`RunError::Interrupted`]; every process is killed either way.
pub async fn run_seed(
    opts: &RunOptions,
    cancel: &CancellationToken,
) -> Result<SeedReport, RunError> {
    let io = |path: &PathBuf, e: std::io::Error| RunError::Io {
        path: path.clone(),
        why: e.to_string(),
    };
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| io(&opts.dir, e))?;
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| io(&opts.dir, e))?;
    let names: Vec<String> = (1..=opts.peers).map(|i| format!("p{i}")).collect();
    let schedule = Schedule::generate(opts.seed, opts.duration, &names);
    let schedule_file = opts.dir.join("schedule.txt");
    std::fs::write(&schedule_file, schedule.to_string()).map_err(|e| io(&schedule_file, e))?;

    let group_opts = GroupOptions {
        bin: opts.bin.clone(),
        dir: opts.dir.clone(),
        seed: opts.seed,
        config: None,
    };
    let mut group = tokio::select! {
        g = Group::start(group_opts, opts.peers) => g?,
        _ = cancel.cancelled() => return Err(RunError::Interrupted),
    };
    for n in &names {
        group.start_writer(n, opts.pace)?;
    }
    let mut faults = BTreeMap::new();
    let t0 = Instant::now();
    for e in &schedule.episodes {
        if !sleep_until(t0 + e.start, cancel).await {
            return Err(RunError::Interrupted);
        }
        let undo = apply(&mut group, &e.fault)
            .await
            .map_err(|source| RunError::Fault {
                fault: e.fault.to_string(),
                source,
            })?;
        *faults.entry(e.fault.kind().to_owned()).or_insert(0) += 1;
        if !sleep_until(t0 + e.start + e.hold, cancel).await {
            return Err(RunError::Interrupted);
        }
        undo_fault(&mut group, undo)
            .await
            .map_err(|source| RunError::Fault {
                fault: format!("undoing {}", e.fault),
                source,
            })?;
    }
    heal_everything(&mut group).await?;
    if !sleep_until(Instant::now() + AFTER_HEAL, cancel).await {
        return Err(RunError::Interrupted);
    }

    let mut problems = Vec::new();
    group.quiesce_writers();
    if !settle(&group, cancel).await? {
        problems.push(format!(
            "writers still waiting for answers {SETTLE_DEADLINE:?} after the faults ended"
        ));
    }
    let converged = converge(&group, cancel).await?;
    let writers = group.finish_writers().await;
    for w in &writers {
        if let Some(e) = &w.error {
            problems.push(format!("writer {}: {e}", w.name));
        }
    }
    let unclean = group.stop_all().await;
    if !unclean.is_empty() {
        problems.push(format!("did not stop cleanly: {}", unclean.join(", ")));
    }
    let root = group.root()?;
    let chains = group.chains()?;
    group.shutdown().await;
    let history = History::load_dir(&opts.dir.join("history"))?;
    let report = check_all(&history, &chains, &root);
    info!(seed = opts.seed, passed = report.passed(), "seed checked");
    Ok(SeedReport {
        seed: opts.seed,
        dir: opts.dir.clone(),
        faults,
        counts: report.counts,
        violations: report.violations,
        writers,
        problems,
        converged,
    })
}

/// What undoes an applied fault.
enum Undo {
    Restart(Vec<String>),
    Resume(String),
    Heal,
    Calm,
    Nothing,
}

fn resolve(group: &Group, who: &Who) -> String {
    match who {
        Who::Peer(p) => p.clone(),
        Who::Leader => group
            .leader()
            .map(|(n, _)| n)
            .unwrap_or_else(|| "p1".to_owned()),
    }
}

async fn apply(group: &mut Group, fault: &Fault) -> Result<Undo, GroupError> {
    info!(%fault, "fault");
    Ok(match fault {
        Fault::Kill(who) => {
            let name = resolve(group, who);
            group.kill9(&name).await?;
            Undo::Restart(vec![name])
        }
        Fault::KillAll => {
            group.kill9_all().await?;
            Undo::Restart(group.names())
        }
        Fault::Pause(who) => {
            let name = resolve(group, who);
            if !group.peer(&name)?.running() {
                return Ok(Undo::Nothing);
            }
            group.pause(&name)?;
            Undo::Resume(name)
        }
        Fault::Isolate(who) => {
            let name = resolve(group, who);
            group.faults().isolate(&name);
            Undo::Heal
        }
        Fault::Split(side) => {
            let rest: Vec<String> = group
                .names()
                .into_iter()
                .filter(|n| !side.contains(n))
                .collect();
            group.faults().split(side, &rest);
            Undo::Heal
        }
        Fault::Cut(a, b) => {
            group.faults().cut(a, b);
            Undo::Heal
        }
        Fault::Degrade(link) => {
            group.faults().set_all(*link);
            Undo::Calm
        }
    })
}

async fn undo_fault(group: &mut Group, undo: Undo) -> Result<(), GroupError> {
    match undo {
        Undo::Restart(names) => {
            for n in names {
                group.restart(&n).await?;
            }
        }
        Undo::Resume(n) => group.resume(&n)?,
        Undo::Heal => group.faults().heal(),
        Undo::Calm => group.faults().set_all(LinkFaults::default()),
        Undo::Nothing => {}
    }
    Ok(())
}

/// No cuts, no lossy links, nobody paused, everybody running.
async fn heal_everything(group: &mut Group) -> Result<(), RunError> {
    group.faults().clear();
    for n in group.names() {
        if group.peer(&n)?.paused {
            group.resume(&n)?;
        }
        group.restart(&n).await?;
    }
    Ok(())
}

/// Waits until no writer has a line outstanding; false at the deadline.
async fn settle(group: &Group, cancel: &CancellationToken) -> Result<bool, RunError> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let stats = group.writer_stats().await;
        if stats.iter().all(|w| !w.outstanding) {
            return Ok(true);
        }
        if Instant::now() > until {
            let waiting: Vec<&str> = stats
                .iter()
                .filter(|w| w.outstanding)
                .map(|w| w.name.as_str())
                .collect();
            warn!(?waiting, "writers did not settle");
            return Ok(false);
        }
        if !sleep_until(Instant::now() + Duration::from_millis(100), cancel).await {
            return Err(RunError::Interrupted);
        }
    }
}

/// Waits until every peer's last `head` is the same block; false at the deadline.
async fn converge(group: &Group, cancel: &CancellationToken) -> Result<bool, RunError> {
    let until = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let heads: Vec<_> = group.names().iter().map(|n| group.head_of(n)).collect();
        if heads.first().is_some_and(|h| h.is_some()) && heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(true);
        }
        if Instant::now() > until {
            warn!(?heads, "heads did not agree");
            return Ok(false);
        }
        if !sleep_until(Instant::now() + Duration::from_millis(200), cancel).await {
            return Err(RunError::Interrupted);
        }
    }
}

/// Sleeps until `at`; false if cancelled first.
async fn sleep_until(at: Instant, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => true,
        _ = cancel.cancelled() => false,
    }
}
