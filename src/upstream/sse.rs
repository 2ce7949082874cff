//! Server-sent events from the server: a size bound in front of `sse-stream`'s decoder.
//!
//! `sse-stream` implements the WHATWG parsing rules (CR/LF/CRLF, multi-line `data`, comments,
//! `id`, `retry`; T-07) but buffers an event of any size. [`BoundedBytes`] counts the bytes since
//! the last blank line and fails the stream once an event grows past the limit, so a server cannot
//! make the proxy buffer without bound. This module does not interpret event contents.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Why an event stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E> {
    /// An event grew past the size limit.
    #[error("an event from the server is larger than {0} bytes (--max-message-bytes)")]
    TooLarge(usize),
    /// The body failed (connection reset, read timeout …).
    #[error(transparent)]
    Body(E),
}

/// A byte stream that errors once the current SSE event exceeds `max` bytes.
pub struct BoundedBytes<S> {
    inner: S,
    max: usize,
    /// Bytes of the current event so far (line endings excluded).
    current: usize,
    /// Whether the last byte seen ended a line, and whether it was a CR (for CRLF).
    at_line_start: bool,
    after_cr: bool,
    failed: bool,
}

impl<S> BoundedBytes<S> {
    /// Wraps `inner`, allowing events of up to `max` bytes.
    pub fn new(inner: S, max: usize) -> Self {
        BoundedBytes { inner, max, current: 0, at_line_start: true, after_cr: false, failed: false }
    }

    /// Accounts for one chunk; false when an event became too large.
    fn account(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        while !rest.is_empty() {
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(i) => {
                    if i > 0 {
                        self.current += i;
                        self.at_line_start = false;
                        self.after_cr = false;
                    }
                    let b = rest[i];
                    if b == b'\n' && self.after_cr && i == 0 {
                        // The LF of a CRLF: the line already ended.
                        self.after_cr = false;
                    } else if self.at_line_start {
                        // An empty line: the event is complete.
                        self.current = 0;
                        self.after_cr = b == b'\r';
                    } else {
                        self.at_line_start = true;
                        self.after_cr = b == b'\r';
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    self.current += rest.len();
                    self.at_line_start = false;
                    self.after_cr = false;
                    rest = &[];
                }
            }
            if self.current > self.max {
                return false;
            }
        }
        true
    }
}

impl<S, E> Stream for BoundedBytes<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Item = Result<Bytes, StreamError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.account(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.failed = true;
                    Poll::Ready(Some(Err(StreamError::TooLarge(self.max))))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(StreamError::Body(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Decodes SSE events from a bounded byte stream.
pub fn decode<S, E>(body: S, max: usize) -> sse_stream::SseByteStream<BoundedBytes<S>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    sse_stream::SseByteStream::new(BoundedBytes::new(body, max))
}

/// Whether an event carries a JSON-RPC message: the default `message` type and non-empty data
/// (2025-11-25 priming events have an id and empty data; T-07, T-24).
pub fn is_message(event: &sse_stream::Sse) -> bool {
    matches!(event.event.as_deref(), None | Some("message"))
        && event.data.as_deref().is_some_and(|d| !d.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn events(chunks: &[&str], max: usize) -> (Vec<sse_stream::Sse>, bool) {
        let items: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c.as_bytes()))).collect();
        let mut stream = decode(futures_util::stream::iter(items), max);
        let mut out = Vec::new();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => out.push(e),
                Err(_) => failed = true,
            }
        }
        (out, failed)
    }

    #[tokio::test]
    async fn t07_multiline_data_comments_ids_and_retry() {
        let (ev, failed) =
            events(&[": keep-alive\n", "id: 7\nretry: 500\ndata: {\"a\":\ndata: 1}\n\n"], 100).await;
        assert!(!failed);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].retry, Some(500));
    }

    #[tokio::test]
    async fn t07_priming_events_and_other_types_are_not_messages() {
        let (ev, _) = events(&["id: 1\ndata:\n\nevent: ping\ndata: {}\n\ndata: {}\n\n"], 100).await;
        let messages: Vec<bool> = ev.iter().map(is_message).collect();
        assert_eq!(messages, [false, false, true]);
    }

    #[tokio::test]
    async fn limit_counts_per_event_not_per_stream() {
        let one = format!("data: {}\n\n", "x".repeat(20));
        let (ev, failed) = events(&[&one, &one, &one], 30).await;
        assert!(!failed);
        assert_eq!(ev.len(), 3);
    }

    #[tokio::test]
    async fn limit_exceeded_across_chunks_and_crlf_fails_the_stream() {
        let (_, failed) =
            events(&["data: 0123456789\r\n", "data: 0123456789\r", "\ndata: 0123456789\r\n\r\n"], 30).await;
        assert!(failed);
        let (ev, failed) = events(&["data: 0123456789\r\n", "\r\n", "data: 0123456789\r\n\r\n"], 30).await;
        assert!(!failed);
        assert_eq!(ev.len(), 2);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    proptest! {
        /// Events split anywhere (CRLF or LF) decode to their data, and events within the limit
        /// never trip it.
        #[test]
        fn events_survive_any_chunking(
            datas in prop::collection::vec("[a-z{}\":, ]{1,40}", 1..8),
            crlf in any::<bool>(),
            chunk in 1usize..50,
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text: String = datas.iter().map(|d| format!("data: {d}{nl}{nl}")).collect();
            let items: Vec<Result<Bytes, std::io::Error>> =
                text.as_bytes().chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got: Vec<String> = rt.block_on(async {
                decode(futures_util::stream::iter(items), 64)
                    .filter_map(|e| async move { e.ok().and_then(|e| e.data) })
                    .collect()
                    .await
            });
            prop_assert_eq!(got, datas);
        }
    }
}
