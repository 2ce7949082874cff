//! The era bridge (issue 13): a handshake-era stdio client (a real rmcp client in
//! `Initialize` mode, or raw lines) and a server that speaks only the stateless era (the axum
//! server of `examples/stateless_server`, written from the 2026-07-28 rules: no `initialize`,
//! `server/discover`, per-request `_meta` and headers enforced, `input_required` for tools that
//! need the client), and the same-era pairings, which must stay byte-for-byte forwarding.

#![allow(deprecated)] // roots are deprecated by SEP-2577, and still asked for

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, Implementation, ListRootsResult, Root,
};
use rmcp::service::RequestContext;
use rmcp::{ClientHandler, ErrorData, RoleClient};
use serde_json::{Value, json};

use crate::harness::*;

#[path = "../../examples/stateless_server/server.rs"]
mod stateless_srv;
use stateless_srv::*;

/// A handshake-era client that answers everything the server may ask.
#[derive(Clone, Default)]
struct Helpful;

impl ClientHandler for Helpful {
    fn get_info(&self) -> ClientConfig {
        let caps =
            ClientCapabilities::builder().enable_roots().enable_sampling().enable_elicitation().build();
        ClientConfig::new(caps, Implementation::new("helpful-client", "3.1"))
    }

    async fn list_roots(&self, _: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![Root::new("file:///work/project")]))
    }

    async fn create_message(
        &self,
        _: CreateMessageRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        Ok(serde_json::from_value(
            json!({"model":"m","role":"assistant","content":{"type":"text","text":"4"}}),
        )
        .unwrap())
    }

    async fn create_elicitation(
        &self,
        _: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Ok(serde_json::from_value(json!({"action":"accept","content":{"name":"Ada"}})).unwrap())
    }
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(result).unwrap()["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

fn posts(server: &Stateless) -> Vec<Post> {
    server.posts.lock().unwrap().clone()
}

#[tokio::test]
async fn t62_a_handshake_client_reaches_a_stateless_only_server_through_the_bridge() {
    let (url, server) = stateless_server().await;
    let dir = scratch_dir("bridge-rmcp");
    let state = dir.to_string_lossy().into_owned();
    let args = [url.as_str(), "--auth", "none", "--state-dir", &state];
    let (client, sidecar) =
        rmcp_client(&args, &[], Helpful, Some(rmcp::ClientLifecycleMode::Initialize)).await;
    let client = client.expect("initialize answered by the bridge");
    // The local initialize answer is the server's discovery result.
    let info = client.peer_info().expect("server info").clone();
    let info = serde_json::to_value(&info).unwrap();
    assert_eq!(info["serverInfo"]["name"], "stateless-only");
    assert_eq!(info["instructions"], "ask me");
    assert_eq!(info["protocolVersion"], "2025-11-25");
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 5);
    // One round of elicitation, the state echoed byte for byte (the server checks it).
    let asked = client.call_tool(CallToolRequestParams::new("ask")).await.unwrap();
    assert_eq!(text_of(&asked), "hello Ada");
    // Two rounds: sampling, roots and elicitation at once, then elicitation again.
    let all = client.call_tool(CallToolRequestParams::new("all")).await.unwrap();
    assert_eq!(text_of(&all), "4|file:///work/project|accept");
    client.cancel().await.unwrap();
    let out = sidecar.wait().await;
    assert!(out.status.success());
    assert!(
        out.stderr.contains("protocol bridge: 3 requests bridged to the stateless server, 3 input rounds"),
        "{}",
        out.stderr
    );

    let mut posts = posts(&server);
    // The client's own initialize went first (issue 20: its era first), and was refused the
    // stateless way; then the probe, and from then on no initialize, GET or session, and every
    // POST carries the headers and `_meta`.
    let first = posts.remove(0);
    assert_eq!(first.body["method"], "initialize", "{}", first.raw);
    assert_eq!(posts[0].body["method"], "server/discover");
    assert!(
        posts.iter().all(|p| p.body["method"] != "initialize" && p.headers.get("mcp-session-id").is_none())
    );
    for p in &posts {
        assert_eq!(p.headers["mcp-protocol-version"], "2026-07-28");
        let meta = &p.body["params"]["_meta"];
        assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], "helpful-client", "{}", p.raw);
        assert!(meta["io.modelcontextprotocol/clientCapabilities"]["sampling"].is_object(), "{}", p.raw);
    }
    // The bridge echoes the state byte for byte, escapes and all.
    let retry = posts
        .iter()
        .find(|p| p.body["params"]["name"] == "ask" && !p.body["params"]["inputResponses"].is_null());
    assert_eq!(raw_state(&retry.unwrap().raw).as_deref(), Some(STATE));
    // Each retry has an id of its own (T-31).
    let ids: std::collections::HashSet<String> = posts.iter().map(|p| p.body["id"].to_string()).collect();
    assert_eq!(ids.len(), posts.len(), "ids unique");
    // The refusal is remembered: a second run goes to the discovery it needs anyway, and sends
    // no initialize the server would refuse again.
    assert!(dir.join("eras").read_dir().unwrap().count() == 1);
    let before = posts.len() + 1;
    let mut s = Sidecar::spawn(&args, &[]);
    assert_eq!(s.handshake().await["result"]["serverInfo"]["name"], "stateless-only");
    s.finish().await;
    let again = self::posts(&server);
    let methods: Vec<&Value> = again[before..].iter().map(|p| &p.body["method"]).collect();
    assert_eq!(methods[0], "server/discover");
    assert!(!methods.contains(&&json!("initialize")), "{methods:?}");
}

#[tokio::test]
async fn t31_one_answer_per_id_under_the_clients_own_ids_with_meta_kept() {
    let (url, server) = stateless_server().await;
    server.reject_first.store(true, Ordering::SeqCst); // -32022 on the probe: retried once
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--protocol-era", "modern"], &[]);
    s.send_json(&request(
        "init-1",
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{"roots":{}},"clientInfo":{"name":"raw","version":"0"}}),
    ))
    .await;
    let init = s.recv().await;
    assert_eq!(init["id"], "init-1");
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "the revision the client asked for");
    s.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
    // ping and logging/setLevel are answered here; the level travels in `_meta`.
    s.send_json(&request(7, "ping", json!({}))).await;
    assert_eq!(s.recv().await, json!({"jsonrpc":"2.0","id":7,"result":{}}));
    s.send_json(&request("lvl", "logging/setLevel", json!({"level":"debug"}))).await;
    assert_eq!(s.recv().await["id"], "lvl");
    // The client's own `_meta` (a progress token) and its arguments arrive unchanged.
    s.send(r#"{"jsonrpc":"2.0","id":{"x":1},"method":"tools/list"}"#).await; // invalid id: refused here
    assert_eq!(s.recv().await["error"]["code"], -32600);
    s.send(r#"{"jsonrpc":"2.0","id":"c","method":"tools/call","params":{"name":"echo","arguments":{"big":123456789012345678901234567890,"s":"\u00e9"},"_meta":{"progressToken":"p1"}}}"#).await;
    let echo = s.recv().await;
    assert_eq!(echo["id"], "c");
    let seen: Value = serde_json::from_str(echo["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["logLevel"], "debug");
    assert_eq!(seen["progressToken"], "p1");
    assert_eq!(seen["clientInfo"]["name"], "raw");
    let call = posts(&server).into_iter().find(|p| p.body["params"]["name"] == "echo").unwrap();
    assert!(
        call.raw.contains(r#""arguments":{"big":123456789012345678901234567890,"s":"\u00e9"}"#),
        "{}",
        call.raw
    );
    // A server that asks for ever is given up after a bound, with one answer.
    s.send_json(&call_tool("f", "forever")).await;
    loop {
        let msg = s.recv().await;
        if msg["method"] == "roots/list" {
            s.send_json(&json!({"jsonrpc":"2.0","id":msg["id"],"result":{"roots":[]}})).await;
            continue;
        }
        assert_eq!(msg["id"], "f");
        assert!(msg["error"]["message"].as_str().unwrap().contains("more than 10 times"), "{msg}");
        break;
    }
    // A refused question fails the request that needed it, with one answer.
    s.send_json(&call_tool("a", "ask")).await;
    let question = s.recv().await;
    assert_eq!(question["method"], "elicitation/create");
    s.send_json(
        &json!({"jsonrpc":"2.0","id":question["id"],"error":{"code":-32601,"message":"no elicitation here"}}),
    )
    .await;
    let refused = s.recv().await;
    assert_eq!(refused["id"], "a");
    assert_eq!(refused["error"]["data"]["kind"], "input_refused");
    assert!(refused["error"]["message"].as_str().unwrap().contains("no elicitation here"));
    let out = s.finish().await;
    assert!(out.status.success());
    // The probe was retried with the version the server listed, then everything used it.
    let posts = posts(&server);
    assert_eq!(posts[0].body["method"], "server/discover");
    assert_eq!(posts[1].body["method"], "server/discover");
    assert!(posts.iter().all(|p| p.body["method"] != "ping" && p.body["method"] != "logging/setLevel"));
}

fn call_tool(id: &str, name: &str) -> Value {
    request(id, "tools/call", json!({"name": name}))
}

#[tokio::test]
async fn t25_cancelling_a_bridged_request_closes_its_stream() {
    let (url, server) = stateless_server().await;
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    s.send_json(&call_tool("slow-1", "slow")).await;
    while server.slow_started.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    s.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow-1"}}"#).await;
    tokio::time::timeout(PATIENCE, async {
        while !server.slow_closed.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stream was closed");
    // Still serving, and nothing was written for the cancelled request.
    s.send_json(&request(2, "ping", json!({}))).await;
    assert_eq!(s.recv().await["id"], 2);
    let out = s.finish().await;
    assert!(out.messages().iter().all(|m| m["id"] != "slow-1"), "{}", out.stdout);
}

#[tokio::test]
async fn a_bridged_request_in_flight_at_shutdown_gets_one_answer() {
    let (url, server) = stateless_server().await;
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    s.send_json(&call_tool("slow-2", "slow")).await;
    while server.slow_started.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let out = s.finish().await;
    let answers: Vec<Value> = out.messages().into_iter().filter(|m| m["id"] == "slow-2").collect();
    assert_eq!(answers.len(), 1, "{}", out.stdout);
    assert_eq!(answers[0]["error"]["data"]["kind"], "shutting_down");
}

/// A server of the handshake era only: the example server behind a layer that refuses what an
/// old server does not know (`server/discover`, requests without a session) as old servers do.
fn handshake_only() -> Hook {
    Arc::new(|seen: &Seen| match seen.rpc_method() {
        Some("server/discover") => {
            Action::Respond(respond(400, "text/plain", "Bad Request: No valid session ID provided"))
        }
        _ => Action::Pass,
    })
}

#[tokio::test]
async fn same_era_pairs_are_forwarded_unchanged_and_the_verdict_is_remembered() {
    let server = Server::start(generic(), Some(handshake_only())).await;
    let dir = scratch_dir("era-remembered");
    let state = dir.to_string_lossy().into_owned();
    let line = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sum","arguments":{"a":1,"b":2},"_meta":{"progressToken":5}}}"#;
    for run in 0..2 {
        let mut s = sidecar_for(&server, &["--state-dir", &state]);
        s.handshake().await;
        s.send(line).await;
        assert_eq!(s.recv().await["result"]["content"][0]["text"], "3");
        s.finish().await;
        // A handshake-era client's initialize is forwarded: no probe at all (issue 20).
        assert_eq!(server.posts("server/discover").len(), 0, "run {run}");
    }
    // A stateless-era client is refused by this server: bridged, and the refusal remembered,
    // so the next stateless client is bridged without asking again.
    for run in 0..2 {
        let mut s = sidecar_for(&server, &["--state-dir", &state]);
        let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
        s.send_json(&request(1, "tools/call", json!({"name":"sum","arguments":{"a":1,"b":2},"_meta": meta})))
            .await;
        let answer = s.recv().await;
        assert_eq!(answer["result"]["content"][0]["text"], "3", "{answer}");
        assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
        s.finish().await;
        assert_eq!(server.posts("server/discover").len(), 1, "run {run}");
    }
    // The bytes the client wrote are the bytes the server got.
    let calls = server.posts("tools/call");
    assert_eq!(calls.len(), 4);
    let calls = &calls[..2];
    assert!(calls.iter().all(|c| c.body == line.as_bytes()));
    // The handshake-era clients' own initialize, as they wrote it; then the bridge's own.
    let inits = server.posts("initialize");
    assert!(inits[..2].iter().all(|c| c.json["id"] == 0));
    assert!(
        inits[2..].iter().all(|c| c.json["id"].as_str().is_some_and(|id| id.starts_with("mcp-sidecar-")))
    );
}

#[tokio::test]
async fn t13_a_request_refused_with_32022_for_the_version_it_carries_is_sent_again_once() {
    let (url, server) = stateless_server().await;
    server.reject_first.store(true, Ordering::SeqCst);
    // Known to be stateless: no probe before the client's request.
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--protocol-era", "modern"], &[]);
    // A stateless-era client: same era, forwarded unchanged; the retry is the same bytes.
    let line = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    s.send(line).await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    let posts = posts(&server);
    assert_eq!(posts.len(), 2, "refused once, then answered");
    assert!(posts.iter().all(|p| p.raw == line));
}

#[tokio::test]
async fn check_reports_both_eras_and_the_bridge() {
    let (url, _server) = stateless_server().await;
    let (code, out, err) = run_command(&["check", &url, "--auth", "none"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the server speaks only the stateless era (2026-07-28); handshake-era clients are bridged by mcp-sidecar"), "{out}");
    assert!(out.contains("stateless-only 7"), "{out}");
    let (_, json_out, _) = run_command(&["check", &url, "--auth", "none", "--json"], &[]).await;
    let report: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(report["server"]["bridged"], true, "{json_out}");
}

#[tokio::test]
async fn lists_with_a_ttl_are_reused_in_both_eras() {
    let (url, server) = stateless_server().await;
    // A handshake-era client through the bridge: listing on every turn costs one POST.
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    for id in 1..=3 {
        s.send_json(&request(id, "tools/list", json!({}))).await;
        let list = s.recv().await;
        assert_eq!(list["id"], id);
        assert_eq!(list["result"]["tools"].as_array().unwrap().len(), 5);
    }
    s.finish().await;
    let lists =
        |server: &Stateless| posts(server).iter().filter(|p| p.body["method"] == "tools/list").count();
    assert_eq!(lists(&server), 1);
    // A stateless-era client (same era, forwarded): the same.
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    for id in 1..=3 {
        s.send_json(&request(id, "tools/list", json!({"_meta": meta}))).await;
        assert_eq!(s.recv().await["result"]["tools"].as_array().unwrap().len(), 5);
    }
    s.finish().await;
    assert_eq!(lists(&server), 2);
}

/// One step of a random client session, for the property below.
#[derive(Debug, Clone)]
enum Op {
    Echo(Value),
    List,
    Ask,
    All,
}

fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let op = prop_oneof![
        4 => prop::collection::btree_map("[a-z]{1,5}", json_value(), 0..4)
            .prop_map(|m| Op::Echo(Value::Object(m.into_iter().collect()))),
        1 => Just(Op::List),
        1 => Just(Op::Ask),
        1 => Just(Op::All),
    ];
    prop::collection::vec(op, 1..6)
}

/// What a client answers to any question, in either era.
fn answer_to(method: &str) -> Value {
    match method {
        "elicitation/create" => json!({"action":"accept","content":{"name":"Ada"}}),
        "sampling/createMessage" => {
            json!({"model":"m","role":"assistant","content":{"type":"text","text":"4"}})
        }
        _ => json!({"roots":[{"uri":"file:///p"}]}),
    }
}

/// Runs `ops` as a handshake-era client (through the bridge) or as a stateless-era client
/// (forwarded, playing `input_required` itself) and returns the result of each.
async fn session(url: &str, ops: &[Op], stateless: bool) -> Vec<Value> {
    let mut s = Sidecar::spawn(&[url, "--auth", "none"], &[]);
    if !stateless {
        s.handshake().await;
    }
    // The same client either way: what `handshake` says in `initialize`.
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{},
        "io.modelcontextprotocol/clientInfo":{"name":"it","version":"1"}});
    let mut results = Vec::new();
    let mut next = 100;
    for op in ops {
        let mut params = match op {
            Op::Echo(args) => json!({"name":"echo","arguments":args}),
            Op::List => json!({}),
            Op::Ask => json!({"name":"ask"}),
            Op::All => json!({"name":"all"}),
        };
        let method = if matches!(op, Op::List) { "tools/list" } else { "tools/call" };
        if stateless {
            params["_meta"] = meta.clone();
        }
        // The state to echo, raw: a client that re-serializes it would change its bytes.
        let mut state: Option<String> = None;
        let result = loop {
            next += 1;
            let mut line = json!({"jsonrpc":"2.0","id":next,"method":method,"params":params}).to_string();
            if let Some(state) = &state {
                line.truncate(line.len() - 2);
                line.push_str(&format!(r#","requestState":{state}}}}}"#));
            }
            s.send(&line).await;
            let (answer, raw) = loop {
                let raw = s.recv_raw().await;
                let msg: Value = serde_json::from_str(&raw).unwrap();
                if let Some(m) = msg["method"].as_str() {
                    // A question of the bridge: answered like the stateless client does.
                    s.send_json(&json!({"jsonrpc":"2.0","id":msg["id"],"result":answer_to(m)})).await;
                    continue;
                }
                assert_eq!(msg["id"], next, "one answer, under the request's own id");
                break (msg, raw);
            };
            let result = answer["result"].clone();
            if !stateless || result["resultType"] != "input_required" {
                break result;
            }
            let mut responses = serde_json::Map::new();
            for (key, q) in result["inputRequests"].as_object().unwrap() {
                responses.insert(key.clone(), answer_to(q["method"].as_str().unwrap()));
            }
            params["inputResponses"] = Value::Object(responses);
            state = result_state(&raw);
        };
        results.push(result);
    }
    s.finish().await;
    results
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
    /// Issue 13: for any stream of requests, a handshake-era client through the bridge gets the
    /// same results as a stateless-era client talking to the same server in its own era.
    #[test]
    fn a_bridged_pair_and_a_same_era_pair_give_the_same_results(ops in ops()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let (url, _server) = stateless_server().await;
            let bridged = session(&url, &ops, false).await;
            let same_era = session(&url, &ops, true).await;
            assert_eq!(bridged.len(), ops.len());
            assert_eq!(bridged, same_era, "{ops:?}");
        });
    }
}

/// A stateless-era client that has a root, for the reverse bridge.
#[derive(Clone, Default)]
struct StatelessRoots;

impl ClientHandler for StatelessRoots {
    fn get_info(&self) -> ClientConfig {
        let caps = ClientCapabilities::builder().enable_roots().build();
        ClientConfig::new(caps, Implementation::new("stateless-client", "2.0"))
    }

    async fn list_roots(&self, _: RequestContext<RoleClient>) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![Root::new("file:///work/stateless")]))
    }
}

#[tokio::test]
async fn s09_a_stateless_client_reaches_a_handshake_only_server_through_the_reverse_bridge() {
    let server = Server::start(generic(), Some(handshake_only())).await;
    let dir = scratch_dir("reverse-bridge");
    let state = dir.to_string_lossy().into_owned();
    let args = args_for(&server);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--state-dir", &state]);
    let mode = rmcp::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    let (client, sidecar) = rmcp_client(&args, ENV, StatelessRoots, Some(mode)).await;
    let client = client.expect("server/discover answered by the reverse bridge");
    let info = serde_json::to_value(client.peer_info().unwrap()).unwrap();
    assert_eq!(info["serverInfo"]["name"], "rmcp", "{info}");
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "sum"));
    let result = client
        .call_tool(CallToolRequestParams::new("sum").with_arguments(rmcp::object!({"a": 2, "b": 3})))
        .await
        .unwrap();
    assert_eq!(text_of(&result), "5");
    // The server asks the client for its roots during the call: an input_required round.
    let roots = client.call_tool(CallToolRequestParams::new("roots")).await.unwrap();
    assert_eq!(text_of(&roots), "file:///work/stateless");
    client.cancel().await.unwrap();
    let out = sidecar.wait().await;
    assert!(out.status.success());
    assert!(
        out.stderr.contains("protocol bridge: 3 requests of a stateless-era client bridged to the handshake-era server, 1 input rounds"),
        "{}",
        out.stderr
    );
    // Upstream: one handshake with the client's capabilities, a session on every request, no
    // stateless `_meta` left in any body.
    let init = server.posts("initialize");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].json["params"]["clientInfo"]["name"], "stateless-client");
    assert!(init[0].json["params"]["capabilities"]["roots"].is_object());
    for call in server.posts("tools/call") {
        assert!(call.header("mcp-session-id").is_some());
        assert!(!String::from_utf8_lossy(&call.body).contains("io.modelcontextprotocol/"), "{:?}", call.body);
    }
}

#[tokio::test]
async fn j08_the_reverse_bridge_cancels_upstream_and_refuses_an_unknown_state() {
    let release = Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("server/discover") => Action::Respond(respond(400, "text/plain", "Bad Request")),
        _ if seen.json.pointer("/params/arguments/text") == Some(&json!("slow")) => {
            Action::Hold(held.clone())
        }
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    // Known to be of the handshake era: bridged at once, no probe.
    let mut s = sidecar_for(&server, &["--protocol-era", "legacy"]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    s.send_json(&request("d", "server/discover", json!({"_meta": meta}))).await;
    let discover = s.recv().await;
    assert_eq!(discover["result"]["supportedVersions"], json!(["2026-07-28"]), "{discover}");
    s.send_json(&request(
        "s",
        "tools/call",
        json!({"name":"echo","arguments":{"text":"slow"},"_meta": meta}),
    ))
    .await;
    while server.posts("tools/call").is_empty() {
        tokio::task::yield_now().await;
    }
    let upstream_id = server.posts("tools/call")[0].json["id"].clone();
    s.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"s"}}"#).await;
    tokio::time::timeout(PATIENCE, async {
        while server.posts("notifications/cancelled").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the server was told");
    assert_eq!(server.posts("notifications/cancelled")[0].json["params"]["requestId"], upstream_id);
    // A retry with a state nobody gave out is refused with a fix, not sent.
    s.send_json(&request(
        "r",
        "tools/call",
        json!({"name":"echo","arguments":{"text":"x"},"requestState":"forged","_meta": meta}),
    ))
    .await;
    let refused = s.recv().await;
    assert_eq!(refused["id"], "r");
    assert!(refused["error"]["message"].as_str().unwrap().contains("unknown or has expired"), "{refused}");
    release.notify_waiters();
    let out = s.finish().await;
    assert!(
        out.messages().iter().all(|m| m["id"] != "s"),
        "nothing for the cancelled request:\n{}",
        out.stdout
    );
    assert_eq!(server.posts("tools/call").len(), 1);
}

#[tokio::test]
async fn a_server_that_changes_era_is_not_locked_out_by_the_remembered_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rebind = || async move {
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    };
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let dirs = [scratch_dir("era-changed-a"), scratch_dir("era-changed-b")];
    let states: Vec<String> = dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect();
    // 1. A handshake-only server: a stateless client is bridged, and dir A remembers the
    //    server's refusal of the stateless era.
    let old = Server::start_on(listener, generic(), Some(handshake_only()));
    let mut s = sidecar_for(&old, &["--state-dir", &states[0]]);
    s.send_json(&request(1, "tools/call", json!({"name":"echo","arguments":{"message":"x"},"_meta": meta})))
        .await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    assert_eq!(old.posts("server/discover").len(), 1);
    old.stop();
    drop(old);
    // 2. The same address speaks only the stateless era. A stateless-era client: the handshake
    //    the memory calls for fails; forwarded instead. A handshake-era client: its initialize
    //    is refused, so it is bridged, and dir B remembers that refusal.
    let (url, server) = stateless_server_on(rebind().await);
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--state-dir", &states[0]], &[]);
    s.send_json(&request(1, "tools/call", json!({"name":"echo","_meta": meta}))).await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--state-dir", &states[1]], &[]);
    let init = s.handshake().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "stateless-only", "{init}");
    s.send_json(&call_tool("e", "echo")).await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    assert!(posts(&server).iter().any(|p| p.body["method"] == "server/discover"));
    server.task.lock().unwrap().take().unwrap().abort();
    // 3. The handshake era again: dir B's memory sends the probe first, which is refused, so
    //    the client's initialize goes as it came and the memory is forgotten.
    let new = Server::start_on(rebind().await, generic(), Some(handshake_only()));
    let mut s = sidecar_for(&new, &["--state-dir", &states[1]]);
    let init = s.handshake().await;
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    s.send_json(&call_tool("e2", "echo")).await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    assert_eq!(new.posts("server/discover").len(), 1);
    assert_eq!(dirs[1].join("eras").read_dir().unwrap().count(), 0, "forgotten");
}

#[tokio::test]
async fn t33_list_changes_and_resource_subscriptions_come_through_subscriptions_listen() {
    let (url, server) = stateless_server().await;
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    until("a listen stream", || server.listeners().len() == 1).await;
    assert_eq!(server.listeners()[0].filter, json!({"toolsListChanged":true,"resourcesListChanged":true}));
    let tool_lists = || posts(&server).iter().filter(|p| p.body["method"] == "tools/list").count();
    for id in 1..=2 {
        s.send_json(&request(id, "tools/list", json!({}))).await;
        assert_eq!(s.recv().await["id"], id);
    }
    assert_eq!(tool_lists(), 1, "cached");
    // A change is announced as the handshake era does it, and the cached list is forgotten.
    server.notify(0, "notifications/tools/list_changed", json!({}));
    let note = s.recv().await;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    s.send_json(&request(3, "tools/list", json!({}))).await;
    assert_eq!(s.recv().await["id"], 3);
    assert_eq!(tool_lists(), 2);
    // resources/subscribe is answered here and becomes the new stream's filter; the old
    // stream is closed.
    s.send_json(&request(4, "resources/subscribe", json!({"uri":"file:///a.txt"}))).await;
    assert_eq!(s.recv().await, json!({"jsonrpc":"2.0","id":4,"result":{}}));
    until("a second listen stream", || server.listeners().len() == 2).await;
    assert_eq!(server.listeners()[1].filter["resourceSubscriptions"], json!(["file:///a.txt"]));
    until("the first stream closed", || server.listeners()[0].push.as_ref().unwrap().is_closed()).await;
    server.notify(1, "notifications/resources/updated", json!({"uri":"file:///a.txt"}));
    let updated = s.recv().await;
    assert_eq!(updated["method"], "notifications/resources/updated");
    assert_eq!(updated["params"]["uri"], "file:///a.txt");
    // The server drops the stream: it is opened again under a new id.
    server.end(1);
    until("a third listen stream", || server.listeners().len() == 3).await;
    assert_ne!(server.listeners()[2].id, server.listeners()[1].id);
    assert_eq!(server.listeners()[2].filter["resourceSubscriptions"], json!(["file:///a.txt"]));
    let out = s.finish().await;
    assert!(!out.stdout.contains("subscriptions/acknowledged"), "{}", out.stdout);
    // Never a subscribe request upstream: the stateless era has none.
    assert!(posts(&server).iter().all(|p| p.body["method"] != "resources/subscribe"));
}

#[tokio::test]
async fn t23_a_broken_stream_is_asked_again_only_for_requests_that_change_nothing() {
    let (url, server) = stateless_server().await;
    server.break_next_list.store(true, Ordering::SeqCst);
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    s.send_json(&request(1, "prompts/list", json!({}))).await;
    assert_eq!(s.recv().await["result"]["prompts"], json!([]));
    let lists: Vec<Post> =
        posts(&server).into_iter().filter(|p| p.body["method"] == "prompts/list").collect();
    assert_eq!(lists.len(), 2, "asked again");
    assert_ne!(lists[0].body["id"], lists[1].body["id"], "under a new id");
    // A tool call may have done something: never sent twice.
    s.send_json(&call_tool("b", "breaks")).await;
    let answer = s.recv().await;
    assert_eq!(answer["id"], "b");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("may or may not have been processed"),
        "{answer}"
    );
    s.finish().await;
    let calls = posts(&server).into_iter().filter(|p| p.body["params"]["name"] == "breaks").count();
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn t12_the_reverse_bridge_renews_an_expired_session_for_the_stateless_client() {
    let expired = Arc::new(AtomicBool::new(false));
    let once = expired.clone();
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("server/discover") => Action::Respond(respond(400, "text/plain", "Bad Request")),
        Some("tools/call") if !once.swap(true, Ordering::SeqCst) => Action::Respond(respond(
            404,
            "application/json",
            r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#,
        )),
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("reverse-renewal");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy()]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},
        "io.modelcontextprotocol/clientInfo":{"name":"renewing","version":"1"}});
    s.send_json(&request(1, "tools/call", json!({"name":"sum","arguments":{"a":20,"b":22},"_meta": meta})))
        .await;
    let answer = s.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "42", "the client never notices: {answer}");
    s.finish().await;
    let inits = server.posts("initialize");
    assert_eq!(inits.len(), 2, "the handshake made for the client, and again for a new session");
    assert_eq!(inits[1].body, inits[0].body);
    assert_eq!(inits[0].json["params"]["clientInfo"]["name"], "renewing");
    let calls = server.posts("tools/call");
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].header("mcp-session-id"), calls[1].header("mcp-session-id"));
}

#[tokio::test]
async fn a_stateless_client_and_a_stateless_server_are_forwarded_unchanged() {
    let (url, server) = stateless_server().await;
    let dir = scratch_dir("stateless-pair");
    let state = dir.to_string_lossy().into_owned();
    let args = [url.as_str(), "--auth", "none", "--state-dir", &state];
    let mode = rmcp::ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    let (client, sidecar) = rmcp_client(&args, &[], Helpful, Some(mode)).await;
    let client = client.expect("server/discover forwarded");
    assert_eq!(client.list_all_tools().await.unwrap().len(), 5);
    // The client plays the input_required round itself; the sidecar only forwards.
    let asked = client.call_tool(CallToolRequestParams::new("ask")).await.unwrap();
    assert_eq!(text_of(&asked), "hello Ada");
    client.cancel().await.unwrap();
    let out = sidecar.wait().await;
    assert!(out.status.success());
    assert!(!out.stderr.contains("protocol bridge"), "no bridge: {}", out.stderr);
    // The client's own discover decided the era: no probe of ours.
    let discovers = posts(&server).iter().filter(|p| p.body["method"] == "server/discover").count();
    assert_eq!(discovers, 1);
}

#[tokio::test]
async fn a_client_that_never_answers_the_servers_question_gets_one_error_in_time() {
    let (url, _server) = stateless_server().await;
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--request-timeout", "1"], &[]);
    s.handshake().await;
    s.send_json(&call_tool("q", "ask")).await;
    let question = s.recv().await;
    assert_eq!(question["method"], "elicitation/create");
    // No answer: the request gets an error once --request-timeout has passed.
    let answer = s.recv().await;
    assert_eq!(answer["id"], "q");
    assert_eq!(answer["error"]["data"]["kind"], "timeout");
    assert!(answer["error"]["message"].as_str().unwrap().contains("did not answer within 1 s"), "{answer}");
    // A late answer changes nothing.
    s.send_json(&json!({"jsonrpc":"2.0","id":question["id"],"result":{"action":"decline"}})).await;
    let out = s.finish().await;
    assert_eq!(out.messages().iter().filter(|m| m["id"] == "q").count(), 1, "answered exactly once");
}

#[tokio::test]
async fn a_probe_the_server_never_answers_delays_nothing_past_its_timeout_and_is_not_remembered() {
    let (never, hook) = holding("server/discover");
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("stalled-probe");
    let state = dir.to_string_lossy().into_owned();
    // The probe has --request-timeout (here 1 s) at most; then initialize goes as it came.
    let mut s = sidecar_for(&server, &["--state-dir", &state, "--request-timeout", "1"]);
    s.handshake().await;
    s.send_json(&call(1, "sum", json!({"a": 1, "b": 1}))).await;
    assert_eq!(s.recv().await["result"]["content"][0]["text"], "2");
    s.finish().await;
    // No answer is no verdict: nothing remembered, the next run asks again.
    assert!(!dir.join("eras").exists() || dir.join("eras").read_dir().unwrap().count() == 0);
    never.notify_waiters();
}

/// A hook that holds every request of `method` until the returned `Notify` fires.
fn holding(method: &'static str) -> (Arc<tokio::sync::Notify>, Hook) {
    let never = Arc::new(tokio::sync::Notify::new());
    let held = never.clone();
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some(m) if m == method => Action::Hold(held.clone()),
        _ => Action::Pass,
    });
    (never, hook)
}

/// A dual-era server as the Python SDK's (`mcp` 2.3.0) is one: it takes `initialize` and opens a
/// session, and answers `server/discover` in the stateless era listing only the stateless
/// version.
fn dual_era_listing_only_stateless() -> Hook {
    Arc::new(|seen: &Seen| match seen.rpc_method() {
        Some("server/discover") => Action::Respond(respond(
            200,
            "application/json",
            json!({"jsonrpc":"2.0","id":seen.json["id"],"result":{"resultType":"complete",
                "supportedVersions":["2026-07-28"],"capabilities":{"tools":{}},
                "serverInfo":{"name":"dual","version":"2"},"ttlMs":0,"cacheScope":"private"}})
            .to_string(),
        )),
        _ => Action::Pass,
    })
}

#[tokio::test]
async fn issue20_a_dual_era_server_keeps_the_handshake_its_session_its_cancels_and_its_delete() {
    let server = Server::start(generic(), Some(dual_era_listing_only_stateless())).await;
    let dir = scratch_dir("dual-era");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy()]);
    let init = s.handshake().await;
    // The server's own answer, not one made from a DiscoverResult.
    assert_eq!(init["result"]["instructions"], "mcp-sidecar example server", "{init}");
    s.send_json(&call(7, "slow", json!({"ms": 60_000}))).await;
    until("the slow call reaches the server", || !server.posts("tools/call").is_empty()).await;
    s.send_json(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}})).await;
    until("the cancel reaches the server", || !server.posts("notifications/cancelled").is_empty()).await;
    s.send_json(&call(8, "sum", json!({"a": 2, "b": 3}))).await;
    let sum = s.recv().await;
    assert_eq!(sum["id"], 8, "nothing for the cancelled request: {sum}");
    assert_eq!(sum["result"]["content"][0]["text"], "5");
    let out = s.finish().await;
    assert!(!out.stderr.contains("bridg"), "{}", out.stderr);
    // No probe; the client's own bytes; the session used and ended (T-22).
    assert!(server.posts("server/discover").is_empty());
    let seen = server.seen();
    let init = &server.posts("initialize")[0];
    let session = seen.iter().find_map(|s| s.header("mcp-session-id").map(str::to_owned)).expect("a session");
    assert_eq!(server.posts("notifications/cancelled")[0].json["params"]["requestId"], 7);
    assert!(server.posts("tools/call").iter().all(|c| c.header("mcp-session-id") == Some(&session)));
    assert!(init.header("mcp-session-id").is_none());
    assert!(
        seen.iter()
            .any(|s| s.method == axum::http::Method::DELETE && s.header("mcp-session-id") == Some(&session)),
        "the session is ended at exit"
    );
    // And nothing is remembered that would bridge the next client.
    assert!(!dir.join("eras").exists() || dir.join("eras").read_dir().unwrap().count() == 0);
}

#[tokio::test]
async fn issue20_a_failed_initialize_settles_nothing_and_the_same_id_can_be_sent_again() {
    let (url, server) = stateless_server().await;
    // A server not ready yet: the first POST fails with a 500 and a JSON-RPC internal error.
    server.fail_first.store(true, Ordering::SeqCst);
    let dir = scratch_dir("failed-initialize");
    let state = dir.to_string_lossy().into_owned();
    let mut s = Sidecar::spawn(&[&url, "--auth", "none", "--state-dir", &state], &[]);
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
    s.send_json(&init).await;
    let first = s.recv().await;
    assert_eq!(first["error"]["code"], -32603, "{first}");
    // The client tries again with the same id (the TypeScript SDK always uses 0): the era is
    // decided now, and the bridge answers.
    let second = s.handshake().await;
    assert_eq!(second["id"], 0);
    assert_eq!(second["result"]["serverInfo"]["name"], "stateless-only", "{second}");
    s.send_json(&call_tool("e", "echo")).await;
    assert!(s.recv().await["result"]["content"].is_array());
    let out = s.finish().await;
    // Exactly one answer per line: nothing more for id 0 at exit.
    let answers: Vec<Value> = out.messages().into_iter().filter(|m| m["id"] == 0).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(posts(&server).iter().any(|p| p.body["method"] == "server/discover"));
}

#[tokio::test]
async fn issue20_a_failed_probe_settles_nothing_for_a_stateless_client() {
    // A handshake-only server whose first answer to server/discover is an internal error.
    let failed = Arc::new(AtomicBool::new(false));
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("server/discover") if !failed.swap(true, Ordering::SeqCst) => Action::Respond(respond(
            500,
            "application/json",
            json!({"jsonrpc":"2.0","id":seen.json["id"],"error":{"code":-32603,"message":"starting up"}})
                .to_string(),
        )),
        Some("server/discover") => {
            Action::Respond(respond(400, "text/plain", "Bad Request: No valid session ID provided"))
        }
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    // A state dir of its own: another test's memory of a server on a reused port must not count.
    let dir = scratch_dir("failed-probe");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy()]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let sum =
        |id: i64| request(id, "tools/call", json!({"name":"sum","arguments":{"a":1,"b":id},"_meta": meta}));
    s.send_json(&sum(1)).await;
    // Nothing proved the era: forwarded as it came (this server answers it without a session).
    let first = s.recv().await;
    assert_eq!(first["id"], 1, "{first}");
    assert!(server.posts("initialize").is_empty(), "not bridged yet");
    // The next request asks again, learns the handshake era, and is bridged.
    s.send_json(&sum(2)).await;
    let answer = s.recv().await;
    assert_eq!(answer["result"]["content"][0]["text"], "3", "{answer}");
    assert_eq!(answer["result"]["resultType"], "complete");
    s.finish().await;
    assert_eq!(server.posts("server/discover").len(), 2);
    assert_eq!(server.posts("initialize").len(), 1, "the reverse bridge's handshake");
}

#[tokio::test]
async fn issue20_a_refused_initialize_leaves_no_entry_behind_and_its_id_can_be_used_again() {
    // A handshake server whose first initialize fails without a JSON-RPC answer (a proxy's 502
    // page): the sidecar answers it with its own error.
    let failed = Arc::new(AtomicBool::new(false));
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("initialize") if !failed.swap(true, Ordering::SeqCst) => {
            Action::Respond(respond(502, "text/html", "<h1>502 Bad Gateway</h1>"))
        }
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("refused-initialize");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy()]);
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"1"}}});
    s.send_json(&init).await;
    let first = s.recv().await;
    assert_eq!(first["id"], 0, "{first}");
    assert!(first.get("error").is_some(), "{first}");
    // The TypeScript SDK always uses id 0: the retry is not "already in use".
    let second = s.handshake().await;
    assert_eq!(second["result"]["instructions"], "mcp-sidecar example server", "{second}");
    let out = s.finish().await;
    // Exactly one answer per line: no "shutting down" for id 0 at exit.
    let answers: Vec<Value> = out.messages().into_iter().filter(|m| m["id"] == 0).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    // Issue 21.14: the summary counts the initialize lines too (it said "1 of 0").
    assert!(out.stderr.contains("1 of 2 requests to"), "{}", out.stderr);
}

/// Issue 21.4: a `subscriptions/listen` stream the server ends at once, without an error, is a
/// failure: reopened with backoff, given up after 5 (it was reopened every 500 ms for ever, each
/// spending a unit of the rate limit).
#[tokio::test]
async fn a_listen_stream_ended_at_once_is_given_up_not_reopened_for_ever() {
    let (url, server) = stateless_server().await;
    server.end_listens.store(true, Ordering::SeqCst);
    let mut s = Sidecar::spawn(&[&url, "--auth", "none"], &[]);
    s.handshake().await;
    s.stderr_shows("subscriptions/listen stream failed 5 times in a row").await;
    let listens = || posts(&server).iter().filter(|p| p.body["method"] == "subscriptions/listen").count();
    assert_eq!(listens(), 5);
    s.send_json(&call_tool("e", "echo")).await;
    assert!(s.recv().await["result"]["content"].is_array());
    s.finish().await;
    assert_eq!(listens(), 5, "none after giving up");
}

/// Issue 21.13: requests of a stateless client parked for its answers are bounded: each holds an
/// upstream stream and a task, so past 32 the next one is refused at once (the server is told)
/// instead of parked without end.
#[tokio::test]
async fn parked_requests_of_the_reverse_bridge_are_bounded() {
    let server = Server::start(generic(), Some(handshake_only())).await;
    let dir = scratch_dir("parked-bound");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy()]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}});
    for id in 1..=33 {
        s.send_json(&request(id, "tools/call", json!({"name":"ask","arguments":{},"_meta": meta}))).await;
    }
    let mut asked = 0;
    let mut refused = Vec::new();
    for _ in 1..=33 {
        let answer = s.recv().await;
        if answer["result"]["resultType"] == "input_required" {
            asked += 1;
        } else {
            refused.push(answer);
        }
    }
    assert_eq!(asked, 32, "{refused:?}");
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["error"]["message"].as_str().unwrap().contains("answer those first"), "{refused:?}");
    s.finish().await;
    assert!(!server.posts("notifications/cancelled").is_empty(), "the server is told");
}

/// Issue 21.13: a parked request keeps its room in flight (it still holds an upstream stream):
/// with `--max-message-bytes` small, the parked requests fill the room (4 × the maximum) and the
/// next request is refused as overloaded instead of opening one more stream.
#[tokio::test]
async fn parked_requests_of_the_reverse_bridge_keep_their_room_in_flight() {
    let server = Server::start(generic(), Some(handshake_only())).await;
    let dir = scratch_dir("parked-room");
    let max = 1024usize; // the least it takes
    let mut s = sidecar_for(
        &server,
        &["--state-dir", &dir.to_string_lossy(), "--max-message-bytes", &max.to_string()],
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}});
    let ask = |id: u64| request(id, "tools/call", json!({"name":"ask","arguments":{},"_meta": meta}));
    let len = serde_json::to_string(&ask(10)).unwrap().len();
    let fit = (4 * max) / len;
    assert!((2..32).contains(&fit), "{fit}");
    // The first request settles the eras (answered inline); the bridge takes the rest.
    s.send_json(&request(1, "server/discover", json!({"_meta": meta}))).await;
    assert!(s.recv().await["result"].is_object());
    for id in 10..(10 + fit as u64) {
        s.send_json(&ask(id)).await;
    }
    for _ in 0..fit {
        let answer = s.recv().await;
        assert_eq!(answer["result"]["resultType"], "input_required", "{answer}");
    }
    // All parked now, each still holding its stream: no room for one more.
    s.send_json(&ask(99)).await;
    let refused = s.recv().await;
    let message = refused["error"]["message"].as_str().unwrap_or_else(|| panic!("not refused: {refused}"));
    assert!(message.contains("too many requests are in flight"), "{message}");
    s.finish().await;
}

/// Issue 21.1: stdin's end is seen while `initialize` is sent inline (the eras are settled on it):
/// a server that never answers it no longer keeps the sidecar for `--request-timeout` (here
/// 300 s) after the client has gone; the request read after it still goes out, and each gets
/// exactly one answer, the stalled one as "shutting down".
#[tokio::test]
async fn the_end_of_stdin_is_seen_while_initialize_is_sent_inline() {
    let (never, hook) = holding("initialize");
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("eof-inline");
    let mut s = sidecar_for(&server, &["--state-dir", &dir.to_string_lossy(), "--request-timeout", "300"]);
    s.send_json(&request(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":"it","version":"1"}}),
    ))
    .await;
    until("initialize reaches the server", || !server.posts("initialize").is_empty()).await;
    s.send_json(&request(1, "tools/list", json!({}))).await;
    let out = s.finish().await;
    let answers = out.messages();
    let of = |id: i64| answers.iter().filter(|m| m["id"] == id).collect::<Vec<_>>();
    assert_eq!(of(0).len(), 1, "{}", out.stdout);
    assert_eq!(of(0)[0]["error"]["data"]["kind"], "shutting_down", "{}", out.stdout);
    assert_eq!(of(1).len(), 1, "{}", out.stdout);
    never.notify_waiters();
}

/// Issue 21.1: the same while the era probe is out (before `initialize` itself is sent): the
/// request the eras are settled on is still answered exactly once when stdin ends.
#[tokio::test]
async fn the_end_of_stdin_during_the_era_probe_still_answers_initialize() {
    let (never, hook) = holding("server/discover");
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("eof-probe");
    let args =
        ["--state-dir", &dir.to_string_lossy(), "--request-timeout", "300", "--protocol-era", "modern"];
    let mut s = sidecar_for(&server, &args);
    s.send_json(&request(
        0,
        "initialize",
        json!({"protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":"it","version":"1"}}),
    ))
    .await;
    until("the probe reaches the server", || !server.posts("server/discover").is_empty()).await;
    let out = s.finish().await;
    let answers = out.messages();
    assert_eq!(answers.len(), 1, "{}", out.stdout);
    assert_eq!(answers[0]["id"], 0);
    assert_eq!(answers[0]["error"]["data"]["kind"], "shutting_down", "{}", out.stdout);
    never.notify_waiters();
}

/// Issue 23.5: a one-shot command against a stateless server opened the bridge's
/// `subscriptions/listen` stream, a request of the user's that nobody read. Now: the first run
/// learns the era (its `initialize` refused, then `server/discover`) and makes the call; a later
/// run, with the era remembered, spends two requests.
#[tokio::test]
async fn issue23_5_a_one_shot_command_opens_no_listen_stream() {
    let (url, server) = stateless_server().await;
    let dir = scratch_dir("issue23-5-stateless");
    let args = ["tools", url.as_str(), "--auth", "none", "--state-dir", dir.to_str().unwrap()];
    let methods = || -> Vec<String> {
        server
            .posts
            .lock()
            .unwrap()
            .drain(..)
            .map(|p| p.body["method"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let (code, stdout, stderr) = run_command(&args, &[]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(methods(), ["initialize", "server/discover", "tools/list"]);
    let (code, stdout, stderr) = run_command(&args, &[]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(methods(), ["server/discover", "tools/list"]);
}

/// A handshake-era rmcp client bridged to a fresh stateless-only server, with `flags` and a
/// state dir of its own (`name`).
async fn bridged_rmcp(
    name: &str,
    flags: &[&str],
) -> (rmcp::service::RunningService<RoleClient, Helpful>, Sidecar, Arc<Stateless>) {
    let (url, server) = stateless_server().await;
    let state = scratch_dir(name).to_string_lossy().into_owned();
    let mut args = vec![url.as_str(), "--auth", "none", "--state-dir", &state];
    args.extend(flags);
    let (client, sidecar) =
        rmcp_client(&args, &[], Helpful, Some(rmcp::ClientLifecycleMode::Initialize)).await;
    (client.expect("initialize answered by the bridge"), sidecar, server)
}

/// Issue 24.1: `--deny-tools` and `--allow-tools` through the bridge (a handshake client, rmcp,
/// to a stateless-only server): the list the client gets lacks the hidden tools, and a hidden
/// tool's call is answered as a call of an unknown tool and never reaches the server.
#[tokio::test]
async fn issue24_1_filters_hold_through_the_bridge() {
    let (client, sidecar, server) =
        bridged_rmcp("issue24-1-bridge", &["--deny-tools", "a*,slow", "--allow-tools", "*"]).await;
    let names: Vec<String> =
        client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["echo", "forever"]);
    let refused = client.call_tool(CallToolRequestParams::new("ask")).await.unwrap_err();
    let text = format!("{refused:?}");
    assert!(
        text.contains("-32602") || text.contains("InvalidParams") || text.contains("Unknown tool: ask"),
        "{text}"
    );
    client.cancel().await.unwrap();
    sidecar.wait().await;
    assert!(
        posts(&server).iter().all(|p| p.body["params"]["name"] != "ask"),
        "the hidden call reached the server"
    );
}

/// Issue 24.2: names hold through the bridge (a handshake-era rmcp client, a stateless-only
/// server): the client lists and calls the prefixed names, the server sees its own.
#[tokio::test]
async fn issue24_2_names_hold_through_the_bridge() {
    let flags = ["--tool-prefix", "st.", "--rename-tool", "ask=question"];
    let (client, sidecar, server) = bridged_rmcp("issue24-2-bridge", &flags).await;
    let names: Vec<String> =
        client.list_all_tools().await.unwrap().into_iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["st.echo", "question", "st.all", "st.slow", "st.forever"]);
    let echoed = client.call_tool(CallToolRequestParams::new("st.echo")).await.unwrap();
    assert!(serde_json::to_string(&echoed).unwrap().contains("arguments"), "{echoed:?}");
    let refused = client.call_tool(CallToolRequestParams::new("echo")).await.unwrap_err();
    assert!(format!("{refused:?}").contains("Unknown tool: echo"), "{refused:?}");
    client.cancel().await.unwrap();
    sidecar.wait().await;
    let called: Vec<String> = posts(&server)
        .iter()
        .filter(|p| p.body["method"] == "tools/call")
        .map(|p| p.body["params"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(called, ["echo"], "the server saw its own name, and not the refused call");
}

/// Issue 24.1: `--deny-resources` by URI glob, through the bridge (raw lines): the list loses
/// the resource, and reading it is answered with the spec's -32002, never sent.
#[tokio::test]
async fn issue24_1_a_denied_resource_is_neither_listed_nor_read() {
    let (url, server) = stateless_server().await;
    let dir = scratch_dir("issue24-1-resources");
    let state = dir.to_string_lossy().into_owned();
    let mut s = Sidecar::spawn(
        &[&url, "--auth", "none", "--state-dir", &state, "--deny-resources", "file:///a*"],
        &[],
    );
    s.handshake().await;
    s.send_json(&request(1, "resources/list", json!({}))).await;
    let list = s.recv().await;
    assert_eq!(list["result"]["resources"], json!([]), "{list}");
    s.send_json(&request(2, "resources/read", json!({"uri": "file:///a.txt"}))).await;
    let refused = s.recv().await;
    assert_eq!(refused["error"]["code"], -32002, "{refused}");
    assert_eq!(refused["error"]["message"], "Resource not found: file:///a.txt");
    s.finish().await;
    assert!(
        posts(&server).iter().all(|p| p.body["method"] != "resources/read"),
        "the read reached the server"
    );
}

/// Issue 24.5 for a stateless-era client (no handshake to answer stale): its `tools/list` while
/// the server is down is answered from the list kept the last time, and a call is not; its next
/// listing asks the server again.
#[tokio::test]
async fn issue24_5_a_stateless_client_gets_the_kept_list_while_the_server_is_down() {
    let (url, server) = stateless_server().await;
    let dir = scratch_dir("issue24-5-stateless");
    let state = dir.to_string_lossy().into_owned();
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let args = [url.as_str(), "--auth", "none", "--state-dir", &state, "--max-retries", "0"];
    let mut s = Sidecar::spawn(&args, &[]);
    s.send_json(&request(1, "tools/list", json!({"_meta": meta}))).await;
    let fresh = s.recv().await;
    assert!(fresh["result"]["tools"].is_array(), "{fresh}");
    s.finish().await;
    server.task.lock().unwrap().take().unwrap().abort();
    let addr = url.trim_start_matches("http://").trim_end_matches("/mcp").to_owned();
    // Down: nothing listens on the address any more.
    let dead = loop {
        match std::net::TcpStream::connect(&addr) {
            Err(_) => break true,
            Ok(_) => tokio::task::yield_now().await,
        }
    };
    assert!(dead);
    let mut s = Sidecar::spawn(&args, &[]);
    s.send_json(&request(2, "tools/list", json!({"_meta": meta}))).await;
    let stale = s.recv().await;
    assert_eq!(stale["result"]["tools"], fresh["result"]["tools"], "{stale}");
    s.send_json(&request(3, "tools/call", json!({"name":"echo","_meta": meta}))).await;
    assert_eq!(s.recv().await["error"]["data"]["kind"], "unreachable");
    let outcome = s.finish().await;
    assert!(outcome.stderr.contains("tools/list answered from what was kept"), "{}", outcome.stderr);
}

/// Issue 24.4, the era probe: a stateless-era client's first request, with a progress token,
/// waits while the sidecar learns the server's era, and the probe meets a 429 with
/// `Retry-After: 3`: the client hears of the wait (progress for its token, with a message),
/// then gets its answer; the values keep increasing.
#[tokio::test]
async fn issue24_4_a_request_held_by_the_era_probe_gets_progress() {
    let limited = Arc::new(AtomicBool::new(true));
    let l = limited.clone();
    let hook: Hook = Arc::new(move |seen: &Seen| match seen.rpc_method() {
        Some("server/discover") if l.swap(false, Ordering::SeqCst) => {
            let mut r = respond(429, "application/json", "{}");
            r.headers_mut().insert("retry-after", "3".parse().unwrap());
            Action::Respond(r)
        }
        Some("server/discover") => {
            Action::Respond(respond(400, "text/plain", "Bad Request: No valid session ID provided"))
        }
        _ => Action::Pass,
    });
    let server = Server::start(generic(), Some(hook)).await;
    let dir = scratch_dir("issue24-4-probe");
    let state = dir.to_string_lossy().into_owned();
    let mut s = sidecar_for(&server, &["--state-dir", &state]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{},"progressToken":"first"});
    s.send_json(&request(1, "tools/call", json!({"name":"sum","arguments":{"a":1,"b":2},"_meta": meta})))
        .await;
    let mut notes = Vec::new();
    let answer = loop {
        let line = s.recv().await;
        match line["method"].as_str() {
            Some("notifications/progress") => notes.push(line["params"].clone()),
            Some(_) => {}
            None => break line,
        }
    };
    assert!(answer["result"]["content"].is_array(), "{answer}");
    assert!(!notes.is_empty(), "no progress while the probe waited");
    assert!(notes.iter().all(|n| n["progressToken"] == "first"), "{notes:?}");
    let message = notes[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("for the rate limit of 127.0.0.1"), "{message}");
    let values: Vec<f64> = notes.iter().map(|n| n["progress"].as_f64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[1] > w[0]), "{values:?}");
    s.finish().await;
}
