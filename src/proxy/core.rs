//! The parts every stage shares, each owning its own state: the ledger (ids and stdout), the
//! link (the way to the server), the streams for server messages, the room in flight, the
//! policies and what is known of the eras; and the one path server messages take back to the
//! client ([`Core::deliver`]). An era adapter sees server messages only through [`Inbound`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace};

use crate::envelope::{self, Envelope, ErrorKind, IdKey, Kind, LocalError, UPSTREAM_ERROR};
use crate::ratelimit::Gate;
use crate::retry;
use crate::stdio::Outbox;
use crate::upstream::Upstream;

use super::eras::Eras;
use super::ledger::{Delivered, Ledger};
use super::link::Link;
use super::policy::Policies;
use super::room::Room;
use super::streams::{self, Streams};

/// `server/discover` probes must be answered soon, whatever the server does (S-09).
pub(super) const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an era adapter (a bridge) sees of the server's messages, and what it keeps.
pub(super) trait Inbound: Send + Sync {
    /// Whether a server notification of `method` is the adapter's, not the client's.
    fn keeps(&self, _method: &str) -> bool {
        false
    }
    /// Whether server requests are the adapter's.
    fn takes_requests(&self) -> bool {
        false
    }
    /// Takes a server request that came on the reply stream of request `owner`.
    fn request(&self, _core: &Arc<Core>, _owner: Option<&IdKey>, _bytes: &Bytes) {}
    /// Whether the adapter waits for an answer to one of the proxy's own ids.
    fn waits_for(&self, _key: &IdKey) -> bool {
        false
    }
}

/// The per-message limits of the run (plain settings, copied down from the config).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `--request-timeout`: how long the server has for each request.
    pub(super) request_timeout: Duration,
    /// `--max-message-bytes`: the largest message either way.
    pub(super) max_message: usize,
}

/// The shared state of one proxy run.
pub(super) struct Core {
    /// The way to the server: gate, retries, token and session renewal.
    pub(super) link: Link,
    /// The requests in flight and stdout: who answers each id.
    pub(super) ledger: Ledger,
    /// The tasks of requests and one-way messages, waited for at shutdown.
    pub(super) tasks: TaskTracker,
    /// `--request-timeout` and `--max-message-bytes`.
    pub(super) limits: Limits,
    /// The stream for server messages.
    pub(super) streams: Streams,
    pub(super) shutting_down: AtomicBool,
    /// Room for the bytes of messages in flight, [`super::room::IN_FLIGHT_MESSAGES`] × `max_message`.
    pub(super) room: Room,
    /// What is known of the server's era (the adapter itself is the `Proxy`'s `Front`).
    pub(super) eras: Eras,
    /// The era adapter's view of server messages, once a bridge is in use.
    pub(super) inbound: OnceLock<Arc<dyn Inbound>>,
    /// What is done to messages beyond forwarding them.
    pub(super) policies: Policies,
}

impl Core {
    /// A proxy that forwards to `up` and writes to `out`, set up as `config` says.
    pub(super) fn new(up: Upstream, out: Outbox, gate: Gate, config: &crate::config::Config) -> Arc<Core> {
        let (request_timeout, max_message) = (config.request_timeout, config.max_message_bytes);
        // Remembered per endpoint, not per origin: two endpoints of one host may be of two eras.
        let era_cache =
            config.state_dir.as_deref().map(|dir| crate::era::EraCache::new(dir, config.url.as_str()));
        let proxy = Arc::new(Core {
            eras: Eras::new(config.protocol_era, era_cache),
            policies: Policies::new(config),
            room: Room::new(max_message),
            inbound: OnceLock::new(),
            link: Link::new(up, gate, config),
            ledger: Ledger::new(out),
            tasks: TaskTracker::new(),
            limits: Limits { request_timeout, max_message },
            streams: Streams::new(max_message, request_timeout, !config.one_shot),
            shutting_down: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&proxy);
        proxy.link.on_renewed(Box::new(move || {
            if let Some(proxy) = weak.upgrade() {
                Streams::restart_get(&proxy);
            }
        }));
        proxy
    }

    /// A fresh id for a request of the proxy's own, and its key.
    pub(super) fn own_id(&self) -> (IdKey, String) {
        loop {
            let n = self.eras.next_own_id();
            let id = format!("mcp-sidecar-{n}");
            let key = IdKey::Str(id.clone());
            if !self.ledger.is_open(&key) && !self.inbound.get().is_some_and(|i| i.waits_for(&key)) {
                return (key, id);
            }
        }
    }

    /// What the rate limits did so far, for people (`None` when they did nothing): requests the
    /// server's budget held and for how long, 429s still received, waits, requests sent again
    /// (issue 11).
    pub(super) fn rate_limit_summary(&self) -> Option<String> {
        let s = &self.link.gate.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (limited, waits, held, probes) =
            (load(&s.limited), load(&s.waits), load(&s.budget_waits), load(&s.probes));
        if limited == 0 && waits == 0 && probes == 0 {
            return None;
        }
        let human = |ms: u64| retry::human(Duration::from_millis(ms));
        let mut parts = vec![
            format!("{limited} answers with HTTP 429"),
            format!("{waits} waits totalling {}", human(load(&s.waited_ms))),
        ];
        if held > 0 {
            parts.push(format!(
                "{held} of them held by the server's budget for {} (instead of 429s)",
                human(load(&s.budget_waited_ms))
            ));
        }
        if probes > 0 {
            parts.push(format!("{probes} requests let through as probes past a long deadline"));
        }
        parts.push(format!("{} requests sent again", load(&s.retries)));
        Some(parts.join(", "))
    }

    /// Whether the run is ending.
    pub(super) fn closing(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Writes one message from the server to stdout if it is JSON-RPC and, for a response, if
    /// its request is still pending. The single place where pending requests are answered.
    pub(super) async fn deliver(self: &Arc<Self>, bytes: Bytes) -> Delivered {
        self.deliver_from(bytes, None).await
    }

    /// [`Core::deliver`] for a message that came on the reply stream of request `owner` (the
    /// reverse bridge ties a server request to the request it belongs to).
    pub(super) async fn deliver_from(self: &Arc<Self>, bytes: Bytes, owner: Option<&IdKey>) -> Delivered {
        trace!(body = %String::from_utf8_lossy(&bytes), "from server");
        // Validated as sent: a raw line break inside a string is invalid JSON and must not be
        // "repaired" by the flattening below, which is only sound for valid JSON.
        let env = match Envelope::parse(&bytes) {
            Ok(env) => env,
            Err(_) => {
                self.ledger.report(&bad_response(
                    "the server sent a message that is not a JSON-RPC object; it was dropped".into(),
                ));
                return Delivered::Dropped;
            }
        };
        let delivered = match env.kind() {
            Ok(Kind::Response) => return self.deliver_response(env, &bytes).await,
            Ok(Kind::Notification) if env.method.as_deref() == Some("notifications/progress") => {
                drop(env);
                // Issue 24.4: kept above the values of the sidecar's own notifications.
                let bytes = self.policies.progress.server(&bytes).map_or(bytes, Bytes::from);
                self.ledger.write(envelope::one_line(bytes)).await;
                return Delivered::Progress;
            }
            // The listen stream's acknowledgement is the bridge's business (T-33).
            Ok(Kind::Notification)
                if self.inbound.get().is_some_and(|i| i.keeps(env.method.as_deref().unwrap_or_default())) =>
            {
                return Delivered::Dropped;
            }
            Ok(Kind::Request) if self.inbound.get().is_some_and(|i| i.takes_requests()) => {
                drop(env);
                if let Some(inbound) = self.inbound.get() {
                    inbound.request(self, owner, &bytes);
                }
                return Delivered::Dropped;
            }
            Ok(Kind::Notification) => {
                self.policies.observe(env.method.as_deref().unwrap_or_default());
                Delivered::Other
            }
            Ok(_) => Delivered::Other,
            Err(e) => {
                self.ledger.report(&bad_response(format!(
                    "the server sent an invalid JSON-RPC message ({e}); it was dropped"
                )));
                return Delivered::Dropped;
            }
        };
        drop(env);
        self.ledger.write(envelope::one_line(bytes)).await;
        delivered
    }

    /// A response: handed over if its request is still pending, through the policies its
    /// hooks name.
    async fn deliver_response(&self, env: Envelope<'_>, bytes: &Bytes) -> Delivered {
        let Some(key) = env.id_key() else { return Delivered::Dropped };
        let (initialize, captured, hooks) = match self.ledger.peek(&key) {
            Some(open) => (open.flags.initialize, open.captured, open.hooks),
            None => {
                debug!(id = %env.id.map_or("", RawValue::get), "response for no pending request dropped (cancelled, answered or unknown)");
                return Delivered::Dropped;
            }
        };
        // Only an `initialize` result is read (for the negotiated version): a 1 MB tool
        // result is not parsed a second time.
        let version = env.result.filter(|_| initialize).and_then(|r| {
            serde_json::from_str::<envelope::Params>(r.get()).ok()?.protocol_version.map(|v| v.into_owned())
        });
        if initialize {
            self.ledger.handshake(env.result.is_some());
        }
        drop(env);
        // Issue 24.5: kept as the server sent it; a list served stale that changed is
        // announced after its answer.
        let changed = hooks.keep.filter(|m| self.policies.kept.as_ref().is_some_and(|k| k.record(m, bytes)));
        let message = self.policies.answer(&hooks, bytes.clone());
        let delivered = self.hand_over(&key, message, captured, version).await;
        if let Some(list) = changed.and_then(|m| m.strip_suffix("/list")) {
            info!(
                "the server's {list} differ from those kept; the client is told (notifications/{list}/list_changed)"
            );
            let note = format!(r#"{{"jsonrpc":"2.0","method":"notifications/{list}/list_changed"}}"#);
            self.ledger.write(note.into()).await;
        }
        delivered
    }

    /// Hands the answer `message` of the pending request `key` over (to stdout, or to whoever
    /// captures it) through the ledger; `version`: what an `initialize` result negotiated, set
    /// before the answer is queued.
    pub(super) async fn hand_over(
        &self,
        key: &IdKey,
        message: Bytes,
        captured: bool,
        version: Option<String>,
    ) -> Delivered {
        self.ledger
            .settle(key, message, captured, || {
                if let Some(version) = version {
                    debug!(version, "protocol version negotiated");
                    self.link.up.set_protocol_version(&version);
                }
            })
            .await
    }

    /// Delivers a JSON body or an SSE event's data: one message, or a 2025-03-26 batch of them
    /// (J-07; in an SSE event too, issue 10.5). Returns whether one of them was a progress
    /// notification.
    pub(super) async fn deliver_body(self: &Arc<Self>, body: Bytes) -> bool {
        self.deliver_body_from(body, None).await
    }

    /// [`Core::deliver_body`] for a body that came on the reply stream of request `owner`.
    pub(super) async fn deliver_body_from(self: &Arc<Self>, body: Bytes, owner: Option<&IdKey>) -> bool {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
            return self.deliver_from(body, owner).await == Delivered::Progress;
        }
        let members: Vec<Bytes> = match serde_json::from_slice::<Vec<&RawValue>>(&body) {
            Ok(members) => members.iter().map(|m| body.slice_ref(m.get().as_bytes())).collect(),
            Err(_) => {
                self.ledger
                    .report(&bad_response("the server's reply is not valid JSON; it was dropped".into()));
                return false;
            }
        };
        let mut progress = false;
        for m in members {
            progress |= self.deliver_from(m, owner).await == Delivered::Progress;
        }
        progress
    }

    pub(super) fn stream_error<E: std::fmt::Display>(&self, e: &E) -> LocalError {
        let text = e.to_string();
        if text.contains("larger than") {
            return self.too_large();
        }
        let mut err = LocalError::new(
            UPSTREAM_ERROR,
            ErrorKind::StreamEnded,
            format!(
                "the connection broke while the server was answering ({text}); the request may have been processed, so it was not retried"
            ),
        );
        err.request_sent = Some(true);
        err
    }

    pub(super) fn too_large(&self) -> LocalError {
        let mut err = bad_response(format!(
            "the server's answer is larger than --max-message-bytes ({}): raise the limit",
            self.limits.max_message
        ));
        err.kind = ErrorKind::MessageTooLarge;
        err
    }
}

impl streams::Host for Core {
    fn link(&self) -> &Link {
        &self.link
    }

    fn streams(&self) -> &Streams {
        &self.streams
    }

    fn closing(&self) -> bool {
        Core::closing(self)
    }

    fn deliver_body(this: &Arc<Self>, body: Bytes) -> impl std::future::Future<Output = bool> + Send {
        this.deliver_body(body)
    }
}

pub(super) fn bad_response(message: String) -> LocalError {
    let mut err = LocalError::new(UPSTREAM_ERROR, ErrorKind::BadResponse, message);
    err.request_sent = Some(true);
    err
}

/// A message the bridge made or checked already cannot be read: a bug, said as one.
pub(super) fn unreadable() -> LocalError {
    let mut err = LocalError::new(
        UPSTREAM_ERROR,
        ErrorKind::BadResponse,
        "mcp-sidecar cannot read a message it made or checked before (a bug)",
    );
    err.request_sent = Some(true);
    err
}
