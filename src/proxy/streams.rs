//! The streams for server messages: the GET stream (T-20, T-23) and the 2024-11-05 HTTP+SSE
//! transport's stream (T-60, T-61). [`Streams`] owns their tasks; what they read goes to the
//! [`Host`] that runs them (the proxy), which is handed in: this file knows nothing of it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::link::Link;
use super::reply::{LegacyEvents, MAX_SSE_RETRY, Resumption, is_event_stream};
use crate::envelope::{ErrorKind, LocalError, UPSTREAM_ERROR};
use crate::ratelimit::{Admission, Use};
use crate::retry;
use crate::sync::Locked;
use crate::upstream::sse;

/// How long the HTTP+SSE stream may take to announce its endpoint (T-61).
const LEGACY_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a stream for server messages sits out a rate-limit deadline before it looks at
/// the gate again (the deadline may have been cleared by a success meanwhile).
const MAX_STREAM_HOLD: Duration = Duration::from_secs(60);
/// Consecutive failures after which the GET stream is given up.
const MAX_GET_STREAM_FAILURES: u32 = 3;

/// What runs the streams: the way to the server, and where their messages go.
pub(super) trait Host: Send + Sync + Sized + 'static {
    fn link(&self) -> &Link;
    fn streams(&self) -> &Streams;
    /// Whether the run is ending (no stream is opened again).
    fn closing(&self) -> bool;
    /// Delivers a body of server messages (one, or a batch).
    fn deliver_body(this: &Arc<Self>, body: Bytes) -> impl Future<Output = bool> + Send;
}

/// The task reading the stream for server messages, and whether it gave up.
pub(super) struct Streams {
    task: Mutex<Option<AbortHandle>>,
    /// The GET stream gave up after repeated failures; the next answered POST reopens it.
    lost: AtomicBool,
    max_message: usize,
    /// `--request-timeout`, for the handshake replayed on a new HTTP+SSE stream.
    request_timeout: Duration,
    /// Whether a stream for messages the server starts is opened at all (not for a one-shot
    /// command, whose client reads none: issue 23.5). The HTTP+SSE transport's stream carries
    /// the answers too, and is always opened.
    pub(super) listening: bool,
}

impl Streams {
    pub(super) fn new(max_message: usize, request_timeout: Duration, listening: bool) -> Streams {
        Streams {
            task: Mutex::new(None),
            lost: AtomicBool::new(false),
            max_message,
            request_timeout,
            listening,
        }
    }

    /// Stops the stream (shutdown).
    pub(super) fn stop(&self) {
        if let Some(task) = self.task.locked().take() {
            task.abort();
        }
    }

    /// The server answers again: if the GET stream had given up, it is worth another try.
    pub(super) fn reopen_if_lost<H: Host>(host: &Arc<H>) {
        if host.streams().lost.swap(false, Ordering::Relaxed) {
            Self::restart_get(host);
        }
    }

    /// Opens the 2024-11-05 HTTP+SSE stream and waits for its `endpoint` event (T-60, T-61).
    pub(super) async fn start_legacy<H: Host>(host: &Arc<H>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(Self::listen_legacy(host.clone(), tx)).abort_handle();
        if let Some(old) = host.streams().task.locked().replace(task) {
            old.abort();
        }
        match timeout(LEGACY_ENDPOINT_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                info!("{} speaks the 2024-11-05 HTTP+SSE transport; using it", host.link().up.host());
                Ok(())
            }
            Ok(Ok(Err(reason))) => Err(reason),
            _ => Err("the event stream announced no endpoint in time".into()),
        }
    }

    pub(super) fn legacy_error(link: &Link, reason: &str) -> LocalError {
        let mut err = LocalError::new(
            UPSTREAM_ERROR,
            ErrorKind::WrongEndpoint,
            format!(
                "{} offers no HTTP+SSE stream ({reason}): check the URL, or try --transport auto",
                link.up.shown_url()
            ),
        );
        err.request_sent = Some(false);
        err
    }

    /// Reads the HTTP+SSE stream: its first event names the POST endpoint, every later `message`
    /// event is delivered. When it drops, it is reopened (a new endpoint, so a new session: the
    /// client's handshake is replayed, its answers dropped as nobody waits for them).
    async fn listen_legacy<H: Host>(host: Arc<H>, ready: oneshot::Sender<Result<(), String>>) {
        let (link, streams) = (host.link(), host.streams());
        let mut ready = Some(ready);
        let mut failures = 0u32;
        loop {
            match streams.open_legacy(link).await {
                Ok(mut events) => {
                    match ready.take() {
                        Some(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        None => link.replay_handshake(streams.request_timeout).await,
                    }
                    failures = 0;
                    while let Some(Ok(event)) = events.next().await {
                        if sse::is_message(&event) {
                            H::deliver_body(&host, Bytes::from(event.data.unwrap_or_default())).await;
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
            if failures > MAX_GET_STREAM_FAILURES || host.closing() {
                warn!("the HTTP+SSE stream was lost and could not be reopened: restart the client");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500) * 2u32.pow(failures)).await;
        }
    }

    /// Opens the stream and reads up to its `endpoint` event.
    async fn open_legacy(&self, link: &Link) -> Result<LegacyEvents, String> {
        let admitted = match link.gate.admit(link.policy.max_wait, Use::Stream, |_, _| {}).await {
            Ok(admitted) => Some(admitted),
            Err(b) => {
                tokio::time::sleep(b.wait.min(MAX_STREAM_HOLD)).await;
                None
            }
        };
        let response = link.up.legacy_stream().send().await;
        if let (Ok(r), None) = (&response, &admitted) {
            link.up.take_cookies(r.headers()); // `answered` takes them otherwise (issue 25.6)
        }
        if let Some(admitted) = &admitted {
            // Issue 21.5: the unit goes back, with the answer's word or as not sent.
            match &response {
                Ok(r) => link.answered(admitted, r.headers()).await,
                Err(_) => link.gate.answered(admitted, None).await,
            }
        }
        let response = response.map_err(|e| link.up.send_error(&e).message)?;
        let status = response.status();
        if !status.is_success() || !is_event_stream(response.headers()) {
            return Err(format!("the GET answered HTTP {} without an event stream", status.as_u16()));
        }
        let mut events: LegacyEvents = Box::pin(sse::decode(response.bytes_stream(), self.max_message));
        loop {
            match events.next().await {
                Some(Ok(e)) if e.event.as_deref() == Some("endpoint") => {
                    link.up.set_endpoint(e.data.as_deref().unwrap_or(""))?;
                    return Ok(events);
                }
                Some(Ok(e)) if e.data.is_none() => continue,
                Some(Ok(_)) => return Err("the stream's first event is not `endpoint`".into()),
                _ => return Err("the stream ended before announcing an endpoint".into()),
            }
        }
    }

    /// Starts listening on the GET stream for server-initiated messages (T-20), once.
    pub(super) fn open_get<H: Host>(host: &Arc<H>) {
        let mut slot = host.streams().task.locked();
        if slot.is_some() || host.closing() || !host.streams().listening {
            return;
        }
        *slot = Some(tokio::spawn(Self::listen(host.clone())).abort_handle());
    }

    /// Replaces the GET stream with one for the current session.
    pub(super) fn restart_get<H: Host>(host: &Arc<H>) {
        host.streams().stop();
        Self::open_get(host);
    }

    /// Reads the GET stream, reopening it after drops with `Last-Event-ID` (T-23), until the
    /// server says it has none (405/404) or it fails repeatedly.
    async fn listen<H: Host>(host: Arc<H>) {
        let (link, streams) = (host.link(), host.streams());
        // The last event id and the server's `retry` (T-23, T-24), kept across reopenings.
        let mut resumption = Resumption::default();
        let mut failures = 0u32;
        let mut problem = String::from("the stream ended");
        loop {
            // The GET stream waits at the gate like everything else; nobody waits on it, so it
            // sits out even waits longer than --max-wait (looking again now and then: a success
            // may clear the deadline), and it never takes the probe of a long deadline.
            let admitted = match link.gate.admit(link.policy.max_wait, Use::Background, |_, _| {}).await {
                Ok(admitted) => admitted,
                Err(b) => {
                    tokio::time::sleep(b.wait.min(MAX_STREAM_HOLD)).await;
                    continue;
                }
            };
            // What a 429 asked to wait, on top of the usual pause before the next try.
            let mut asked_wait = Duration::ZERO;
            let opened = link.up.get_stream(resumption.last_id.as_deref()).send().await;
            match &opened {
                Ok(r) => link.answered(&admitted, r.headers()).await,
                // Issue 21.5: not sent, or no answer: the unit goes back.
                Err(_) => link.gate.answered(&admitted, None).await,
            }
            match opened {
                Ok(r) if retry::asks_to_wait(r.status(), r.headers()) => {
                    (asked_wait, problem) = streams.get_stream_limited(link, &r, &admitted).await;
                }
                Ok(r) if matches!(r.status().as_u16(), 404 | 405) => {
                    debug!(status = r.status().as_u16(), "the server offers no GET stream");
                    return;
                }
                Ok(r) if r.status().is_success() => {
                    link.gate.succeeded(&admitted).await;
                    drop(admitted);
                    if Self::read_get_stream(&host, r, &mut resumption).await {
                        failures = 0;
                    }
                }
                Ok(r) => {
                    let status = r.status();
                    debug!(status = status.as_u16(), "the GET stream was refused");
                    problem = format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
                }
                Err(e) => {
                    problem = link.up.send_error(&e).message;
                    debug!(error = %problem, "GET stream failed");
                }
            }
            failures += 1;
            if host.closing() {
                return;
            }
            if failures >= MAX_GET_STREAM_FAILURES {
                warn!(
                    "the stream for server-initiated messages could not be opened ({}); it is reopened after the next answer",
                    problem.trim_end()
                );
                streams.lost.store(true, Ordering::Relaxed);
                return;
            }
            // The server's `retry` (bounded, T-24), else backoff; never less than a 429 asked.
            let pause = resumption
                .retry
                .map_or(Duration::from_millis(500) * 2u32.pow(failures), |r| r.min(MAX_SSE_RETRY))
                .max(asked_wait);
            tokio::time::sleep(pause).await;
        }
    }

    /// A 429 (or 503 with a wait) for the GET stream. Issue 10.2: it is a failed try like any
    /// other (a server that answers `Retry-After: 0` forever must not be asked back to back), and
    /// the others wait for the same deadline. Returns what it asked to wait and what to report.
    async fn get_stream_limited(
        &self,
        link: &Link,
        r: &reqwest::Response,
        admitted: &Admission<'_>,
    ) -> (Duration, String) {
        link.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
        let asked = retry::server_wait(r.headers(), SystemTime::now());
        let source = asked.map_or(retry::Source::Backoff, |w| w.source).as_str();
        let mut asked_wait = Duration::ZERO;
        if let Some(w) = asked {
            link.gate.block_for(w.delay, source, Some(admitted)).await;
            asked_wait = link.policy.with_jitter(w.delay);
        }
        info!("the stream for server messages is rate limited ({source})");
        (asked_wait, format!("HTTP {} ({source})", r.status().as_u16()))
    }

    /// Reads an open GET stream to its end, delivering its messages and keeping its last event
    /// id and `retry`. Whether any event came.
    async fn read_get_stream<H: Host>(
        host: &Arc<H>,
        r: reqwest::Response,
        resumption: &mut Resumption,
    ) -> bool {
        let mut any = false;
        let mut events = sse::decode(r.bytes_stream(), host.streams().max_message);
        while let Some(Ok(event)) = events.next().await {
            any = true;
            resumption.saw(&event);
            if sse::is_message(&event) {
                H::deliver_body(host, Bytes::from(event.data.unwrap_or_default())).await;
            }
        }
        any
    }
}
