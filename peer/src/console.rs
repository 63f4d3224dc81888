//! The console's questions about the group and the chain (`/members`, `/leader`, `/chain [N]`,
//! `/verify`, `/status`). The writer hands them to one task that answers them in order, so a
//! long `/verify` never holds up appends; each answer is one [`Event::Info`] of text lines.

use std::time::{Duration, UNIX_EPOCH};

use conclave_shared::chain::{verify_chain, BlockBody, StoredBlock};
use conclave_shared::wire::peer::WireRole;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::events::Event;
use crate::heads::{head_interval, HEAD_FRESH_INTERVALS};
use crate::keyring::KeyRing;
use crate::observer::wire_role;
use crate::status::StatusSource;
use crate::store::{ChainReader, MAX_BLOCKS_PER_READ};
use crate::types::Raft;

/// Blocks `/chain` shows when no count is given.
pub const DEFAULT_CHAIN_BLOCKS: u64 = 10;
/// The most blocks one `/chain` shows.
pub const MAX_CHAIN_BLOCKS: u64 = MAX_BLOCKS_PER_READ as u64;
/// Characters of a block hash `/chain` shows.
const SHORT_HASH: usize = 12;

/// What `/help` prints, one line each.
pub const HELP: &[&str] = &[
    "any line not starting with / is a message: it is encrypted, signed and appended",
    "/members    the members: name, role, reachable, head (`-` when this member cannot tell), head mismatches",
    "/leader     the leader and its term",
    "/chain [N]  the last N blocks (default 10): height, time, author, kind, hash, text",
    "/verify     verifies this member's copy of the chain under the root key",
    "/status     this member: name, role, leader, term, head, head mismatches",
    "/leave      leaves the group for good (delivers what is pending first)",
    "/exit       stops this member, which stays in the group ($exit too)",
    "/help       this list",
];

/// A console question, answered by the writer's console task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Members,
    Leader,
    Chain(u64),
    Verify,
    Status,
}

impl Query {
    /// The command's name, without the slash (the `command` of the `info` event).
    pub fn name(self) -> &'static str {
        match self {
            Query::Members => "members",
            Query::Leader => "leader",
            Query::Chain(_) => "chain",
            Query::Verify => "verify",
            Query::Status => "status",
        }
    }

    /// Parses a console line that is one of these questions. `None`: not one of them;
    /// `Some(Err)`: one of them, badly written.
    pub fn parse(line: &str) -> Option<Result<Query, String>> {
        let mut words = line.split_whitespace();
        let cmd = words.next()?;
        let args: Vec<&str> = words.collect();
        let q = match cmd {
            "/members" => Query::Members,
            "/leader" => Query::Leader,
            "/verify" => Query::Verify,
            "/status" => Query::Status,
            "/chain" => {
                return Some(match args.as_slice() {
                    [] => Ok(Query::Chain(DEFAULT_CHAIN_BLOCKS)),
                    [n] => match n.parse::<u64>() {
                        Ok(n) if (1..=MAX_CHAIN_BLOCKS).contains(&n) => Ok(Query::Chain(n)),
                        _ => Err(format!(
                            "/chain takes a number of blocks from 1 to {MAX_CHAIN_BLOCKS}, not {n:?}"
                        )),
                    },
                    _ => Err("usage: /chain [N]".into()),
                });
            }
            _ => return None,
        };
        Some(if args.is_empty() {
            Ok(q)
        } else {
            Err(format!(
                "{cmd} takes no arguments; /help lists the commands"
            ))
        })
    }
}

/// What the console task reads.
pub struct Console {
    pub name: String,
    pub raft: Raft,
    pub chain: ChainReader,
    pub status: StatusSource,
    pub keys: watch::Receiver<KeyRing>,
    pub events: mpsc::Sender<Event>,
}

impl Console {
    /// Answers questions in order until the queue closes or `shutdown`.
    pub async fn run(self, mut queries: mpsc::Receiver<Query>, shutdown: CancellationToken) {
        loop {
            let q = tokio::select! {
                _ = shutdown.cancelled() => return,
                q = queries.recv() => match q { Some(q) => q, None => return },
            };
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = self.answer(q) => e,
            };
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }

    pub async fn answer(&self, q: Query) -> Event {
        let lines = match q {
            Query::Members => Ok(self.members()),
            Query::Leader => Ok(self.leader()),
            Query::Status => Ok(self.own_status()),
            Query::Chain(n) => self.last_blocks(n).await,
            Query::Verify => self.verify().await,
        };
        match lines {
            Ok(lines) => Event::Info {
                command: q.name().to_owned(),
                lines,
            },
            Err(message) => Event::Error {
                message: format!("/{}: {message}", q.name()),
            },
        }
    }

    /// One line per present member: name, role, reachable, head, and a warning where its
    /// signed head disagrees with this member's chain. The leader says how far each follower
    /// got in the Raft log; every member says which heads it received (`heads`), and when.
    fn members(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let replication = m.replication.clone();
        let last_log = m.last_log_index;
        let own_head = self.chain.head();
        let heads = &self.status.heads;
        let present = self.chain.members().into_iter().filter(|m| m.is_present());
        let fresh = head_interval(present.count()) * HEAD_FRESH_INTERVALS;
        let mut out = vec![format!(
            "{:<16} {:<8} {:<28} head",
            "name", "role", "reachable"
        )];
        for member in self.chain.members().into_iter().filter(|m| m.is_present()) {
            let role = wire_role(member.role).to_string();
            let role = if member.revoked {
                format!("{role} (revoked)")
            } else {
                role
            };
            let (reachable, head) = if member.name == self.name {
                (
                    "yes (this member)".to_owned(),
                    own_head.map_or("-".to_owned(), |(h, hash)| {
                        format!("{h} {}", short(&hash.to_hex()))
                    }),
                )
            } else {
                let seen = heads.seen(member.node_id);
                let reachable = match replication.as_ref().map(|r| r.get(&member.node_id)) {
                    Some(Some(Some(matched))) => {
                        let behind = last_log.map_or(0, |l| l.saturating_sub(matched.index));
                        if behind == 0 {
                            format!("yes, log {} in sync", matched.index)
                        } else {
                            format!("log {}, {behind} behind", matched.index)
                        }
                    }
                    Some(None | Some(None)) if seen.is_none() => "no ack yet".to_owned(),
                    // A follower, or no Raft answer yet: go by the heads it sent.
                    _ => match &seen {
                        Some(s) if s.age <= fresh => {
                            format!("yes, head {} s ago", s.age.as_secs())
                        }
                        Some(s) => format!("no head for {} s", s.age.as_secs()),
                        None => "no head yet".to_owned(),
                    },
                };
                let head = seen.map_or("-".to_owned(), |s| {
                    format!("{} {}", s.height, short(&s.hash.to_hex()))
                });
                let head = match heads.mismatch_with(member.node_id) {
                    Some(x) => format!(
                        "{head}  HEAD MISMATCH at {}: ours {} theirs {}",
                        x.height,
                        short(&x.ours),
                        short(&x.theirs)
                    ),
                    None => head,
                };
                (reachable, head)
            };
            out.push(format!(
                "{:<16} {:<8} {:<28} {head}",
                member.name, role, reachable
            ));
        }
        out
    }

    fn leader(&self) -> Vec<String> {
        let s = self.status.status();
        vec![match s.leader {
            Some(l) => format!("leader {l}, term {}", s.term),
            None => format!("no leader known, term {}", s.term),
        }]
    }

    fn own_status(&self) -> Vec<String> {
        let s = self.status.status();
        let role = s
            .role
            .map_or("not a member".to_owned(), |r: WireRole| r.to_string());
        let head = match (s.head_height, &s.head_hash) {
            (Some(h), Some(hash)) => format!("{h} {hash}"),
            _ => "- (no chain yet)".to_owned(),
        };
        let mut lines = vec![
            format!("name   {}", s.name),
            format!("role   {role}"),
            format!("leader {}", s.leader.as_deref().unwrap_or("-")),
            format!("term   {}", s.term),
            format!("head   {head}"),
        ];
        if s.head_mismatches.is_empty() {
            lines.push("heads  no head_mismatch: the heads received agree with this chain".into());
        }
        for x in &s.head_mismatches {
            lines.push(format!(
                "head_mismatch {} at height {}: ours {} theirs {}",
                x.peer, x.height, x.ours, x.theirs
            ));
        }
        lines
    }

    /// The last `n` blocks, one line each (and one more per record of a batch of several).
    async fn last_blocks(&self, n: u64) -> Result<Vec<String>, String> {
        let Some((head, _)) = self.chain.head() else {
            return Ok(vec!["the chain is empty".into()]);
        };
        let from = head.saturating_sub(n.saturating_sub(1));
        let chain = self.chain.clone();
        let blocks = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut at = from;
            while at <= head {
                let got = chain.blocks(at, head).map_err(|e| e.to_string())?;
                let Some(last) = got.last() else { break };
                at = last.height() + 1;
                out.extend(got);
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|e| format!("reading task failed: {e}"))??;
        let ring = self.keys.borrow().clone();
        let mut lines = Vec::new();
        for b in &blocks {
            self.block_lines(b, &ring, &mut lines);
        }
        Ok(lines)
    }

    fn block_lines(&self, b: &StoredBlock, ring: &KeyRing, out: &mut Vec<String>) {
        let header = &b.block.header;
        let time =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(header.time_ms))
                .to_string();
        let hash = b.hash.to_hex();
        let leader = || {
            self.chain
                .member_by_id(header.leader)
                .map(|m| m.name)
                .unwrap_or_else(|| format!("node {:016x}", header.leader))
        };
        let prefix = |author: &str| {
            format!(
                "{:>6} {time} {author:<16} {:<12} {}",
                header.height,
                header.kind.to_string(),
                short(&hash)
            )
        };
        match &b.block.body {
            BlockBody::Records(batch) => {
                let texts: Vec<String> = batch
                    .records
                    .iter()
                    .map(|r| {
                        ring.get(r.epoch)
                            .and_then(|k| r.open(k, &batch.author).ok())
                            .map(|pt| String::from_utf8_lossy(&pt).into_owned())
                            .unwrap_or_else(|| "(cannot decrypt)".into())
                    })
                    .collect();
                match texts.as_slice() {
                    [one] => out.push(format!("{} {one}", prefix(&batch.author))),
                    many => {
                        out.push(format!("{} {} records", prefix(&batch.author), many.len()));
                        for (r, text) in batch.records.iter().zip(many) {
                            out.push(format!("{:>6} seq {}: {text}", "", r.seq));
                        }
                    }
                }
            }
            BlockBody::Refused(_) => out.push(prefix("-")),
            _ => out.push(prefix(&leader())),
        }
    }

    /// Verifies the whole local chain under the root key, reading it in chunks on the
    /// blocking pool.
    async fn verify(&self) -> Result<Vec<String>, String> {
        let Some((head, _)) = self.chain.head() else {
            return Ok(vec!["the chain is empty: nothing to verify".into()]);
        };
        let chain = self.chain.clone();
        let root = self.chain.root().clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut at = 0u64;
            let mut chunk: std::vec::IntoIter<StoredBlock> = Vec::new().into_iter();
            let mut failed = false;
            let blocks = std::iter::from_fn(move || loop {
                if failed {
                    return None;
                }
                if let Some(b) = chunk.next() {
                    return Some(Ok(b));
                }
                if at > head {
                    return None;
                }
                match chain.blocks(at, head) {
                    Ok(got) if got.is_empty() => {
                        failed = true;
                        return Some(Err(format!("block {at} is missing from the store")));
                    }
                    Ok(got) => {
                        at = got.last().map_or(at, |b| b.height() + 1);
                        chunk = got.into_iter();
                    }
                    Err(e) => {
                        failed = true;
                        return Some(Err(e.to_string()));
                    }
                }
            });
            verify_chain(&root, blocks)
        })
        .await
        .map_err(|e| format!("verifying task failed: {e}"))?;
        Ok(vec![match result {
            Ok(s) => format!(
                "OK: {} blocks, head {} {}",
                s.count,
                s.head_height,
                s.head_hash.to_hex()
            ),
            Err(f) => format!("FAILED at height {}: {}", f.height, f.reason),
        }])
    }
}

/// The first characters of a hex hash.
fn short(hex: &str) -> &str {
    hex.get(..SHORT_HASH).unwrap_or(hex)
}
