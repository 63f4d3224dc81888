//! One `conclave --json` child process: its standard input as a channel of lines, its
//! standard output as an [`EventLog`] (and appended to `NAME.events.jsonl` beside the log),
//! its standard error appended to a log file (`NAME.log`). Killed
//! (SIGKILL) when dropped, even while stopped by SIGSTOP.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use super::GroupError;

/// The longest stdout line read from a child; a longer one ends its reader.
pub const MAX_EVENT_LINE_BYTES: usize = 1024 * 1024;

/// Every JSON event a peer printed, across all its lives, and a way to wait for the next.
#[derive(Default)]
pub struct EventLog {
    /// A std mutex: pushed to and scanned in short sections with no await.
    events: Mutex<Vec<Value>>,
    notify: Notify,
}

impl EventLog {
    fn push(&self, v: Value) {
        self.lock().push(v);
        self.notify.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many events were printed so far: a mark to wait from.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Value> {
        let events = self.lock();
        events
            .get(from..)
            .map(<[Value]>::to_vec)
            .unwrap_or_default()
    }

    /// The last event named `name` for which `pred` holds.
    pub fn last(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lock()
            .iter()
            .rev()
            .find(|v| v["event"] == name && pred(v))
            .cloned()
    }

    /// The first event at index `from` or later named `name` for which `pred` holds, waiting
    /// for it until `deadline`.
    pub async fn wait(
        &self,
        from: usize,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        deadline: Instant,
    ) -> Option<Value> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self
                .since(from)
                .into_iter()
                .find(|v| v["event"] == name && pred(v))
            {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Called with every `committed` and `refused` event a peer prints.
pub type AppendSink = Box<dyn Fn(Value) + Send + Sync>;

/// A running child.
pub struct Process {
    child: Child,
    pid: Pid,
    stdin: mpsc::UnboundedSender<String>,
    reader: Option<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl Process {
    /// Starts `cmd` (run in `dir`, stderr appended to `log`). Its stdout lines go to
    /// `events`; `committed` and `refused` events also go to `appends`, if given, before
    /// they are pushed to `events`.
    pub fn spawn(
        mut cmd: Command,
        dir: &Path,
        log: &Path,
        events: Arc<EventLog>,
        appends: Option<AppendSink>,
    ) -> Result<Self, GroupError> {
        let io = |what: &str, e: std::io::Error| GroupError::Spawn(format!("{what}: {e}"));
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io(&log.display().to_string(), e))?;
        cmd.current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        // Every event is also kept on disk beside the log, for the post-mortem of a run.
        let events_path = log.with_extension("events.jsonl");
        let mut events_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events_path)
            .map_err(|e| io(&events_path.display().to_string(), e))?;
        let mut child = cmd.spawn().map_err(|e| io("conclave", e))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| GroupError::Spawn("the child has no pid".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| GroupError::Spawn("no stdout pipe".into()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| GroupError::Spawn("no stdin pipe".into()))?;
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                let mut limited = (&mut lines).take(MAX_EVENT_LINE_BYTES as u64 + 1);
                match limited.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.len() > MAX_EVENT_LINE_BYTES => {
                        debug!(
                            "a stdout line longer than {MAX_EVENT_LINE_BYTES} bytes; reader stops"
                        );
                        break;
                    }
                    Ok(_) => {}
                }
                // A short blocking write to a local file; losing it loses only the copy.
                let _ = events_file.write_all(&line);
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(sink) = &appends {
                    if v["event"] == "committed" || v["event"] == "refused" {
                        sink(v.clone());
                    }
                }
                events.push(v);
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut bytes = line.into_bytes();
                bytes.push(b'\n');
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            pid,
            stdin: tx,
            reader: Some(reader),
            writer,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// A sender of lines to the process's standard input.
    pub fn stdin(&self) -> mpsc::UnboundedSender<String> {
        self.stdin.clone()
    }

    pub fn signal(&self, sig: Signal) -> Result<(), GroupError> {
        kill(self.pid, sig).map_err(|e| GroupError::Signal {
            pid: self.pid(),
            why: e.to_string(),
        })
    }

    /// SIGKILL, then waits for the exit and for every line it printed to be read.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.finish_reading().await;
    }

    /// SIGTERM (after SIGCONT, in case it is stopped); SIGKILL if it has not exited within
    /// `grace`. Returns whether it exited by itself with status 0.
    pub async fn terminate(mut self, grace: Duration) -> bool {
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        let clean = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                false
            }
        };
        self.finish_reading().await;
        clean
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    async fn finish_reading(&mut self) {
        self.writer.abort();
        if let Some(r) = self.reader.take() {
            // The pipe closed with the process; a grandchild holding it open is not ours to
            // wait for.
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; `kill_on_drop` reaps it.
        let _ = self.child.start_kill();
        self.writer.abort();
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}
