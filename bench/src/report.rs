//! The table `conclave bench` prints: one line per workload and system, and with etcd the
//! ratio of the two on the figure that matters for that workload.

use std::fmt::Write;

use crate::run::{Figure, Measured, Report};

fn f1(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The headline number of a figure and whether more is better.
pub fn headline(f: &Figure) -> Option<(f64, bool)> {
    match f {
        Figure::Throughput(t) => Some((t.records_per_sec, true)),
        Figure::Failover(x) => x.kill_to_next_ack.as_ref().map(|s| (s.median_ms, false)),
        Figure::EtcdFailover(x) => x.kill_to_next_ack.as_ref().map(|s| (s.median_ms, false)),
        Figure::Catchup(c) => Some((c.spawn_to_head_ms, false)),
        Figure::EtcdCatchup(c) => Some((c.add_to_caught_up_ms, false)),
        Figure::Verify(v) => Some((v.records_per_sec, true)),
        Figure::Scale(s) => s.commit.as_ref().map(|l| (l.p99_ms, false)),
        Figure::Idle(_) => None,
        Figure::Skipped { .. } | Figure::Failed { .. } => None,
    }
}

/// One line describing a figure.
pub fn describe(f: &Figure) -> String {
    match f {
        Figure::Throughput(t) => {
            let mut s = format!("{} records/s", f1(t.records_per_sec));
            if let Some(l) = &t.latency {
                let _ = write!(
                    s,
                    ", p50 {} ms, p99 {} ms, p99.9 {} ms",
                    f1(l.p50_ms),
                    f1(l.p99_ms),
                    f1(l.p999_ms)
                );
            }
            if t.errors > 0 {
                let _ = write!(
                    s,
                    ", {} errors (first: {})",
                    t.errors,
                    t.first_error.as_deref().unwrap_or("?")
                );
            }
            s
        }
        Figure::Failover(x) => spread("kill -9 leader -> next ack", x.kill_to_next_ack.as_ref()),
        Figure::EtcdFailover(x) => {
            spread("kill -9 leader -> next ack", x.kill_to_next_ack.as_ref())
        }
        Figure::Catchup(c) => {
            let mut s = format!(
                "new member holds the head ({} records, height {}) {} ms after its start",
                c.records,
                c.head_height,
                f1(c.spawn_to_head_ms)
            );
            if let (Some(r), Some(rate)) = (c.first_record_to_head_ms, c.replay_records_per_sec) {
                let _ = write!(s, "; replay alone {} ms ({} records/s)", f1(r), f1(rate));
            }
            s
        }
        Figure::EtcdCatchup(c) => format!(
            "new member applied raft index {} ({} puts) {} ms after its start",
            c.target_raft_index,
            c.records,
            f1(c.add_to_caught_up_ms)
        ),
        Figure::Verify(v) => format!(
            "{} records/s ({} records in {} blocks, {:.1} MB, {} s)",
            f1(v.records_per_sec),
            v.records,
            v.blocks,
            v.stored_bytes as f64 / 1e6,
            f1(v.seconds)
        ),
        Figure::Scale(s) => {
            let mut out = format!(
                "{} voters + {} learners at {} records/s (achieved {})",
                s.voters,
                s.learners,
                f1(s.target_records_per_sec),
                f1(s.achieved_records_per_sec)
            );
            if let Some(l) = &s.commit {
                let _ = write!(
                    out,
                    "; commit p50 {} ms, p99 {} ms",
                    f1(l.p50_ms),
                    f1(l.p99_ms)
                );
            }
            if let Some(l) = &s.all_members_hold {
                let _ = write!(
                    out,
                    "; every member holds it: p50 {} ms, p99 {} ms ({} of {} records)",
                    f1(l.p50_ms),
                    f1(l.p99_ms),
                    s.records_everyone_saw,
                    s.records_acknowledged
                );
            }
            out
        }
        Figure::Idle(i) => format!(
            "{} elections in {} s left alone (term {} -> {}, leader {} -> {})",
            i.elections,
            f1(i.seconds),
            i.term_before,
            i.term_after,
            i.leader_before,
            i.leader_after
        ),
        Figure::Skipped { why } => format!("skipped: {why}"),
        Figure::Failed { error } => format!("FAILED: {error}"),
    }
}

fn spread(what: &str, s: Option<&crate::stats::Spread>) -> String {
    match s {
        Some(s) => format!(
            "{what}: median {} ms, min {} ms, max {} ms ({} runs)",
            f1(s.median_ms),
            f1(s.min_ms),
            f1(s.max_ms),
            s.runs
        ),
        None => format!("{what}: no run"),
    }
}

fn cpu(m: &Measured) -> String {
    format!(
        "cpu {} s / wall {} s",
        f1(m.cpu_seconds),
        f1(m.wall_seconds)
    )
}

/// The whole report as text.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "conclave bench: {} peers, {}-byte records; {}",
        r.peers, r.record_bytes, r.machine
    );
    let _ = writeln!(out, "durability (Conclave): {}", r.conclave_durability);
    if let Some(c) = &r.peer_config {
        let _ = writeln!(out, "peers' config: {c} (not the built-in defaults)");
    }
    if let Some(d) = &r.etcd_durability {
        let _ = writeln!(out, "durability (etcd): {d}");
    }
    for row in &r.rows {
        let _ = writeln!(out, "\n{}", row.workload);
        let _ = writeln!(
            out,
            "  conclave  {}  [{}]",
            describe(&row.conclave.figure),
            cpu(&row.conclave)
        );
        if let Some(e) = &row.etcd {
            let _ = writeln!(out, "  etcd      {}  [{}]", describe(&e.figure), cpu(e));
            if let (Some((c, more)), Some((x, _))) =
                (headline(&row.conclave.figure), headline(&e.figure))
            {
                if c > 0.0 && x > 0.0 {
                    let ratio = if more { c / x } else { x / c };
                    let _ = writeln!(
                        out,
                        "  ratio     Conclave is {ratio:.2}x etcd ({})",
                        if more {
                            "higher is better"
                        } else {
                            "etcd's time / Conclave's"
                        }
                    );
                }
            }
        }
    }
    out
}
