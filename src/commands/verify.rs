//! `conclave verify --data DIR`: verifies a stopped peer's stored chain offline, with
//! nothing but the key manager's root public key (the certificates ride in the chain).
//!
//! The blocks are streamed from the peer's redb file in bounded chunks through one
//! `ChainVerifier`: memory grows with the membership, not with the chain.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_peer::store::inspect::{BlockFile, InspectError};
use conclave_shared::chain::{BlockBody, ChainFailure, ChainVerifier};
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use serde_json::json;

use crate::cli::VerifyArgs;
use crate::output::event;

/// A progress line goes to stderr at most this often on a long chain.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Exits with code 2 (usage or configuration error), saying why on stderr.
pub(super) fn usage_exit(msg: impl std::fmt::Display) -> ! {
    eprintln!("conclave: {msg}");
    std::process::exit(2)
}

/// The root public key from `--root-key` or the config; unreadable is a usage error.
pub(super) fn load_root(flag: Option<PathBuf>, config: &Config) -> PublicKey {
    let path = flag.unwrap_or_else(|| config.root_key_path());
    PublicKey::load_pem(&path).unwrap_or_else(|e| {
        usage_exit(format!(
            "cannot read the root public key at {} ({e}); pass --root-key FILE",
            path.display()
        ))
    })
}

/// Opens the store of the peer data directory `data`, read-only. A directory that holds no
/// peer store is a usage error; a running peer or an unreadable file is a failure.
pub(super) fn open_blocks(data: &Path) -> anyhow::Result<BlockFile> {
    if !data.is_dir() {
        usage_exit(format!(
            "--data {}: no such directory (give a peer's data directory)",
            data.display()
        ));
    }
    match BlockFile::open(&data.join(conclave_peer::node::STORE_DIR)) {
        Ok(f) => Ok(f),
        Err(InspectError::Missing(p)) => usage_exit(format!(
            "--data {}: there is no peer store ({} is missing); give a peer's data directory",
            data.display(),
            p.display()
        )),
        Err(InspectError::Running(_)) => Err(anyhow::anyhow!(
            "the peer using {} is running; stop it first",
            data.display()
        )),
        Err(e) => Err(e.into()),
    }
}

/// Blocks and records per second.
fn rate(n: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (n as f64 / secs).round() as u64
    } else {
        n
    }
}

pub async fn run(args: VerifyArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let root = load_root(args.root_key.clone(), &config);
    tokio::task::spawn_blocking(move || verify(&args.data, &root, json))
        .await
        .context("the verification task failed")?
}

fn verify(data: &Path, root: &PublicKey, json: bool) -> anyhow::Result<()> {
    let file = open_blocks(data)?;
    let expected = file.last_height()?.map(|h| h.saturating_add(1));
    let started = Instant::now();
    let mut last_progress = started;
    let mut verifier = ChainVerifier::new(root);
    let mut records = 0u64;
    let mut failure: Option<ChainFailure> = None;
    for (i, item) in file.blocks(0).enumerate() {
        let pushed = match item {
            Ok(block) => {
                let n = match &block.block.body {
                    BlockBody::Records(batch) => batch.records.len() as u64,
                    _ => 0,
                };
                verifier.push(&block).map(|()| records += n)
            }
            Err(e) => Err(verifier.fail_read(e)),
        };
        if let Err(f) = pushed {
            failure = Some(f);
            break;
        }
        if i % 256 == 255 && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let done = i as u64 + 1;
            let of = expected.map(|e| format!(" of {e}")).unwrap_or_default();
            eprintln!(
                "verify: {done}{of} blocks ({} blocks/s)",
                rate(done, started.elapsed().as_secs_f64())
            );
        }
    }
    let result = match failure {
        Some(f) => Err(f),
        None => verifier.finish(),
    };
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(s) => {
            let (bps, rps) = (rate(s.count, secs), rate(records, secs));
            event(
                json,
                "verified",
                json!({
                    "count": s.count,
                    "records": records,
                    "head_height": s.head_height,
                    "head_hash": s.head_hash.to_hex(),
                    "seconds": secs,
                    "blocks_per_sec": bps,
                    "records_per_sec": rps,
                }),
                || {
                    format!(
                        "OK: {} blocks ({records} records), head {} {}",
                        s.count,
                        s.head_height,
                        s.head_hash.to_hex()
                    )
                },
            );
            eprintln!(
                "verified {} blocks and {records} records in {secs:.3} s: {bps} blocks/s, \
                 {rps} records/s",
                s.count
            );
            Ok(())
        }
        Err(f) => {
            let reason = f.reason.to_string();
            event(
                json,
                "verify_failed",
                json!({"height": f.height, "reason": reason, "verified": f.height}),
                || format!("FAILED at height {}: {reason}", f.height),
            );
            Err(anyhow::anyhow!(
                "the chain in {} fails verification at height {}: {reason}",
                data.display(),
                f.height
            ))
        }
    }
}
