//! How a peer's events look on stdout: the human line, or a JSON object with `--json`
//! (../shared/INTERFACE.md's contract).

use conclave_peer::events::Event;
use serde_json::json;

use crate::output::format_event;

/// The line for `e`, or `None` for events only `--json` reports.
pub fn render(json: bool, e: &Event) -> Option<String> {
    let line = match e {
        Event::Joined {
            name,
            role,
            leader,
            term,
            members,
            height,
        } => format_event(
            json,
            "joined",
            json!({"name": name, "role": role.to_string(), "leader": leader, "term": term, "members": members, "height": height}),
            || {
                format!("joined as {name} ({role}); leader {leader}, term {term}, {members} members, chain height {height}")
            },
        ),
        Event::Leader { name, term } => {
            format_event(json, "leader", json!({"name": name, "term": term}), || {
                format!("leader is now {name} (term {term})")
            })
        }
        Event::MemberJoined { name, role, height } => format_event(
            json,
            "member_joined",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} joined as {role}"),
        ),
        Event::MemberLeft { name, role, height } => format_event(
            json,
            "member_left",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} left"),
        ),
        Event::RoleChanged { name, role, height } => format_event(
            json,
            "role_changed",
            json!({"name": name, "role": role.to_string(), "height": height}),
            || format!("{name} is now a {role}"),
        ),
        Event::KeyRotated { epoch, height } => format_event(
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
        } => format_event(
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
            if !json {
                return None;
            }
            format_event(
                json,
                "committed",
                json!({"seq": seq, "height": height, "duplicate": duplicate}),
                String::new,
            )
        }
        Event::Refused { seq, reason } => format_event(
            json,
            "refused",
            json!({"seq": seq, "reason": reason}),
            || format!("not appended: {reason}"),
        ),
        Event::Head { height, hash } => {
            if !json {
                return None;
            }
            format_event(
                json,
                "head",
                json!({"height": height, "hash": hash}),
                String::new,
            )
        }
        Event::SnapshotInstalled { height } => format_event(
            json,
            "snapshot_installed",
            json!({"height": height}),
            || format!("state installed from a snapshot at height {height}"),
        ),
        Event::Info { command, lines } => format_event(
            json,
            "info",
            json!({"command": command, "lines": lines}),
            || lines.join("\n"),
        ),
        Event::HeadMismatch {
            peer,
            height,
            ours,
            theirs,
        } => format_event(
            json,
            "head_mismatch",
            json!({"peer": peer, "height": height, "ours": ours, "theirs": theirs}),
            || {
                format!(
                    "warning: {peer} holds another block at height {height} than this member (ours {}, theirs {})",
                    ours.get(..16).unwrap_or(ours),
                    theirs.get(..16).unwrap_or(theirs)
                )
            },
        ),
        Event::Error { message } => {
            format_event(json, "error", json!({"message": message}), || {
                format!("error: {message}")
            })
        }
    };
    Some(line)
}
