//! Rate limits (R-01…R-13): every call eventually answered, never earlier than the server said,
//! over-long waits answered at once, one gate per origin and key, shared by processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::Response;
use serde_json::json;

use crate::harness::example::WindowLog;
use crate::harness::*;

/// A 429 with these headers.
fn too_many(headers: &[(&str, String)]) -> Response {
    let mut r = respond(429, "application/json", r#"{"error":"rate_limited","message":"Too many requests"}"#);
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A hook that answers the first `n` tools/call POSTs with `make()`.
fn first_calls(n: usize, make: impl Fn() -> Response + Send + Sync + 'static) -> Hook {
    let count = AtomicUsize::new(0);
    Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") && count.fetch_add(1, Ordering::SeqCst) < n {
            return Action::Respond(make());
        }
        Action::Pass
    })
}

fn epoch_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Gap between the first refused call and the call that got through.
fn retry_gap(server: &Server) -> Duration {
    let calls = server.posts("tools/call");
    assert!(calls.len() >= 2, "expected a retry, saw {} calls", calls.len());
    calls.last().unwrap().at - calls[0].at
}

#[tokio::test]
async fn r02_each_header_form_is_waited_out_and_never_cut_short() {
    // (name, headers of the 429, the wait it means, at least)
    type Form = (&'static str, Box<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>, Duration);
    let forms: Vec<Form> = vec![
        ("retry-after seconds", Box::new(|| vec![("retry-after", "1".into())]), Duration::from_secs(1)),
        (
            "retry-after http-date",
            Box::new(|| {
                let now = SystemTime::now();
                vec![
                    ("date", httpdate::fmt_http_date(now)),
                    ("retry-after", httpdate::fmt_http_date(now + Duration::from_secs(2))),
                ]
            }),
            // HTTP-dates have whole seconds: at least 1 s after the truncated Date.
            Duration::from_secs(1),
        ),
        (
            "ratelimit field",
            Box::new(|| vec![("ratelimit", r#""minute";r=0;t=1"#.into())]),
            Duration::from_secs(1),
        ),
        (
            "reset-after",
            Box::new(|| vec![("x-ratelimit-reset-after", "1.2".into())]),
            Duration::from_millis(1200),
        ),
        ("reset delta", Box::new(|| vec![("x-ratelimit-reset", "1".into())]), Duration::from_secs(1)),
        (
            "reset epoch seconds",
            Box::new(|| {
                vec![
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", (epoch_now() + 2).to_string()),
                ]
            }),
            Duration::from_secs(1),
        ),
        (
            "reset epoch ms",
            Box::new(|| {
                let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 1500;
                vec![("x-ratelimit-reset", ms.to_string())]
            }),
            Duration::from_millis(1400),
        ),
    ];
    let mut runs = Vec::new();
    for (name, headers, at_least) in forms {
        runs.push(tokio::spawn(async move {
            let headers = Arc::new(headers);
            let h = headers.clone();
            let server = Server::start(generic(), Some(first_calls(1, move || too_many(&h())))).await;
            let mut s = sidecar_for(&server, &[]);
            s.handshake().await;
            s.send_json(&call(1, "sum", json!({"a":1,"b":2}))).await;
            let answer = s.recv().await;
            assert_eq!(answer["result"]["content"][0]["text"], "3", "{name}: {answer}");
            let gap = retry_gap(&server);
            println!("retry timing: {name:<22} asked {at_least:>8.1?}  retried after {gap:>8.3?}");
            assert!(gap >= at_least, "{name}: retried after {gap:?}, before {at_least:?}");
            // Within a second plus the jitter (0.5 s at most) of what was asked.
            assert!(
                gap <= at_least + Duration::from_millis(1500),
                "{name}: waited {gap:?}, far beyond {at_least:?}"
            );
            let outcome = s.finish().await;
            assert!(
                outcome.stderr.contains("waiting"),
                "{name}: one info line per wait:\n{}",
                outcome.stderr
            );
            assert!(
                outcome.stderr.contains("rate limits: 1 answers with HTTP 429"),
                "{name}: summary:\n{}",
                outcome.stderr
            );
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn r01_503_with_retry_after_is_retried_without_it_is_not() {
    let count = AtomicUsize::new(0);
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() != Some("tools/call") {
            return Action::Pass;
        }
        match count.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let mut r = respond(503, "text/plain", "maintenance");
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                Action::Respond(r)
            }
            2 => Action::Respond(respond(503, "text/plain", "overloaded")),
            _ => Action::Pass,
        }
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":2,"b":2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "4");
    assert!(retry_gap(&server) >= Duration::from_secs(1));
    // A plain 503 may mean the server processed it: answered, not replayed (R-05).
    s.send_json(&call(2, "sum", json!({"a":2,"b":2}))).await;
    let e = s.recv().await;
    assert_eq!(e["error"]["data"]["kind"], "server_error", "{e}");
    s.finish().await;
    assert_eq!(server.posts("tools/call").len(), 3);
}

#[tokio::test]
async fn over_max_wait_is_answered_at_once_and_holds_the_origin() {
    let server =
        Server::start(generic(), Some(first_calls(99, || too_many(&[("retry-after", "11520".into())]))))
            .await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call("a", "sum", json!({"a":1,"b":1}))).await;
    let e = s.recv().await;
    assert_eq!(e["id"], "a");
    assert_eq!(e["error"]["code"], -32004);
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("resets in 3 h 12 min (Retry-After) (a daily quota?)") && msg.contains("--max-wait"),
        "{msg}"
    );
    assert!(e["error"]["data"]["retryAfterSeconds"].as_f64().unwrap() >= 11520.0);
    assert_eq!(e["error"]["data"]["rateLimitHeaders"]["retry-after"], "11520");
    assert_eq!(e["error"]["data"]["requestSent"], false);
    // The next call does not even reach the server: the gate holds the origin.
    s.send_json(&call("b", "sum", json!({"a":1,"b":1}))).await;
    let e = s.recv().await;
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!("b"), json!(-32004)));
    s.finish().await;
    assert_eq!(server.posts("tools/call").len(), 1);
}

#[tokio::test]
async fn retry_budget_is_respected() {
    let server =
        Server::start(generic(), Some(first_calls(99, || too_many(&[("retry-after", "0".into())])))).await;
    let mut s = sidecar_for(&server, &["--max-retries", "2"]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    let e = s.recv().await;
    assert!(e["error"]["message"].as_str().unwrap().contains("after 2 retries (--max-retries)"), "{e}");
    s.finish().await;
    assert_eq!(server.posts("tools/call").len(), 3, "one send and two retries");
}

#[tokio::test]
async fn r10_one_429_holds_the_other_requests_to_the_same_deadline() {
    let server =
        Server::start(generic(), Some(first_calls(1, || too_many(&[("retry-after", "1".into())])))).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    // Once the 429 is being waited out, send more: they must wait too, not collect 429s.
    s.stderr_shows("waiting").await;
    for id in 2..5 {
        s.send_json(&call(id, "sum", json!({"a":1,"b":1}))).await;
    }
    for _ in 1..5 {
        assert!(s.recv().await["result"].is_object());
    }
    s.finish().await;
    let calls = server.posts("tools/call");
    assert_eq!(calls.len(), 5, "one 429, then four calls that went through");
    for c in &calls[1..] {
        assert!(c.at - calls[0].at >= Duration::from_secs(1), "a request went out before the deadline");
    }
}

#[tokio::test]
async fn a_spent_quota_holds_new_requests_instead_of_provoking_a_429() {
    let first = Arc::new(AtomicUsize::new(0));
    let count = first.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") && count.fetch_add(1, Ordering::SeqCst) == 0 {
            // A success that says the quota is spent for 1 s.
            let mut r = respond(
                200,
                "application/json",
                format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{"content":[]}}}}"#, s.json["id"]),
            );
            r.headers_mut().insert("x-ratelimit-remaining", "0".parse().unwrap());
            r.headers_mut().insert("x-ratelimit-reset", "1".parse().unwrap());
            return Action::Respond(r);
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    assert!(s.recv().await["result"].is_object());
    s.send_json(&call(2, "sum", json!({"a":1,"b":1}))).await;
    assert!(s.recv().await["result"].is_object());
    s.finish().await;
    assert!(retry_gap(&server) >= Duration::from_secs(1), "held until the reset");
}

#[tokio::test]
async fn a_client_side_limit_spaces_requests_so_no_429_is_seen() {
    let server = Server::start(generic(), None).await;
    let mut s = sidecar_for(&server, &["--rate-limit", "3/s"]);
    s.handshake().await;
    for id in 0..7 {
        s.send_json(&call(id, "sum", json!({"a":id,"b":0}))).await;
    }
    for _ in 0..7 {
        assert!(s.recv().await["result"].is_object());
    }
    s.finish().await;
    // Every POST (initialize and the notification count too) fits 3 per second.
    let posts: Vec<_> = server.seen().into_iter().filter(|r| r.method == "POST").collect();
    // Sent at least a second apart; arrival can be late by scheduling jitter under a loaded
    // test run, hence 0.9 s (without the limit all seven arrive within milliseconds).
    for w in posts.windows(4) {
        assert!(w[3].at - w[0].at >= Duration::from_millis(900), "4 requests within a second");
    }
}

#[tokio::test]
async fn j08_a_request_cancelled_while_waiting_is_dropped() {
    let server =
        Server::start(generic(), Some(first_calls(1, || too_many(&[("retry-after", "1".into())])))).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call("c", "sum", json!({"a":1,"b":1}))).await;
    s.stderr_shows("waiting").await;
    s.send(
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"c","reason":"user"}}"#,
    )
    .await;
    // Once the gate has opened, a new call goes through; the cancelled one must not follow.
    s.send_json(&call("after", "sum", json!({"a":2,"b":2}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["id"], "after");
    let outcome = s.finish().await;
    assert!(outcome.messages().iter().all(|m| m["id"] != "c"), "a cancelled request gets no answer");
    let calls = server.posts("tools/call");
    assert_eq!(calls.iter().filter(|c| c.json["id"] == "c").count(), 1, "never sent again");
}

#[tokio::test]
async fn two_processes_share_one_gate() {
    let server =
        Server::start(generic(), Some(first_calls(1, || too_many(&[("retry-after", "2".into())])))).await;
    let mut a = sidecar_for(&server, &[]);
    a.handshake().await;
    a.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    a.stderr_shows("waiting").await;
    let limited_at = server.posts("tools/call")[0].at;
    // A second sidecar with the same key and origin starts now: its first request must wait.
    let mut b = sidecar_for(&server, &[]);
    b.handshake().await;
    let b_init = server.posts("initialize").last().unwrap().at;
    assert!(b_init - limited_at >= Duration::from_secs(2), "the second process sent before the deadline");
    assert!(a.recv().await["result"].is_object());
    a.finish().await;
    b.finish().await;
    assert_eq!(
        server
            .seen()
            .iter()
            .filter(|s| s.json.get("id").is_some() && s.rpc_method() == Some("tools/call"))
            .count(),
        2
    );
}

#[tokio::test]
async fn vendor_rate_limits_are_reported_with_their_headers() {
    for (vendor, header) in [
        (Vendor::Investra, "retry-after"),
        (Vendor::Ai2fin, "x-ratelimit-reset"),
        (Vendor::Converra, "x-ratelimit-reset"),
    ] {
        let opts = Options { vendor, keys: vec![KEY.to_owned()], per_minute: Some(2), ..Options::default() };
        let server = Server::start(opts, None).await;
        let style = if vendor == Vendor::Ai2fin { "x-api-key" } else { "bearer" };
        let mut s = sidecar_for(&server, &["--auth-header", style, "--max-wait", "0"]);
        // initialize and initialized use the 2 requests of this minute.
        s.handshake().await;
        s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
        let e = s.recv().await;
        assert_eq!(e["error"]["code"], -32004, "{vendor:?}: {e}");
        assert!(e["error"]["data"]["retryAfterSeconds"].as_f64().unwrap() <= 61.0, "{vendor:?}: {e}");
        assert!(e["error"]["data"]["rateLimitHeaders"][header].is_string(), "{vendor:?}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("resets in"), "{vendor:?}: {e}");
        s.finish().await;
    }
}

#[tokio::test]
async fn every_call_gets_through_each_vendors_rate_limit() {
    // 2 requests per 2-second window: 8 POSTs need several windows; none may be lost.
    let mut runs = Vec::new();
    for vendor in [Vendor::Investra, Vendor::Ai2fin, Vendor::Converra] {
        runs.push(tokio::spawn(async move {
            let opts = Options {
                vendor,
                keys: vec![KEY.to_owned()],
                per_minute: Some(2),
                window_secs: 2,
                ..Options::default()
            };
            let server = Server::start(opts, None).await;
            let style = if vendor == Vendor::Ai2fin { "x-api-key" } else { "bearer" };
            let mut s = sidecar_for(&server, &["--auth-header", style, "--max-retries", "10"]);
            s.handshake().await;
            for id in 0..6 {
                s.send_json(&call(id, "sum", json!({"a":id,"b":1}))).await;
            }
            let mut ids: Vec<i64> = Vec::new();
            for _ in 0..6 {
                let answer = s.recv().await;
                assert!(answer["result"].is_object(), "{vendor:?}: {answer}");
                ids.push(answer["id"].as_i64().unwrap());
            }
            ids.sort();
            assert_eq!(ids, (0..6).collect::<Vec<_>>(), "{vendor:?}: exactly one answer each");
            s.finish().await;
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn the_get_stream_waits_out_a_429_too() {
    let hook = nth_get(|n| match n {
        0 => Action::Respond(too_many(&[("retry-after", "1".into())])),
        1 => sse_notification("notifications/resources/list_changed"),
        _ => Action::Respond(respond(405, "text/plain", "")),
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    assert_eq!(s.recv().await["method"], "notifications/resources/list_changed");
    s.finish().await;
    let gets: Vec<_> = server.seen().into_iter().filter(|r| r.method == "GET").collect();
    assert!(gets[1].at - gets[0].at >= Duration::from_secs(1), "reopened before Retry-After");
}

/// A fixed-window server (`limit` POSTs per `secs` seconds per key) that states its budget in
/// every answer, and the log of what it let through.
async fn window_server(limit: u32, secs: u64) -> (Server, Arc<std::sync::Mutex<WindowLog>>) {
    let log = Arc::new(std::sync::Mutex::new(WindowLog::default()));
    let opts = Options {
        keys: vec![KEY.into()],
        per_minute: Some(limit),
        window_secs: secs,
        limit_headers: true,
        log: log.clone(),
        ..Options::default()
    };
    (Server::start(opts, None).await, log)
}

/// Issue 11: three sidecars sharing one key and one state directory, eight calls in flight
/// each, against a fixed-window server (10 POSTs a second) that states its budget in every
/// answer: every call is answered exactly once, no 429 is provoked, and no window of the server
/// took more than its limit.
#[tokio::test]
async fn a_shared_budget_is_spent_to_the_last_request_without_a_429() {
    let (server, log) = window_server(10, 1).await;
    let dir = scratch_dir("shared-budget");
    let state = dir.to_string_lossy().into_owned();
    let mut sidecars: Vec<Sidecar> = (0..3).map(|_| sidecar_for(&server, &["--state-dir", &state])).collect();
    for s in &mut sidecars {
        s.handshake().await;
    }
    for s in &mut sidecars {
        for i in 1..=8 {
            s.send_json(&call(i, "sum", json!({"a": i, "b": 100}))).await;
        }
    }
    for s in &mut sidecars {
        let mut answered = Vec::new();
        for _ in 0..8 {
            let m = s.recv().await;
            assert_eq!(
                m["result"]["content"][0]["text"],
                (m["id"].as_i64().unwrap() + 100).to_string(),
                "{m}"
            );
            answered.push(m["id"].as_i64().unwrap());
        }
        answered.sort();
        assert_eq!(answered, (1..=8).collect::<Vec<_>>());
    }
    for s in sidecars {
        s.finish().await;
    }
    let log = log.lock().unwrap();
    assert_eq!(log.rejected, 0, "429s provoked: {log:?}");
    assert!(log.accepted.values().all(|n| *n <= 10), "a window over its limit: {log:?}");
    assert!(log.accepted.values().sum::<u32>() >= 30, "{log:?}");
}

/// Issue 11: a spent daily budget (here `--rate-limit 2/day`, as `--plan` sets them) answers at
/// once with when the next request is allowed; nothing is sent.
#[tokio::test]
async fn a_spent_daily_budget_is_answered_at_once() {
    let server = Server::start(generic(), None).await;
    let dir = scratch_dir("daily");
    let state = dir.to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--state-dir", &state, "--rate-limit", "4/day"]);
    // initialize, notifications/initialized and the GET stream: three of four (no era probe
    // since issue 20: the server takes the client's handshake).
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "2");
    s.send_json(&call(2, "sum", json!({"a": 1, "b": 1}))).await;
    let refused = s.recv().await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("daily limit of 4 spent; next request allowed in 23 h"), "{refused}");
    assert_eq!(refused["error"]["data"]["requestSent"], false);
    assert_eq!(server.posts("tools/call").len(), 1);
    s.finish().await;
}

/// Issue 11: the handshake is inside the budget: a fresh process whose key's window another
/// process has spent waits for the next window for `initialize` itself, instead of provoking
/// a 429 that strict servers send for the handshake too.
#[tokio::test]
async fn a_fresh_process_does_not_burst_its_handshake_past_a_spent_window() {
    let (server, log) = window_server(4, 2).await;
    let dir = scratch_dir("handshake-budget");
    let state = dir.to_string_lossy().into_owned();
    let mut a = sidecar_for(&server, &["--state-dir", &state]);
    a.handshake().await;
    for i in 1..=4 {
        a.send_json(&call(i, "sum", json!({"a": i, "b": 0}))).await;
    }
    for _ in 1..=4 {
        assert!(a.recv().await["result"].is_object());
    }
    let mut b = sidecar_for(&server, &["--state-dir", &state]);
    b.handshake().await;
    b.send_json(&call(9, "sum", json!({"a": 9, "b": 0}))).await;
    assert_eq!(b.recv().await["result"]["content"][0]["text"], "9");
    a.finish().await;
    let out = b.finish().await;
    // The exit summary says what the budget held back, next to the 429s (none).
    assert!(
        out.stderr.contains("rate limits: 0 answers with HTTP 429")
            && out.stderr.contains("held by the server's budget"),
        "{}",
        out.stderr
    );
    let log = log.lock().unwrap();
    assert_eq!(log.rejected, 0, "{log:?}\n{}", out.stderr);
    assert!(log.accepted.values().all(|n| *n <= 4), "{log:?}");
}

/// Issue 11: two sidecars with their own state directories (two machines) share one budget
/// through Redis: no 429, no window over its limit (without the store they provoke 429s).
// Unix only: redis-server has no maintained Windows build; the store client is the same code on
// every platform (and its unit tests run under Wine).
#[cfg(unix)]
#[tokio::test]
async fn two_machines_share_one_budget_through_redis() {
    let redis = RedisServer::start().await;
    let (server, log) = window_server(8, 1).await;
    let store = redis.url();
    let mut sidecars: Vec<Sidecar> = (0..2)
        .map(|i| {
            let dir = scratch_dir(&format!("redis-machine-{i}")).to_string_lossy().into_owned();
            sidecar_for(&server, &["--state-dir", &dir, "--rate-limit-store", &store])
        })
        .collect();
    for s in &mut sidecars {
        s.handshake().await;
    }
    for s in &mut sidecars {
        for i in 1..=8 {
            s.send_json(&call(i, "sum", json!({"a": i, "b": 0}))).await;
        }
    }
    for s in &mut sidecars {
        for _ in 1..=8 {
            assert!(s.recv().await["result"].is_object());
        }
    }
    for s in sidecars {
        let out = s.finish().await;
        assert!(!out.stderr.contains("could not be used"), "{}", out.stderr);
    }
    let log = log.lock().unwrap();
    assert_eq!(log.rejected, 0, "{log:?}");
    assert!(log.accepted.values().all(|n| *n <= 8), "{log:?}");
}

/// Issue 11: the store killed mid-run: requests keep flowing on the local state with one
/// warning; restarted, the store is used again (said once).
// Unix only: redis-server has no maintained Windows build; the store client is the same code on
// every platform (and its unit tests run under Wine).
#[cfg(unix)]
#[tokio::test]
async fn requests_flow_while_the_store_is_down_and_it_is_used_again_when_back() {
    let mut redis = RedisServer::start().await;
    let server = Server::start(generic(), None).await;
    let dir = scratch_dir("redis-down").to_string_lossy().into_owned();
    let store = redis.url();
    let mut s = sidecar_for(
        &server,
        &["--state-dir", &dir, "--rate-limit-store", &store, "--rate-limit", "1000/min"],
    );
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "2");
    redis.stop().await;
    for i in 2..=4 {
        s.send_json(&call(i, "sum", json!({"a": i, "b": 1}))).await;
        assert_eq!(
            s.recv().await["result"]["content"][0]["text"],
            (i + 1).to_string(),
            "answered while the store is down"
        );
    }
    s.stderr_shows("could not be used").await;
    redis.restart().await;
    // The gate tries the store again a few seconds after the failure: keep calling until it
    // says the store is back.
    let mut id = 10;
    tokio::time::timeout(PATIENCE, async {
        loop {
            s.send_json(&call(id, "sum", json!({"a": 1, "b": 1}))).await;
            assert!(s.recv().await["result"].is_object());
            id += 1;
            if s.stderr_contains("is reachable again") {
                break;
            }
        }
    })
    .await
    .expect("the store was never used again");
    let out = s.finish().await;
    assert_eq!(out.stderr.matches("could not be used").count(), 1, "one warning per outage:\n{}", out.stderr);
}

/// Issue 11 (and 10.1 for the store): a deadline kept in the store is listed by `status
/// --rate-limit-store` and removed by `status --clear-limits --rate-limit-store`.
// Unix only: redis-server has no maintained Windows build; the store client is the same code on
// every platform (and its unit tests run under Wine).
#[cfg(unix)]
#[tokio::test]
async fn status_lists_and_clears_the_deadlines_in_the_store() {
    let redis = RedisServer::start().await;
    let store = redis.url();
    let limited = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let on = limited.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") && on.load(Ordering::SeqCst) {
            return Action::Respond(too_many(&[("retry-after", "7200".into())]));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("store-status").to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--state-dir", &dir, "--rate-limit-store", &store]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["error"]["data"]["kind"], "rate_limited");
    s.finish().await;
    limited.store(false, Ordering::SeqCst);
    // Listed from the store (another machine's state directory is empty).
    let elsewhere = scratch_dir("store-status-other").to_string_lossy().into_owned();
    let (code, listed, stderr) =
        run_command(&["status", "--state-dir", &elsewhere, "--rate-limit-store", &store], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let origin = format!("http://{}", server.addr);
    assert!(listed.lines().any(|l| l.contains(&origin) && l.contains("Retry-After")), "{listed}");
    let (code, _, said) = run_command(
        &["status", "--clear-limits", "--state-dir", &elsewhere, "--rate-limit-store", &store],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("cleared in the store"), "{said}");
    let mut t = sidecar_for(&server, &["--state-dir", &elsewhere, "--rate-limit-store", &store]);
    t.handshake().await;
    t.send_json(&call(2, "sum", json!({"a": 2, "b": 2}))).await;
    assert_eq!(t.recv().await["result"]["content"][0]["text"], "4", "served at once after the clearing");
    t.finish().await;
}

/// Issue 11: `rediss://` with a private CA given by `--ca-file`: the budget is shared over TLS.
// Unix only: redis-server has no maintained Windows build; the store client is the same code on
// every platform (and its unit tests run under Wine).
#[cfg(unix)]
#[tokio::test]
async fn the_store_speaks_tls_with_a_private_ca() {
    let pki = crate::tls::pki(&["127.0.0.1"], false);
    let dir = scratch_dir("redis-tls");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (cert, key, ca) =
        (write("cert.pem", &pki.cert_pem), write("key.pem", &pki.key_pem), write("ca.pem", &pki.ca_pem));
    let redis = RedisServer::start_tls(&cert, &key, &ca).await;
    let server = Server::start(generic(), None).await;
    let state = dir.join("state").to_string_lossy().into_owned();
    let store = redis.url();
    let mut s = sidecar_for(
        &server,
        &["--state-dir", &state, "--rate-limit-store", &store, "--rate-limit", "100/min", "--ca-file", &ca],
    );
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 5, "b": 5}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "10");
    let out = s.finish().await;
    assert!(!out.stderr.contains("could not be used"), "{}", out.stderr);
    // The state went to the store: status reads it there (a client-side limit leaves no
    // deadline, so check the key exists through the listing's success).
    let (code, _, stderr) =
        run_command(&["status", "--state-dir", &state, "--rate-limit-store", &store, "--ca-file", &ca], &[])
            .await;
    assert_eq!(code, 0, "{stderr}");
    // Without the CA, the store's certificate is not trusted: the local state stands in (and
    // the call is still answered).
    let mut s = sidecar_for(
        &server,
        &["--state-dir", &state, "--rate-limit-store", &store, "--rate-limit", "100/min"],
    );
    s.handshake().await;
    s.send_json(&call(2, "sum", json!({"a": 5, "b": 6}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "11");
    let out = s.finish().await;
    assert!(out.stderr.contains("could not be used"), "{}", out.stderr);
}

/// Issue 21.5: a request the server never answered (here: held until `--request-timeout`)
/// gives its unit of the shared budget back; it used to hold it for a minute, so that the
/// next request waited for "requests in flight" the server had never seen.
#[tokio::test]
async fn a_request_that_timed_out_gives_its_unit_back() {
    let never = Arc::new(tokio::sync::Notify::new());
    let hook: Hook = Arc::new(move |seen: &Seen| {
        if seen.json["params"]["arguments"]["a"] == 99 { Action::Hold(never.clone()) } else { Action::Pass }
    });
    let log = Arc::new(std::sync::Mutex::new(WindowLog::default()));
    let opts = Options {
        keys: vec![KEY.into()],
        per_minute: Some(4),
        window_secs: 60,
        limit_headers: true,
        log,
        ..Options::default()
    };
    let server = Server::start(opts, Some(hook)).await;
    let dir = scratch_dir("unit-back");
    let state = dir.to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--state-dir", &state, "--request-timeout", "1", "--max-wait", "2"]);
    // initialize and notifications/initialized: two of four.
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "2");
    s.send_json(&call(2, "sum", json!({"a": 99, "b": 0}))).await;
    assert!(s.recv().await.get("error").is_some(), "timed out");
    // One left in the window, none in flight.
    s.send_json(&call(3, "sum", json!({"a": 2, "b": 2}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "4", "{answer}");
    s.finish().await;
}

/// Issue 21.7: the store's password is taken whole, `:` and all (it was split as user:password,
/// and the store refused it); a user goes in the URL.
#[cfg(unix)]
#[tokio::test]
async fn a_store_password_with_a_colon_is_taken_whole() {
    let password = "pa:ss:SECRET-21-7";
    let redis = RedisServer::start_with_password(password).await;
    let (server, _log) = window_server(8, 1).await;
    let store = redis.url();
    let dir = scratch_dir("redis-colon").to_string_lossy().into_owned();
    let mut args = args_for(&server);
    args.extend(
        ["--state-dir", &dir, "--rate-limit-store", &store, "--rate-limit-store-password-env", "RP"]
            .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Sidecar::spawn(&args, &[("TEST_KEY", KEY), ("RP", password)]).secret(password);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    let out = s.finish().await;
    assert!(!out.stderr.contains("rate-limit store"), "the store was used: {}", out.stderr);
}

/// Issue 21.2: a server with a bucket per tool (`X-RateLimit-Resource`) whose windows reset
/// together: the spent `search` bucket holds `search` only; `echo`, counted in `core`, goes on.
/// (One budget for everything held every method for the rest of the day.)
#[tokio::test]
async fn a_spent_bucket_of_one_tool_does_not_hold_the_others() {
    let hook: Hook = Arc::new(|s: &Seen| {
        if s.rpc_method() != Some("tools/call") {
            return Action::Pass;
        }
        let tool = s.json["params"]["name"].as_str().unwrap_or_default().to_owned();
        let (bucket, limit, remaining) =
            if tool == "search" { ("search", 100, 0) } else { ("core", 5000, 4999) };
        let body =
            json!({"jsonrpc":"2.0","id":s.json["id"],"result":{"content":[{"type":"text","text":tool}]}});
        let mut r = respond(200, "application/json", body.to_string());
        for (k, v) in [
            ("x-ratelimit-resource", bucket.to_owned()),
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", "86400".to_owned()),
        ] {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        Action::Respond(r)
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("buckets");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy(), "--max-wait", "5"]);
    s.handshake().await;
    for (id, tool) in [(1, "echo"), (2, "search"), (3, "echo")] {
        s.send_json(&call(id, tool, json!({}))).await;
        let answer = s.recv().await;
        assert_eq!(answer["result"]["content"][0]["text"], tool, "{answer}");
    }
    s.send_json(&call(4, "search", json!({}))).await;
    let refused = s.recv().await;
    assert_eq!(refused["error"]["code"], -32004, "{refused}");
    assert_eq!(refused["error"]["data"]["requestSent"], false, "{refused}");
    s.send_json(&call(5, "echo", json!({}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "echo");
    s.finish().await;
    assert_eq!(server.posts("tools/call").len(), 4, "the held search was not sent");
}

/// A client that records each progress notification it gets (rmcp's own callback).
#[derive(Clone, Default)]
struct ProgressClient {
    seen: Arc<std::sync::Mutex<Vec<rmcp::model::ProgressNotificationParam>>>,
}

impl rmcp::ClientHandler for ProgressClient {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.seen.lock().unwrap().push(params);
    }
}

/// Issue 24.4: a call with a progress token that the sidecar holds for a 429 with
/// `Retry-After: 25` gets progress notifications while it waits (at once, then every 5 s, each
/// with a message a person can read), so that a real client whose timeout (12 s) resets on
/// progress (rmcp's `reset_timeout_on_progress`, as Claude Code does) gets the result instead of
/// giving up. A second call is held for 6 s and then the server's own progress starts from 0:
/// the values the client sees for that token still only increase.
#[tokio::test]
async fn issue24_4_progress_while_a_request_is_held() {
    use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam};
    use rmcp::service::PeerRequestOptions;
    let posts = AtomicUsize::new(0);
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() != Some("tools/call") {
            return Action::Pass;
        }
        match posts.fetch_add(1, Ordering::SeqCst) {
            0 => Action::Respond(too_many(&[("retry-after", "25".into())])),
            2 => Action::Respond(too_many(&[("retry-after", "6".into())])),
            3 => {
                // The server's own progress, from 0, then the result.
                let (id, token) = (&s.json["id"], &s.json["params"]["_meta"]["progressToken"]);
                let note = |p: u32| {
                    json!({"jsonrpc":"2.0","method":"notifications/progress",
                    "params":{"progressToken":token,"progress":p,"total":2}})
                };
                let result =
                    json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"done"}]}});
                let body = format!("data: {}\n\ndata: {}\n\ndata: {result}\n\n", note(0), note(1));
                Action::Respond(respond(200, "text/event-stream", body))
            }
            _ => Action::Pass,
        }
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("issue24-4-progress");
    let state = dir.to_string_lossy().into_owned();
    let args = [server.url.as_str(), "--api-key-env", "TEST_KEY", "--state-dir", &state];
    let handler = ProgressClient::default();
    let seen = handler.seen.clone();
    let (client, sidecar) = rmcp_client(&args, ENV, handler, None).await;
    let client = client.expect("initialized");
    let call = |name: &str| {
        let params = CallToolRequestParams::new(name.to_owned())
            .with_arguments(json!({"text": "held"}).as_object().unwrap().clone());
        ClientRequest::CallToolRequest(CallToolRequest::new(params))
    };
    let options = || PeerRequestOptions::with_timeout(Duration::from_secs(12)).reset_timeout_on_progress();
    let started = std::time::Instant::now();
    let handle = client.peer().send_request_with_option(call("echo"), options()).await.unwrap();
    let token = handle.progress_token.clone();
    let answer = handle.await_response().await.expect("answered, not timed out: progress reset the timer");
    assert!(format!("{answer:?}").contains("held"), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_secs(25), "never earlier than the server said");
    let of = |token: &rmcp::model::ProgressToken| -> Vec<ProgressNotificationParam> {
        seen.lock().unwrap().iter().filter(|p| &p.progress_token == token).cloned().collect()
    };
    let notes = of(&token);
    assert!(notes.len() >= 2, "{notes:?}");
    assert!(notes.windows(2).all(|w| w[1].progress > w[0].progress), "{notes:?}");
    let message = notes[0].message.clone().unwrap_or_default();
    assert!(
        message.starts_with("waiting 2")
            && message.contains("for the rate limit of 127.0.0.1 (Retry-After), until "),
        "{message}"
    );

    let handle = client.peer().send_request_with_option(call("slow"), options()).await.unwrap();
    let token = handle.progress_token.clone();
    let answer = handle.await_response().await.expect("answered");
    assert!(format!("{answer:?}").contains("done"), "{answer:?}");
    let notes = of(&token);
    let (ours, theirs): (Vec<_>, Vec<_>) = notes.iter().partition(|p| p.message.is_some());
    assert!(ours.len() >= 2 && theirs.len() == 2, "{notes:?}");
    assert!(
        notes.windows(2).all(|w| w[1].progress > w[0].progress),
        "monotonic as the client sees it: {notes:?}"
    );
    assert!(theirs[0].total.unwrap() > theirs[0].progress, "the total moved with the value: {notes:?}");
    client.cancel().await.unwrap();
    sidecar.wait().await;
}

/// Issue 24.4, hostile tokens: a progress token that is an object, or a string of 100 kB, held
/// for a 429: no notification of ours carries it (the spec's tokens are strings or integers, and
/// a huge one is not copied every 5 s); a plain integer token next to them gets ours. Every call
/// is answered once.
#[tokio::test]
async fn issue24_4_hostile_progress_tokens_get_nothing_of_ours() {
    let server =
        Server::start(generic(), Some(first_calls(3, || too_many(&[("retry-after", "2".into())])))).await;
    let dir = scratch_dir("issue24-4-hostile");
    let state = dir.to_string_lossy().into_owned();
    let mut s = Sidecar::spawn(&[&server.url, "--api-key-env", "TEST_KEY", "--state-dir", &state], ENV);
    s.handshake().await;
    let huge = "t".repeat(100_000);
    for (id, token) in [(1, json!({"a": 1})), (2, json!(huge)), (3, json!(42))] {
        let mut msg = call(id, "echo", json!({"text": "x"}));
        msg["params"]["_meta"] = json!({"progressToken": token});
        s.send_json(&msg).await;
    }
    let (mut answered, mut notes) = (Vec::new(), Vec::new());
    while answered.len() < 3 {
        let line = s.recv().await;
        match line["method"].as_str() {
            Some("notifications/progress") => notes.push(line["params"]["progressToken"].clone()),
            _ => answered.push(line["id"].clone()),
        }
    }
    answered.sort_by_key(|id| id.as_i64());
    assert_eq!(answered, [json!(1), json!(2), json!(3)]);
    assert!(!notes.is_empty() && notes.iter().all(|t| *t == json!(42)), "{notes:?}");
    let outcome = s.finish().await;
    outcome.check(&[]);
    assert!(outcome.status.success(), "{}", outcome.stderr);
}

/// Issue 24.5 with a rate limit: the server's `initialize` gets a 429 that `--max-retries 0`
/// will not wait out, so the client's handshake and list are answered from what was kept; a
/// call with a progress token then waits for the rate limit with progress, starts the owed
/// session, and is answered; the server's list now differs, so the client is told.
#[tokio::test]
async fn issue24_5_a_rate_limited_start_is_answered_from_what_was_kept() {
    let limited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = limited.clone();
    let hook: Hook = Arc::new(move |s: &Seen| {
        if !flag.load(Ordering::SeqCst) {
            return Action::Pass;
        }
        match s.rpc_method() {
            Some("initialize") if flag.swap(false, Ordering::SeqCst) => {
                Action::Respond(too_many(&[("retry-after", "2".into())]))
            }
            _ => Action::Pass,
        }
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("issue24-5-limited");
    let state = dir.to_string_lossy().into_owned();
    let args =
        [server.url.as_str(), "--api-key-env", "TEST_KEY", "--state-dir", &state, "--max-retries", "0"];
    let mut s = Sidecar::spawn(&args, ENV);
    s.handshake().await;
    s.send_json(&request(1, "tools/list", json!({"_meta": {}}))).await;
    let before = s.recv().await;
    s.finish().await;
    // Make the kept list differ from what the server will list: one tool fewer kept.
    let kept_path = std::fs::read_dir(dir.join("kept")).unwrap().next().unwrap().unwrap().path();
    let mut kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept_path).unwrap()).unwrap();
    kept["results"]["tools/list"]["result"]["tools"].as_array_mut().unwrap().pop();
    std::fs::write(&kept_path, kept.to_string()).unwrap();

    limited.store(true, Ordering::SeqCst);
    let mut s = Sidecar::spawn(&args, ENV);
    s.handshake().await;
    s.send_json(&request(2, "tools/list", json!({}))).await;
    let stale = s.recv().await;
    assert_eq!(
        stale["result"]["tools"].as_array().unwrap().len() + 1,
        before["result"]["tools"].as_array().unwrap().len(),
        "{stale}"
    );
    let mut msg = call(3, "echo", json!({"text": "later"}));
    msg["params"]["_meta"] = json!({"progressToken": "p3"});
    s.send_json(&msg).await;
    let (mut answered, mut told, mut progress) = (None, false, Vec::new());
    while answered.is_none() || !told {
        let line = s.recv().await;
        match line["method"].as_str() {
            Some("notifications/tools/list_changed") => told = true,
            Some("notifications/progress") => progress.push(line["params"]["message"].clone()),
            Some(_) => {}
            None => answered = Some(line),
        }
    }
    assert_eq!(answered.unwrap()["result"]["content"][0]["text"], "later");
    assert!(
        progress
            .first()
            .and_then(|m| m.as_str())
            .is_some_and(|m| m.contains("for the rate limit of 127.0.0.1")),
        "{progress:?}"
    );
    let outcome = s.finish().await;
    assert!(outcome.stderr.contains("answered from what was kept"), "{}", outcome.stderr);
}
