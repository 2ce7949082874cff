//! `--ping-interval SECONDS` (issue 25.6): a `ping` on a handshake-era session that has been
//! idle for that long, so that a load balancer or proxy in front of the server, whose idle
//! timeout would drop the session, sees traffic. Off by default: each ping is a request the
//! server may count against a rate limit (it goes through the gate like any other).
//!
//! Only where there is a session to keep: the handshake era, forwarded as it is (no bridge),
//! with a session id, and not owed (issue 24.5). A ping that fails is logged at debug level and
//! changes nothing; the next request finds out what the server thinks of the session (and
//! renews it on a 404, T-12).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use super::core::Core;
use super::exchange;
use crate::era::Era;

/// Starts the pings of `core`'s session every `every` of idleness, for as long as `core` lives.
pub(super) fn start(core: &Arc<Core>, every: Duration) {
    let weak = Arc::downgrade(core);
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            tokio::time::sleep(every).await;
            let Some(core) = weak.upgrade() else { return };
            if core.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let requests = core.ledger.counts().0;
            let idle = seen == Some(requests);
            seen = Some(requests);
            if idle && has_a_session(&core) {
                ping(&core, every).await;
            }
        }
    });
}

/// Whether there is a handshake-era session of the client's own to keep.
fn has_a_session(core: &Core) -> bool {
    core.eras.server() == Some(Era::Handshake)
        && core.inbound.get().is_none()
        && !core.link.owes_handshake()
        && core.link.up.session().id.is_some()
}

/// One `ping` (an own id; its answer stays here), within `every` or `--request-timeout`.
async fn ping(core: &Arc<Core>, every: Duration) {
    let (_, id) = core.own_id();
    let line = Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"ping"}}"#));
    let limit = every.min(core.limits.request_timeout);
    match exchange::call(core, line, true, false, limit, "ping").await {
        Ok(_) => debug!("ping: the session is alive"),
        Err(e) => debug!("ping: {}", e.message),
    }
}
