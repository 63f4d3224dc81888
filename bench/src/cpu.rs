//! CPU time used by a set of processes, read from `/proc/<pid>/stat`, the same way for
//! etcd's members and Conclave's peers so the comparison reports work done, not only speed.
//!
//! A process's time is only readable while it exists: sample before killing it, and
//! subtract a sample taken at the start of the workload.

use std::process::Command;
use std::sync::OnceLock;

/// Clock ticks per second when `getconf CLK_TCK` cannot say; 100 on every Linux port in use.
const DEFAULT_TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of `pids` in seconds; a pid that is gone or unreadable counts as 0.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| parse_stat_ticks(&stat))
        .sum();
    ticks as f64 / ticks_per_second()
}

fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(DEFAULT_TICKS_PER_SECOND)
    })
}

/// utime + stime (fields 14 and 15) of one `/proc/<pid>/stat` line, in ticks.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and `)`, so
/// fields are counted after the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name, so utime is the 12th.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "2603 (cat) R 2595 2595 27384 0 -1 4194304 97 0 0 0 7 5 0 0 20 0 1 0 \
                    1147572 3133440 358 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(12));
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let stat = "42 (we ird) (x) S 1 1 1 0 -1 0 0 0 0 0 300 45 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(345));
    }

    #[test]
    fn malformed_lines_are_none() {
        for bad in [
            "",
            "42 (x",
            "42 (x) S 1 2",
            "42 (x) S 1 1 1 0 -1 0 0 0 0 0 a b",
        ] {
            assert_eq!(parse_stat_ticks(bad), None, "{bad}");
        }
    }

    #[test]
    fn own_process_uses_some_cpu_and_gone_pids_none() {
        let me = std::process::id();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_seconds(&[me]) > 0.0);
        assert_eq!(cpu_seconds(&[u32::MAX]), 0.0);
    }
}
