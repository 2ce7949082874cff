//! Messages are forwarded byte for byte (J-01, J-11): ids keep type and digits, unknown members
//! survive, escapes are not rewritten; only a line break (which cannot be inside a JSON string)
//! becomes a space so the message fits on one line.

use std::sync::Arc;

use crate::harness::*;

#[tokio::test]
async fn j01_request_bytes_reach_the_server_unchanged() {
    let server = Server::start(generic(), None).await;
    let mut sidecar = sidecar_for(&server, &[]);
    sidecar.handshake().await;
    let line = r#"{"jsonrpc":"2.0", "id":9007199254740993,"method":"tools/call","params":{"name":"echo","arguments":{"text":"caf\u00e9 \ud83d\ude00 \"q\""},"_meta":{"x-vendor":{"deep":[1,2.50,1e3,null]}}},"x-unknown":true}"#;
    sidecar.send(line).await;
    let answer = sidecar.recv_raw().await;
    assert!(answer.contains(r#""id":9007199254740993"#), "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["result"]["content"][0]["text"], "café 😀 \"q\"");
    sidecar.finish().await;
    assert_eq!(server.posts("tools/call")[0].body, line.as_bytes());
}

#[tokio::test]
async fn j11_response_bytes_reach_the_client_unchanged_json_and_sse() {
    const JSON_BODY: &str = r#"{"jsonrpc":"2.0","result":{"z":1,"a":"\u00e9\n","big":123456789012345678901234567890,"unknown":{"x":null}},"id":"a\"b","extra":true}"#;
    const SSE_BODY: &str =
        "event: message\ndata: {\"jsonrpc\":\"2.0\",\ndata:  \"id\":\"sse-1\",\"result\":{\"n\":1.50}}\n\n";
    let hook: Hook = Arc::new(|s: &Seen| match s.json.get("id").and_then(|i| i.as_str()) {
        Some("a\"b") => Action::Respond(respond(200, "application/json", JSON_BODY)),
        Some("sse-1") => Action::Respond(respond(200, "text/event-stream", SSE_BODY)),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut sidecar = sidecar_for(&server, &[]);
    sidecar.handshake().await;
    sidecar.send(r#"{"jsonrpc":"2.0","id":"a\"b","method":"ping"}"#).await;
    assert_eq!(sidecar.recv_raw().await, JSON_BODY);
    sidecar.send(r#"{"jsonrpc":"2.0","id":"sse-1","method":"ping"}"#).await;
    // SSE joins the two data lines with LF; on stdout it is a space.
    assert_eq!(sidecar.recv_raw().await, r#"{"jsonrpc":"2.0",  "id":"sse-1","result":{"n":1.50}}"#);
    sidecar.finish().await;
}

#[tokio::test]
async fn a_raw_line_break_inside_a_string_is_invalid_and_dropped_not_repaired() {
    // Found by the envelope fuzz target: flattening first would turn this invalid JSON into a
    // valid message whose text had silently changed.
    let hook: Hook = Arc::new(|s: &Seen| match s.json.get("id").and_then(|i| i.as_str()) {
        Some("broken") => Action::Respond(respond(
            200,
            "text/event-stream",
            "data: {\"jsonrpc\":\"2.0\",\"id\":\"broken\",\"result\":{\"text\":\"line one\ndata: line two\"}}\n\n",
        )),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send(r#"{"jsonrpc":"2.0","id":"broken","method":"ping"}"#).await;
    let answer = s.recv().await;
    assert_eq!(answer["id"], "broken");
    assert_eq!(answer["error"]["data"]["kind"], "bad_response", "dropped and answered: {answer}");
    s.finish().await;
}
