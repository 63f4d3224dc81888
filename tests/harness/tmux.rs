//! A real terminal for console tests: a private tmux server (its own socket, so it never
//! touches a user's sessions) running one command in a pane that tests type into
//! (`send-keys`) and read (`capture-pane`). The server is killed on drop.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

pub struct Tmux {
    socket: String,
}

/// Marks the end of the command in the pane, with its exit code.
pub const EXIT_MARK: &str = "CONCLAVE-EXIT=";

impl Tmux {
    /// Runs `program args` in `dir` in a new 160x50 pane; when it ends the pane shows
    /// `CONCLAVE-EXIT=<code>`. Panics with a hint when tmux is not installed.
    pub fn start(dir: &Path, program: &Path, args: &[&str]) -> Self {
        let socket = format!(
            "conclave-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let mut line = shell_quote(&program.to_string_lossy());
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        // Keep the pane after the program ends so its last words and exit code can be read.
        let script = format!("{line}; echo \"{EXIT_MARK}$?\"; sleep 600");
        let t = Tmux { socket };
        let out = t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "50",
            "-c",
            &dir.to_string_lossy(),
            "env",
            "-u",
            "RUST_LOG",
            "TERM=xterm-256color",
            "sh",
            "-c",
            &script,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}); install it (Debian: apt-get install tmux)")
            })
    }

    /// Types `keys` literally, without pressing Enter.
    pub fn type_text(&self, keys: &str) {
        let out = self.tmux(&["send-keys", "-t", "t", "-l", keys]);
        assert!(out.status.success(), "send-keys failed");
    }

    /// Presses Enter.
    pub fn enter(&self) {
        let out = self.tmux(&["send-keys", "-t", "t", "Enter"]);
        assert!(out.status.success(), "send-keys Enter failed");
    }

    pub fn type_line(&self, keys: &str) {
        self.type_text(keys);
        self.enter();
    }

    /// What the pane shows, its scrollback included, without trailing blank lines.
    pub fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "t", "-S", "-500"]);
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Waits until `pred` holds for the screen, and returns it; panics at the deadline with
    /// what the screen showed.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > until {
                panic!("the terminal never showed {what}; it shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for text on the screen.
    pub fn wait_text(&self, text: &str) -> String {
        self.wait_for(&format!("{text:?}"), |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
