//! `conclave status`: the group as the proxy sees it. Needs no identity of its own.

use std::net::SocketAddr;

use anyhow::Context;
use conclave_proxy::client::ProxyClient;
use conclave_shared::cert::Role;
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use conclave_shared::quic::{MemberTrust, RevokedSerials};
use serde_json::json;

use crate::cli::StatusArgs;
use crate::output::event;

pub async fn run(args: StatusArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let root_path = args
        .root_key
        .clone()
        .unwrap_or_else(|| config.root_key_path());
    let root = PublicKey::load_pem(&root_path).with_context(|| {
        format!(
            "cannot read the root public key at {} (pass --root-key FILE)",
            root_path.display()
        )
    })?;
    let addr = args.proxy.unwrap_or(config.proxy.addr);
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let trust = MemberTrust::new(root, &[Role::Proxy], RevokedSerials::new());
    let client = ProxyClient::connect(&endpoint, addr, None, trust).await?;
    let s = client.status().await?;
    client.close();
    let leader = s.leader.as_ref();
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            let mismatches: Vec<_> = m
                .head_mismatches
                .iter()
                .map(|x| json!({"peer": x.peer, "height": x.height, "ours": x.ours, "theirs": x.theirs}))
                .collect();
            json!({"name": m.name, "role": m.role, "addr": m.addr, "reachable": m.reachable,
                   "height": m.head_height, "hash": m.head_hash, "head_mismatches": mismatches})
        })
        .collect();
    event(
        json,
        "status",
        json!({
            "group": s.group_id.map(hex_id),
            "leader": leader.map(|l| l.name.clone()),
            "term": leader.map(|l| l.term),
            "members": members,
        }),
        || {
            let mut out = match leader {
                Some(l) => format!("leader {} at {} (term {})\n", l.name, l.addr, l.term),
                None => "no leader known\n".to_owned(),
            };
            for m in &s.members {
                out.push_str(&format!(
                    "  {:<20} {:<8} {:<22} {:<11} height {}  {}\n",
                    m.name,
                    m.role,
                    m.addr,
                    if m.reachable {
                        "reachable"
                    } else {
                        "unreachable"
                    },
                    m.head_height
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "-".into()),
                    m.head_hash
                        .as_deref()
                        .map(|h| &h[..h.len().min(16)])
                        .unwrap_or("-"),
                ));
                for x in &m.head_mismatches {
                    out.push_str(&format!(
                        "    head_mismatch: {} reports {} at height {}: ours {} theirs {}\n",
                        m.name,
                        x.peer,
                        x.height,
                        x.ours.get(..16).unwrap_or(&x.ours),
                        x.theirs.get(..16).unwrap_or(&x.theirs),
                    ));
                }
            }
            out.trim_end().to_owned()
        },
    );
    Ok(())
}

fn hex_id(id: [u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
