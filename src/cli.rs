//! The command line, as `../docs/INTERFACE.md` (the CLI contract) fixes it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use conclave_shared::config::EnrolmentMode;

#[derive(Debug, Parser)]
#[command(
    name = "conclave",
    version,
    about = "A closed group's single, tamper-evident record"
)]
pub struct Args {
    /// Config file (default: ./config.yml if present, else the built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter for stderr (error, warn, info, debug, trace, or directives).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key manager, or talk to a running one (invite, revoke, list).
    Keymanager(KeymanagerArgs),
    /// Run the proxy: the one known address where members find the leader.
    Proxy(ProxyArgs),
    /// Run a member of the group: join, read and append records.
    Peer(PeerArgs),
    /// Show the group: leader, term, members, their heads (needs no identity).
    Status(StatusArgs),
    /// Verify a stopped peer's stored chain offline with the root public key.
    Verify(VerifyArgs),
    /// Print a stopped peer's blocks, decrypting the records this member can read.
    Chain(ChainArgs),
    /// Start a whole group on 127.0.0.1 (key manager, proxy, three peers) and join it.
    Demo(DemoArgs),
    /// Measure a local group (and, with --compare-etcd, etcd side by side).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Workloads: seq, c16, c64, c256 (any cN), failover, catchup, verify, scale, idle
    /// (default: all but scale and idle).
    #[arg(value_name = "WORKLOAD")]
    pub workloads: Vec<String>,
    /// Peers in the group the bench starts.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub peers: usize,
    /// Seconds each throughput workload is measured (after --warmup).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    /// Leader kills in `failover`.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub failover_runs: usize,
    /// Records written before the new member of `catchup` starts.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub catchup_records: usize,
    /// Records in the chain `verify` checks.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub verify_records: usize,
    /// Members in `scale` (the first five vote).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub scale_members: usize,
    /// Records per second in `scale`.
    #[arg(long, default_value_t = 1000.0, value_name = "N")]
    pub scale_rate: f64,
    /// Seconds of load in `scale`.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub scale_duration: f64,
    /// Seconds the group is left alone in `idle` (elections are counted).
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub idle_secs: f64,
    /// A config file every peer of the bench reads (e.g. slower Raft timings for `scale`);
    /// default: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub peer_config: Option<PathBuf>,
    /// Also run every workload against a 3-member etcd on 127.0.0.1 (installed from Debian's
    /// packages if missing), alternating with Conclave, and print the ratios.
    #[arg(long)]
    pub compare_etcd: bool,
    /// With --json: where the results go.
    #[arg(long, default_value = "bench-results.json", value_name = "FILE")]
    pub out: PathBuf,
    /// Write the latency-against-throughput plot (SVG) here.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Keep the data and logs of everything the bench started (the path is printed).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the demo's temporary data directory (its path is printed at the end).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to listen on (default: proxy.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (default: proxy.data, or <data_root>/proxy).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The key manager (default: keymanager.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub keymanager: Option<SocketAddr>,
    /// The key manager's root public key (default: keymanager.root_key from the config).
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
    /// One-time registration token, for a key manager in invite mode.
    #[arg(long, value_name = "TOKEN")]
    pub invite: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// This member's name (asked for on a terminal if absent).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Address to listen on (default: peer.listen from the config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address the others dial (default: the bound listen address).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Data directory (default: peer.data, or <data_root>/peers/<name>).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The key manager (default: keymanager.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub keymanager: Option<SocketAddr>,
    /// The proxy (default: proxy.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<SocketAddr>,
    /// The key manager's root public key (default: keymanager.root_key from the config).
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
    /// One-time registration token, for a key manager in invite mode.
    #[arg(long, value_name = "TOKEN")]
    pub invite: Option<String>,
    /// Discard this member's stored chain and Raft state (keeping its identity) and rejoin
    /// the group as a new learner. Records not yet committed are lost.
    #[arg(long)]
    pub resync: bool,
    /// `conclave demo` only: a JSON file of its peers' process ids, so this console can
    /// `/kill-leader`.
    #[arg(long, hide = true, value_name = "FILE")]
    pub demo_pids: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The proxy (default: proxy.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<SocketAddr>,
    /// The key manager's root public key (default: keymanager.root_key from the config).
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeymanagerArgs {
    /// Address to listen on (default: keymanager.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory (default: keymanager.data, or <data_root>/keymanager).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Enrolment mode.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<EnrolmentMode>,
    /// Where to write (server) or read (admin commands) the root public key.
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<AdminAction>,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Issue a one-time registration token for NAME (for `mode: invite`).
    Invite {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke NAME's certificate: the group removes it.
    Revoke {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List registered names.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The admin token file (default: admin.token in the key manager's data directory).
    #[arg(long, value_name = "FILE")]
    pub admin_token: Option<PathBuf>,
    /// The key manager's address (default: keymanager.addr from the config).
    #[arg(long, value_name = "ADDR")]
    pub keymanager: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The stopped peer's data directory (the one given to `conclave peer --data`).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The key manager's root public key (default: keymanager.root_key from the config).
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ChainArgs {
    /// The stopped peer's data directory (its identity.pem decrypts what it may read).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The first height to print (the blocks before it are still verified).
    #[arg(long, value_name = "H", default_value_t = 0)]
    pub from: u64,
    /// The key manager's root public key (default: keymanager.root_key from the config).
    #[arg(long, value_name = "FILE")]
    pub root_key: Option<PathBuf>,
}
