//! `cargo bench --bench proxy`: the proxy's speed and memory against plain HTTP, without
//! shared/. A minimal MCP server (axum, JSON answers, one session) runs on 127.0.0.1; the real
//! binary is driven over its stdio. Reports startup (spawn → initialize answered), small-call
//! throughput at C=1 and C=32 next to the same workload sent directly over HTTP, 1 MB responses,
//! and the proxy's peak RSS. Numbers vary with the machine: compare runs, and ratios to direct.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SMALL_N: usize = 2000;
const WIDE_N: usize = 5000;
const BIG_N: usize = 30;
const BIG_BYTES: usize = 1_000_000;
const COLD_STARTS: usize = 10;

/// The server: initialize, notifications (202), tools/call echo {text} or {bytes}.
async fn mcp(headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let method = msg["method"].as_str().unwrap_or("");
    let result = match method {
        "initialize" => {
            json!({"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"bench","version":"1"}})
        }
        "tools/call" => {
            let args = &msg["params"]["arguments"];
            let text = match args.get("bytes").and_then(Value::as_u64) {
                Some(n) => "x".repeat(n as usize),
                None => args["text"].as_str().unwrap_or("").to_owned(),
            };
            json!({"content":[{"type":"text","text":text}]})
        }
        _ => json!({}),
    };
    let body = json!({"jsonrpc":"2.0","id":id,"result":result}).to_string();
    let mut response = ([("content-type", "application/json")], body).into_response();
    if method == "initialize" {
        response.headers_mut().insert("mcp-session-id", "bench-session".parse().unwrap());
    } else {
        assert!(headers.contains_key("mcp-session-id"), "session id missing");
    }
    response
}

struct Proxy {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl Proxy {
    async fn start(url: &str) -> (Proxy, Duration) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
            .args([url, "--log-level", "warn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut p = Proxy {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            line: String::new(),
        };
        p.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#).await;
        p.recv().await;
        let startup = started.elapsed();
        p.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
        (p, startup)
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
    }

    async fn recv(&mut self) -> usize {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).await.unwrap();
        assert!(
            n > 0 && self.line.contains("\"result\""),
            "bad answer: {}",
            &self.line[..self.line.len().min(300)]
        );
        n
    }

    /// N calls with up to C outstanding; returns requests per second.
    async fn run(&mut self, n: usize, c: usize, args: &str) -> f64 {
        let started = Instant::now();
        let mut sent = 0;
        let mut received = 0;
        while received < n {
            while sent < n && sent - received < c {
                sent += 1;
                let line = format!(
                    r#"{{"jsonrpc":"2.0","id":{sent},"method":"tools/call","params":{{"name":"echo","arguments":{args}}}}}"#
                );
                self.send(&line).await;
            }
            self.stdin.flush().await.unwrap();
            self.recv().await;
            received += 1;
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    fn peak_rss_kb(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The same workload as plain HTTP POSTs (the floor a stdio proxy can approach).
async fn direct(url: &str, n: usize, c: usize, args: &str) -> f64 {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..c {
        let (client, url, args, done) = (client.clone(), url.to_owned(), args.to_owned(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let body = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{args}}}}}"#);
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-session-id", "bench-session")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += c;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo test --benches` runs bench targets once as a check: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let scale = if quick { 20 } else { 1 };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/mcp", axum::routing::post(mcp));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut startups = Vec::new();
    for _ in 0..COLD_STARTS.div_ceil(scale).max(2) {
        let (p, startup) = Proxy::start(&url).await;
        startups.push(startup.as_secs_f64() * 1000.0);
        p.stop().await;
    }

    let small = r#"{"text":"hello"}"#;
    let big = format!(r#"{{"bytes":{BIG_BYTES}}}"#);
    let (mut p, _) = Proxy::start(&url).await;
    p.run(100 / scale, 1, small).await; // warm-up
    let c1 = p.run(SMALL_N / scale, 1, small).await;
    let c32 = p.run(WIDE_N / scale, 32, small).await;
    let big_rate = p.run(BIG_N / scale.min(10), 1, &big).await;
    let rss = p.peak_rss_kb();
    p.stop().await;

    let d1 = direct(&url, SMALL_N / scale, 1, small).await;
    let d32 = direct(&url, WIDE_N / scale, 32, small).await;
    let dbig = direct(&url, BIG_N / scale.min(10), 1, &big).await;

    eprintln!("mcp-sidecar benchmark (minimal JSON server on 127.0.0.1; quick={quick})");
    eprintln!("  startup, spawn -> initialize answered, p50   {:8.1} ms", median(startups));
    eprintln!(
        "  C=1  small calls                             {c1:8.0} req/s  ({:.2}x direct {d1:.0})",
        c1 / d1
    );
    eprintln!(
        "  C=32 small calls                             {c32:8.0} req/s  ({:.2}x direct {d32:.0})",
        c32 / d32
    );
    eprintln!(
        "  1 MB responses                               {:8.2} ms/call ({:.2}x direct {:.2})",
        1000.0 / big_rate,
        dbig / big_rate,
        1000.0 / dbig
    );
    eprintln!("  peak RSS of the proxy                        {:8.1} MB", rss as f64 / 1024.0);
}
