//! Issue 10: the promises (one answer per request, no secret anywhere, no hang, nothing lost)
//! against hostile servers, absurd values and careless or slow clients. Each test names the
//! point of the issue it holds to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

/// 10.13: timeouts and waits from flags are taken as "very long", never an overflow: a
/// `--request-timeout` of 1e19 s used to panic at the first request (`Instant::now() + limit`).
#[tokio::test]
async fn absurd_timeouts_from_flags_mean_very_long_not_a_panic() {
    let server = Server::start(generic(), None).await;
    let huge = "10000000000000000000";
    let mut s = sidecar_for(
        &server,
        &["--request-timeout", huge, "--connect-timeout", huge, "--max-wait", huge, "--auth-timeout", huge],
    );
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 20, "b": 22}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "42", "{answer}");
    let out = s.finish().await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// A 429 with `headers`.
fn too_many(headers: &[(&str, &str)]) -> axum::response::Response {
    let mut r = respond(429, "application/json", r#"{"error":"rate_limited"}"#);
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A hook that answers `tools/call` with `make()` while `on` is set.
fn calls_limited_while(
    on: Arc<AtomicBool>,
    make: impl Fn() -> axum::response::Response + Send + Sync + 'static,
) -> Hook {
    Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") && on.load(Ordering::SeqCst) {
            return Action::Respond(make());
        }
        Action::Pass
    })
}

/// 10.1: one absurd header (`Retry-After` of a year) used to lock the key out for every sidecar,
/// across restarts, with no way to clear it. Now the deadline is at most a day, one request a
/// minute goes through as a probe, its success clears the deadline for every process, `status`
/// lists what is stored and `status --clear-limits` removes it.
#[tokio::test]
async fn one_absurd_429_does_not_lock_the_key_out() {
    let absurd = Arc::new(AtomicBool::new(true));
    let server = Server::start(
        generic(),
        Some(calls_limited_while(absurd.clone(), || too_many(&[("retry-after", "31536000")]))),
    )
    .await;
    let dir = scratch_dir("absurd-429");
    let state = dir.to_string_lossy().into_owned();
    let mut a = sidecar_for(&server, &["--state-dir", &state]);
    a.handshake().await;
    a.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    let refused = a.recv().await;
    let limited_at = std::time::Instant::now();
    assert_eq!(refused["error"]["data"]["kind"], "rate_limited", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("resets in 1 d 0 h") && message.contains("a minute"),
        "capped at a day: {message}"
    );
    a.finish().await;
    absurd.store(false, Ordering::SeqCst); // the server recovers

    let (code, listed, _) = run_command(&["status", "--state-dir", &state], &[]).await;
    assert_eq!(code, 0);
    let origin = format!("http://{}", server.addr);
    let line = listed.lines().find(|l| l.contains(&origin)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("Retry-After") && line.contains("until "), "{line}");

    // A new process: its first request waits for the probe slot (a minute after the 429, within
    // its --max-wait), goes through, and its success clears the deadline.
    let mut b = sidecar_for(&server, &["--state-dir", &state, "--max-wait", "65"]);
    b.handshake_within(Duration::from_secs(75)).await;
    b.send_json(&call(2, "sum", json!({"a": 2, "b": 3}))).await;
    let answer = b.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "5", "{answer}");
    let took = limited_at.elapsed();
    assert!(took <= Duration::from_secs(70), "answered {took:?} after the 429");
    assert!(took >= Duration::from_secs(55), "the probe waited for its minute: {took:?}");
    b.finish().await;
    let (_, listed, _) = run_command(&["status", "--state-dir", &state], &[]).await;
    assert!(listed.contains("no rate-limit deadlines stored"), "the success cleared it:\n{listed}");

    // Set again; `status --clear-limits` removes it, and a new process is served at once.
    absurd.store(true, Ordering::SeqCst);
    let mut c = sidecar_for(&server, &["--state-dir", &state]);
    c.handshake().await;
    c.send_json(&call(3, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(c.recv().await["error"]["data"]["kind"], "rate_limited");
    c.finish().await;
    absurd.store(false, Ordering::SeqCst);
    let (code, _, said) = run_command(&["status", "--clear-limits", "--state-dir", &state], &[]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("cleared") && said.contains(&origin), "{said}");
    let mut d = sidecar_for(&server, &["--state-dir", &state]);
    d.handshake().await;
    d.send_json(&call(4, "sum", json!({"a": 4, "b": 4}))).await;
    assert_eq!(d.recv().await["result"]["content"][0]["text"], "8");
    d.finish().await;
}

/// 10.14: another process holding the rate-limit state file's lock used to freeze the sidecar
/// (its one runtime thread sat in `flock`: no answers, no signals, no timers). Now the gate waits
/// for the lock asynchronously and, after a second, decides in memory; SIGTERM still works.
#[tokio::test]
async fn a_stuck_process_holding_the_state_lock_freezes_nobody() {
    let server = Server::start(generic(), None).await;
    let dir = scratch_dir("held-lock");
    let state = dir.to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--state-dir", &state, "--rate-limit", "100/min"]);
    s.handshake().await;
    // The state file and its lock exist now; a stuck process takes the lock and keeps it.
    let held: Vec<std::fs::File> = std::fs::read_dir(dir.join("ratelimit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "lock"))
        .map(|p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.lock().unwrap();
            f
        })
        .collect();
    assert_eq!(held.len(), 1);
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "2", "answered despite the lock");
    s.send_json(&call(2, "sum", json!({"a": 2, "b": 2}))).await;
    s.signal("TERM");
    let out = s.wait().await;
    assert!(out.status.success(), "SIGTERM ended the run: {}", out.stderr);
    let answered = out.messages().iter().filter(|m| m["id"] == 2).count();
    assert_eq!(answered, 1, "the request in flight got exactly one answer:\n{}", out.stdout);
    drop(held);
}

/// 10.2: a reply stream's `retry:` was obeyed without bound, outside the request's deadline:
/// `retry: 4000000000` left the request unanswered for weeks. Now the wait is bounded by a named
/// maximum and by `--request-timeout`: the client gets its timeout error in time.
#[tokio::test]
async fn an_absurd_sse_retry_cannot_outlast_the_request_deadline() {
    let hook: Hook = Arc::new(|s: &Seen| {
        if s.rpc_method() == Some("tools/call") {
            // An event id (so the stream could be resumed), the absurd retry, then the end.
            let body = "id: 1\nretry: 4000000000\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"working\"}}\n\n";
            return Action::Respond(respond(200, "text/event-stream", body));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &["--request-timeout", "2"]);
    s.handshake().await;
    s.send_json(&call(5, "sum", json!({"a": 1, "b": 1}))).await;
    let started = std::time::Instant::now();
    let answer = loop {
        let m = s.recv().await;
        if m["id"] == 5 {
            break m;
        }
    };
    assert_eq!(answer["error"]["data"]["kind"], "timeout", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    s.finish().await;
}

/// 10.2: a GET stream answered `429 Retry-After: 0` was reopened back to back forever. A 429
/// is a failed try: it backs off and, after the usual number of failures, gives up until the next
/// answer.
#[tokio::test]
async fn a_get_stream_answered_429_retry_after_0_backs_off_and_gives_up() {
    let hook = nth_get(|_| Action::Respond(too_many(&[("retry-after", "0")])));
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.stderr_shows("could not be opened").await;
    let gets = server.seen().iter().filter(|r| r.method == axum::http::Method::GET).count();
    assert_eq!(gets, 3, "three tries, not a loop");
    let out = s.finish().await;
    let gets_after = server.seen().iter().filter(|r| r.method == axum::http::Method::GET).count();
    assert_eq!(gets_after, 3, "{}", out.stderr);
}
