//! The stdio side: framing, invalid input, shutdown and exit codes (S-01…S-06, J-05).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Notify;

use crate::harness::*;

#[tokio::test]
async fn missing_key_exits_2_with_one_line_before_reading_stdin() {
    // stdin stays open and silent: the error must come before anything is read.
    let outcome = Sidecar::spawn(&["--preset", "investra"], &[]).wait().await;
    assert_eq!(outcome.status.code(), Some(2));
    assert!(outcome.stdout.is_empty());
    assert_eq!(outcome.stderr.lines().count(), 1, "{}", outcome.stderr);
    assert!(outcome.stderr.contains("INVESTRA_API_KEY is not set"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("--api-key-env"));
}

#[tokio::test]
async fn help_shows_examples_and_exit_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for needle in ["Examples:", "--preset", "--api-key-env", "MCP_SIDECAR_URL", "Exit status"] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[tokio::test]
async fn j05_invalid_input_gets_an_error_and_the_proxy_keeps_running() {
    let server = Server::start(generic(), None).await;
    let mut s = sidecar_for(&server, &[]);
    s.send("this is not json").await;
    let e = s.recv().await;
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!(null), json!(-32700)));
    s.send("[]").await;
    assert_eq!(s.recv().await["error"]["code"], -32600);
    s.send("42").await;
    assert_eq!(s.recv().await["error"]["code"], -32600);
    s.send(r#"{"id":"no-version","method":"ping"}"#).await;
    let e = s.recv().await;
    assert_eq!((e["id"].clone(), e["error"]["code"].clone()), (json!("no-version"), json!(-32600)));
    s.send(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).await;
    assert_eq!(s.recv().await["error"]["code"], -32600);
    // CRLF framing is tolerated (S-02).
    s.send("{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"t\",\"version\":\"1\"}}}\r").await;
    assert!(s.recv().await["result"].is_object());
    s.finish().await;
}

#[tokio::test]
async fn s02_over_long_lines_are_answered_with_their_id_and_skipped() {
    let server = Server::start(generic(), None).await;
    let mut s = sidecar_for(&server, &["--max-message-bytes", "4096"]);
    s.handshake().await;
    let big = "x".repeat(100_000);
    s.send_json(&call("too-big", "echo", json!({"text": big}))).await;
    let e = s.recv().await;
    assert_eq!(e["id"], "too-big");
    assert_eq!(e["error"]["data"]["kind"], "message_too_large");
    assert!(e["error"]["message"].as_str().unwrap().contains("--max-message-bytes"));
    s.send_json(&call("small", "echo", json!({"text": "fits"}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "fits");
    s.finish().await;
}

#[tokio::test]
async fn s06_stdin_eof_lets_requests_in_flight_finish_then_deletes_the_session() {
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let hook: Hook = Arc::new(move |s: &Seen| match s.json.pointer("/params/arguments/text") {
        Some(t) if t == "held" => Action::Hold(held.clone()),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(9, "echo", json!({"text":"held"}))).await;
    // Wait until the server has the request, then close stdin and let the server answer.
    while server.posts("tools/call").is_empty() {
        tokio::task::yield_now().await;
    }
    let release2 = release.clone();
    let outcome = {
        let finish = tokio::spawn(s.finish());
        release2.notify_one();
        finish.await.unwrap()
    };
    assert!(outcome.status.success());
    let answer = &outcome.messages()[1];
    assert_eq!(answer["id"], 9);
    assert_eq!(answer["result"]["content"][0]["text"], "held", "nothing is lost on shutdown");
    assert!(server.seen().iter().any(|s| s.method == "DELETE"));
}

// Unix only: it sends a signal, which Windows cannot send to another process (console events
// reach only processes sharing a console); Windows shutdown is in the Windows smoke test.
#[cfg(unix)]
#[tokio::test]
async fn s06_requests_still_running_at_shutdown_get_an_error_answer() {
    let never = Arc::new(Notify::new());
    let held = never.clone();
    let hook: Hook = Arc::new(move |s: &Seen| match s.rpc_method() {
        Some("tools/call") => Action::Hold(held.clone()),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call("stuck", "echo", json!({"text":"x"}))).await;
    while server.posts("tools/call").is_empty() {
        tokio::task::yield_now().await;
    }
    s.signal("TERM");
    let outcome = s.wait().await;
    assert!(outcome.status.success(), "SIGTERM is a clean exit: {outcome:?}");
    let answer = &outcome.messages()[1];
    assert_eq!(answer["id"], "stuck");
    assert_eq!(answer["error"]["code"], -32005);
    assert_eq!(answer["error"]["data"]["kind"], "shutting_down");
    never.notify_waiters();
}

#[tokio::test]
async fn closed_stdout_ends_the_process_cleanly() {
    let server = Server::start(generic(), None).await;
    let args = args_for(&server);
    let mut cmd = command(&args.iter().map(String::as_str).collect::<Vec<_>>(), ENV);
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take()); // the client stopped reading
    let mut stdin = child.stdin.take().unwrap();
    use tokio::io::AsyncWriteExt;
    let line = format!("{}\n", request(1, "ping", json!({})));
    for _ in 0..3 {
        let _ = stdin.write_all(line.as_bytes()).await;
    }
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "{status:?}");
}

// Unix only: it sends a signal, which Windows cannot send to another process (console events
// reach only processes sharing a console); Windows shutdown is in the Windows smoke test.
#[cfg(unix)]
#[tokio::test]
async fn a_signal_ends_the_run_even_while_initialize_hangs() {
    let never = Arc::new(Notify::new());
    let held = never.clone();
    // Only `initialize` hangs (the era probe before it is answered).
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("initialize") => Action::Hold(held.clone()),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.send_json(&initialize(0)).await;
    while server.posts("initialize").is_empty() {
        tokio::task::yield_now().await;
    }
    s.signal("INT");
    let outcome = s.wait().await;
    assert!(outcome.status.success());
    let answer = &outcome.messages()[0];
    assert_eq!(answer["id"], 0);
    assert_eq!(answer["error"]["data"]["kind"], "shutting_down");
    never.notify_waiters();
}
