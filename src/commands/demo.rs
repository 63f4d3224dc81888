//! `conclave demo`: a whole group on 127.0.0.1 in temporary directories — a key manager, a
//! proxy, three peers — and the user's terminal as a fourth member. Everything it started
//! stops when it ends, and its data is removed unless `--keep` is given.
//!
//! Every part is a real `conclave` process (this same binary), so what the demo shows is what
//! a deployment does. The fourth member's console is a child too, on the user's own terminal;
//! the demo hands it a file of the peers' process ids so that it understands `/kill-leader`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::DemoArgs;

/// How long a part of the demo may take to start.
const START_DEADLINE: Duration = Duration::from_secs(60);
const PEERS: [&str; 3] = ["alice", "bob", "carol"];

/// A child process, killed and reaped when dropped.
struct Part {
    name: String,
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Drop for Part {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Part {
    /// Starts `conclave --json ARGS` in `dir`; its JSON events arrive on a channel, its logs
    /// go to `dir/<name>.log`.
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut child = Command::new(std::env::current_exe()?)
            .current_dir(dir)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the {name} process"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            events,
        })
    }

    /// Waits for an event named `event`.
    fn wait(&self, event: &str) -> anyhow::Result<Value> {
        let until = Instant::now() + START_DEADLINE;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == event => return Ok(v),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!(
            "{} did not report `{event}` in time (see its log)",
            self.name
        )
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        let v = self.wait("listening")?;
        v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("no address in the listening line")
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("conclave-demo-")
        .tempdir()?;
    let dir = temp.path().to_owned();
    let result = demo(&dir);
    if args.keep {
        let kept = temp.keep();
        println!("demo data kept in {}", kept.display());
    }
    result
}

fn demo(dir: &Path) -> anyhow::Result<()> {
    println!(
        "Starting a demo group on 127.0.0.1 in {} ...",
        dir.display()
    );
    let km = Part::spawn(
        dir,
        "keymanager",
        &[
            "keymanager",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "km",
            "--root-key",
            "root.pub.pem",
        ],
    )?;
    let km_addr = km.addr()?.to_string();
    let proxy = Part::spawn(
        dir,
        "proxy",
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "proxy",
            "--keymanager",
            &km_addr,
            "--root-key",
            "root.pub.pem",
        ],
    )?;
    let proxy_addr = proxy.addr()?.to_string();
    let peer_args = |name: &str| -> Vec<String> {
        [
            "peer",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--data",
            &format!("peers/{name}"),
            "--keymanager",
            &km_addr,
            "--proxy",
            &proxy_addr,
            "--root-key",
            "root.pub.pem",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut peers = Vec::new();
    for name in PEERS {
        let args = peer_args(name);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Part::spawn(dir, name, &refs)?;
        let addr = p.addr()?;
        p.wait("joined")?;
        println!("  {name:<11} peer       {addr}");
        peers.push(p);
    }
    println!("  key manager            {km_addr}");
    println!("  proxy                  {proxy_addr}");
    println!(
        "\nYou are the fourth member, \"you\". Type a line to append it to the group's chain;\n\
         every member sees it, encrypted for the group and signed by you. Also try:\n  \
         /kill-leader   kill -9 the current leader and watch another take over\n  \
         /leave         leave the group for good (the others get a new key)\n  \
         /exit          stop the demo (everything it started stops too)\n\
         Logs: {}/*.log\n",
        dir.display()
    );

    let pids: serde_json::Map<String, Value> = peers
        .iter()
        .map(|p| (p.name.clone(), Value::from(p.child.id())))
        .collect();
    std::fs::write(dir.join(PIDS), Value::Object(pids).to_string())?;

    // The console: a fourth peer on the user's terminal (a line editor there, plain lines
    // from a pipe).
    let mut args = peer_args("you");
    args.extend(["--demo-pids".to_owned(), PIDS.to_owned()]);
    let status = Command::new(std::env::current_exe()?)
        .current_dir(dir)
        .args(&args)
        .stderr(std::fs::File::create(dir.join("you.log"))?)
        .status()
        .context("cannot start the console")?;
    drop(peers);
    drop(proxy);
    drop(km);
    println!("demo stopped");
    if status.success() {
        Ok(())
    } else {
        bail!("the console stopped with {status}")
    }
}

/// The file that tells the console which process each demo peer is.
const PIDS: &str = "pids.json";

/// `/kill-leader`, run by the demo's console: asks the proxy who leads and, if it is one of
/// the demo's peers, kills that process with SIGKILL. Returns what to tell the user.
pub fn kill_leader(pids: &Path, proxy: &str, root_key: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("conclave")))
        .args(["--json", "status", "--proxy", proxy, "--root-key"])
        .arg(root_key)
        .stderr(Stdio::null())
        .output();
    let leader = out
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
        })
        .and_then(|v| v["leader"].as_str().map(str::to_owned));
    let Some(name) = leader else {
        return "[demo] no leader known right now; try again in a moment".into();
    };
    let pid = std::fs::read_to_string(pids)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v[&name].as_u64())
        .and_then(|p| i32::try_from(p).ok());
    let Some(pid) = pid else {
        return format!(
            "[demo] the leader is {name}: the demo kills only the three peers it started"
        );
    };
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) => format!(
                "[demo] kill -9 {name} (the leader); the others elect a new one within about a second"
            ),
            Err(e) => format!("[demo] cannot kill {name}: {e} (already killed?)"),
        }
    }
    #[cfg(not(unix))]
    format!("[demo] the leader is {name} (process {pid}); killing it needs a Unix system")
}
