//! The proxy used in-process, as a client: what `call`, `tools`, `tool` and `check` speak
//! through.
//!
//! [`Client`] builds the same [`Proxy`] the stdio server uses (same auth, rate-limit waits,
//! retries, session renewal and errors) and feeds it lines directly instead of stdin; the lines
//! it would write to stdout come back here. Nothing is printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::RunError;
use crate::config::Config;
use crate::proxy::Proxy;
use crate::stdio::{Frame, Inbox, Outbox};

/// The protocol revision one-shot commands ask for.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// Issue 23.3: after this long without an answer, a person at a terminal is told what the
/// command is waiting for (a stalled server was minutes of silence).
const SLOW: Duration = Duration::from_secs(2);

/// An MCP client over an in-process proxy.
pub struct Client {
    proxy: Arc<Proxy>,
    _outbox: Outbox,
    rx: Inbox,
    next_id: u64,
    /// Set by [`Client::show_waits`] on a terminal: the line said about a slow answer.
    slow: Option<Arc<Slow>>,
}

/// What the line about a slow answer says, and whether a rate-limit countdown says it already.
struct Slow {
    host: String,
    timeout: Duration,
    counting_down: AtomicBool,
}

/// A request's outcome: the result, or the JSON-RPC error object (the server's or the proxy's).
pub type Answer = Result<Value, Value>;

impl Client {
    /// Sets up the proxy for `config`.
    pub async fn new(config: &Config) -> Result<Client, RunError> {
        let (proxy, outbox, rx) = crate::build(config).await?;
        proxy.record_limits();
        Ok(Client { proxy, _outbox: outbox, rx, next_id: 0, slow: None })
    }

    /// `initialize` then `notifications/initialized`; the initialize result, and how long it took.
    pub async fn initialize(&mut self) -> (Answer, Duration) {
        let started = Instant::now();
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-sidecar", "version": env!("CARGO_PKG_VERSION")},
        });
        let answer = self.request("initialize", params).await;
        if answer.is_ok() {
            self.notify("notifications/initialized", None).await;
        }
        (answer, started.elapsed())
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, params: Option<Value>) {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            msg["params"] = p;
        }
        self.proxy.dispatch(Frame::Line(Bytes::from(msg.to_string()))).await;
    }

    /// Sends a request and waits for its answer. Server requests that arrive meanwhile get a
    /// polite refusal (`ping` is answered).
    pub async fn request(&mut self, method: &str, params: Value) -> Answer {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let slow = self.slow.clone();
        // The dispatch is timed too: the first request's waits for the server (the era probe,
        // the forwarded `initialize`) happen inside it.
        let answer = async {
            self.proxy.dispatch(Frame::Line(Bytes::from(msg.to_string()))).await;
            self.answer(id).await
        };
        let Some(slow) = slow else { return answer.await };
        tokio::pin!(answer);
        tokio::select! {
            done = &mut answer => return done,
            () = tokio::time::sleep(SLOW) => {}
        }
        if !slow.counting_down.load(Ordering::Relaxed) {
            eprintln!(
                "mcp-sidecar: waiting for {} to answer {method} (nothing yet after {}; giving up after {}, which --request-timeout sets)",
                slow.host,
                crate::retry::human(SLOW),
                crate::retry::human(slow.timeout)
            );
        }
        answer.await
    }

    /// The answer to request `id`, answering what the server asks meanwhile.
    async fn answer(&mut self, id: u64) -> Answer {
        while let Some(line) = self.rx.recv().await {
            let Ok(msg) = serde_json::from_slice::<Value>(&line) else { continue };
            let is_answer = msg.get("method").is_none() && msg.get("id") == Some(&json!(id));
            if is_answer {
                return match msg.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                };
            }
            if let (Some(rid), Some(m)) = (msg.get("id"), msg.get("method").and_then(Value::as_str)) {
                let reply = if m == "ping" {
                    json!({"jsonrpc": "2.0", "id": rid, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601,
                        "message": format!("{m} is not supported by mcp-sidecar's one-shot commands")}})
                };
                self.proxy.dispatch(Frame::Line(Bytes::from(reply.to_string()))).await;
            }
        }
        Err(json!({"code": -32000, "message": "the proxy stopped before answering"}))
    }

    /// Shows each rate-limit wait on stderr: a countdown on a terminal, else one plain line. On
    /// a terminal, an answer that takes longer than [`SLOW`] is also said (`config`'s server and
    /// timeout).
    pub fn show_waits(&mut self, terminal: bool, config: &Config) {
        if !terminal {
            self.proxy.observe_waits(Box::new(|wait, why| {
                eprintln!("mcp-sidecar: waiting {} for the rate limit ({why})", crate::retry::human(wait));
            }));
            return;
        }
        let slow = Arc::new(Slow {
            host: crate::net::host_and_port(&config.url),
            timeout: config.request_timeout,
            counting_down: AtomicBool::new(false),
        });
        self.slow = Some(slow.clone());
        self.proxy.observe_waits(Box::new(move |wait, why| {
            slow.counting_down.store(true, Ordering::Relaxed);
            let why = why.to_owned();
            let slow = slow.clone();
            tokio::spawn(async move {
                use std::io::Write;
                let end = crate::retry::deadline_after(wait);
                loop {
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    {
                        let mut err = std::io::stderr().lock();
                        let secs = left.as_secs_f64().ceil();
                        let _ = write!(err, "\r\x1b[2Kwaiting {secs} s for the rate limit ({why})…");
                        let _ = err.flush();
                    }
                    if left.is_zero() {
                        let _ = write!(std::io::stderr(), "\r\x1b[2K");
                        slow.counting_down.store(false, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(left.min(Duration::from_secs(1))).await;
                }
            });
        }));
    }

    /// Whether an OAuth token is in use (`None`: OAuth is not the credential).
    pub fn signed_in(&self) -> Option<bool> {
        self.proxy.signed_in()
    }

    /// Which transport the session uses.
    pub fn transport(&self) -> &'static str {
        self.proxy.transport_name()
    }

    /// The server's era as learned at `initialize`, and whether the era bridge is in use.
    pub fn eras(&self) -> (Option<crate::era::Era>, bool) {
        self.proxy.eras()
    }

    /// Whether the server also takes the stateless era (a `server/discover` probe).
    pub async fn takes_the_stateless_era(&self) -> Option<bool> {
        self.proxy.takes_the_stateless_era().await
    }

    /// The rate-limit headers of the last response that had any.
    pub fn rate_limit_headers(&self) -> Vec<(String, String)> {
        self.proxy.rate_limit_headers()
    }

    /// What the rate limits did during this run, for people (`None`: nothing).
    pub fn rate_limit_summary(&self) -> Option<String> {
        self.proxy.rate_limit_summary()
    }

    /// Ends the session (DELETE) and stops.
    pub async fn close(self) {
        self.proxy.shutdown(true, tokio::time::Instant::now()).await;
    }
}
