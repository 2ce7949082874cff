//! The router between stdin and the server: one task per request, exactly one answer each.
//!
//! Every request read on stdin is entered in the pending table before it is sent; it leaves the
//! table exactly once, either when the server's response for its id passes through
//! [`Proxy::deliver`] or when the proxy gives up on it and writes a [`LocalError`] with its id
//! ([`Proxy::fail`]). Removal from the table is the single point that decides who answers, so a
//! response can be neither lost nor duplicated, whatever the server sends. Requests run
//! concurrently (no head-of-line blocking); only `initialize` and `notifications/initialized`
//! are sent in line, so that the server sees the handshake before the requests that follow it.
//!
//! This module decides what happens to a message; [`crate::upstream`] knows how to talk HTTP and
//! [`crate::stdio`] owns the bytes on stdout. Its parts: `send` (one POST through the rate-limit
//! gate, with the retries that are safe), `session` (session renewal, the GET stream, the
//! HTTP+SSE transport), `tools` (`x-mcp-header`).

mod bridge;
mod ledger;
mod link;
mod policy;
mod probe;
mod reply;
mod reverse;
mod room;
mod streams;

use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace, warn};

use crate::cli::Transport;
use crate::envelope::{
    self, Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError, OVERLOADED, PARSE_ERROR,
    REQUEST_TIMEOUT, SHUTTING_DOWN, UPSTREAM_ERROR,
};
use crate::ratelimit::Gate;
use crate::retry;
use crate::stdio::{Frame, Outbox};
use crate::upstream::headers::{MessageHeaders, SESSION_ID};
use crate::upstream::{MAX_ERROR_BODY_BYTES, Upstream, jsonrpc_error, sse};
use ledger::{Delivered, Flags, Ledger};
use link::Link;
pub use link::WaitObserver;
use policy::{Policies, lists};
use reply::{BodyError, read_body};
pub use room::IN_FLIGHT_MESSAGES;
use room::{Room, holding};
use streams::{MAX_SSE_RETRY, Streams};

/// `server/discover` probes must be answered soon, whatever the server does (S-09).
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight before answering them with an error.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the closing DELETE may take (T-22); shutdown must finish within 2 s.
const DELETE_TIMEOUT: Duration = Duration::from_millis(400);
/// How many times a broken reply stream is resumed with Last-Event-ID (T-23).
const MAX_RESUMPTIONS: u32 = 3;

/// A client request the eras are being settled on, inline (issue 21.1): if the run ends before it
/// is answered (stdin's end, a signal), dropping this puts it in the pending table, whose
/// requests shutdown answers: every request read gets exactly one response.
struct Owed<'a> {
    proxy: &'a Proxy,
    id: Option<(IdKey, Box<RawValue>)>,
}

impl<'a> Owed<'a> {
    fn new(proxy: &'a Proxy, line: &[u8]) -> Self {
        let env = Envelope::parse(line).ok().filter(|env| env.kind() == Ok(Kind::Request));
        let id = env.and_then(|env| Some((env.id_key()?, env.id?.to_owned())));
        Owed { proxy, id }
    }

    /// Answered, or handed on to the way every other request goes.
    fn paid(mut self) {
        self.id = None;
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        if let Some((key, id)) = self.id.take() {
            self.proxy.ledger.owe(key, id);
        }
    }
}

/// The shared state of one proxy run.
pub struct Proxy {
    /// The way to the server: gate, retries, token and session renewal.
    link: Link,
    /// The requests in flight and stdout: who answers each id.
    ledger: Ledger,
    tasks: TaskTracker,
    request_timeout: Duration,
    max_message: usize,
    /// The stream for server messages.
    streams: Streams,
    shutting_down: AtomicBool,
    /// Room for the bytes of messages in flight, [`IN_FLIGHT_MESSAGES`] × `max_message`.
    room: Room,
    /// The eras of client and server, and the bridge between them when they differ.
    eras: bridge::Eras,
    /// What is done to messages beyond forwarding them.
    policies: Policies,
}

impl Proxy {
    /// A proxy that forwards to `up` and writes to `out`, set up as `config` says.
    pub fn new(up: Upstream, out: Outbox, gate: Gate, config: &crate::config::Config) -> Arc<Self> {
        let (request_timeout, max_message) = (config.request_timeout, config.max_message_bytes);
        // Remembered per endpoint, not per origin: two endpoints of one host may be of two eras.
        let era_cache =
            config.state_dir.as_deref().map(|dir| crate::era::EraCache::new(dir, config.url.as_str()));
        let proxy = Arc::new(Proxy {
            eras: bridge::Eras::new(config.protocol_era, era_cache),
            policies: Policies::default(),
            room: Room::new(max_message),
            link: Link::new(up, gate, config),
            ledger: Ledger::new(out),
            tasks: TaskTracker::new(),
            request_timeout,
            max_message,
            streams: Streams::new(max_message, request_timeout),
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

    /// Calls `observe` for each rate-limit wait instead of logging it.
    pub fn observe_waits(&self, observe: WaitObserver) {
        self.link.observe_waits(observe);
    }

    /// The transport in use, for people.
    pub fn transport_name(&self) -> &'static str {
        if self.link.up.is_legacy() { "HTTP+SSE (2024-11-05)" } else { "Streamable HTTP" }
    }

    /// Whether an OAuth token is in use: `None` when OAuth is not the credential.
    pub fn signed_in(&self) -> Option<bool> {
        self.link.up.oauth().map(|o| o.header().is_some())
    }

    /// What the rate limits did so far, for people (`None` when they did nothing): requests the
    /// server's budget held and for how long, 429s still received, waits, requests sent again
    /// (issue 11).
    pub fn rate_limit_summary(&self) -> Option<String> {
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

    /// Records the rate-limit headers of successful responses too (for `check`).
    pub fn record_limits(&self) {
        self.link.record_limits();
    }

    /// The rate-limit headers last seen: on a success, else on a 429.
    pub fn rate_limit_headers(&self) -> Vec<(String, String)> {
        self.link.rate_limit_headers()
    }

    /// Handles one frame read from stdin.
    pub async fn dispatch(self: &Arc<Self>, frame: Frame) {
        match frame {
            Frame::Line(line) => self.dispatch_line(line).await,
            Frame::TooLong { len, prefix } => {
                let id = envelope::sniff_id(&prefix).and_then(|id| RawValue::from_string(id).ok());
                let err = LocalError::new(
                    INVALID_REQUEST,
                    ErrorKind::MessageTooLarge,
                    format!(
                        "the message is {len} bytes, more than --max-message-bytes ({}) allows: raise the limit or send less",
                        self.max_message
                    ),
                );
                self.ledger.refuse(id.as_deref(), &err).await;
            }
        }
    }

    async fn dispatch_line(self: &Arc<Self>, line: Bytes) {
        trace!(body = %String::from_utf8_lossy(&line), "stdin");
        // The era bridge (issue 13): two atomic loads on the same-era path.
        if let Some(bridge) = self.eras.bridge.get() {
            return self.dispatch_bridged(&bridge.clone(), line).await;
        }
        if let Some(reverse) = self.eras.reverse.get() {
            return self.dispatch_reverse(&reverse.clone(), line).await;
        }
        if !self.eras.settled.load(Ordering::Relaxed) {
            let owed = Owed::new(self, &line);
            let answered = match first_request(&line) {
                Some(true) => self.settle_era(&line).await,
                // A client that opens with another request speaks the stateless era (or skips
                // the handshake): bridged if the server speaks only the handshake era.
                Some(false) => self.settle_stateless_client(&line).await,
                None => false,
            };
            owed.paid();
            if answered {
                return;
            }
        }
        self.dispatch_line_plain(line).await
    }

    /// Handles one line as it is, with no bridge.
    async fn dispatch_line_plain(self: &Arc<Self>, line: Bytes) {
        if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return self.dispatch_batch(line).await;
        }
        let env = match Envelope::parse(&line) {
            Ok(env) => env,
            Err(e) => return self.reject_unparsable(&e).await,
        };
        match env.kind() {
            Ok(Kind::Request) => self.dispatch_request(env, &line).await,
            Ok(Kind::Notification) => self.dispatch_notification(env, &line).await,
            Ok(Kind::Response) => {
                // The client's answer to a server request (T-30).
                drop(env);
                let room = self.room.wait(line.len()).await;
                self.tasks.spawn(holding(
                    room,
                    self.clone().send_one_way(line, MessageHeaders::default(), "response".into()),
                ));
            }
            Err(invalid) => {
                let id = env.id.filter(|id| IdKey::new(id).is_some());
                let err = LocalError::new(
                    INVALID_REQUEST,
                    ErrorKind::InvalidRequest,
                    format!("invalid JSON-RPC message: {invalid}"),
                );
                self.ledger.refuse(id, &err).await;
            }
        }
    }

    /// A client request: answered from the list cache, refused for want of room, or entered in
    /// the ledger and sent by a task of its own (`initialize` in line).
    async fn dispatch_request(self: &Arc<Self>, env: Envelope<'_>, line: &Bytes) {
        let method = env.method.as_deref().unwrap_or_default();
        let params = env.params();
        let headers = self.policies.params.request_headers(method, &params);
        let init = method == "initialize";
        // A stateless-era list still fresh in the cache costs the server nothing.
        let list_key = (headers.is_modern() && lists::cacheable(method)).then(|| lists::key(method, &params));
        if let Some(cached) = list_key.as_deref().and_then(|k| self.policies.lists.get(k))
            && let Some(id) = env.id
        {
            return self.ledger.write(crate::era::response_with_id(id, "result", &cached).into()).await;
        }
        let Some(room) = self.room.now(line.len()) else {
            let mut err = LocalError::new(
                OVERLOADED,
                ErrorKind::Overloaded,
                format!(
                    "too many requests are in flight: together they hold more than {} bytes ({IN_FLIGHT_MESSAGES} × --max-message-bytes), so this one was not sent: wait for answers before sending more",
                    self.room.limit()
                ),
            );
            err.request_sent = Some(false);
            return self.ledger.refuse(env.id, &err).await;
        };
        let limit = if method == "server/discover" {
            self.request_timeout.min(DISCOVER_TIMEOUT)
        } else {
            self.request_timeout
        };
        let modern = headers.is_modern();
        let flags = Flags {
            initialize: init,
            modern,
            lists_tools: modern && method == "tools/list",
            internal: false,
        };
        let Some((key, id)) = self.ledger.open(&env, flags) else { return };
        if let Some(list_key) = list_key {
            self.ledger.set_list_key(&key, list_key);
        }
        if init {
            self.link.keep_init_line(line.clone());
        }
        let what = format!("{method} (id {})", env.id.map_or("?", RawValue::get));
        let ids = vec![(key.clone(), id)];
        let handle = self.tasks.spawn(holding(
            Some(room),
            self.clone().run_request(line.clone(), headers, ids, init, limit, what),
        ));
        if init {
            // In line: whatever the client sends next needs the session this creates
            // (a client must wait for the answer anyway, S-11; scripts may not).
            let _ = handle.await;
        } else {
            self.ledger.set_abort(&key, handle.abort_handle());
        }
    }

    /// A client notification: a cancel ends its request (T-25, J-08); the others are sent
    /// (`notifications/initialized` in line, then the GET stream opens).
    async fn dispatch_notification(self: &Arc<Self>, env: Envelope<'_>, line: &Bytes) {
        let method = env.method.as_deref().unwrap_or_default().to_owned();
        let params = env.params();
        if method == "notifications/cancelled" {
            let modern = params.request_id.and_then(IdKey::new).and_then(|k| self.ledger.cancel(&k));
            // In the 2026-07-28 era, closing the request's stream is the cancellation (T-25).
            if modern == Some(true) {
                return;
            }
        }
        let headers = MessageHeaders::derive(&method, &params);
        drop(env);
        let room = self.room.wait(line.len()).await;
        if method == "notifications/initialized" {
            // In line: the server must see it before the requests that follow (S-11).
            if self.clone().send_one_way(line.clone(), headers, method).await {
                Streams::open_get(self);
            }
        } else {
            self.tasks.spawn(holding(room, self.clone().send_one_way(line.clone(), headers, method)));
        }
    }

    /// A 2025-03-26 batch (J-07): valid members go out in one POST, invalid ones are answered here.
    async fn dispatch_batch(self: &Arc<Self>, line: Bytes) {
        let members: Vec<&RawValue> = match serde_json::from_slice(&line) {
            Ok(m) => m,
            Err(e) => return self.reject_unparsable(&e).await,
        };
        if members.is_empty() {
            let err = LocalError::new(
                INVALID_REQUEST,
                ErrorKind::InvalidRequest,
                "invalid JSON-RPC message: empty batch",
            );
            return self.ledger.write(err.to_response(None).into()).await;
        }
        let mut valid: Vec<&str> = Vec::new();
        let mut ids = Vec::new();
        for member in &members {
            let env = Envelope::parse(member.get().as_bytes());
            match env.as_ref().map(|e| (e.kind(), e)) {
                Ok((Ok(kind), env)) => {
                    if kind == Kind::Request {
                        match self.ledger.open(env, Flags::default()) {
                            Some(entry) => ids.push(entry),
                            None => continue,
                        }
                    }
                    valid.push(member.get());
                }
                Ok((Err(invalid), env)) => {
                    let id = env.id.filter(|id| IdKey::new(id).is_some());
                    let err = LocalError::new(
                        INVALID_REQUEST,
                        ErrorKind::InvalidRequest,
                        format!("invalid JSON-RPC message: {invalid}"),
                    );
                    self.ledger.write(err.to_response(id).into()).await;
                }
                Err(_) => {
                    let err = LocalError::new(
                        INVALID_REQUEST,
                        ErrorKind::InvalidRequest,
                        "invalid JSON-RPC message in batch",
                    );
                    self.ledger.write(err.to_response(None).into()).await;
                }
            }
        }
        if valid.is_empty() {
            return;
        }
        let body: Bytes =
            if valid.len() == members.len() { line.clone() } else { format!("[{}]", valid.join(",")).into() };
        drop(members);
        let room = self.room.wait(body.len()).await;
        if ids.is_empty() {
            self.tasks.spawn(holding(
                room,
                self.clone().send_one_way(body, MessageHeaders::default(), "batch".into()),
            ));
        } else {
            let limit = self.request_timeout;
            let what = format!("a batch of {}", valid.len());
            self.tasks.spawn(holding(
                room,
                self.clone().run_request(body, MessageHeaders::default(), ids, false, limit, what),
            ));
        }
    }

    /// Answers a line that is not JSON (-32700) or not an object (-32600), with id null (J-05).
    async fn reject_unparsable(&self, e: &serde_json::Error) {
        let err = if e.is_data() {
            LocalError::new(
                INVALID_REQUEST,
                ErrorKind::InvalidRequest,
                "invalid JSON-RPC message: expected a JSON object",
            )
        } else {
            LocalError::new(
                PARSE_ERROR,
                ErrorKind::Parse,
                format!("parse error: the line is not valid JSON ({e})"),
            )
        };
        self.ledger.refuse(None, &err).await;
    }

    /// Sends one request (or batch) and sees that each of its ids is answered.
    async fn run_request(
        self: Arc<Self>,
        body: Bytes,
        headers: MessageHeaders,
        ids: Vec<(IdKey, oneshot::Receiver<()>)>,
        initialize: bool,
        limit: Duration,
        what: String,
    ) {
        let keys: Vec<IdKey> = ids.iter().map(|(k, _)| k.clone()).collect();
        if let Err(err) = self.exchange(body, &headers, ids, initialize, limit, &what).await {
            for key in &keys {
                self.ledger.fail(key, &err).await;
            }
        }
    }

    /// The HTTP exchange of a request. Returns once every id is answered, or with the error that
    /// answers the ids still pending.
    async fn exchange(
        self: &Arc<Self>,
        body: Bytes,
        headers: &MessageHeaders,
        ids: Vec<(IdKey, oneshot::Receiver<()>)>,
        initialize: bool,
        limit: Duration,
        what: &str,
    ) -> Result<(), LocalError> {
        if initialize {
            self.link.up.reset_session();
            if self.link.transport == Transport::Sse && !self.link.up.is_legacy() {
                Box::pin(Streams::start_legacy(self))
                    .await
                    .map_err(|reason| Streams::legacy_error(&self.link, &reason))?;
            }
        }
        let attempt = Attempt { body: &body, initialize, limit, what };
        let Some((response, deadline)) = self.post_until_answered(&attempt, headers, &ids).await? else {
            return Ok(()); // the ids were answered from the error response
        };
        let status = response.status();
        // The server answers again: if the GET stream had given up, it is worth another try.
        Streams::reopen_if_lost(self);
        if initialize {
            self.link.up.set_session_id(response.headers().get(&SESSION_ID).cloned());
        }
        let mut deadline = deadline;
        if self.link.up.is_legacy() {
            // HTTP+SSE: the POST only says "accepted"; the answer comes on the stream (T-61).
            drop(response);
        } else if reply::is_event_stream(response.headers()) {
            deadline = self.read_events(response, headers.is_modern(), &ids, deadline, &attempt).await?;
        } else {
            self.read_json(response, deadline, limit).await?;
        }
        if !self.ledger.any_open(&ids) {
            return Ok(());
        }
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT || self.link.up.is_legacy() {
            // Accepted without an answer: it will come on the GET stream (T-20).
            for (key, done) in ids {
                if self.ledger.is_open(&key) && timeout_at(deadline, done).await.is_err() {
                    return Err(self.link.up.timeout_error(limit));
                }
            }
            return Ok(());
        }
        Err(bad_response(
            "the server ended its reply without answering this request; it may or may not have been processed".into(),
        ))
    }

    /// POSTs the request until the server answers it with a success (and returns that), after
    /// each error status trying what [`after_error`] names; `None` when the error status was
    /// the answer and the ids were answered from it.
    async fn post_until_answered(
        self: &Arc<Self>,
        attempt: &Attempt<'_>,
        headers: &MessageHeaders,
        ids: &[(IdKey, oneshot::Receiver<()>)],
    ) -> Result<Option<(reqwest::Response, Instant)>, LocalError> {
        let Attempt { body, initialize, limit, what } = *attempt;
        // Copied only when a relist changes the `Mcp-Param-*` headers.
        let mut headers = std::borrow::Cow::Borrowed(headers);
        let mut tried = Tried::default();
        loop {
            let (response, sent_session, deadline) =
                self.link.send(body, &headers, initialize, limit, what).await?;
            let status = response.status();
            debug!(status = status.as_u16(), "POST answered");
            if status.is_success() {
                return Ok(Some((response, deadline)));
            }
            let resp_headers = response.headers().clone();
            let error_body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
            let legacy_possible =
                initialize && self.link.transport == Transport::Auto && !self.link.up.is_legacy();
            let mut next = after_error(status, &error_body, body, &headers, legacy_possible, &tried);
            if next == Next::Relist {
                tried.relisted = true;
                let params = &self.policies.params;
                if Box::pin(params.relist_tools(&self.link, body, limit, self.max_message)).await {
                    let env = Envelope::parse(body).map_err(|_| bad_response("unreadable request".into()))?;
                    headers.to_mut().params = params.param_headers(&env.params());
                    continue;
                }
                next = after_error(status, &error_body, body, &headers, legacy_possible, &tried);
            }
            match next {
                Next::SameVersion => {
                    tried.version = true;
                    debug!(
                        what,
                        "the server refused a version it lists as supported; sending the request again"
                    );
                    continue;
                }
                Next::Legacy => match Box::pin(Streams::start_legacy(self)).await {
                    Ok(()) => continue,
                    Err(reason) => debug!("no HTTP+SSE fallback either: {reason}"),
                },
                Next::Relist | Next::Give => {}
            }
            Box::pin(self.answer_http_error(status, &resp_headers, &error_body, sent_session, ids)).await?;
            return Ok(None);
        }
    }

    /// Reads a reply stream (T-21), delivering each message, until every id is answered or the
    /// stream ends; a broken stream of the handshake era is resumed with Last-Event-ID (T-23).
    /// Returns the deadline, moved on by each progress notification (T-32).
    async fn read_events(
        self: &Arc<Self>,
        response: reqwest::Response,
        modern: bool,
        ids: &[(IdKey, oneshot::Receiver<()>)],
        mut deadline: Instant,
        attempt: &Attempt<'_>,
    ) -> Result<Instant, LocalError> {
        let limit = attempt.limit;
        let mut events = sse::decode(response.bytes_stream(), self.max_message);
        // Resumption state (T-23, T-24): the last event id and the server's `retry`.
        let mut resumption = Resumption::default();
        loop {
            let event = match timeout_at(deadline, events.next()).await {
                Err(_) => return Err(self.link.up.timeout_error(limit)),
                Ok(next @ (None | Some(Err(_)))) => {
                    // The stream ended or broke before the answer. A legacy server that gave
                    // event ids can replay it on a GET with Last-Event-ID; 2026-07-28 cannot.
                    let broken = next.and_then(Result::err);
                    let resumed = match resumption.next_try(modern) {
                        Some((id, wait)) => Box::pin(self.resume(&id, wait, deadline, attempt)).await?,
                        None => None,
                    };
                    match (resumed, broken) {
                        (Some(r), _) => {
                            events = sse::decode(r.bytes_stream(), self.max_message);
                            continue;
                        }
                        (None, Some(e)) => return Err(self.stream_error(&e)),
                        (None, None) => return Ok(deadline),
                    }
                }
                Ok(Some(Ok(event))) => event,
            };
            resumption.saw(&event);
            if !sse::is_message(&event) {
                continue;
            }
            let data = Bytes::from(event.data.unwrap_or_default());
            if self.deliver_body_from(data, ids.first().map(|(k, _)| k)).await {
                deadline = retry::deadline_after(limit);
            }
            if !self.ledger.any_open(ids) {
                return Ok(deadline);
            }
        }
    }

    /// Reads a JSON reply and delivers what it holds.
    async fn read_json(
        self: &Arc<Self>,
        response: reqwest::Response,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(), LocalError> {
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = match read_body(response, self.max_message, deadline).await {
            Ok(body) => body,
            Err(BodyError::Timeout) => return Err(self.link.up.timeout_error(limit)),
            Err(BodyError::TooLarge) => return Err(self.too_large()),
            Err(BodyError::Http(e)) => return Err(self.link.up.send_error(&e)),
        };
        if body.iter().any(|b| !b.is_ascii_whitespace()) {
            let content_type =
                content_type.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
            if !content_type.is_empty() && !content_type.contains("json") {
                return Err(bad_response(format!(
                    "the server answered with {content_type}, not JSON or an event stream: check that the URL is the MCP endpoint"
                )));
            }
            self.deliver_body(body).await;
        }
        Ok(())
    }

    /// The GET that resumes a broken reply stream after `id` (T-23), after the server's `wait`
    /// (issue 10.2: it counts against the request's deadline), through the gate; its unit goes
    /// back with what the answer says, or as not sent when there is none (issue 21.5). The
    /// response, if it opened a stream.
    async fn resume(
        self: &Arc<Self>,
        id: &str,
        wait: Duration,
        deadline: Instant,
        attempt: &Attempt<'_>,
    ) -> Result<Option<reqwest::Response>, LocalError> {
        let what = attempt.what;
        debug!(what, last_event_id = %id, wait_ms = wait.as_millis() as u64, "resuming the reply stream");
        if timeout_at(deadline, tokio::time::sleep(wait)).await.is_err() {
            return Err(self.link.up.timeout_error(attempt.limit));
        }
        let admitted = self.link.admit(what, 0).await?;
        let resumed = timeout_at(deadline, self.link.up.get_stream(Some(id)).send()).await;
        match &resumed {
            Ok(Ok(r)) => self.link.answered(&admitted, r.headers()).await,
            _ => self.link.gate.answered(&admitted, None).await,
        }
        Ok(resumed.ok().and_then(Result::ok).filter(|r| r.status().is_success()))
    }

    /// Answers the pending ids of a request that got an HTTP error status: the server's own
    /// JSON-RPC error where it sent one (T-40), else an error that explains the status.
    async fn answer_http_error(
        self: &Arc<Self>,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        sent_session: bool,
        ids: &[(IdKey, oneshot::Receiver<()>)],
    ) -> Result<(), LocalError> {
        let own_message =
            matches!(status.as_u16(), 401 | 403) || (status == StatusCode::NOT_FOUND && sent_session);
        if !own_message
            && let [(key, _)] = ids
            && let Some((error, server_id)) = jsonrpc_error(body)
        {
            let Some(id) = self.ledger.id_of(key) else { return Ok(()) };
            // The server's answer as it sent it when it is a well-formed error response for
            // this id; else one made of its error object under the pending id (issue 21.1: a body
            // with `result` too, or a `method`, was dropped by `deliver` and left unanswered).
            let same_id = server_id.and_then(IdKey::new).as_ref() == Some(key);
            let mut message = if same_id && is_error_response(body) {
                body.to_vec()
            } else {
                envelope::error_with_id(&id, error)
            };
            // Unless it echoes a secret of ours (issue 10.9), redacted inside its strings only.
            if let Some(clean) = crate::secrets::redact_json_text(&String::from_utf8_lossy(&message)) {
                message = clean.into_bytes();
            }
            envelope::flatten_lines(&mut message);
            self.deliver(message.into()).await;
            if !self.ledger.is_open(key) {
                return Ok(());
            }
        }
        Err(self.link.up.status_error(status, headers, body, sent_session))
    }

    /// Sends a notification or a client response; nothing comes back to the client. Returns
    /// whether the server accepted it.
    async fn send_one_way(self: Arc<Self>, body: Bytes, headers: MessageHeaders, what: String) -> bool {
        match self.link.send(&body, &headers, false, self.request_timeout, &what).await {
            Err(err) => {
                self.ledger.report_with(&err, &format!("{what} was not delivered"));
                false
            }
            Ok((response, _, _)) if response.status().is_success() => {
                // Any body on a 2xx to a message without a request is ignored (T-04).
                debug!(status = response.status().as_u16(), what, "one-way message accepted");
                true
            }
            Ok((response, sent_session, _)) => {
                let status = response.status();
                let resp_headers = response.headers().clone();
                let deadline = retry::deadline_after(Duration::from_secs(5));
                let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
                let err = self.link.up.status_error(status, &resp_headers, &body, sent_session);
                self.ledger.report_with(&err, &format!("the server did not accept a {what}"));
                false
            }
        }
    }

    /// Writes one message from the server to stdout if it is JSON-RPC and, for a response, if
    /// its request is still pending. The single place where pending requests are answered.
    async fn deliver(self: &Arc<Self>, bytes: Bytes) -> Delivered {
        self.deliver_from(bytes, None).await
    }

    /// [`Proxy::deliver`] for a message that came on the reply stream of request `owner` (the
    /// reverse bridge ties a server request to the request it belongs to).
    async fn deliver_from(self: &Arc<Self>, bytes: Bytes, owner: Option<&IdKey>) -> Delivered {
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
            Ok(Kind::Response) => {
                let Some(key) = env.id_key() else { return Delivered::Dropped };
                let (initialize, lists_tools, captured, list_key) = match self.ledger.peek(&key) {
                    Some(open) => {
                        (open.flags.initialize, open.flags.lists_tools, open.captured, open.list_key)
                    }
                    None => {
                        debug!(id = %env.id.map_or("", RawValue::get), "response for no pending request dropped (cancelled, answered or unknown)");
                        return Delivered::Dropped;
                    }
                };
                // Only an `initialize` result is read (for the negotiated version): a 1 MB tool
                // result is not parsed a second time.
                let version = env.result.filter(|_| initialize).and_then(|r| {
                    serde_json::from_str::<envelope::Params>(r.get())
                        .ok()?
                        .protocol_version
                        .map(|v| v.into_owned())
                });
                drop(env);
                let message = match lists_tools.then(|| self.policies.params.learn_tools(&bytes)).flatten() {
                    Some(filtered) => one_line(filtered.into()),
                    None => one_line(bytes),
                };
                if let Some(list_key) = list_key {
                    self.policies.lists.put(list_key, &message);
                }
                return self.hand_over(&key, message, captured, version).await;
            }
            Ok(Kind::Notification) if env.method.as_deref() == Some("notifications/progress") => {
                Delivered::Progress
            }
            // The listen stream's acknowledgement is the bridge's business (T-33).
            Ok(Kind::Notification)
                if self.eras.bridge.get().is_some()
                    && env.method.as_deref() == Some("notifications/subscriptions/acknowledged") =>
            {
                return Delivered::Dropped;
            }
            Ok(Kind::Request) if self.eras.reverse.get().is_some() => {
                drop(env);
                self.server_request(owner, &bytes);
                return Delivered::Dropped;
            }
            Ok(Kind::Notification) if !self.policies.lists.is_empty() => {
                self.policies.lists.changed(env.method.as_deref().unwrap_or_default());
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
        self.ledger.write(one_line(bytes)).await;
        delivered
    }

    /// Hands the answer `message` of the pending request `key` over (to stdout, or to whoever
    /// captures it) through the ledger; `version`: what an `initialize` result negotiated, set
    /// before the answer is queued.
    async fn hand_over(
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
    async fn deliver_body(self: &Arc<Self>, body: Bytes) -> bool {
        self.deliver_body_from(body, None).await
    }

    /// [`Proxy::deliver_body`] for a body that came on the reply stream of request `owner`.
    async fn deliver_body_from(self: &Arc<Self>, body: Bytes, owner: Option<&IdKey>) -> bool {
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

    fn stream_error<E: std::fmt::Display>(&self, e: &E) -> LocalError {
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

    fn too_large(&self) -> LocalError {
        let mut err = bad_response(format!(
            "the server's answer is larger than --max-message-bytes ({}): raise the limit",
            self.max_message
        ));
        err.kind = ErrorKind::MessageTooLarge;
        err
    }

    /// Stops everything in order (S-06, T-22): waits up to [`DRAIN_TIMEOUT`] for requests in
    /// flight, answers the rest with an error, ends the session with DELETE.
    pub async fn shutdown(self: &Arc<Self>, drain: bool) {
        let started = Instant::now();
        self.shutting_down.store(true, Ordering::Relaxed);
        self.tasks.close();
        // Issue 10.3: the stream for server messages stays open while requests drain: answers
        // of the HTTP+SSE transport, and of requests the server accepted with 202, come on it.
        if drain && timeout(DRAIN_TIMEOUT, self.tasks.wait()).await.is_err() {
            info!("shutting down with requests still in flight; answering them with an error");
        }
        self.streams.stop();
        self.stop_listening();
        // Within the 2 s the whole shutdown has, whatever the client does with stdout.
        self.ledger.drain(started, DRAIN_TIMEOUT + DELETE_TIMEOUT).await;
        // The rate-limit units this process leased and did not use go back (bounded: exit must
        // not wait on another process's lock).
        let _ = timeout(Duration::from_millis(500), self.link.gate.release()).await;
        if let Some(delete) = self.link.up.delete_session() {
            // Same rate-limit rules, within the shutdown budget.
            // Only if the rate limit lets it through at once: a session the server cannot be told
            // about expires by itself, and exit must not wait for the next window.
            match timeout(
                DELETE_TIMEOUT,
                self.link.gate.admit(Duration::ZERO, crate::ratelimit::Use::Background, |_, _| {}),
            )
            .await
            {
                Ok(Ok(admitted)) => match timeout(DELETE_TIMEOUT, delete.send()).await {
                    Ok(Ok(r)) => {
                        debug!(status = r.status().as_u16(), "session closed");
                        let _ = timeout(DELETE_TIMEOUT, self.link.answered(&admitted, r.headers())).await;
                    }
                    Ok(Err(e)) => debug!(error = %e.without_url(), "closing the session failed"),
                    Err(_) => debug!("closing the session timed out"),
                },
                _ => {
                    debug!("not closing the session: the rate limit holds requests past the shutdown budget")
                }
            }
        }
        if let Some(summary) = self.rate_limit_summary() {
            info!("rate limits: {summary}");
        }
        if let Some(summary) = self.bridge_summary() {
            info!("protocol bridge: {summary}");
        }
        let (requests, errors) = self.ledger.counts();
        debug!(requests, errors, "proxy stopped");
        if errors > 0 {
            info!(
                "{errors} of {requests} requests to {} were answered with an error by mcp-sidecar",
                self.link.up.shown_url()
            );
        }
    }
}

impl streams::Host for Proxy {
    fn link(&self) -> &Link {
        &self.link
    }

    fn streams(&self) -> &Streams {
        &self.streams
    }

    fn closing(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    fn deliver_body(this: &Arc<Self>, body: Bytes) -> impl std::future::Future<Output = bool> + Send {
        this.deliver_body(body)
    }
}

/// What one exchange sends, the same at each try.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    body: &'a Bytes,
    initialize: bool,
    limit: Duration,
    what: &'a str,
}

/// The second tries an exchange has spent after error statuses.
#[derive(Default)]
struct Tried {
    relisted: bool,
    version: bool,
}

/// What comes after an error status.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// T-15: re-list the tools (their `x-mcp-header` schemas are stale), then send again.
    Relist,
    /// T-13: send again unchanged.
    SameVersion,
    /// T-60: try the 2024-11-05 HTTP+SSE transport.
    Legacy,
    /// The status is the answer.
    Give,
}

/// What to do after the error status `status` with `error_body`, for a request `body` sent with
/// `headers`: a pure function of what came back and what was tried already.
fn after_error(
    status: StatusCode,
    error_body: &[u8],
    body: &[u8],
    headers: &MessageHeaders,
    legacy_possible: bool,
    tried: &Tried,
) -> Next {
    let bad_request = status == StatusCode::BAD_REQUEST && headers.is_modern();
    // T-15: HeaderMismatch about Mcp-Param-* means our schemas are stale: re-list, retry once.
    if bad_request
        && !tried.relisted
        && jsonrpc_error(error_body).is_some_and(|(e, _)| e.get().contains("-32020"))
        && Envelope::parse(body).is_ok_and(|e| e.method.as_deref() == Some("tools/call"))
    {
        return Next::Relist;
    }
    // T-13: `-32022` listing the very version the request carries (a server mid-rollout, or one
    // that rejects a first request) was not processed: sent again once, unchanged.
    if bad_request
        && !tried.version
        && headers.protocol_version.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| {
            crate::era::response_error(error_body).is_some_and(|e| e.supported_modern().as_deref() == Some(v))
        })
    {
        return Next::SameVersion;
    }
    // T-60: a server that refuses the initialize POST with 400/404/405 and no JSON-RPC error
    // may speak only the 2024-11-05 HTTP+SSE transport: try its GET stream.
    if legacy_possible && matches!(status.as_u16(), 400 | 404 | 405) && jsonrpc_error(error_body).is_none() {
        return Next::Legacy;
    }
    Next::Give
}

/// Where a broken reply stream can be resumed from (T-23, T-24).
#[derive(Default)]
struct Resumption {
    last_id: Option<String>,
    retry: Option<Duration>,
    resumed: u32,
}

impl Resumption {
    /// Keeps the event's id and `retry`.
    fn saw(&mut self, event: &sse_stream::Sse) {
        if let Some(id) = &event.id {
            self.last_id = Some(id.clone());
        }
        if let Some(ms) = event.retry {
            self.retry = Some(Duration::from_millis(ms));
        }
    }

    /// The event id to resume after and the wait before, if the stream may be resumed: only in
    /// the handshake era (2026-07-28 has no resumption), only with an id, at most
    /// [`MAX_RESUMPTIONS`] times.
    fn next_try(&mut self, modern: bool) -> Option<(String, Duration)> {
        let id = self.last_id.clone().filter(|_| !modern && self.resumed < MAX_RESUMPTIONS)?;
        self.resumed += 1;
        let wait =
            self.retry.unwrap_or(Duration::from_millis(1000) * (self.resumed + 1) / 2).min(MAX_SSE_RETRY);
        Some((id, wait))
    }
}

/// Whether `body` is a JSON-RPC error response and nothing else (no `result`, no `method`).
fn is_error_response(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .ok()
        .and_then(crate::era::object_members)
        .is_some_and(|members| members.iter().all(|(k, _)| matches!(k.as_ref(), "jsonrpc" | "id" | "error")))
}

/// For a request, whether it is `initialize`; `None` for anything else (notifications,
/// responses, batches, junk).
fn first_request(line: &[u8]) -> Option<bool> {
    let env = Envelope::parse(line).ok()?;
    // `ping` may come before `initialize` (S-11) and says nothing about the era.
    let method = env.method.as_deref()?;
    (env.kind() == Ok(Kind::Request) && method != "ping").then(|| method == "initialize")
}

/// A valid JSON text on one line: its CR/LF can only be whitespace, so they become spaces (S-02).
fn one_line(bytes: Bytes) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', &bytes).is_none() {
        return bytes;
    }
    let mut owned = bytes.to_vec();
    envelope::flatten_lines(&mut owned);
    owned.into()
}

fn bad_response(message: String) -> LocalError {
    let mut err = LocalError::new(UPSTREAM_ERROR, ErrorKind::BadResponse, message);
    err.request_sent = Some(true);
    err
}

#[cfg(test)]
mod future_sizes {
    use super::*;
    use clap::Parser;

    /// The task of each request is copied whole at every spawn (and glibc copies blocks over a
    /// few KiB differently): cold paths (sign-in, session renewal, the HTTP+SSE fallback) are
    /// boxed so that the hot path's future stays small. Measured: 3.2 KiB (6.7 KiB before).
    #[tokio::test]
    async fn request_futures_stay_small() {
        const BUDGET: usize = 4096;
        let cli =
            crate::cli::Cli::try_parse_from(["mcp-sidecar", "http://127.0.0.1:1/mcp", "--auth", "none"])
                .unwrap();
        let config = crate::config::Config::from_cli(cli.args, &|_| None).unwrap();
        let (proxy, _out, _rx) = crate::build(&config).await.unwrap();
        let (body, headers) = (Bytes::from_static(b"{}"), MessageHeaders::default());
        let limit = Duration::from_secs(1);
        let request =
            proxy.clone().run_request(body.clone(), headers.clone(), Vec::new(), false, limit, String::new());
        assert!(
            std::mem::size_of_val(&request) <= BUDGET,
            "run_request: {}",
            std::mem::size_of_val(&request)
        );
        let one_way = proxy.clone().send_one_way(body, headers, String::new());
        assert!(
            std::mem::size_of_val(&one_way) <= BUDGET,
            "send_one_way: {}",
            std::mem::size_of_val(&one_way)
        );
    }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use reqwest::header::HeaderValue;

    fn modern(version: &str) -> MessageHeaders {
        MessageHeaders {
            protocol_version: Some(HeaderValue::from_str(version).unwrap()),
            ..Default::default()
        }
    }

    const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#;

    #[test]
    fn t15_a_header_mismatch_relists_once_then_gives_the_error() {
        let error =
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32020,"message":"Mcp-Param-Region mismatch"}}"#;
        let headers = modern("2026-07-28");
        let fresh = Tried::default();
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &headers, false, &fresh), Next::Relist);
        let relisted = Tried { relisted: true, ..Tried::default() };
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &headers, false, &relisted), Next::Give);
        // Not for the handshake era, and not for another status.
        let legacy = MessageHeaders::default();
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &legacy, false, &fresh), Next::Give);
        assert_eq!(after_error(StatusCode::FORBIDDEN, error, CALL, &headers, false, &fresh), Next::Give);
    }

    #[test]
    fn t13_the_same_version_listed_as_supported_is_sent_again_once() {
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2026-07-28"]}}}"#;
        let fresh = Tried::default();
        let same = modern("2026-07-28");
        assert_eq!(
            after_error(StatusCode::BAD_REQUEST, error, CALL, &same, false, &fresh),
            Next::SameVersion
        );
        let tried = Tried { version: true, ..Tried::default() };
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &same, false, &tried), Next::Give);
        let other = modern("2027-01-01");
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &other, false, &fresh), Next::Give);
    }

    #[test]
    fn t60_only_a_bare_refusal_of_initialize_tries_http_sse() {
        let fresh = Tried::default();
        let none = MessageHeaders::default();
        for status in [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED] {
            assert_eq!(after_error(status, b"Not Found", b"{}", &none, true, &fresh), Next::Legacy);
            assert_eq!(after_error(status, b"Not Found", b"{}", &none, false, &fresh), Next::Give);
        }
        let jsonrpc = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"x"}}"#;
        assert_eq!(after_error(StatusCode::BAD_REQUEST, jsonrpc, b"{}", &none, true, &fresh), Next::Give);
        assert_eq!(
            after_error(StatusCode::INTERNAL_SERVER_ERROR, b"", b"{}", &none, true, &fresh),
            Next::Give
        );
    }

    #[test]
    fn t23_a_reply_stream_is_resumed_at_most_three_times_with_a_bounded_wait() {
        let mut r = Resumption::default();
        assert_eq!(r.next_try(false), None, "no event id, nothing to resume after");
        r.last_id = Some("7".into());
        assert_eq!(r.next_try(true), None, "2026-07-28 has no resumption");
        r.retry = Some(Duration::from_millis(u64::MAX));
        for _ in 0..MAX_RESUMPTIONS {
            assert_eq!(r.next_try(false), Some(("7".into(), MAX_SSE_RETRY)));
        }
        assert_eq!(r.next_try(false), None);
    }
}
