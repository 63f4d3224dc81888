//! `conclave peer`: a member on the command line. Standard input carries messages and
//! commands, one a line (through a line editor on a terminal); stdout carries events, as
//! text or (`--json`) JSON lines.

mod ask;
mod input;
mod print;

use std::io::IsTerminal;

use anyhow::Context;
use conclave_peer::node::{self, PeerOptions};
use conclave_shared::chain::Rules;
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use rustyline::DefaultEditor;
use serde_json::json;
use tokio::sync::mpsc;

use crate::cli::PeerArgs;
use crate::output::event;
use input::{Route, Sink, TerminalGuard};

/// Lines typed ahead of the writer wait here; a full queue makes typing wait, never drops.
const COMMAND_QUEUE: usize = 1024;
const EVENT_QUEUE: usize = 1024;

/// Whether the console talks to a person at a terminal (prompts, line editor).
pub fn interactive(json: bool) -> bool {
    !json && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

pub async fn run(args: PeerArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let proxy = args.proxy.unwrap_or(config.proxy.addr);
    // The editor exists only on a terminal; it asks the joining questions and later reads.
    let mut editor = if interactive(json) {
        DefaultEditor::new()
            .map_err(|e| tracing::warn!(error = %e, "no line editor; reading plain lines"))
            .ok()
    } else {
        None
    };
    let guard = editor.as_ref().map(|_| TerminalGuard::save());
    let (name, asked_listen) = match (args.name.clone(), editor.as_mut()) {
        (Some(n), _) => (n, None),
        (None, Some(ed)) => {
            let answers = ask::ask(
                &mut input::EditorPrompter(ed),
                ask::default_name().as_deref(),
                args.listen.is_some(),
                config.peer.listen,
                proxy,
            );
            match answers {
                Some(a) => (a.name, a.listen),
                // Ctrl-C or Ctrl-D at a question: the person changed their mind.
                None => return Ok(()),
            }
        }
        (None, None) => {
            return Err(usage(
                "--name is required when standard input is not a terminal",
            ))
        }
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
    let listen = args.listen.or(asked_listen).unwrap_or(config.peer.listen);
    let endpoint = super::bind(listen)?;
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
        proxy,
        root,
        key_bits: config.identity.key_bits,
        invite: args.invite.clone(),
        resync: args.resync,
        heartbeat_ms: config.raft.heartbeat_ms,
        election_timeout_min_ms: config.raft.election_timeout_min_ms,
        election_timeout_max_ms: config.raft.election_timeout_max_ms,
        snapshot_every_entries: config.raft.snapshot_every_entries,
        keep_log_entries: config.raft.keep_log_entries,
        dead_voter_after: config.raft.dead_voter_after,
        rules: Rules {
            max_record_bytes: config.group.max_record_bytes,
            share_history: config.group.share_history,
            max_voters: config.group.max_voters,
        },
    };
    let shutdown = super::shutdown_on_signals();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
    let route = Route {
        commands: cmd_tx,
        events: ev_tx.downgrade(),
        shutdown: shutdown.clone(),
        demo: args.demo_pids.clone().map(|pids| input::DemoControl {
            pids,
            proxy: proxy.to_string(),
            root_key: root_path.clone(),
        }),
    };
    let mut sink = match editor {
        Some(mut ed) => match ed.create_external_printer() {
            Ok(printer) => {
                let sink = Sink::Editor(Box::new(printer));
                input::spawn_tty(ed, format!("{name}> "), route);
                sink
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot print above the prompt; reading plain lines");
                input::spawn_plain(route);
                Sink::Stdout
            }
        },
        None => {
            input::spawn_plain(route);
            Sink::Stdout
        }
    };
    let printer = tokio::spawn(async move {
        while let Some(first) = ev_rx.recv().await {
            // Events that queued up meanwhile go out in one write: under load a member prints
            // thousands of lines a second, and a write (and a reader's wake-up) per line cost
            // more CPU than making them.
            let mut block = String::new();
            let mut next = Some(first);
            while let Some(e) = next.take() {
                if let Some(line) = print::render(json, &e) {
                    block.push_str(&line);
                    block.push('\n');
                }
                if block.len() < PRINT_BLOCK_BYTES {
                    next = ev_rx.try_recv().ok();
                }
            }
            if !block.is_empty() {
                sink.write_block(&block);
            }
        }
    });
    let result = node::run(opts, endpoint.clone(), cmd_rx, ev_tx, shutdown).await;
    endpoint.close(0u32.into(), b"bye");
    let _ = printer.await;
    drop(guard);
    result?;
    Ok(())
}

/// About how much output the printer gathers into one write.
const PRINT_BLOCK_BYTES: usize = 64 * 1024;

fn usage(msg: &str) -> anyhow::Error {
    eprintln!("conclave: {msg}");
    std::process::exit(2);
}
