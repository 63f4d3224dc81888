//! Measurements on a real group (key manager, proxy and peer processes on 127.0.0.1). These
//! print figures; they assert nothing about speed, since the machine they run on may be
//! shared and noisy. Every test is ignored by the normal run; run them with
//!
//! ```sh
//! cargo test --release --test measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each figure is one line starting with `MEASURE`.

mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::cluster::Cluster;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Figures

/// Per-sample durations summarised: n, median, p99, min, max (nearest rank).
struct Summary {
    n: usize,
    median: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summarise(samples: &[Duration]) -> Summary {
    assert!(!samples.is_empty(), "no samples to summarise");
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Summary {
        n: v.len(),
        median: rank(0.5),
        p99: rank(0.99),
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn print_summary(label: &str, samples: &[Duration]) {
    let s = summarise(samples);
    println!(
        "MEASURE {label}: n={} median={:.2}ms p99={:.2}ms min={:.2}ms max={:.2}ms",
        s.n, s.median, s.p99, s.min, s.max
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers around the harness, with explicit deadlines

/// The last lines of every process's stderr, for a failure message.
fn logs(c: &Cluster, n: usize) -> String {
    let mut out = format!("--- proxy stderr:\n{}\n", c.proxy.stderr_tail(n));
    for (name, p) in &c.peers {
        out.push_str(&format!("--- {name} stderr:\n{}\n", p.proc.stderr_tail(n)));
    }
    out
}

/// Prints how many WARN and ERROR lines each running process wrote to stderr, with the last
/// few of them, so that a measurement that passed still shows what went wrong on the way.
fn report_warnings(c: &Cluster, test: &str) {
    let mut procs: Vec<(&str, String)> = vec![("proxy", c.proxy.stderr())];
    for (name, p) in &c.peers {
        procs.push((name, p.proc.stderr()));
    }
    for (name, err) in procs {
        let bad: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        println!(
            "# {test}: {name} stderr: {} lines, {} WARN/ERROR",
            err.lines().count(),
            bad.len()
        );
        for l in &bad[bad.len().saturating_sub(3)..] {
            println!("#   {l}");
        }
    }
}

/// The next JSON event printed by peer `name`, or None once `until` has passed.
fn next_event(c: &mut Cluster, name: &str, until: Instant) -> Option<Value> {
    let p = c.peer(name);
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        let line = p.proc.next_line(left)?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            return Some(v);
        }
    }
}

/// Polls `conclave status` until `pred` holds; panics after `timeout` with the last status and
/// every process's stderr tail.
fn wait_status_for(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < until {
        last = c.status();
        if pred(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "status never showed {what} within {timeout:?}; last: {last:#}\n{}",
        logs(c, 30)
    );
}

fn members(s: &Value) -> &[Value] {
    s["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `n` members, all reachable, all with the same head hash, and a leader known.
fn settled(s: &Value, n: usize) -> bool {
    let m = members(s);
    s["leader"].is_string()
        && m.len() == n
        && m.iter()
            .all(|x| x["reachable"] == true && x["hash"].is_string() && x["hash"] == m[0]["hash"])
}

fn leader_of(s: &Value) -> Option<String> {
    s["leader"].as_str().map(str::to_owned)
}

/// Sends one line from `writer` and waits for its `committed` event; returns the seq and the
/// time from `send_line` to the event being read.
fn append_one(c: &mut Cluster, writer: &str, text: &str, timeout: Duration) -> (u64, Duration) {
    let t0 = Instant::now();
    c.peer(writer).proc.send_line(text);
    let until = t0 + timeout;
    loop {
        let Some(ev) = next_event(c, writer, until) else {
            panic!(
                "{writer}: no `committed` for {text:?} within {timeout:?}\n{}",
                logs(c, 40)
            );
        };
        if ev["event"] == "committed" {
            return (ev["seq"].as_u64().expect("seq"), t0.elapsed());
        }
        if ev["event"] == "refused" || ev["event"] == "error" {
            panic!("{writer}: {ev} while appending {text:?}\n{}", logs(c, 40));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Commit latency, one writer, one record at a time

const LATENCY_RECORDS: usize = 200;
const LATENCY_WARMUP: usize = 5;

fn latency_run(c: &mut Cluster, writer: &str, role: &str) {
    // A few records first, not counted: connections, caches and the first batch.
    for i in 0..LATENCY_WARMUP {
        append_one(
            c,
            writer,
            &format!("{writer} warm-up {i}"),
            Duration::from_secs(30),
        );
    }
    let mut samples = Vec::with_capacity(LATENCY_RECORDS);
    let mut last_seq = 0;
    let started = Instant::now();
    for i in 0..LATENCY_RECORDS {
        let (seq, d) = append_one(
            c,
            writer,
            &format!("{writer} latency record {i}"),
            Duration::from_secs(30),
        );
        assert!(seq > last_seq, "{writer}: seq {seq} after {last_seq}");
        last_seq = seq;
        samples.push(d);
    }
    let total = started.elapsed();
    print_summary(
        &format!(
            "commit_latency {role} {writer} as sole writer, one record at a time, \
             stdin send_line -> `committed` JSON line read (incl. pipe + JSON), \
             after {LATENCY_WARMUP} warm-up records"
        ),
        &samples,
    );
    println!(
        "MEASURE commit_throughput {role} {writer} one-at-a-time: {} records in {:.0}ms = {:.1} records/s",
        LATENCY_RECORDS,
        ms(total),
        LATENCY_RECORDS as f64 / total.as_secs_f64()
    );
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn commit_latency_one_writer() {
    let mut c = Cluster::with_peers(3);
    let s = wait_status_for(
        &c,
        "three settled members led by p1",
        Duration::from_secs(120),
        |s| settled(s, 3) && leader_of(s).as_deref() == Some("p1"),
    );
    assert_eq!(leader_of(&s).as_deref(), Some("p1"));
    latency_run(&mut c, "p2", "follower");
    latency_run(&mut c, "p1", "leader");
    let s = c.status();
    let heights: Vec<String> = members(&s)
        .iter()
        .map(|m| format!("{}={}", m["name"].as_str().unwrap_or("?"), m["height"]))
        .collect();
    println!(
        "# commit_latency: final status: leader {} term {}, heads {}",
        s["leader"],
        s["term"],
        heights.join(" ")
    );
    report_warnings(&c, "commit_latency");
}

// ---------------------------------------------------------------------------------------------
// 2. Failover: kill -9 of the leader to the next commit

const FAILOVER_ITERATIONS: usize = 5;
const FAILOVER_SEND_EVERY: Duration = Duration::from_millis(20);

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn failover_kill_to_next_commit() {
    let mut c = Cluster::with_peers(3);
    let mut status = wait_status_for(&c, "three settled members", Duration::from_secs(120), |s| {
        settled(s, 3)
    });
    let mut to_commit = Vec::new();
    let mut to_leader_event = Vec::new();
    for iter in 1..=FAILOVER_ITERATIONS {
        let leader = leader_of(&status).expect("a leader");
        let term = status["term"].as_u64().expect("term");
        let writer = members(&status)
            .iter()
            .filter_map(|m| m["name"].as_str())
            .find(|n| *n != leader)
            .expect("a follower")
            .to_owned();
        // One record before the kill: the writer's outbox is empty afterwards, and every line
        // sent after the kill gets a seq above this one.
        let (s0, _) = append_one(
            &mut c,
            &writer,
            &format!("before kill {iter}"),
            Duration::from_secs(30),
        );
        c.peer(&writer).proc.drain();

        let killed_at = Instant::now();
        let addr = c.kill9(&leader);
        let until = killed_at + Duration::from_secs(120);
        let mut sent = 0u64;
        let mut next_send = Instant::now();
        let mut new_leader: Option<(String, u64, Duration)> = None;
        let first_commit = loop {
            let now = Instant::now();
            if now >= until {
                panic!(
                    "iteration {iter}: no commit on {writer} within 120s of killing {leader} \
                     ({sent} lines sent)\n{}",
                    logs(&c, 40)
                );
            }
            if now >= next_send {
                sent += 1;
                c.peer(&writer)
                    .proc
                    .send_line(&format!("after kill {iter} line {sent}"));
                next_send = now + FAILOVER_SEND_EVERY;
                continue;
            }
            let p = c.peer(&writer);
            let Some(line) = p.proc.next_line(next_send - now) else {
                continue;
            };
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match ev["event"].as_str() {
                Some("leader") if new_leader.is_none() => {
                    let name = ev["name"].as_str().unwrap_or("").to_owned();
                    let t = ev["term"].as_u64().unwrap_or(0);
                    if name != leader && t > term {
                        new_leader = Some((name, t, killed_at.elapsed()));
                    }
                }
                Some("committed") if ev["seq"].as_u64().is_some_and(|s| s > s0) => {
                    break killed_at.elapsed();
                }
                Some("refused") | Some("error") => {
                    panic!("iteration {iter}: {writer} printed {ev}\n{}", logs(&c, 40))
                }
                _ => {}
            }
        };
        to_commit.push(first_commit);
        let leader_seen = new_leader
            .as_ref()
            .map(|(n, t, d)| format!("{n} term {t} after {:.1}ms", ms(*d)))
            .unwrap_or_else(|| "no `leader` event before the commit".into());
        if let Some((_, _, d)) = &new_leader {
            to_leader_event.push(*d);
        }
        println!(
            "MEASURE failover sample {iter}: killed leader {leader} (term {term}), writer {writer}: \
             kill -9 -> first `committed` of a record sent after the kill = {:.1}ms \
             ({sent} lines sent by then, every {}ms); writer's `leader` event: {leader_seen}",
            ms(first_commit),
            FAILOVER_SEND_EVERY.as_millis()
        );

        // Let everything sent after the kill commit, so the next iteration starts clean.
        let want = s0 + sent;
        let until = Instant::now() + Duration::from_secs(120);
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        for e in c.peer(&writer).proc.seen_events() {
            if e["event"] == "committed" {
                if let Some(s) = e["seq"].as_u64().filter(|s| *s > s0) {
                    seen.insert(s);
                }
            }
        }
        while (seen.len() as u64) < sent {
            let Some(ev) = next_event(&mut c, &writer, until) else {
                panic!(
                    "iteration {iter}: {writer} committed {} of {sent} lines sent after the kill \
                     (up to seq {want})\n{}",
                    seen.len(),
                    logs(&c, 40)
                );
            };
            if ev["event"] == "committed" {
                if let Some(s) = ev["seq"].as_u64().filter(|s| *s > s0) {
                    seen.insert(s);
                }
            }
        }

        // The killed leader comes back on its address and catches up.
        let back = Instant::now();
        c.start_peer(&leader, Some(addr));
        status = wait_status_for(
            &c,
            &format!("iteration {iter}: three settled members after {leader} restarted"),
            Duration::from_secs(120),
            |s| settled(s, 3) && s["term"].as_u64().is_some_and(|t| t > term),
        );
        println!(
            "# failover iteration {iter}: {leader} restarted and settled in {:.0}ms; now leader {} term {}",
            ms(back.elapsed()),
            status["leader"],
            status["term"]
        );
    }
    print_summary(
        "failover kill -9 of leader -> first `committed` on a follower writer of a record sent \
         after the kill (group of 3, the default raft timings of config.yml)",
        &to_commit,
    );
    if !to_leader_event.is_empty() {
        print_summary(
            "failover kill -9 of leader -> writer prints `leader` event naming the new leader",
            &to_leader_event,
        );
    }
    report_warnings(&c, "failover");
}

// ---------------------------------------------------------------------------------------------
// 3. Catch-up of a new member over 10,000 records

const CATCH_UP_RECORDS: u64 = 10_000;

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn catch_up_10000_records() {
    let mut c = Cluster::with_peers(3);
    wait_status_for(
        &c,
        "three settled members led by p1",
        Duration::from_secs(120),
        |s| settled(s, 3) && leader_of(s).as_deref() == Some("p1"),
    );

    // p1 appends 10,000 records: every line is written first, the writer batches them.
    let started = Instant::now();
    for i in 1..=CATCH_UP_RECORDS {
        c.peer("p1")
            .proc
            .send_line(&format!("bulk record {i} from p1, some text to carry"));
    }
    let sent_in = started.elapsed();
    let until = started + Duration::from_secs(300);
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    let mut heights: BTreeSet<u64> = BTreeSet::new();
    while (seqs.len() as u64) < CATCH_UP_RECORDS {
        let Some(ev) = next_event(&mut c, "p1", until) else {
            panic!(
                "p1 committed {} of {CATCH_UP_RECORDS} within 300s\n{}",
                seqs.len(),
                logs(&c, 40)
            );
        };
        match ev["event"].as_str() {
            Some("committed") => {
                seqs.insert(ev["seq"].as_u64().expect("seq"));
                heights.insert(ev["height"].as_u64().expect("height"));
            }
            Some("refused") | Some("error") => panic!("p1 printed {ev}\n{}", logs(&c, 40)),
            _ => {}
        }
    }
    let committed_in = started.elapsed();
    println!(
        "MEASURE bulk_append p1 (leader) {CATCH_UP_RECORDS} lines written to stdin in {:.0}ms, \
         all `committed` after {:.0}ms = {:.1} records/s, in {} batches (blocks)",
        ms(sent_in),
        ms(committed_in),
        CATCH_UP_RECORDS as f64 / committed_in.as_secs_f64(),
        heights.len()
    );

    let last_height = *heights.last().unwrap();
    let s = wait_status_for(
        &c,
        "three equal heads at the last record",
        Duration::from_secs(120),
        |s| {
            settled(s, 3)
                && members(s)
                    .iter()
                    .all(|m| m["height"].as_u64().is_some_and(|h| h >= last_height))
        },
    );
    let group_head = members(&s)[0]["height"].as_u64().expect("height");
    println!(
        "# catch_up: chain head height {group_head} ({} blocks) before p4 starts; \
         record blocks hold {CATCH_UP_RECORDS} records",
        group_head + 1
    );

    // p4 starts from nothing and replays the log (no snapshots yet).
    let spawned = Instant::now();
    c.start_peer("p4", None);
    let listening = spawned.elapsed();
    let until = spawned + Duration::from_secs(120);
    let mut reached: Option<Duration> = None;
    let mut first_record: Option<Duration> = None;
    let mut joined: Option<(Duration, Value)> = None;
    let mut records_seen = 0u64;
    let mut max_height = 0u64;
    while reached.is_none() || joined.is_none() {
        let Some(ev) = next_event(&mut c, "p4", until) else {
            panic!(
                "p4 within 120s: reached head {group_head}: {reached:?}, joined: {joined:?}, \
                 highest height seen {max_height}, {records_seen} record events\n{}",
                logs(&c, 40)
            );
        };
        if ev["event"] == "record" {
            records_seen += 1;
            first_record.get_or_insert_with(|| spawned.elapsed());
        }
        if ev["event"] == "joined" && joined.is_none() {
            joined = Some((spawned.elapsed(), ev.clone()));
        }
        if let Some(h) = ev["height"].as_u64() {
            max_height = max_height.max(h);
            if h >= group_head && reached.is_none() {
                reached = Some(spawned.elapsed());
            }
        }
    }
    let reached = reached.unwrap();
    let (joined_at, joined_ev) = joined.unwrap();
    // And the status agrees: four members, one head (coarse: each status is a process).
    let s = wait_status_for(&c, "four equal heads", Duration::from_secs(120), |s| {
        settled(s, 4)
    });
    let settled_at = spawned.elapsed();
    println!(
        "MEASURE catch_up p4 spawn -> `listening`: {:.0}ms",
        ms(listening)
    );
    println!(
        "MEASURE catch_up p4 spawn -> applied block {group_head} (group head before it started, \
         {} blocks, {CATCH_UP_RECORDS} records; first p4 event with height >= {group_head}): \
         {:.0}ms = {:.1} records/s, {:.1} blocks/s",
        group_head + 1,
        ms(reached),
        CATCH_UP_RECORDS as f64 / reached.as_secs_f64(),
        (group_head + 1) as f64 / reached.as_secs_f64()
    );
    if let Some(first) = first_record {
        let replay = reached.saturating_sub(first);
        println!(
            "MEASURE catch_up p4 spawn -> first `record` event (enrolled, admitted, replay \
             started): {:.0}ms; first `record` -> block {group_head} applied: {:.0}ms \
             = {:.1} records/s",
            ms(first),
            ms(replay),
            CATCH_UP_RECORDS as f64 / replay.as_secs_f64().max(1e-6)
        );
    }
    println!(
        "MEASURE catch_up p4 spawn -> `joined` (holds the key from the rotation after its \
         admission, so it has applied everything before): {:.0}ms ({joined_ev})",
        ms(joined_at)
    );
    println!(
        "MEASURE catch_up p4 spawn -> status shows four equal heads at height {} \
         (polled, coarse): {:.0}ms",
        members(&s)[0]["height"],
        ms(settled_at)
    );
    println!("# catch_up: p4 printed {records_seen} record events before `joined`/head");
    report_warnings(&c, "catch_up");
}

// ---------------------------------------------------------------------------------------------
// 4. Installing a snapshot of 10,000 records

const SNAPSHOT_RECORDS: u64 = 10_000;

/// A field `name=value` of a log line, as a number.
fn log_field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn snapshot_install_10000_records() {
    // Snapshots every 1,000 entries, 100 kept behind them: a newcomer needs a snapshot.
    let shipped = include_str!("../config.yml");
    let config = shipped
        .replace(
            "snapshot_every_entries: 10000",
            "snapshot_every_entries: 1000",
        )
        .replace("keep_log_entries: 1000", "keep_log_entries: 100");
    assert_ne!(config, shipped);
    let (mut c, config) = Cluster::with_peers_config(3, &config);
    let config = config.to_str().expect("path").to_owned();
    wait_status_for(&c, "three settled members", Duration::from_secs(120), |s| {
        settled(s, 3)
    });

    // Each of p1..p3 writes one line at a time and waits for its `committed`: one record per
    // batch, so 10,000 records in about 10,000 blocks (the most signatures to verify).
    let writers = ["p1", "p2", "p3"];
    let quota = |i: usize| SNAPSHOT_RECORDS / 3 + u64::from((i as u64) < SNAPSHOT_RECORDS % 3);
    let (mut sent, mut done, mut busy) = ([0u64; 3], [0u64; 3], [false; 3]);
    let mut last_height = 0u64;
    let started = Instant::now();
    let until = started + Duration::from_secs(1800);
    while done.iter().sum::<u64>() < SNAPSHOT_RECORDS {
        assert!(
            Instant::now() < until,
            "{done:?} of {SNAPSHOT_RECORDS} committed within 1800s\n{}",
            logs(&c, 30)
        );
        for (i, w) in writers.iter().enumerate() {
            if !busy[i] && sent[i] < quota(i) {
                sent[i] += 1;
                busy[i] = true;
                c.peer(w)
                    .proc
                    .send_line(&format!("{w} record {}, some text to carry", sent[i]));
            }
        }
        let mut moved = false;
        for (i, w) in writers.iter().enumerate() {
            while let Some(line) = c.peer(w).proc.next_line(Duration::ZERO) {
                let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                match ev["event"].as_str() {
                    Some("committed") => {
                        done[i] += 1;
                        busy[i] = false;
                        moved = true;
                        last_height = last_height.max(ev["height"].as_u64().unwrap_or(0));
                    }
                    Some("refused") | Some("error") => {
                        panic!("{w} printed {ev}\n{}", logs(&c, 30))
                    }
                    _ => {}
                }
            }
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let written = started.elapsed();
    println!(
        "MEASURE snapshot_setup {SNAPSHOT_RECORDS} records, one per batch from 3 writers: \
         committed in {:.0}ms = {:.1} records/s; head at height {last_height}",
        ms(written),
        SNAPSHOT_RECORDS as f64 / written.as_secs_f64()
    );
    wait_status_for(
        &c,
        "three equal heads at the last record",
        Duration::from_secs(120),
        |s| {
            settled(s, 3)
                && members(s)
                    .iter()
                    .all(|m| m["height"].as_u64().is_some_and(|h| h >= last_height))
        },
    );

    let spawned = Instant::now();
    c.start_peer_with("p4", None, &["--config", &config]);
    let until = spawned + Duration::from_secs(600);
    let installed = loop {
        let Some(ev) = next_event(&mut c, "p4", until) else {
            panic!(
                "no `snapshot_installed` on p4 within 600s\n{}",
                logs(&c, 40)
            );
        };
        if ev["event"] == "snapshot_installed" {
            break ev;
        }
    };
    let to_installed = spawned.elapsed();
    let s = wait_status_for(&c, "four equal heads", Duration::from_secs(600), |s| {
        settled(s, 4)
            && members(s)
                .iter()
                .all(|m| m["height"].as_u64().is_some_and(|h| h >= last_height))
    });
    let to_settled = spawned.elapsed();
    let log = c.peer("p4").proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("snapshot verified and handed to Raft"))
        .unwrap_or("")
        .to_owned();
    let field = |n| log_field(&line, n).map_or("?".to_owned(), |v| v.to_string());
    println!(
        "MEASURE snapshot_install p4: snapshot at height {} ({} blocks, {} bytes): \
         received in {}ms, verified in {}ms, installed in {}ms (p4's own log)",
        installed["height"],
        field("blocks"),
        field("len"),
        field("receive_ms"),
        field("verify_ms"),
        field("install_ms"),
    );
    println!(
        "MEASURE snapshot_install p4 spawn -> `snapshot_installed`: {:.0}ms; \
         -> status shows four equal heads at height {} (polled): {:.0}ms",
        ms(to_installed),
        members(&s)[0]["height"],
        ms(to_settled)
    );
    report_warnings(&c, "snapshot_install");
}
