//! The accept loop every server shares: a cap on concurrent connections (refused at once
//! beyond it, never queued), one task per connection, a child cancellation token each.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Accepts connections on `endpoint` until `shutdown` is cancelled or the endpoint closes,
/// running `handle(incoming, stop)` for each in its own task while fewer than `max` run.
/// Returns the still-running tasks, so the caller decides how to drain them.
pub async fn accept_connections<F, Fut>(
    endpoint: &quinn::Endpoint,
    max: usize,
    shutdown: &CancellationToken,
    mut handle: F,
) -> JoinSet<()>
where
    F: FnMut(quinn::Incoming, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    warn!(remote = %incoming.remote_address(), "too many connections; refusing");
                    incoming.refuse();
                    continue;
                };
                let work = handle(incoming, shutdown.child_token());
                tasks.spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    warn!("connection task failed: {e}");
                }
            }
        }
    }
    tasks
}
