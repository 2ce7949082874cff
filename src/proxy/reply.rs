//! Reading what the server sends back: a whole body within a size and a deadline, the first
//! response in a reply (JSON or an event stream). A leaf: it knows HTTP bodies, not requests.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use crate::envelope::{Envelope, Kind};
use crate::upstream::sse;

/// The first JSON-RPC response in a reply, JSON or SSE; `None` if there is none in time.
pub(super) async fn first_response(
    response: reqwest::Response,
    max: usize,
    deadline: Instant,
) -> Option<Bytes> {
    if !is_event_stream(response.headers()) {
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

/// The longest `retry:` of a server's event stream obeyed (T-24): the reconnection hint of a
/// healthy server is seconds; `retry: 4000000000` must not leave a request unanswered for weeks.
pub(super) const MAX_SSE_RETRY: Duration = Duration::from_secs(60);
/// How many times a broken reply stream is resumed with Last-Event-ID (T-23).
pub(super) const MAX_RESUMPTIONS: u32 = 3;

/// Whether a reply is an event stream (its media type, in any case).
pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    let value = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    value.get(..17).is_some_and(|v| v.eq_ignore_ascii_case("text/event-stream"))
}

/// The events of an HTTP+SSE stream after its `endpoint`.
pub(super) type LegacyEvents =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

/// Why reading a body failed.
pub(super) enum BodyError {
    Timeout,
    TooLarge,
    Http(reqwest::Error),
}

/// Reads a whole body of at most `max` bytes before `deadline`.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    max: usize,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    // The chunks are kept and joined once at the end: one copy of the body, not one per
    // doubling of a growing buffer (chunked replies say no length up front).
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        match timeout_at(deadline, response.chunk()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Http(e)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                len += chunk.len();
                if len > max {
                    return Err(BodyError::TooLarge);
                }
                chunks.push(chunk);
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut body = Vec::with_capacity(len);
            for c in &chunks {
                body.extend_from_slice(c);
            }
            body.into()
        }
    })
}

/// Where a broken event stream can be resumed from (T-23, T-24): the last event id and the
/// server's `retry`. The reply stream of a request and the GET stream keep one each.
#[derive(Default)]
pub(super) struct Resumption {
    pub(super) last_id: Option<String>,
    pub(super) retry: Option<Duration>,
    resumed: u32,
}

impl Resumption {
    /// Keeps the event's id and `retry`.
    pub(super) fn saw(&mut self, event: &sse_stream::Sse) {
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
    pub(super) fn next_try(&mut self, modern: bool) -> Option<(String, Duration)> {
        let id = self.last_id.clone().filter(|_| !modern && self.resumed < MAX_RESUMPTIONS)?;
        self.resumed += 1;
        let wait =
            self.retry.unwrap_or(Duration::from_millis(1000) * (self.resumed + 1) / 2).min(MAX_SSE_RETRY);
        Some((id, wait))
    }
}
