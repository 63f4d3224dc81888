//! What goes to stdout (results and `--json` events) and stderr (logs).

use std::io::{IsTerminal, Write};

use serde_json::{Map, Value};

/// Logs go to stderr only; `RUST_LOG` wins over the config and `--log-level`.
pub fn init_tracing(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        // openraft logs every election and vote at info; keep that for `debug`.
        _ if !level.contains(',')
            && !level.contains('=')
            && matches!(level, "error" | "warn" | "info") =>
        {
            tracing_subscriber::EnvFilter::try_new(format!("{level},openraft=warn"))
        }
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| e.to_string())
}

/// Writes one event: a JSON line with `event` and `t` when `json`, else the human line.
pub fn event(json: bool, name: &str, fields: Value, human: impl FnOnce() -> String) {
    write_line(&format_event(json, name, fields, human));
}

/// One event as the line `event` would write, without the newline.
pub fn format_event(
    json: bool,
    name: &str,
    fields: Value,
    human: impl FnOnce() -> String,
) -> String {
    if json {
        let mut obj = Map::new();
        obj.insert("event".into(), Value::from(name));
        obj.insert(
            "t".into(),
            Value::from(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
        );
        if let Value::Object(f) = fields {
            obj.extend(f);
        }
        Value::Object(obj).to_string()
    } else {
        human()
    }
}

/// Writes `text` (whole lines, newlines included) to stdout in one go and flushes it.
pub fn write_raw(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not kill a server.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes one line to stdout and flushes it.
pub fn write_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not kill a server.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
