//! `config.yml`: the defaults that let a new user run everything without flags.
//!
//! [`Config::default`] and the repository's `config.yml` hold the same values (a test keeps
//! them equal), so the binary works from any directory, with or without the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The hard cap on `group.max_record_bytes`, matching the chain format's own cap.
pub const MAX_RECORD_BYTES_LIMIT: u32 = 1024 * 1024;
/// A group with more voters than this commits slowly and gains no safety.
pub const MAX_VOTERS_LIMIT: u32 = 15;
/// Config files are small; a larger one is a mistake, not a config.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_FILE: &str = "config.yml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config file {path} is malformed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

/// How the key manager admits new names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrolmentMode {
    /// Any new name registers once (the local default).
    Open,
    /// A name registers only with a one-time token from `conclave keymanager invite NAME`.
    Invite,
}

impl std::str::FromStr for EnrolmentMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "invite" => Ok(Self::Invite),
            other => Err(format!(
                "unknown enrolment mode {other:?}: use open or invite"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where every server keeps its data unless its own `data` says otherwise.
    pub data_root: PathBuf,
    pub keymanager: KeymanagerConfig,
    pub proxy: ProxyConfig,
    pub peer: PeerConfig,
    pub identity: IdentityConfig,
    pub raft: RaftConfig,
    pub group: GroupConfig,
    /// A tracing filter: `error`, `warn`, `info`, `debug`, `trace`, or directives such as
    /// `info,conclave_peer=debug`. `RUST_LOG` and `--log-level` override it.
    pub log_level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeymanagerConfig {
    /// The address the key manager listens on and everyone else dials.
    pub addr: SocketAddr,
    /// Absent: `<data_root>/keymanager`.
    pub data: Option<PathBuf>,
    pub mode: EnrolmentMode,
    /// Where the key manager writes its root public key and where everyone else reads it.
    /// Absent: `<data_root>/root.pub.pem`.
    pub root_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The one known address: the proxy listens on it and joining peers dial it.
    pub addr: SocketAddr,
    /// Absent: `<data_root>/proxy`.
    pub data: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Port 0 picks a free port, so several peers can run on one machine without flags.
    pub listen: SocketAddr,
    /// Absent: `<data_root>/peers/<name>`.
    pub data: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// RSA modulus size for new keys: 2048, 3072 or 4096.
    pub key_bits: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot of the chain once this many Raft entries were applied since the last
    /// one. 0, or absent from the file: never (the log is then never purged either).
    #[serde(default)]
    pub snapshot_every_entries: u64,
    /// Raft entries already inside a snapshot that are kept in the log anyway, so a member
    /// only a little behind catches up from the log rather than by a whole snapshot. Older
    /// ones are purged. Absent: [`DEFAULT_KEEP_LOG_ENTRIES`].
    #[serde(default = "default_keep_log_entries")]
    pub keep_log_entries: u64,
    /// A leader replaces a voter that has not acknowledged its replication for this long with
    /// a caught-up learner, if there is one (`"10s"`, `"1m 30s"`: humantime). Absent:
    /// [`DEFAULT_DEAD_VOTER_AFTER_MS`].
    #[serde(default = "default_dead_voter_after", with = "humantime_duration")]
    pub dead_voter_after: Duration,
}

/// `raft.keep_log_entries` when the file does not say (openraft's own default).
pub const DEFAULT_KEEP_LOG_ENTRIES: u64 = 1_000;
/// A smaller nonzero `raft.snapshot_every_entries` would copy the whole chain every few
/// entries.
pub const MIN_SNAPSHOT_EVERY_ENTRIES: u64 = 100;
/// Beyond this, `raft.snapshot_every_entries` and `raft.keep_log_entries` are typos rather
/// than settings.
pub const MAX_RAFT_ENTRY_COUNT: u64 = 1_000_000_000;

fn default_keep_log_entries() -> u64 {
    DEFAULT_KEEP_LOG_ENTRIES
}

/// `raft.dead_voter_after` when the file does not say. A peer that restarts (start-up and
/// verifying its chain) is back within a few seconds, and swapping roles for that would be
/// churn; much longer leaves a group of three one more failure away from losing its quorum.
pub const DEFAULT_DEAD_VOTER_AFTER_MS: u64 = 10_000;
/// Below this, `raft.dead_voter_after` would demote voters that are merely slow.
pub const MIN_DEAD_VOTER_AFTER_MS: u64 = 1_000;
/// Beyond this, `raft.dead_voter_after` is a typo rather than a setting.
pub const MAX_DEAD_VOTER_AFTER_MS: u64 = 7 * 24 * 3_600_000;

fn default_dead_voter_after() -> Duration {
    Duration::from_millis(DEFAULT_DEAD_VOTER_AFTER_MS)
}

/// A `Duration` as humantime text in the file (`10s`, `1m 30s`, `500ms`).
mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as \"10s\" or \"1m 30s\": {e}"
            ))
        })
    }
}

/// Rules a new group writes into its genesis block; fixed for the group's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Members beyond this join as learners.
    pub max_voters: u32,
    /// The largest plaintext of one record.
    pub max_record_bytes: u32,
    /// Whether a new member also receives the keys of epochs before its admission.
    pub share_history: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_root: PathBuf::from("conclave-data"),
            keymanager: KeymanagerConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 7400)),
                data: None,
                mode: EnrolmentMode::Open,
                root_key: None,
            },
            proxy: ProxyConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 7401)),
                data: None,
            },
            peer: PeerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                data: None,
            },
            identity: IdentityConfig { key_bits: 2048 },
            raft: RaftConfig {
                heartbeat_ms: 25,
                election_timeout_min_ms: 75,
                election_timeout_max_ms: 125,
                snapshot_every_entries: 10_000,
                keep_log_entries: DEFAULT_KEEP_LOG_ENTRIES,
                dead_voter_after: default_dead_voter_after(),
            },
            group: GroupConfig {
                max_voters: 5,
                max_record_bytes: 64 * 1024,
                share_history: false,
            },
            log_level: "info".into(),
        }
    }
}

impl Config {
    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().lines().next().unwrap_or("").to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path` if given (it must exist), else `./config.yml` if present, else the
    /// built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None => {
                let p = PathBuf::from(DEFAULT_FILE);
                if !p.exists() {
                    return Ok(Self::default());
                }
                p
            }
        };
        let read_err = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let len = std::fs::metadata(&path).map_err(read_err)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        Self::from_yaml(&text, &path)
    }

    /// Checks every value a server would trip over later, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why: String| Err(ConfigError::Invalid { field, why });
        if ![2048, 3072, 4096].contains(&self.identity.key_bits) {
            return bad(
                "identity.key_bits",
                format!("{} is not 2048, 3072 or 4096", self.identity.key_bits),
            );
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return bad("raft.heartbeat_ms", "must be at least 1".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return bad(
                "raft.election_timeout_min_ms",
                format!(
                    "{} must be greater than raft.heartbeat_ms ({})",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms",
                format!(
                    "{} must be greater than raft.election_timeout_min_ms ({})",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            );
        }
        if r.snapshot_every_entries != 0
            && !(MIN_SNAPSHOT_EVERY_ENTRIES..=MAX_RAFT_ENTRY_COUNT)
                .contains(&r.snapshot_every_entries)
        {
            return bad(
                "raft.snapshot_every_entries",
                format!(
                    "{} is neither 0 (never) nor in {MIN_SNAPSHOT_EVERY_ENTRIES}..={MAX_RAFT_ENTRY_COUNT}",
                    r.snapshot_every_entries
                ),
            );
        }
        if r.keep_log_entries > MAX_RAFT_ENTRY_COUNT {
            return bad(
                "raft.keep_log_entries",
                format!("{} is more than {MAX_RAFT_ENTRY_COUNT}", r.keep_log_entries),
            );
        }
        let dead_ms = u64::try_from(r.dead_voter_after.as_millis()).unwrap_or(u64::MAX);
        if !(MIN_DEAD_VOTER_AFTER_MS..=MAX_DEAD_VOTER_AFTER_MS).contains(&dead_ms)
            || dead_ms <= r.election_timeout_max_ms
        {
            return bad(
                "raft.dead_voter_after",
                format!(
                    "{} is outside {}..={} or not above raft.election_timeout_max_ms ({} ms)",
                    humantime::format_duration(r.dead_voter_after),
                    humantime::format_duration(Duration::from_millis(MIN_DEAD_VOTER_AFTER_MS)),
                    humantime::format_duration(Duration::from_millis(MAX_DEAD_VOTER_AFTER_MS)),
                    r.election_timeout_max_ms
                ),
            );
        }
        if !(1..=MAX_VOTERS_LIMIT).contains(&self.group.max_voters) {
            return bad(
                "group.max_voters",
                format!(
                    "{} is outside 1..={MAX_VOTERS_LIMIT}",
                    self.group.max_voters
                ),
            );
        }
        if !(1..=MAX_RECORD_BYTES_LIMIT).contains(&self.group.max_record_bytes) {
            return bad(
                "group.max_record_bytes",
                format!(
                    "{} is outside 1..={MAX_RECORD_BYTES_LIMIT}",
                    self.group.max_record_bytes
                ),
            );
        }
        if self.log_level.trim().is_empty() {
            return bad("log_level", "must not be empty (try `info`)".into());
        }
        if self.data_root.as_os_str().is_empty() {
            return bad("data_root", "must not be empty".into());
        }
        Ok(())
    }

    pub fn keymanager_data(&self) -> PathBuf {
        self.keymanager
            .data
            .clone()
            .unwrap_or_else(|| self.data_root.join("keymanager"))
    }
    pub fn root_key_path(&self) -> PathBuf {
        self.keymanager
            .root_key
            .clone()
            .unwrap_or_else(|| self.data_root.join("root.pub.pem"))
    }
    pub fn proxy_data(&self) -> PathBuf {
        self.proxy
            .data
            .clone()
            .unwrap_or_else(|| self.data_root.join("proxy"))
    }
    pub fn peer_data(&self, name: &str) -> PathBuf {
        self.peer
            .data
            .clone()
            .unwrap_or_else(|| self.data_root.join("peers").join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config.yml");

    fn field_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn the_shipped_file_equals_the_built_in_defaults() {
        let cfg = Config::from_yaml(SHIPPED, Path::new("config.yml")).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = Config::default();
        c.identity.key_bits = 1024;
        assert_eq!(field_of(c.validate().unwrap_err()), "identity.key_bits");
        let mut c = Config::default();
        c.raft.election_timeout_min_ms = c.raft.heartbeat_ms;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "raft.election_timeout_min_ms"
        );
        let mut c = Config::default();
        c.raft.election_timeout_max_ms = c.raft.election_timeout_min_ms;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "raft.election_timeout_max_ms"
        );
        let mut c = Config::default();
        c.raft.snapshot_every_entries = MIN_SNAPSHOT_EVERY_ENTRIES - 1;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "raft.snapshot_every_entries"
        );
        let mut c = Config::default();
        c.raft.keep_log_entries = MAX_RAFT_ENTRY_COUNT + 1;
        assert_eq!(field_of(c.validate().unwrap_err()), "raft.keep_log_entries");
        let mut c = Config::default();
        c.raft.dead_voter_after = Duration::from_millis(MIN_DEAD_VOTER_AFTER_MS - 1);
        assert_eq!(field_of(c.validate().unwrap_err()), "raft.dead_voter_after");
        let mut c = Config::default();
        c.raft.election_timeout_max_ms = 5_000;
        c.raft.dead_voter_after = Duration::from_secs(5);
        assert_eq!(field_of(c.validate().unwrap_err()), "raft.dead_voter_after");
        let mut c = Config::default();
        c.group.max_voters = 0;
        assert_eq!(field_of(c.validate().unwrap_err()), "group.max_voters");
        let mut c = Config::default();
        c.group.max_record_bytes = MAX_RECORD_BYTES_LIMIT + 1;
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "group.max_record_bytes"
        );
        let c = Config {
            log_level: " ".into(),
            ..Config::default()
        };
        assert_eq!(field_of(c.validate().unwrap_err()), "log_level");
    }

    #[test]
    fn malformed_yaml_unknown_fields_and_bad_values_are_parse_errors() {
        for text in [
            "data_root: [unclosed",
            &SHIPPED.replace("log_level:", "log_levle:"),
            &SHIPPED.replace("mode: open", "mode: closed"),
            &SHIPPED.replace("127.0.0.1:7400", "not-an-address"),
        ] {
            let err = Config::from_yaml(text, Path::new("x.yml")).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        }
    }

    #[test]
    fn a_validation_error_in_yaml_names_the_field() {
        let text = SHIPPED.replace("key_bits: 2048", "key_bits: 1000");
        let err = Config::from_yaml(&text, Path::new("x.yml")).unwrap_err();
        assert_eq!(field_of(err), "identity.key_bits");
    }

    #[test]
    fn snapshots_are_off_when_the_file_does_not_mention_them() {
        let text = SHIPPED
            .lines()
            .filter(|l| !l.contains("snapshot_every_entries") && !l.contains("keep_log_entries"))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::from_yaml(&text, Path::new("x.yml")).unwrap();
        assert_eq!(cfg.raft.snapshot_every_entries, 0);
        assert_eq!(cfg.raft.keep_log_entries, DEFAULT_KEEP_LOG_ENTRIES);
        let text = SHIPPED.replace("snapshot_every_entries: 10000", "snapshot_every_entries: 0");
        let cfg = Config::from_yaml(&text, Path::new("x.yml")).unwrap();
        assert_eq!(cfg.raft.snapshot_every_entries, 0);
    }

    #[test]
    fn dead_voter_after_is_humantime_and_has_a_default() {
        let text = SHIPPED.replace("dead_voter_after: 10s", "dead_voter_after: 1m 30s");
        let cfg = Config::from_yaml(&text, Path::new("x.yml")).unwrap();
        assert_eq!(cfg.raft.dead_voter_after, Duration::from_secs(90));
        let text = SHIPPED
            .lines()
            .filter(|l| !l.contains("dead_voter_after"))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::from_yaml(&text, Path::new("x.yml")).unwrap();
        assert_eq!(
            cfg.raft.dead_voter_after,
            Duration::from_millis(DEFAULT_DEAD_VOTER_AFTER_MS)
        );
        let text = SHIPPED.replace("dead_voter_after: 10s", "dead_voter_after: soon");
        let err = Config::from_yaml(&text, Path::new("x.yml")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn a_named_missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/conclave.yml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn data_paths_default_under_the_data_root() {
        let c = Config::default();
        assert_eq!(c.peer_data("ann"), PathBuf::from("conclave-data/peers/ann"));
        assert_eq!(
            c.root_key_path(),
            PathBuf::from("conclave-data/root.pub.pem")
        );
    }
}
