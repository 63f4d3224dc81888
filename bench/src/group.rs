//! A local Conclave group of real processes (key manager, proxy, peers), each a `conclave
//! --json` child, driven the way a user drives it: lines on a peer's standard input, events on
//! its standard output. Every process is killed when its handle is dropped.
//!
//! An append is acknowledged when its peer prints `committed` for the record's seq. Seqs are
//! matched to lines through the peer's own `record` event (`own: true`, with the text), so the
//! match survives a peer restart that loses lines still in its input pipe.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::BenchError;

/// How long a process may take to print what it is waiting for.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// Bytes of every record's text: the id in hex, a space, filler.
pub const RECORD_BYTES: usize = 256;

/// A record's text: its id first (so an event can be matched to its append), then filler up
/// to [`RECORD_BYTES`].
pub fn record_text(id: u64) -> String {
    let mut s = format!("{id:016x} ");
    while s.len() < RECORD_BYTES {
        s.push((b'a' + (s.len() % 26) as u8) as char);
    }
    s
}

/// The id at the start of a record's text.
pub fn record_id(text: &str) -> Option<u64> {
    u64::from_str_radix(text.get(..16)?, 16).ok()
}

/// A free UDP port on 127.0.0.1 (bound, read and released), so a peer can be started again
/// on the address it was admitted with.
pub fn free_addr() -> Result<SocketAddr, BenchError> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A record arriving at a member: which peer printed it, and when.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub peer: usize,
    pub id: u64,
    pub height: u64,
    pub at: Instant,
}

/// What a peer's reader task shares with the appenders.
#[derive(Default)]
struct Acks {
    /// Appends waiting for their acknowledgement, by record id.
    waiting: HashMap<u64, oneshot::Sender<Instant>>,
    /// `committed` seen before the record event that names its id.
    committed_at: HashMap<u64, Instant>,
    /// Own record events seen before their `committed`.
    seq_to_id: HashMap<u64, u64>,
    /// The highest block height this peer has applied (from any event with a height).
    height: u64,
}

impl Acks {
    fn complete(&mut self, id: u64, at: Instant) {
        if let Some(tx) = self.waiting.remove(&id) {
            let _ = tx.send(at);
        }
    }
}

/// One `conclave --json …` child process.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Events other than records and commits (`listening`, `joined`, `leader`, `head`, …).
    events: mpsc::UnboundedReceiver<Value>,
}

impl Proc {
    async fn spawn(
        bin: &Path,
        dir: &Path,
        name: &str,
        args: &[String],
        acks: Option<(usize, Arc<Mutex<Acks>>, Watch)>,
    ) -> Result<(Self, Option<ChildStdin>), BenchError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let mut child = Command::new(bin)
            .current_dir(dir)
            .arg("--json")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(if acks.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Start {
                what: format!("{name} ({})", bin.display()),
                why: e.to_string(),
            })?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::Start {
            what: name.into(),
            why: "no stdout".into(),
        })?;
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(read_events(stdout, tx, acks));
        Ok((
            Proc {
                name: name.to_owned(),
                child,
                events,
            },
            stdin,
        ))
    }

    /// Waits for an event named `name` that satisfies `pred`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, BenchError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some(v)) if v["event"] == name && pred(&v) => return Ok(v),
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(BenchError::Other(format!(
                        "{} exited before printing `{name}` (see {}.log)",
                        self.name, self.name
                    )))
                }
                Err(_) => {
                    return Err(BenchError::Deadline(format!(
                        "`{name}` from {} (see {}.log)",
                        self.name, self.name
                    )))
                }
            }
        }
    }

    /// Forgets the events seen so far.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    async fn addr(&mut self) -> Result<SocketAddr, BenchError> {
        let v = self
            .wait_event("listening", START_DEADLINE, |_| true)
            .await?;
        v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Protocol {
                from: self.name.clone(),
                why: format!("no address in {v}"),
            })
    }
}

/// The fields of a peer's event the bench reads, borrowed from the line (record texts are
/// plain ASCII, so they need no unescaping). Typed, because thousands arrive per second.
#[derive(serde::Deserialize)]
struct Line<'a> {
    event: &'a str,
    seq: Option<u64>,
    height: Option<u64>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    own: Option<bool>,
}

type Watch = Arc<Mutex<Option<mpsc::UnboundedSender<Seen>>>>;

/// Reads a child's JSON lines: acknowledgements and records go to the appenders, the rest
/// to `events`.
async fn read_events(
    stdout: tokio::process::ChildStdout,
    events: mpsc::UnboundedSender<Value>,
    acks: Option<(usize, Arc<Mutex<Acks>>, Watch)>,
) {
    let mut lines = BufReader::with_capacity(1 << 16, stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let now = Instant::now();
        let Some((peer, acks, seen)) = &acks else {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = events.send(v);
            }
            continue;
        };
        let Ok(ev) = serde_json::from_str::<Line>(&line) else {
            continue;
        };
        match ev.event {
            "committed" => {
                let (Some(seq), Ok(mut a)) = (ev.seq, acks.lock()) else {
                    continue;
                };
                if let Some(h) = ev.height {
                    a.height = a.height.max(h);
                }
                match a.seq_to_id.remove(&seq) {
                    Some(id) => a.complete(id, now),
                    None => {
                        a.committed_at.insert(seq, now);
                    }
                }
            }
            "record" => {
                let id = ev.text.as_deref().and_then(record_id);
                if let (Some(id), Some(h)) = (id, ev.height) {
                    if let Ok(guard) = seen.lock() {
                        if let Some(tx) = guard.as_ref() {
                            let _ = tx.send(Seen {
                                peer: *peer,
                                id,
                                height: h,
                                at: now,
                            });
                        }
                    }
                }
                let Ok(mut a) = acks.lock() else { continue };
                if let Some(h) = ev.height {
                    a.height = a.height.max(h);
                }
                let (Some(seq), Some(id), Some(true)) = (ev.seq, id, ev.own) else {
                    continue;
                };
                match a.committed_at.remove(&seq) {
                    Some(at) => a.complete(id, at),
                    None => {
                        a.seq_to_id.insert(seq, id);
                    }
                }
            }
            _ => {
                if let (Some(h), Ok(mut a)) = (ev.height, acks.lock()) {
                    a.height = a.height.max(h);
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = events.send(v);
                }
            }
        }
    }
}

/// A member of the local group. Its process can be killed and started again through a
/// shared reference, so a load can keep running through other members meanwhile.
pub struct Peer {
    pub name: String,
    pub listen: SocketAddr,
    pub index: usize,
    proc: tokio::sync::Mutex<Option<Proc>>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// The running process's id, 0 when stopped.
    pid: AtomicU32,
    acks: Arc<Mutex<Acks>>,
}

impl Peer {
    /// Writes the record's line and returns a receiver for its acknowledgement time. Lines
    /// of one peer are written in the order of the calls.
    pub async fn send(&self, id: u64) -> Result<oneshot::Receiver<Instant>, BenchError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut a) = self.acks.lock() {
            a.waiting.insert(id, tx);
        }
        let mut line = record_text(id);
        line.push('\n');
        let mut w = self.stdin.lock().await;
        let w = w
            .as_mut()
            .ok_or_else(|| BenchError::Other(format!("{} is not running", self.name)))?;
        w.write_all(line.as_bytes()).await?;
        Ok(rx)
    }

    /// The highest block height this peer has reported applying.
    pub fn height(&self) -> u64 {
        self.acks.lock().map(|a| a.height).unwrap_or(0)
    }

    pub fn running(&self) -> bool {
        self.pid.load(Ordering::Relaxed) != 0
    }

    /// Waits for an event of this peer's.
    pub async fn wait_event(
        &self,
        name: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, BenchError> {
        let mut p = self.proc.lock().await;
        let p = p
            .as_mut()
            .ok_or_else(|| BenchError::Other(format!("{} is not running", self.name)))?;
        p.wait_event(name, deadline, pred).await
    }

    /// SIGTERM, waiting up to ten seconds for the exit (then SIGKILL).
    pub async fn terminate(&self) {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid != 0 {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if let Some(proc) = self.proc.lock().await.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(10), proc.child.wait()).await;
            }
        }
        self.kill9().await;
    }

    /// The last lines of this peer's log, for an error message.
    pub fn log_tail(&self, dir: &Path, lines: usize) -> String {
        let text =
            std::fs::read_to_string(dir.join(format!("{}.log", self.name))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL, and forget the appends that can no longer be acknowledged.
    pub async fn kill9(&self) {
        self.pid.store(0, Ordering::Relaxed);
        *self.stdin.lock().await = None;
        if let Some(mut proc) = self.proc.lock().await.take() {
            proc.kill9().await;
        }
        if let Ok(mut a) = self.acks.lock() {
            a.waiting.clear();
            a.committed_at.clear();
            a.seq_to_id.clear();
        }
    }
}

/// Where the group's shared parts are.
pub struct Group {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub km_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    pub peers: Vec<Peer>,
    km: Proc,
    proxy: Proc,
    /// Where every peer's records are reported, while someone listens.
    seen: Arc<Mutex<Option<mpsc::UnboundedSender<Seen>>>>,
    next_id: AtomicU64,
    extra_args: Vec<String>,
}

impl Group {
    /// A key manager, a proxy and `n` peers (p1..pn, p1 founding), all joined.
    /// `extra_args` go to every peer (e.g. `--config FILE`).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        n: usize,
        extra_args: &[String],
    ) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir)?;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (mut km, _) = Proc::spawn(
            bin,
            dir,
            "keymanager",
            &s(&[
                "keymanager",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "km",
                "--root-key",
                "root.pub.pem",
            ]),
            None,
        )
        .await?;
        let km_addr = km.addr().await?;
        let (mut proxy, _) = Proc::spawn(
            bin,
            dir,
            "proxy",
            &s(&[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "proxy",
                "--keymanager",
                &km_addr.to_string(),
                "--root-key",
                "root.pub.pem",
            ]),
            None,
        )
        .await?;
        let proxy_addr = proxy.addr().await?;
        let mut g = Group {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            km_addr,
            proxy_addr,
            peers: Vec::new(),
            km,
            proxy,
            seen: Arc::new(Mutex::new(None)),
            next_id: AtomicU64::new(1),
            extra_args: extra_args.to_vec(),
        };
        for _ in 0..n {
            let i = g.add_peer().await?;
            g.wait_joined(i).await?;
        }
        Ok(g)
    }

    /// Starts one more peer (not waiting for it to join); returns its index.
    pub async fn add_peer(&mut self) -> Result<usize, BenchError> {
        let index = self.peers.len();
        let name = format!("p{}", index + 1);
        let listen = free_addr()?;
        self.peers.push(Peer {
            name,
            listen,
            index,
            proc: tokio::sync::Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            pid: AtomicU32::new(0),
            acks: Arc::new(Mutex::new(Acks::default())),
        });
        self.launch(index).await?;
        Ok(index)
    }

    /// Starts one more peer whose key is made and registered first (as an operator enrols a
    /// member ahead of time): a first run that cannot reach the proxy stops once its
    /// certificate is on disk; then the real start. Returns its index and when that start was.
    pub async fn add_enrolled_peer(&mut self) -> Result<(usize, Instant), BenchError> {
        let index = self.peers.len();
        let name = format!("p{}", index + 1);
        let listen = free_addr()?;
        self.peers.push(Peer {
            name: name.clone(),
            listen,
            index,
            proc: tokio::sync::Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            pid: AtomicU32::new(0),
            acks: Arc::new(Mutex::new(Acks::default())),
        });
        let nowhere = free_addr()?;
        self.launch_with(index, Some(nowhere)).await?;
        let cert = self.dir.join("peers").join(&name).join("certificate.bin");
        let until = Instant::now() + START_DEADLINE;
        while !cert.exists() {
            if Instant::now() > until {
                return Err(BenchError::Deadline(format!("{name}'s registration")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A clean stop, so the store is closed as a stopped member's is.
        self.peers[index].terminate().await;
        let started = Instant::now();
        self.launch(index).await?;
        Ok((index, started))
    }

    async fn launch(&self, i: usize) -> Result<(), BenchError> {
        self.launch_with(i, None).await
    }

    async fn launch_with(&self, i: usize, proxy: Option<SocketAddr>) -> Result<(), BenchError> {
        let p = &self.peers[i];
        let proxy = proxy.unwrap_or(self.proxy_addr);
        let mut args: Vec<String> = [
            "peer",
            "--name",
            &p.name,
            "--listen",
            &p.listen.to_string(),
            "--data",
            &format!("peers/{}", p.name),
            "--keymanager",
            &self.km_addr.to_string(),
            "--proxy",
            &proxy.to_string(),
            "--root-key",
            "root.pub.pem",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        let (proc, stdin) = Proc::spawn(
            &self.bin,
            &self.dir,
            &p.name.clone(),
            &args,
            Some((i, p.acks.clone(), self.seen.clone())),
        )
        .await?;
        let p = &self.peers[i];
        p.pid.store(proc.pid().unwrap_or(0), Ordering::Relaxed);
        *p.stdin.lock().await = stdin;
        *p.proc.lock().await = Some(proc);
        Ok(())
    }

    /// Waits for peer `i` to print `joined`; returns the event.
    pub async fn wait_joined(&self, i: usize) -> Result<Value, BenchError> {
        self.peers[i]
            .wait_event("joined", START_DEADLINE, |_| true)
            .await
    }

    /// A fresh record id, unique in this group's life.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends one record through peer `i` and waits for its acknowledgement; returns the
    /// latency from the call to the acknowledgement.
    pub async fn append(&self, i: usize, deadline: Duration) -> Result<Duration, BenchError> {
        let id = self.next_id();
        let t0 = Instant::now();
        let rx = self.peers[i].send(id).await?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(at)) => Ok(at.saturating_duration_since(t0)),
            Ok(Err(_)) => Err(BenchError::Other(format!(
                "record {id} through {} was forgotten (its peer was killed)",
                self.peers[i].name
            ))),
            Err(_) => Err(BenchError::Deadline(format!(
                "the acknowledgement of record {id} through {}",
                self.peers[i].name
            ))),
        }
    }

    /// What `conclave status` says of the group (leader, term, members).
    pub async fn status(&self) -> Result<Value, BenchError> {
        let out = tokio::process::Command::new(&self.bin)
            .current_dir(&self.dir)
            .args([
                "--json",
                "status",
                "--proxy",
                &self.proxy_addr.to_string(),
                "--root-key",
                "root.pub.pem",
            ])
            .stderr(Stdio::null())
            .output()
            .await?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .ok_or_else(|| BenchError::Protocol {
                from: "conclave status".into(),
                why: "no JSON line".into(),
            })
    }

    /// The current leader's index, as the proxy's status names it (a running peer).
    pub async fn leader(&self) -> Result<usize, BenchError> {
        let until = Instant::now() + START_DEADLINE;
        loop {
            let leader = self
                .status()
                .await
                .ok()
                .and_then(|v| v["leader"].as_str().map(str::to_owned));
            if let Some(i) = leader.and_then(|n| self.peers.iter().position(|p| p.name == n)) {
                if self.peers[i].running() {
                    return Ok(i);
                }
            }
            if Instant::now() > until {
                return Err(BenchError::Deadline("a leader named by the proxy".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs peer `i`.
    pub async fn kill9(&self, i: usize) {
        self.peers[i].kill9().await
    }

    /// Starts peer `i` again on its data and address.
    pub async fn restart(&self, i: usize) -> Result<(), BenchError> {
        self.launch(i).await
    }

    /// Reports every record every peer applies to `tx` until [`Group::stop_watching`].
    pub fn watch_records(&self) -> mpsc::UnboundedReceiver<Seen> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(tx);
        }
        rx
    }

    pub fn stop_watching(&self) {
        if let Ok(mut s) = self.seen.lock() {
            *s = None;
        }
    }

    /// Process ids of everything running, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [self.km.pid(), self.proxy.pid()]
            .into_iter()
            .flatten()
            .collect();
        v.extend(
            self.peers
                .iter()
                .map(|p| p.pid.load(Ordering::Relaxed))
                .filter(|&p| p != 0),
        );
        v
    }

    /// Indices of running peers.
    pub fn running(&self) -> Vec<usize> {
        self.peers
            .iter()
            .filter(|p| p.running())
            .map(|p| p.index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_carries_its_id_and_has_the_record_size() {
        let t = record_text(0xdead_beef);
        assert_eq!(t.len(), RECORD_BYTES);
        assert_eq!(record_id(&t), Some(0xdead_beef));
        assert_eq!(record_id("not hex at all, no"), None);
        assert_eq!(record_id("short"), None);
    }

    #[test]
    fn acknowledgements_match_in_either_order() {
        let mut a = Acks::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        a.waiting.insert(10, tx1);
        a.waiting.insert(11, tx2);
        let t = Instant::now();
        // committed first, then the record naming the id
        a.committed_at.insert(1, t);
        if let Some(at) = a.committed_at.remove(&1) {
            a.complete(10, at);
        }
        assert_eq!(rx1.try_recv().ok(), Some(t));
        // an unknown id completes nothing
        a.complete(99, t);
        assert!(rx2.try_recv().is_err());
        a.complete(11, t);
        assert!(rx2.try_recv().is_ok());
    }
}
