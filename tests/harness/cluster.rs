//! A whole group on 127.0.0.1: a key manager, a proxy and named peers, each a real
//! `conclave` process with its data in one temporary directory. Everything is killed on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{conclave, run, Proc, DEADLINE};

pub struct Peer {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub km: Proc,
    pub km_addr: SocketAddr,
    pub proxy: Proc,
    pub proxy_addr: SocketAddr,
    pub peers: BTreeMap<String, Peer>,
    /// When a member last lost what it held in memory (killed or stopped): the proxy's
    /// status rounds from before then may show heads it no longer has (see `wait_in_step`).
    pub lost_state_at: Option<Instant>,
}

/// With `CONCLAVE_KEEP_FAILED=DIR` set, a test that fails leaves a copy of its group's data
/// (stores, logs) in `DIR`, for reading after the run (the temporary directory itself goes).
impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(keep) = std::env::var_os("CONCLAVE_KEEP_FAILED") else {
            return;
        };
        if !std::thread::panicking() {
            return;
        }
        for p in self.peers.values_mut() {
            p.proc.kill9();
        }
        let to = PathBuf::from(keep).join(format!("cluster-{}", std::process::id()));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(self.dir.path())
            .arg(&to)
            .status();
        eprintln!("kept the group's data in {} ({copied:?})", to.display());
    }
}

impl Cluster {
    /// A key manager and a proxy, no peers yet.
    pub fn servers() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (km, km_addr) = start_server(
            dir.path(),
            &["keymanager", "--listen", "127.0.0.1:0", "--data", "km"],
            "keymanager",
        );
        let (proxy, proxy_addr) = start_server(
            dir.path(),
            &[
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--data",
                "proxy",
                "--keymanager",
                &km_addr.to_string(),
            ],
            "proxy",
        );
        Cluster {
            dir,
            km,
            km_addr,
            proxy,
            proxy_addr,
            peers: BTreeMap::new(),
            lost_state_at: None,
        }
    }

    /// Servers and `n` peers named p1..pn, started one after the other, each joined.
    pub fn with_peers(n: usize) -> Self {
        let mut c = Self::servers();
        for i in 1..=n {
            let name = format!("p{i}");
            c.start_peer(&name, None);
            c.wait_joined(&name);
        }
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The command line of peer `name` (data in `<dir>/peers/<name>`).
    pub fn peer_command(&self, name: &str, listen: Option<SocketAddr>) -> Command {
        let mut cmd = conclave(self.path());
        let listen = listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        cmd.args([
            "--json",
            "peer",
            "--name",
            name,
            "--listen",
            &listen,
            "--data",
            &format!("peers/{name}"),
            "--keymanager",
            &self.km_addr.to_string(),
            "--proxy",
            &self.proxy_addr.to_string(),
        ])
        .stdin(Stdio::piped());
        cmd
    }

    /// Starts peer `name` and waits for its `listening` line.
    pub fn start_peer(&mut self, name: &str, listen: Option<SocketAddr>) -> &mut Peer {
        let mut proc = Proc::spawn(&mut self.peer_command(name, listen));
        let ev = proc.wait_event("listening", |v| v["role"] == "peer");
        let addr = ev["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listening addr");
        let data = self.path().join("peers").join(name);
        self.peers
            .insert(name.to_owned(), Peer { proc, addr, data });
        self.peers.get_mut(name).expect("just inserted")
    }

    pub fn peer(&mut self, name: &str) -> &mut Peer {
        self.peers
            .get_mut(name)
            .unwrap_or_else(|| panic!("no peer {name}"))
    }

    pub fn wait_joined(&mut self, name: &str) -> Value {
        self.peer(name).proc.wait_event("joined", |_| true)
    }

    /// Kills peer `name` with SIGKILL; returns its address for a restart on the same port.
    pub fn kill9(&mut self, name: &str) -> SocketAddr {
        let mut p = self
            .peers
            .remove(name)
            .unwrap_or_else(|| panic!("no peer {name}"));
        p.proc.kill9();
        self.lost_state_at = Some(Instant::now());
        p.addr
    }

    /// `conclave --json status` through the proxy.
    pub fn status(&self) -> Value {
        let mut cmd = conclave(self.path());
        cmd.args(["--json", "status", "--proxy", &self.proxy_addr.to_string()]);
        let out = run(cmd);
        assert_eq!(out.code(), Some(0), "status failed: {}", out.stderr);
        let lines = out.json_lines();
        lines
            .into_iter()
            .find(|v| v["event"] == "status")
            .expect("a status line")
    }

    /// Waits until `pred` holds for the status, or panics at the deadline with the last one.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        let mut last = Value::Null;
        while Instant::now() < until {
            last = self.status();
            if pred(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut logs = format!("proxy:\n{}\n", self.proxy.stderr_tail(30));
        for (n, p) in &self.peers {
            logs.push_str(&format!("{n}:\n{}\n", p.proc.stderr_tail(30)));
        }
        panic!("status never showed {what}; last: {last:#}\n{logs}");
    }

    /// Asks `question` on `peer` (a console command) and returns the lines of its `info`
    /// answer for `command`.
    pub fn ask(&mut self, peer: &str, question: &str, command: &str) -> Vec<String> {
        let p = self.peer(peer);
        p.proc.send_line(question);
        let ev = p.proc.wait_event("info", |e| e["command"] == command);
        ev["lines"]
            .as_array()
            .expect("info lines")
            .iter()
            .map(|l| l.as_str().expect("a line is a string").to_owned())
            .collect()
    }

    /// Waits until `n` members are reachable with one head at `height` or above.
    ///
    /// The proxy answers from a probe round up to `STATUS_CACHE_MS` old. A member killed
    /// and restarted within that time may be shown with the head its old life had applied
    /// (and not made durable), so after a kill or stop only rounds certainly probed later
    /// count.
    pub fn wait_in_step(&self, n: usize, height: u64) -> Value {
        if let Some(at) = self.lost_state_at {
            let fresh = at + Duration::from_millis(conclave_proxy::STATUS_CACHE_MS + 50);
            std::thread::sleep(fresh.saturating_duration_since(Instant::now()));
        }
        self.wait_status("members in step", |s| {
            let Some(m) = s["members"].as_array() else {
                return false;
            };
            m.len() == n
                && m.iter().all(|x| {
                    x["reachable"] == true
                        && x["hash"].is_string()
                        && x["hash"] == m[0]["hash"]
                        && x["height"].as_u64() >= Some(height)
                })
        })
    }

    /// Runs `conclave verify`-like checking in-process is not possible from here; this reads
    /// a stopped peer's chain with the library instead.
    pub fn root_key(&self) -> PathBuf {
        self.path().join("conclave-data").join("root.pub.pem")
    }
}

/// Starts a server subcommand with `--json` in `dir` and returns it with its bound address.
fn start_server(dir: &Path, args: &[&str], role: &str) -> (Proc, SocketAddr) {
    let mut cmd = conclave(dir);
    cmd.arg("--json").args(args);
    let mut p = Proc::spawn(&mut cmd);
    let ev = p.wait_event("listening", |v| v["role"] == role);
    let addr = ev["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("listening addr");
    (p, addr)
}

impl Cluster {
    /// Stops peer `name` with SIGTERM and checks that it exits 0.
    pub fn stop(&mut self, name: &str) {
        let mut p = self
            .peers
            .remove(name)
            .unwrap_or_else(|| panic!("no peer {name}"));
        let status = p.proc.terminate();
        self.lost_state_at = Some(Instant::now());
        assert_eq!(
            status.code(),
            Some(0),
            "{name} did not stop cleanly:\n{}",
            p.proc.stderr_tail(40)
        );
    }

    /// Stops every running peer cleanly.
    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for n in names {
            self.stop(&n);
        }
    }

    /// Stops every process, reads the chains of `names` from their stores and asserts they
    /// are one chain (see [`assert_same_chains`]); returns them, in the order named.
    pub fn stop_and_compare_chains<'a>(
        &mut self,
        names: &[&'a str],
    ) -> Vec<(&'a str, Vec<conclave_shared::chain::StoredBlock>)> {
        self.stop_all();
        let chains: Vec<_> = names.iter().map(|n| (*n, self.chain_of(n))).collect();
        assert_same_chains(&chains);
        chains
    }

    /// Reads a stopped peer's stored chain, verifying it with the root key as it opens, and
    /// checks it with `verify_chain` once more. Returns the blocks.
    pub fn chain_of(&self, name: &str) -> Vec<conclave_shared::chain::StoredBlock> {
        let root =
            conclave_shared::identity::PublicKey::load_pem(&self.root_key()).expect("root key");
        let dir = self
            .path()
            .join("peers")
            .join(name)
            .join(conclave_peer::node::STORE_DIR);
        let store = conclave_peer::store::Store::open(&dir, root.clone())
            .unwrap_or_else(|e| panic!("{name}'s store does not open: {e}"));
        let chain = store.chain;
        let Some((head, _)) = chain.head() else {
            return Vec::new();
        };
        let mut blocks = Vec::new();
        while (blocks.len() as u64) <= head {
            let got = chain
                .blocks(blocks.len() as u64, head)
                .expect("read blocks");
            assert!(!got.is_empty(), "blocks missing below the head of {name}");
            blocks.extend(got);
        }
        let summary = conclave_shared::chain::verify_chain(
            &root,
            blocks
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
        )
        .unwrap_or_else(|f| panic!("{name}'s chain fails verification: {f:?}"));
        assert_eq!(summary.count, head + 1);
        blocks
    }
}

/// Every (author, seq) in a chain's record blocks, in chain order.
pub fn record_ids(blocks: &[conclave_shared::chain::StoredBlock]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for b in blocks {
        if let conclave_shared::chain::BlockBody::Records(batch) = &b.block.body {
            for r in &batch.records {
                out.push((batch.author.clone(), r.seq));
            }
        }
    }
    out
}

/// Asserts that the named chains are one chain: identical, except that a peer stopped a
/// moment earlier may lack the leader's last checkpoints (a checkpoint is committed up to a
/// second after the chain last grew, and a follower learns of a commit from the leader's
/// next message). Says where they part if not.
pub fn assert_same_chains(chains: &[(&str, Vec<conclave_shared::chain::StoredBlock>)]) {
    use conclave_shared::chain::BlockBody;
    let (first_name, first) = &chains[0];
    for (name, ch) in &chains[1..] {
        let common = ch.len().min(first.len());
        let longer = if ch.len() > first.len() { ch } else { first };
        let tail_is_checkpoints = longer[common..]
            .iter()
            .all(|b| matches!(b.block.body, BlockBody::Checkpoint(_)));
        if ch[..common] == first[..common] && tail_is_checkpoints {
            continue;
        }
        let split = ch.iter().zip(first.iter()).position(|(a, b)| a != b);
        panic!(
            "{name} ({} blocks) and {first_name} ({} blocks) differ{}",
            ch.len(),
            first.len(),
            match split {
                Some(h) => format!(
                    " at height {h}: {:?} vs {:?}",
                    ch[h].block.header, first[h].block.header
                ),
                None => " in length only (one is a prefix of the other)".into(),
            }
        );
    }
}

impl Cluster {
    /// The identity key of peer `name`, read from its data directory.
    pub fn identity_of(&self, name: &str) -> conclave_shared::identity::Identity {
        conclave_shared::identity::Identity::load_pem(
            &self.path().join("peers").join(name).join("identity.pem"),
        )
        .expect("identity")
    }

    /// `conclave keymanager revoke NAME` through the binary, with the admin token.
    pub fn revoke(&self, name: &str) {
        let mut cmd = conclave(self.path());
        cmd.args([
            "keymanager",
            "--data",
            "km",
            "revoke",
            name,
            "--keymanager",
            &self.km_addr.to_string(),
        ]);
        let out = run(cmd);
        assert_eq!(out.code(), Some(0), "revoke failed: {}", out.stderr);
    }
}

impl Cluster {
    /// Writes `yaml` into the cluster's directory as `file` and returns its path, to pass to
    /// processes as `--config PATH` (see [`Cluster::start_peer_with`]).
    pub fn write_config(&self, file: &str, yaml: &str) -> PathBuf {
        let path = self.path().join(file);
        std::fs::write(&path, yaml).expect("write config file");
        path
    }

    /// Starts peer `name` as [`Cluster::start_peer`] does, with `extra` arguments after the
    /// usual ones (global flags such as `--config FILE` are accepted there too), and waits for
    /// its `listening` line.
    pub fn start_peer_with(
        &mut self,
        name: &str,
        listen: Option<SocketAddr>,
        extra: &[&str],
    ) -> &mut Peer {
        let mut cmd = self.peer_command(name, listen);
        cmd.args(extra);
        let mut proc = Proc::spawn(&mut cmd);
        let ev = proc.wait_event("listening", |v| v["role"] == "peer");
        let addr = ev["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listening addr");
        let data = self.path().join("peers").join(name);
        self.peers
            .insert(name.to_owned(), Peer { proc, addr, data });
        self.peers.get_mut(name).expect("just inserted")
    }

    /// Servers and `n` peers p1..pn started one after the other, each joined, every peer
    /// with `--config` pointing at `yaml` (written as `peers.yml` in the cluster's directory;
    /// its path is returned too, for peers started later). The key manager and the proxy
    /// take what they need from their flags.
    pub fn with_peers_config(n: usize, yaml: &str) -> (Self, PathBuf) {
        let mut c = Self::servers();
        let config = c.write_config("peers.yml", yaml);
        let path = config.to_str().expect("a UTF-8 temp path").to_owned();
        for i in 1..=n {
            let name = format!("p{i}");
            c.start_peer_with(&name, None, &["--config", &path]);
            c.wait_joined(&name);
        }
        (c, config)
    }
}

impl Cluster {
    /// Kills peer `name` with SIGKILL and hands it back, with whatever it printed before it
    /// died read to the end, so that events already on their way (an acknowledgement the
    /// user saw) are not lost with it. Restart it with `start_peer(name, Some(peer.addr))`.
    pub fn kill9_and_read(&mut self, name: &str) -> Peer {
        let mut p = self
            .peers
            .remove(name)
            .unwrap_or_else(|| panic!("no peer {name}"));
        p.proc.kill9();
        self.lost_state_at = Some(Instant::now());
        // stdout is closed once the process is gone: this ends at its last line.
        while p.proc.next_line(Duration::from_millis(500)).is_some() {}
        p
    }

    /// `conclave verify` on peer `name`'s data directory (the peer may be running, stopped or
    /// killed), with the group's root key.
    pub fn verify(&self, name: &str) -> super::Output {
        let mut cmd = conclave(self.path());
        cmd.args([
            "--json",
            "verify",
            "--data",
            &format!("peers/{name}"),
            "--root-key",
            self.root_key().to_str().expect("a UTF-8 path"),
        ]);
        run(cmd)
    }
}
