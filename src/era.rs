//! The two eras of MCP and the pure half of the bridge between them.
//!
//! The handshake era (2024-11-05 … 2025-11-25) opens with `initialize`, keeps a session, and lets
//! the server send requests of its own (sampling, elicitation, roots). The stateless era
//! (2026-07-28) has no handshake: every request carries its version, capabilities and client info
//! in `params._meta` (J-11), the server is described by `server/discover` (S-09), and a server
//! that needs something from the client answers `input_required` and is asked again with the
//! answers (Multi Round-Trip Requests, T-31).
//!
//! This module decides which era a message or a server's answer belongs to and rewrites
//! messages from one era into the other. It works on bytes and borrowed raw JSON: member values
//! it does not change (arguments, `requestState`, results) are copied byte for byte, so nothing
//! is reordered, rounded or lost. It never sends anything; [`crate::proxy`] does.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::upstream::headers::SUPPORTED_REVISIONS;

/// The first revision of the stateless era.
pub const FIRST_MODERN: &str = "2026-07-28";
/// The newest handshake-era revision, offered to a client that asks for one we do not speak.
pub const LATEST_LEGACY: &str = "2025-11-25";
/// `_meta` key of the per-request protocol version (T-13, J-11).
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key of the client's capabilities (J-11).
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key of the client's name and version (J-11).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key of the server's info in a `DiscoverResult`.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `_meta` key of the log level that replaces `logging/setLevel`.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// The JSON-RPC error a stateless server gives for a version it does not speak (T-13).
pub const UNSUPPORTED_VERSION: i64 = -32022;
/// JSON-RPC's internal error: the server failed, which says nothing about its era.
pub const INTERNAL_ERROR: i64 = -32603;
/// How long a server's era is believed without asking again (T-62: "cache per origin").
pub const ERA_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Which era a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize`, sessions, server requests (2024-11-05 … 2025-11-25).
    Handshake,
    /// Per-request `_meta`, `server/discover`, `input_required` (2026-07-28 on).
    Stateless,
    /// A server that speaks both: every client talks to it in its own era.
    Both,
}

impl Era {
    /// For people: "handshake (2025-11-25)".
    pub fn name(self) -> &'static str {
        match self {
            Era::Handshake => "handshake era (2025-11-25 and before)",
            Era::Stateless => "stateless era (2026-07-28)",
            Era::Both => "handshake and stateless eras",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Era::Handshake => "handshake",
            Era::Stateless => "stateless",
            Era::Both => "both",
        }
    }
}

/// Whether `version` is a stateless-era revision.
pub fn is_modern(version: &str) -> bool {
    version >= FIRST_MODERN
}

/// The client's era from one of its messages (S-09, T-62 proxy fact): `initialize` says
/// handshake; `server/discover` or a request with a per-request protocol version says stateless;
/// anything else (a `ping`, a notification) says nothing yet.
pub fn client_era(method: &str, meta_version: Option<&str>) -> Option<Era> {
    match method {
        "initialize" => Some(Era::Handshake),
        "server/discover" => Some(Era::Stateless),
        _ if meta_version.is_some_and(is_modern) => Some(Era::Stateless),
        _ => None,
    }
}

/// What a `server/discover` probe's answer says about the server (T-62, S-09).
#[derive(Debug)]
pub enum Verdict {
    /// A `DiscoverResult` listing stateless versions only: the result, raw.
    Stateless(Box<RawValue>),
    /// A `DiscoverResult` listing versions of both eras: no bridge is needed for any client.
    Both,
    /// `-32022` listing a stateless version we speak: stateless, ask again with that version.
    RetryWith(String),
    /// Any other JSON-RPC error: the server is of the handshake era.
    Handshake,
}

/// Reads the answer to a `server/discover` probe. A `-32022` that lists no version we speak
/// counts as the handshake era: the bridge cannot talk to it either way, and `initialize` will
/// say why.
pub fn probe_verdict(answer: &[u8]) -> Verdict {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
        #[serde(default)]
        error: Option<ErrorBody>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer<'_>>(answer) else { return Verdict::Handshake };
    if let Some(result) = answer.result {
        // A DiscoverResult names the versions it speaks; `{}` from a lenient old server does not.
        #[derive(Deserialize)]
        struct Discover {
            #[serde(default, rename = "supportedVersions")]
            supported: Vec<String>,
        }
        let supported =
            serde_json::from_str::<Discover>(result.get()).map(|d| d.supported).unwrap_or_default();
        let modern = supported.iter().any(|v| is_modern(v));
        let legacy = supported.iter().any(|v| !is_modern(v));
        return match (modern, legacy) {
            (true, false) => Verdict::Stateless(result.to_owned()),
            (true, true) => Verdict::Both,
            _ => Verdict::Handshake,
        };
    }
    match answer.error.and_then(|e| e.supported_modern()) {
        Some(version) => Verdict::RetryWith(version),
        None => Verdict::Handshake,
    }
}

/// A JSON-RPC error object, as far as the bridge reads it.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// `code`.
    #[serde(default)]
    pub code: i64,
    /// `data`.
    #[serde(default)]
    data: Option<serde_json::Value>,
}

impl ErrorBody {
    /// For `-32022`: the newest stateless version the server lists that this build speaks.
    pub fn supported_modern(&self) -> Option<String> {
        if self.code != UNSUPPORTED_VERSION {
            return None;
        }
        let listed = self.data.as_ref()?.get("supported")?.as_array()?;
        let mut ours: Vec<&str> = listed
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|v| is_modern(v) && SUPPORTED_REVISIONS.contains(v))
            .collect();
        ours.sort_unstable();
        ours.last().map(|v| (*v).to_owned())
    }
}

/// The error of a response, if it is one.
pub fn response_error(answer: &[u8]) -> Option<ErrorBody> {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<ErrorBody>,
    }
    serde_json::from_slice::<Answer>(answer).ok()?.error
}

/// The revision a handshake-era client is told in the local `initialize` answer: the one it
/// asked for when it is a handshake revision we speak, else the newest one.
pub fn negotiated_legacy(requested: Option<&str>) -> &'static str {
    SUPPORTED_REVISIONS
        .iter()
        .find(|v| Some(**v) == requested && !is_modern(v))
        .copied()
        .unwrap_or(LATEST_LEGACY)
}

/// The `initialize` result a handshake-era client gets for a stateless server, made from its
/// `DiscoverResult` (server info, capabilities, instructions).
pub fn initialize_result(discover: &RawValue, version: &str) -> String {
    let members = object_members(discover.get()).unwrap_or_default();
    let mut out = String::with_capacity(discover.get().len() + 64);
    out.push_str("{\"protocolVersion\":");
    push_json_str(&mut out, version);
    copy_members(&mut out, &members, &["capabilities", "serverInfo", "instructions", "_meta"]);
    if !members.iter().any(|(k, _)| k == "serverInfo") {
        // The final schema has it in `_meta`.
        let in_meta =
            members.iter().find(|(k, _)| k == "_meta").and_then(|(_, m)| object_members(m.get())).and_then(
                |m| m.into_iter().find(|(k, _)| k == META_SERVER_INFO).map(|(_, v)| v.get().to_owned()),
            );
        out.push_str(",\"serverInfo\":");
        out.push_str(in_meta.as_deref().unwrap_or("{\"name\":\"unknown\",\"version\":\"0\"}"));
    }
    out.push('}');
    out
}

/// The `_meta` members a bridged request carries for the client (J-11).
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    /// The stateless revision spoken upstream.
    pub version: String,
    /// The client's capabilities from its `initialize`, raw JSON (`{}` when it gave none).
    pub capabilities: String,
    /// The client's `clientInfo`, raw JSON, if it gave one.
    pub info: Option<String>,
    /// The level of its last `logging/setLevel`, if any.
    pub log_level: Option<String>,
}

impl ClientMeta {
    /// From the params of the client's `initialize`.
    pub fn from_initialize(params: Option<&RawValue>, version: &str) -> ClientMeta {
        let members = params.and_then(|p| object_members(p.get())).unwrap_or_default();
        let get = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| v.get().to_owned());
        ClientMeta {
            version: version.to_owned(),
            capabilities: get("capabilities").filter(|c| c.starts_with('{')).unwrap_or_else(|| "{}".into()),
            info: get("clientInfo").filter(|c| c.starts_with('{')),
            log_level: None,
        }
    }
}

impl ClientMeta {
    /// From a stateless-era request's `_meta` (its capabilities and info, J-11).
    pub fn from_meta(meta: Option<&RawValue>, version: &str) -> ClientMeta {
        let members = meta.and_then(|m| object_members(m.get())).unwrap_or_default();
        let get = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| v.get().to_owned());
        ClientMeta {
            version: version.to_owned(),
            capabilities: get(META_CAPABILITIES)
                .filter(|c| c.starts_with('{'))
                .unwrap_or_else(|| "{}".into()),
            info: get(META_CLIENT_INFO).filter(|c| c.starts_with('{')),
            log_level: None,
        }
    }
}

/// The `DiscoverResult` a stateless-era client gets for a handshake-era server, made from its
/// `initialize` result (server info, capabilities, instructions).
pub fn discover_result(initialize: &RawValue) -> String {
    let members = object_members(initialize.get()).unwrap_or_default();
    let mut out = String::from("{\"resultType\":\"complete\",\"supportedVersions\":[");
    push_json_str(&mut out, FIRST_MODERN);
    // Not cacheable: the answer is the sidecar's, made per process.
    out.push_str("],\"ttlMs\":0,\"cacheScope\":\"private\"");
    copy_members(&mut out, &members, &["capabilities", "serverInfo", "instructions"]);
    let server_info = members.iter().find(|(k, _)| k == "serverInfo").map(|(_, v)| v.get());
    // The final 2026-07-28 schema carries the server's info in `_meta` (the drafts, top level).
    if let Some(info) = server_info {
        out.push_str(",\"_meta\":{");
        push_json_str(&mut out, META_SERVER_INFO);
        out.push(':');
        out.push_str(info);
        out.push('}');
    }
    out.push('}');
    out
}

/// A handshake-era server's `result` for `method`, made a valid 2026-07-28 result for a
/// stateless-era client (issue 20): every result carries `resultType` (T-31), and the cacheable
/// ones (the lists, `resources/read`) `ttlMs` and `cacheScope` too, which the schema requires:
/// `0` and `"private"` when the server said nothing, since a handshake-era server promises no
/// freshness. Members are added in front; the server's bytes follow unchanged. `None`: nothing to
/// add (or not an object, left as it is).
pub fn stateless_result(method: &str, result: &RawValue) -> Option<String> {
    let members = object_members(result.get())?;
    let has = |name: &str| members.iter().any(|(k, _)| k == name);
    let cacheable = matches!(
        method,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" | "resources/read"
    );
    let mut added = String::new();
    for (name, value, needed) in [
        ("resultType", "\"complete\"", true),
        ("ttlMs", "0", cacheable),
        ("cacheScope", "\"private\"", cacheable),
    ] {
        if needed && !has(name) {
            added.push_str(&format!("\"{name}\":{value},"));
        }
    }
    if added.is_empty() {
        return None;
    }
    let text = result.get().trim_start();
    let rest = text.strip_prefix('{')?;
    if members.is_empty() {
        added.pop();
    }
    Some(format!("{{{added}{rest}"))
}

/// The `input_required` result that stands for the server requests `questions` (whole
/// JSON-RPC requests): each under its id's raw text as key, and `state` (a JSON string) to echo.
pub fn input_required_result(questions: &[bytes::Bytes], state: &str) -> String {
    #[derive(Deserialize)]
    struct Question<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
        #[serde(borrow)]
        method: Cow<'a, str>,
        #[serde(default, borrow)]
        params: Option<&'a RawValue>,
    }
    let mut out = String::from("{\"resultType\":\"input_required\",\"inputRequests\":{");
    let mut first = true;
    for q in questions {
        let Ok(q) = serde_json::from_slice::<Question<'_>>(q) else { continue };
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        push_json_str(&mut out, q.id.get());
        out.push_str(":{\"method\":");
        push_json_str(&mut out, &q.method);
        if let Some(params) = q.params {
            out.push_str(",\"params\":");
            out.push_str(params.get());
        }
        out.push('}');
    }
    out.push_str("},\"requestState\":");
    out.push_str(state);
    out.push('}');
    out
}

/// One request a stateless server needs answered before it can finish (T-31).
#[derive(Debug)]
pub struct InputRequest {
    /// Its key in `inputRequests`, which its answer carries in `inputResponses`.
    pub key: String,
    /// `sampling/createMessage`, `elicitation/create`, `roots/list`.
    pub method: String,
    /// Its params, raw.
    pub params: Option<Box<RawValue>>,
}

/// An `input_required` result: what the server asks, and the state to echo byte for byte.
#[derive(Debug)]
pub struct InputRequired {
    pub requests: Vec<InputRequest>,
    /// `requestState`, exactly as sent (a JSON string), if the server sent one.
    pub state: Option<Box<RawValue>>,
}

/// Reads a result: `Some` when its `resultType` is `input_required` (an absent `resultType` is
/// `complete`, T-31), with the requests it carries.
pub fn input_required(result: &RawValue) -> Option<InputRequired> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(default, borrow, rename = "resultType")]
        result_type: Option<Cow<'a, str>>,
        #[serde(default, borrow, rename = "inputRequests")]
        input_requests: Option<&'a RawValue>,
        #[serde(default, borrow, rename = "requestState")]
        request_state: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        method: Cow<'a, str>,
        #[serde(default, borrow)]
        params: Option<&'a RawValue>,
    }
    let head: Head<'_> = serde_json::from_str(result.get()).ok()?;
    if head.result_type.as_deref() != Some("input_required") {
        return None;
    }
    let mut requests = Vec::new();
    for (key, raw) in head.input_requests.and_then(|r| object_members(r.get())).unwrap_or_default() {
        let Ok(request) = serde_json::from_str::<Request<'_>>(raw.get()) else { continue };
        requests.push(InputRequest {
            key: key.into_owned(),
            method: request.method.into_owned(),
            params: request.params.map(RawValue::to_owned),
        });
    }
    let state = head.request_state.filter(|s| s.get() != "null").map(RawValue::to_owned);
    Some(InputRequired { requests, state })
}

/// What to add to a request's params when the bridge sends it upstream.
#[derive(Debug, Default)]
pub struct Additions<'a> {
    /// The per-request `_meta` (stateless era); `None` strips the stateless keys instead.
    pub meta: Option<&'a ClientMeta>,
    /// The answers of an MRTR round, `key` → raw result.
    pub input_responses: Option<&'a [(String, Box<RawValue>)]>,
    /// `requestState` to echo.
    pub state: Option<&'a RawValue>,
}

/// Rewrites a client request for upstream: a new `id`, the same method, params with the
/// client's own members unchanged (byte for byte, in order) and the bridge's members set.
pub fn rewrite_request(
    method: &str,
    params: Option<&RawValue>,
    id: &str,
    add: &Additions<'_>,
) -> Result<String, serde_json::Error> {
    let members = match params {
        Some(p) => object_members(p.get()).ok_or_else(not_an_object)?,
        None => Vec::new(),
    };
    let mut out = String::with_capacity(params.map_or(0, |p| p.get().len()) + 256);
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    push_json_str(&mut out, id);
    out.push_str(",\"method\":");
    push_json_str(&mut out, method);
    out.push_str(",\"params\":{");
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    let client_meta = members.iter().find(|(k, _)| k == "_meta").map(|(_, v)| *v);
    let meta = merged_meta(client_meta, add.meta)?;
    if let Some(meta) = &meta {
        sep(&mut out);
        out.push_str("\"_meta\":");
        out.push_str(meta);
    }
    for (key, value) in &members {
        if matches!(key.as_ref(), "_meta" | "inputResponses" | "requestState") {
            continue;
        }
        sep(&mut out);
        push_json_str(&mut out, key);
        out.push(':');
        out.push_str(value.get());
    }
    if let Some(responses) = add.input_responses {
        sep(&mut out);
        out.push_str("\"inputResponses\":{");
        for (i, (key, value)) in responses.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, key);
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
    }
    if let Some(state) = add.state {
        sep(&mut out);
        out.push_str("\"requestState\":");
        out.push_str(state.get());
    }
    out.push_str("}}");
    Ok(out)
}

/// The `_meta` of a bridged request: the client's own members, then the bridge's (which replace
/// any of the client's with the same key); with no bridge meta, the client's without the
/// stateless-era keys. `None` when there is nothing to send.
fn merged_meta(
    client: Option<&RawValue>,
    ours: Option<&ClientMeta>,
) -> Result<Option<String>, serde_json::Error> {
    let members = match client {
        Some(m) if m.get() != "null" => object_members(m.get()).ok_or_else(not_an_object)?,
        _ => Vec::new(),
    };
    let ours_keys = [META_VERSION, META_CAPABILITIES, META_CLIENT_INFO, META_LOG_LEVEL];
    let mut out = String::from("{");
    let mut n = 0;
    for (key, value) in &members {
        if ours_keys.contains(&key.as_ref()) {
            continue;
        }
        if n > 0 {
            out.push(',');
        }
        n += 1;
        push_json_str(&mut out, key);
        out.push(':');
        out.push_str(value.get());
    }
    if let Some(ours) = ours {
        let mut push = |key: &str, raw: &str| {
            if n > 0 {
                out.push(',');
            }
            n += 1;
            push_json_str(&mut out, key);
            out.push(':');
            out.push_str(raw);
        };
        let mut version = String::new();
        push_json_str(&mut version, &ours.version);
        push(META_VERSION, &version);
        push(META_CAPABILITIES, &ours.capabilities);
        if let Some(info) = &ours.info {
            push(META_CLIENT_INFO, info);
        }
        if let Some(level) = &ours.log_level {
            let mut raw = String::new();
            push_json_str(&mut raw, level);
            push(META_LOG_LEVEL, &raw);
        }
    }
    out.push('}');
    Ok((n > 0).then_some(out))
}

/// A response to the client under its own id, with the server's `result` or `error` unchanged.
pub fn response_with_id(id: &RawValue, member: &str, value: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + id.get().len() + value.get().len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.get().as_bytes());
    out.push(b'}');
    out
}

/// A request to the client (the handshake-era form of one `inputRequests` entry).
pub fn client_request(id: &str, method: &str, params: Option<&RawValue>) -> Vec<u8> {
    let mut out = String::with_capacity(64 + params.map_or(0, |p| p.get().len()));
    out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
    push_json_str(&mut out, id);
    out.push_str(",\"method\":");
    push_json_str(&mut out, method);
    if let Some(params) = params {
        out.push_str(",\"params\":");
        out.push_str(params.get());
    }
    out.push('}');
    out.into_bytes()
}

/// The members of a JSON object in their order, values raw; `None` if `raw` is not an object.
pub fn object_members(raw: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);
    impl<'de> Deserialize<'de> for Members<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Members<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::new();
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        let value: &'de RawValue = map.next_value()?;
                        // A repeated key: the last one wins, as in every JSON parser we talk to.
                        out.retain(|(k, _): &(Cow<'de, str>, &RawValue)| *k != key);
                        out.push((key, value));
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Members<'_>>(raw).ok().map(|m| m.0)
}

fn not_an_object() -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom("params must be a JSON object")
}

/// Appends `,"key":value` for each of `members` named in `keys`, in their order, and an empty
/// `capabilities` if there was none (both results require it).
fn copy_members(out: &mut String, members: &[(Cow<'_, str>, &RawValue)], keys: &[&str]) {
    for (key, value) in members {
        if keys.contains(&key.as_ref()) {
            out.push(',');
            push_json_str(out, key);
            out.push(':');
            out.push_str(value.get());
        }
    }
    if !members.iter().any(|(k, _)| k == "capabilities") {
        out.push_str(",\"capabilities\":{}");
    }
}

/// Appends `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// The era of each server (its MCP endpoint URL; T-62 caches per origin, but two endpoints of
/// one host may differ), remembered in `eras/<hash>.json` under the state dir for
/// [`ERA_LIFETIME`], so that a server is not probed at every start.
#[derive(Debug, Clone)]
pub struct EraCache {
    path: PathBuf,
}

impl EraCache {
    /// The cache entry of the server at `url` under `state_dir`.
    pub fn new(state_dir: &Path, url: &str) -> EraCache {
        // "era2": what is remembered changed with issue 20 (a refusal, no longer a mere
        // DiscoverResult), so memories written before are not read.
        let name = crate::statedir::state_name(url, "era2");
        EraCache { path: state_dir.join("eras").join(format!("{name}.json")) }
    }

    /// The era remembered and still fresh at `now`. A file that cannot be read, says something
    /// else, or is from the future counts as nothing remembered.
    pub fn load(&self, now: SystemTime) -> Option<Era> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let (tag, at) = text.trim().split_once(' ')?;
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(at.parse().ok()?))?;
        let age = now.duration_since(at).ok()?;
        if age > ERA_LIFETIME {
            return None;
        }
        [Era::Handshake, Era::Stateless, Era::Both].into_iter().find(|e| e.tag() == tag)
    }

    /// Remembers `era` as seen at `now`.
    pub fn store(&self, era: Era, now: SystemTime) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::statedir::create_private_dir(dir)?;
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, format!("{} {secs}\n", era.tag()))?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Forgets the origin's era (after a server changed era under us).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t31_results_of_a_handshake_server_become_valid_stateless_results() {
        let call = raw(r#"{"content":[{"type":"text","text":"é"}],"isError":false}"#);
        assert_eq!(
            stateless_result("tools/call", &call).unwrap(),
            r#"{"resultType":"complete","content":[{"type":"text","text":"é"}],"isError":false}"#
        );
        assert_eq!(stateless_result("ping", &raw("{}")).unwrap(), r#"{"resultType":"complete"}"#);
        assert_eq!(
            stateless_result("tools/list", &raw(r#"{"tools":[]}"#)).unwrap(),
            r#"{"resultType":"complete","ttlMs":0,"cacheScope":"private","tools":[]}"#
        );
        // What the server said stays: nothing is added twice, nothing is rewritten.
        let list = raw(r#"{"resultType":"complete","tools":[],"ttlMs":5,"cacheScope":"public"}"#);
        assert_eq!(stateless_result("tools/list", &list), None);
        assert_eq!(
            stateless_result("resources/read", &raw(r#"{"contents":[],"ttlMs":9}"#)).unwrap(),
            r#"{"resultType":"complete","cacheScope":"private","contents":[],"ttlMs":9}"#
        );
        assert_eq!(stateless_result("tools/call", &raw("[1]")), None);
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn the_first_message_tells_the_clients_era() {
        assert_eq!(client_era("initialize", None), Some(Era::Handshake));
        assert_eq!(client_era("server/discover", None), Some(Era::Stateless));
        assert_eq!(client_era("tools/list", Some("2026-07-28")), Some(Era::Stateless));
        assert_eq!(client_era("tools/list", Some("2025-06-18")), None);
        assert_eq!(client_era("ping", None), None);
    }

    #[test]
    fn t62_a_discover_result_or_a_modern_error_means_stateless_anything_else_handshake() {
        let ok =
            br#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2026-07-28"],"capabilities":{}}}"#;
        assert!(matches!(probe_verdict(ok), Verdict::Stateless(_)));
        let both = br#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2025-06-18","2026-07-28"]}}"#;
        assert!(matches!(probe_verdict(both), Verdict::Both));
        let retry = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2027-01-01","2026-07-28"],"requested":"2026-07-28"}}}"#;
        assert!(matches!(probe_verdict(retry), Verdict::RetryWith(v) if v == "2026-07-28"));
        let nothing_we_speak = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2099-01-01"]}}}"#;
        assert!(matches!(probe_verdict(nothing_we_speak), Verdict::Handshake));
        let old = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: Server not initialized"}}"#;
        assert!(matches!(probe_verdict(old), Verdict::Handshake));
        // A lenient old server that answers any method with `{}` is not stateless (S-09: the
        // fallback is not keyed to one error code).
        assert!(matches!(probe_verdict(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), Verdict::Handshake));
        assert!(matches!(probe_verdict(b"<html>"), Verdict::Handshake));
    }

    #[test]
    fn the_local_initialize_answer_comes_from_discover() {
        let discover = raw(
            r#"{"resultType":"complete","supportedVersions":["2026-07-28"],"capabilities":{"tools":{"listChanged":true}},"serverInfo":{"name":"s","version":"2"},"instructions":"be nice","ttlMs":5}"#,
        );
        let init: serde_json::Value =
            serde_json::from_str(&initialize_result(&discover, negotiated_legacy(Some("2025-06-18"))))
                .unwrap();
        assert_eq!(
            init,
            serde_json::json!({"protocolVersion":"2025-06-18","capabilities":{"tools":{"listChanged":true}},
                "serverInfo":{"name":"s","version":"2"},"instructions":"be nice"})
        );
        assert_eq!(negotiated_legacy(Some("2026-07-28")), LATEST_LEGACY);
        assert_eq!(negotiated_legacy(Some("1999-01-01")), LATEST_LEGACY);
        assert_eq!(negotiated_legacy(None), LATEST_LEGACY);
        let bare: serde_json::Value =
            serde_json::from_str(&initialize_result(&raw(r#"{"supportedVersions":[]}"#), "2025-11-25"))
                .unwrap();
        assert_eq!(bare["capabilities"], serde_json::json!({}));
        assert_eq!(bare["serverInfo"]["name"], "unknown");
        let in_meta = raw(
            r#"{"supportedVersions":["2026-07-28"],"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"m","version":"1"}}}"#,
        );
        let init: serde_json::Value =
            serde_json::from_str(&initialize_result(&in_meta, "2025-11-25")).unwrap();
        assert_eq!(init["serverInfo"]["name"], "m");
    }

    #[test]
    fn j11_meta_is_added_and_the_clients_members_are_kept_byte_for_byte() {
        let meta = ClientMeta::from_initialize(
            Some(&raw(
                r#"{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}"#,
            )),
            "2026-07-28",
        );
        let params = raw(
            r#"{"name":"t","arguments":{"n":123456789012345678901234567890,"z":1,"a":2.50},"_meta":{"progressToken":7}}"#,
        );
        let out = rewrite_request(
            "tools/call",
            Some(&params),
            "b-1",
            &Additions { meta: Some(&meta), ..Default::default() },
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":"b-1","method":"tools/call","params":{"_meta":{"progressToken":7,"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{}},"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"}},"name":"t","arguments":{"n":123456789012345678901234567890,"z":1,"a":2.50}}}"#
        );
        // No params at all: `_meta` alone.
        let out = rewrite_request(
            "tools/list",
            None,
            "b-2",
            &Additions { meta: Some(&meta), ..Default::default() },
        )
        .unwrap();
        assert!(
            out.contains(r#""params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28""#),
            "{out}"
        );
        // Stripping for a handshake server: the stateless keys go, the rest stays.
        let params = raw(
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":"p"},"cursor":"c"}"#,
        );
        let out = rewrite_request("tools/list", Some(&params), "7", &Additions::default()).unwrap();
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":"7","method":"tools/list","params":{"_meta":{"progressToken":"p"},"cursor":"c"}}"#
        );
        assert!(rewrite_request("tools/list", Some(&raw("[1]")), "1", &Additions::default()).is_err());
    }

    #[test]
    fn t31_input_required_is_read_and_the_retry_echoes_the_state_exactly() {
        let result = raw(
            r#"{"resultType":"input_required","inputRequests":{"confirm":{"method":"elicitation/create","params":{"message":"ok?"}},"r":{"method":"roots/list"}},"requestState":"{\"nonce\":\"\u00e9\"}"}"#,
        );
        let ir = input_required(&result).unwrap();
        assert_eq!(ir.requests.len(), 2);
        assert_eq!(ir.requests[0].key, "confirm");
        assert_eq!(ir.requests[0].method, "elicitation/create");
        assert!(ir.requests[1].params.is_none());
        let state = ir.state.unwrap();
        assert_eq!(state.get(), r#""{\"nonce\":\"\u00e9\"}""#);
        let answers = vec![("confirm".to_owned(), raw(r#"{"action":"accept"}"#))];
        let params = raw(r#"{"name":"t","inputResponses":{"old":{}},"requestState":"stale"}"#);
        let out = rewrite_request(
            "tools/call",
            Some(&params),
            "b-9",
            &Additions { meta: None, input_responses: Some(&answers), state: Some(&state) },
        )
        .unwrap();
        assert!(out.ends_with(r#""name":"t","inputResponses":{"confirm":{"action":"accept"}},"requestState":"{\"nonce\":\"\u00e9\"}"}}"#), "{out}");
        // Absent resultType is complete; so is anything but input_required.
        assert!(input_required(&raw(r#"{"content":[]}"#)).is_none());
        assert!(input_required(&raw(r#"{"resultType":"complete"}"#)).is_none());
        assert!(
            input_required(&raw(r#"{"resultType":"input_required","inputRequests":{}}"#))
                .unwrap()
                .state
                .is_none()
        );
    }

    #[test]
    fn the_reverse_bridge_turns_server_requests_into_input_required_and_initialize_into_discover() {
        let questions = [
            bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":0,"method":"roots/list"}"#),
            bytes::Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":"e-1","method":"elicitation/create","params":{"message":"?"}}"#,
            ),
        ];
        let result: serde_json::Value =
            serde_json::from_str(&input_required_result(&questions, r#""tok""#)).unwrap();
        assert_eq!(
            result,
            serde_json::json!({"resultType":"input_required","requestState":"tok","inputRequests":{
                "0":{"method":"roots/list"},"\"e-1\"":{"method":"elicitation/create","params":{"message":"?"}}}})
        );
        // The keys are the ids' raw text, so the answers go back under the same ids.
        assert!(RawValue::from_string("\"e-1\"".to_owned()).is_ok());
        let discover: serde_json::Value = serde_json::from_str(&discover_result(&raw(
            r#"{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"old","version":"1"}}"#,
        )))
        .unwrap();
        assert_eq!(
            discover,
            serde_json::json!({"resultType":"complete","supportedVersions":["2026-07-28"],"ttlMs":0,"cacheScope":"private",
                "capabilities":{"tools":{}},"serverInfo":{"name":"old","version":"1"},
                "_meta":{"io.modelcontextprotocol/serverInfo":{"name":"old","version":"1"}}})
        );
        let meta = ClientMeta::from_meta(
            Some(&raw(
                r#"{"io.modelcontextprotocol/clientCapabilities":{"roots":{}},"io.modelcontextprotocol/clientInfo":{"name":"n","version":"2"}}"#,
            )),
            FIRST_MODERN,
        );
        assert_eq!(meta.capabilities, r#"{"roots":{}}"#);
        assert_eq!(meta.info.as_deref(), Some(r#"{"name":"n","version":"2"}"#));
    }

    #[test]
    fn the_era_cache_expires_and_ignores_junk() {
        let dir = std::env::temp_dir().join(format!("era-cache-{}", std::process::id()));
        let cache = EraCache::new(&dir, "https://example.com");
        let now = SystemTime::now();
        assert_eq!(cache.load(now), None);
        cache.store(Era::Handshake, now).unwrap();
        assert_eq!(cache.load(now), Some(Era::Handshake));
        assert_eq!(cache.load(now + ERA_LIFETIME + Duration::from_secs(1)), None);
        // From the future (a clock set back), or junk: nothing remembered.
        assert_eq!(cache.load(now - Duration::from_secs(10)), None);
        std::fs::write(&cache.path, "stateless 99999999999999999999").unwrap();
        assert_eq!(cache.load(now), None);
        cache.store(Era::Stateless, now).unwrap();
        assert_eq!(cache.load(now), Some(Era::Stateless));
        cache.forget();
        assert_eq!(cache.load(now), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
