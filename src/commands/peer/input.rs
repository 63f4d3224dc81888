//! What the person types: on a terminal through a line editor (history, and records printed
//! above the half-typed line), otherwise plain lines from standard input so the console can
//! be scripted. Both read on a thread of their own, since reading blocks.

use std::io::BufRead;

use conclave_peer::console::{self, Query};
use conclave_peer::events::Event;
use conclave_peer::writer::Command;
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ask::Prompter;

/// What one typed line asks for.
#[derive(Debug, PartialEq)]
pub enum Line {
    Nothing,
    /// Stop this process without leaving the group.
    Exit,
    Send(Command),
    /// An answer the console gives by itself (help, a mistyped command).
    Say(Event),
}

pub fn interpret(line: &str) -> Line {
    let trimmed = line.trim();
    match trimmed {
        "" => Line::Nothing,
        "/exit" | "$exit" => Line::Exit,
        "/leave" => Line::Send(Command::Leave),
        "/help" => Line::Say(Event::Info {
            command: "help".into(),
            lines: console::HELP.iter().map(|l| (*l).to_owned()).collect(),
        }),
        cmd if cmd.starts_with('/') => match Query::parse(cmd) {
            Some(Ok(q)) => Line::Send(Command::Query(q)),
            Some(Err(message)) => Line::Say(Event::Error { message }),
            None => {
                let name = cmd.split_whitespace().next().unwrap_or(cmd);
                Line::Say(Event::Error {
                    message: format!("unknown command {name:?}; /help lists the commands"),
                })
            }
        },
        // A message keeps its inner and leading spaces; only the line ending goes.
        _ => Line::Send(Command::Append(
            line.trim_end_matches(['\r', '\n']).to_owned(),
        )),
    }
}

/// Where lines go. `false` from `deliver` means stop reading.
pub struct Route {
    pub commands: mpsc::Sender<Command>,
    /// Weak, so the event channel closes when the node ends even while this thread still
    /// waits for a line.
    pub events: mpsc::WeakSender<Event>,
    pub shutdown: CancellationToken,
    pub demo: Option<DemoControl>,
}

/// What `/kill-leader` needs inside `conclave demo`.
pub struct DemoControl {
    pub pids: std::path::PathBuf,
    pub proxy: String,
    pub root_key: std::path::PathBuf,
}

impl Route {
    fn deliver(&self, line: &str) -> bool {
        if let (Some(d), "/kill-leader") = (&self.demo, line.trim()) {
            let said = crate::commands::demo::kill_leader(&d.pids, &d.proxy, &d.root_key);
            return self.say(Event::Info {
                command: "kill-leader".into(),
                lines: vec![said],
            });
        }
        match interpret(line) {
            Line::Nothing => true,
            Line::Exit => {
                self.shutdown.cancel();
                false
            }
            Line::Send(c) => self.commands.blocking_send(c).is_ok(),
            Line::Say(e) => self.say(e),
        }
    }

    fn say(&self, e: Event) -> bool {
        match self.events.upgrade() {
            Some(events) => events.blocking_send(e).is_ok(),
            None => false,
        }
    }
}

/// Reads plain lines. End of input does not stop the peer: it keeps running until `/exit`,
/// a signal, or `/leave`.
pub fn spawn_plain(route: Route) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if !route.deliver(&line) {
                return;
            }
        }
    });
}

/// Reads through the line editor. Ctrl-C and Ctrl-D stop the process like `/exit`.
pub fn spawn_tty(mut editor: DefaultEditor, prompt: String, route: Route) {
    std::thread::spawn(move || loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !route.deliver(&line) {
                    return;
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                route.shutdown.cancel();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the terminal; stopping");
                route.shutdown.cancel();
                return;
            }
        }
    });
}

/// Answers the joining questions through the line editor.
pub struct EditorPrompter<'a>(pub &'a mut DefaultEditor);

impl Prompter for EditorPrompter<'_> {
    fn read(&mut self, prompt: &str) -> Option<String> {
        self.0.readline(prompt).ok()
    }
    fn say(&mut self, line: &str) {
        crate::output::write_line(line);
    }
}

/// Where output lines go: straight to stdout, or above the line being typed.
pub enum Sink {
    Stdout,
    Editor(Box<dyn ExternalPrinter + Send>),
}

impl Sink {
    /// Writes `block`, whole lines each ending in a newline, at once.
    pub fn write_block(&mut self, block: &str) {
        match self {
            Sink::Stdout => crate::output::write_raw(block),
            Sink::Editor(p) => {
                if p.print(block.to_owned()).is_err() {
                    crate::output::write_raw(block);
                }
            }
        }
    }
}

/// Puts the terminal back as it was when dropped: the editor's thread may still be inside
/// `readline` (raw mode, no echo) when the process ends after `/leave` or a signal.
pub struct TerminalGuard {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl TerminalGuard {
    pub fn save() -> Self {
        #[cfg(unix)]
        {
            TerminalGuard {
                saved: nix::sys::termios::tcgetattr(std::io::stdin()).ok(),
            }
        }
        #[cfg(not(unix))]
        TerminalGuard {}
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
            crate::output::write_line("");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_mean_what_the_console_promises() {
        assert_eq!(interpret("   "), Line::Nothing);
        assert_eq!(interpret("/exit"), Line::Exit);
        assert_eq!(interpret(" $exit "), Line::Exit);
        assert_eq!(interpret("/leave"), Line::Send(Command::Leave));
        assert_eq!(
            interpret("  two  spaces \r\n"),
            Line::Send(Command::Append("  two  spaces ".into()))
        );
        assert!(matches!(interpret("/help"), Line::Say(Event::Info { .. })));
        assert!(matches!(
            interpret("/members"),
            Line::Send(Command::Query(_))
        ));
        match interpret("/frobnicate now") {
            Line::Say(Event::Error { message }) => {
                assert!(message.contains("\"/frobnicate\""), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
