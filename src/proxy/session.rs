//! Sessions and streams: renewing an expired session (T-12), the GET stream for server
//! messages (T-20, T-23), and the 2024-11-05 HTTP+SSE transport (T-60, T-61).

use super::*;
use crate::ratelimit::Use;

impl Proxy {
    /// Opens the 2024-11-05 HTTP+SSE stream and waits for its `endpoint` event (T-60, T-61).
    pub(super) async fn start_legacy(self: &Arc<Self>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(self.clone().listen_legacy(tx)).abort_handle();
        if let Some(old) = self.get_stream.locked().replace(task) {
            old.abort();
        }
        match timeout(LEGACY_ENDPOINT_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                info!("{} speaks the 2024-11-05 HTTP+SSE transport; using it", self.link.up.host());
                Ok(())
            }
            Ok(Ok(Err(reason))) => Err(reason),
            _ => Err("the event stream announced no endpoint in time".into()),
        }
    }

    pub(super) fn legacy_error(&self, reason: &str) -> LocalError {
        let mut err = LocalError::new(
            UPSTREAM_ERROR,
            ErrorKind::WrongEndpoint,
            format!(
                "{} offers no HTTP+SSE stream ({reason}): check the URL, or try --transport auto",
                self.link.up.shown_url()
            ),
        );
        err.request_sent = Some(false);
        err
    }

    /// Reads the HTTP+SSE stream: its first event names the POST endpoint, every later `message`
    /// event is delivered. When it drops, it is reopened (a new endpoint, so a new session: the
    /// client's handshake is replayed, its answers dropped as nobody waits for them).
    pub(super) async fn listen_legacy(self: Arc<Self>, ready: oneshot::Sender<Result<(), String>>) {
        let mut ready = Some(ready);
        let mut failures = 0u32;
        loop {
            match self.open_legacy().await {
                Ok(mut events) => {
                    match ready.take() {
                        Some(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        None => self.link.replay_handshake(self.request_timeout).await,
                    }
                    failures = 0;
                    while let Some(Ok(event)) = events.next().await {
                        if sse::is_message(&event) {
                            self.deliver_body(Bytes::from(event.data.unwrap_or_default())).await;
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
    pub(super) async fn open_legacy(&self) -> Result<LegacyEvents, String> {
        let admitted = match self.link.gate.admit(self.link.policy.max_wait, Use::Stream, |_, _| {}).await {
            Ok(admitted) => Some(admitted),
            Err(b) => {
                tokio::time::sleep(b.wait.min(MAX_STREAM_HOLD)).await;
                None
            }
        };
        let response = self.link.up.legacy_stream().send().await;
        if let Some(admitted) = &admitted {
            // Issue 21.5: the unit goes back, with the answer's word or as not sent.
            match &response {
                Ok(r) => self.link.answered(admitted, r.headers()).await,
                Err(_) => self.link.gate.answered(admitted, None).await,
            }
        }
        let response = response.map_err(|e| self.link.up.send_error(&e).message)?;
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
                    self.link.up.set_endpoint(e.data.as_deref().unwrap_or(""))?;
                    return Ok(events);
                }
                Some(Ok(e)) if e.data.is_none() => continue,
                Some(Ok(_)) => return Err("the stream's first event is not `endpoint`".into()),
                _ => return Err("the stream ended before announcing an endpoint".into()),
            }
        }
    }

    /// Starts listening on the GET stream for server-initiated messages (T-20), once.
    pub(super) fn open_get_stream(self: &Arc<Self>) {
        let mut slot = self.get_stream.locked();
        if slot.is_some() || self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        *slot = Some(tokio::spawn(self.clone().listen()).abort_handle());
    }

    /// Replaces the GET stream with one for the current session.
    pub(super) fn restart_get_stream(self: &Arc<Self>) {
        if let Some(old) = self.get_stream.locked().take() {
            old.abort();
        }
        self.open_get_stream();
    }

    /// Reads the GET stream, reopening it after drops with `Last-Event-ID` (T-23), until the
    /// server says it has none (405/404) or it fails repeatedly.
    pub(super) async fn listen(self: Arc<Self>) {
        let mut last_event_id: Option<String> = None;
        let mut retry: Option<Duration> = None;
        let mut failures = 0u32;
        let mut problem = String::from("the stream ended");
        loop {
            // The GET stream waits at the gate like everything else; nobody waits on it, so it
            // sits out even waits longer than --max-wait (looking again now and then: a success
            // may clear the deadline), and it never takes the probe of a long deadline.
            let admitted =
                match self.link.gate.admit(self.link.policy.max_wait, Use::Background, |_, _| {}).await {
                    Ok(admitted) => admitted,
                    Err(b) => {
                        tokio::time::sleep(b.wait.min(MAX_STREAM_HOLD)).await;
                        continue;
                    }
                };
            // What a 429 asked to wait, on top of the usual pause before the next try.
            let mut asked_wait = Duration::ZERO;
            let opened = self.link.up.get_stream(last_event_id.as_deref()).send().await;
            match &opened {
                Ok(r) => self.link.answered(&admitted, r.headers()).await,
                // Issue 21.5: not sent, or no answer: the unit goes back.
                Err(_) => self.link.gate.answered(&admitted, None).await,
            }
            match opened {
                Ok(r) if retry::asks_to_wait(r.status(), r.headers()) => {
                    (asked_wait, problem) = self.get_stream_limited(&r, &admitted).await;
                }
                Ok(r) if matches!(r.status().as_u16(), 404 | 405) => {
                    debug!(status = r.status().as_u16(), "the server offers no GET stream");
                    return;
                }
                Ok(r) if r.status().is_success() => {
                    self.link.gate.succeeded(&admitted).await;
                    drop(admitted);
                    if self.read_get_stream(r, &mut last_event_id, &mut retry).await {
                        failures = 0;
                    }
                }
                Ok(r) => {
                    let status = r.status();
                    debug!(status = status.as_u16(), "the GET stream was refused");
                    problem = format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
                }
                Err(e) => {
                    problem = self.link.up.send_error(&e).message;
                    debug!(error = %problem, "GET stream failed");
                }
            }
            failures += 1;
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            if failures >= MAX_GET_STREAM_FAILURES {
                warn!(
                    "the stream for server-initiated messages could not be opened ({}); it is reopened after the next answer",
                    problem.trim_end()
                );
                self.get_stream_lost.store(true, Ordering::Relaxed);
                return;
            }
            // The server's `retry` (bounded, T-24), else backoff; never less than a 429 asked.
            let pause = retry
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
        r: &reqwest::Response,
        admitted: &crate::ratelimit::Admission<'_>,
    ) -> (Duration, String) {
        self.link.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
        let asked = retry::server_wait(r.headers(), SystemTime::now());
        let source = asked.map_or(retry::Source::Backoff, |w| w.source).as_str();
        let mut asked_wait = Duration::ZERO;
        if let Some(w) = asked {
            self.link.gate.block_for(w.delay, source, Some(admitted)).await;
            asked_wait = self.link.policy.with_jitter(w.delay);
        }
        info!("the stream for server messages is rate limited ({source})");
        (asked_wait, format!("HTTP {} ({source})", r.status().as_u16()))
    }

    /// Reads an open GET stream to its end, delivering its messages and keeping its last event
    /// id and `retry`. Whether any event came.
    async fn read_get_stream(
        self: &Arc<Self>,
        r: reqwest::Response,
        last_event_id: &mut Option<String>,
        retry: &mut Option<Duration>,
    ) -> bool {
        let mut any = false;
        let mut events = sse::decode(r.bytes_stream(), self.max_message);
        while let Some(Ok(event)) = events.next().await {
            any = true;
            if let Some(id) = &event.id {
                *last_event_id = Some(id.clone());
            }
            if let Some(ms) = event.retry {
                *retry = Some(Duration::from_millis(ms));
            }
            if sse::is_message(&event) {
                self.deliver_body(Bytes::from(event.data.unwrap_or_default())).await;
            }
        }
        any
    }
}
