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

/// Whether process `pid` has exited (gone, or a zombie nobody reaps in a container).
#[cfg(target_os = "linux")]
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

// Linux only: sh orphans the sidecar and /proc tells when it is gone. The Windows watch (the
// parent's process handle) has its own test in `platform`, run under Wine in CI.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_sidecar_exits_when_its_parent_dies_even_with_stdin_open() {
    let server = Server::start(generic(), None).await;
    the_orphan_exits(&server).await;
}

/// Issue 21.1: the parent watch is served while a line is dispatched in line: an `initialize`
/// the server never answers does not keep an orphan alive.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_sidecar_exits_when_its_parent_dies_during_an_initialize_in_line() {
    let never = Arc::new(tokio::sync::Notify::new());
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("initialize") => Action::Hold(never.clone()),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    the_orphan_exits(&server).await;
}

/// Starts the sidecar for `server` under sh, sends `initialize`, kills sh once the server has
/// seen it, and waits (within [`PATIENCE`]) for the orphaned sidecar to exit.
#[cfg(target_os = "linux")]
async fn the_orphan_exits(server: &Server) {
    // sh starts the sidecar in the background on sh's own stdin (fd 3: a background job would
    // get /dev/null), prints its pid, and waits. Killing sh orphans the sidecar; its stdin pipe
    // stays open because this test holds the other end.
    let bin = env!("CARGO_BIN_EXE_mcp-sidecar");
    let mut sh = tokio::process::Command::new("sh");
    sh.args([
        "-c",
        r#"exec 3<&0; "$0" "$@" <&3 >/dev/null & echo $!; wait"#,
        bin,
        &server.url,
        "--api-key-env",
        "TEST_KEY",
    ])
    .env_clear()
    .envs(ENV.iter().copied())
    .env("NO_PROXY", "127.0.0.1")
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut sh = sh.spawn().unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(sh.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await.unwrap();
    let pid: u32 = line.trim().parse().expect("the sidecar's pid");
    // Kill the parent only once the sidecar runs (it reads its parent's id as it starts).
    let init = request(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    );
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{init}\n").as_bytes()).await.unwrap();
    while server.posts("initialize").is_empty() {
        tokio::task::yield_now().await;
    }
    assert!(!exited(pid));
    sh.kill().await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while !exited(pid) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the orphaned sidecar did not exit");
}

#[tokio::test]
async fn t23_a_reply_stream_that_breaks_is_resumed_with_last_event_id_after_retry() {
    let hook: Hook = Arc::new(|s: &Seen| {
        if s.rpc_method() == Some("tools/call") {
            // A priming event, then the connection closes without the answer (T-24).
            return Action::Respond(respond(200, "text/event-stream", "id: ev-1\nretry: 300\ndata:\n\n"));
        }
        if s.method == "GET" {
            if s.header("last-event-id") == Some("ev-1") {
                let answer =
                    r#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"resumed"}]}}"#;
                return Action::Respond(respond(
                    200,
                    "text/event-stream",
                    format!("id: ev-2\ndata: {answer}\n\n"),
                ));
            }
            return Action::Respond(respond(405, "text/plain", ""));
        }
        Action::Pass
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(5, "sum", json!({"a":1,"b":1}))).await;
    let answer = s.recv().await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["result"]["content"][0]["text"], "resumed", "{answer}");
    s.finish().await;
    let post = &server.posts("tools/call")[0];
    let resume =
        server.seen().into_iter().find(|r| r.header("last-event-id") == Some("ev-1")).expect("resumed");
    let gap = resume.at - post.at;
    // Exactly the server's retry (the conformance scenario accepts 450–700 ms for 500 ms).
    assert!(
        gap >= std::time::Duration::from_millis(300) && gap < std::time::Duration::from_millis(800),
        "{gap:?}"
    );
    assert_eq!(server.posts("tools/call").len(), 1, "resumed, not sent again");
}

#[tokio::test]
async fn a_reply_stream_that_breaks_without_event_ids_is_answered_not_replayed() {
    let hook: Hook = Arc::new(|s: &Seen| match s.rpc_method() {
        Some("tools/call") => Action::Respond(respond(200, "text/event-stream", ": nothing useful\n\n")),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.send_json(&call(6, "sum", json!({"a":1,"b":1}))).await;
    let e = s.recv().await;
    assert_eq!(e["id"], 6);
    assert!(e["error"]["message"].as_str().unwrap().contains("may or may not have been processed"), "{e}");
    s.finish().await;
    assert_eq!(server.posts("tools/call").len(), 1);
}

#[tokio::test]
async fn t20_a_get_stream_that_gave_up_is_reopened_once_the_server_answers_again() {
    // GET fails 3 times (the sidecar gives up), then serves a notification.
    let hook = nth_get(|n| match n {
        0..=2 => Action::Respond(respond(500, "text/plain", "warming up")),
        3 => sse_notification("notifications/prompts/list_changed"),
        _ => Action::Respond(respond(405, "text/plain", "")),
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &[]);
    s.handshake().await;
    s.stderr_shows("reopened after the next answer").await;
    s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(s.recv().await);
    }
    assert!(seen.iter().any(|m| m["method"] == "notifications/prompts/list_changed"), "{seen:?}");
    assert!(seen.iter().any(|m| m["id"] == 1));
    s.finish().await;
}

/// Issue 12, Windows: the parent is watched through its process handle. cmd starts the sidecar
/// with `start /b` and exits at once (a launcher that does not wait), so the parent is gone
/// before the sidecar can even open it; the sidecar's stdin stays open (this test holds it),
/// yet it exits, and says why.
#[cfg(windows)]
#[tokio::test]
async fn the_sidecar_exits_when_its_parent_is_gone_on_windows() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(generic(), None).await;
    // A Windows path (under Wine the build's path is a Unix one, which `start` would misread).
    let bin = std::path::absolute(env!("CARGO_BIN_EXE_mcp-sidecar")).unwrap();
    let mut cmd = tokio::process::Command::new("cmd");
    cmd.args(["/c", "start", "\"\"", "/b"])
        .arg(&bin)
        .args([server.url.as_str(), "--api-key-env", "TEST_KEY"])
        .env("TEST_KEY", KEY)
        .env("NO_PROXY", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut cmd = cmd.spawn().unwrap();
    let _stdin = cmd.stdin.take().unwrap();
    let mut stderr = cmd.stderr.take().unwrap();
    // stderr reaches its end when the last holder, the sidecar, has exited.
    let mut said = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_to_string(&mut said))
        .await
        .expect("the sidecar whose parent is gone did not exit")
        .unwrap();
    assert!(said.contains("the client that started mcp-sidecar has exited"), "{said}");
}

/// Issue 24.5: the server's last `initialize` answer and tool list are kept (owner-only, no
/// key inside). At the next start the server is down: the client's `initialize` and
/// `tools/list` are answered from what was kept (said stale in the log), a `tools/call` is never
/// (it waits, then says it was not sent). The server comes back with one more tool: the next
/// call starts the owed session first, and the client is told the tools changed
/// (`notifications/tools/list_changed`); its next listing has the new tool.
#[tokio::test]
async fn issue24_5_kept_lists_answer_at_start_while_the_server_is_down() {
    let server = Server::start(generic(), None).await;
    let (addr, url) = (server.addr, server.url.clone());
    let dir = scratch_dir("issue24-5-kept");
    let state = dir.to_string_lossy().into_owned();
    let args = [url.as_str(), "--api-key-env", "TEST_KEY", "--state-dir", &state, "--max-retries", "1"];
    let mut s = Sidecar::spawn(&args, ENV);
    let init = s.handshake().await;
    s.send_json(&request(1, "tools/list", json!({}))).await;
    let fresh = s.recv().await;
    s.finish().await;
    let kept: Vec<_> = std::fs::read_dir(dir.join("kept")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(!String::from_utf8_lossy(&std::fs::read(&kept[0]).unwrap()).contains(KEY));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o077, 0);
    }
    server.stop();
    drop(server);

    // Down: answered from what was kept.
    let mut s = Sidecar::spawn(&args, ENV);
    let stale = s.handshake().await;
    assert_eq!(stale["result"], init["result"]);
    s.send_json(&request(2, "tools/list", json!({}))).await;
    assert_eq!(s.recv().await["result"], fresh["result"]);
    s.stderr_shows("tools/list answered from what was kept").await;
    s.send_json(&call(3, "echo", json!({"text": "down"}))).await;
    let refused = s.recv().await;
    assert_eq!(refused["error"]["data"]["requestSent"], false, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("was not sent"), "{refused}");

    // Back, with one more tool.
    let mut tools = fresh["result"]["tools"].clone();
    tools.as_array_mut().unwrap().push(json!({"name":"fresh_tool","inputSchema":{"type":"object"}}));
    let hook: Hook = Arc::new(move |seen: &Seen| {
        if seen.rpc_method() != Some("tools/list") {
            return Action::Pass;
        }
        let body = json!({"jsonrpc":"2.0","id":seen.json["id"],"result":{"tools":tools}});
        Action::Respond(respond(200, "application/json", body.to_string()))
    });
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let back = Server::start_on(listener, generic(), Some(hook));
    s.send_json(&call(4, "echo", json!({"text": "back"}))).await;
    let (mut answered, mut told) = (None, false);
    while answered.is_none() || !told {
        let line = s.recv().await;
        match line["method"].as_str() {
            Some("notifications/tools/list_changed") => told = true,
            Some(_) => {}
            None => answered = Some(line),
        }
    }
    assert_eq!(answered.unwrap()["result"]["content"][0]["text"], "back");
    s.send_json(&request(5, "tools/list", json!({}))).await;
    let relisted = s.recv().await;
    assert!(
        relisted["result"]["tools"].as_array().unwrap().iter().any(|t| t["name"] == "fresh_tool"),
        "{relisted}"
    );
    let outcome = s.finish().await;
    outcome.check(&[]);
    let posts: Vec<String> = back.seen().iter().filter_map(|p| p.rpc_method().map(str::to_owned)).collect();
    assert_eq!(
        posts[..2],
        ["initialize", "notifications/initialized"],
        "the owed handshake first: {posts:?}"
    );
    assert_eq!(posts.iter().filter(|m| *m == "tools/call").count(), 1, "{posts:?}");
}

/// Issue 25.6: a load balancer's sticky-session cookie (set on the `initialize` answer, as AWS
/// ALB does) goes back on every request of that session (POSTs, the GET stream, the DELETE),
/// never into the log, even at trace level; a new session (the old one expired: 404) starts
/// without it and keeps the one its own answer sets.
#[tokio::test]
async fn issue25_6_a_sticky_cookie_goes_back_for_its_session_only() {
    let inits = AtomicUsize::new(0);
    let calls = AtomicUsize::new(0);
    let hook: Hook = Arc::new(move |s: &Seen| match s.rpc_method() {
        Some("initialize") => {
            let n = inits.fetch_add(1, Ordering::SeqCst);
            let cookie =
                format!("AWSALB=backend-{n}-0123456789abcdef; Expires=Thu, 14 Jan 2100 10:00:00 GMT; Path=/");
            Action::PassWith(vec![("set-cookie", cookie), ("set-cookie", "gone=x; Max-Age=0".into())])
        }
        Some("tools/call") if calls.fetch_add(1, Ordering::SeqCst) == 1 => Action::Respond(respond(
            404,
            "application/json",
            r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#,
        )),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let mut s = sidecar_for(&server, &["--log-level", "trace"]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    until("the GET stream", || server.seen().iter().any(|r| r.method == axum::http::Method::GET)).await;
    s.send_json(&call(2, "sum", json!({"a": 2, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "4", "the session renewed");
    let outcome = s.finish().await;
    assert!(!outcome.stderr.contains("backend-0-0123456789abcdef"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("backend-1-0123456789abcdef"), "{}", outcome.stderr);
    let seen = server.seen();
    let cookie = |r: &Seen| r.header("cookie").map(str::to_owned);
    let inits: Vec<&Seen> = seen.iter().filter(|r| r.rpc_method() == Some("initialize")).collect();
    assert_eq!(inits.len(), 2);
    assert!(inits.iter().all(|r| cookie(r).is_none()), "a new session starts without the old cookie");
    let first = seen.iter().position(|r| r.rpc_method() == Some("initialize")).unwrap();
    let second = seen.iter().rposition(|r| r.rpc_method() == Some("initialize")).unwrap();
    for (at, r) in seen.iter().enumerate().filter(|(at, _)| *at != first && *at != second) {
        let expected = if at < second {
            "AWSALB=backend-0-0123456789abcdef"
        } else {
            "AWSALB=backend-1-0123456789abcdef"
        };
        assert_eq!(cookie(r).as_deref(), Some(expected), "{} {:?} {}", r.method, r.rpc_method(), at);
    }
    assert!(seen.iter().any(|r| r.method == axum::http::Method::DELETE && cookie(r).is_some()));
}

/// Issue 25.6: `--ping-interval` sends `ping` in an idle session (with its session id), and
/// the session goes on.
#[tokio::test]
async fn issue25_6_an_idle_session_is_pinged() {
    let server = Server::start(generic(), None).await;
    let mut s = sidecar_for(&server, &["--ping-interval", "1"]);
    s.handshake().await;
    until("a ping", || !server.posts("ping").is_empty()).await;
    let ping = &server.posts("ping")[0];
    assert!(ping.header("mcp-session-id").is_some());
    assert!(ping.json["id"].as_str().is_some_and(|id| id.starts_with("mcp-sidecar-")), "{}", ping.json);
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 2}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
    let outcome = s.finish().await;
    assert_eq!(outcome.messages().len(), 2, "the pings' answers stay here: {}", outcome.stdout);
    let (code, _, stderr) = run_command(&[&server.url, "--ping-interval", "0.5"], ENV).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--ping-interval"), "{stderr}");
}
