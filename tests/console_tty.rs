//! The console in a real terminal (tmux): the joining questions with their defaults and
//! re-asking, the join line, a record from another member arriving while a line is half
//! typed (which survives and is sent whole), `/members`, and `/exit`.

mod harness;

use harness::cluster::Cluster;
use harness::tmux::{Tmux, EXIT_MARK};

/// The last non-empty line of the screen: where the prompt and the typed text are.
fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[test]
fn a_person_joins_types_and_leaves_at_a_terminal() {
    let mut c = Cluster::with_peers(1);
    let km = c.km_addr.to_string();
    let proxy = c.proxy_addr.to_string();
    let t = Tmux::start(
        c.path(),
        std::path::Path::new(env!("CARGO_BIN_EXE_conclave")),
        &[
            "peer",
            "--data",
            "peers/tess",
            "--keymanager",
            &km,
            "--proxy",
            &proxy,
        ],
    );

    // The questions, one at a time, defaults in brackets; a bad answer is explained.
    t.wait_text("user name");
    t.type_line("no spaces allowed");
    t.wait_for("the name asked again", |s| {
        s.matches("user name").count() == 2
    });
    t.type_line("tess");
    t.wait_text("address to listen on (auto = 127.0.0.1, the one that reaches the proxy) [auto]:");
    t.type_line("not-an-address");
    t.wait_text("is not an IP address");
    t.wait_for("the address asked again", |s| {
        s.matches("address to listen on").count() == 2
    });
    t.enter();
    t.wait_text("port (0 = any free port) [0]:");
    t.type_line("70000");
    t.wait_text("is not a port");
    t.wait_for("the port asked again", |s| {
        s.matches("port (0 = any").count() == 2
    });
    t.enter();

    // One line says who joined, with role, leader, members and height; then the prompt.
    let screen = t.wait_text("joined as tess (");
    let joined = screen
        .lines()
        .find(|l| l.starts_with("joined as tess ("))
        .unwrap_or_default();
    assert!(
        joined.contains("leader p1")
            && joined.contains("2 members")
            && joined.contains("chain height"),
        "{joined}"
    );
    t.wait_for("the prompt", |s| last_line(s).starts_with("tess>"));

    // Half a line typed; another member's record arrives above it; the line stays.
    t.type_text("half typed");
    t.wait_for("the half-typed line", |s| {
        last_line(s) == "tess> half typed"
    });
    c.peer("p1").proc.send_line("hello from p1");
    let screen = t.wait_text("p1: hello from p1");
    let arrived = screen
        .lines()
        .find(|l| l.contains("p1: hello from p1"))
        .unwrap_or_default();
    assert!(arrived.starts_with('['), "`[time] name: text`: {arrived}");
    t.wait_for("the half-typed line kept below the record", |s| {
        last_line(s) == "tess> half typed"
    });
    t.type_line(" and finished");
    c.peer("p1").proc.wait_event("record", |e| {
        e["author"] == "tess" && e["text"] == "half typed and finished"
    });
    t.wait_text("tess: half typed and finished");

    // /members: name, role, reachable, head.
    t.type_line("/members");
    let screen = t.wait_text("yes (this member)");
    let members: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.starts_with("name "))
        .collect();
    assert!(
        members
            .iter()
            .any(|l| l.starts_with("p1 ") && l.contains("voter")),
        "{screen}"
    );
    assert!(
        members
            .iter()
            .any(|l| l.starts_with("tess ") && l.contains("yes (this member)")),
        "{screen}"
    );

    // /exit stops this process with 0; the group keeps it as a member (unreachable).
    t.type_line("/exit");
    let screen = t.wait_text(EXIT_MARK);
    assert!(screen.contains(&format!("{EXIT_MARK}0")), "{screen}");
    let status = c.status();
    let names: Vec<&str> = status["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"tess"), "{status}");
}
