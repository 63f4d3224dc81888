//! `conclave bench`: turns flags into `conclave_bench::run::Options`, prints the table, and
//! writes the JSON results and the plot when asked.

use std::time::Duration;

use anyhow::Context;
use conclave_bench::run::{self, Options};
use conclave_bench::workload::Workload;

use crate::cli::BenchArgs;

pub async fn run(args: BenchArgs, json: bool) -> anyhow::Result<()> {
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::DEFAULT.to_vec()
    } else {
        args.workloads
            .iter()
            .map(|w| w.parse::<Workload>())
            .collect::<Result<_, _>>()
            .map_err(|e| usage(&e))?
    };
    if args.peers == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        return Err(usage(
            "--peers must be at least 1, --duration above 0, --warmup at least 0",
        ));
    }
    let temp = tempfile::Builder::new()
        .prefix("conclave-bench-")
        .tempdir()?;
    let opts = Options {
        bin: std::env::current_exe().context("cannot find this binary")?,
        dir: temp.path().to_owned(),
        peers: args.peers,
        workloads,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        failover_runs: args.failover_runs,
        catchup_records: args.catchup_records,
        verify_records: args.verify_records,
        scale_members: args.scale_members,
        scale_rate: args.scale_rate,
        scale_duration: Duration::from_secs_f64(args.scale_duration),
        idle: Duration::from_secs_f64(args.idle_secs),
        peer_config: args
            .peer_config
            .as_ref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        compare_etcd: args.compare_etcd,
        proxy: None,
    };
    let result = run::run(&opts, &|line| eprintln!("bench: {line}")).await;
    if args.keep {
        let kept = temp.keep();
        eprintln!("bench: data and logs kept in {}", kept.display());
    }
    let report = result?;
    print!("{}", conclave_bench::report::table(&report));
    if json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&args.out, text + "\n")
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        eprintln!("bench: results written to {}", args.out.display());
    }
    if let Some(path) = &args.plot {
        match conclave_bench::plot::svg(&report) {
            Some(svg) => {
                std::fs::write(path, svg)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("bench: plot written to {}", path.display());
            }
            None => eprintln!("bench: no throughput workload ran, so no plot"),
        }
    }
    Ok(())
}

fn usage(msg: &str) -> anyhow::Error {
    eprintln!("conclave: {msg}");
    std::process::exit(2);
}
