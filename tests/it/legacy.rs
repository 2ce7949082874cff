//! The 2024-11-05 HTTP+SSE transport (T-60, T-61): found by `--transport auto`, forced with
//! `--transport sse`, endpoint kept to the same origin, reopened after a drop. rmcp no longer
//! ships such a server, so this file has a small one: `GET /sse` sends an `endpoint` event and
//! then the answers; `POST /messages?session=N` answers 202 and puts the answer on the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::*;

/// A POST as the server saw it: path and query, authorization header, JSON-RPC method.
#[derive(Clone, Debug)]
struct Post(String, Option<String>, Option<String>);

#[derive(Default)]
struct Legacy {
    streams: Mutex<HashMap<usize, mpsc::UnboundedSender<String>>>,
    next: AtomicUsize,
    /// Every POST.
    posts: Mutex<Vec<Post>>,
    gets: AtomicUsize,
    /// The endpoint to announce instead of our own (for the origin check).
    endpoint_override: Option<String>,
    /// Close each stream after this many answers.
    close_after: Option<usize>,
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

async fn open_stream(State(s): State<Arc<Legacy>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.gets.fetch_add(1, Ordering::SeqCst);
    let n = s.next.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    s.streams.lock().unwrap().insert(n, tx);
    let endpoint = s.endpoint_override.clone().unwrap_or(format!("/messages?session={n}"));
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(Event::default().event("endpoint").data(endpoint))
    });
    let limit = s.close_after.unwrap_or(usize::MAX);
    let answers = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
        .take(limit)
        .map(|m| Ok(Event::default().event("message").data(m)));
    Sse::new(first.chain(answers)).into_response()
}

async fn post_message(
    State(s): State<Arc<Legacy>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.posts.lock().unwrap().push(Post(
        format!("/messages?session={}", q.get("session").map_or("", String::as_str)),
        auth,
        msg["method"].as_str().map(str::to_owned),
    ));
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(tx) = q
        .get("session")
        .and_then(|n| n.parse().ok())
        .and_then(|n: usize| s.streams.lock().unwrap().get(&n).cloned())
    else {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    };
    if let Some(id) = msg.get("id").filter(|_| msg.get("method").is_some()) {
        let result = match msg["method"].as_str().unwrap_or("") {
            "initialize" => {
                json!({"protocolVersion":"2024-11-05","capabilities":{"tools":{}},"serverInfo":{"name":"legacy","version":"1"}})
            }
            "tools/call" => {
                let a = &msg["params"]["arguments"];
                json!({"content":[{"type":"text","text":(a["a"].as_i64().unwrap_or(0) + a["b"].as_i64().unwrap_or(0)).to_string()}]})
            }
            _ => json!({}),
        };
        let _ = tx.send(json!({"jsonrpc":"2.0","id":id,"result":result}).to_string());
    }
    (StatusCode::ACCEPTED, "Accepted").into_response()
}

async fn start(state: Legacy) -> (String, Arc<Legacy>) {
    let state = Arc::new(state);
    let app = axum::Router::new()
        .route("/sse", axum::routing::get(open_stream))
        .route("/messages", axum::routing::post(post_message))
        .with_state(state.clone());
    let listener = fresh_listener().await;
    let url = format!("http://{}/sse", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

async fn sum_through(s: &mut Sidecar, id: i64) -> Value {
    s.send_json(&call(id, "sum", json!({"a": id, "b": 1}))).await;
    s.recv().await
}

#[tokio::test]
async fn t60_auto_falls_back_to_http_sse_and_everything_works() {
    let (url, server) = start(Legacy::default()).await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY"], ENV);
    let init = s.handshake().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "legacy");
    for id in 1..4 {
        let answer = sum_through(&mut s, id).await;
        assert_eq!(answer["result"]["content"][0]["text"], (id + 1).to_string(), "{answer}");
    }
    let outcome = s.finish().await;
    assert!(outcome.stderr.contains("HTTP+SSE transport"), "{}", outcome.stderr);
    let posts = server.posts.lock().unwrap().clone();
    assert!(posts.iter().all(|Post(path, auth, _)| path.starts_with("/messages?session=0")
        && auth.as_deref() == Some(&format!("Bearer {KEY}") as &str)));
    let methods: Vec<_> = posts.iter().filter_map(|p| p.2.clone()).collect();
    assert_eq!(methods[..2], ["initialize", "notifications/initialized"]);
}

#[tokio::test]
async fn transport_sse_goes_straight_to_the_stream_and_streamable_http_never_falls_back() {
    let (url, server) = start(Legacy::default()).await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY", "--transport", "sse"], ENV);
    s.handshake().await;
    assert!(sum_through(&mut s, 1).await["result"].is_object());
    s.finish().await;
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);

    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY", "--transport", "streamable-http"], ENV);
    s.send_json(&request(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let e = s.recv().await;
    assert_eq!(e["error"]["data"]["httpStatus"], 405, "{e}");
    s.finish().await;
    assert_eq!(server.gets.load(Ordering::SeqCst), 1, "no fallback GET");
}

#[tokio::test]
async fn t61_an_endpoint_on_another_origin_is_refused() {
    let elsewhere = Server::start(generic(), None).await;
    let (url, _server) =
        start(Legacy { endpoint_override: Some(format!("{}/messages", elsewhere.url)), ..Legacy::default() })
            .await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY", "--transport", "sse"], ENV);
    s.send_json(&request(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let e = s.recv().await;
    assert!(e["error"]["message"].as_str().unwrap().contains("another origin"), "{e}");
    s.finish().await;
    assert!(elsewhere.seen().is_empty(), "the credential never went to the other origin");
}

#[tokio::test]
async fn a_dropped_stream_is_reopened_with_the_handshake_replayed() {
    // Each stream closes after two answers (initialize, the first call).
    let (url, server) = start(Legacy { close_after: Some(2), ..Legacy::default() }).await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY", "--transport", "sse"], ENV);
    s.handshake().await;
    assert!(sum_through(&mut s, 1).await["result"].is_object());
    // Wait for the reopened stream (its replayed handshake reaches the new session).
    s.stderr_shows("reopening").await;
    while !server
        .posts
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.0 == "/messages?session=1" && p.2.as_deref() == Some("notifications/initialized"))
    {
        tokio::task::yield_now().await;
    }
    let answer = sum_through(&mut s, 2).await;
    assert_eq!(answer["result"]["content"][0]["text"], "3", "{answer}");
    let outcome = s.finish().await;
    assert_eq!(
        outcome.messages().iter().filter(|m| m["id"] == 0).count(),
        1,
        "the replayed initialize's answer is not the client's"
    );
}

/// Issue 10.3: with the HTTP+SSE transport every answer comes on the stream; a request in
/// flight at stdin EOF used to get "shutting down" because the stream was closed before the
/// drain. Now it gets its answer.
#[tokio::test]
async fn a_request_in_flight_at_stdin_eof_gets_its_answer_from_the_stream() {
    let (url, _server) = start(Legacy::default()).await;
    let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY"], ENV);
    s.handshake().await;
    s.send_json(&call(7, "sum", json!({"a": 7, "b": 1}))).await;
    let out = s.finish().await;
    let answers: Vec<Value> = out.messages().into_iter().filter(|m| m["id"] == 7).collect();
    assert_eq!(answers.len(), 1, "{}", out.stdout);
    assert_eq!(answers[0]["result"]["content"][0]["text"], "8", "{}", out.stdout);
}
