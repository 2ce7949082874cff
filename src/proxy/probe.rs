//! The era probe and what both era bridges share: a `server/discover` of the proxy's own and
//! its verdict, and reading a bridged line again.

use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::debug;

use super::core::{Core, DISCOVER_TIMEOUT, bad_response, unreadable};
use super::exchange;

/// How long the era probe holds a client request before the client hears of it (issue 24.4):
/// usually it answers at once.
const PROBE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
use crate::envelope::{Envelope, LocalError};
use crate::era::{self, Additions, ClientMeta, Era, Verdict};

/// What the `server/discover` probe found.
pub(super) enum Probe {
    /// The server speaks the stateless era only.
    Stateless { discover: Box<RawValue>, meta: ClientMeta },
    /// It speaks the handshake era (perhaps both).
    Speaks(Era),
    /// No answer to judge by (unreachable, refused credentials, a timeout).
    Failed(LocalError),
}

/// A bridged request's line, read again in its task, and its id.
pub(super) fn reread(line: &[u8]) -> Result<(Envelope<'_>, &RawValue), LocalError> {
    let env = Envelope::parse(line).map_err(|_| unreadable())?;
    let id = env.id.ok_or_else(unreadable)?;
    Ok((env, id))
}

/// Asks the server `server/discover` (S-09, T-62), once more after `-32022` with a version it
/// lists.
pub(super) async fn probe(core: &Arc<Core>, mut meta: ClientMeta) -> Probe {
    let limit = core.limits.request_timeout.min(DISCOVER_TIMEOUT);
    // Issue 24.4: a client request held by the probe hears of it if it lasts.
    let host = core.link.up.host();
    super::policy::progress::held_after(
        || format!("the protocol era of {host} (server/discover)"),
        PROBE_GRACE,
    );
    for attempt in 0..2 {
        let (_, id) = core.own_id();
        let body = match era::rewrite_request(
            "server/discover",
            None,
            &id,
            &Additions { meta: Some(&meta), ..Additions::default() },
        ) {
            Ok(body) => body,
            Err(_) => return Probe::Speaks(Era::Handshake),
        };
        match exchange::call(core, body.into(), true, false, limit, "the server/discover probe").await {
            // A server that failed proves nothing about its era.
            Ok(answer) if era::response_error(&answer).is_some_and(|e| e.code == era::INTERNAL_ERROR) => {
                return Probe::Failed(bad_response("the server failed to answer server/discover".into()));
            }
            Ok(answer) => match era::probe_verdict(&answer) {
                Verdict::Stateless(discover) => return Probe::Stateless { discover, meta },
                Verdict::Both => return Probe::Speaks(Era::Both),
                Verdict::RetryWith(version) if attempt == 0 => {
                    debug!(version, "the server asks for another stateless version");
                    meta.version = version;
                }
                _ => return Probe::Speaks(Era::Handshake),
            },
            // A 4xx without a JSON-RPC error: an old server (or the HTTP+SSE transport)
            // that does not know the method (T-60, T-62).
            Err(e)
                if e.http_status
                    .is_some_and(|s| (400..500).contains(&s) && !matches!(s, 401 | 403 | 429)) =>
            {
                return Probe::Speaks(Era::Handshake);
            }
            Err(e) => return Probe::Failed(e),
        }
    }
    Probe::Speaks(Era::Handshake)
}

/// [`probe`], unless a probe failed a moment ago (`None`): see `eras::probe_backoff`.
pub(super) async fn probe_when_due(core: &Arc<Core>, meta: ClientMeta) -> Option<Probe> {
    if !core.eras.probe_due() {
        debug!("the era probe failed a moment ago; not asking again yet");
        return None;
    }
    let probe = probe(core, meta).await;
    core.eras.probed(matches!(probe, Probe::Failed(_)));
    Some(probe)
}
