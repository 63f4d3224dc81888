//! A writer: appends lines to one peer, one at a time, for as long as it runs, and records
//! each append and its outcome in its history file ([`HistoryLog`]).
//!
//! The peer numbers its author's records itself (`seq` 1, 2, …, a refused one's number given
//! back), so a writer with one line outstanding knows the number its line gets: the one
//! after the last answered, or the refused one again. A kill breaks that only for the line
//! outstanding at the time; the group reads the killed peer's outbox ([`OutboxState`])
//! before restarting it, and the writer learns from it whether the line was kept (the next
//! life answers it) or lost (its number goes to the next line), or was answered by a life
//! that died before printing the answer (then the writer never learns it: indeterminate).
//!
//! One line at a time is slower than a stream, but it keeps the writer's model of the
//! numbering exact across kills without reading the peer's mind.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::group::OutboxState;
use crate::history::{HistoryError, HistoryLog};

/// What the group and the peer's reader tell a writer.
#[derive(Debug)]
pub enum WriterMsg {
    /// A `committed` or `refused` event the peer printed.
    Event(Value),
    /// A new life of the peer: lines go to this standard input.
    Attach(mpsc::UnboundedSender<String>),
    /// The peer was killed; its outbox as the next life will find it.
    Detach(OutboxState),
    /// The peer was killed and its outbox could not be read: the writer cannot know its
    /// numbering any more and stops appending.
    Lost(String),
    /// Start no more lines; answers still arriving are recorded.
    Quiesce,
    /// Report what the writer did so far.
    Peek(oneshot::Sender<WriterStats>),
    /// Close the history and report.
    Finish(oneshot::Sender<WriterStats>),
}

/// What a writer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    pub name: String,
    pub started: u64,
    pub acknowledged: u64,
    pub refused: u64,
    /// Lines outstanding when the peer was killed that its outbox did not keep.
    pub lost_in_crash: u64,
    /// Whether a line is still waiting for its answer.
    pub outstanding: bool,
    /// Why the writer stopped early, if it did.
    pub error: Option<String>,
}

/// A running writer.
pub struct Writer {
    pub tx: mpsc::UnboundedSender<WriterMsg>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer of peer `name`, recording into `history` (created or continued).
    /// `pace` is the pause between an answer and the next line.
    pub fn start(name: &str, history: PathBuf, pace: Duration) -> Result<Self, HistoryError> {
        let log = HistoryLog::open(&history)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State {
            stats: WriterStats {
                name: name.to_owned(),
                ..WriterStats::default()
            },
            log,
            next: 1,
            outstanding: None,
            stdin: None,
            running: true,
            lines: 0,
            pace,
            due: None,
        };
        Ok(Self {
            tx,
            task: tokio::spawn(state.run(rx)),
        })
    }

    pub fn send(&self, msg: WriterMsg) {
        let _ = self.tx.send(msg);
    }

    /// What the writer did so far.
    pub async fn peek(&self) -> WriterStats {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(WriterMsg::Peek(tx));
        rx.await.unwrap_or_default()
    }

    /// Closes the history and returns what the writer did.
    pub async fn finish(self) -> WriterStats {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(WriterMsg::Finish(tx));
        let stats = rx.await.unwrap_or_default();
        let _ = self.task.await;
        stats
    }
}

struct State {
    stats: WriterStats,
    log: HistoryLog,
    /// The seq the next line will get.
    next: u64,
    /// The seq of the line waiting for its answer.
    outstanding: Option<u64>,
    stdin: Option<mpsc::UnboundedSender<String>>,
    running: bool,
    /// Lines written so far, for their texts.
    lines: u64,
    pace: Duration,
    /// When the next line goes out.
    due: Option<Instant>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
        self.due = Some(Instant::now());
        loop {
            let can_send = self.running && self.outstanding.is_none() && self.stdin.is_some();
            let due = self.due.filter(|_| can_send);
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => return,
                    Some(WriterMsg::Finish(reply)) => {
                        self.stats.outstanding = self.outstanding.is_some();
                        let _ = reply.send(self.stats.clone());
                        return;
                    }
                    Some(m) => {
                        if let Err(e) = self.handle(m) {
                            warn!(writer = %self.stats.name, "{e}");
                            self.stats.error = Some(e.to_string());
                            self.running = false;
                        }
                    }
                },
                _ = sleep_until(due), if due.is_some() => {
                    if let Err(e) = self.send_line() {
                        warn!(writer = %self.stats.name, "{e}");
                        self.stats.error = Some(e.to_string());
                        self.running = false;
                    }
                }
            }
        }
    }

    fn send_line(&mut self) -> Result<(), HistoryError> {
        self.due = None;
        let Some(stdin) = &self.stdin else {
            return Ok(());
        };
        self.lines += 1;
        let text = format!("{} line {}", self.stats.name, self.lines);
        let seq = self.next;
        // Recorded before it is handed over: an answer can never precede its start.
        self.log.started(&self.stats.name, seq)?;
        self.stats.started += 1;
        if stdin.send(text).is_err() {
            // The process is gone; the group's Detach settles the line.
            debug!(writer = %self.stats.name, "stdin closed");
        }
        self.outstanding = Some(seq);
        self.next = seq + 1;
        Ok(())
    }

    fn handle(&mut self, msg: WriterMsg) -> Result<(), HistoryError> {
        let name = self.stats.name.clone();
        match msg {
            WriterMsg::Event(v) => {
                let Some(seq) = v["seq"].as_u64() else {
                    return Ok(());
                };
                if v["event"] == "committed" {
                    let height = v["height"].as_u64().unwrap_or(0);
                    let duplicate = v["duplicate"].as_bool().unwrap_or(false);
                    self.log.acknowledged(&name, seq, height, duplicate)?;
                    if self.outstanding == Some(seq) {
                        self.stats.acknowledged += 1;
                        self.settled();
                    }
                } else {
                    let reason = v["reason"].as_str().unwrap_or("").to_owned();
                    self.log.refused(&name, seq, &reason)?;
                    if self.outstanding == Some(seq) {
                        self.stats.refused += 1;
                        // The number is given back: the next line gets it.
                        self.next = seq;
                        self.settled();
                    }
                }
            }
            WriterMsg::Attach(stdin) => {
                self.stdin = Some(stdin);
                if self.due.is_none() {
                    self.due = Some(Instant::now());
                }
            }
            WriterMsg::Detach(outbox) => {
                self.stdin = None;
                if let Some(seq) = self.outstanding {
                    if outbox.held.contains(&seq) {
                        // The next life sends it and prints its answer.
                    } else if outbox.next_seq > seq {
                        self.log.indeterminate(
                            &name,
                            seq,
                            "answered by a life killed before it printed the answer",
                        )?;
                        self.settled();
                    } else {
                        self.log.indeterminate(
                            &name,
                            seq,
                            "the peer was killed before its outbox kept the line",
                        )?;
                        self.stats.lost_in_crash += 1;
                        self.settled();
                    }
                }
                if self.outstanding.is_none() && outbox.next_seq != self.next {
                    debug!(writer = %name, ours = self.next, outbox = outbox.next_seq, "numbering follows the outbox");
                    self.next = outbox.next_seq;
                }
            }
            WriterMsg::Lost(why) => {
                self.stdin = None;
                if let Some(seq) = self.outstanding.take() {
                    self.log.indeterminate(&name, seq, &why)?;
                }
                self.running = false;
                self.stats.error = Some(why);
            }
            WriterMsg::Quiesce => self.running = false,
            WriterMsg::Peek(reply) => {
                let mut stats = self.stats.clone();
                stats.outstanding = self.outstanding.is_some();
                let _ = reply.send(stats);
            }
            WriterMsg::Finish(_) => {}
        }
        Ok(())
    }

    fn settled(&mut self) {
        self.outstanding = None;
        self.due = Some(Instant::now() + self.pace);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, Outcome};
    use serde_json::json;
    use std::collections::BTreeSet;

    const WAIT: Duration = Duration::from_secs(10);

    async fn line(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a line within the deadline")
            .expect("stdin open")
    }

    fn committed(seq: u64, height: u64) -> WriterMsg {
        WriterMsg::Event(
            json!({"event": "committed", "seq": seq, "height": height, "duplicate": false}),
        )
    }

    fn outbox(next_seq: u64, held: &[u64]) -> OutboxState {
        OutboxState {
            next_seq,
            held: held.iter().copied().collect::<BTreeSet<_>>(),
        }
    }

    /// The seqs the writer started, in order, and each append's outcome by kind.
    fn appends(path: &std::path::Path) -> Vec<(u64, &'static str)> {
        History::load_file(path)
            .unwrap()
            .appends
            .iter()
            .map(|a| {
                let kind = match a.outcome {
                    Outcome::Acknowledged { .. } => "acked",
                    Outcome::Refused { .. } => "refused",
                    Outcome::Indeterminate { .. } => "indeterminate",
                };
                (a.record.seq, kind)
            })
            .collect()
    }

    #[tokio::test]
    async fn the_writer_follows_the_peers_numbering_through_answers_refusals_and_kills() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p1.jsonl");
        let w = Writer::start("p1", path.clone(), Duration::ZERO).unwrap();
        let (stdin, mut rx) = mpsc::unbounded_channel();
        w.send(WriterMsg::Attach(stdin));
        assert_eq!(line(&mut rx).await, "p1 line 1");
        w.send(committed(1, 5));
        line(&mut rx).await; // seq 2
        w.send(WriterMsg::Event(
            json!({"event": "refused", "seq": 2, "reason": "no"}),
        ));
        line(&mut rx).await; // seq 2 again: the refused number is given back
        w.send(committed(2, 6));
        line(&mut rx).await; // seq 3

        // Killed with seq 3 in the outbox: the next life answers it; no new line before.
        w.send(WriterMsg::Detach(outbox(4, &[3])));
        let (stdin, mut rx) = mpsc::unbounded_channel();
        w.send(WriterMsg::Attach(stdin));
        assert!(w.peek().await.outstanding);
        w.send(committed(3, 7));
        line(&mut rx).await; // seq 4

        // Killed before the outbox kept seq 4: it is lost and 4 goes to the next line.
        w.send(WriterMsg::Detach(outbox(4, &[])));
        let (stdin, mut rx) = mpsc::unbounded_channel();
        w.send(WriterMsg::Attach(stdin));
        line(&mut rx).await; // seq 4 again

        // Answered by a life that died before printing it: indeterminate, numbering moves on.
        w.send(WriterMsg::Detach(outbox(5, &[])));
        let (stdin, mut rx) = mpsc::unbounded_channel();
        w.send(WriterMsg::Attach(stdin));
        line(&mut rx).await; // seq 5
                             // No line after this one; its answer is still recorded.
        w.send(WriterMsg::Quiesce);
        w.send(committed(5, 9));
        let stats = w.finish().await;
        assert_eq!(
            (
                stats.started,
                stats.acknowledged,
                stats.refused,
                stats.lost_in_crash
            ),
            (7, 4, 1, 1),
            "{stats:?}"
        );
        assert_eq!(
            appends(&path),
            vec![
                (1, "acked"),
                (2, "refused"),
                (2, "acked"),
                (3, "acked"),
                (4, "indeterminate"),
                (4, "indeterminate"),
                (5, "acked"),
            ]
        );
    }
}
