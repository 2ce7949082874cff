//! The proxy between stdin and the server: each line read goes down once, through the era
//! adapter chosen once for the run, and its answer comes back once.
//!
//! [`Proxy`] is what the read loop owns: the shared `core::Core` and the era adapter
//! (`Front`), set once the client's first request has settled the eras. The stages, each in
//! its own file and each owning its state (ARCHITECTURE.md has the map):
//!
//! - `router` turns a line of the same era into a ledger entry and a task; `exchange` runs that
//!   task against the server; `core` delivers what comes back; `ledger` is the only place an id
//!   is answered.
//! - `link` (gate, retries, token and session renewal), `reply` (reading bodies), `streams` (the
//!   GET stream, HTTP+SSE), `room` (bytes in flight), `policy/` (per-message policies), `eras`
//!   and `probe` (what is known of the server's era), `bridge` and `reverse` (the adapters).
//!
//! Children never import this file; what they share lives in `core` and the leaves.

mod bridge;
mod core;
mod eras;
mod exchange;
mod keepalive;
mod ledger;
mod link;
mod policy;
mod probe;
mod reply;
mod reverse;
mod room;
mod router;
mod streams;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, trace};

use crate::envelope::{self, Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError};
use crate::era::{self, ClientMeta, Era};
use crate::ratelimit::Gate;
use crate::stdio::{Frame, Outbox};
use crate::upstream::Upstream;
use core::Core;
use probe::Probe;

pub use link::WaitObserver;
pub use policy::filter::HiddenBy;
pub use policy::pins::{Change, PinFile};
pub use room::IN_FLIGHT_MESSAGES;

/// How long shutdown waits for requests in flight before answering them with an error.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the closing DELETE may take (T-22); shutdown must finish within 2 s.
const DELETE_TIMEOUT: Duration = Duration::from_millis(400);
/// The whole shutdown, from the moment the end was seen (stdin's end, a signal): README promises
/// an exit within 2 s, whatever the network does (issue 23.4).
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);

/// The era adapter of the run, chosen once: the client's own era forwarded as it is (`Same`, the
/// hot path), or one of the two bridges.
enum Front {
    Same,
    Forward(Arc<bridge::Bridge>),
    Reverse(Arc<reverse::Reverse>),
}

/// A client request the eras are being settled on, inline (issue 21.1): if the run ends before it
/// is answered (stdin's end, a signal), dropping this puts it in the ledger, whose requests
/// shutdown answers: every request read gets exactly one response.
struct Owed<'a> {
    core: &'a Core,
    id: Option<(IdKey, Box<RawValue>)>,
}

impl<'a> Owed<'a> {
    fn new(core: &'a Core, line: &[u8]) -> Self {
        let env = Envelope::parse(line).ok().filter(|env| env.kind() == Ok(Kind::Request));
        let id = env.and_then(|env| Some((env.id_key()?, env.id?.to_owned())));
        Owed { core, id }
    }

    /// Answered, or handed on to the way every other request goes.
    fn paid(mut self) {
        self.id = None;
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        if let Some((key, id)) = self.id.take() {
            self.core.ledger.owe(key, id);
        }
    }
}

/// One proxy run: the shared core, and the era adapter once the eras are settled.
pub struct Proxy {
    core: Arc<Core>,
    front: OnceLock<Front>,
}

impl Proxy {
    /// A proxy that forwards to `up` and writes to `out`, set up as `config` says.
    pub fn new(up: Upstream, out: Outbox, gate: Gate, config: &crate::config::Config) -> Arc<Self> {
        let core = Core::new(up, out, gate, config);
        let weak = Arc::downgrade(&core);
        core.link.on_paid(Box::new(move || {
            if let Some(core) = weak.upgrade() {
                exchange::refresh_kept(&core);
            }
        }));
        if let Some(every) = config.ping_interval.filter(|_| !config.one_shot) {
            keepalive::start(&core, every);
        }
        Arc::new(Proxy { core, front: OnceLock::new() })
    }

    /// Calls `observe` for each rate-limit wait instead of logging it.
    pub fn observe_waits(&self, observe: WaitObserver) {
        self.core.link.observe_waits(observe);
    }

    /// The transport in use, for people.
    pub fn transport_name(&self) -> &'static str {
        if self.core.link.up.is_legacy() { "HTTP+SSE (2024-11-05)" } else { "Streamable HTTP" }
    }

    /// Whether an OAuth token is in use: `None` when OAuth is not the credential.
    pub fn signed_in(&self) -> Option<bool> {
        self.core.link.up.oauth().map(|o| o.header().is_some())
    }

    /// What the rate limits did so far, for people (`None` when they did nothing).
    pub fn rate_limit_summary(&self) -> Option<String> {
        self.core.rate_limit_summary()
    }

    /// Records the rate-limit headers of successful responses too (for `check`).
    pub fn record_limits(&self) {
        self.core.link.record_limits();
    }

    /// The rate-limit headers last seen: on a success, else on a 429.
    pub fn rate_limit_headers(&self) -> Vec<(String, String)> {
        self.core.link.rate_limit_headers()
    }

    /// Whether the client's `initialize` was answered, only ever with errors: no MCP session
    /// started (issue 23.1: the exit status says so).
    pub fn handshake_failed(&self) -> bool {
        self.core.ledger.handshake_failed()
    }

    /// The server's era as learned, and whether a bridge is in use (for `check`).
    pub fn eras(&self) -> (Option<Era>, bool) {
        (self.core.eras.server(), matches!(self.front.get(), Some(Front::Forward(_) | Front::Reverse(_))))
    }

    /// Whether the server also takes the stateless era, asked with a `server/discover` probe
    /// (for `check`, which reports both eras; the proxy itself never asks a server that took the
    /// handshake). `None`: no answer to judge by.
    pub async fn takes_the_stateless_era(&self) -> Option<bool> {
        match probe::probe(&self.core, ClientMeta::from_meta(None, era::FIRST_MODERN)).await {
            Probe::Stateless { .. } | Probe::Speaks(Era::Both | Era::Stateless) => Some(true),
            Probe::Speaks(Era::Handshake) => Some(false),
            Probe::Failed(_) => None,
        }
    }

    /// What the bridge did, for people (`None`: no bridge).
    pub fn bridge_summary(&self) -> Option<String> {
        match self.front.get()? {
            Front::Same => None,
            Front::Forward(bridge) => Some(bridge.summary()),
            Front::Reverse(reverse) => Some(reverse.summary()),
        }
    }

    /// Handles one frame read from stdin.
    pub async fn dispatch(&self, frame: Frame) {
        match frame {
            Frame::Line(line) => self.dispatch_line(line).await,
            Frame::TooLong { len, prefix } => {
                let id = envelope::sniff_id(&prefix).and_then(|id| RawValue::from_string(id).ok());
                let err = LocalError::new(
                    INVALID_REQUEST,
                    ErrorKind::MessageTooLarge,
                    format!(
                        "the message is {len} bytes, more than --max-message-bytes ({}) allows: raise the limit or send less",
                        self.core.limits.max_message
                    ),
                );
                self.core.ledger.refuse(id.as_deref(), &err).await;
            }
        }
    }

    /// One line, through the era adapter: one match on the same-era path.
    async fn dispatch_line(&self, line: Bytes) {
        trace!(body = %String::from_utf8_lossy(&line), "stdin");
        // Issue 24: a hidden or unlisted tool's call is answered before any adapter sees it, a
        // renamed one goes on under the server's name; nothing is read here when no filter or
        // name is given.
        let same = matches!(self.front.get(), Some(Front::Same));
        let line = if self.core.policies.reads_lines(same) {
            let seen = self.core.policies.client_line(line);
            for answer in seen.answers {
                self.core.ledger.write(answer).await;
            }
            if seen.relist {
                self.core.policies.refresh_pins().await;
            }
            let Some(line) = seen.line else { return };
            line
        } else {
            line
        };
        match self.front.get() {
            Some(Front::Same) => router::dispatch_plain(&self.core, line).await,
            Some(Front::Forward(bridge)) => bridge::dispatch_bridged(&self.core, bridge, line).await,
            Some(Front::Reverse(reverse)) => reverse::dispatch_reverse(&self.core, reverse, line).await,
            None => {
                // Issue 24.4: a request the era probe holds hears of it if it lasts (its track
                // lives on into the request's own).
                let track = self.core.policies.track_of(&line);
                let settled = match &track {
                    Some(track) => {
                        let write = |note: Vec<u8>| self.core.ledger.write(note.into());
                        Box::pin(policy::progress::while_held(track, self.settle(&line), write)).await
                    }
                    None => self.settle(&line).await,
                };
                if !settled {
                    router::dispatch_plain(&self.core, line).await;
                }
                drop(track);
            }
        }
    }

    /// Settles the eras at the client's first request (not a `ping`): a handshake-era client's
    /// `initialize`, or a stateless-era request; installs the adapter that follows. Returns
    /// whether the line was answered (or taken by a bridge). Nothing is settled while no answer
    /// proves an era: the next first request tries again.
    async fn settle(&self, line: &Bytes) -> bool {
        let owed = Owed::new(&self.core, line);
        let (answered, front) = match first_request(line) {
            Some(true) => {
                let (answered, bridge) = bridge::settle_era(&self.core, line).await;
                (answered, bridge.map(Front::Forward))
            }
            // A client that opens with another request speaks the stateless era (or skips the
            // handshake): bridged if the server speaks only the handshake era.
            Some(false) => {
                let (answered, reverse) = reverse::settle_stateless_client(&self.core, line).await;
                (answered, reverse.map(Front::Reverse))
            }
            None => (false, None),
        };
        owed.paid();
        if let Some(front) = front.or_else(|| self.core.eras.is_settled().then_some(Front::Same)) {
            let _ = self.front.set(front);
        }
        answered
    }

    /// Stops everything in order (S-06, T-22): waits up to [`DRAIN_TIMEOUT`] for requests in
    /// flight, answers the rest with an error, ends the session with DELETE.
    pub async fn shutdown(&self, drain: bool, since: Instant) {
        let core = &self.core;
        // Every step below ends by `end` (issue 23.4: the time a dispatch in line had after
        // stdin's end counts, as do the lease's release and the DELETE).
        let after = |d: Duration| since.checked_add(d).unwrap_or(since);
        let end = after(SHUTDOWN_BUDGET);
        core.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
        core.tasks.close();
        // Issue 10.3: the stream for server messages stays open while requests drain: answers
        // of the HTTP+SSE transport, and of requests the server accepted with 202, come on it.
        if drain && timeout_at(after(DRAIN_TIMEOUT), core.tasks.wait()).await.is_err() {
            info!("shutting down with requests still in flight; answering them with an error");
        }
        core.streams.stop();
        if let Some(Front::Forward(bridge)) = self.front.get() {
            bridge.stop_listening();
        }
        // Within the 2 s the whole shutdown has, whatever the client does with stdout.
        core.ledger.drain(end).await;
        // Pins being written reach the disk (issue 24.3), within the same 2 s.
        let _ = timeout_at(end, core.policies.flush()).await;
        // The rate-limit units this process leased and did not use go back (bounded: exit must
        // not wait on another process's lock).
        let release = crate::retry::deadline_after(Duration::from_millis(500));
        let _ = timeout_at(release.min(end), core.link.gate.release()).await;
        self.close_session(end).await;
        if let Some(summary) = core.rate_limit_summary() {
            info!("rate limits: {summary}");
        }
        if let Some(summary) = self.bridge_summary() {
            info!("protocol bridge: {summary}");
        }
        let (requests, errors) = core.ledger.counts();
        debug!(requests, errors, "proxy stopped");
        if errors > 0 {
            info!(
                "{errors} of {requests} requests to {} were answered with an error by mcp-sidecar",
                core.link.up.shown_url()
            );
        }
    }

    /// Ends the session with DELETE (T-22), under the same rate-limit rules, within the shutdown
    /// budget: only if the rate limit lets it through at once (a session the server cannot be
    /// told about expires by itself, and exit must not wait for the next window).
    async fn close_session(&self, end: Instant) {
        let link = &self.core.link;
        if link.spares_the_delete() {
            debug!("not closing the session: a one-shot command's requests count against a rate limit");
            return;
        }
        let Some(delete) = link.up.delete_session() else { return };
        let end = end.min(crate::retry::deadline_after(DELETE_TIMEOUT));
        let admitted =
            timeout_at(end, link.gate.admit(Duration::ZERO, crate::ratelimit::Use::Background, |_, _| {}));
        match admitted.await {
            Ok(Ok(admitted)) => match timeout_at(end, delete.send()).await {
                Ok(Ok(r)) => {
                    debug!(status = r.status().as_u16(), "session closed");
                    let _ = timeout_at(end, link.answered(&admitted, r.headers())).await;
                }
                Ok(Err(e)) => debug!(error = %e.without_url(), "closing the session failed"),
                Err(_) => debug!("closing the session timed out"),
            },
            _ => debug!("not closing the session: the rate limit holds requests past the shutdown budget"),
        }
    }
}

/// For a request, whether it is `initialize`; `None` for anything else (notifications,
/// responses, batches, junk).
fn first_request(line: &[u8]) -> Option<bool> {
    let env = Envelope::parse(line).ok()?;
    // `ping` may come before `initialize` (S-11) and says nothing about the era.
    let method = env.method.as_deref()?;
    (env.kind() == Ok(Kind::Request) && method != "ping").then(|| method == "initialize")
}
