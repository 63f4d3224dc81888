//! A whole group of real `conclave` processes on 127.0.0.1 (a key manager, a proxy and named
//! peers), every peer behind its relay ([`crate::net`]), driven as a user drives it: lines on
//! a peer's standard input, `--json` events on its output. Peers can be killed (SIGKILL) and
//! restarted on the same address with their data, paused (SIGSTOP) and resumed, cut off by
//! the relays; every process is killed when the group is dropped.
//!
//! # Layout
//! - [`process`]: one child process and its [`EventLog`].
//! - `outbox`: reading a killed peer's outbox before it is restarted.
//! - here: [`Group`] and [`GroupOptions`].

mod outbox;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conclave_peer::node::STORE_DIR;
use conclave_shared::identity::PublicKey;
use nix::sys::signal::Signal;
use serde_json::Value;
use thiserror::Error;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::model::MemberChain;
use crate::net::{Faults, NetError, Network};
use crate::store::read_peer;
use crate::writer::{Writer, WriterMsg, WriterStats};

pub use outbox::{read_outbox, OutboxState};
pub use process::{EventLog, Process};

/// How long a process may take to print what is waited for when it starts or joins.
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a peer may take to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum GroupError {
    #[error("cannot start a process: {0}")]
    Spawn(String),
    #[error("cannot signal process {pid}: {why}")]
    Signal { pid: u32, why: String },
    #[error("{who} printed no {event:?} event within {after:?}; its log: {log}")]
    Timeout {
        who: String,
        event: String,
        after: Duration,
        log: PathBuf,
    },
    #[error("{0}")]
    Net(#[from] NetError),
    #[error("no peer named {0}")]
    NoPeer(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("cannot read the outbox in {dir}: {why}")]
    Outbox { dir: PathBuf, why: String },
    #[error("cannot prepare {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("cannot read the root key {path}: {why}")]
    RootKey { path: PathBuf, why: String },
    #[error("{0}")]
    History(#[from] crate::history::HistoryError),
}

/// Where and how a group runs.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// The `conclave` binary.
    pub bin: PathBuf,
    /// Every process runs here: data, logs (`logs/NAME.log`), histories (`history/`).
    pub dir: PathBuf,
    /// Seeds the relays' random draws.
    pub seed: u64,
    /// A `--config FILE` for every process (Raft timings, say); `None`: the defaults.
    pub config: Option<PathBuf>,
}

/// A running peer (or a stopped one: `proc` is `None`).
pub struct Peer {
    pub name: String,
    proc: Option<Process>,
    /// Its own listening address, kept for restarts; known once it first listened.
    pub listen: Option<SocketAddr>,
    /// Its relay's address, which it advertises.
    pub advertise: SocketAddr,
    /// Every event it printed, across its lives.
    pub events: Arc<EventLog>,
    /// Where its `committed` and `refused` events go, once it has a writer.
    appends: Arc<Mutex<Option<mpsc::UnboundedSender<WriterMsg>>>>,
    writer: Option<Writer>,
    pub paused: bool,
}

impl Peer {
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }
}

/// A key manager, a proxy and peers; see the module docs.
pub struct Group {
    opts: GroupOptions,
    net: Network,
    _km: Process,
    proxy: Option<Process>,
    pub km_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    peers: BTreeMap<String, Peer>,
    root: Option<PublicKey>,
}

impl Group {
    /// Starts the key manager and the proxy; no peers yet.
    pub async fn servers(opts: GroupOptions) -> Result<Self, GroupError> {
        for sub in ["logs", "history", "peers"] {
            let path = opts.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| GroupError::Io {
                path: path.clone(),
                why: e.to_string(),
            })?;
        }
        let net = Network::new(opts.seed);
        let (km, km_addr) = start_server(
            &opts,
            "keymanager",
            &["keymanager", "--listen", "127.0.0.1:0", "--data", "km"],
        )
        .await?;
        let km_text = km_addr.to_string();
        let (proxy, proxy_addr) = start_server(
            &opts,
            "proxy",
            &[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "proxy",
                "--keymanager",
                &km_text,
            ],
        )
        .await?;
        Ok(Self {
            opts,
            net,
            _km: km,
            proxy: Some(proxy),
            km_addr,
            proxy_addr,
            peers: BTreeMap::new(),
            root: None,
        })
    }

    /// Servers and peers `p1..=pN`, each started and joined before the next.
    pub async fn start(opts: GroupOptions, peers: usize) -> Result<Self, GroupError> {
        let mut g = Self::servers(opts).await?;
        for i in 1..=peers {
            let name = format!("p{i}");
            g.add_peer(&name).await?;
            g.wait_event(&name, 0, "joined", |_| true, START_DEADLINE)
                .await?;
        }
        Ok(g)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    pub fn faults(&self) -> Faults {
        self.net.faults()
    }

    pub fn names(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    pub fn peer(&self, name: &str) -> Result<&Peer, GroupError> {
        self.peers
            .get(name)
            .ok_or_else(|| GroupError::NoPeer(name.to_owned()))
    }

    fn peer_mut(&mut self, name: &str) -> Result<&mut Peer, GroupError> {
        self.peers
            .get_mut(name)
            .ok_or_else(|| GroupError::NoPeer(name.to_owned()))
    }

    /// The stderr log of `name`; its stdout events are beside it, in `NAME.events.jsonl`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.opts.dir.join("logs").join(format!("{name}.log"))
    }

    /// The data directory of peer `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.opts.dir.join("peers").join(name)
    }

    /// The group's root public key, which the key manager wrote where everyone reads it.
    pub fn root(&mut self) -> Result<PublicKey, GroupError> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let path = self.opts.dir.join("conclave-data").join("root.pub.pem");
        let root = PublicKey::load_pem(&path).map_err(|e| GroupError::RootKey {
            path: path.clone(),
            why: e.to_string(),
        })?;
        self.root = Some(root.clone());
        Ok(root)
    }

    /// Starts a new peer `name` behind a new relay and waits for it to listen (not to join:
    /// wait for its `joined` event with [`Group::wait_event`]).
    pub async fn add_peer(&mut self, name: &str) -> Result<&Peer, GroupError> {
        let advertise = self.net.relay(name).await?;
        self.peers.insert(
            name.to_owned(),
            Peer {
                name: name.to_owned(),
                proc: None,
                listen: None,
                advertise,
                events: Arc::new(EventLog::default()),
                appends: Arc::new(Mutex::new(None)),
                writer: None,
                paused: false,
            },
        );
        self.launch(name).await?;
        self.peer(name)
    }

    /// Starts peer `name` again, on its address and with its data, after a kill.
    pub async fn restart(&mut self, name: &str) -> Result<(), GroupError> {
        if self.peer(name)?.running() {
            return Ok(());
        }
        self.launch(name).await
    }

    async fn launch(&mut self, name: &str) -> Result<(), GroupError> {
        let (listen, advertise, events, appends) = {
            let p = self.peer(name)?;
            (p.listen, p.advertise, p.events.clone(), p.appends.clone())
        };
        let listen_arg = listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut cmd = self.command();
        cmd.args([
            "peer",
            "--name",
            name,
            "--listen",
            &listen_arg,
            "--advertise",
            &advertise.to_string(),
            "--data",
            &format!("peers/{name}"),
            "--keymanager",
            &self.km_addr.to_string(),
            "--proxy",
            &self.proxy_addr.to_string(),
        ]);
        let forward = move |v: Value| {
            let slot = appends.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = slot.as_ref() {
                let _ = tx.send(WriterMsg::Event(v));
            }
        };
        let mark = events.len();
        let proc = Process::spawn(
            cmd,
            &self.opts.dir,
            &self.log_path(name),
            events.clone(),
            Some(Box::new(forward)),
        )?;
        let stdin = proc.stdin();
        {
            let p = self.peer_mut(name)?;
            p.proc = Some(proc);
            p.paused = false;
        }
        let ev = self
            .wait_event(
                name,
                mark,
                "listening",
                |v| v["role"] == "peer",
                START_DEADLINE,
            )
            .await?;
        let bound = ev["addr"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| GroupError::Spawn(format!("{name} printed no address: {ev}")))?;
        self.net.attach(name, bound)?;
        let p = self.peer_mut(name)?;
        p.listen = Some(bound);
        if let Some(w) = &p.writer {
            w.send(WriterMsg::Attach(stdin));
        }
        info!(peer = name, %bound, "peer started");
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("--json");
        if let Some(c) = &self.opts.config {
            cmd.arg("--config").arg(c);
        }
        cmd
    }

    /// Waits for an event of `name` printed at index `from` or later (0: ever).
    pub async fn wait_event(
        &self,
        name: &str,
        from: usize,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Result<Value, GroupError> {
        let p = self.peer(name)?;
        p.events
            .wait(from, event, pred, Instant::now() + within)
            .await
            .ok_or_else(|| GroupError::Timeout {
                who: name.to_owned(),
                event: event.to_owned(),
                after: within,
                log: self.log_path(name),
            })
    }

    /// Hands `text` to peer `name` as a line of its standard input.
    pub fn send_line(&self, name: &str, text: &str) -> Result<(), GroupError> {
        let p = self.peer(name)?;
        let proc = p
            .proc
            .as_ref()
            .ok_or_else(|| GroupError::NotRunning(name.to_owned()))?;
        proc.stdin()
            .send(text.to_owned())
            .map_err(|_| GroupError::NotRunning(name.to_owned()))
    }

    /// The leader with the highest term any peer has named (in `leader` or `joined`).
    pub fn leader(&self) -> Option<(String, u64)> {
        let mut best: Option<(String, u64)> = None;
        for p in self.peers.values() {
            for ev in ["leader", "joined"] {
                let Some(v) = p.events.last(ev, |_| true) else {
                    continue;
                };
                let key = if ev == "leader" { "name" } else { "leader" };
                // A restarted peer's `joined` names no leader ("") until it hears from one.
                let (Some(n), Some(t)) = (
                    v[key].as_str().filter(|n| !n.is_empty()),
                    v["term"].as_u64(),
                ) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(_, bt)| t > *bt) {
                    best = Some((n.to_owned(), t));
                }
            }
        }
        best
    }

    /// The leader peer `name` last named, with its term.
    pub fn leader_seen_by(&self, name: &str) -> Option<(String, u64)> {
        let p = self.peers.get(name)?;
        let v = p.events.last("leader", |v| v["name"] != "")?;
        Some((v["name"].as_str()?.to_owned(), v["term"].as_u64()?))
    }

    /// SIGKILL for peer `name`; its writer learns what its outbox kept.
    pub async fn kill9(&mut self, name: &str) -> Result<(), GroupError> {
        let Some(proc) = self.peer_mut(name)?.proc.take() else {
            return Ok(());
        };
        proc.kill9().await;
        self.peer_mut(name)?.paused = false;
        self.after_kill(name).await
    }

    /// SIGKILL for every running peer at once.
    pub async fn kill9_all(&mut self) -> Result<(), GroupError> {
        let procs: Vec<(String, Process)> = self
            .peers
            .values_mut()
            .filter_map(|p| {
                p.paused = false;
                p.proc.take().map(|proc| (p.name.clone(), proc))
            })
            .collect();
        // Signals first, all of them, then the waits: they die together.
        for (_, p) in &procs {
            let _ = p.signal(Signal::SIGKILL);
        }
        let mut names = Vec::new();
        for (n, p) in procs {
            p.kill9().await;
            names.push(n);
        }
        for n in names {
            self.after_kill(&n).await?;
        }
        Ok(())
    }

    async fn after_kill(&mut self, name: &str) -> Result<(), GroupError> {
        let has_writer = self.peer(name)?.writer.is_some();
        if !has_writer {
            return Ok(());
        }
        let root = self.root()?;
        let dir = self.data_dir(name).join(STORE_DIR);
        let read = tokio::task::spawn_blocking(move || read_outbox(&dir, &root))
            .await
            .map_err(|e| GroupError::Outbox {
                dir: PathBuf::from(name),
                why: e.to_string(),
            })
            .and_then(|r| r);
        let p = self.peer(name)?;
        if let Some(w) = &p.writer {
            match read {
                Ok(state) => w.send(WriterMsg::Detach(state)),
                Err(e) => {
                    warn!(peer = name, "{e}");
                    w.send(WriterMsg::Lost(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// SIGSTOP: the peer stops where it is, sockets open, until [`Group::resume`].
    pub fn pause(&mut self, name: &str) -> Result<(), GroupError> {
        let p = self.peer_mut(name)?;
        let proc = p
            .proc
            .as_ref()
            .ok_or_else(|| GroupError::NotRunning(name.to_owned()))?;
        proc.signal(Signal::SIGSTOP)?;
        p.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, name: &str) -> Result<(), GroupError> {
        let p = self.peer_mut(name)?;
        if let Some(proc) = p.proc.as_ref() {
            proc.signal(Signal::SIGCONT)?;
        }
        p.paused = false;
        Ok(())
    }

    /// Starts a writer on peer `name`: it appends one line at a time while it runs and
    /// records everything in `history/NAME.jsonl`.
    pub fn start_writer(&mut self, name: &str, pace: Duration) -> Result<(), GroupError> {
        let path = self.opts.dir.join("history").join(format!("{name}.jsonl"));
        let writer = Writer::start(name, path, pace)?;
        let p = self.peer_mut(name)?;
        *p.appends.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer.tx.clone());
        if let Some(proc) = &p.proc {
            writer.send(WriterMsg::Attach(proc.stdin()));
        }
        p.writer = Some(writer);
        Ok(())
    }

    /// Tells every writer to start no more lines.
    pub fn quiesce_writers(&self) {
        for w in self.peers.values().filter_map(|p| p.writer.as_ref()) {
            w.send(WriterMsg::Quiesce);
        }
    }

    /// What every writer did so far.
    pub async fn writer_stats(&self) -> Vec<WriterStats> {
        let mut out = Vec::new();
        for w in self.peers.values().filter_map(|p| p.writer.as_ref()) {
            out.push(w.peek().await);
        }
        out
    }

    /// Closes every writer's history and returns what they did.
    pub async fn finish_writers(&mut self) -> Vec<WriterStats> {
        let mut out = Vec::new();
        for p in self.peers.values_mut() {
            *p.appends.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if let Some(w) = p.writer.take() {
                out.push(w.finish().await);
            }
        }
        out
    }

    /// The head `(height, hash)` peer `name` last printed.
    pub fn head_of(&self, name: &str) -> Option<(u64, String)> {
        let v = self.peers.get(name)?.events.last("head", |_| true)?;
        Some((v["height"].as_u64()?, v["hash"].as_str()?.to_owned()))
    }

    /// Stops every peer with SIGTERM (resuming paused ones first), all at once. Returns the
    /// peers that did not exit cleanly.
    pub async fn stop_all(&mut self) -> Vec<String> {
        let procs: Vec<(String, Process)> = self
            .peers
            .values_mut()
            .filter_map(|p| p.proc.take().map(|proc| (p.name.clone(), proc)))
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (n, p) in procs {
            set.spawn(async move { (n, p.terminate(STOP_GRACE).await) });
        }
        let mut unclean = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((n, false)) = r {
                unclean.push(n);
            }
        }
        unclean.sort();
        unclean
    }

    /// Every peer's chain as its store holds it. The peers must be stopped.
    pub fn chains(&self) -> Result<Vec<MemberChain>, crate::store::ReadChainError> {
        self.peers
            .keys()
            .map(|n| read_peer(n, &self.data_dir(n)))
            .collect()
    }

    /// Stops the proxy (SIGTERM), the relays and the key manager.
    pub async fn shutdown(mut self) {
        let _ = self.stop_all().await;
        if let Some(p) = self.proxy.take() {
            let _ = p.terminate(STOP_GRACE).await;
        }
    }
}

/// Starts a server subcommand and returns it with the address it printed.
async fn start_server(
    opts: &GroupOptions,
    role: &str,
    args: &[&str],
) -> Result<(Process, SocketAddr), GroupError> {
    let mut cmd = Command::new(&opts.bin);
    cmd.arg("--json");
    if let Some(c) = &opts.config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(args);
    let events = Arc::new(EventLog::default());
    let log = opts.dir.join("logs").join(format!("{role}.log"));
    let proc = Process::spawn(cmd, &opts.dir, &log, events.clone(), None)?;
    let ev = events
        .wait(
            0,
            "listening",
            |v| v["role"] == role,
            Instant::now() + START_DEADLINE,
        )
        .await
        .ok_or_else(|| GroupError::Timeout {
            who: role.to_owned(),
            event: "listening".into(),
            after: START_DEADLINE,
            log: log.clone(),
        })?;
    let addr = ev["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| GroupError::Spawn(format!("{role} printed no address: {ev}")))?;
    Ok((proc, addr))
}
