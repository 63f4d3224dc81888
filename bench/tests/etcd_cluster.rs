//! A real 3-member etcd: start, write, kill the leader, write again, restart it, add a
//! member and wait for it to catch up. Skipped (with a line saying so) where no `etcd` is
//! installed, as in CI. Nothing timed is asserted: this checks the harness, not etcd.

use std::net::SocketAddr;
use std::time::Duration;

use conclave_bench::cpu::cpu_seconds;
use conclave_bench::etcd::{find_etcd, put, EtcdCluster};
use conclave_bench::http::HttpConn;
use tokio::time::{sleep, timeout, Instant};

type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Bound on each step that waits for the cluster (elections, catch-up).
const STEP_TIMEOUT_MS: u64 = 30_000;
/// Per-put bound: etcd holds a put sent mid-election for up to ~7 s.
const PUT_TIMEOUT_MS: u64 = 2_000;
const POLL_INTERVAL_MS: u64 = 50;

/// One put on any of `addrs`, retried until the deadline; fresh connections each time,
/// since a timed-out request leaves its connection unusable.
async fn put_anywhere(addrs: &[SocketAddr], key: &[u8]) -> TestResult<u64> {
    let deadline = Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    let mut last = String::new();
    while Instant::now() < deadline {
        for &addr in addrs {
            let attempt = async {
                let mut conn = HttpConn::connect(addr).await?;
                put(&mut conn, key, &[7u8; 256]).await
            };
            match timeout(Duration::from_millis(PUT_TIMEOUT_MS), attempt).await {
                Ok(Ok(rev)) => return Ok(rev),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("put on {addr} timed out"),
            }
        }
        sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    Err(format!("no put succeeded before the deadline: {last}").into())
}

async fn leader(cluster: &EtcdCluster) -> TestResult<usize> {
    let deadline = Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    loop {
        match cluster.leader().await {
            Ok(i) => return Ok(i),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => sleep(Duration::from_millis(POLL_INTERVAL_MS)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_survives_leader_kill_and_grows() -> TestResult<()> {
    if find_etcd().is_none() {
        eprintln!("skipped: no etcd binary on PATH (apt-get install etcd-server)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut cluster = EtcdCluster::start(dir.path(), 3).await?;
    assert_eq!(cluster.members().len(), 3);
    let all_pids = cluster.pids();
    assert_eq!(all_pids.len(), 3);

    let mut conn = HttpConn::connect(cluster.client_addrs()[0]).await?;
    let mut last_rev = 0;
    for k in 0..100u32 {
        let rev = put(&mut conn, format!("k{k}").as_bytes(), &[1u8; 256]).await?;
        assert!(rev > last_rev, "revisions increase");
        last_rev = rev;
    }
    assert!(cpu_seconds(&cluster.pids()) > 0.0);

    let old_leader = leader(&cluster).await?;
    cluster.kill9(old_leader)?;
    assert_eq!(cluster.client_addrs().len(), 2);
    assert!(cluster.members()[old_leader].pid.is_none());
    let rev = put_anywhere(&cluster.client_addrs(), b"after-kill").await?;
    assert!(rev > last_rev);
    let new_leader = leader(&cluster).await?;
    assert_ne!(new_leader, old_leader);

    cluster.restart(old_leader).await?;
    assert_eq!(cluster.client_addrs().len(), 3);

    let target = cluster.raft_index(leader(&cluster).await?).await?;
    let added = cluster.add_member().await?;
    assert_eq!(added, 3);
    let deadline = Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    while cluster.raft_index(added).await.unwrap_or(0) < target {
        assert!(Instant::now() < deadline, "the new member did not catch up");
        sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    put_anywhere(&cluster.client_addrs(), b"with-four").await?;

    let pids = cluster.pids();
    assert_eq!(pids.len(), 4);
    drop(cluster);
    for pid in pids.iter().chain(&all_pids) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still running after drop"
        );
    }
    Ok(())
}
