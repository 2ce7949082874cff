//! The client under test for the MCP conformance suite (`scripts/conformance.sh`).
//!
//! The suite starts `conformance_client [--sidecar PATH] URL` with `MCP_CONFORMANCE_SCENARIO`
//! (and `MCP_CONFORMANCE_PROTOCOL_VERSION`, `MCP_CONFORMANCE_CONTEXT`) in the environment. This
//! program starts `mcp-sidecar URL` with a fresh state directory and itself as `$BROWSER`, then
//! plays a plain MCP client on the sidecar's stdio: the handshake (or, at 2026-07-28, per-request
//! `_meta`), `tools/list`, and a `tools/call` of the first tool. Everything at the HTTP level
//! (headers, sessions, OAuth) is the sidecar's doing, which is what the suite checks.
//!
//! `--client-era handshake` makes it speak only the handshake era on stdio (`initialize`, server
//! requests answered) whatever revision the suite tests, so that at 2026-07-28 the sidecar's era
//! bridge does the rest; `--client-era stateless` speaks per-request `_meta` and plays
//! `input_required` rounds itself. By default the era follows the revision.
//!
//! `conformance_client --browser URL` is the headless browser: it fetches the authorization URL
//! without following redirects and delivers the 302's `Location` to the sidecar's listener.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--browser") {
        browser(args.get(1).cloned().unwrap_or_default()).await;
        return;
    }
    let mut args = args.as_slice();
    let mut sidecar = "mcp-sidecar".to_owned();
    let mut era: Option<String> = None;
    loop {
        match args {
            [flag, value, rest @ ..] if flag == "--sidecar" => (sidecar, args) = (value.clone(), rest),
            [flag, value, rest @ ..] if flag == "--client-era" => (era, args) = (Some(value.clone()), rest),
            _ => break,
        }
    }
    let url = match args {
        [url] => url.clone(),
        _ => {
            eprintln!(
                "usage: conformance_client [--sidecar PATH] [--client-era handshake|stateless] URL | --browser URL"
            );
            std::process::exit(2);
        }
    };
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let version = std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION").unwrap_or_else(|_| "2025-11-25".into());
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or(Value::Null);

    let state = std::env::temp_dir().join(format!("mcp-sidecar-conformance-{}", std::process::id()));
    let me = std::env::current_exe().expect("own path");
    // Issue 14: the extension scenarios' grants, with what their context hands over.
    let ctx = |k: &str| context.get(k).and_then(Value::as_str).map(str::to_owned);
    let auth = match scenario.as_str() {
        s if s.starts_with("auth/client-credentials") => "client-credentials",
        "auth/wif-jwt-bearer" => "workload-identity",
        "auth/enterprise-managed-authorization" => "enterprise",
        _ => "oauth",
    };
    let mut cmd = Command::new(&sidecar);
    cmd.arg(&url)
        .arg("--state-dir")
        .arg(&state)
        .args(["--auth", auth, "--auth-timeout", "20", "--log-level", "debug"])
        .env("BROWSER", format!("{} --browser %s", me.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if scenario == "auth/basic-cimd" {
        cmd.args(["--client-metadata-url", "https://conformance-test.local/client-metadata.json"]);
    }
    if let Some(id) = context.get("client_id").and_then(Value::as_str) {
        cmd.args(["--client-id", id]);
        if let Some(secret) = context.get("client_secret").and_then(Value::as_str) {
            cmd.args(["--client-secret-env", "CONFORMANCE_CLIENT_SECRET"])
                .env("CONFORMANCE_CLIENT_SECRET", secret);
        }
    }
    if let Some(pem) = ctx("private_key_pem") {
        std::fs::create_dir_all(&state).expect("state dir");
        let path = state.join("client-key.pem");
        std::fs::write(&path, pem).expect("key file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        cmd.arg("--client-key-file").arg(&path);
    }
    if let Some(token) = ctx("valid_jwt").or_else(|| ctx("idp_id_token")) {
        cmd.args(["--identity-token-env", "CONFORMANCE_IDENTITY_TOKEN"])
            .env("CONFORMANCE_IDENTITY_TOKEN", token);
    }
    if let (Some(endpoint), Some(id)) = (ctx("idp_token_endpoint"), ctx("idp_client_id")) {
        cmd.args(["--idp-token-endpoint", &endpoint, "--idp-client-id", &id]);
    }
    let mut child = cmd.spawn().expect("start mcp-sidecar");
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let stateless = match era.as_deref() {
        Some("handshake") => false,
        Some(_) => true,
        None => version.as_str() >= "2026-07-28",
    };
    // A handshake-era client asks for the newest handshake revision it knows.
    let version =
        if !stateless && version.as_str() >= "2026-07-28" { "2025-11-25".to_owned() } else { version };
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "mcp-sidecar-conformance", "version": "1"},
    });
    let mut client = Client { stdin, lines, next_id: 0, meta: stateless.then_some(meta) };

    if !stateless {
        let init = client
            .request(
                "initialize",
                json!({"protocolVersion": version, "capabilities": {"elicitation": {}},
                       "clientInfo": {"name": "mcp-sidecar-conformance", "version": "1"}}),
            )
            .await;
        if init.get("result").is_none() {
            drop(client);
            finish(child).await;
            return;
        }
        client.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    }
    let tools = client.request("tools/list", json!({})).await;
    let tools = tools["result"]["tools"].as_array().cloned().unwrap_or_default();
    // The calls the scenario names (http-custom-headers), else one call of every tool.
    let calls: Vec<(Value, Value)> = match context.get("toolCalls").and_then(Value::as_array) {
        Some(calls) => calls.iter().map(|c| (c["name"].clone(), c["arguments"].clone())).collect(),
        None => tools.iter().map(|tool| (tool["name"].clone(), arguments_for(tool, &tools))).collect(),
    };
    for (name, arguments) in calls {
        client.request("tools/call", json!({"name": name, "arguments": arguments})).await;
    }
    drop(client);
    finish(child).await;
}

/// Arguments for a tool: a value of each property's type; `json_schema_echo` gets the other
/// tool's `inputSchema` back, verbatim (json-schema-2020-12-preservation).
fn arguments_for(tool: &Value, tools: &[Value]) -> Value {
    if tool["name"] == "json_schema_echo" {
        let other = tools.iter().find(|t| t["name"] != "json_schema_echo");
        return json!({"schema": other.map(|t| t["inputSchema"].clone()).unwrap_or(json!({}))});
    }
    let mut arguments = serde_json::Map::new();
    if let Some(props) = tool["inputSchema"]["properties"].as_object() {
        for (k, v) in props {
            let value = match v["type"].as_str() {
                Some("number" | "integer") => json!(1),
                Some("boolean") => json!(true),
                Some("object") => json!({}),
                Some("array") => json!([]),
                _ => json!("x"),
            };
            arguments.insert(k.clone(), value);
        }
    }
    Value::Object(arguments)
}

/// What this client answers to a server request (or an `input_required` entry): elicitation
/// accepted with the schema's defaults, anything else an empty result.
fn answer_for(method: &str, params: &Value) -> Value {
    if method != "elicitation/create" {
        return json!({});
    }
    let mut content = serde_json::Map::new();
    if let Some(props) = params["requestedSchema"]["properties"].as_object() {
        for (k, v) in props {
            if let Some(d) = v.get("default") {
                content.insert(k.clone(), d.clone());
            } else if v["type"] == "boolean" {
                content.insert(k.clone(), json!(true));
            }
        }
    }
    json!({"action": "accept", "content": content})
}

/// A line-by-line MCP client on the sidecar's stdio.
struct Client {
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
    /// Per-request `_meta` (2026-07-28), or `None` for the stateful lifecycle.
    meta: Option<Value>,
}

impl Client {
    async fn write(&mut self, msg: &Value) {
        let _ = self.stdin.write_all(format!("{msg}\n").as_bytes()).await;
    }

    /// Sends a request and waits for its answer, answering server requests meanwhile; a
    /// stateless-era client also plays `input_required` rounds (T-31) with a new id each time.
    async fn request(&mut self, method: &str, mut params: Value) -> Value {
        if let Some(meta) = &self.meta {
            params["_meta"] = meta.clone();
        }
        for _round in 0..5 {
            let answer = self.request_once(method, &params).await;
            let result = &answer["result"];
            if self.meta.is_none() || result["resultType"] != "input_required" {
                return answer;
            }
            let mut responses = serde_json::Map::new();
            if let Some(requests) = result["inputRequests"].as_object() {
                for (key, request) in requests {
                    let m = request["method"].as_str().unwrap_or_default();
                    responses.insert(key.clone(), answer_for(m, &request["params"]));
                }
            }
            params["inputResponses"] = Value::Object(responses);
            match result.get("requestState") {
                Some(state) => params["requestState"] = state.clone(),
                None => {
                    params.as_object_mut().map(|p| p.remove("requestState"));
                }
            }
        }
        Value::Null
    }

    async fn request_once(&mut self, method: &str, params: &Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        loop {
            let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(25), self.lines.next_line()).await
            else {
                return Value::Null;
            };
            let msg: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                let verdict = if msg.get("error").is_some() { "error" } else { "ok" };
                eprintln!("conformance_client: {method} -> {verdict}");
                return msg;
            }
            if let (Some(rid), Some(m)) = (msg.get("id"), msg.get("method").and_then(Value::as_str)) {
                let result = answer_for(m, &msg["params"]);
                self.write(&json!({"jsonrpc": "2.0", "id": rid, "result": result})).await;
            }
        }
    }
}

async fn finish(mut child: tokio::process::Child) {
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// The headless browser: GET the authorization URL, deliver its redirect.
async fn browser(url: String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let Ok(r) = http.get(&url).send().await else { return };
    if let Some(location) = r.headers().get("location").and_then(|l| l.to_str().ok()) {
        let _ = http.get(location).send().await;
    }
}
