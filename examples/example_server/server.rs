//! An MCP server to try mcp-sidecar against, offline: the official Rust SDK (rmcp) serving
//! Streamable HTTP, behind a gate that behaves like the vendors in shared/reference.
//!
//! - Investra: `Authorization: Bearer inv_…` on `/api/mcp`; 429 with `Retry-After` (seconds).
//! - AI2Fin: `X-API-Key: mcp_…` (or Bearer) on `/mcp/inspector`; JSON-RPC-shaped 401/403 bodies
//!   (`INVALID_API_KEY`, `INSUFFICIENT_SCOPE`); 429 with `X-RateLimit-Reset` (epoch seconds).
//! - Converra: `Authorization: Bearer sk_live_…|sk_test_…` on `/api/mcp`; `{"error":{"code":
//!   "UNAUTHORIZED",…}}` bodies; `X-RateLimit-Limit/Remaining/Reset` on every answer.
//! - Generic: `/mcp`, Bearer when keys are configured.
//!
//! This file is compiled into the `example_server` example and, with `#[path]`, into the
//! integration tests, which add their own fault-injecting layers on top of [`router`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{Peer, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use tokio_util::sync::CancellationToken;

/// Which vendor the gate imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Generic,
    Investra,
    Ai2fin,
    Converra,
}

impl Vendor {
    /// Parses a vendor name.
    pub fn parse(s: &str) -> Option<Vendor> {
        match s {
            "generic" => Some(Vendor::Generic),
            "investra" => Some(Vendor::Investra),
            "ai2fin" => Some(Vendor::Ai2fin),
            "converra" => Some(Vendor::Converra),
            _ => None,
        }
    }

    /// The MCP endpoint path.
    pub fn path(self) -> &'static str {
        match self {
            Vendor::Generic => "/mcp",
            Vendor::Investra | Vendor::Converra => "/api/mcp",
            Vendor::Ai2fin => "/mcp/inspector",
        }
    }

    /// The variable the vendor's docs keep the key in.
    pub fn key_env(self) -> &'static str {
        match self {
            Vendor::Generic => "EXAMPLE_API_KEY",
            Vendor::Investra => "INVESTRA_API_KEY",
            Vendor::Ai2fin => "AI2FIN_API_KEY",
            Vendor::Converra => "CONVERRA_API_KEY",
        }
    }
}

/// How the example server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The vendor imitated.
    pub vendor: Vendor,
    /// Keys accepted; empty means no authentication (generic only).
    pub keys: Vec<String>,
    /// Keys that may only read (AI2Fin's default `mcp:read` scope): `place_order` answers 403.
    pub read_only_keys: Vec<String>,
    /// Requests per window per key before 429 (the vendors' limits are per minute).
    pub per_minute: Option<u32>,
    /// The rate-limit window in seconds (60 for the vendors; tests use shorter ones).
    pub window_secs: u64,
    /// Send `X-RateLimit-Limit/-Remaining/-Reset` (epoch seconds) with every answer, whatever
    /// the vendor: a fixed-window server like `shared/bench`'s mock with `--window N/S`.
    pub limit_headers: bool,
    /// What the limiter let through per window, and the 429s it sent (for tests).
    pub log: Arc<Mutex<WindowLog>>,
    /// Plain JSON answers, no sessions (else sessions and SSE answers).
    pub json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            vendor: Vendor::Generic,
            keys: Vec::new(),
            read_only_keys: Vec::new(),
            per_minute: None,
            window_secs: 60,
            limit_headers: false,
            log: Arc::default(),
            json: false,
        }
    }
}

/// What the rate limiter did: requests accepted per window (by window number), 429s sent.
#[derive(Debug, Default)]
pub struct WindowLog {
    pub accepted: std::collections::BTreeMap<u64, u32>,
    pub rejected: u32,
}

/// `echo` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    pub text: String,
}

/// `sum` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SumArgs {
    pub a: i64,
    pub b: i64,
}

/// `slow` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SlowArgs {
    /// How long to work, in milliseconds.
    pub ms: u64,
    /// How many progress notifications to send meanwhile (when the request asked for progress).
    #[serde(default)]
    pub steps: u32,
}

/// `big` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BigArgs {
    /// How many bytes of text to return.
    pub bytes: usize,
}

/// `forecast` arguments: `region` is mirrored into the `Mcp-Param-Region` header (2026-07-28).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct ForecastArgs {
    #[schemars(extend("x-mcp-header" = "Region"))]
    pub region: String,
    pub days: i64,
}

/// `bad_header` arguments: an `x-mcp-header` on a `number`, which clients must refuse.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BadHeaderArgs {
    #[schemars(extend("x-mcp-header" = "Level"))]
    pub level: f64,
}

/// `place_order` arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct OrderArgs {
    pub symbol: String,
    pub quantity: i64,
}

/// The demo tools.
#[derive(Debug, Clone)]
pub struct Demo {
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

impl Default for Demo {
    fn default() -> Self {
        Demo { tool_router: Self::tool_router() }
    }
}

#[tool_router]
impl Demo {
    #[tool(description = "Send the text back")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers")]
    fn sum(&self, Parameters(SumArgs { a, b }): Parameters<SumArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Work for a while, reporting progress")]
    async fn slow(
        &self,
        Parameters(args): Parameters<SlowArgs>,
        context: RequestContext<RoleServer>,
    ) -> String {
        let token = context.meta.get_progress_token();
        let steps = args.steps.max(1);
        for i in 1..=steps {
            tokio::time::sleep(Duration::from_millis(args.ms / u64::from(steps))).await;
            if let (Some(token), true) = (token.clone(), args.steps > 0) {
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token, f64::from(i)).with_total(f64::from(steps)),
                    )
                    .await;
            }
        }
        format!("done after {} ms", args.ms)
    }

    #[tool(description = "Return a text of the given size")]
    fn big(&self, Parameters(BigArgs { bytes }): Parameters<BigArgs>) -> String {
        "x".repeat(bytes)
    }

    #[tool(description = "Ask the client for its roots and list them")]
    async fn roots(&self, peer: Peer<RoleServer>) -> String {
        #[allow(deprecated)]
        match peer.list_roots().await {
            Ok(result) => result.roots.iter().map(|r| r.uri.clone()).collect::<Vec<_>>().join(","),
            Err(e) => format!("roots/list failed: {e}"),
        }
    }

    #[tool(description = "Ask the client for a name (elicitation)")]
    async fn ask(&self, peer: Peer<RoleServer>) -> String {
        let params = serde_json::json!({"mode": "form", "message": "Who is there?", "requestedSchema":
            {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}});
        let Ok(params) = serde_json::from_value(params) else {
            return "the elicitation cannot be made".into();
        };
        match peer.create_elicitation(params).await {
            Ok(answer) => {
                let answer = serde_json::to_value(&answer).unwrap_or_default();
                format!(
                    "hello {}",
                    answer.pointer("/content/name").and_then(|n| n.as_str()).unwrap_or("(nobody)")
                )
            }
            Err(e) => format!("elicitation/create failed: {e}"),
        }
    }

    #[tool(description = "A forecast for a region (its region travels in a header too)")]
    fn forecast(&self, Parameters(ForecastArgs { region, days }): Parameters<ForecastArgs>) -> String {
        format!("{days} days of sun in {region}")
    }

    #[tool(description = "A tool whose schema has an invalid x-mcp-header")]
    fn bad_header(&self, Parameters(BadHeaderArgs { level }): Parameters<BadHeaderArgs>) -> String {
        level.to_string()
    }

    #[tool(description = "Place an order (a write: needs a key with write scope)")]
    fn place_order(&self, Parameters(OrderArgs { symbol, quantity }): Parameters<OrderArgs>) -> String {
        format!("ordered {quantity} {symbol}")
    }
}

#[tool_handler]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("mcp-sidecar example server")
    }
}

/// Per-key request counts of the current minute.
#[derive(Default)]
struct Limiter {
    windows: HashMap<String, (u64, u32)>,
}

struct Gate {
    opts: Options,
    limiter: Mutex<Limiter>,
}

/// The MCP service at the vendor's path, behind the vendor's gate.
pub fn router(opts: Options, ct: CancellationToken) -> axum::Router {
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(ct.child_token())
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    if opts.json {
        config = config.with_json_response(true).with_legacy_session_mode(false);
    }
    let service: StreamableHttpService<Demo, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Demo::default()), Default::default(), config);
    let path = opts.vendor.path();
    let gate = Arc::new(Gate { opts, limiter: Mutex::new(Limiter::default()) });
    axum::Router::new()
        .nest_service(path, service)
        .layer(axum::middleware::from_fn_with_state(gate, gate_layer))
}

/// Serves `router` on `listener` until `ct` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router, ct: CancellationToken) {
    let _ = axum::serve(listener, router).with_graceful_shutdown(ct.cancelled_owned()).await;
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The credential a request carries, the vendor's way.
fn presented_key(vendor: Vendor, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match vendor {
        Vendor::Ai2fin => x_api_key.or(bearer),
        _ => bearer,
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn gate_layer(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let vendor = gate.opts.vendor;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
    let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = message.get("id").cloned().unwrap_or(serde_json::Value::Null);

    let key = presented_key(vendor, &parts.headers);
    if !gate.opts.keys.is_empty() && !key.as_ref().is_some_and(|k| gate.opts.keys.contains(k)) {
        return unauthorized(vendor, key.is_none(), id);
    }
    let key = key.unwrap_or_default();

    // AI2Fin: read-only keys may not call write tools.
    if vendor == Vendor::Ai2fin
        && gate.opts.read_only_keys.contains(&key)
        && message.pointer("/params/name").and_then(|n| n.as_str()) == Some("place_order")
    {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"code":403,"message":"Forbidden",
                "data":{"errorType":"INSUFFICIENT_SCOPE","message":"API key does not have permission for this operation"}}}),
        );
    }

    let mut limit_headers = Vec::new();
    if let (Some(limit), true) = (gate.opts.per_minute, parts.method == axum::http::Method::POST) {
        let now = now_secs();
        let size = gate.opts.window_secs.max(1);
        let window = now / size;
        let reset = (window + 1) * size;
        let used = {
            let mut limiter = gate.limiter.lock().unwrap();
            let entry = limiter.windows.entry(key.clone()).or_insert((window, 0));
            if entry.0 != window {
                *entry = (window, 0);
            }
            entry.1 += 1;
            entry.1
        };
        {
            let mut log = gate.opts.log.lock().unwrap();
            if used > limit {
                log.rejected += 1;
            } else {
                *log.accepted.entry(window).or_default() += 1;
            }
        }
        if vendor == Vendor::Converra || gate.opts.limit_headers {
            limit_headers.push(("x-ratelimit-limit", limit.to_string()));
            limit_headers.push(("x-ratelimit-remaining", limit.saturating_sub(used).to_string()));
            limit_headers.push(("x-ratelimit-reset", reset.to_string()));
        }
        if used > limit {
            let mut response = json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"error":"rate_limited","message":"Too many requests"}),
            );
            let h = response.headers_mut();
            match vendor {
                Vendor::Investra | Vendor::Generic => {
                    h.insert("retry-after", HeaderValue::from(reset.saturating_sub(now).max(1)));
                }
                Vendor::Ai2fin => {
                    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
                }
                Vendor::Converra => {}
            }
            for (name, value) in &limit_headers {
                h.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            return response;
        }
    }

    let mut response = next.run(Request::from_parts(parts, Body::from(body))).await;
    for (name, value) in &limit_headers {
        response.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
    }
    response
}

/// The vendor's 401 (bodies from shared/reference; Investra's docs give none, so a plain one).
fn unauthorized(vendor: Vendor, missing: bool, id: serde_json::Value) -> Response {
    let body = match vendor {
        Vendor::Converra => serde_json::json!({"error":{"code":"UNAUTHORIZED",
            "message": if missing { "Authorization header required" } else { "Invalid API key" }}}),
        Vendor::Ai2fin => {
            serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"code":401,"message":"Unauthorized",
            "data":{"errorType":"INVALID_API_KEY","message":"API key not found or has been revoked"}}})
        }
        Vendor::Investra | Vendor::Generic => {
            serde_json::json!({"error":"unauthorized","message":"Invalid API key"})
        }
    };
    let mut response = json(StatusCode::UNAUTHORIZED, body);
    response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    response
}
