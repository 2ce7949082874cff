//! Resilience (issue 4): sessions that expire or vanish with a server restart, a parent that dies.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn t12_an_expired_session_is_renewed_and_the_request_sent_again() {
    let count = AtomicUsize::new(0);
    let hook: Hook = Arc::new(move |s: &Seen| {
        if s.rpc_method() == Some("tools/call") && count.fetch_add(1, Ordering::SeqCst) == 0 {
            return Action::Respond(respond(
                404,
                "application/json",
                r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#,
            ));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":20,"b":22}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "42", "the client never notices: {answer}");
    let outcome = s.finish().await;
    assert_eq!(
        outcome.stderr.matches("ended the MCP session").count(),
        1,
        "logged once:\n{}",
        outcome.stderr
    );
    let inits = server.posts("initialize");
    assert_eq!(inits.len(), 2);
    assert!(inits[1].header("mcp-session-id").is_none(), "a new initialize carries no session id (T-12)");
    assert_eq!(inits[1].body, inits[0].body, "the client's own initialize, replayed");
    assert_eq!(server.posts("notifications/initialized").len(), 2);
    let calls = server.posts("tools/call");
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].header("mcp-session-id"), calls[1].header("mcp-session-id"));
    assert_eq!(calls[0].body, calls[1].body, "the same bytes, the same id");
}

#[tokio::test]
async fn t12_a_server_restart_loses_sessions_and_the_sidecar_carries_on() {
    let server = Server::start(generic(), None).await;
    let addr = server.addr;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    assert!(s.recv().await["result"].is_object());
    server.stop();
    drop(server);
    // The same port, a fresh process-like server: every old session id is unknown now.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let restarted = Server::start_on(listener, generic(), None);
    for id in 2..5 {
        s.send_json(&call(id, "sum", json!({"a":id,"b":0}))).await;
    }
    for _ in 2..5 {
        let answer = s.recv().await;
        assert!(answer["result"].is_object(), "{answer}");
    }
    s.finish().await;
    assert_eq!(restarted.posts("initialize").len(), 1, "three requests met the 404; one new session");
}
