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
    let out = b.finish().await;
    assert!(
        out.stderr.contains("1 requests let through as probes"),
        "the summary counts it:\n{}",
        out.stderr
    );
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
// Unix only: it sends a signal, which Windows cannot send to another process (console events
// reach only processes sharing a console); the lock itself is tested by unit tests on every platform.
#[cfg(unix)]
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

/// A hook for a server that accepts `tools/call` with 202 and answers it on the GET stream
/// (T-20), which the test controls through `stream`. `answer` makes the result for a call.
fn answers_on_the_get_stream(stream: Arc<PushStream>, answer: fn(&Seen) -> Option<String>) -> Hook {
    Arc::new(move |s: &Seen| {
        if s.method == axum::http::Method::GET {
            return Action::Respond(stream.response());
        }
        if s.rpc_method() == Some("tools/call") {
            if let Some(reply) = answer(s) {
                stream.push(&reply);
            }
            return Action::Respond(respond(202, "text/plain", ""));
        }
        Action::Pass
    })
}

/// The sum a `tools/call` of the example server's `sum` tool would give, as an answer line.
fn sum_answer(s: &Seen) -> Option<String> {
    let a = &s.json["params"]["arguments"];
    let text = (a["a"].as_i64()? + a["b"].as_i64()?).to_string();
    Some(
        json!({"jsonrpc":"2.0","id":s.json["id"],"result":{"content":[{"type":"text","text":text}]}})
            .to_string(),
    )
}

/// 10.3: at stdin EOF, shutdown used to close the GET stream before letting requests drain,
/// so a request the server accepted with 202 got "shutting down" although its answer came at
/// once on that stream. Now the stream stays open while requests drain.
#[tokio::test]
async fn answers_on_the_get_stream_still_arrive_during_shutdown() {
    let stream = PushStream::new();
    let server = Server::start(generic(), Some(answers_on_the_get_stream(stream, sum_answer))).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 40, "b": 2}))).await;
    let out = s.finish().await; // stdin closes right after the request
    let answers: Vec<_> = out.messages().into_iter().filter(|m| m["id"] == 1).collect();
    assert_eq!(answers.len(), 1, "{}", out.stdout);
    assert_eq!(answers[0]["result"]["content"][0]["text"], "42", "{}", out.stdout);
}

/// 10.5: a 2025-03-26 server may put a JSON-RPC batch in one SSE event; it used to be dropped
/// as "not a JSON-RPC object" (JSON bodies were split, SSE events were not).
#[tokio::test]
async fn a_batch_inside_an_sse_event_is_split() {
    let hook: Hook = Arc::new(|s: &Seen| {
        if s.rpc_method() == Some("tools/call") {
            let id = &s.json["id"];
            let batch = json!([
                {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"before"}},
                {"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"batched"}]}}
            ]);
            return Action::Respond(respond(200, "text/event-stream", format!("data: {batch}\n\n")));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(9, "sum", json!({"a": 1, "b": 1}))).await;
    let note = s.recv().await;
    assert_eq!(note["method"], "notifications/message", "{note}");
    let answer = s.recv().await;
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["result"]["content"][0]["text"], "batched", "{answer}");
    s.finish().await;
}

/// 10.15: requests in flight used to be unbounded. Now they hold at most 4 × --max-message-bytes;
/// a request past that is answered at once with an `overloaded` error (and the proxy goes on).
#[tokio::test]
async fn requests_in_flight_are_bounded_in_bytes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") {
            return Action::Hold(r.clone());
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    // 1,024 bytes per message: 4,096 bytes in flight.
    let mut s = sidecar_for(&server, &["--max-message-bytes", "1024"]);
    s.handshake().await;
    let padded = |id: i64| call(id, "sum", json!({"a": id, "b": 1, "pad": "x".repeat(850)}));
    for id in 1..=4 {
        s.send_json(&padded(id)).await;
    }
    // Wait until the four are at the server (held), then one more does not fit.
    tokio::time::timeout(PATIENCE, async {
        while server.posts("tools/call").len() < 4 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    s.send_json(&padded(5)).await;
    let refused = s.recv().await;
    assert_eq!(refused["id"], 5, "{refused}");
    assert_eq!(refused["error"]["data"]["kind"], "overloaded", "{refused}");
    assert_eq!(refused["error"]["code"], -32006);
    assert_eq!(server.posts("tools/call").len(), 4, "the fifth was not sent");
    release.notify_waiters();
    let mut answered = Vec::new();
    for _ in 0..4 {
        let m = s.recv().await;
        assert!(m["result"].is_object(), "{m}");
        answered.push(m["id"].as_i64().unwrap());
    }
    answered.sort();
    assert_eq!(answered, [1, 2, 3, 4]);
    // Room again.
    let r2 = release.clone();
    tokio::spawn(async move {
        loop {
            r2.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    s.send_json(&padded(6)).await;
    assert!(s.recv().await["result"].is_object());
    s.finish().await;
}

/// 10.15: `tools` stopped only when a page repeated the cursor it was asked with; a cycle of
/// two pages (a → b → a) made it page forever. Now any cursor seen before ends it.
#[tokio::test]
async fn tools_stops_on_a_cursor_cycle() {
    let hook: Hook = Arc::new(|s: &Seen| {
        if s.rpc_method() == Some("tools/list") {
            let (name, next) = match s.json["params"]["cursor"].as_str() {
                None => ("first", "a"),
                Some("a") => ("second", "b"),
                _ => ("third", "a"),
            };
            let body = json!({"jsonrpc":"2.0","id":s.json["id"],"result":{
                "tools":[{"name":name,"description":"d","inputSchema":{"type":"object"}}],"nextCursor":next}});
            return Action::Respond(respond(200, "application/json", body.to_string()));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let (code, stdout, stderr) =
        run_command(&["tools", "--url", &server.url, "--api-key-env", "TEST_KEY"], ENV).await;
    assert_eq!(code, 0, "{stderr}");
    let names: Vec<&str> = stdout.lines().map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(names, ["first", "second", "third"], "{stdout}");
    assert!(server.posts("tools/list").len() <= 4);
}

/// 10.4: an answer used to leave the pending table before it was queued for stdout; when the
/// task delivering it was aborted while stdout was backed up (here: a session renewal restarts
/// the GET stream), the answer was lost and the request answered zero times. Now room in the
/// outbox is reserved first and the hand-over is one step: the request is answered exactly once.
#[tokio::test]
async fn an_answer_stuck_behind_a_full_stdout_survives_a_session_renewal() {
    let stream = PushStream::new();
    let expired_once = Arc::new(AtomicBool::new(false));
    let (get, expired) = (stream.clone(), expired_once.clone());
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.method == axum::http::Method::GET {
            return Action::Respond(get.response());
        }
        if s.rpc_method() == Some("tools/call") {
            match s.json["params"]["arguments"]["a"].as_i64() {
                // X: accepted; its (large) answer follows the flood on the GET stream.
                Some(1) => {
                    let big = "x".repeat(1_950_000);
                    let reply = json!({"jsonrpc":"2.0","id":s.json["id"],"result":{"content":[{"type":"text","text":"marker-x"}],"padding":big}});
                    get.push(&reply.to_string());
                    return Action::Respond(respond(202, "text/plain", ""));
                }
                // Z: its session has expired, once: the sidecar renews it (and restarts the GET stream).
                Some(3) if !expired.swap(true, Ordering::SeqCst) => {
                    return Action::Respond(respond(404, "text/plain", "session expired"));
                }
                _ => {}
            }
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(
        &server,
        &["--request-timeout", "3", "--max-message-bytes", "2000000", "--log-level", "trace"],
    );
    s.handshake().await;
    s.pause_stdout();
    // The flood: one message larger than the pipe (the writer blocks in it), then 1,024 small
    // ones (the old outbox's count; the new one's bytes are what X's answer does not fit into).
    let note = |text: &str| json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":text}});
    stream.push(&note(&"b".repeat(1_900_000)).to_string());
    for i in 0..1024 {
        stream.push(&note(&format!("small {i:0>100}")).to_string());
    }
    s.send_json(&call(100, "sum", json!({"a": 1, "b": 0}))).await;
    // X's answer has reached the sidecar (logged as it arrives) and waits for room.
    s.stderr_shows("marker-x").await;
    s.send_json(&call(300, "sum", json!({"a": 3, "b": 4}))).await;
    s.stderr_shows("new MCP session started").await;
    s.resume_stdout();
    let z = loop {
        let m = s.recv().await;
        if m["id"] == 300 {
            break m;
        }
    };
    assert_eq!(z["result"]["content"][0]["text"], "7", "{z}");
    let out = s.finish().await;
    let x: Vec<_> = out.messages().into_iter().filter(|m| m["id"] == 100).collect();
    assert_eq!(x.len(), 1, "X must be answered exactly once (its answer, or an error)");
}

/// A client that stops reading stdout and then closes stdin: mcp-sidecar still exits (the last
/// flush is bounded) instead of waiting forever on a full pipe.
#[tokio::test]
async fn a_client_that_stops_reading_stdout_does_not_keep_the_proxy_alive() {
    let stream = PushStream::new();
    let server = Server::start(generic(), Some(answers_on_the_get_stream(stream.clone(), sum_answer))).await;
    let mut s = sidecar_for(&server, &["--log-level", "trace"]);
    s.handshake().await;
    s.pause_stdout();
    // More than the pipe holds; the last one's arrival is logged (trace) before it is queued.
    for i in 0..4 {
        let data = format!("{}note-{i}", "z".repeat(600_000));
        stream.push(
            &json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":data}})
                .to_string(),
        );
    }
    s.stderr_shows("note-3").await;
    drop(s.take_stdin());
    let started = std::time::Instant::now();
    let status = s.exit_status_within(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "the proxy kept running with stdout full");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}

/// Issue 21.1: a 4xx whose body is not a well-formed error response (both `result` and
/// `error`, or a `method`) is still exactly one answer under the request's id, and the proxy
/// goes on; before, `deliver` dropped it and the request was never answered.
#[tokio::test]
async fn a_malformed_error_body_is_one_answer_not_silence() {
    let hook: Hook = Arc::new(|seen: &Seen| {
        let id = seen.json["id"].clone();
        match seen.json["params"]["name"].as_str() {
            Some("echo") => Action::Respond(respond(
                400,
                "application/json",
                json!({"jsonrpc":"2.0","id":id,"result":{},"error":{"code":-32602,"message":"both"}})
                    .to_string(),
            )),
            Some("big") => Action::Respond(respond(
                400,
                "application/json",
                json!({"jsonrpc":"2.0","id":id,"method":"oops","error":{"code":-32603,"message":"a method"}})
                    .to_string(),
            )),
            _ => Action::Pass,
        }
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "echo", json!({"text": "x"}))).await;
    let first = s.recv().await;
    assert_eq!((first["id"].clone(), first["error"]["code"].clone()), (json!(1), json!(-32602)), "{first}");
    assert!(first.get("result").is_none(), "{first}");
    s.send_json(&call(2, "big", json!({"bytes": 1}))).await;
    let second = s.recv().await;
    assert_eq!(second["id"], 2, "{second}");
    assert!(second.get("error").is_some() && second.get("method").is_none(), "{second}");
    s.send_json(&call(3, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    let out = s.finish().await;
    assert_eq!(out.messages().len(), 4, "one answer each: {:?}", out.messages());
}

/// Issue 21.1: the probe of `--protocol-era modern` answered with a malformed 400 does not stop
/// the proxy: `initialize` is answered.
#[tokio::test]
async fn a_malformed_answer_to_the_era_probe_leaves_nothing_unanswered() {
    let hook: Hook = Arc::new(|seen: &Seen| match seen.rpc_method() {
        Some("server/discover") => Action::Respond(respond(
            400,
            "application/json",
            json!({"jsonrpc":"2.0","id":seen.json["id"],"result":{},"error":{"code":-32600,"message":"x"}})
                .to_string(),
        )),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &["--protocol-era", "modern"]);
    s.handshake_within(Duration::from_secs(20)).await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    s.finish().await;
}

/// Issue 21.1: a secret of digits (a `${VAR}` header value) is redacted inside strings only; a
/// number that happens to contain it is left whole, and the answer stays valid JSON.
#[tokio::test]
async fn a_secret_of_digits_does_not_cut_a_number_in_an_error() {
    let hook: Hook = Arc::new(|seen: &Seen| {
        match seen.rpc_method() {
        Some("tools/call") => Action::Respond(respond(
            400,
            "application/json",
            json!({"jsonrpc":"2.0","id":seen.json["id"],"error":{"code":-32000,"message":"tenant 100234 is busy",
                "data":{"retryAfterMs":1002345}}})
            .to_string(),
        )),
        _ => Action::Pass,
    }
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut args = args_for(&server);
    args.extend(["--header".to_owned(), "X-Tenant: ${TENANT_ID}".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Sidecar::spawn(&args, &[("TEST_KEY", KEY), ("TENANT_ID", "100234")]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["error"]["data"]["retryAfterMs"], 1002345, "{answer}");
    assert!(!answer["error"]["message"].as_str().unwrap().contains("100234"), "{answer}");
    s.finish().await;
}

/// Issue 25.4: `--log-file` gets the lines stderr gets, redacted (a server that echoes the key
/// in an error), in a file of the owner's only named for the day; a second process appends to
/// the same file; JSON lines with `--log-format json`; a path that cannot be written is said at
/// start (exit 2).
#[tokio::test]
async fn issue25_4_the_log_file_has_stderr_s_lines_redacted_and_private() {
    let hook: Hook = Arc::new(|seen: &Seen| match seen.json["params"]["name"].as_str() {
        Some("leak") => {
            let key = seen.header("x-api-key").or(seen.header("authorization")).unwrap_or_default();
            let said = format!("no tenant for key {}", key.trim_start_matches("Bearer "));
            Action::Respond(respond(500, "application/json", json!({"error": {"message": said}}).to_string()))
        }
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("issue25-4-log-file");
    let path = dir.join("logs").join("mcp.log");
    let log = path.to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--log-file", &log, "--log-level", "debug"]);
    s.handshake().await;
    s.send_json(&call(1, "leak", json!({}))).await;
    assert!(s.recv().await.get("error").is_some());
    let first = s.finish().await;
    let mut s = sidecar_for(&server, &["--log-file", &log, "--log-format", "json", "--log-level", "debug"]);
    s.handshake().await;
    let second = s.finish().await;

    let files: Vec<_> = std::fs::read_dir(dir.join("logs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mcp.20") && name.ends_with(".log") && name.len() == "mcp.2026-12-07.log".len(),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("no tenant for key [redacted]"), "{text}");
    let logged: Vec<&str> = first.stderr.lines().filter(|l| l.starts_with("20")).collect();
    assert!(logged.len() > 2, "{}", first.stderr);
    for line in &logged {
        assert!(text.contains(line), "missing from the file: {line}\n{text}");
    }
    let json_lines: Vec<&str> = second.stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!json_lines.is_empty(), "{}", second.stderr);
    for line in json_lines {
        assert!(text.contains(line), "{line}");
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let not_a_dir = dir.join("logs").join(&name).join("x.log");
    let mut args = args_for(&server);
    args.extend(["--log-file".into(), not_a_dir.to_string_lossy().into_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = run_command(&args, ENV).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--log-file") && stderr.contains("cannot write the log there"), "{stderr}");
}

/// Issue 25.2: `--api-key-command` prints the key (here from a file, as `op read` would from a
/// vault): used at start; after the key is rotated and the server refuses the old one (401),
/// the command runs once more and the request goes again with the new key, once; the new key
/// is redacted like the first. A command that fails at start is exit 2 with what it said.
#[cfg(unix)]
#[tokio::test]
async fn issue25_2_a_key_command_is_run_at_start_and_again_after_a_401() {
    const NEW: &str = "inv_test_SECRET_rotated_0123456789";
    let rotated = Arc::new(AtomicBool::new(false));
    let flag = rotated.clone();
    let hook: Hook = Arc::new(move |seen: &Seen| {
        let old = seen.header("authorization").is_some_and(|a| a.contains(KEY));
        if flag.load(Ordering::SeqCst) && old {
            return Action::Respond(respond(401, "application/json", r#"{"error":"invalid key"}"#));
        }
        Action::Pass
    });
    let opts = Options { keys: vec![KEY.to_owned(), NEW.to_owned()], ..Options::default() };
    let server = Server::start(opts, Some(hook)).await;
    let dir = scratch_dir("issue25-2-key-command");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let command = format!("cat '{}'", file.display());
    let mut s = Sidecar::spawn(&[&server.url, "--api-key-command", &command], &[]).secret(NEW);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    std::fs::write(&file, format!("{NEW}\n")).unwrap();
    rotated.store(true, Ordering::SeqCst);
    s.send_json(&call(2, "sum", json!({"a": 2, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "4", "sent again with the new key");
    s.send_json(&call(3, "sum", json!({"a": 3, "b": 3}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "6");
    let out = s.finish().await;
    assert!(out.stderr.contains("printed a new one"), "{}", out.stderr);
    let calls = server.posts("tools/call");
    let keys: Vec<bool> = calls.iter().map(|c| c.header("authorization").unwrap().contains(NEW)).collect();
    assert_eq!(keys, [false, false, true, true], "the refused call once with the old key, then the new");

    std::fs::remove_file(&file).unwrap();
    let (code, _, stderr) = run_command(&[&server.url, "--api-key-command", &command], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--api-key-command (cat) failed") && stderr.contains("No such file"), "{stderr}");
}
