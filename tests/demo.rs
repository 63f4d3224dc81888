//! `conclave demo` through the real binary, scripted: start, write, kill the leader, write
//! again, exit — and everything it started is gone afterwards.

mod harness;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::{conclave, Proc, DEADLINE};

/// Reads stdout lines until one contains `needle`; panics at the deadline.
fn wait_line(p: &mut Proc, needle: &str) -> String {
    let until = Instant::now() + DEADLINE;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match p.next_line(left) {
            Some(l) if l.contains(needle) => return l,
            Some(_) => {}
            None => break,
        }
    }
    panic!("no line with {needle:?}\nstderr:\n{}", p.stderr_tail(30));
}

#[test]
fn the_demo_runs_a_group_survives_a_leader_kill_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = conclave(dir.path());
    cmd.arg("demo").stdin(Stdio::piped());
    let mut demo = Proc::spawn(&mut cmd);
    let start = wait_line(&mut demo, "Starting a demo group on 127.0.0.1 in ");
    let data = std::path::PathBuf::from(
        start
            .trim_start_matches("Starting a demo group on 127.0.0.1 in ")
            .trim_end_matches(" ..."),
    );
    assert!(data.exists());
    wait_line(&mut demo, "You are the fourth member");
    wait_line(&mut demo, "joined as you");
    demo.send_line("hello from the demo");
    wait_line(&mut demo, "you: hello from the demo");
    demo.send_line("/kill-leader");
    wait_line(&mut demo, "[demo] kill -9 alice");
    let t = Instant::now();
    demo.send_line("after the failover");
    wait_line(&mut demo, "you: after the failover");
    eprintln!("kill-leader to the next record shown: {:?}", t.elapsed());
    demo.send_line("/exit");
    assert_eq!(
        demo.wait_exit_status().code(),
        Some(0),
        "{}",
        demo.stderr_tail(20)
    );
    // Its processes are gone (their data directory with them).
    let until = Instant::now() + Duration::from_secs(10);
    while data.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!data.exists(), "the demo left its data behind");
}
