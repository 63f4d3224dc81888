//! `chaos`: seeded, replayable fault runs against a real group. See docs/TESTING.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use conclave_chaos::runner::{run_seed, RunError, RunOptions, SeedReport};
use tokio_util::sync::CancellationToken;

/// Runs a group of real `conclave` processes behind fault-injecting relays, appends to it
/// continuously while a seeded schedule kills, restarts, pauses and partitions its peers,
/// then heals everything and checks the peers' chains against what the writers were told.
#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds, from --start on.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of --seeds.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// How long faults are injected per seed (then heal, settle, check).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Peers in the group.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=9))]
    peers: u64,
    /// Each writer's pause between an answer and its next line.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pace: Duration,
    /// Where each seed's data, logs and histories go (`DIR/seed-N`); default: a temporary
    /// directory, removed after a passing seed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directories of passing seeds too.
    #[arg(long)]
    keep: bool,
    /// The `conclave` binary; default: $CONCLAVE_BIN, else the one next to this binary
    /// (built with cargo if it is missing).
    #[arg(long)]
    conclave: Option<PathBuf>,
    /// Print each seed's report as a JSON line too.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let bin = conclave_bin(args.conclave.as_deref())?;
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(s), _) => vec![s],
        (None, Some(k)) => (args.start..args.start.saturating_add(k)).collect(),
        (None, None) => bail!("say --seed N or --seeds K"),
    };
    let mut tmp = None;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("conclave-chaos-")
                .tempdir()?;
            let path = t.path().to_owned();
            tmp = Some(t);
            path
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("chaos: interrupted; stopping every process");
            on_signal.cancel();
        }
    });
    let mut total = Totals::default();
    let mut failed = Vec::new();
    for seed in seeds {
        let opts = RunOptions {
            bin: bin.clone(),
            seed,
            duration: args.duration,
            peers: args.peers as usize,
            dir: base.join(format!("seed-{seed}")),
            pace: args.pace,
        };
        let replay = replay_command(&args, seed);
        match rt.block_on(run_seed(&opts, &cancel)) {
            Ok(report) => {
                print_report(&report);
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                total.add(&report);
                if report.passed() {
                    if !args.keep {
                        let _ = std::fs::remove_dir_all(&opts.dir);
                    }
                } else {
                    println!("  replay: {replay}");
                    println!("  data, logs and histories: {}", opts.dir.display());
                    failed.push(seed);
                }
            }
            Err(RunError::Interrupted) => {
                println!("seed {seed}: interrupted");
                failed.push(seed);
                break;
            }
            Err(e) => {
                println!("seed {seed}: FAIL (the run broke off: {e})");
                println!("  replay: {replay}");
                println!("  data, logs and histories: {}", opts.dir.display());
                failed.push(seed);
                total.seeds += 1;
            }
        }
    }
    if let Some(t) = tmp {
        if failed.is_empty() || args.keep {
            if args.keep {
                println!("kept: {}", t.keep().display());
            }
        } else {
            // The evidence of a failure stays.
            let _ = t.keep();
        }
    }
    println!(
        "{} seeds: faults injected {}, records acknowledged {}, lost {}, duplicated {}, divergent chains {}; {}",
        total.seeds,
        total.faults,
        total.acknowledged,
        total.lost,
        total.duplicated,
        total.divergent,
        if failed.is_empty() {
            "PASS".to_owned()
        } else {
            format!("FAIL (seeds {failed:?})")
        }
    );
    Ok(failed.is_empty())
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    faults: u64,
    acknowledged: u64,
    lost: u64,
    duplicated: u64,
    divergent: u64,
}

impl Totals {
    fn add(&mut self, r: &SeedReport) {
        self.seeds += 1;
        self.faults += r.faults_total();
        self.acknowledged += r.counts.acknowledged as u64;
        self.lost += r.counts.lost as u64;
        self.duplicated += r.counts.duplicated as u64;
        self.divergent += r.counts.divergent_chains as u64;
    }
}

fn print_report(r: &SeedReport) {
    let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "seed {}: {} — faults {} ({}); acknowledged {}, lost {}, duplicated {}, divergent chains {}, indeterminate {} ({} committed){}",
        r.seed,
        if r.passed() { "PASS" } else { "FAIL" },
        r.faults_total(),
        faults.join(", "),
        r.counts.acknowledged,
        r.counts.lost,
        r.counts.duplicated,
        r.counts.divergent_chains,
        r.counts.indeterminate,
        r.counts.indeterminate_committed,
        if r.converged { "" } else { "; heads did not agree before the stop" },
    );
    for v in &r.violations {
        println!("  {v}");
    }
    for p in &r.problems {
        println!("  problem: {p}");
    }
}

fn replay_command(args: &Args, seed: u64) -> String {
    let mut cmd = format!(
        "chaos --seed {seed} --duration {} --peers {} --pace {}",
        humantime::format_duration(args.duration),
        args.peers,
        humantime::format_duration(args.pace)
    );
    if let Some(c) = &args.conclave {
        cmd.push_str(&format!(" --conclave {}", c.display()));
    }
    cmd
}

/// `--conclave`, else `$CONCLAVE_BIN`, else `conclave` next to this binary, built with cargo
/// (same profile) if it is not there.
fn conclave_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    // Processes start in their own directories, so a relative path is made absolute here.
    let given = flag
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("CONCLAVE_BIN").map(PathBuf::from));
    if let Some(p) = given {
        return std::fs::canonicalize(&p)
            .with_context(|| format!("no conclave binary at {}", p.display()));
    }
    let me = std::env::current_exe().context("where is this binary?")?;
    let dir = me.parent().context("this binary has no directory")?;
    let sibling = dir.join("conclave");
    if sibling.is_file() {
        return Ok(sibling);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the chaos crate has no workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--bin", "conclave"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    eprintln!("chaos: {} is missing; building it", sibling.display());
    let status = build.status().context("running cargo build")?;
    if !status.success() || !sibling.is_file() {
        bail!(
            "no conclave binary at {}: build it (cargo build --bin conclave), or pass --conclave",
            sibling.display()
        );
    }
    Ok(sibling)
}
