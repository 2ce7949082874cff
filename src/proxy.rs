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
//! [`crate::stdio`] owns the bytes on stdout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace, warn};

use crate::cli::Transport;
use crate::envelope::{
    self, Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError, PARSE_ERROR, RATE_LIMITED,
    SHUTTING_DOWN, UPSTREAM_ERROR,
};
use crate::ratelimit::Gate;
use crate::retry::{self, RetryPolicy};
use crate::stdio::{Frame, Outbox};
use crate::upstream::headers::{MessageHeaders, ParamHeader, SESSION_ID, param_annotations, param_values};
use crate::upstream::{MAX_ERROR_BODY_BYTES, Upstream, jsonrpc_error, sse};

/// `server/discover` probes must be answered soon, whatever the server does (S-09).
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight before answering them with an error.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the closing DELETE may take (T-22); shutdown must finish within 2 s.
const DELETE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long the HTTP+SSE stream may take to announce its endpoint (T-61).
const LEGACY_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many new sessions one request follows after 404s (T-12) before it is answered with an
/// error: once per expired session it met (so "at most once" for any one expiry); renewals it
/// merely waited for do not count. A server that drops every new session cannot make it loop.
const MAX_RENEWALS: u32 = 5;
/// How many times a broken reply stream is resumed with Last-Event-ID (T-23).
const MAX_RESUMPTIONS: u32 = 3;
/// Consecutive failures after which the GET stream is given up.
const MAX_GET_STREAM_FAILURES: u32 = 3;

/// A request waiting for its answer.
struct Pending {
    /// The id exactly as the client wrote it.
    id: Box<RawValue>,
    /// Whether this is `initialize` (its result sets the negotiated version).
    initialize: bool,
    /// Whether it belongs to the 2026-07-28 era (cancelling it means closing its stream, T-25).
    modern: bool,
    /// Wakes the request's task when the answer came by another way (the GET stream).
    done: Option<oneshot::Sender<()>>,
    /// Aborts the request's task when the client cancels it.
    abort: Option<AbortHandle>,
    /// Whether this is a 2026-07-28 `tools/list`, whose result teaches `x-mcp-header` (T-15).
    lists_tools: bool,
}

/// What [`Proxy::deliver`] did with a server message.
#[derive(Debug, PartialEq, Eq)]
enum Delivered {
    /// A response that answered a pending request.
    Answer,
    /// A progress notification (restarts request timeouts, T-32).
    Progress,
    /// Any other message written to stdout.
    Other,
    /// Not written: not JSON-RPC, or a response nobody waits for.
    Dropped,
}

/// Counters reported at exit.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    local_errors: AtomicU64,
}

/// The shared state of one proxy run.
pub struct Proxy {
    up: Upstream,
    out: Outbox,
    pending: Mutex<HashMap<IdKey, Pending>>,
    tasks: TaskTracker,
    request_timeout: Duration,
    max_message: usize,
    get_stream: Mutex<Option<AbortHandle>>,
    stats: Stats,
    /// Error kinds already logged at warn level: one line per problem, not per message.
    warned: Mutex<Vec<ErrorKind>>,
    shutting_down: AtomicBool,
    /// The rate-limit gate of this origin and key.
    gate: Gate,
    /// `--max-retries`, `--max-wait`.
    policy: RetryPolicy,
    /// The rate-limit headers of the last 429, for errors made while holding requests.
    last_limit_headers: Mutex<Vec<(String, String)>>,
    /// The client's `initialize` line, replayed to start a new session when the server has
    /// dropped the old one (T-12): the client will not send it again.
    init_line: Mutex<Option<Bytes>>,
    /// Makes concurrent 404s start one new session, not one each.
    renewing: tokio::sync::Mutex<()>,
    /// `--transport`.
    transport: Transport,
    /// The `x-mcp-header` annotations of each tool, from the last `tools/list` (T-15).
    tool_headers: std::sync::RwLock<HashMap<String, Vec<ParamHeader>>>,
}

impl Proxy {
    /// A proxy that forwards to `up` and writes to `out`.
    pub fn new(
        up: Upstream,
        out: Outbox,
        request_timeout: Duration,
        max_message: usize,
        gate: Gate,
        policy: RetryPolicy,
        transport: Transport,
    ) -> Arc<Self> {
        Arc::new(Proxy {
            gate,
            policy,
            last_limit_headers: Mutex::new(Vec::new()),
            init_line: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            transport,
            tool_headers: std::sync::RwLock::new(HashMap::new()),
            up,
            out,
            pending: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            request_timeout,
            max_message,
            get_stream: Mutex::new(None),
            stats: Stats::default(),
            warned: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
        })
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
                self.report(&err);
                self.write(err.to_response(id.as_deref()).into()).await;
            }
        }
    }

    async fn dispatch_line(self: &Arc<Self>, line: Bytes) {
        trace!(body = %String::from_utf8_lossy(&line), "stdin");
        if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return self.dispatch_batch(line).await;
        }
        let env = match Envelope::parse(&line) {
            Ok(env) => env,
            Err(e) => return self.reject_unparsable(&e).await,
        };
        match env.kind() {
            Ok(Kind::Request) => {
                let method = env.method.as_deref().unwrap_or_default();
                let params = env.params();
                let mut headers = MessageHeaders::derive(method, &params);
                if headers.is_modern() && method == "tools/call" {
                    headers.params = self.param_headers(&params);
                }
                let init = method == "initialize";
                let limit = if method == "server/discover" {
                    self.request_timeout.min(DISCOVER_TIMEOUT)
                } else {
                    self.request_timeout
                };
                let Some((key, id)) = self.register(&env, init, headers.is_modern()) else { return };
                if init {
                    *self.init_line.lock().unwrap() = Some(line.clone());
                }
                let what = format!("{method} (id {})", env.id.map_or("?", RawValue::get));
                let ids = vec![(key.clone(), id)];
                let handle =
                    self.tasks.spawn(self.clone().run_request(line, headers, ids, init, limit, what));
                if init {
                    // In line: whatever the client sends next needs the session this creates
                    // (a client must wait for the answer anyway, S-11; scripts may not).
                    let _ = handle.await;
                } else if let Some(p) = self.pending.lock().unwrap().get_mut(&key) {
                    p.abort = Some(handle.abort_handle());
                }
            }
            Ok(Kind::Notification) => {
                let method = env.method.as_deref().unwrap_or_default().to_owned();
                let params = env.params();
                if method == "notifications/cancelled" {
                    let modern = params.request_id.and_then(IdKey::new).and_then(|k| self.cancel(&k));
                    // In the 2026-07-28 era, closing the request's stream is the cancellation (T-25).
                    if modern == Some(true) {
                        return;
                    }
                }
                let headers = MessageHeaders::derive(&method, &params);
                if method == "notifications/initialized" {
                    // In line: the server must see it before the requests that follow (S-11).
                    if self.clone().send_one_way(line, headers, method).await {
                        self.open_get_stream();
                    }
                } else {
                    self.tasks.spawn(self.clone().send_one_way(line, headers, method));
                }
            }
            Ok(Kind::Response) => {
                // The client's answer to a server request (T-30).
                self.tasks.spawn(self.clone().send_one_way(
                    line,
                    MessageHeaders::default(),
                    "response".into(),
                ));
            }
            Err(invalid) => {
                let id = env.id.filter(|id| IdKey::new(id).is_some());
                let err = LocalError::new(
                    INVALID_REQUEST,
                    ErrorKind::InvalidRequest,
                    format!("invalid JSON-RPC message: {invalid}"),
                );
                self.report(&err);
                self.write(err.to_response(id).into()).await;
            }
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
            return self.write(err.to_response(None).into()).await;
        }
        let mut valid: Vec<&str> = Vec::new();
        let mut ids = Vec::new();
        for member in &members {
            let env = Envelope::parse(member.get().as_bytes());
            match env.as_ref().map(|e| (e.kind(), e)) {
                Ok((Ok(kind), env)) => {
                    if kind == Kind::Request {
                        match self.register(env, false, false) {
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
                    self.write(err.to_response(id).into()).await;
                }
                Err(_) => {
                    let err = LocalError::new(
                        INVALID_REQUEST,
                        ErrorKind::InvalidRequest,
                        "invalid JSON-RPC message in batch",
                    );
                    self.write(err.to_response(None).into()).await;
                }
            }
        }
        if valid.is_empty() {
            return;
        }
        let body: Bytes =
            if valid.len() == members.len() { line.clone() } else { format!("[{}]", valid.join(",")).into() };
        if ids.is_empty() {
            self.tasks.spawn(self.clone().send_one_way(body, MessageHeaders::default(), "batch".into()));
        } else {
            let limit = self.request_timeout;
            let what = format!("a batch of {}", valid.len());
            self.tasks.spawn(self.clone().run_request(
                body,
                MessageHeaders::default(),
                ids,
                false,
                limit,
                what,
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
        self.report(&err);
        self.write(err.to_response(None).into()).await;
    }

    /// Enters a request in the pending table. Returns its key and the receiver that wakes its task,
    /// or `None` (after answering it) when its id is already in flight (J-02).
    fn register(
        &self,
        env: &Envelope<'_>,
        initialize: bool,
        modern: bool,
    ) -> Option<(IdKey, oneshot::Receiver<()>)> {
        let (raw, key) = env.id.zip(env.id_key())?;
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap();
        if pending.contains_key(&key) {
            drop(pending);
            let err = LocalError::new(
                INVALID_REQUEST,
                ErrorKind::InvalidRequest,
                format!("request id {} is already in use by a request in flight: use a new id", raw.get()),
            );
            self.report(&err);
            let out = self.out.clone();
            let bytes: Bytes = err.to_response(Some(raw)).into();
            tokio::spawn(async move { out.send(bytes).await });
            return None;
        }
        let lists_tools = modern && env.method.as_deref() == Some("tools/list");
        pending.insert(
            key.clone(),
            Pending { id: raw.to_owned(), initialize, modern, done: Some(tx), abort: None, lists_tools },
        );
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        Some((key, rx))
    }

    /// Drops a request the client cancelled (J-08): no answer will be written for it. Returns
    /// whether it was a 2026-07-28 request, or `None` if it was not pending.
    fn cancel(&self, key: &IdKey) -> Option<bool> {
        let entry = self.pending.lock().unwrap().remove(key)?;
        if let Some(abort) = entry.abort {
            abort.abort();
        }
        debug!(id = %entry.id, "request cancelled by the client");
        Some(entry.modern)
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
                self.fail(key, &err).await;
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
            self.up.reset_session();
            if self.transport == Transport::Sse && !self.up.is_legacy() {
                self.start_legacy().await.map_err(|reason| self.legacy_error(&reason))?;
            }
        }
        let mut headers = headers.clone();
        let mut relisted = false;
        let (response, _, mut deadline) = loop {
            let (response, sent_session, deadline) =
                self.send(&body, &headers, initialize, limit, what).await?;
            let status = response.status();
            debug!(status = status.as_u16(), "POST answered");
            if status.is_success() {
                break (response, sent_session, deadline);
            }
            let resp_headers = response.headers().clone();
            let error_body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
            // T-15: HeaderMismatch about Mcp-Param-* means our schemas are stale: re-list, retry once.
            if status == StatusCode::BAD_REQUEST
                && headers.is_modern()
                && !relisted
                && jsonrpc_error(&error_body).is_some_and(|(e, _)| e.get().contains("-32020"))
                && Envelope::parse(&body).is_ok_and(|e| e.method.as_deref() == Some("tools/call"))
            {
                relisted = true;
                if self.relist_tools(&body, limit).await {
                    let env =
                        Envelope::parse(&body).map_err(|_| bad_response("unreadable request".into()))?;
                    headers.params = self.param_headers(&env.params());
                    continue;
                }
            }
            // T-60: a server that refuses the initialize POST with 400/404/405 and no JSON-RPC
            // error may speak only the 2024-11-05 HTTP+SSE transport: try its GET stream.
            if initialize
                && self.transport == Transport::Auto
                && !self.up.is_legacy()
                && matches!(status.as_u16(), 400 | 404 | 405)
                && jsonrpc_error(&error_body).is_none()
            {
                match self.start_legacy().await {
                    Ok(()) => continue,
                    Err(reason) => debug!("no HTTP+SSE fallback either: {reason}"),
                }
            }
            return self.answer_http_error(status, &resp_headers, &error_body, sent_session, &ids).await;
        };
        let status = response.status();
        if initialize {
            self.up.set_session_id(response.headers().get(&SESSION_ID).cloned());
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if self.up.is_legacy() {
            // HTTP+SSE: the POST only says "accepted"; the answer comes on the stream (T-61).
            drop(response);
        } else if content_type.starts_with("text/event-stream") {
            let mut events = sse::decode(response.bytes_stream(), self.max_message);
            // Resumption state (T-23, T-24): the last event id and the server's `retry`.
            let (mut last_id, mut retry_after, mut resumed) = (None::<String>, None::<Duration>, 0u32);
            loop {
                let event = match timeout_at(deadline, events.next()).await {
                    Err(_) => return Err(self.up.timeout_error(limit)),
                    Ok(next @ (None | Some(Err(_)))) => {
                        // The stream ended or broke before the answer. A legacy server that gave
                        // event ids can replay it on a GET with Last-Event-ID; 2026-07-28 cannot.
                        let broken = next.and_then(Result::err);
                        let Some(id) =
                            last_id.clone().filter(|_| !headers.is_modern() && resumed < MAX_RESUMPTIONS)
                        else {
                            match broken {
                                Some(e) => return Err(self.stream_error(&e)),
                                None => break,
                            }
                        };
                        resumed += 1;
                        let wait = retry_after.unwrap_or(Duration::from_millis(1000) * (resumed + 1) / 2);
                        debug!(what, last_event_id = %id, wait_ms = wait.as_millis() as u64, "resuming the reply stream");
                        tokio::time::sleep(wait).await;
                        self.admit(what).await?;
                        match timeout_at(deadline, self.up.get_stream(Some(&id)).send()).await {
                            Ok(Ok(r)) if r.status().is_success() => {
                                events = sse::decode(r.bytes_stream(), self.max_message);
                                continue;
                            }
                            _ => match broken {
                                Some(e) => return Err(self.stream_error(&e)),
                                None => break,
                            },
                        }
                    }
                    Ok(Some(Ok(event))) => event,
                };
                if let Some(id) = &event.id {
                    last_id = Some(id.clone());
                }
                if let Some(ms) = event.retry {
                    retry_after = Some(Duration::from_millis(ms));
                }
                if !sse::is_message(&event) {
                    continue;
                }
                let data = Bytes::from(event.data.unwrap_or_default());
                if self.deliver(data).await == Delivered::Progress {
                    deadline = Instant::now() + limit;
                }
                if !self.any_pending(&ids) {
                    return Ok(());
                }
            }
        } else {
            let body = match read_body(response, self.max_message, deadline).await {
                Ok(body) => body,
                Err(BodyError::Timeout) => return Err(self.up.timeout_error(limit)),
                Err(BodyError::TooLarge) => return Err(self.too_large()),
                Err(BodyError::Http(e)) => return Err(self.up.send_error(&e)),
            };
            if body.iter().any(|b| !b.is_ascii_whitespace()) {
                if !content_type.is_empty() && !content_type.contains("json") {
                    return Err(bad_response(format!(
                        "the server answered with {content_type}, not JSON or an event stream: check that the URL is the MCP endpoint"
                    )));
                }
                self.deliver_body(body).await;
            }
        }
        if !self.any_pending(&ids) {
            return Ok(());
        }
        if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT || self.up.is_legacy() {
            // Accepted without an answer: it will come on the GET stream (T-20).
            for (key, done) in ids {
                if self.is_pending(&key) && timeout_at(deadline, done).await.is_err() {
                    return Err(self.up.timeout_error(limit));
                }
            }
            return Ok(());
        }
        Err(bad_response(
            "the server ended its reply without answering this request; it may or may not have been processed".into(),
        ))
    }

    /// Sends one POST: through the rate-limit gate, waiting out 429s (and 503s with Retry-After)
    /// as the server asks, and sending again only what provably was not processed (a refused
    /// connection, a 429; RFC 9110 §9.2.2, R-05). Returns the response, whether it carried the
    /// session id, and the deadline for reading it.
    async fn send(
        self: &Arc<Self>,
        body: &Bytes,
        headers: &MessageHeaders,
        initialize: bool,
        limit: Duration,
        what: &str,
    ) -> Result<(reqwest::Response, bool, Instant), LocalError> {
        let mut retries = 0u32;
        let mut renewals = 0u32;
        loop {
            self.admit(what).await?;
            let session = if initialize { None } else { Some(self.up.session()) };
            let (request, sent_session) = self.up.post(body.clone(), headers, session.as_ref());
            // The timeout measures the server, not the time spent waiting for the gate.
            let deadline = Instant::now() + limit;
            let response = match timeout_at(deadline, request.send()).await {
                Err(_) => return Err(self.up.timeout_error(limit)),
                Ok(Err(e)) => {
                    let err = self.up.send_error(&e);
                    if err.request_sent == Some(false) && retries < self.policy.max_retries {
                        let wait = self.policy.backoff(retries);
                        retries += 1;
                        self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
                        info!(
                            "{what}: {}; trying again in {} ({retries} of {})",
                            err.message,
                            retry::human(wait),
                            self.policy.max_retries
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(err);
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            // T-12: a 404 for a request that carried the session id means the session is gone.
            // A request in flight may meet several expiries under load; a server that drops
            // every new session must not make it loop, hence the bound.
            if status == StatusCode::NOT_FOUND
                && renewals < MAX_RENEWALS
                && let Some(expired) = session.as_ref().and_then(|s| s.id.clone())
                && self.init_line.lock().unwrap().is_some()
            {
                drop(response);
                if self.renew_session(&expired, limit).await? {
                    renewals += 1;
                }
                continue;
            }
            let limited = status == StatusCode::TOO_MANY_REQUESTS
                || (status == StatusCode::SERVICE_UNAVAILABLE
                    && response.headers().contains_key(RETRY_AFTER));
            if !limited {
                if status.is_success()
                    && let Some(w) = retry::quota_spent(response.headers(), SystemTime::now())
                {
                    debug!(
                        "the server says the quota is spent; holding requests for {}",
                        retry::human(w.delay)
                    );
                    *self.last_limit_headers.lock().unwrap() = retry::rate_limit_headers(response.headers());
                    self.gate.block_for(w.delay, w.source.as_str());
                }
                return Ok((response, sent_session, deadline));
            }
            self.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
            let resp_headers = response.headers().clone();
            *self.last_limit_headers.lock().unwrap() = retry::rate_limit_headers(&resp_headers);
            let asked = retry::server_wait(&resp_headers, SystemTime::now());
            let wait = match asked {
                Some(w) => self.policy.with_jitter(w.delay),
                None => self.policy.backoff(retries),
            };
            let source = asked.map_or(retry::Source::Backoff, |w| w.source);
            if let Some(w) = asked {
                // Whatever happens to this request, the others wait for the same deadline.
                self.gate.block_for(w.delay, source.as_str());
            }
            if wait > self.policy.max_wait || retries >= self.policy.max_retries {
                let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
                let over_cap = wait > self.policy.max_wait;
                return Err(self.rate_limited(
                    Some((status, &body)),
                    wait,
                    source.as_str(),
                    over_cap,
                    retries,
                    false,
                ));
            }
            if asked.is_none() {
                self.gate.block_for(wait, source.as_str());
            }
            drop(response);
            retries += 1;
            self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts a new session after the server dropped `expired` (T-12): replays the client's
    /// `initialize` and `notifications/initialized` upstream (their answers stay here: the client
    /// has its session already) and reopens the GET stream. One renewal for all the requests
    /// that met the same 404. Returns whether this call started it (false: another request had).
    async fn renew_session(
        self: &Arc<Self>,
        expired: &reqwest::header::HeaderValue,
        limit: Duration,
    ) -> Result<bool, LocalError> {
        let _one_at_a_time = self.renewing.lock().await;
        if self.up.session().id.as_ref() != Some(expired) {
            return Ok(false); // renewed by another request meanwhile
        }
        let Some(line) = self.init_line.lock().unwrap().clone() else {
            return Err(LocalError::new(
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                "the server ended the MCP session",
            ));
        };
        warn!("the server ended the MCP session (HTTP 404 for its session id); starting a new one");
        let fail = |detail: String| {
            let mut err = LocalError::new(
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                format!(
                    "the server ended the MCP session and starting a new one failed ({detail}): restart the client"
                ),
            );
            err.request_sent = Some(false);
            err
        };
        let deadline = Instant::now() + limit;
        let (request, _) = self.up.post(line, &MessageHeaders::default(), None);
        let response = match timeout_at(deadline, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            Ok(Ok(r)) => return Err(fail(format!("HTTP {}", r.status().as_u16()))),
            Ok(Err(e)) => return Err(fail(self.up.send_error(&e).message)),
            Err(_) => return Err(fail("no answer".into())),
        };
        let new_id = response.headers().get(&SESSION_ID).cloned();
        let version = first_response(response, self.max_message, deadline).await.and_then(|bytes| {
            let env = Envelope::parse(&bytes).ok()?;
            let params: envelope::Params = serde_json::from_str(env.result?.get()).ok()?;
            params.protocol_version.map(|v| v.into_owned())
        });
        self.up.set_session_id(new_id);
        if let Some(v) = version {
            self.up.set_protocol_version(&v);
        }
        let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let (request, _) = self.up.post(initialized, &MessageHeaders::default(), Some(&self.up.session()));
        match timeout_at(deadline, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => {}
            Ok(Ok(r)) => {
                return Err(fail(format!("notifications/initialized: HTTP {}", r.status().as_u16())));
            }
            _ => return Err(fail("notifications/initialized was not delivered".into())),
        }
        self.restart_get_stream();
        info!("new MCP session started; requests continue");
        Ok(true)
    }

    /// The `Mcp-Param-*` headers of a 2026-07-28 `tools/call` (T-15).
    fn param_headers(
        &self,
        params: &envelope::Params<'_>,
    ) -> Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
        let Some(name) = params.name.as_deref() else { return Vec::new() };
        let known = self.tool_headers.read().unwrap();
        let Some(annotations) = known.get(name).filter(|a| !a.is_empty()) else { return Vec::new() };
        let arguments = params
            .arguments
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        param_values(annotations, &arguments)
    }

    /// Learns the `x-mcp-header` annotations of a `tools/list` result (T-15). Tools with invalid
    /// annotations must be excluded: then the message is rebuilt without them and returned.
    fn learn_tools(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut msg: serde_json::Value = serde_json::from_slice(message).ok()?;
        let tools = msg.pointer_mut("/result/tools")?.as_array_mut()?;
        let mut known = self.tool_headers.write().unwrap();
        let before = tools.len();
        tools.retain(|tool| {
            let name = tool.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            match param_annotations(tool.get("inputSchema").unwrap_or(&serde_json::Value::Null)) {
                Ok(annotations) => {
                    known.insert(name.to_owned(), annotations);
                    true
                }
                Err(reason) => {
                    warn!("tool {name:?} left out of tools/list: its schema has an invalid x-mcp-header ({reason})");
                    known.remove(name);
                    false
                }
            }
        });
        (tools.len() != before).then(|| serde_json::to_vec(&msg).unwrap_or_default())
    }

    /// Runs `tools/list` for the proxy itself (every page), with the `_meta` of `call`, to learn
    /// the current `x-mcp-header` annotations. Returns whether it got a list.
    async fn relist_tools(self: &Arc<Self>, call: &[u8], limit: Duration) -> bool {
        let Ok(call) = serde_json::from_slice::<serde_json::Value>(call) else { return false };
        let meta = call.pointer("/params/_meta").cloned().unwrap_or(serde_json::Value::Null);
        let mut cursor: Option<serde_json::Value> = None;
        for page in 0..10 {
            let mut params = serde_json::json!({ "_meta": meta });
            if let Some(c) = cursor.take() {
                params["cursor"] = c;
            }
            let request = serde_json::json!({"jsonrpc":"2.0","id":format!("mcp-sidecar-tools-list-{page}"),"method":"tools/list","params":params});
            let bytes = Bytes::from(request.to_string());
            let headers = match Envelope::parse(&bytes) {
                Ok(env) => MessageHeaders::derive("tools/list", &env.params()),
                Err(_) => return false,
            };
            let what = "tools/list (to refresh x-mcp-header)";
            let Ok((response, _, deadline)) = self.send(&bytes, &headers, false, limit, what).await else {
                return false;
            };
            if !response.status().is_success() {
                return false;
            }
            let Some(answer) = first_response(response, self.max_message, deadline).await else {
                return false;
            };
            self.learn_tools(&answer);
            let next = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.pointer("/result/nextCursor").cloned());
            match next {
                Some(c) if !c.is_null() => cursor = Some(c),
                _ => return true,
            }
        }
        true
    }

    /// Opens the 2024-11-05 HTTP+SSE stream and waits for its `endpoint` event (T-60, T-61).
    async fn start_legacy(self: &Arc<Self>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(self.clone().listen_legacy(tx)).abort_handle();
        if let Some(old) = self.get_stream.lock().unwrap().replace(task) {
            old.abort();
        }
        match timeout(LEGACY_ENDPOINT_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                info!("{} speaks the 2024-11-05 HTTP+SSE transport; using it", self.up.host());
                Ok(())
            }
            Ok(Ok(Err(reason))) => Err(reason),
            _ => Err("the event stream announced no endpoint in time".into()),
        }
    }

    fn legacy_error(&self, reason: &str) -> LocalError {
        let mut err = LocalError::new(
            UPSTREAM_ERROR,
            ErrorKind::WrongEndpoint,
            format!(
                "{} offers no HTTP+SSE stream ({reason}): check the URL, or try --transport auto",
                self.up.shown_url()
            ),
        );
        err.request_sent = Some(false);
        err
    }

    /// Reads the HTTP+SSE stream: its first event names the POST endpoint, every later `message`
    /// event is delivered. When it drops, it is reopened (a new endpoint, so a new session: the
    /// client's handshake is replayed, its answers dropped as nobody waits for them).
    async fn listen_legacy(self: Arc<Self>, ready: oneshot::Sender<Result<(), String>>) {
        let mut ready = Some(ready);
        let mut failures = 0u32;
        loop {
            match self.open_legacy().await {
                Ok(mut events) => {
                    match ready.take() {
                        Some(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        None => self.replay_handshake().await,
                    }
                    failures = 0;
                    while let Some(Ok(event)) = events.next().await {
                        if sse::is_message(&event) {
                            self.deliver(Bytes::from(event.data.unwrap_or_default())).await;
                        }
                    }
                    info!("the HTTP+SSE stream ended; reopening it");
                }
                Err(reason) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(reason));
                        return;
                    }
                    debug!("reopening the HTTP+SSE stream failed: {reason}");
                }
            }
            failures += 1;
            if failures > MAX_GET_STREAM_FAILURES || self.shutting_down.load(Ordering::Relaxed) {
                warn!("the HTTP+SSE stream was lost and could not be reopened: restart the client");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(failures)).await;
        }
    }

    /// Opens the stream and reads up to its `endpoint` event.
    async fn open_legacy(&self) -> Result<LegacyEvents, String> {
        if let Err(b) = self.gate.admit(self.policy.max_wait, |_, _| {}).await {
            tokio::time::sleep(b.wait).await;
        }
        let response = self.up.legacy_stream().send().await.map_err(|e| self.up.send_error(&e).message)?;
        let status = response.status();
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        if !status.is_success() || !is_sse {
            return Err(format!("the GET answered HTTP {} without an event stream", status.as_u16()));
        }
        let mut events: LegacyEvents = Box::pin(sse::decode(response.bytes_stream(), self.max_message));
        loop {
            match events.next().await {
                Some(Ok(e)) if e.event.as_deref() == Some("endpoint") => {
                    self.up.set_endpoint(e.data.as_deref().unwrap_or(""))?;
                    return Ok(events);
                }
                Some(Ok(e)) if e.data.is_none() => continue,
                Some(Ok(_)) => return Err("the stream's first event is not `endpoint`".into()),
                _ => return Err("the stream ended before announcing an endpoint".into()),
            }
        }
    }

    /// Sends the client's `initialize` and `notifications/initialized` again, for a new session.
    async fn replay_handshake(&self) {
        let Some(line) = self.init_line.lock().unwrap().clone() else { return };
        let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        for body in [line, initialized] {
            let (request, _) = self.up.post(body, &MessageHeaders::default(), None);
            match timeout(self.request_timeout, request.send()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("replaying the handshake failed: {}", self.up.send_error(&e).message),
                Err(_) => debug!("replaying the handshake timed out"),
            }
        }
    }

    /// Waits at the gate, logging each wait; a wait longer than `--max-wait` is an error.
    async fn admit(&self, what: &str) -> Result<(), LocalError> {
        let max = self.policy.max_wait;
        self.gate
            .admit(max, |wait, why| info!("{what}: waiting {} for the rate limit ({why})", retry::human(wait)))
            .await
            .map_err(|b| {
                if b.client_side {
                    let mut err = LocalError::new(
                        RATE_LIMITED,
                        ErrorKind::RateLimited,
                        format!(
                            "the client-side limit {} is used up; a slot frees in {}, longer than --max-wait {}: try again then, or raise the limit",
                            b.reason.trim_start_matches("--rate-limit "),
                            retry::human(b.wait),
                            retry::human(max)
                        ),
                    );
                    err.request_sent = Some(false);
                    err.retry_after = Some(b.wait);
                    err
                } else {
                    self.rate_limited(None, b.wait, &b.reason, true, 0, true)
                }
            })
    }

    /// The error for a request the rate limit keeps from going through: when it resets, which
    /// limit (a guess at a daily quota for long waits), and the headers seen.
    fn rate_limited(
        &self,
        response: Option<(StatusCode, &[u8])>,
        wait: Duration,
        source: &str,
        over_cap: bool,
        retries: u32,
        held: bool,
    ) -> LocalError {
        let host = self.up.host();
        let resets = if source == retry::Source::Backoff.as_str() {
            "the server did not say when it resets".to_owned()
        } else {
            let daily = if wait >= Duration::from_secs(3600) { " (a daily quota?)" } else { "" };
            format!("it resets in {} ({source}){daily}", retry::human(wait))
        };
        let status = response.map_or(String::new(), |(s, body)| {
            let said = crate::upstream::server_message(body)
                .map(|t| format!(": {}", self.up.redact(&t)))
                .unwrap_or_default();
            format!(" (HTTP {}{said})", s.as_u16())
        });
        let message = if held {
            format!(
                "rate limit reached at {host}; {resets}, longer than --max-wait {}: try again then",
                retry::human(self.policy.max_wait)
            )
        } else if over_cap {
            format!(
                "rate limit reached at {host}{status}; {resets}, longer than --max-wait {}, so the request was not sent again: try again then",
                retry::human(self.policy.max_wait)
            )
        } else {
            format!(
                "still rate limited by {host}{status} after {retries} retries (--max-retries); {resets}: try again then"
            )
        };
        let mut err = LocalError::new(RATE_LIMITED, ErrorKind::RateLimited, message);
        err.http_status = response.map(|(s, _)| s.as_u16());
        err.request_sent = Some(false);
        err.retry_after = (source != retry::Source::Backoff.as_str()).then_some(wait);
        err.rate_limit_headers = self.last_limit_headers.lock().unwrap().clone();
        err
    }

    /// Answers the pending ids of a request that got an HTTP error status: the server's own
    /// JSON-RPC error where it sent one (T-40), else an error that explains the status.
    async fn answer_http_error(
        &self,
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
            let same_id = server_id.and_then(IdKey::new).as_ref() == Some(key);
            let mut message = if same_id {
                body.to_vec()
            } else {
                match self.pending.lock().unwrap().get(key) {
                    Some(p) => envelope::error_with_id(&p.id, error),
                    None => return Ok(()),
                }
            };
            envelope::flatten_lines(&mut message);
            self.deliver(message.into()).await;
            return Ok(());
        }
        Err(self.up.status_error(status, headers, body, sent_session))
    }

    /// Sends a notification or a client response; nothing comes back to the client. Returns
    /// whether the server accepted it.
    async fn send_one_way(self: Arc<Self>, body: Bytes, headers: MessageHeaders, what: String) -> bool {
        match self.send(&body, &headers, false, self.request_timeout, &what).await {
            Err(err) => {
                self.report_with(&err, &format!("{what} was not delivered"));
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
                let deadline = Instant::now() + Duration::from_secs(5);
                let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
                let err = self.up.status_error(status, &resp_headers, &body, sent_session);
                self.report_with(&err, &format!("the server did not accept a {what}"));
                false
            }
        }
    }

    /// Starts listening on the GET stream for server-initiated messages (T-20), once.
    fn open_get_stream(self: &Arc<Self>) {
        let mut slot = self.get_stream.lock().unwrap();
        if slot.is_some() || self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        *slot = Some(tokio::spawn(self.clone().listen()).abort_handle());
    }

    /// Replaces the GET stream with one for the current session.
    fn restart_get_stream(self: &Arc<Self>) {
        if let Some(old) = self.get_stream.lock().unwrap().take() {
            old.abort();
        }
        self.open_get_stream();
    }

    /// Reads the GET stream, reopening it after drops with `Last-Event-ID` (T-23), until the
    /// server says it has none (405/404) or it fails repeatedly.
    async fn listen(self: Arc<Self>) {
        let mut last_event_id: Option<String> = None;
        let mut retry: Option<Duration> = None;
        let mut failures = 0u32;
        loop {
            // The GET stream waits at the gate like everything else; nobody waits on it, so it
            // sits out even waits longer than --max-wait.
            if let Err(b) = self.gate.admit(self.policy.max_wait, |_, _| {}).await {
                tokio::time::sleep(b.wait).await;
                continue;
            }
            match self.up.get_stream(last_event_id.as_deref()).send().await {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    self.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
                    let asked = retry::server_wait(r.headers(), SystemTime::now());
                    let wait =
                        asked.map_or(self.policy.backoff(failures), |w| self.policy.with_jitter(w.delay));
                    let source = asked.map_or(retry::Source::Backoff, |w| w.source).as_str();
                    info!(
                        "the stream for server messages is rate limited; reopening it in {} ({source})",
                        retry::human(wait)
                    );
                    self.gate.block_for(wait, source);
                    continue;
                }
                Ok(r) if matches!(r.status().as_u16(), 404 | 405) => {
                    debug!(status = r.status().as_u16(), "the server offers no GET stream");
                    return;
                }
                Ok(r) if r.status().is_success() => {
                    let mut events = sse::decode(r.bytes_stream(), self.max_message);
                    while let Some(Ok(event)) = events.next().await {
                        failures = 0;
                        if let Some(id) = &event.id {
                            last_event_id = Some(id.clone());
                        }
                        if let Some(ms) = event.retry {
                            retry = Some(Duration::from_millis(ms));
                        }
                        if sse::is_message(&event) {
                            self.deliver(Bytes::from(event.data.unwrap_or_default())).await;
                        }
                    }
                }
                Ok(r) => {
                    let status = r.status();
                    let headers = r.headers().clone();
                    let body = read_body(r, MAX_ERROR_BODY_BYTES, Instant::now() + Duration::from_secs(5))
                        .await
                        .unwrap_or_default();
                    let err = self.up.status_error(status, &headers, &body, true);
                    self.report_with(&err, "the stream for server messages could not be opened");
                    return;
                }
                Err(e) => {
                    debug!(error = %self.up.send_error(&e).message, "GET stream failed");
                }
            }
            failures += 1;
            if failures >= MAX_GET_STREAM_FAILURES || self.shutting_down.load(Ordering::Relaxed) {
                warn!("the stream for server-initiated messages was lost; requests still work");
                return;
            }
            tokio::time::sleep(retry.unwrap_or(Duration::from_millis(500) * 2u32.pow(failures))).await;
        }
    }

    /// Writes one message from the server to stdout if it is JSON-RPC and, for a response, if
    /// its request is still pending. The single place where pending requests are answered.
    async fn deliver(&self, bytes: Bytes) -> Delivered {
        trace!(body = %String::from_utf8_lossy(&bytes), "from server");
        // Validated as sent: a raw line break inside a string is invalid JSON and must not be
        // "repaired" by the flattening below, which is only sound for valid JSON.
        let env = match Envelope::parse(&bytes) {
            Ok(env) => env,
            Err(_) => {
                self.report(&bad_response(
                    "the server sent a message that is not a JSON-RPC object; it was dropped".into(),
                ));
                return Delivered::Dropped;
            }
        };
        let delivered = match env.kind() {
            Ok(Kind::Response) => {
                let Some(key) = env.id_key() else { return Delivered::Dropped };
                let Some(mut entry) = self.pending.lock().unwrap().remove(&key) else {
                    debug!(id = %env.id.map_or("", RawValue::get), "response for no pending request dropped (cancelled, answered or unknown)");
                    return Delivered::Dropped;
                };
                if entry.initialize
                    && let Some(version) = env.result.and_then(|r| {
                        serde_json::from_str::<envelope::Params>(r.get())
                            .ok()?
                            .protocol_version
                            .map(|v| v.into_owned())
                    })
                {
                    debug!(version, "protocol version negotiated");
                    self.up.set_protocol_version(&version);
                }
                if let Some(done) = entry.done.take() {
                    let _ = done.send(());
                }
                if entry.lists_tools
                    && let Some(filtered) = self.learn_tools(&bytes)
                {
                    drop(env);
                    self.write(one_line(filtered.into())).await;
                    return Delivered::Answer;
                }
                Delivered::Answer
            }
            Ok(Kind::Notification) if env.method.as_deref() == Some("notifications/progress") => {
                Delivered::Progress
            }
            Ok(_) => Delivered::Other,
            Err(e) => {
                self.report(&bad_response(format!(
                    "the server sent an invalid JSON-RPC message ({e}); it was dropped"
                )));
                return Delivered::Dropped;
            }
        };
        drop(env);
        self.write(one_line(bytes)).await;
        delivered
    }

    /// Delivers a JSON body: one message, or a 2025-03-26 batch of them (J-07).
    async fn deliver_body(&self, body: Bytes) {
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            match serde_json::from_slice::<Vec<&RawValue>>(&body) {
                Ok(members) => {
                    for m in members {
                        self.deliver(Bytes::copy_from_slice(m.get().as_bytes())).await;
                    }
                }
                Err(_) => {
                    self.report(&bad_response("the server's reply is not valid JSON; it was dropped".into()))
                }
            }
        } else {
            self.deliver(body).await;
        }
    }

    /// Answers a pending request with a local error, unless it was answered already.
    async fn fail(&self, key: &IdKey, err: &LocalError) {
        let Some(entry) = self.pending.lock().unwrap().remove(key) else { return };
        self.stats.local_errors.fetch_add(1, Ordering::Relaxed);
        self.report(err);
        self.write(err.to_response(Some(&entry.id)).into()).await;
    }

    fn is_pending(&self, key: &IdKey) -> bool {
        self.pending.lock().unwrap().contains_key(key)
    }

    fn any_pending(&self, ids: &[(IdKey, oneshot::Receiver<()>)]) -> bool {
        let pending = self.pending.lock().unwrap();
        ids.iter().any(|(k, _)| pending.contains_key(k))
    }

    async fn write(&self, bytes: Bytes) {
        if !self.out.send(bytes).await {
            debug!("stdout is closed; message dropped");
        }
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

    /// Logs a problem: the first time of its kind at warn level, later ones at debug.
    fn report(&self, err: &LocalError) {
        self.report_with(err, "");
    }

    fn report_with(&self, err: &LocalError, context: &str) {
        let first = {
            let mut warned = self.warned.lock().unwrap();
            let first = !warned.contains(&err.kind);
            if first {
                warned.push(err.kind);
            }
            first
        };
        let sep = if context.is_empty() { "" } else { ": " };
        if first {
            warn!("{context}{sep}{}", err.message);
        } else {
            debug!("{context}{sep}{}", err.message);
        }
    }

    /// Stops everything in order (S-06, T-22): waits up to [`DRAIN_TIMEOUT`] for requests in
    /// flight, answers the rest with an error, ends the session with DELETE.
    pub async fn shutdown(self: &Arc<Self>, drain: bool) {
        self.shutting_down.store(true, Ordering::Relaxed);
        if let Some(get) = self.get_stream.lock().unwrap().take() {
            get.abort();
        }
        self.tasks.close();
        if drain && timeout(DRAIN_TIMEOUT, self.tasks.wait()).await.is_err() {
            info!("shutting down with requests still in flight; answering them with an error");
        }
        let left: Vec<Pending> = self.pending.lock().unwrap().drain().map(|(_, p)| p).collect();
        for entry in left {
            if let Some(abort) = &entry.abort {
                abort.abort();
            }
            let err = LocalError::new(
                SHUTTING_DOWN,
                ErrorKind::ShuttingDown,
                "mcp-sidecar is shutting down and the server had not answered yet; the request may have been processed",
            );
            self.write(err.to_response(Some(&entry.id)).into()).await;
        }
        if let Some(delete) = self.up.delete_session() {
            // Same rate-limit rules, within the shutdown budget.
            if self.gate.admit(DELETE_TIMEOUT, |_, _| {}).await.is_err() {
                debug!("not closing the session: the rate limit holds requests past the shutdown budget");
            } else {
                match timeout(DELETE_TIMEOUT, delete.send()).await {
                    Ok(Ok(r)) => debug!(status = r.status().as_u16(), "session closed"),
                    Ok(Err(e)) => debug!(error = %e.without_url(), "closing the session failed"),
                    Err(_) => debug!("closing the session timed out"),
                }
            }
        }
        let limited = self.gate.stats.limited.load(Ordering::Relaxed);
        let waits = self.gate.stats.waits.load(Ordering::Relaxed);
        if limited > 0 || waits > 0 {
            info!(
                "rate limits: {limited} answers with HTTP 429, {waits} waits totalling {}, {} requests sent again",
                retry::human(Duration::from_millis(self.gate.stats.waited_ms.load(Ordering::Relaxed))),
                self.gate.stats.retries.load(Ordering::Relaxed)
            );
        }
        let requests = self.stats.requests.load(Ordering::Relaxed);
        let errors = self.stats.local_errors.load(Ordering::Relaxed);
        debug!(requests, errors, "proxy stopped");
        if errors > 0 {
            info!(
                "{errors} of {requests} requests to {} were answered with an error by mcp-sidecar",
                self.up.shown_url()
            );
        }
    }
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

/// The first JSON-RPC response in a reply, JSON or SSE; `None` if there is none in time.
async fn first_response(response: reqwest::Response, max: usize, deadline: Instant) -> Option<Bytes> {
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
    if !is_sse {
        return read_body(response, max, deadline).await.ok();
    }
    let mut events = sse::decode(response.bytes_stream(), max);
    while let Ok(Some(Ok(event))) = timeout_at(deadline, events.next()).await {
        if sse::is_message(&event) {
            let data = Bytes::from(event.data.unwrap_or_default());
            if Envelope::parse(&data).ok().and_then(|e| e.kind().ok()) == Some(Kind::Response) {
                return Some(data);
            }
        }
    }
    None
}

/// The events of an HTTP+SSE stream after its `endpoint`.
type LegacyEvents =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

/// Why reading a body failed.
enum BodyError {
    Timeout,
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a whole body of at most `max` bytes before `deadline`.
async fn read_body(
    mut response: reqwest::Response,
    max: usize,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    loop {
        match timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Http(e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => match &first {
                None => first = Some(chunk),
                Some(f) => {
                    if rest.is_empty() {
                        rest.reserve(response.content_length().map_or(f.len() * 2, |n| n as usize));
                        rest.extend_from_slice(f);
                    }
                    rest.extend_from_slice(&chunk);
                }
            },
        }
        let len = if rest.is_empty() { first.as_ref().map_or(0, Bytes::len) } else { rest.len() };
        if len > max {
            return Err(BodyError::TooLarge);
        }
    }
    Ok(if rest.is_empty() { first.unwrap_or_default() } else { rest.into() })
}
