//! `conclave proxy`: the one known address.

use std::time::Duration;

use anyhow::Context;
use conclave_proxy::{Proxy, ProxyOptions};
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use serde_json::json;

use crate::cli::ProxyArgs;
use crate::output::event;

/// How long a first start waits for the key manager before giving up (exit 1).
const REGISTER_DEADLINE: Duration = Duration::from_secs(120);

pub async fn run(args: ProxyArgs, json: bool, config: Config) -> anyhow::Result<()> {
    let root_path = args
        .root_key
        .clone()
        .unwrap_or_else(|| config.root_key_path());
    let shutdown = super::shutdown_on_signals();
    // Either may start first: wait for the key manager to publish its root key.
    let root = wait_for_root_key(&root_path, &shutdown).await?;
    let mut opts = ProxyOptions::new(args.data.clone().unwrap_or_else(|| config.proxy_data()));
    opts.key_bits = config.identity.key_bits;
    opts.invite = args.invite.clone();
    let mut proxy = tokio::task::spawn_blocking(move || Proxy::open(opts)).await??;
    let listen = args.listen.unwrap_or(config.proxy.addr);
    let endpoint = super::bind(listen)?;
    let km = args.keymanager.unwrap_or(config.keymanager.addr);
    tokio::select! {
        r = proxy.register(&endpoint, km, root, REGISTER_DEADLINE) => { r?; }
        _ = shutdown.cancelled() => return Ok(()),
    }
    let addr = endpoint.local_addr()?;
    event(
        json,
        "listening",
        json!({"role": "proxy", "addr": addr.to_string()}),
        || format!("proxy listening on {addr}"),
    );
    proxy.run(endpoint, shutdown).await?;
    Ok(())
}

async fn wait_for_root_key(
    path: &std::path::Path,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<PublicKey> {
    let until = tokio::time::Instant::now() + REGISTER_DEADLINE;
    loop {
        match PublicKey::load_pem(path) {
            Ok(k) => return Ok(k),
            Err(e) if tokio::time::Instant::now() > until => {
                return Err(e).with_context(|| {
                    format!(
                        "no root public key at {} (start the key manager, or pass --root-key FILE)",
                        path.display()
                    )
                })
            }
            Err(e) => tracing::debug!("waiting for the root public key: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.cancelled() => anyhow::bail!("stopped before the key manager appeared"),
        }
    }
}
