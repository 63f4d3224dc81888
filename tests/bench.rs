//! `conclave bench` on small sizes through the real binary: every workload runs against a real
//! group, its figures come out in the JSON results, and the plot is written. Speed is never
//! asserted (the machine is shared); only that each figure was measured.

mod harness;

use std::time::Duration;

use harness::{conclave, Proc};
use serde_json::Value;

fn row<'a>(report: &'a Value, workload: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["workload"] == workload))
        .unwrap_or_else(|| panic!("no row for {workload} in {report:#}"))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} = {x}");
    x
}

#[test]
fn every_workload_runs_on_small_sizes_and_reports_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let plot = dir.path().join("plot.svg");
    let mut cmd = conclave(dir.path());
    cmd.args([
        "--json",
        "bench",
        "seq",
        "c4",
        "failover",
        "catchup",
        "verify",
        "scale",
        "idle",
        "--idle-secs",
        "1",
        "--peers",
        "3",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--failover-runs",
        "1",
        "--catchup-records",
        "200",
        "--verify-records",
        "500",
        "--scale-members",
        "5",
        "--scale-rate",
        "50",
        "--scale-duration",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let p = Proc::spawn(&mut cmd);
    let done = p.wait_exit(Duration::from_secs(600));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    // The table names every workload.
    for w in [
        "seq", "c4", "failover", "catchup", "verify", "scale", "idle",
    ] {
        assert!(
            done.stdout.iter().any(|l| l == w),
            "no {w} in the table:\n{}",
            done.stdout.join("\n")
        );
    }
    assert!(
        done.stdout
            .iter()
            .any(|l| l.contains("fsync before acknowledging")),
        "{}",
        done.stdout.join("\n")
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["record_bytes"], 256);
    for w in ["seq", "c4"] {
        let f = &row(&report, w)["conclave"]["figure"];
        assert_eq!(f["kind"], "throughput", "{f:#}");
        positive(&f["records_per_sec"], "records/s");
        positive(&f["latency"]["p50_ms"], "p50");
        assert_eq!(f["in_flight"], if w == "seq" { 1 } else { 4 });
        positive(&row(&report, w)["conclave"]["cpu_seconds"], "cpu seconds");
    }
    let f = &row(&report, "failover")["conclave"]["figure"];
    assert_eq!(f["kind"], "failover", "{f:#}");
    assert_eq!(f["runs"].as_array().map(Vec::len), Some(1), "{f:#}");
    positive(&f["kill_to_next_ack"]["median_ms"], "failover median");
    let f = &row(&report, "catchup")["conclave"]["figure"];
    assert_eq!(f["kind"], "catchup", "{f:#}");
    assert!(f["records"].as_u64().unwrap() >= 200, "{f:#}");
    positive(&f["spawn_to_head_ms"], "catch-up time");
    let f = &row(&report, "verify")["conclave"]["figure"];
    assert_eq!(f["kind"], "verify", "{f:#}");
    assert_eq!(f["records"], 500);
    positive(&f["records_per_sec"], "verify records/s");
    let f = &row(&report, "scale")["conclave"]["figure"];
    assert_eq!(f["kind"], "scale", "{f:#}");
    assert_eq!(f["voters"], 5);
    positive(&f["records_acknowledged"], "scale records acknowledged");
    positive(&f["commit"]["p99_ms"], "scale p99");
    let f = &row(&report, "idle")["conclave"]["figure"];
    assert_eq!(f["kind"], "idle", "{f:#}");
    assert!(f["seconds"].as_f64().unwrap() >= 1.0, "{f:#}");
    assert!(
        f["term_after"].as_u64().unwrap() >= f["term_before"].as_u64().unwrap(),
        "{f:#}"
    );
    // No etcd in this run.
    assert!(row(&report, "seq")["etcd"].is_null());

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Conclave"), "{svg}");
}
