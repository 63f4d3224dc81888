//! The history of a run: every append a writer started and what it was told about it.
//!
//! Writers run in separate processes, so each writes its own file of JSON lines, one
//! [`HistoryEvent`] a line, as things happen ([`HistoryLog`]). After the run
//! [`History::load_dir`] reads every `*.jsonl` file of a directory and folds each file's
//! events into [`Append`]s:
//!
//! - `started` begins an append of `(author, seq)`. If the file's previous append of the
//!   same `(author, seq)` has no outcome yet (the writer restarted and sent it again), that
//!   one becomes [`Outcome::Indeterminate`].
//! - `acknowledged`, `refused` and `indeterminate` settle the file's latest append of that
//!   `(author, seq)`; one with no such append is an error. A definite answer (acknowledged
//!   or refused) replaces an indeterminate one (a late answer after a timeout); a repeated
//!   answer is ignored, and so is an `indeterminate` after a definite one. Two definite
//!   answers that disagree (acknowledged at two heights, or acknowledged and refused) are an
//!   error naming both lines: the writer was told two different things about one append.
//! - An append still without an outcome at the end of its file (the writer died) is
//!   [`Outcome::Indeterminate`].
//!
//! A refused append's sequence number is given back by the peer's writer and reused by the
//! next record, so one `(author, seq)` may have several appends; the checks treat
//! `(author, seq)` as the record's identity and look at all of them.
//!
//! Times are milliseconds since the Unix epoch by the writer's wall clock.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::RecordId;

/// The extension of history files: JSON lines.
pub const HISTORY_EXT: &str = "jsonl";
/// The longest line a history file may hold; a longer one is an error, not an allocation.
pub const MAX_HISTORY_LINE_BYTES: usize = 64 * 1024;

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum HistoryEvent {
    /// The writer handed the record to its peer.
    Started {
        author: String,
        seq: u64,
        time_ms: u64,
    },
    /// The peer said the record is committed (`Event::Committed`).
    Acknowledged {
        author: String,
        seq: u64,
        time_ms: u64,
        /// The height the acknowledgement named, if it named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u64>,
        /// The acknowledgement answered a resent batch (`duplicate: true`); its height is
        /// then the block that took the batch the first time.
        #[serde(default)]
        duplicate: bool,
    },
    /// The peer said the record was refused (`Event::Refused`): it is not in the chain.
    Refused {
        author: String,
        seq: u64,
        time_ms: u64,
        reason: String,
    },
    /// The writer gave up waiting (timeout, its peer died): the record may or may not be in
    /// the chain, but at most once.
    Indeterminate {
        author: String,
        seq: u64,
        time_ms: u64,
        reason: String,
    },
}

impl HistoryEvent {
    pub fn record(&self) -> RecordId {
        let (author, seq) = match self {
            HistoryEvent::Started { author, seq, .. }
            | HistoryEvent::Acknowledged { author, seq, .. }
            | HistoryEvent::Refused { author, seq, .. }
            | HistoryEvent::Indeterminate { author, seq, .. } => (author, *seq),
        };
        RecordId::new(author.clone(), seq)
    }
}

/// How an append ended, as far as its writer knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Acknowledged {
        height: Option<u64>,
        duplicate: bool,
        time_ms: u64,
    },
    Refused {
        reason: String,
        time_ms: u64,
    },
    Indeterminate {
        reason: String,
    },
}

/// One append a writer started, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub record: RecordId,
    pub started_ms: u64,
    pub outcome: Outcome,
    /// Where it was started, for messages: `file line N`.
    pub origin: String,
}

impl Append {
    pub fn is_acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Acknowledged { .. })
    }
    pub fn is_refused(&self) -> bool {
        matches!(self.outcome, Outcome::Refused { .. })
    }
}

/// Why a history could not be read or written.
#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("cannot list the history directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("no *.{HISTORY_EXT} history files in {0}: did the writers record anything there?")]
    NoFiles(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} line {line}: {why}")]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write history to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Every append of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub appends: Vec<Append>,
}

impl History {
    /// Reads every `*.jsonl` file in `dir` (not its subdirectories), in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, HistoryError> {
        let read_dir = |source| HistoryError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == HISTORY_EXT) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(HistoryError::NoFiles(dir.to_owned()));
        }
        files.sort();
        let mut history = Self::default();
        for path in files {
            history.appends.extend(Self::load_file(&path)?.appends);
        }
        Ok(history)
    }

    /// Reads one writer's file. Blank lines are skipped.
    pub fn load_file(path: &Path) -> Result<Self, HistoryError> {
        let read = |source| HistoryError::Read {
            path: path.to_owned(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(read)?);
        let label = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        let mut fold = Fold::new(label);
        let mut buf = Vec::new();
        for line in 1.. {
            buf.clear();
            let limit = MAX_HISTORY_LINE_BYTES as u64 + 1;
            let n = (&mut reader)
                .take(limit)
                .read_until(b'\n', &mut buf)
                .map_err(read)?;
            if n == 0 {
                break;
            }
            let bad = |why: String| HistoryError::Line {
                path: path.to_owned(),
                line,
                why,
            };
            if buf.len() > MAX_HISTORY_LINE_BYTES {
                return Err(bad(format!(
                    "longer than {MAX_HISTORY_LINE_BYTES} bytes: not a history event"
                )));
            }
            let text = std::str::from_utf8(&buf).map_err(|e| bad(format!("not UTF-8: {e}")))?;
            if text.trim().is_empty() {
                continue;
            }
            let event: HistoryEvent =
                serde_json::from_str(text).map_err(|e| bad(format!("not a history event: {e}")))?;
            fold.push(line, event).map_err(bad)?;
        }
        Ok(fold.finish())
    }

    /// Folds events as if they were the lines of a file called `label`, for tests and for
    /// writers that keep their history in memory.
    pub fn from_events(
        label: &str,
        events: impl IntoIterator<Item = HistoryEvent>,
    ) -> Result<Self, HistoryError> {
        let mut fold = Fold::new(label.to_owned());
        for (i, event) in events.into_iter().enumerate() {
            fold.push(i + 1, event).map_err(|why| HistoryError::Line {
                path: PathBuf::from(label),
                line: i + 1,
                why,
            })?;
        }
        Ok(fold.finish())
    }

    /// Adds another writer's appends.
    pub fn extend(&mut self, other: History) {
        self.appends.extend(other.appends);
    }
}

/// An append being folded: its outcome so far and the line that gave it.
struct Pending {
    append: Append,
    settled: Option<usize>,
}

/// Folds one file's events into appends; see the module docs for the rules.
struct Fold {
    label: String,
    appends: Vec<Pending>,
    /// The index of the latest append of each record.
    latest: HashMap<RecordId, usize>,
}

impl Fold {
    fn new(label: String) -> Self {
        Self {
            label,
            appends: Vec::new(),
            latest: HashMap::new(),
        }
    }

    fn push(&mut self, line: usize, event: HistoryEvent) -> Result<(), String> {
        let record = event.record();
        let outcome = match event {
            HistoryEvent::Started { time_ms, .. } => {
                if let Some(&i) = self.latest.get(&record) {
                    let prev = &mut self.appends[i];
                    if prev.settled.is_none() {
                        prev.append.outcome = Outcome::Indeterminate {
                            reason: format!("started again at line {line} before an outcome"),
                        };
                        prev.settled = Some(line);
                    }
                }
                self.latest.insert(record.clone(), self.appends.len());
                self.appends.push(Pending {
                    append: Append {
                        record,
                        started_ms: time_ms,
                        // Replaced when the outcome arrives or at the end of the file.
                        outcome: Outcome::Indeterminate {
                            reason: String::new(),
                        },
                        origin: format!("{} line {line}", self.label),
                    },
                    settled: None,
                });
                return Ok(());
            }
            HistoryEvent::Acknowledged {
                height,
                duplicate,
                time_ms,
                ..
            } => Outcome::Acknowledged {
                height,
                duplicate,
                time_ms,
            },
            HistoryEvent::Refused {
                reason, time_ms, ..
            } => Outcome::Refused { reason, time_ms },
            HistoryEvent::Indeterminate { reason, .. } => Outcome::Indeterminate { reason },
        };
        let Some(&i) = self.latest.get(&record) else {
            return Err(format!(
                "an outcome for {record}, but no append of it was started before this line"
            ));
        };
        let p = &mut self.appends[i];
        let Some(earlier) = p.settled else {
            p.append.outcome = outcome;
            p.settled = Some(line);
            return Ok(());
        };
        let agrees = match (&p.append.outcome, &outcome) {
            // Giving up after an answer changes nothing.
            (_, Outcome::Indeterminate { .. }) => true,
            // A late answer after giving up settles the append.
            (Outcome::Indeterminate { .. }, _) => {
                p.append.outcome = outcome;
                p.settled = Some(line);
                return Ok(());
            }
            (Outcome::Refused { .. }, Outcome::Refused { .. }) => true,
            (Outcome::Acknowledged { height: a, .. }, Outcome::Acknowledged { height: b, .. }) => {
                a.is_none() || b.is_none() || a == b
            }
            _ => false,
        };
        if agrees {
            return Ok(());
        }
        Err(format!(
            "{record} is {} here but was {} at line {earlier}: the writer was told two \
             different things about one append",
            describe(&outcome),
            describe(&p.append.outcome)
        ))
    }

    fn finish(self) -> History {
        let appends = self
            .appends
            .into_iter()
            .map(|p| {
                let mut a = p.append;
                if p.settled.is_none() {
                    a.outcome = Outcome::Indeterminate {
                        reason: "the writer recorded no outcome".into(),
                    };
                }
                a
            })
            .collect();
        History { appends }
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Acknowledged {
            height: Some(h), ..
        } => format!("acknowledged at height {h}"),
        Outcome::Acknowledged { height: None, .. } => "acknowledged".into(),
        Outcome::Refused { reason, .. } => format!("refused ({reason})"),
        Outcome::Indeterminate { reason } => format!("indeterminate ({reason})"),
    }
}

/// The current wall-clock time in milliseconds since the Unix epoch (0 if the clock is set
/// before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A writer's history file, appended to one line per event.
///
/// Each event is one `write` of one whole line to a file opened for appending, with no
/// buffer of ours in between: a writer process that dies loses no event it recorded.
#[derive(Debug)]
pub struct HistoryLog {
    path: PathBuf,
    file: File,
}

impl HistoryLog {
    /// Opens `path` for appending, creating it if needed. Continuing an existing file is
    /// how a restarted writer keeps one history.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| HistoryError::Write {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&mut self, event: &HistoryEvent) -> Result<(), HistoryError> {
        let write = |source| HistoryError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(event).map_err(|e| write(io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(write)
    }

    pub fn started(&mut self, author: &str, seq: u64) -> Result<(), HistoryError> {
        self.record(&HistoryEvent::Started {
            author: author.to_owned(),
            seq,
            time_ms: now_ms(),
        })
    }

    pub fn acknowledged(
        &mut self,
        author: &str,
        seq: u64,
        height: u64,
        duplicate: bool,
    ) -> Result<(), HistoryError> {
        self.record(&HistoryEvent::Acknowledged {
            author: author.to_owned(),
            seq,
            time_ms: now_ms(),
            height: Some(height),
            duplicate,
        })
    }

    pub fn refused(&mut self, author: &str, seq: u64, reason: &str) -> Result<(), HistoryError> {
        self.record(&HistoryEvent::Refused {
            author: author.to_owned(),
            seq,
            time_ms: now_ms(),
            reason: reason.to_owned(),
        })
    }

    pub fn indeterminate(
        &mut self,
        author: &str,
        seq: u64,
        reason: &str,
    ) -> Result<(), HistoryError> {
        self.record(&HistoryEvent::Indeterminate {
            author: author.to_owned(),
            seq,
            time_ms: now_ms(),
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(seq: u64) -> HistoryEvent {
        HistoryEvent::Started {
            author: "alice".into(),
            seq,
            time_ms: 1,
        }
    }
    fn acked(seq: u64, height: u64) -> HistoryEvent {
        HistoryEvent::Acknowledged {
            author: "alice".into(),
            seq,
            time_ms: 2,
            height: Some(height),
            duplicate: false,
        }
    }
    fn refused(seq: u64) -> HistoryEvent {
        HistoryEvent::Refused {
            author: "alice".into(),
            seq,
            time_ms: 2,
            reason: "stale epoch".into(),
        }
    }
    fn timed_out(seq: u64) -> HistoryEvent {
        HistoryEvent::Indeterminate {
            author: "alice".into(),
            seq,
            time_ms: 2,
            reason: "timed out".into(),
        }
    }

    #[test]
    fn events_are_json_lines_with_an_event_tag() {
        let line = serde_json::to_string(&acked(3, 17)).unwrap();
        assert_eq!(
            line,
            r#"{"event":"acknowledged","author":"alice","seq":3,"time_ms":2,"height":17,"duplicate":false}"#
        );
        let back: HistoryEvent =
            serde_json::from_str(r#"{"event":"started","author":"alice","seq":3,"time_ms":1}"#)
                .unwrap();
        assert_eq!(back, started(3));
        let typo = r#"{"event":"started","author":"alice","seq":3,"time_ms":1,"sqe":4}"#;
        assert!(serde_json::from_str::<HistoryEvent>(typo).is_err());
    }

    #[test]
    fn folding_settles_each_append_once() {
        let h = History::from_events(
            "w",
            [
                started(1),
                started(2),
                started(3),
                started(4),
                acked(1, 5),
                timed_out(2),
                acked(2, 6), // a late answer settles an indeterminate append
                refused(3),
                timed_out(3), // ignored: the refusal stands
                acked(1, 5),  // a repeated answer is ignored
                started(3),   // the refused seq is reused by the next record
            ],
        )
        .unwrap();
        let outcomes: Vec<_> = h.appends.iter().map(|a| describe(&a.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                "acknowledged at height 5",
                "acknowledged at height 6",
                "refused (stale epoch)",
                "indeterminate (the writer recorded no outcome)",
                "indeterminate (the writer recorded no outcome)",
            ]
        );
        assert_eq!(h.appends[4].origin, "w line 11");
    }

    #[test]
    fn contradictions_and_orphan_outcomes_name_the_line() {
        let err = History::from_events("w", [started(1), acked(1, 5), acked(1, 6)]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("w line 3: alice seq 1 is acknowledged at height 6"),
            "{msg}"
        );
        assert!(msg.contains("at line 2"), "{msg}");
        let err = History::from_events("w", [started(1), refused(1), acked(1, 5)]).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        let err = History::from_events("w", [acked(1, 5)]).unwrap_err();
        assert!(
            err.to_string().contains("no append of it was started"),
            "{err}"
        );
    }

    #[test]
    fn a_restarted_append_leaves_the_first_indeterminate() {
        let h = History::from_events("w", [started(1), started(1), acked(1, 4)]).unwrap();
        assert!(matches!(
            &h.appends[0].outcome,
            Outcome::Indeterminate { reason } if reason.contains("line 2")
        ));
        assert!(h.appends[1].is_acknowledged());
    }

    #[test]
    fn logs_written_by_writers_load_back_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut alice = HistoryLog::open(&dir.path().join("alice.jsonl")).unwrap();
        alice.started("alice", 1).unwrap();
        alice.acknowledged("alice", 1, 4, false).unwrap();
        alice.started("alice", 2).unwrap();
        let mut bob = HistoryLog::open(&dir.path().join("bob.jsonl")).unwrap();
        bob.started("bob", 1).unwrap();
        bob.refused("bob", 1, "too large").unwrap();
        bob.started("bob", 1).unwrap();
        bob.indeterminate("bob", 1, "peer died").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a history").unwrap();

        let h = History::load_dir(dir.path()).unwrap();
        let got: Vec<_> = h
            .appends
            .iter()
            .map(|a| (a.record.to_string(), describe(&a.outcome), a.origin.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "alice seq 1".into(),
                    "acknowledged at height 4".into(),
                    "alice.jsonl line 1".into()
                ),
                (
                    "alice seq 2".into(),
                    "indeterminate (the writer recorded no outcome)".into(),
                    "alice.jsonl line 3".into()
                ),
                (
                    "bob seq 1".into(),
                    "refused (too large)".into(),
                    "bob.jsonl line 1".into()
                ),
                (
                    "bob seq 1".into(),
                    "indeterminate (peer died)".into(),
                    "bob.jsonl line 3".into()
                ),
            ]
        );
    }

    #[test]
    fn bad_files_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            History::load_dir(dir.path()),
            Err(HistoryError::NoFiles(_))
        ));
        let path = dir.path().join("w.jsonl");
        std::fs::write(
            &path,
            "{\"event\":\"started\",\"author\":\"a\",\"seq\":1,\"time_ms\":1}\n\n{oops\n",
        )
        .unwrap();
        let err = History::load_dir(dir.path()).unwrap_err();
        assert!(matches!(&err, HistoryError::Line { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("w.jsonl line 3"), "{err}");

        std::fs::write(&path, vec![b'x'; MAX_HISTORY_LINE_BYTES + 10]).unwrap();
        let err = History::load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let err = History::load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("line 1: not UTF-8"), "{err}");
        assert!(History::load_dir(&dir.path().join("missing")).is_err());
    }
}
