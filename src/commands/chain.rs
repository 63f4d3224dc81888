//! `conclave chain --data DIR [--from H]`: a stopped peer's blocks, as text or JSON lines,
//! with the records this member can decrypt.
//!
//! Two streaming passes over the stored blocks: the first learns the group keys wrapped to
//! this member's identity (`DIR/identity.pem`) in key-rotation blocks, `history` entries
//! included (under `share_history` a newcomer's rotation brings the keys of records written
//! before it); the second verifies every block under the root key, as `conclave verify`
//! does, and prints those from `--from` on. A block that fails verification stops the
//! listing there (exit 1): nothing after it can be trusted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use conclave_peer::store::inspect::BlockFile;
use conclave_shared::chain::{BlockBody, ChainVerifier, MembershipChange, StoredBlock};
use conclave_shared::config::Config;
use conclave_shared::envelope::{unwrap_key, GroupKey};
use conclave_shared::identity::{Identity, PublicKey};
use serde_json::{json, Value};

use super::verify::{load_root, open_blocks, usage_exit};
use crate::cli::ChainArgs;
use crate::output::event;

pub async fn run(args: ChainArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let root = load_root(args.root_key.clone(), &config);
    tokio::task::spawn_blocking(move || list(&args.data, args.from, &root, json))
        .await
        .context("the listing task failed")?
}

fn list(data: &Path, from: u64, root: &PublicKey, json: bool) -> anyhow::Result<()> {
    let file = open_blocks(data)?;
    let id_path = data.join(conclave_peer::enrol::IDENTITY_FILE);
    let identity =
        if id_path.is_file() {
            Some(Identity::load_pem(&id_path).with_context(|| {
                format!("cannot read this member's identity {}", id_path.display())
            })?)
        } else {
            eprintln!(
                "conclave: {} is missing: no record can be decrypted",
                id_path.display()
            );
            None
        };
    let keys = identity
        .as_ref()
        .map(|me| learn_keys(&file, me))
        .unwrap_or_default();
    if let Some(last) = file.last_height()? {
        if from > last {
            usage_exit(format!("--from {from}: the chain ends at height {last}"));
        }
    }
    let mut verifier = ChainVerifier::new(root);
    for item in file.blocks(0) {
        let pushed = match item {
            Ok(block) => verifier.push(&block).map(|()| block),
            Err(e) => Err(verifier.fail_read(e)),
        };
        let block = pushed.map_err(|f| {
            anyhow::anyhow!(
                "the chain in {} fails verification at height {}: {}; nothing from there on \
                 is shown (run `conclave verify`)",
                data.display(),
                f.height,
                f.reason
            )
        })?;
        if block.height() >= from {
            show(&block, &verifier, &keys, json);
        }
    }
    Ok(())
}

/// The group keys this member holds: every epoch wrapped to its node id, directly or as an
/// earlier epoch's key (`history`). Read errors end the pass: the listing reports them.
fn learn_keys(file: &BlockFile, me: &Identity) -> BTreeMap<u64, GroupKey> {
    let my_id = me.fingerprint().node_id();
    let mut keys = BTreeMap::new();
    for block in file.blocks(0).map_while(Result::ok) {
        let BlockBody::KeyRotation(k) = &block.block.body else {
            continue;
        };
        let wanted = k
            .wrapped
            .iter()
            .filter(|w| w.node_id == my_id)
            .map(|w| (k.epoch, &w.wrapped))
            .chain(
                k.history
                    .iter()
                    .filter(|h| h.node_id == my_id)
                    .map(|h| (h.epoch, &h.wrapped)),
            );
        for (epoch, wrapped) in wanted {
            if keys.contains_key(&epoch) {
                continue;
            }
            match unwrap_key(me, wrapped) {
                Ok(key) => {
                    keys.insert(epoch, key);
                }
                Err(e) => tracing::warn!(epoch, "cannot unwrap a group key meant for us: {e}"),
            }
        }
    }
    keys
}

fn show(b: &StoredBlock, v: &ChainVerifier, keys: &BTreeMap<u64, GroupKey>, json: bool) {
    let header = &b.block.header;
    let leader = v
        .state()
        .and_then(|s| s.member_by_node_id(header.leader))
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| format!("node {:016x}", header.leader));
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(header.time_ms))
        .to_string();
    let hash = b.hash.to_hex();
    let (author, detail, records) = match &b.block.body {
        BlockBody::Records(batch) => {
            let records: Vec<(u64, Option<String>)> = batch
                .records
                .iter()
                .map(|r| {
                    let text = keys
                        .get(&r.epoch)
                        .and_then(|k| r.open(k, &batch.author).ok())
                        .map(|p| String::from_utf8_lossy(&p).into_owned());
                    (r.seq, text)
                })
                .collect();
            (batch.author.clone(), String::new(), records)
        }
        BlockBody::Membership(m) => {
            let d = match &m.change {
                MembershipChange::Admit { cert, role, .. } => {
                    format!("admit {} as {role}", cert.name())
                }
                MembershipChange::Remove { name, .. } => format!("remove {name}"),
                MembershipChange::RoleChange { name, role, .. } => format!("{name} becomes {role}"),
            };
            (leader.clone(), d, Vec::new())
        }
        BlockBody::KeyRotation(k) => (
            leader.clone(),
            format!("epoch {}, {} members", k.epoch, k.wrapped.len()),
            Vec::new(),
        ),
        _ => (leader.clone(), String::new(), Vec::new()),
    };
    let records_json: Vec<Value> = records
        .iter()
        .map(|(seq, text)| json!({"seq": seq, "text": text}))
        .collect();
    event(
        json,
        "block",
        json!({
            "height": header.height,
            "time": time,
            "time_ms": header.time_ms,
            "kind": header.kind.to_string(),
            "hash": hash,
            "prev_hash": header.prev_hash.to_hex(),
            "term": header.term,
            "leader": leader,
            "author": author,
            "detail": detail,
            "records": records_json,
        }),
        || {
            let mut line = format!(
                "{:>6}  {time}  {:<12} {author:<16} {}",
                header.height,
                header.kind.to_string(),
                &hash[..16]
            );
            if !detail.is_empty() {
                line.push_str("  ");
                line.push_str(&detail);
            }
            for (seq, text) in &records {
                line.push_str(&format!(
                    "\n        {author}#{seq}: {}",
                    text.as_deref().unwrap_or("(cannot decrypt)")
                ));
            }
            line
        },
    );
}
