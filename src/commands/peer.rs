//! `conclave peer`: a member on the command line. Standard input carries messages and
//! commands, one a line; stdout carries events, as text or (`--json`) JSON lines.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use conclave_peer::console::{self, Query};
use conclave_peer::events::Event;
use conclave_peer::node::{self, PeerOptions};
use conclave_peer::writer::Command;
use conclave_shared::chain::Rules;
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::PeerArgs;
use crate::output::event;

/// Lines typed ahead of the writer wait here; a full queue makes typing wait, never drops.
const COMMAND_QUEUE: usize = 1024;
const EVENT_QUEUE: usize = 1024;

pub async fn run(args: PeerArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let name = match args.name.clone() {
        Some(n) => n,
        None => ask_name()?,
    };
    conclave_shared::cert::validate_name(&name).map_err(|e| usage(&e.to_string()))?;
    let root_path = args
        .root_key
        .clone()
        .unwrap_or_else(|| config.root_key_path());
    let root = PublicKey::load_pem(&root_path).with_context(|| {
        format!(
            "cannot read the key manager's root public key at {} (start the key manager first, or pass --root-key FILE)",
            root_path.display()
        )
    })?;
    let listen = args.listen.unwrap_or(config.peer.listen);
    let endpoint =
        quinn::Endpoint::client(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = endpoint.local_addr()?;
    event(
        json,
        "listening",
        json!({"role": "peer", "addr": addr.to_string()}),
        || format!("{name} listening on {addr}"),
    );
    let opts = PeerOptions {
        name: name.clone(),
        data_dir: args.data.clone().unwrap_or_else(|| config.peer_data(&name)),
        advertise: args.advertise,
        keymanager: args.keymanager.unwrap_or(config.keymanager.addr),
        proxy: args.proxy.unwrap_or(config.proxy.addr),
        root,
        key_bits: config.identity.key_bits,
        invite: args.invite.clone(),
        resync: args.resync,
        heartbeat_ms: config.raft.heartbeat_ms,
        election_timeout_min_ms: config.raft.election_timeout_min_ms,
        election_timeout_max_ms: config.raft.election_timeout_max_ms,
        snapshot_every_entries: config.raft.snapshot_every_entries,
        keep_log_entries: config.raft.keep_log_entries,
        rules: Rules {
            max_record_bytes: config.group.max_record_bytes,
            share_history: config.group.share_history,
            max_voters: config.group.max_voters,
        },
    };
    let shutdown = super::shutdown_on_signals();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
    read_stdin(cmd_tx, shutdown.clone(), json);
    let printer = tokio::spawn(async move {
        while let Some(e) = ev_rx.recv().await {
            print_event(json, &e);
        }
    });
    let result = node::run(opts, endpoint.clone(), cmd_rx, ev_tx, shutdown).await;
    endpoint.close(0u32.into(), b"bye");
    let _ = printer.await;
    result?;
    Ok(())
}

fn usage(msg: &str) -> anyhow::Error {
    eprintln!("conclave: {msg}");
    std::process::exit(2);
}

fn ask_name() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "--name is required when standard input is not a terminal",
        ));
    }
    loop {
        print!("user name: ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return Err(usage("no name given"));
        }
        let name = line.trim().to_owned();
        match conclave_shared::cert::validate_name(&name) {
            Ok(()) => return Ok(name),
            Err(e) => println!("{e}"),
        }
    }
}

/// Reads standard input on its own thread (reads block). End of input does not stop the
/// peer: it keeps running until `/exit`, a signal, or `/leave`.
fn read_stdin(commands: mpsc::Sender<Command>, shutdown: CancellationToken, json: bool) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches(['\r', '\n']);
            if line.trim().is_empty() {
                continue;
            }
            match line.trim() {
                "/exit" | "$exit" => {
                    shutdown.cancel();
                    return;
                }
                "/leave" => {
                    if commands.blocking_send(Command::Leave).is_err() {
                        return;
                    }
                }
                "/help" => print_event(
                    json,
                    &Event::Info {
                        command: "help".into(),
                        lines: console::HELP.iter().map(|l| (*l).to_owned()).collect(),
                    },
                ),
                cmd if cmd.starts_with('/') => match Query::parse(cmd) {
                    Some(Ok(q)) => {
                        if commands.blocking_send(Command::Query(q)).is_err() {
                            return;
                        }
                    }
                    Some(Err(msg)) => event(json, "error", json!({"message": msg}), || {
                        format!("error: {msg}")
                    }),
                    None => {
                        let name = cmd.split_whitespace().next().unwrap_or(cmd);
                        let msg = format!("unknown command {name:?}; /help lists the commands");
                        event(json, "error", json!({"message": msg}), || msg.clone());
                    }
                },
                _ => {
                    if commands
                        .blocking_send(Command::Append(line.to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

fn print_event(json: bool, e: &Event) {
    match e {
        Event::Joined {
            name,
            role,
            leader,
            term,
            members,
            height,
        } => event(
            json,
            "joined",
            json!({"name": name, "role": role.to_string(), "leader": leader, "term": term, "members": members, "height": height}),
            || {
                format!("joined as {name} ({role}); leader {leader}, term {term}, {members} members, chain height {height}")
            },
        ),
        Event::Leader { name, term } => {
            event(json, "leader", json!({"name": name, "term": term}), || {
                format!("leader is now {name} (term {term})")
            })
        }
        Event::MemberJoined { name, role, height } => event(
            json,
            "member_joined",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} joined as {role}"),
        ),
        Event::MemberLeft { name, role, height } => event(
            json,
            "member_left",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} left"),
        ),
        Event::RoleChanged { name, role, height } => event(
            json,
            "role_changed",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} is now a {role}"),
        ),
        Event::KeyRotated { epoch, height } => event(
            json,
            "key_rotated",
            json!({"epoch": epoch, "height": height}),
            || format!("group key rotated (epoch {epoch})"),
        ),
        Event::Record {
            height,
            author,
            seq,
            text,
            own,
        } => event(
            json,
            "record",
            json!({"height": height, "author": author, "seq": seq, "text": text, "own": own}),
            || {
                let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                let time = t.get(11..19).unwrap_or("");
                format!(
                    "[{time}] {author}: {}",
                    text.as_deref().unwrap_or("(cannot decrypt)")
                )
            },
        ),
        Event::Committed {
            seq,
            height,
            duplicate,
        } => {
            // A person sees their own line arrive as a record; only --json reports commits.
            if json {
                event(
                    json,
                    "committed",
                    json!({"seq": seq, "height": height, "duplicate": duplicate}),
                    String::new,
                )
            }
        }
        Event::Refused { seq, reason } => event(
            json,
            "refused",
            json!({"seq": seq, "reason": reason}),
            || format!("not appended: {reason}"),
        ),
        Event::Head { height, hash } => {
            if json {
                event(
                    json,
                    "head",
                    json!({"height": height, "hash": hash}),
                    String::new,
                )
            }
        }
        Event::SnapshotInstalled { height } => event(
            json,
            "snapshot_installed",
            json!({"height": height}),
            || format!("state installed from a snapshot at height {height}"),
        ),
        Event::Info { command, lines } => event(
            json,
            "info",
            json!({"command": command, "lines": lines}),
            || lines.join("\n"),
        ),
        Event::Error { message } => event(json, "error", json!({"message": message}), || {
            format!("error: {message}")
        }),
    }
}
