//! A local etcd cluster of real processes on 127.0.0.1, for the comparison runs.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::gateway::{self, MemberAddResponse, StatusResponse};
use super::install::find_etcd;
use super::put;
use crate::http::HttpConn;
use crate::BenchError;

/// etcd's own defaults, written out so a distribution that changed them cannot skew the
/// comparison silently.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// How long a new cluster may take to accept its first put (elections, WAL creation).
const START_TIMEOUT_MS: u64 = 30_000;
/// Bound on each setup or probe call: a put sent during an election hangs in etcd for up
/// to 7 s before failing, so probes give up sooner and try again.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// etcd refuses member changes ("unhealthy cluster") until every member has been connected
/// for 5 s, so an add right after a restart has to wait that out.
const ADD_MEMBER_TIMEOUT_MS: u64 = 30_000;
const POLL_INTERVAL_MS: u64 = 50;
/// Ports are picked by binding port 0 and releasing it; if another process takes one in
/// between, etcd exits with "address already in use" and the start is tried again.
const START_ATTEMPTS: usize = 3;
/// Bytes of a member's log quoted when it exits unexpectedly.
const LOG_TAIL_BYTES: u64 = 2_048;
const READY_KEY: &[u8] = b"conclave-bench/ready";

pub struct EtcdMember {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// `None` while the member is stopped.
    pub pid: Option<u32>,
    /// When its current process was started (catch-up is timed from here).
    pub started: Option<std::time::Instant>,
}

/// Kills and reaps every etcd it started when dropped (also when a test panics), and
/// removes only the data directories it created; the logs stay in `dir` for reading.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    token: String,
    members: Vec<EtcdMember>,
    /// Parallel to `members`; `None` while stopped.
    children: Vec<Option<Child>>,
    created_dirs: Vec<PathBuf>,
}

impl EtcdCluster {
    /// `n` members on 127.0.0.1 with ports chosen at run time (bind port 0, read it,
    /// release), data under `dir`, etcd's default heartbeat (100 ms) and election timeout
    /// (1000 ms), logs to dir/<name>.log. Waits (bounded deadline) until a put succeeds.
    pub async fn start(dir: &Path, n: usize) -> Result<Self, BenchError> {
        if n == 0 {
            return Err(BenchError::Other("an etcd cluster needs a member".into()));
        }
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, n).await {
                Err(e)
                    if attempt < START_ATTEMPTS
                        && e.to_string().contains("address already in use") =>
                {
                    tracing::warn!(attempt, "etcd lost a port race, starting again: {e}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(dir: &Path, n: usize) -> Result<Self, BenchError> {
        let bin = find_etcd().ok_or_else(|| BenchError::Start {
            what: "etcd".into(),
            why: "no etcd on PATH (ensure_installed installs it)".into(),
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut cluster = Self {
            bin,
            dir: dir.to_path_buf(),
            token: format!("conclave-bench-{}-{nanos}", std::process::id()),
            members: Vec::with_capacity(n),
            children: Vec::with_capacity(n),
            created_dirs: Vec::new(),
        };
        let ports = cluster.free_ports(2 * n)?;
        for (i, pair) in ports.chunks(2).enumerate() {
            cluster.members.push(EtcdMember {
                name: format!("etcd{i}"),
                client: loopback(pair[0]),
                peer: loopback(pair[1]),
                pid: None,
                started: None,
            });
            cluster.children.push(None);
        }
        for i in 0..n {
            cluster.spawn(i, "new")?;
        }
        cluster.wait_for_put().await?;
        Ok(cluster)
    }

    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Client addresses of the running members.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.running().map(|i| self.members[i].client).collect()
    }

    /// Index of the current leader (asks maintenance/status of running members): the
    /// running member that names itself leader, the one with the highest term if a deposed
    /// leader has not noticed yet.
    pub async fn leader(&self) -> Result<usize, BenchError> {
        let mut best: Option<(u64, usize)> = None;
        let mut seen = Vec::new();
        for i in self.running() {
            match self.status(i).await {
                Ok(s) if s.leader != 0 && s.leader == s.header.member_id => {
                    if best.is_none_or(|(term, _)| s.raft_term > term) {
                        best = Some((s.raft_term, i));
                    }
                }
                Ok(s) => seen.push(format!("{}: leader {:x}", self.members[i].name, s.leader)),
                Err(e) => seen.push(format!("{}: {e}", self.members[i].name)),
            }
        }
        best.map(|(_, i)| i).ok_or_else(|| BenchError::Protocol {
            from: "etcd cluster".into(),
            why: format!("no running member is leader ({})", seen.join("; ")),
        })
    }

    /// SIGKILL, then reap, so the pid cannot be reused under us.
    pub fn kill9(&mut self, i: usize) -> Result<(), BenchError> {
        let mut child = self.take_running(i)?;
        let killed = child.kill();
        child.wait()?;
        self.members[i].pid = None;
        Ok(killed?)
    }

    /// Starts member i again on its same data and ports (--initial-cluster-state
    /// existing), and waits until it knows a leader.
    pub async fn restart(&mut self, i: usize) -> Result<(), BenchError> {
        if self.children.get(i).is_none_or(Option::is_some) {
            return Err(BenchError::Other(format!(
                "etcd member {i} is running or does not exist"
            )));
        }
        self.spawn(i, "existing")?;
        self.wait_until_serving(i).await
    }

    /// Adds a new member (member/add, then start it with state existing); returns its index
    /// once it answers status, which may be before it has caught up.
    ///
    /// etcd refuses the add while any member restarted less than 5 s ago, or if the new
    /// quorum would count a stopped member; the first is waited out.
    pub async fn add_member(&mut self) -> Result<usize, BenchError> {
        let ports = self.free_ports(2)?;
        let (client, peer) = (loopback(ports[0]), loopback(ports[1]));
        let body = format!(r#"{{"peerURLs":["http://{peer}"]}}"#);
        let deadline = Instant::now() + Duration::from_millis(ADD_MEMBER_TIMEOUT_MS);
        'added: loop {
            let mut last = String::new();
            for i in self.running().collect::<Vec<_>>() {
                let addr = self.members[i].client;
                let call = async {
                    let mut conn = HttpConn::connect(addr).await?;
                    gateway::call::<MemberAddResponse>(
                        &mut conn,
                        "/v3/cluster/member/add",
                        body.as_bytes(),
                    )
                    .await
                };
                match timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), call).await {
                    Ok(Ok(_)) => break 'added,
                    // A retry after a lost answer: the first add went through.
                    Ok(Err(e)) if e.to_string().contains("already exists") => break 'added,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("member/add on {addr} timed out"),
                }
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Deadline(format!(
                    "adding an etcd member ({last})"
                )));
            }
            sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        let i = self.members.len();
        self.members.push(EtcdMember {
            name: format!("etcd{i}"),
            client,
            peer,
            pid: None,
            started: None,
        });
        self.children.push(None);
        self.spawn(i, "existing")?;
        self.wait_until_answers(i).await?;
        Ok(i)
    }

    /// The member's raft index (maintenance/status), to time catch-up: a new member has
    /// caught up when its raftIndex ≥ the leader's at the moment it was added.
    pub async fn raft_index(&self, i: usize) -> Result<u64, BenchError> {
        Ok(self.status(i).await?.raft_index)
    }

    /// Like [`raft_index`](Self::raft_index) but applied to the store, not only committed:
    /// the stricter reading of "caught up", for a comparison that asks for readable data.
    pub async fn applied_index(&self, i: usize) -> Result<u64, BenchError> {
        Ok(self.status(i).await?.raft_applied_index)
    }

    /// Pids of the running members, for CPU accounting from /proc/<pid>/stat.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.children.len()).filter(|&i| self.children[i].is_some())
    }

    fn take_running(&mut self, i: usize) -> Result<Child, BenchError> {
        self.children
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| BenchError::Other(format!("etcd member {i} is not running")))
    }

    /// Ports free now and not given to any member, stopped ones included, so a restart
    /// finds its ports unclaimed by this cluster.
    fn free_ports(&self, k: usize) -> Result<Vec<u16>, BenchError> {
        let taken: Vec<u16> = self
            .members
            .iter()
            .flat_map(|m| [m.client.port(), m.peer.port()])
            .collect();
        // All held at once so the kernel cannot hand the same port out twice.
        let mut held = Vec::with_capacity(k);
        while held.len() < k {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            if !taken.contains(&l.local_addr()?.port()) {
                held.push(l);
            }
        }
        held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), BenchError> {
        let m = &self.members[i];
        let data = self.dir.join(format!("{}.data", m.name));
        if !data.exists() {
            if !self.created_dirs.contains(&data) {
                self.created_dirs.push(data.clone());
            }
        } else if state == "new" {
            // etcd would ignore --initial-cluster and rejoin whatever cluster that was.
            return Err(BenchError::Start {
                what: format!("etcd member {}", m.name),
                why: format!("{} already exists; give an empty directory", data.display()),
            });
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let (client, peer) = (format!("http://{}", m.client), format!("http://{}", m.peer));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &HEARTBEAT_INTERVAL_MS.to_string()])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd reads ETCD_* variables as flags; the caller's environment must not reshape
        // the cluster being measured.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().map_err(|e| BenchError::Start {
            what: format!("{} ({})", m.name, self.bin.display()),
            why: e.to_string(),
        })?;
        self.members[i].pid = Some(child.id());
        self.members[i].started = Some(std::time::Instant::now());
        self.children[i] = Some(child);
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    /// An error naming the first member that exited, with the end of its log.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        for i in 0..self.children.len() {
            let Some(child) = self.children[i].as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                self.children[i] = None;
                self.members[i].pid = None;
                return Err(BenchError::Start {
                    what: format!("etcd member {}", self.members[i].name),
                    why: format!("exited ({status}); end of its log:\n{}", self.log_tail(i)),
                });
            }
        }
        Ok(())
    }

    fn log_tail(&self, i: usize) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let read = || -> std::io::Result<String> {
            let mut f = File::open(self.log_path(i))?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail)?;
            Ok(String::from_utf8_lossy(&tail).into_owned())
        };
        read().unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }

    async fn status(&self, i: usize) -> Result<StatusResponse, BenchError> {
        let addr = self
            .members
            .get(i)
            .ok_or_else(|| BenchError::Other(format!("no etcd member {i}")))?
            .client;
        let call = async {
            let mut conn = HttpConn::connect(addr).await?;
            gateway::call(&mut conn, "/v3/maintenance/status", b"{}").await
        };
        timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), call)
            .await
            .map_err(|_| BenchError::Deadline(format!("maintenance/status on {addr}")))?
    }

    async fn wait_for_put(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            self.check_alive()?;
            for addr in self.client_addrs() {
                let attempt = async {
                    let mut conn = HttpConn::connect(addr).await?;
                    put(&mut conn, READY_KEY, b"").await
                };
                if let Ok(Ok(_)) = timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), attempt).await
                {
                    return Ok(());
                }
            }
            self.after_poll(deadline, "a first put on the new etcd cluster")
                .await?;
        }
    }

    async fn wait_until_serving(&mut self, i: usize) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            self.check_alive()?;
            if self.status(i).await.is_ok_and(|s| s.leader != 0) {
                return Ok(());
            }
            let what = format!("{} knowing a leader", self.members[i].name);
            self.after_poll(deadline, &what).await?;
        }
    }

    async fn wait_until_answers(&mut self, i: usize) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            self.check_alive()?;
            if self.status(i).await.is_ok() {
                return Ok(());
            }
            let what = format!("{} answering status", self.members[i].name);
            self.after_poll(deadline, &what).await?;
        }
    }

    async fn after_poll(&self, deadline: Instant, what: &str) -> Result<(), BenchError> {
        if Instant::now() >= deadline {
            return Err(BenchError::Deadline(format!(
                "{what} (logs in {})",
                self.dir.display()
            )));
        }
        sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.created_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
