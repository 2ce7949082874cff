//! Faults below HTTP: a server that dies mid-request, a reply cut off mid-stream, bodies over the
//! limit. Each request gets exactly one answer, the proxy stays alive, stdout stays JSON-RPC.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A TCP server that reads each request's head and then does `act` with the socket.
async fn raw_server<F, Fut>(act: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = fresh_listener().await;
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let act = Arc::new(act);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let act = act.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                act(sock).await;
            });
        }
    });
    url
}

async fn answer_to_initialize(url: &str, extra: &[&str]) -> (serde_json::Value, Outcome) {
    let mut args = vec![url, "--api-key-env", "TEST_KEY"];
    args.extend_from_slice(extra);
    let mut s = Sidecar::spawn(&args, ENV);
    s.send_json(&request(
        "i",
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let answer = s.recv().await;
    // The proxy is still alive and answering.
    s.send("not json").await;
    assert_eq!(s.recv().await["error"]["code"], -32700);
    (answer, s.finish().await)
}

#[tokio::test]
async fn a_server_that_dies_mid_request_gets_an_answer_and_no_replay() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    let url = raw_server(move |sock| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { drop(sock) }
    })
    .await;
    // The era probe is a request of its own (it would be a second connection): this test is
    // about the client's request.
    let (answer, _) = answer_to_initialize(&url, &["--protocol-era", "legacy"]).await;
    assert_eq!(answer["id"], "i");
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(msg.contains("may have been processed, so it was not retried"), "{answer}");
    assert_eq!(answer["error"]["data"]["requestSent"], true);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "never replayed");
}

#[tokio::test]
async fn a_reply_cut_off_mid_stream_is_answered() {
    let url = raw_server(|mut sock| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let part = "data: {\"jsonrpc\":\"2.0\",\"id\":\"i\",\"res";
        let _ = sock.write_all(format!("{head}{:x}\r\n{part}\r\n", part.len()).as_bytes()).await;
        let _ = sock.flush().await;
        // Abort the connection (RST) mid-event.
        let _ = sock.set_zero_linger();
        drop(sock);
    })
    .await;
    let (answer, _) = answer_to_initialize(&url, &[]).await;
    assert_eq!(answer["id"], "i");
    assert_eq!(answer["error"]["data"]["kind"], "stream_ended", "{answer}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_not_buffered() {
    for content_type in ["application/json", "text/event-stream"] {
        let hook: Hook = Arc::new(move |s: &Seen| match s.rpc_method() {
            Some("tools/call") => {
                let big =
                    format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{}"}}}}"#, "x".repeat(200_000));
                let body = if content_type == "application/json" { big } else { format!("data: {big}\n\n") };
                Action::Respond(respond(200, content_type, body))
            }
            _ => Action::Pass,
        });
        let server = Server::start(generic(), Some(hook)).await;
        let mut s = sidecar_for(&server, &["--max-message-bytes", "65536"]);
        s.handshake().await;
        s.send_json(&call(1, "sum", json!({"a":1,"b":1}))).await;
        let e = s.recv().await;
        assert_eq!(e["id"], 1);
        assert_eq!(e["error"]["data"]["kind"], "message_too_large", "{content_type}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("--max-message-bytes"));
        s.send_json(&call(2, "sum", json!({"a":1,"b":1}))).await;
        assert_eq!(s.recv().await["id"], 2, "still working");
        s.finish().await;
    }
}

/// `HTTP_PROXY` carries requests to remote hosts; loopback never goes through it (issue 10.7:
/// plain http is allowed to loopback because it stays on the machine, so a proxy must not carry
/// it, key included, elsewhere); `NO_PROXY` is honoured for remote hosts.
#[tokio::test]
async fn proxies_carry_remote_hosts_never_loopback_and_no_proxy_is_honoured() {
    let target = Server::start(generic(), None).await;
    // The proxy answers for the remote host itself (the example server would refuse its name).
    let as_remote: Hook = Arc::new(|s: &Seen| match (s.method.as_str(), s.json.get("id")) {
        ("POST", Some(id)) => Action::Respond(respond(
            200,
            "application/json",
            json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-11-25","capabilities":{},
                "serverInfo":{"name":"remote","version":"1"}}})
            .to_string(),
        )),
        ("POST", None) => Action::Respond(respond(202, "text/plain", "")),
        _ => Action::Respond(respond(405, "text/plain", "")),
    });
    let proxy = Server::start(generic(), Some(as_remote)).await;
    let proxy_url = format!("http://{}", proxy.addr);
    // A remote name: only the proxy can reach it (the request line names it, absolute form).
    let remote = format!("http://mcp.example.test:{}/mcp", proxy.addr.port());
    let env = [("TEST_KEY", KEY), ("HTTP_PROXY", proxy_url.as_str()), ("NO_PROXY", "")];
    let mut s = Sidecar::spawn(&[&remote, "--api-key-env", "TEST_KEY", "--allow-http"], &env);
    s.handshake().await;
    s.finish().await;
    let via = proxy.posts("initialize");
    assert_eq!(via.len(), 1, "the remote host was reached through the proxy");
    assert!(via[0].header("host").is_some_and(|h| h.starts_with("mcp.example.test:")));
    // Loopback, by address and by name: straight to the target, the proxy sees nothing.
    for url in [target.url.clone(), target.url.replace("127.0.0.1", "localhost")] {
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
            // (The harness's NO_PROXY would exempt loopback anyway: cleared.)
            let env = [("TEST_KEY", KEY), (var, proxy_url.as_str()), ("NO_PROXY", "")];
            let mut s = Sidecar::spawn(&[&url, "--api-key-env", "TEST_KEY"], &env);
            s.handshake().await;
            s.finish().await;
        }
    }
    assert_eq!(target.posts("initialize").len(), 6, "every loopback run went straight to the target");
    assert_eq!(proxy.posts("initialize").len(), 1, "and none through the proxy");
    // NO_PROXY names the remote host: it is tried directly. In an empty network namespace its
    // name cannot be resolved (through the proxy it would be "could not connect" instead).
    // Linux only: the namespace comes from unshare -n.
    #[cfg(target_os = "linux")]
    {
        let env = [("TEST_KEY", KEY), ("HTTP_PROXY", proxy_url.as_str()), ("NO_PROXY", "example.test")];
        let (s, e) = initialize_unconnected(
            &[&remote, "--api-key-env", "TEST_KEY", "--allow-http", "--max-retries", "0"],
            &env,
        )
        .await;
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("could not resolve the host mcp.example.test"), "{e}");
        s.finish().await;
    }
}

/// Starts the sidecar in a fresh network namespace (no route anywhere: no name resolves and no
/// packet leaves this machine) and sends `initialize`; the sidecar and its answer.
#[cfg(target_os = "linux")]
async fn initialize_unconnected(args: &[&str], env: &[(&str, &str)]) -> (Sidecar, serde_json::Value) {
    let bin = env!("CARGO_BIN_EXE_mcp-sidecar");
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.arg("-n")
        .arg(bin)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut s = Sidecar::spawn_with(cmd, None);
    s.send_json(&request(
        1,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    ))
    .await;
    let answer = s.recv().await;
    (s, answer)
}

// Linux only: an empty network namespace (unshare -n) is what makes every name unresolvable.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn dns_failures_are_explained() {
    let args = ["https://mcp.no-such-host.invalid/mcp", "--api-key-env", "TEST_KEY", "--max-retries", "0"];
    let (s, e) = initialize_unconnected(&args, ENV).await;
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("could not resolve the host mcp.no-such-host.invalid"), "{e}");
    assert_eq!(e["error"]["data"]["requestSent"], false);
    s.finish().await;
}
