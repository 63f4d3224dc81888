//! One module a subcommand; each turns flags and config into a library call.

mod bench;
mod chain;
pub mod demo;
mod keymanager;
mod peer;
mod proxy;
mod status;
mod verify;

use conclave_shared::config::Config;
use tokio_util::sync::CancellationToken;

use crate::cli::{Args, Command};

pub async fn dispatch(args: Args, config: Config) -> anyhow::Result<()> {
    match args.command {
        Command::Keymanager(km) => keymanager::run(km, args.json, config).await,
        Command::Proxy(p) => proxy::run(p, args.json, config).await,
        Command::Peer(p) => peer::run(p, args.json, config).await,
        Command::Status(s) => status::run(s, args.json, config).await,
        Command::Verify(v) => verify::run(v, args.json, config).await,
        Command::Chain(c) => chain::run(c, args.json, config).await,
        // The demo supervises child processes with blocking I/O: off the async runtime.
        Command::Bench(b) => bench::run(b, args.json).await,
        Command::Demo(d) => tokio::task::spawn_blocking(move || demo::run(d)).await?,
    }
}

/// A QUIC endpoint bound to `listen`, with an error that says what to do when the port is
/// taken.
pub fn bind(listen: std::net::SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::client(listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen on {listen}: the port is in use by another process; stop it, or choose another address (--listen, or the config file)"
            )
        } else {
            anyhow::anyhow!("cannot listen on {listen}: {e}")
        }
    })
}

/// Whether this run is a person's console on a terminal (logs then default to warnings).
pub fn quiet_console(args: &Args) -> bool {
    matches!(args.command, Command::Peer(_)) && peer::interactive(args.json)
}

/// A token cancelled by SIGINT or SIGTERM, so servers stop cleanly and exit 0.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                tracing::warn!("cannot listen for SIGTERM");
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received; shutting down");
        t.cancel();
    });
    token
}
