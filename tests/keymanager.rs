//! The key manager as a real process: listening line, restart, admin subcommands, exit codes,
//! and kill -9 in the middle of registrations.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::KeymanagerError;
use conclave_shared::cert::Role;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::wire::km::KmErrorCode;
use harness::{conclave, run, Proc};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `conclave --json keymanager` on port 0 with its data in `dir`.
fn start_km(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr, String) {
    let mut cmd = conclave(dir);
    cmd.args([
        "--json",
        "keymanager",
        "--listen",
        "127.0.0.1:0",
        "--data",
        "km",
        "--root-key",
        "root.pub.pem",
    ])
    .args(extra);
    let mut p = Proc::spawn(&mut cmd);
    let ev = p.wait_event("listening", |v| v["role"] == "keymanager");
    let addr = ev["addr"].as_str().unwrap().parse().unwrap();
    let fp = ev["fingerprint"].as_str().unwrap().to_owned();
    assert!(
        ev["t"].as_str().is_some_and(|t| t.contains('T')),
        "RFC 3339 time: {ev}"
    );
    (p, addr, fp)
}

fn admin(dir: &Path, addr: SocketAddr, args: &[&str]) -> harness::Output {
    let mut cmd = conclave(dir);
    let a = addr.to_string();
    let (action, rest) = args.split_first().unwrap();
    cmd.args([
        "--json",
        "keymanager",
        "--data",
        "km",
        "--root-key",
        "root.pub.pem",
        action,
    ])
    .args(rest)
    .args(["--keymanager", &a]);
    run(cmd)
}

async fn client(dir: &Path, addr: SocketAddr) -> KeymanagerClient {
    let root = PublicKey::load_pem(&dir.join("root.pub.pem")).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    KeymanagerClient::connect(&ep, addr, &root).await.unwrap()
}

#[test]
fn serves_restarts_with_the_same_root_and_admin_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = rt();
    let (mut km, addr, fp) = start_km(d, &[]);
    let root = PublicKey::load_pem(&d.join("root.pub.pem")).unwrap();
    assert_eq!(
        root.fingerprint().to_hex(),
        fp,
        "listening line names the root fingerprint"
    );

    let alice = Identity::generate(2048).unwrap();
    let cert = rt.block_on(async {
        client(d, addr)
            .await
            .register(&alice, "alice", Role::Member, None)
            .await
            .unwrap()
    });

    let out = admin(d, addr, &["list"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let rows = out.json_lines();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "alice");
    assert_eq!(rows[0]["revoked"], false);
    assert_eq!(rows[0]["fingerprint"], alice.fingerprint().to_hex());

    // Only the admin token can revoke.
    std::fs::write(d.join("wrong.token"), "deadbeef").unwrap();
    let out = admin(
        d,
        addr,
        &["revoke", "alice", "--admin-token", "wrong.token"],
    );
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("wrong admin token"), "{}", out.stderr);

    let out = admin(d, addr, &["revoke", "alice"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.json_lines()[0]["serial"], cert.serial());

    // SIGTERM stops it cleanly with exit 0; a restart keeps root key and state.
    assert_eq!(km.terminate().code(), Some(0), "{}", km.stderr());
    let (_km, addr, fp2) = start_km(d, &[]);
    assert_eq!(fp2, fp, "the root key must survive a restart");
    let out = admin(d, addr, &["list"]);
    assert_eq!(out.json_lines()[0]["revoked"], true);
    rt.block_on(async {
        let e = client(d, addr)
            .await
            .lookup("alice")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.cert.certificate(), cert.certificate());
        assert!(e.revoked);
    });
}

#[test]
fn invite_mode_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = rt();
    let (_km, addr, _) = start_km(d, &["--mode", "invite"]);
    let out = admin(d, addr, &["invite", "bob"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let token = out.json_lines()[0]["token"].as_str().unwrap().to_owned();
    let bob = Identity::generate(2048).unwrap();
    let carol = Identity::generate(2048).unwrap();
    rt.block_on(async {
        let c = client(d, addr).await;
        let err = c.register(&carol, "carol", Role::Member, None).await;
        assert!(matches!(
            err,
            Err(KeymanagerError::Refused {
                code: KmErrorCode::InviteRequired,
                ..
            })
        ));
        c.register(&bob, "bob", Role::Member, Some(token))
            .await
            .unwrap();
    });
}

#[test]
fn bad_config_and_bad_flags_exit_2_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shipped = include_str!("../config.yml");

    let mut cmd = conclave(d);
    cmd.args(["--config", "missing.yml", "keymanager"]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("missing.yml"), "{}", out.stderr);

    std::fs::write(
        d.join("bad.yml"),
        shipped.replace("key_bits: 2048", "key_bits: 1000"),
    )
    .unwrap();
    let mut cmd = conclave(d);
    cmd.args(["--config", "bad.yml", "keymanager"]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("identity.key_bits"), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );

    std::fs::write(
        d.join("typo.yml"),
        shipped.replace("log_level:", "log_levl:"),
    )
    .unwrap();
    let mut cmd = conclave(d);
    cmd.args(["--config", "typo.yml", "keymanager"]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("log_levl"), "{}", out.stderr);

    let mut cmd = conclave(d);
    cmd.args(["keymanager", "--mode", "closed"]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("--mode"), "{}", out.stderr);
}

#[test]
fn an_unreachable_key_manager_is_exit_1_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A real root key file, but nobody listening.
    let id = Identity::generate(2048).unwrap();
    id.public().save_pem(&d.join("root.pub.pem")).unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    drop(sock);
    let out = admin(d, addr, &["list"]);
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
}

/// A troubleshooting case the README names: a port already in use, for each server, is exit
/// 1 with a line that says what to do.
#[test]
fn a_port_in_use_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    for args in [
        vec!["keymanager", "--listen", addr.as_str(), "--data", "km"],
        vec!["proxy", "--listen", addr.as_str(), "--data", "proxy"],
    ] {
        let mut cmd = conclave(d);
        cmd.args(&args);
        let out = run(cmd);
        assert_eq!(out.code(), Some(1), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("cannot listen on {addr}: the port is in use")),
            "{args:?}: {}",
            out.stderr
        );
    }

    // A peer whose port is in use says so before it tries anything else.
    let id = Identity::generate(2048).unwrap();
    id.public().save_pem(&d.join("root.pub.pem")).unwrap();
    let mut cmd = conclave(d);
    cmd.args([
        "peer",
        "--name",
        "pat",
        "--listen",
        &addr,
        "--root-key",
        "root.pub.pem",
        "--data",
        "pat",
    ]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("the port is in use"), "{}", out.stderr);
}

/// kill -9 while registrations are in flight: every registration that was answered is there
/// after the restart, and every name is bound either to its key or to nothing.
#[test]
fn kill_9_between_request_and_reply_loses_nothing_answered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = rt();
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 8;
    // One key holds one name, so each round registers fresh keys.
    let keys: Vec<Identity> = (0..ROUNDS * PER_ROUND)
        .map(|_| Identity::generate(2048).unwrap())
        .collect();
    let keys = std::sync::Arc::new(keys);
    let mut answered = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let (mut km, addr, _) = start_km(d, &[]);
        let results = rt.block_on(async {
            let c = std::sync::Arc::new(client(d, addr).await);
            let mut tasks = tokio::task::JoinSet::new();
            for i in round * PER_ROUND..(round + 1) * PER_ROUND {
                let (c, keys) = (c.clone(), keys.clone());
                tasks.spawn(async move {
                    let name = format!("r{round}-m{i}");
                    (
                        name.clone(),
                        i,
                        c.register(&keys[i], &name, Role::Member, None).await.ok(),
                    )
                });
                if i == round * PER_ROUND + PER_ROUND / 2 {
                    // Let some finish, then kill the server under the rest.
                    tokio::time::sleep(Duration::from_millis(20 * (round as u64 + 1))).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            km.kill9();
            // Requests still in flight would otherwise wait for the idle timeout.
            c.close();
            let mut out = Vec::new();
            while let Some(r) = tasks.join_next().await {
                out.push(r.unwrap());
            }
            out
        });
        for (name, i, cert) in results {
            if let Some(cert) = cert {
                answered.insert(name, (i, cert));
            }
        }
    }
    let (_km, addr, _) = start_km(d, &[]);
    rt.block_on(async {
        let c = client(d, addr).await;
        for (name, (i, cert)) in &answered {
            let e = c
                .lookup(name)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} was answered but is lost"));
            assert_eq!(e.cert.certificate(), cert.certificate());
            assert_eq!(e.cert.fingerprint(), keys[*i].fingerprint());
        }
        // Every name that exists at all is bound to the key that asked for it.
        for e in c.list().await.unwrap() {
            let i: usize = e.cert.name().rsplit("-m").next().unwrap().parse().unwrap();
            let wanted = keys[i].fingerprint();
            assert_eq!(
                e.cert.fingerprint(),
                wanted,
                "{} bound to a wrong key",
                e.cert.name()
            );
        }
    });
    let total = ROUNDS * PER_ROUND;
    eprintln!(
        "{} of {total} registrations answered before kill -9",
        answered.len()
    );
    assert!(
        !answered.is_empty(),
        "no registration was answered at all: the test proves nothing"
    );
}
