//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) on the stable toolchain: every file
//! goes through the same decode calls as its fuzz target (`fuzz/src/lib.rs`, included
//! below), which must return and never panic.
//!
//! `write_fuzz_seeds` made the fixtures and the seed inputs once; see `fuzz/README.md`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use conclave_shared::chain::{verify_chain, BlockBody, MembershipChange};
use conclave_shared::codec::Canonical;

#[path = "../../fuzz/src/lib.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of {target} ({}) is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Every file of every target's corpus returns; and each corpus holds at least one input its
/// target accepts (a message that decodes, a chain that verifies, a config that validates),
/// so the corpus is not only garbage.
#[test]
fn every_corpus_file_decodes_without_panicking() {
    let mut failures = Vec::new();
    for name in targets::TARGETS {
        let run = targets::target(name).expect("every listed target has a function");
        let files = corpus_files(name);
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        let mut accepted = 0;
        for file in files {
            let data = fs::read(&file).expect("a readable corpus file");
            match catch_unwind(AssertUnwindSafe(|| run(&data))) {
                Ok(true) => accepted += 1,
                Ok(false) => {}
                Err(_) => failures.push(file.display().to_string()),
            }
        }
        assert!(accepted > 0, "no input of the {name} corpus is accepted");
    }
    assert!(failures.is_empty(), "these inputs panicked: {failures:#?}");
}

#[test]
fn unknown_target_names_have_no_function() {
    assert!(targets::target("no_such_target").is_none());
}

/// The fixture chain the `verify_chain` target picks blocks from must itself verify, or the
/// target would only ever exercise the first failure.
#[test]
fn the_fixture_chain_verifies_under_the_fixture_root() {
    let blocks = targets::fixture_chain();
    let summary = verify_chain(
        targets::fixture_root(),
        blocks.iter().cloned().map(Ok::<_, String>),
    )
    .expect("the fixture chain verifies");
    assert_eq!(summary.count, blocks.len() as u64);
    let picked: Vec<u8> = std::iter::once(targets::MODE_PICK)
        .chain(0..blocks.len() as u8)
        .collect();
    assert!(
        targets::verify_chain(&picked),
        "the whole chain, picked in order, verifies"
    );
}

/// Makes `fuzz/fixtures/` and the seed inputs of every target. It draws new keys, so the
/// fixtures change each time: run it only to start the corpus afresh, with
/// `CONCLAVE_WRITE_FUZZ_SEEDS=1 cargo test -p conclave-shared --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/fixtures and fuzz/corpus seeds; set CONCLAVE_WRITE_FUZZ_SEEDS=1"]
fn write_fuzz_seeds() {
    if std::env::var_os("CONCLAVE_WRITE_FUZZ_SEEDS").is_none() {
        eprintln!("CONCLAVE_WRITE_FUZZ_SEEDS is not set: nothing written");
        return;
    }
    seeds::write_all(&fuzz_dir()).expect("seeds written");
}

mod seeds {
    use super::*;
    use conclave_shared::cert::{Role, SignedRevocation};
    use conclave_shared::chain::{ChainBuilder, MemberRole, Rules, StoredBlock};
    use conclave_shared::identity::Identity;
    use conclave_shared::wire::encode_message;
    use conclave_shared::wire::km::{FromKeymanager, KmErrorCode, MemberEntry, ToKeymanager};
    use conclave_shared::wire::peer::{FromPeer, Head, PeerStatus, SignedHead, ToPeer, WireRole};
    use conclave_shared::wire::proxy::{
        Announcement, FromProxy, GroupStatus, LeaderInfo, MemberInfo, MemberStatus, Rejection,
        SignedAnnouncement, ToProxy,
    };

    type Res = Result<(), Box<dyn std::error::Error>>;

    struct Corpus<'a> {
        dir: &'a Path,
    }

    impl Corpus<'_> {
        fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Res {
            let dir = self.dir.join("corpus").join(target);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join(format!("seed-{name}")), bytes)?;
            Ok(())
        }
    }

    fn frames(selector: u8, bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![selector];
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    pub(super) fn write_all(dir: &Path) -> Res {
        let root = Identity::generate(2048)?;
        let alice = Identity::generate(2048)?;
        let bob = Identity::generate(2048)?;
        let rules = Rules {
            max_record_bytes: 1024,
            share_history: false,
            max_voters: 3,
        };
        let addr = "127.0.0.1:7000";
        let mut b = ChainBuilder::new(&root, &alice, [0x42; 16], rules)?;
        b.admit(&alice, "alice", MemberRole::Voter, addr)?;
        b.admit(&bob, "bob", MemberRole::Voter, addr)?;
        b.rotate_key()?;
        b.records("alice", [b"a1".as_slice(), b"a2", b"a3"])?;
        b.records("bob", [b"b1".as_slice()])?;
        b.change_role("bob", MemberRole::Learner)?;
        b.refused(b"late batch", Some("bob"), "stale epoch")?;
        b.revoke("bob")?;
        b.remove("bob")?;
        b.rotate_key()?;
        b.records("alice", [b"a4".as_slice()])?;
        b.checkpoint()?;
        let batch = b.batch("alice", [b"a5".as_slice()])?;
        let blocks = b.into_blocks();

        let chain: Vec<u8> = blocks.iter().flat_map(|s| s.to_canonical()).collect();
        fs::create_dir_all(dir.join("fixtures"))?;
        fs::write(dir.join("fixtures/root.spki.der"), root.public().spki_der())?;
        fs::write(dir.join("fixtures/chain.bin"), &chain)?;

        let c = Corpus { dir };
        block_seeds(&c, &blocks)?;
        chain_seeds(&c, &blocks, &chain)?;

        let certs: Vec<_> = blocks
            .iter()
            .filter_map(|s| match &s.block.body {
                BlockBody::Membership(m) => match &m.change {
                    MembershipChange::Admit { cert, .. } => Some(cert.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let revocation: SignedRevocation = blocks
            .iter()
            .find_map(|s| match &s.block.body {
                BlockBody::Revocation(r) => Some(r.revocation.clone()),
                _ => None,
            })
            .ok_or("the chain has a revocation")?;
        c.put("cert", "alice", &certs[0].to_canonical())?;
        c.put("cert", "bob-body", &certs[1].body.to_canonical())?;
        c.put("cert", "revocation", &revocation.to_canonical())?;
        c.put("cert", "statement", &revocation.statement.to_canonical())?;
        c.put("cert", "root-spki", root.public().spki_der())?;

        // Key manager.
        let entry = MemberEntry {
            cert: certs[0].clone(),
            revoked: false,
        };
        let to_km = [
            ToKeymanager::Challenge,
            ToKeymanager::Register {
                name: "carol".into(),
                role: Role::Member,
                public_key: bob.public().spki_der().to_vec(),
                nonce: [7; 32],
                proof: vec![1; 256],
                invite: Some("token".into()),
            },
            ToKeymanager::Lookup {
                name: "alice".into(),
            },
            ToKeymanager::List,
            ToKeymanager::Revocations,
            ToKeymanager::Invite {
                admin_token: "admin".into(),
                name: "dave".into(),
            },
            ToKeymanager::Revoke {
                admin_token: "admin".into(),
                name: "bob".into(),
            },
        ];
        let from_km = [
            FromKeymanager::Challenge { nonce: [9; 32] },
            FromKeymanager::Registered {
                cert: certs[1].clone(),
            },
            FromKeymanager::Found {
                entry: Some(entry.clone()),
            },
            FromKeymanager::Members {
                entries: vec![entry.clone(), entry],
            },
            FromKeymanager::Revocations {
                revocations: vec![revocation.clone()],
            },
            FromKeymanager::Invited {
                token: "token".into(),
            },
            FromKeymanager::Revoked { revocation },
            FromKeymanager::Error {
                code: KmErrorCode::BadProof,
                message: "the proof does not verify".into(),
            },
        ];
        let to_km: Vec<Vec<u8>> = to_km.iter().map(encode_message).collect::<Result<_, _>>()?;
        let from_km: Vec<Vec<u8>> = from_km
            .iter()
            .map(encode_message)
            .collect::<Result<_, _>>()?;
        for (i, m) in to_km.iter().enumerate() {
            c.put("msg_km", &format!("to-{i}"), m)?;
        }
        for (i, m) in from_km.iter().enumerate() {
            c.put("msg_km", &format!("from-{i}"), m)?;
        }

        // Members.
        let status = PeerStatus {
            name: "alice".into(),
            node_id: 42,
            role: Some(WireRole::Voter),
            leader: Some("alice".into()),
            term: 3,
            head_height: Some(12),
            head_hash: Some(blocks[12].hash.to_hex()),
            head_mismatches: Vec::new(),
        };
        let to_peer = [
            ToPeer::Admit {
                cert: certs[1].clone(),
                addr: addr.into(),
            },
            ToPeer::Submit {
                batch: batch.to_canonical(),
            },
            // The same records signed by a batch key, as peers sign them.
            ToPeer::Submit {
                batch: conclave_shared::chain::RecordBatch::sign_with(
                    &conclave_shared::chain::BatchKey::generate(&alice, &[0x42; 16], "alice")?,
                    batch.records.clone(),
                )?
                .to_canonical(),
            },
            ToPeer::Status,
            ToPeer::Leave,
            ToPeer::Rejoin {
                cert: certs[0].clone(),
                addr: addr.into(),
            },
            ToPeer::Head(SignedHead::sign(
                &alice,
                &Head {
                    group_id: [0x42; 16],
                    node_id: 42,
                    name: "alice".into(),
                    height: 12,
                    hash: blocks[12].hash.0,
                    time_ms: 1_700_000_000_000,
                    seq: 3,
                },
            )?),
        ];
        let from_peer = [
            FromPeer::Admitted {
                role: WireRole::Learner,
                leader: "alice".into(),
                term: 2,
                members: 3,
            },
            FromPeer::NotLeader {
                leader: Some(("alice".into(), addr.into())),
            },
            FromPeer::Committed {
                height: 5,
                duplicate: true,
            },
            FromPeer::Refused {
                height: 6,
                reason: "stale epoch".into(),
            },
            FromPeer::Status(status),
            FromPeer::Error {
                message: "busy".into(),
                retry: true,
            },
            FromPeer::Left { height: 9 },
            FromPeer::HeadNoted,
        ];
        let to_peer: Vec<Vec<u8>> = to_peer
            .iter()
            .map(encode_message)
            .collect::<Result<_, _>>()?;
        let from_peer: Vec<Vec<u8>> = from_peer
            .iter()
            .map(encode_message)
            .collect::<Result<_, _>>()?;
        for (i, m) in to_peer.iter().enumerate() {
            c.put("msg_peer", &format!("to-{i}"), m)?;
        }
        for (i, m) in from_peer.iter().enumerate() {
            c.put("msg_peer", &format!("from-{i}"), m)?;
        }

        // Proxy.
        let leader = LeaderInfo {
            group_id: [0x42; 16],
            name: "alice".into(),
            node_id: 42,
            addr: addr.into(),
            term: 3,
        };
        let announcement = Announcement {
            group_id: [0x42; 16],
            name: "alice".into(),
            node_id: 42,
            addr: addr.into(),
            term: 3,
            members: vec![MemberInfo {
                name: "alice".into(),
                node_id: 42,
                addr: addr.into(),
                role: "voter".into(),
            }],
            time_ms: 1_700_000_000_000,
        };
        let to_proxy = [
            ToProxy::WhereIsLeader,
            ToProxy::Announce(SignedAnnouncement::sign(&alice, &announcement)?),
            ToProxy::Status,
        ];
        let from_proxy = [
            FromProxy::Leader(leader.clone()),
            FromProxy::Bootstrap {
                group_id: [1; 16],
                lease_ms: 5000,
            },
            FromProxy::Wait { retry_ms: 200 },
            FromProxy::Accepted,
            FromProxy::Rejected {
                reason: Rejection::NotConfirmed,
                message: "not confirmed".into(),
                leader: Some(leader.clone()),
            },
            FromProxy::Status(GroupStatus {
                group_id: Some([0x42; 16]),
                leader: Some(leader),
                members: vec![MemberStatus {
                    name: "alice".into(),
                    node_id: 42,
                    addr: addr.into(),
                    role: "voter".into(),
                    reachable: true,
                    head_height: Some(12),
                    head_hash: None,
                    head_mismatches: Vec::new(),
                }],
            }),
            FromProxy::Error {
                message: "no certificate".into(),
            },
        ];
        let to_proxy: Vec<Vec<u8>> = to_proxy
            .iter()
            .map(encode_message)
            .collect::<Result<_, _>>()?;
        let from_proxy: Vec<Vec<u8>> = from_proxy
            .iter()
            .map(encode_message)
            .collect::<Result<_, _>>()?;
        for (i, m) in to_proxy.iter().enumerate() {
            c.put("msg_proxy", &format!("to-{i}"), m)?;
        }
        for (i, m) in from_proxy.iter().enumerate() {
            c.put("msg_proxy", &format!("from-{i}"), m)?;
        }
        c.put("msg_proxy", "announcement", &encode_message(&announcement)?)?;

        // Frames: two messages of each type per stream, in selector order.
        let streams = [
            &to_km,
            &from_km,
            &to_peer,
            &from_peer,
            &to_proxy,
            &from_proxy,
        ];
        for (selector, bodies) in streams.into_iter().enumerate() {
            let two: Vec<Vec<u8>> = bodies.iter().take(2).cloned().collect();
            c.put(
                "frame",
                &format!("stream-{selector}"),
                &frames(selector as u8, &two),
            )?;
            c.put(
                "frame",
                &format!("all-{selector}"),
                &frames(selector as u8 + 128, bodies),
            )?;
        }

        // Config.
        let yml = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.yml"))?;
        c.put("config", "repo", yml.as_bytes())?;
        let bare: String = yml
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        c.put("config", "bare", bare.as_bytes())?;
        c.put(
            "config",
            "flow",
            b"data_root: d\nkeymanager: {addr: \"127.0.0.1:1\", data: x, mode: invite, root_key: r.pem}\n\
              proxy: {addr: \"[::1]:2\"}\npeer: {listen: \"0.0.0.0:0\"}\nidentity: {key_bits: 4096}\n\
              raft: &r {heartbeat_ms: 10, election_timeout_min_ms: 20, election_timeout_max_ms: 40}\n\
              group: {max_voters: 1, max_record_bytes: 1, share_history: true}\nlog_level: debug\n",
        )?;
        Ok(())
    }

    fn block_seeds(c: &Corpus<'_>, blocks: &[StoredBlock]) -> Res {
        for (i, s) in blocks.iter().enumerate() {
            c.put("block", &format!("stored-{i}"), &s.to_canonical())?;
        }
        // A header alone, and bodies alone, of a few kinds.
        c.put("block", "header", &blocks[1].block.header.to_canonical())?;
        for i in [0, 1, 3, 4, 7, 8] {
            c.put(
                "block",
                &format!("body-{i}"),
                &blocks[i].block.body.to_canonical(),
            )?;
        }
        Ok(())
    }

    fn chain_seeds(c: &Corpus<'_>, blocks: &[StoredBlock], chain: &[u8]) -> Res {
        use targets::{MODE_PICK, MODE_RELINK};
        let with_mode = |mode: u8, rest: &[u8]| -> Vec<u8> {
            std::iter::once(mode).chain(rest.iter().copied()).collect()
        };
        c.put("verify_chain", "whole", &with_mode(0, chain))?;
        c.put(
            "verify_chain",
            "whole-relinked",
            &with_mode(MODE_RELINK, chain),
        )?;
        let first_three: Vec<u8> = blocks[..3].iter().flat_map(|s| s.to_canonical()).collect();
        c.put("verify_chain", "first-three", &with_mode(0, &first_three))?;
        let n = blocks.len() as u8;
        let all: Vec<u8> = (0..n).collect();
        c.put("verify_chain", "pick-all", &with_mode(MODE_PICK, &all))?;
        // Bob's records twice, relinked: a replayed sequence number.
        let replay: Vec<u8> = vec![0, 1, 2, 3, 4, 5, 5];
        c.put(
            "verify_chain",
            "pick-replay",
            &with_mode(MODE_PICK | MODE_RELINK, &replay),
        )?;
        // Alice's first batch before the key rotation, relinked.
        let early: Vec<u8> = vec![0, 1, 2, 4];
        c.put(
            "verify_chain",
            "pick-early-records",
            &with_mode(MODE_PICK | MODE_RELINK, &early),
        )?;
        // A later term (tweak 1) on the admission of bob.
        let tweaked: Vec<u8> = vec![0, 1, 2 | (1 << 5), 3];
        c.put(
            "verify_chain",
            "pick-tweaked",
            &with_mode(MODE_PICK | MODE_RELINK, &tweaked),
        )?;
        Ok(())
    }
}
