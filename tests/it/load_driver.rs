//! The load test's moving parts, shared by `tests/it/load.rs` (scaled down, run by CI) and
//! `benches/load.rs` (100,000 messages): a minimal MCP server on 127.0.0.1 that answers
//! `tools/call echo`, refuses 1 % of calls with a 429 and expires the session on another 1 %
//! (every request with the old session id then gets 404 until the proxy starts a new one); and
//! a driver that keeps C requests outstanding on the sidecar's stdio and counts every answer.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: usize,
    pub answered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub errors: usize,
    pub limited: u64,
    pub expired: u64,
    pub sessions: u64,
    pub rss_start_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_end_kb: u64,
    pub elapsed: Duration,
}

#[derive(Default)]
struct ServerState {
    calls: AtomicU64,
    session: AtomicU64,
    limited: AtomicU64,
    expired: AtomicU64,
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let current = state.session.load(Ordering::SeqCst);
    let method = msg["method"].as_str().unwrap_or("");
    if method == "initialize" {
        let session = state.session.fetch_add(1, Ordering::SeqCst) + 1;
        let body = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"load","version":"1"}}});
        return (
            [("content-type", "application/json"), ("mcp-session-id", &format!("s-{session}"))],
            body.to_string(),
        )
            .into_response();
    }
    let sent = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent != format!("s-{current}") {
        return (StatusCode::NOT_FOUND, "session not found").into_response();
    }
    if method == "tools/call" {
        let k = state.calls.fetch_add(1, Ordering::SeqCst);
        if k % 100 == 37 {
            state.limited.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::TOO_MANY_REQUESTS, [("x-ratelimit-reset-after", "0.01")], "slow down")
                .into_response();
        }
        if k % 100 == 73 {
            // Forget the session: this and every later request on it get 404 (T-12).
            state
                .session
                .compare_exchange(current, current + 1_000_000, Ordering::SeqCst, Ordering::SeqCst)
                .ok();
            state.expired.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::NOT_FOUND, "session expired").into_response();
        }
    }
    let text = msg.pointer("/params/arguments/text").cloned().unwrap_or(Value::Null);
    let body = json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":text}]}});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// VmRSS or VmHWM of `pid`, in kB; 0 (not measured) where there is no /proc: memory targets are
/// measured on Linux.
fn proc_kb(pid: u32, field: &str) -> u64 {
    if !cfg!(target_os = "linux") {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends `n` calls through the sidecar at `bin` with up to `c` outstanding.
pub async fn run(bin: &str, n: usize, c: usize) -> LoadReport {
    let state = Arc::new(ServerState::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/mcp", axum::routing::post(handle)).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut child = tokio::process::Command::new(bin)
        .args([url.as_str(), "--max-retries", "10", "--log-level", "error"])
        .env_clear()
        .env("NO_PROXY", "127.0.0.1")
        .env("XDG_STATE_HOME", std::env::temp_dir().join(format!("mcp-sidecar-load-{}", std::process::id())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"init\",\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{},\"clientInfo\":{\"name\":\"load\",\"version\":\"1\"}}}\n")
        .await
        .unwrap();
    lines.next_line().await.unwrap().expect("initialize answered");
    stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").await.unwrap();
    let rss_start_kb = proc_kb(pid, "VmRSS:");

    let permits = Arc::new(tokio::sync::Semaphore::new(c));
    let writer_permits = permits.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(stdin);
        for i in 0..n {
            let permit = writer_permits.acquire().await.unwrap();
            permit.forget();
            let line = format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"m{i}\"}}}}}}\n"
            );
            out.write_all(line.as_bytes()).await.unwrap();
            if writer_permits.available_permits() == 0 || i + 1 == n {
                out.flush().await.unwrap();
            }
        }
        out
    });
    let mut counts: HashMap<u64, u32> = HashMap::with_capacity(n);
    let mut report = LoadReport { sent: n, rss_start_kb, ..LoadReport::default() };
    while report.answered < n {
        let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
        else {
            break;
        };
        let v: Value = serde_json::from_str(&line).expect("stdout carries JSON-RPC only");
        let Some(id) = v["id"].as_u64() else { continue };
        *counts.entry(id).or_default() += 1;
        if v.get("error").is_some() {
            if report.errors < 3 {
                eprintln!("load: error answer: {line}");
            }
            report.errors += 1;
        }
        report.answered += 1;
        permits.add_permits(1);
    }
    report.elapsed = started.elapsed();
    report.rss_peak_kb = proc_kb(pid, "VmHWM:");
    report.rss_end_kb = proc_kb(pid, "VmRSS:");
    report.lost = (0..n as u64).filter(|i| !counts.contains_key(i)).count();
    report.duplicated = counts.values().filter(|c| **c > 1).count();
    report.limited = state.limited.load(Ordering::SeqCst);
    report.expired = state.expired.load(Ordering::SeqCst);
    report.sessions = state.session.load(Ordering::SeqCst) % 1_000_000;
    drop(writer.await.unwrap());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    report
}
