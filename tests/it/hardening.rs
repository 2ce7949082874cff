//! Issue 10: the promises (one answer per request, no secret anywhere, no hang, nothing lost)
//! against hostile servers, absurd values and careless or slow clients. Each test names the
//! point of the issue it holds to.

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
