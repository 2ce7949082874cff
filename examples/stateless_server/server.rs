//! A server of the stateless era only (2026-07-28), written from its rules: no `initialize`,
//! `server/discover`, the per-request `_meta` and headers enforced (T-13, T-14, J-11),
//! `input_required` for the tools that need the client (T-31), `subscriptions/listen` (T-33).
//! This file is compiled into the `stateless_server` example (the interop matrix, issue 20)
//! and, with `#[path]`, into the integration tests (tests/it/eras.rs), which steer it through
//! its fields.

#![allow(dead_code)] // each user takes what it needs

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// The opaque state the server hands out: escapes and non-ASCII, to be echoed byte for byte.
pub const STATE: &str = r#""{\"step\":1,\"nonce\":\"\u00e9t\u00e9\\/x\"}""#;

/// One POST the stateless server received.
#[derive(Clone, Debug)]
pub struct Post {
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

#[derive(Default)]
pub struct Stateless {
    pub posts: Mutex<Vec<Post>>,
    /// Answer the first request with -32022, listing 2026-07-28 (the client must retry).
    pub reject_first: AtomicBool,
    /// Set when the stream of the `slow` tool's call closes (cancellation, T-25).
    pub slow_closed: Arc<AtomicBool>,
    pub slow_started: AtomicUsize,
    /// Each `subscriptions/listen` stream: its id, its filter, and a way to push to it.
    pub listeners: Mutex<Vec<Listener>>,
    /// End the next `prompts/list` stream without an answer (a broken stream, T-23).
    pub break_next_list: AtomicBool,
    /// Answer the first POST, whatever it is, with a 500 (a server still starting).
    pub fail_first: AtomicBool,
    /// End each `subscriptions/listen` stream right after its acknowledgement.
    pub end_listens: AtomicBool,
    /// The server's task (aborted to free its address).
    pub task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// An event stream that ends without an answer.
pub fn broken_stream() -> Response {
    Response::builder().header("content-type", "text/event-stream").body(Body::from(": bye\n\n")).unwrap()
}

#[derive(Clone)]
pub struct Listener {
    pub id: Value,
    pub filter: Value,
    pub push: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Stateless {
    pub fn listeners(&self) -> Vec<Listener> {
        self.listeners.lock().unwrap().clone()
    }

    /// Sends a notification on listener `i`'s stream, tagged as T-33 says.
    pub fn notify(&self, i: usize, method: &str, mut params: Value) {
        let listeners = self.listeners.lock().unwrap();
        params["_meta"] = json!({"io.modelcontextprotocol/subscriptionId": listeners[i].id});
        let msg = json!({"jsonrpc":"2.0","method":method,"params":params});
        listeners[i].push.as_ref().unwrap().send(msg.to_string()).unwrap();
    }

    /// Ends listener `i`'s stream (no result: an abrupt close).
    pub fn end(&self, i: usize) {
        self.listeners.lock().unwrap()[i].push = None;
    }
}

pub fn rpc(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

pub fn error(id: &Value, status: StatusCode, code: i64, message: &str) -> Response {
    rpc(status, json!({"jsonrpc":"2.0","id":id,"error":{"code":code,"message":message}}))
}

pub fn complete(id: &Value, mut result: Value) -> Response {
    result["resultType"] = json!("complete");
    rpc(StatusCode::OK, json!({"jsonrpc":"2.0","id":id,"result":result}))
}

pub fn input_required(id: &Value, requests: Value, state: Option<&str>) -> Response {
    let mut result = format!(r#"{{"resultType":"input_required","inputRequests":{requests}"#);
    if let Some(state) = state {
        result.push_str(&format!(r#","requestState":{state}"#));
    }
    result.push('}');
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// The raw text of `result.requestState` in a response line, if present.
pub fn result_state(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        result: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "requestState")]
        state: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Msg<'_>>(raw).ok()?.result.state.map(|s| s.get().to_owned())
}

/// The raw text of `params.requestState` in a request body, if present.
pub fn raw_state(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        params: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "requestState")]
        state: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Msg<'_>>(raw).ok()?.params.state.map(|s| s.get().to_owned())
}

pub async fn stateless(State(s): State<Arc<Stateless>>, headers: HeaderMap, raw: Bytes) -> Response {
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let Ok(body) = serde_json::from_str::<Value>(&raw) else {
        return error(&Value::Null, StatusCode::BAD_REQUEST, -32700, "parse error");
    };
    s.posts.lock().unwrap().push(Post { headers: headers.clone(), body: body.clone(), raw: raw.clone() });
    let id = body["id"].clone();
    if s.fail_first.swap(false, Ordering::SeqCst) {
        return error(&id, StatusCode::INTERNAL_SERVER_ERROR, -32603, "starting up");
    }
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let meta = &body["params"]["_meta"];
    // The 2026-07-28 rules (T-13, T-14, J-11), in the order the conformance mock checks them.
    let Some(version) = header("mcp-protocol-version") else {
        return error(&id, StatusCode::BAD_REQUEST, -32020, "missing MCP-Protocol-Version");
    };
    if meta["io.modelcontextprotocol/protocolVersion"].is_null()
        || !meta["io.modelcontextprotocol/clientCapabilities"].is_object()
    {
        return error(&id, StatusCode::BAD_REQUEST, -32602, "missing _meta");
    }
    if meta["io.modelcontextprotocol/protocolVersion"] != version.as_str() {
        return error(&id, StatusCode::BAD_REQUEST, -32020, "header does not match _meta");
    }
    if s.reject_first.swap(false, Ordering::SeqCst) || version != "2026-07-28" {
        let body = json!({"jsonrpc":"2.0","id":id,"error":{"code":-32022,"message":"Unsupported protocol version",
            "data":{"supported":["2026-07-28"],"requested":version}}});
        return rpc(StatusCode::BAD_REQUEST, body);
    }
    if header("mcp-method").as_deref() != Some(method.as_str()) {
        return error(&id, StatusCode::BAD_REQUEST, -32020, "Mcp-Method does not match");
    }
    let name = body["params"]["name"].as_str().map(str::to_owned);
    if method == "tools/call" && header("mcp-name") != name {
        return error(&id, StatusCode::BAD_REQUEST, -32020, "Mcp-Name does not match");
    }
    match method.as_str() {
        "server/discover" => complete(
            &id,
            json!({"supportedVersions":["2026-07-28"],"capabilities":{"tools":{"listChanged":true},
                "resources":{"subscribe":true,"listChanged":true},"logging":{}},
                "serverInfo":{"name":"stateless-only","version":"7"},"instructions":"ask me","ttlMs":0,"cacheScope":"private"}),
        ),
        "subscriptions/listen" => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged",
                "params":{"_meta":{"io.modelcontextprotocol/subscriptionId":id}}});
            s.listeners.lock().unwrap().push(Listener {
                id: id.clone(),
                filter: body["params"]["notifications"].clone(),
                push: Some(tx),
            });
            let first = futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {ack}\n\n")))
            });
            // With `end_listens`: the subscription answered at once, without an error.
            let mut end = s
                .end_listens
                .load(Ordering::SeqCst)
                .then(|| json!({"jsonrpc":"2.0","id":id,"result":{"resultType":"complete"}}).to_string());
            let rest = futures_util::stream::poll_fn(move |cx| match end.as_mut() {
                Some(done) if !done.is_empty() => std::task::Poll::Ready(Some(std::mem::take(done))),
                Some(_) => std::task::Poll::Ready(None),
                None => rx.poll_recv(cx),
            })
            .map(|msg| Ok::<_, std::io::Error>(Bytes::from(format!("data: {msg}\n\n"))));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures_util::StreamExt::chain(first, rest)))
                .unwrap()
        }
        "prompts/list" if s.break_next_list.swap(false, Ordering::SeqCst) => broken_stream(),
        "prompts/list" => complete(&id, json!({"prompts":[]})),
        "resources/list" => complete(&id, json!({"resources":[{"uri":"file:///a.txt","name":"a"}]})),
        "tools/list" => complete(
            &id,
            json!({"tools":[
                {"name":"echo","inputSchema":{"type":"object"}},
                {"name":"ask","inputSchema":{"type":"object"}},
                {"name":"all","inputSchema":{"type":"object"}},
                {"name":"slow","inputSchema":{"type":"object"}},
                {"name":"forever","inputSchema":{"type":"object"}}],"ttlMs":60000,"cacheScope":"private"}),
        ),
        "tools/call" => {
            let responses = &body["params"]["inputResponses"];
            match name.as_deref().unwrap_or_default() {
                // What the server saw of the request, for the test to compare.
                "echo" => complete(
                    &id,
                    json!({"content":[{"type":"text","text":json!({"arguments":body["params"]["arguments"],
                        "logLevel":meta["io.modelcontextprotocol/logLevel"],
                        "clientInfo":meta["io.modelcontextprotocol/clientInfo"],
                        "progressToken":meta["progressToken"]}).to_string()}]}),
                ),
                "ask" if responses.is_null() => input_required(
                    &id,
                    json!({"who":{"method":"elicitation/create","params":{"message":"Your name?",
                        "requestedSchema":{"type":"object","properties":{"name":{"type":"string"}}}}}}),
                    Some(STATE),
                ),
                "ask" => {
                    // The state's value must come back (the bridge even keeps its bytes; a
                    // client that re-serializes it may change its escapes, which JSON allows).
                    let value = |raw: &str| serde_json::from_str::<String>(raw).ok();
                    if raw_state(&raw).as_deref().and_then(value) != value(STATE) {
                        return error(&id, StatusCode::OK, -32602, "requestState was not echoed exactly");
                    }
                    let name = responses["who"]["content"]["name"].clone();
                    complete(
                        &id,
                        json!({"content":[{"type":"text","text":format!("hello {}", name.as_str().unwrap_or("?"))}]}),
                    )
                }
                // Two rounds: three questions at once, then one more, with no state at all.
                "all" if responses.is_null() => input_required(
                    &id,
                    json!({"s":{"method":"sampling/createMessage","params":{"messages":[{"role":"user",
                        "content":{"type":"text","text":"2+2?"}}],"maxTokens":5}},
                        "r":{"method":"roots/list"},
                        "e":{"method":"elicitation/create","params":{"message":"ok?","requestedSchema":{"type":"object","properties":{}}}}}),
                    None,
                ),
                "all" if responses.get("again").is_none() => {
                    if raw_state(&raw).is_some() {
                        return error(&id, StatusCode::OK, -32602, "requestState sent though none was given");
                    }
                    let sampled = responses["s"]["content"]["text"].as_str().unwrap_or("?").to_owned();
                    let root = responses["r"]["roots"][0]["uri"].as_str().unwrap_or("?").to_owned();
                    let state = json!(format!("{sampled}|{root}")).to_string();
                    input_required(
                        &id,
                        json!({"again":{"method":"elicitation/create","params":{"message":"sure?","requestedSchema":{"type":"object","properties":{}}}}}),
                        Some(&state),
                    )
                }
                "all" => {
                    let state: String =
                        serde_json::from_str(&raw_state(&raw).unwrap_or_default()).unwrap_or_default();
                    complete(
                        &id,
                        json!({"content":[{"type":"text","text":format!("{state}|{}", responses["again"]["action"].as_str().unwrap_or("?"))}]}),
                    )
                }
                "forever" => input_required(&id, json!({"q":{"method":"roots/list"}}), None),
                "breaks" => broken_stream(),
                "slow" => {
                    // An event stream that never answers; dropping it (the client closed the
                    // stream) is the cancellation (T-25).
                    s.slow_started.fetch_add(1, Ordering::SeqCst);
                    struct OnDrop(Arc<AtomicBool>);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                    let guard = OnDrop(s.slow_closed.clone());
                    let stream = futures_util::stream::unfold(guard, |guard| async move {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(b": still here\n\n")), guard))
                    });
                    // With a progressToken, the first event says the work has started.
                    let token = &body["params"]["_meta"]["progressToken"];
                    let started = if token.is_null() {
                        Bytes::from_static(b": started\n\n")
                    } else {
                        let note = json!({"jsonrpc":"2.0","method":"notifications/progress",
                            "params":{"progressToken":token,"progress":0,"total":1}});
                        Bytes::from(format!("data: {note}\n\n"))
                    };
                    let first = futures_util::stream::once(async move { Ok(started) });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(futures_util::StreamExt::chain(first, stream)))
                        .unwrap()
                }
                other => error(&id, StatusCode::OK, -32602, &format!("unknown tool {other}")),
            }
        }
        _ => error(&id, StatusCode::NOT_FOUND, -32601, &format!("Method not found: {method}")),
    }
}

/// Starts a stateless-only server; returns its URL and state.
pub async fn stateless_server() -> (String, Arc<Stateless>) {
    stateless_server_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// [`stateless_server`] on a given listener (a server that changes era on the same address).
pub fn stateless_server_on(listener: tokio::net::TcpListener) -> (String, Arc<Stateless>) {
    let state = Arc::new(Stateless::default());
    let app = router_with(state.clone());
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    *state.task.lock().unwrap() = Some(task.abort_handle());
    (url, state)
}

/// The server's routes, with its state.
pub fn router_with(state: Arc<Stateless>) -> axum::Router {
    axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(stateless)
                .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                .delete(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .with_state(state)
}

/// The server's routes, with a fresh state (the example program).
pub fn router() -> axum::Router {
    router_with(Arc::new(Stateless::default()))
}
