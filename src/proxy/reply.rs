//! Reading what the server sends back: a whole body within a size and a deadline, the first
//! response in a reply (JSON or an event stream). A leaf: it knows HTTP bodies, not requests.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
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
