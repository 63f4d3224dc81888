//! A throwaway measurement of etcd through this crate's client, to show the client is not
//! the bottleneck: `cargo test --release -p conclave-bench --test etcd_measure -- --ignored
//! --nocapture`. Not a benchmark report; the workload runner does that.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_bench::cpu::cpu_seconds;
use conclave_bench::etcd::{find_etcd, put, EtcdCluster};
use conclave_bench::http::HttpConn;
use tokio::task::JoinSet;

type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const RUN_MS: u64 = 5_000;
const VALUE_BYTES: usize = 256;

/// Puts on `conns` connections for `RUN_MS`; returns per-put latencies.
async fn run(targets: Vec<SocketAddr>, conns: usize) -> TestResult<Vec<Duration>> {
    let end = Instant::now() + Duration::from_millis(RUN_MS);
    let mut tasks = JoinSet::new();
    for c in 0..conns {
        let addr = targets[c % targets.len()];
        tasks.spawn(async move {
            let mut conn = HttpConn::connect(addr).await?;
            let value = [0x5au8; VALUE_BYTES];
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let key = format!("c{c}-{n}");
                let t = Instant::now();
                put(&mut conn, key.as_bytes(), &value).await?;
                lat.push(t.elapsed());
                n += 1;
            }
            Ok::<_, conclave_bench::BenchError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

fn report(label: &str, mut lat: Vec<Duration>, cpu: f64, client_cpu: f64) {
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{label:<28} {:>7.0} puts/s  p50 {:>6.2} ms  p99 {:>6.2} ms  etcd cpu {:>5.2} s  client cpu {:>5.2} s",
        lat.len() as f64 / (RUN_MS as f64 / 1000.0),
        q(0.50).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        cpu,
        client_cpu,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures a real etcd for about 30 s"]
async fn measure_etcd() -> TestResult<()> {
    if find_etcd().is_none() {
        eprintln!("skipped: no etcd binary on PATH");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cluster = EtcdCluster::start(dir.path(), 3).await?;
    let leader = cluster.members()[cluster.leader().await?].client;
    let all = cluster.client_addrs();
    let me = [std::process::id()];
    for (label, targets, conns) in [
        ("sequential, leader", vec![leader], 1),
        (
            "sequential, follower",
            all.iter()
                .copied()
                .filter(|a| *a != leader)
                .take(1)
                .collect(),
            1,
        ),
        ("64 in flight, leader", vec![leader], 64),
        ("64 in flight, all members", all.clone(), 64),
        ("256 in flight, all members", all.clone(), 256),
    ] {
        let (c0, m0) = (cpu_seconds(&cluster.pids()), cpu_seconds(&me));
        let lat = run(targets, conns).await?;
        let (c1, m1) = (cpu_seconds(&cluster.pids()), cpu_seconds(&me));
        report(label, lat, c1 - c0, m1 - m0);
    }
    Ok(())
}
