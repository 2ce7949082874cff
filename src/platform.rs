//! What differs between operating systems, in one place: how the end of the client is noticed
//! (its death, a signal). Each `cfg` block says why it exists; everything above this module is
//! the same on every platform.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

/// How often the parent process is checked.
#[cfg_attr(not(unix), allow(dead_code))]
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Resolves when the process that started us has exited, even if stdin stays open (a grandchild
/// may hold it): a crashed client must not leave its proxies behind. Unix re-parents an orphan, so
/// the parent id changes. Started by init (parent 1), there is nothing to watch.
pub async fn parent_gone() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        if parent != 1 {
            let mut tick = tokio::time::interval(PARENT_CHECK);
            loop {
                tick.tick().await;
                if std::os::unix::process::parent_id() != parent {
                    return;
                }
            }
        }
    }
    std::future::pending::<()>().await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. A signal that cannot be listened for is logged and
/// never fires: the proxy keeps running (stdin EOF and a vanished client still end it), instead
/// of taking the failed registration for a signal and stopping at once.
pub async fn shutdown_signal() {
    let interrupt = or_forever("Ctrl-C (SIGINT)", tokio::signal::ctrl_c());
    // Unix: SIGTERM is what service managers and MCP clients send to stop a server.
    #[cfg(unix)]
    let terminate = or_forever("SIGTERM", async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        Ok(())
    });
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

/// Waits for `signal`; if listening for it failed, says so once and waits forever.
async fn or_forever(what: &str, signal: impl Future<Output = std::io::Result<()>>) {
    if let Err(e) = signal.await {
        warn!(
            "cannot listen for {what} ({e}); mcp-sidecar still stops when stdin closes or the client exits"
        );
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_signal_registration_is_not_a_signal() {
        let failed = async { Err(std::io::Error::other("no signal driver")) };
        let waited = tokio::time::timeout(Duration::from_secs(3600), or_forever("SIGTERM", failed)).await;
        assert!(waited.is_err(), "a registration failure must not end the run");
        let fired =
            tokio::time::timeout(Duration::from_secs(1), or_forever("SIGTERM", async { Ok(()) })).await;
        assert!(fired.is_ok(), "a real signal ends it");
    }
}
