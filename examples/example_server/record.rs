//! The recording layer of the example servers (`--record FILE`, `--first-429`), for the interop
//! matrix (issue 20): one JSON line per HTTP request (HTTP method, session, version, the
//! JSON-RPC messages, status) and an event when a reply stream is dropped before its end (how a
//! 2026-07-28 client cancels, T-25); the first POST answered 429 with `Retry-After: 1`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;

/// What `--record` and `--first-429` need.
pub struct Recorder {
    file: Option<Mutex<std::fs::File>>,
    first_429: AtomicBool,
}

/// Records a request (HTTP method, session, version, JSON-RPC messages, status) as one JSON line.
pub async fn record(
    State(recorder): State<Arc<Recorder>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let messages = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(all)) => all,
        Ok(one @ serde_json::Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    let rpc: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            serde_json::json!({"method": m.get("method"), "id": m.get("id"), "requestId": m.pointer("/params/requestId"),
                "result": m.get("result").is_some(), "error": m.get("error").is_some()})
        })
        .collect();
    let mut entry = serde_json::json!({"http": parts.method.as_str(), "session": header("mcp-session-id"),
        "version": header("mcp-protocol-version"), "rpc": rpc});
    let post = parts.method == axum::http::Method::POST;
    let response = if post && recorder.first_429.swap(false, Ordering::SeqCst) {
        axum::response::Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(axum::body::Body::from(r#"{"error":"slow down"}"#))
            .unwrap_or_default()
    } else {
        next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body))).await
    };
    entry["status"] = response.status().as_u16().into();
    recorder.write(&entry);
    // A reply stream the client closes before its end is how a 2026-07-28 client cancels (T-25).
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed || !post {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut guard = Closed { recorder, ended: false };
    let mut inner = body.into_data_stream();
    let stream = futures_util::stream::poll_fn(move |cx| {
        let next = futures_util::StreamExt::poll_next_unpin(&mut inner, cx);
        // The whole guard moves into the closure (not only its field), so that it drops with it.
        let guard = &mut guard;
        if let std::task::Poll::Ready(None) = next {
            guard.ended = true;
        }
        next
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

impl Recorder {
    /// What `--record FILE` (appended to) and `--first-429` ask for.
    pub fn open(record: Option<&std::path::Path>, first_429: bool) -> std::io::Result<Recorder> {
        let file = match record {
            Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        Ok(Recorder { file: file.map(Mutex::new), first_429: AtomicBool::new(first_429) })
    }

    /// `router` behind this recorder.
    pub fn wrap(self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(Arc::new(self), record))
    }

    fn write(&self, entry: &serde_json::Value) {
        if let Some(file) = &self.file
            && let Ok(mut file) = file.lock()
        {
            let _ = writeln!(file, "{entry}");
        }
    }
}

/// Records a reply stream dropped before its end.
struct Closed {
    recorder: Arc<Recorder>,
    ended: bool,
}

impl Drop for Closed {
    fn drop(&mut self) {
        if !self.ended {
            self.recorder.write(&serde_json::json!({"event": "stream-closed-early"}));
        }
    }
}
