//! Finding etcd, or installing Debian's packages of it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BenchError;

/// Debian's packages: `etcd-server` has `etcd`, `etcd-client` has `etcdctl`.
const PACKAGES: [&str; 2] = ["etcd-server", "etcd-client"];

/// The `etcd` binary on `PATH`, if any; never installs anything (tests use this to skip).
pub fn find_etcd() -> Option<PathBuf> {
    find_on_path("etcd")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the etcd binaries are, or installs etcd-server and etcd-client with apt-get (sudo
/// when not root) and says so on stderr; Err with a clear message if that fails.
///
/// Debian's package also enables a system `etcd.service` on 127.0.0.1:2379; where systemd
/// runs it, it competes for the same CPUs, so the caller is told to stop it.
pub fn ensure_installed() -> Result<PathBuf, BenchError> {
    if let (Some(etcd), Some(_)) = (find_etcd(), find_on_path("etcdctl")) {
        return Ok(etcd);
    }
    let sudo = !is_root();
    if sudo && find_on_path("sudo").is_none() {
        return Err(not_installed("not root and no sudo to run apt-get with"));
    }
    eprintln!(
        "etcd not found: installing {} with {}apt-get",
        PACKAGES.join(" and "),
        if sudo { "sudo " } else { "" }
    );
    let install = || {
        apt(
            sudo,
            &["install", "-y", "--no-install-recommends"],
            &PACKAGES,
        )
    };
    if !install()? {
        // A fresh container often has no package lists yet.
        if !apt(sudo, &["update"], &[])? || !install()? {
            return Err(not_installed("apt-get install failed (output above)"));
        }
    }
    let etcd = find_etcd().ok_or_else(|| not_installed("installed, but etcd is not on PATH"))?;
    eprintln!(
        "installed {}; if systemd started Debian's etcd.service, stop it \
         (`systemctl stop etcd`) so it does not share the CPUs with the benchmark",
        etcd.display()
    );
    Ok(etcd)
}

fn not_installed(why: &str) -> BenchError {
    BenchError::Start {
        what: "etcd".into(),
        why: format!(
            "{why}; install it with `apt-get install etcd-server etcd-client` \
             or put an etcd 3.4 binary on PATH"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs apt-get with its output on our stderr: stdout carries only the benchmark's results.
fn apt(sudo: bool, args: &[&str], packages: &[&str]) -> Result<bool, BenchError> {
    let mut cmd = if sudo {
        let mut c = Command::new("sudo");
        // Never wait for a password prompt nobody sees; sudo resets the environment.
        c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        Command::new("apt-get")
    };
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = cmd
        .args(args)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| not_installed(&format!("cannot run apt-get: {e}")))?;
    Ok(status.success())
}
