//! The console's questions in plain-line mode: `/members`, `/leader`, `/chain N`, `/verify`,
//! `/status`, `/help`, and an unknown command.

mod harness;

use harness::cluster::Cluster;
use serde_json::Value;

fn line_with<'a>(lines: &'a [String], word: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(word))
        .unwrap_or_else(|| panic!("no line for {word:?} in {lines:#?}"))
}

#[test]
fn console_questions_are_answered() {
    let mut c = Cluster::with_peers(2);
    c.wait_status("two members", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == 2)
    });
    c.peer("p1").proc.send_line("hello from p1");
    c.peer("p2")
        .proc
        .wait_event("record", |e| e["text"] == "hello from p1");

    let members = c.ask("p2", "/members", "members");
    let p1 = line_with(&members, "p1");
    let p2 = line_with(&members, "p2");
    assert!(p1.contains("voter"), "{members:#?}");
    assert!(p2.contains("this member"), "{members:#?}");
    assert!(
        p2.contains("voter") || p2.contains("learner"),
        "{members:#?}"
    );

    let leader = c.ask("p2", "/leader", "leader");
    assert!(
        leader.iter().any(|l| l.starts_with("leader p1, term ")),
        "{leader:#?}"
    );

    let chain = c.ask("p2", "/chain 5", "chain");
    assert!(chain.len() <= 5 + 1, "{chain:#?}");
    let record = chain
        .iter()
        .find(|l| l.contains("hello from p1"))
        .unwrap_or_else(|| panic!("p1's record in {chain:#?}"));
    assert!(
        record.contains("p1") && record.contains("records"),
        "{record}"
    );

    let verify = c.ask("p2", "/verify", "verify");
    assert!(
        verify.len() == 1 && verify[0].starts_with("OK: "),
        "{verify:#?}"
    );

    let status = c.ask("p2", "/status", "status");
    let joined = status.join("\n");
    assert!(joined.contains("p2"), "{status:#?}");
    assert!(
        line_with(&status, "role").contains("voter")
            || line_with(&status, "role").contains("learner"),
        "{status:#?}"
    );
    assert!(line_with(&status, "leader").contains("p1"), "{status:#?}");

    let help = c.ask("p2", "/help", "help");
    for cmd in [
        "/members", "/leader", "/chain", "/verify", "/status", "/leave", "/exit",
    ] {
        assert!(help.iter().any(|l| l.contains(cmd)), "{cmd} in {help:#?}");
    }

    c.peer("p2").proc.send_line("/nope");
    let err: Value = c.peer("p2").proc.wait_event("error", |e| {
        e["message"].as_str().is_some_and(|m| m.contains("/nope"))
    });
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("/help")),
        "{err}"
    );
    c.stop_all();
}
