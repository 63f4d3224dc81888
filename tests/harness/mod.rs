//! A small harness for end-to-end tests: start real `conclave` processes, read their JSON
//! events with deadlines, and always stop them (kill on drop), even when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub mod cluster;
pub mod raw;
pub mod tmux;

/// The `conclave` binary, run in `dir` so that no stray `config.yml` is picked up.
pub fn conclave(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conclave"));
    c.current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs a short-lived command to completion, bounded by [`DEADLINE`].
pub fn run(mut cmd: Command) -> Output {
    let child = Proc::spawn(&mut cmd);
    child.wait_exit(DEADLINE)
}

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }
}

/// A running process. Killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.spawn().expect("spawn conclave");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_buf = Arc::new(Mutex::new(String::new()));
        let sink = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child: Some(child),
            stdin,
            lines,
            stderr: err_buf,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Writes one line to the process's standard input (spawned with `Stdio::piped()`).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin was not piped");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Closes standard input (end of file), as a script that has no more to say would.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Every JSON event seen so far on stdout.
    pub fn seen_events(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Reads whatever stdout lines are ready, without waiting.
    pub fn drain(&mut self) {
        while self.next_line(Duration::from_millis(0)).is_some() {}
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// How many lines of stderr so far contain `needle`.
    pub fn stderr_count(&self, needle: &str) -> usize {
        self.stderr().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until more than `before` lines of stderr contain `needle` (logs are written
    /// asynchronously); panics at the deadline with the stderr seen.
    pub fn wait_stderr(&self, needle: &str, before: usize) {
        let until = Instant::now() + DEADLINE;
        while self.stderr_count(needle) <= before {
            assert!(
                Instant::now() < until,
                "no new log line with {needle:?} within {DEADLINE:?}; stderr:\n{}",
                self.stderr_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The next stdout line, or None at the deadline or when stdout closed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a JSON event named `name` for which `pred` holds; panics at the deadline
    /// with what the process printed, so a failure explains itself.
    pub fn wait_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some(line) = self.next_line(left) else {
                break;
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["event"] == name && pred(&v) {
                return v;
            }
        }
        panic!(
            "no {name:?} event within {DEADLINE:?}\nstdout so far: {:#?}\nstderr:\n{}",
            self.seen,
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_status(DEADLINE)
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit status.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal("-INT");
        self.wait_status(DEADLINE)
    }

    /// Waits for the process to exit by itself (say, after `/exit`), then reads what it
    /// printed before it went.
    pub fn wait_exit_status(&mut self) -> ExitStatus {
        let status = self.wait_status(DEADLINE);
        while self.next_line(Duration::from_millis(300)).is_some() {}
        status
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stands still (its sockets stay open) until [`Proc::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status();
    }

    fn wait_status(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process already reaped");
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!(
                    "process did not exit within {timeout:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself and collects everything it printed.
    pub fn wait_exit(mut self, timeout: Duration) -> Output {
        let status = self.wait_status(timeout);
        // stdout closes at exit; drain what is left.
        while self.next_line(Duration::from_millis(500)).is_some() {}
        // Give the stderr thread a moment to reach end of file.
        let until = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.stderr) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        Output {
            status,
            stdout: std::mem::take(&mut self.seen),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
