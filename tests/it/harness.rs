//! Shared test parts: the example MCP server (rmcp) on 127.0.0.1 behind a layer that records
//! every request and can inject faults, and the real `mcp-sidecar` binary driven over its stdio,
//! either line by line or by a real rmcp client.
//!
//! Every run's stdout and stderr are captured whole; [`Outcome::check`] (called by every
//! `finish`) asserts the invariants that hold for all tests: stdout carries only complete
//! JSON-RPC lines, and no secret appears on stdout or stderr.

#![allow(dead_code)]

#[path = "../../examples/example_server/server.rs"]
pub mod example;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use example::{Options, Vendor};

/// The key every test uses; it must never show up in any output.
pub const KEY: &str = "inv_test_SECRET_d41d8cd98f00b204";
/// Generous bound for things that should happen at once; only guards against hangs.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Seen {
    /// The JSON-RPC method of a POST.
    pub fn rpc_method(&self) -> Option<&str> {
        self.json.get("method").and_then(Value::as_str)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the fault hook does with a request.
pub enum Action {
    /// Hand it to the server.
    Pass,
    /// Answer it with this instead.
    Respond(Response),
    /// Wait until notified, then hand it to the server.
    Hold(Arc<Notify>),
    /// Hand it to the server, and add these headers to its response (a load balancer's
    /// cookie, issue 25.6).
    PassWith(Vec<(&'static str, String)>),
}

/// Decides, per request, whether to inject a fault.
pub type Hook = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    hook: Option<Hook>,
}

/// A listener on a port no other server of this test process had: sidecars without a
/// `--state-dir` share one per process, and what one test's server left there for its origin
/// (a rate-limit deadline, kept lists) must not meet another test's server on the same port.
pub async fn fresh_listener() -> tokio::net::TcpListener {
    static USED: Mutex<Option<std::collections::HashSet<u16>>> = Mutex::new(None);
    let mut held = Vec::new();
    loop {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        if USED.lock().unwrap().get_or_insert_with(Default::default).insert(port) {
            return listener;
        }
        held.push(listener); // kept until one is found, so the OS does not hand it out again
    }
}

/// A running example server.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    ct: CancellationToken,
}

impl Server {
    /// Starts the example server with `opts`, behind the recorder and `hook`.
    pub async fn start(opts: Options, hook: Option<Hook>) -> Server {
        Server::start_on(fresh_listener().await, opts, hook)
    }

    /// Starts it on a given listener (to restart on the same port).
    pub fn start_on(listener: tokio::net::TcpListener, opts: Options, hook: Option<Hook>) -> Server {
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}{}", opts.vendor.path());
        let ct = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder { seen: seen.clone(), hook };
        let router =
            example::router(opts, ct.clone()).layer(axum::middleware::from_fn_with_state(recorder, record));
        tokio::spawn(example::serve(listener, router, ct.clone()));
        Server { url, addr, seen, ct }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The POSTs carrying JSON-RPC `method`.
    pub fn posts(&self, method: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == Method::POST && s.rpc_method() == Some(method))
            .collect()
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.ct.cancel();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.ct.cancel();
    }
}

async fn record(State(rec): State<Recorder>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.clone(),
        at: std::time::Instant::now(),
    };
    rec.seen.lock().unwrap().push(seen.clone());
    let mut added = Vec::new();
    if let Some(hook) = &rec.hook {
        match hook(&seen) {
            Action::Pass => {}
            Action::Respond(r) => return r,
            Action::Hold(n) => n.notified().await,
            Action::PassWith(headers) => added = headers,
        }
    }
    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    for (name, value) in added {
        response.headers_mut().append(name, value.parse().unwrap());
    }
    response
}

/// A response with a status, a content type and a body.
pub fn respond(status: u16, content_type: &str, body: impl Into<String>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(body.into()))
        .unwrap()
}

/// A hook that answers the n-th GET (counting from 0) with `answer(n)`; everything else passes.
pub fn nth_get(answer: impl Fn(usize) -> Action + Send + Sync + 'static) -> Hook {
    let count = std::sync::atomic::AtomicUsize::new(0);
    Arc::new(move |s: &Seen| {
        if s.method != Method::GET {
            return Action::Pass;
        }
        answer(count.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
    })
}

/// An SSE reply carrying one notification with `method`.
pub fn sse_notification(method: &str) -> Action {
    let body = format!("data: {{\"jsonrpc\":\"2.0\",\"method\":\"{method}\"}}\n\n");
    Action::Respond(respond(200, "text/event-stream", body))
}

/// Builds the sidecar command with an isolated environment: no inherited variables (no proxies,
/// no user config), state under a temp dir, and the given variables.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"));
    let state = std::env::temp_dir().join(format!("mcp-sidecar-test-{}", std::process::id()));
    cmd.args(args)
        .env_clear()
        .env("HOME", &state)
        .env("XDG_STATE_HOME", &state)
        // Windows: the state dir is %LOCALAPPDATA%\mcp-sidecar, and without SYSTEMROOT a process
        // cannot start its network stack.
        .env("LOCALAPPDATA", &state)
        .envs(std::env::var_os("SYSTEMROOT").map(|v| ("SYSTEMROOT", v)))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What a finished run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The invariants of every run: only complete JSON-RPC lines on stdout, no secret anywhere.
    pub fn check(&self, secrets: &[&str]) {
        for secret in secrets.iter().chain([&KEY]) {
            assert!(!self.stdout.contains(secret), "secret on stdout:\n{}", self.stdout);
            assert!(!self.stderr.contains(secret), "secret on stderr:\n{}", self.stderr);
        }
        assert!(
            self.stdout.is_empty() || self.stdout.ends_with('\n'),
            "incomplete last line: {:?}",
            self.stdout
        );
        for line in self.stdout.lines() {
            assert_jsonrpc_line(line);
        }
    }

    /// The stdout lines as JSON.
    pub fn messages(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Asserts that `line` is one JSON-RPC message (or a batch of them).
pub fn assert_jsonrpc_line(line: &str) {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON on stdout ({e}): {line}"));
    let members = match &v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    for m in members {
        assert_eq!(m.get("jsonrpc"), Some(&Value::from("2.0")), "not JSON-RPC on stdout: {line}");
        let ok = m.get("method").is_some() || m.get("result").is_some() || m.get("error").is_some();
        assert!(ok, "not a JSON-RPC message on stdout: {line}");
    }
}

/// A sidecar driven line by line.
pub struct Sidecar {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Strings that must never appear in any output.
    secrets: Vec<String>,
    /// Whether stdout is read (a client that stops reading is simulated by setting it false).
    reading: tokio::sync::watch::Sender<bool>,
}

impl Sidecar {
    /// Spawns the sidecar with `args` and `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        Sidecar::spawn_with(command(args, env), None)
    }

    /// Spawns `cmd`; when `tee` is given, stdout bytes are also copied there (for rmcp).
    pub fn spawn_with(mut cmd: Command, tee: Option<tokio::io::DuplexStream>) -> Sidecar {
        let mut child = cmd.spawn().expect("spawn mcp-sidecar");
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let out_log = stdout.clone();
        let (reading, mut may_read) = tokio::sync::watch::channel(true);
        let out_task = tokio::spawn(async move {
            let mut tee = tee;
            let mut buf = vec![0u8; 64 * 1024];
            let mut partial = String::new();
            loop {
                if may_read.wait_for(|r| *r).await.is_err() {
                    break;
                }
                let n = match out.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
                out_log.lock().unwrap().push_str(&chunk);
                if let Some(t) = tee.as_mut()
                    && t.write_all(&buf[..n]).await.is_err()
                {
                    tee = None;
                }
                partial.push_str(&chunk);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let _ = tx.send(line.trim_end().to_owned());
                }
            }
        });
        let err_log = stderr.clone();
        let err_task = tokio::spawn(async move {
            let mut reader = BufReader::new(&mut err);
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                eprint!("  [sidecar] {line}");
                err_log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Sidecar {
            child,
            stdin,
            lines,
            stdout,
            stderr,
            readers: vec![out_task, err_task],
            secrets: Vec::new(),
            reading,
        }
    }

    /// Stops reading stdout (once the read in progress ends), like a client that hangs.
    pub fn pause_stdout(&self) {
        let _ = self.reading.send(false);
    }

    /// Reads stdout again.
    pub fn resume_stdout(&self) {
        let _ = self.reading.send(true);
    }

    /// Adds a string that must never appear in any output.
    pub fn secret(mut self, s: &str) -> Self {
        self.secrets.push(s.to_owned());
        self
    }

    /// Takes stdin (for an rmcp client).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().unwrap()
    }

    /// Writes one line to stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Writes a JSON value as one line.
    pub async fn send_json(&mut self, v: &Value) {
        self.send(&v.to_string()).await;
    }

    /// The next stdout line, parsed.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PATIENCE).await
    }

    /// The next stdout line, parsed, waiting at most `limit` (for answers that wait on purpose).
    pub async fn recv_within(&mut self, limit: Duration) -> Value {
        let line = tokio::time::timeout(limit, self.lines.recv())
            .await
            .expect("no answer from the sidecar in time")
            .expect("sidecar stdout closed");
        assert_jsonrpc_line(&line);
        serde_json::from_str(&line).unwrap()
    }

    /// The next stdout line, raw.
    pub async fn recv_raw(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.lines.recv())
            .await
            .expect("no answer in time")
            .expect("stdout closed")
    }

    /// Sends `initialize` (2025-11-25) and `notifications/initialized`; returns the result.
    pub async fn handshake(&mut self) -> Value {
        self.handshake_within(PATIENCE).await
    }

    /// [`Sidecar::handshake`], waiting at most `limit` for the answer.
    pub async fn handshake_within(&mut self, limit: Duration) -> Value {
        self.send_json(&serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}))
            .await;
        let init = self.recv_within(limit).await;
        assert!(init.get("result").is_some(), "initialize failed: {init}");
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
        init
    }

    /// Whether stderr contains `needle` now.
    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().contains(needle)
    }

    /// Waits until stderr contains `needle` (a log line marks a state the test depends on).
    pub async fn stderr_shows(&self, needle: &str) {
        tokio::time::timeout(PATIENCE, async {
            while !self.stderr.lock().unwrap().contains(needle) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("stderr never showed {needle:?}:\n{}", self.stderr.lock().unwrap()));
    }

    /// Sends a signal to the process. Unix only: Windows has no signals to send to another
    /// process (its console events are covered by `platform`'s code and the Windows smoke test).
    #[cfg(unix)]
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-s", sig, &pid]).status().unwrap();
    }

    /// Closes stdin, waits for the exit, checks the invariants, returns what was left.
    pub async fn finish(mut self) -> Outcome {
        drop(self.stdin.take());
        self.wait().await
    }

    /// [`Sidecar::finish`], and how long the exit took after stdin's end.
    pub async fn finish_timed(self) -> (Outcome, Duration) {
        let started = std::time::Instant::now();
        let outcome = self.finish().await;
        (outcome, started.elapsed())
    }

    /// The exit status if the process exits within `limit` (stdout left as it is).
    pub async fn exit_status_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Waits for the exit without closing stdin.
    pub async fn wait(mut self) -> Outcome {
        self.resume_stdout();
        let status =
            tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("sidecar did not exit").unwrap();
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(PATIENCE, r).await;
        }
        let outcome = Outcome {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        };
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        outcome.check(&secrets);
        outcome
    }
}

/// Waits until `cond` holds (a state another task or process reaches), at most [`PATIENCE`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// The usual arguments: the server's URL and the key variable.
pub fn args_for(server: &Server) -> Vec<String> {
    vec![server.url.clone(), "--api-key-env".into(), "TEST_KEY".into()]
}

/// A sidecar for `server` with [`KEY`] in `TEST_KEY` and `extra` arguments.
pub fn sidecar_for(server: &Server, extra: &[&str]) -> Sidecar {
    sidecar_with_key(server, extra, KEY)
}

/// A sidecar for `server` with `key` in `TEST_KEY` (also checked to never appear in output).
pub fn sidecar_with_key(server: &Server, extra: &[&str], key: &str) -> Sidecar {
    let mut args = args_for(server);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sidecar::spawn(&args, &[("TEST_KEY", key)]).secret(key)
}

/// The usual environment: the key in `TEST_KEY`.
pub const ENV: &[(&str, &str)] = &[("TEST_KEY", KEY)];

/// Example-server options that accept [`KEY`] as a Bearer token on `/mcp`.
pub fn generic() -> Options {
    Options { keys: vec![KEY.to_owned()], ..Options::default() }
}

/// A request line.
pub fn request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    serde_json::json!({"jsonrpc":"2.0","id":id.into(),"method":method,"params":params})
}

/// An `initialize` line (2025-11-25) with `id`.
pub fn initialize(id: impl Into<Value>) -> Value {
    request(
        id,
        "initialize",
        serde_json::json!({"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    )
}

/// A `tools/call` line.
pub fn call(id: impl Into<Value>, tool: &str, args: Value) -> Value {
    request(id, "tools/call", serde_json::json!({"name":tool,"arguments":args}))
}

/// Spawns the sidecar and connects a real rmcp client with `handler` to it.
pub async fn rmcp_client<H: rmcp::ClientHandler>(
    args: &[&str],
    env: &[(&str, &str)],
    handler: H,
    lifecycle: Option<rmcp::ClientLifecycleMode>,
) -> (Result<rmcp::service::RunningService<rmcp::RoleClient, H>, rmcp::service::ClientInitializeError>, Sidecar)
{
    use rmcp::ClientServiceExt;
    use rmcp::ServiceExt;
    let (tee, rmcp_read) = tokio::io::duplex(1024 * 1024);
    let mut sidecar = Sidecar::spawn_with(command(args, env), Some(tee));
    let stdin = sidecar.take_stdin();
    let client = match lifecycle {
        None => handler.serve((rmcp_read, stdin)).await,
        Some(mode) => handler.serve_with_lifecycle((rmcp_read, stdin), mode).await,
    };
    (client, sidecar)
}

/// A fresh, empty directory for one test (state dirs, config files).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mcp-sidecar-scratch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `mcp-sidecar ARGS` to completion with `env` and stdin closed; (exit code, stdout, stderr).
pub async fn run_command(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = command(args, env);
    cmd.stdin(Stdio::null());
    let out = tokio::time::timeout(PATIENCE, cmd.output()).await.expect("command hung").unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains(KEY), "the key leaked:\n{text}");
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// An SSE response whose events the test pushes while it is open (a GET stream, or a reply
/// stream, under the test's control). [`PushStream::response`] hands out the response once.
pub struct PushStream {
    tx: mpsc::UnboundedSender<Bytes>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>,
}

impl PushStream {
    pub fn new() -> Arc<PushStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(PushStream { tx, rx: Mutex::new(Some(rx)) })
    }

    /// Sends one `message` event with `data`.
    pub fn push(&self, data: &str) {
        let _ = self.tx.send(Bytes::from(format!("data: {data}\n\n")));
    }

    /// The streaming response (the first call), or a 405 (no second stream).
    pub fn response(&self) -> Response {
        let Some(rx) = self.rx.lock().unwrap().take() else {
            return respond(405, "text/plain", "no second stream");
        };
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
        });
        Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap()
    }
}

/// A real `redis-server` on a free 127.0.0.1 port (nothing saved to disk), stopped on drop.
#[cfg_attr(not(unix), allow(dead_code))] // its tests are Unix-only (see ratelimit.rs)
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// TLS only: the certificate, key and CA files (then `url` is rediss://).
    tls: Option<[String; 3]>,
    /// `requirepass`, when set.
    password: Option<String>,
}

#[cfg_attr(not(unix), allow(dead_code))]
impl RedisServer {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { port, child: None, tls: None, password: None };
        server.restart().await;
        server
    }

    /// One that asks for `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { port, child: None, tls: None, password: Some(password.into()) };
        server.restart().await;
        server
    }

    /// One that speaks only TLS, with the certificate and key in `cert`/`key` (PEM files) and
    /// clients not asked for certificates.
    pub async fn start_tls(cert: &str, key: &str, ca: &str) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: Some([cert.into(), key.into(), ca.into()]),
            password: None,
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port.
    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<&str> = vec!["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        if let Some(password) = &self.password {
            args.extend(["--requirepass", password]);
        }
        match &self.tls {
            None => args.extend(["--port", &port]),
            Some([cert, key, ca]) => args.extend([
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ]),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        self.child = Some(child);
        tokio::time::timeout(PATIENCE, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("redis-server did not start");
    }

    /// Kills it (a store that went down).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
