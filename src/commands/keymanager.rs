//! `conclave keymanager` and its admin actions.

use std::net::SocketAddr;

use anyhow::Context;
use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::{Keymanager, KeymanagerOptions, ADMIN_TOKEN_FILE};
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use serde_json::json;

use crate::cli::{AdminAction, AdminArgs, KeymanagerArgs};
use crate::output::event;

pub async fn run(args: KeymanagerArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let data_dir = args
        .data
        .clone()
        .unwrap_or_else(|| config.keymanager_data());
    let root_key = args
        .root_key
        .clone()
        .unwrap_or_else(|| config.root_key_path());
    match args.action {
        None => serve(&args, json, &config, data_dir, root_key).await,
        Some(action) => admin(action, json, &config, &data_dir, &root_key).await,
    }
}

async fn serve(
    args: &KeymanagerArgs,
    json: bool,
    config: &Config,
    data_dir: std::path::PathBuf,
    root_key: std::path::PathBuf,
) -> anyhow::Result<()> {
    let opts = KeymanagerOptions {
        data_dir,
        mode: args.mode.unwrap_or(config.keymanager.mode),
        root_public_key: root_key,
        key_bits: config.identity.key_bits,
    };
    let km = tokio::task::spawn_blocking(move || Keymanager::open(&opts)).await??;
    let listen = args.listen.unwrap_or(config.keymanager.addr);
    let endpoint = super::bind(listen)?;
    let addr = endpoint.local_addr()?;
    let fp = km.root_fingerprint();
    event(
        json,
        "listening",
        json!({"role": "keymanager", "addr": addr.to_string(), "fingerprint": fp.to_hex()}),
        || format!("key manager listening on {addr} (root key fingerprint {fp})"),
    );
    km.run(endpoint, super::shutdown_on_signals()).await?;
    Ok(())
}

async fn connect(
    config: &Config,
    admin: &AdminArgs,
    root_key: &std::path::Path,
) -> anyhow::Result<KeymanagerClient> {
    let root = PublicKey::load_pem(root_key)
        .with_context(|| "cannot read the key manager's root public key (pass --root-key FILE)")?;
    let addr: SocketAddr = admin.keymanager.unwrap_or(config.keymanager.addr);
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    Ok(KeymanagerClient::connect(&endpoint, addr, &root).await?)
}

fn admin_token(admin: &AdminArgs, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = admin
        .admin_token
        .clone()
        .unwrap_or_else(|| data_dir.join(ADMIN_TOKEN_FILE));
    Ok(conclave_keymanager::read_admin_token(&path)?)
}

async fn admin(
    action: AdminAction,
    json: bool,
    config: &Config,
    data_dir: &std::path::Path,
    root_key: &std::path::Path,
) -> anyhow::Result<()> {
    match action {
        AdminAction::Invite { name, admin } => {
            let token = admin_token(&admin, data_dir)?;
            let client = connect(config, &admin, root_key).await?;
            let invite = client.invite(&token, &name).await?;
            client.close();
            event(
                json,
                "invited",
                json!({"name": name, "token": invite}),
                || format!("invitation for {name}: {invite}"),
            );
        }
        AdminAction::Revoke { name, admin } => {
            let token = admin_token(&admin, data_dir)?;
            let client = connect(config, &admin, root_key).await?;
            let r = client.revoke(&token, &name).await?;
            client.close();
            let serial = r.statement.serial;
            event(
                json,
                "revoked",
                json!({"name": name, "serial": serial}),
                || format!("revoked {name} (certificate serial {serial})"),
            );
        }
        AdminAction::List { admin } => {
            let client = connect(config, &admin, root_key).await?;
            let entries = client.list().await?;
            client.close();
            if !json {
                println!(
                    "{:<24} {:<7} {:>6}  {:<16}  status",
                    "name", "role", "serial", "fingerprint"
                );
            }
            for e in entries {
                let c = &e.cert;
                let fp = c.fingerprint().to_hex();
                event(
                    json,
                    "member",
                    json!({"name": c.name(), "role": c.role().to_string(), "serial": c.serial(),
                           "fingerprint": fp, "revoked": e.revoked}),
                    || {
                        format!(
                            "{:<24} {:<7} {:>6}  {:<16}  {}",
                            c.name(),
                            c.role().to_string(),
                            c.serial(),
                            &fp[..16],
                            if e.revoked { "revoked" } else { "active" }
                        )
                    },
                );
            }
        }
    }
    Ok(())
}
