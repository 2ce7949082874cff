//! The JSON-RPC envelope: what the proxy reads of a message, and the errors it makes itself.
//!
//! A message is parsed once into a borrowed [`Envelope`] (id, method, params as raw JSON) so that
//! the original bytes can be forwarded untouched (J-01, J-11): ids keep their type and digits,
//! unknown members survive, escapes are not rewritten. This module never re-serializes a message
//! it did not create; the only messages it builds are the proxy's own error responses, and those
//! carry the request's id byte for byte and `data.source = "mcp-sidecar"` so that they cannot be
//! mistaken for the server's (T-41).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// JSON-RPC parse error (J-05).
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC invalid request (J-05).
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC invalid params: the spec's answer to a call of an unknown tool.
pub const INVALID_PARAMS: i64 = -32602;
/// Local error codes live in the implementation-defined range -32000..=-32019 (T-41).
/// The server could not be reached, or answered with an HTTP error we could not pass on.
pub const UPSTREAM_ERROR: i64 = -32000;
/// The request got no answer within `--request-timeout` (the TS SDK uses the same code).
pub const REQUEST_TIMEOUT: i64 = -32001;
/// The server rejected the credentials (401) or their scope (403).
pub const AUTH_ERROR: i64 = -32003;
/// The rate limit keeps the request from going through within `--max-wait` or `--max-retries`.
pub const RATE_LIMITED: i64 = -32004;
/// The proxy is shutting down and the request could not finish.
pub const SHUTTING_DOWN: i64 = -32005;
/// The requests in flight already hold as many bytes as mcp-sidecar keeps (issue 10.15).
pub const OVERLOADED: i64 = -32006;
/// A `tools/list` in which `--tool-prefix` or `--rename-tool` would list two tools under one
/// name (issue 24.2): the list is refused rather than make one of them uncallable.
pub const NAME_COLLISION: i64 = -32007;
/// A call of a tool `--pin-tools` holds: it changed, or is new, since the tools were pinned
/// (issue 24.3).
pub const TOOL_HELD: i64 = -32008;

/// The members of a JSON-RPC message the proxy needs, borrowed from the message's bytes.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// `jsonrpc`, which must be "2.0".
    #[serde(default, borrow)]
    pub jsonrpc: Option<Cow<'a, str>>,
    /// The id exactly as written, `null` included (`Some("null")`).
    #[serde(default, borrow, deserialize_with = "raw_present")]
    pub id: Option<&'a RawValue>,
    /// The method of a request or notification.
    #[serde(default, borrow)]
    pub method: Option<Cow<'a, str>>,
    /// The params, unparsed.
    #[serde(default, borrow)]
    pub params: Option<&'a RawValue>,
    /// The result of a success response, unparsed.
    #[serde(default, borrow, deserialize_with = "raw_present")]
    pub result: Option<&'a RawValue>,
    /// The error of an error response, unparsed.
    #[serde(default, borrow, deserialize_with = "raw_present")]
    pub error: Option<&'a RawValue>,
}

/// Keeps a member that is present but `null` as `Some("null")`, unlike `Option`'s default.
fn raw_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What kind of message an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has a method and an id: expects exactly one response.
    Request,
    /// Has a method and no id: expects nothing.
    Notification,
    /// Has an id and a result or an error, no method.
    Response,
}

/// Why a parsed JSON value is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("\"jsonrpc\" must be \"2.0\"")]
    Version,
    #[error("the id must be a string or an integer")]
    IdType,
    #[error("a message needs a \"method\", or an \"id\" with a \"result\" or an \"error\"")]
    Shape,
}

impl<'a> Envelope<'a> {
    /// Parses the envelope of one JSON object. Fails on invalid JSON or a non-object.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Classifies the message, checking the JSON-RPC 2.0 and MCP rules the proxy relies on.
    pub fn kind(&self) -> Result<Kind, InvalidMessage> {
        if self.jsonrpc.as_deref() != Some("2.0") {
            return Err(InvalidMessage::Version);
        }
        match (&self.method, self.id) {
            (Some(_), None) => Ok(Kind::Notification),
            (Some(_), Some(id)) if is_request_id(id) => Ok(Kind::Request),
            (Some(_), Some(_)) => Err(InvalidMessage::IdType),
            (None, Some(_)) if self.result.is_some() != self.error.is_some() => Ok(Kind::Response),
            (None, _) => Err(InvalidMessage::Shape),
        }
    }

    /// The key that matches this message's id with the id of its request or response.
    pub fn id_key(&self) -> Option<IdKey> {
        self.id.and_then(IdKey::new)
    }

    /// Parses the params members the proxy looks at (name, uri, `_meta`). Cheap: the rest is skipped.
    pub fn params(&self) -> Params<'a> {
        self.params.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or_default()
    }
}

/// MCP request ids are strings or integers, never null (J-01).
fn is_request_id(id: &RawValue) -> bool {
    let s = id.get();
    match s.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => !s.contains(['.', 'e', 'E']),
        _ => false,
    }
}

/// The params members that decide HTTP headers and timeouts.
#[derive(Debug, Default, Deserialize)]
pub struct Params<'a> {
    /// `params.name` (tools/call, prompts/get).
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    /// `params.uri` (resources/read).
    #[serde(default, borrow)]
    pub uri: Option<Cow<'a, str>>,
    /// `params._meta`.
    #[serde(default, borrow, rename = "_meta")]
    pub meta: Option<Meta<'a>>,
    /// `params.requestId` of `notifications/cancelled`.
    #[serde(default, borrow, rename = "requestId")]
    pub request_id: Option<&'a RawValue>,
    /// `params.taskId` (tasks/*).
    #[serde(default, borrow, rename = "taskId")]
    pub task_id: Option<Cow<'a, str>>,
    /// `params.arguments` of `tools/call`, unparsed.
    #[serde(default, borrow)]
    pub arguments: Option<&'a RawValue>,
    /// `params.cursor` of list requests, unparsed.
    #[serde(default, borrow)]
    pub cursor: Option<&'a RawValue>,
    /// `params.protocolVersion` of `initialize` requests and results.
    #[serde(default, borrow, rename = "protocolVersion")]
    pub protocol_version: Option<Cow<'a, str>>,
}

/// The `_meta` members the proxy reads.
#[derive(Debug, Default, Deserialize)]
pub struct Meta<'a> {
    /// The per-request protocol version of the 2026-07-28 era (T-13, J-11).
    #[serde(default, borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    pub protocol_version: Option<Cow<'a, str>>,
    /// The progress token of a request that opted into progress (J-09).
    #[serde(default, borrow, rename = "progressToken")]
    pub progress_token: Option<&'a RawValue>,
}

/// A request id normalized for matching: `"a"` and `"\u0061"` are the same id, `1` and `"1"` are not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdKey {
    /// A string id, unescaped.
    Str(String),
    /// An integer id, as its digits.
    Num(String),
}

impl IdKey {
    /// The key of a raw id, or `None` for ids that are neither strings nor integers.
    pub fn new(id: &RawValue) -> Option<Self> {
        let s = id.get();
        match s.as_bytes().first()? {
            b'"' => serde_json::from_str::<String>(s).ok().map(IdKey::Str),
            _ if is_request_id(id) => Some(IdKey::Num(s.to_owned())),
            _ => None,
        }
    }
}

/// Where a locally made error came from, for `data.kind` (stable, for scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    InvalidRequest,
    MessageTooLarge,
    AuthRejected,
    Forbidden,
    WrongEndpoint,
    Redirect,
    ServerError,
    HttpError,
    Unreachable,
    Timeout,
    BadResponse,
    StreamEnded,
    ShuttingDown,
    RateLimited,
    Overloaded,
    /// The client refused a request the server needed answered (the era bridge, T-31).
    InputRefused,
    /// A call of a tool a filter hides (issue 24.1).
    HiddenTool,
    /// Two tools would be listed under one name (issue 24.2).
    NameCollision,
    /// A call of a tool held since it changed (issue 24.3).
    ToolHeld,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MessageTooLarge => "message_too_large",
            ErrorKind::AuthRejected => "auth_rejected",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::WrongEndpoint => "wrong_endpoint",
            ErrorKind::Redirect => "redirect",
            ErrorKind::ServerError => "server_error",
            ErrorKind::HttpError => "http_error",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::StreamEnded => "stream_ended",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::InputRefused => "input_refused",
            ErrorKind::HiddenTool => "hidden_tool",
            ErrorKind::NameCollision => "name_collision",
            ErrorKind::ToolHeld => "tool_held",
        }
    }
}

/// An error response made by the proxy.
#[derive(Debug, Clone)]
pub struct LocalError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What happened and what to do, in one or two sentences.
    pub message: String,
    /// `data.kind`.
    pub kind: ErrorKind,
    /// `data.httpStatus`, when the server answered with one.
    pub http_status: Option<u16>,
    /// `data.requestSent`: false when the request provably never reached the server.
    pub request_sent: Option<bool>,
    /// `data.serverBody`: the server's error body, when it had one (JSON, or text cut short).
    pub server_body: Option<serde_json::Value>,
    /// `data.retryAfterSeconds`: when the rate limit resets, if known.
    pub retry_after: Option<std::time::Duration>,
    /// `data.rateLimitHeaders`: the rate-limit headers seen.
    pub rate_limit_headers: Vec<(String, String)>,
    /// Not said on the wire: a failure that trying again will not mend (TLS: a certificate
    /// refused or untrusted), which no answer kept from a bad minute may hide (issue 24.5).
    pub lasting: bool,
}

impl LocalError {
    /// An error with just a code, kind and message.
    pub fn new(code: i64, kind: ErrorKind, message: impl Into<String>) -> Self {
        LocalError {
            code,
            message: message.into(),
            kind,
            http_status: None,
            request_sent: None,
            server_body: None,
            retry_after: None,
            rate_limit_headers: Vec::new(),
            lasting: false,
        }
    }

    /// Whether what was kept from the server may answer instead (issue 24.5): it cannot
    /// answer now (rate-limited, unreachable), for a reason that may pass.
    pub fn passing(&self) -> bool {
        matches!(self.kind, ErrorKind::RateLimited | ErrorKind::Unreachable) && !self.lasting
    }

    /// The complete error response for `id` (raw JSON, `null` when unknown), without a newline.
    pub fn to_response(&self, id: Option<&RawValue>) -> Vec<u8> {
        let mut data = serde_json::Map::new();
        data.insert("source".into(), "mcp-sidecar".into());
        data.insert("kind".into(), self.kind.as_str().into());
        if let Some(status) = self.http_status {
            data.insert("httpStatus".into(), status.into());
        }
        if let Some(sent) = self.request_sent {
            data.insert("requestSent".into(), sent.into());
        }
        if let Some(body) = &self.server_body {
            data.insert("serverBody".into(), body.clone());
        }
        if let Some(wait) = self.retry_after {
            data.insert("retryAfterSeconds".into(), wait.as_secs_f64().ceil().min(u64::MAX as f64).into());
        }
        if !self.rate_limit_headers.is_empty() {
            let headers: serde_json::Map<_, _> =
                self.rate_limit_headers.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
            data.insert("rateLimitHeaders".into(), headers.into());
        }
        // Issue 10.9: no secret the process holds, whatever a server echoed into the text.
        let error = crate::secrets::redact_json(serde_json::json!({
            "code": self.code,
            "message": self.message,
            "data": data,
        }));
        let id = id.map_or("null", RawValue::get);
        let mut out = Vec::with_capacity(64 + self.message.len());
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b",\"error\":");
        // Serializing a Value we built cannot fail.
        out.extend_from_slice(serde_json::to_string(&error).unwrap_or_default().as_bytes());
        out.push(b'}');
        out
    }
}

/// Builds `{"jsonrpc":"2.0","id":<id>,"error":<error>}` from raw parts, for the server's id-less
/// JSON-RPC errors that must reach the client with the request's id (T-40).
pub fn error_with_id(id: &RawValue, error: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + id.get().len() + error.get().len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(error.get().as_bytes());
    out.push(b'}');
    out
}

/// Makes a *valid* JSON text fit on one stdout line without changing its meaning: a raw CR or LF
/// can only be insignificant whitespace in valid JSON (inside strings they must be escaped), so
/// each becomes a space. SSE joins multi-line `data` with LF, and servers may pretty-print (S-02).
/// Validate first: on invalid JSON (a raw line break inside a string) this would alter content.
pub fn flatten_lines(bytes: &mut [u8]) {
    let mut start = 0;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
        bytes[start + i] = b' ';
        start += i + 1;
    }
}

/// A valid JSON text on one line: its CR/LF can only be whitespace, so they become spaces (S-02).
pub fn one_line(bytes: bytes::Bytes) -> bytes::Bytes {
    if memchr::memchr2(b'\n', b'\r', &bytes).is_none() {
        return bytes;
    }
    let mut owned = bytes.to_vec();
    flatten_lines(&mut owned);
    owned.into()
}

/// Scans the start of an over-long line for a top-level `"id"` so that even a message the proxy
/// refuses to read whole gets its error with the right id. Returns the id's raw text.
///
/// Only members before the id need to be complete in `prefix`; serializers usually put
/// `jsonrpc` and `id` first.
pub fn sniff_id(prefix: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => text,
        // The prefix may end inside a multi-byte character.
        Err(e) => std::str::from_utf8(&prefix[..e.valid_up_to()]).ok()?,
    };
    let mut pos = skip_ws(text, 0);
    text[pos..].starts_with('{').then_some(())?;
    pos += 1;
    loop {
        pos = skip_ws(text, pos);
        let (key, end) = next_value::<String>(text, pos)?;
        pos = skip_ws(text, end);
        text[pos..].starts_with(':').then_some(())?;
        pos = skip_ws(text, pos + 1);
        let (value, end) = next_value::<&RawValue>(text, pos)?;
        if end >= text.len() {
            // A number at the very end of the prefix may have been cut short.
            return None;
        }
        if key == "id" {
            return is_request_id(value).then(|| value.get().to_owned());
        }
        pos = skip_ws(text, end);
        text[pos..].starts_with(',').then_some(())?;
        pos += 1;
    }
}

fn skip_ws(text: &str, pos: usize) -> usize {
    pos + (text[pos..].len() - text[pos..].trim_start().len())
}

/// Parses one JSON value starting at `pos`; returns it and the offset just past it.
fn next_value<'a, T: Deserialize<'a>>(text: &'a str, pos: usize) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, pos + values.byte_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> Result<Kind, InvalidMessage> {
        Envelope::parse(s.as_bytes()).unwrap().kind()
    }

    #[test]
    fn j01_classifies_requests_notifications_and_responses() {
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Ok(Kind::Request));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#), Ok(Kind::Request));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), Ok(Kind::Notification));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#), Ok(Kind::Response));
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":""}}"#),
            Ok(Kind::Response)
        );
    }

    #[test]
    fn j05_rejects_what_is_not_json_rpc() {
        assert_eq!(kind(r#"{"id":1,"method":"ping"}"#), Err(InvalidMessage::Version));
        assert_eq!(kind(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), Err(InvalidMessage::Version));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#), Err(InvalidMessage::IdType));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#), Err(InvalidMessage::IdType));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#), Err(InvalidMessage::IdType));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1}"#), Err(InvalidMessage::Shape));
        assert_eq!(kind(r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#), Err(InvalidMessage::Shape));
        assert!(Envelope::parse(b"[1]").is_err());
        assert!(Envelope::parse(b"{nope").is_err());
    }

    #[test]
    fn j01_ids_match_by_value_and_type() {
        let key = |s: &str| IdKey::new(&RawValue::from_string(s.to_owned()).unwrap());
        assert_eq!(key(r#""a""#), key(r#""\u0061""#));
        assert_ne!(key("1"), key(r#""1""#));
        assert_eq!(key("9007199254740993"), Some(IdKey::Num("9007199254740993".into())));
        assert_eq!(key("null"), None);
    }

    #[test]
    fn t41_local_errors_keep_the_id_bytes_and_say_where_they_came_from() {
        let id = RawValue::from_string("12345678901234567890".into()).unwrap();
        let mut e = LocalError::new(UPSTREAM_ERROR, ErrorKind::ServerError, "boom \"quoted\"");
        e.http_status = Some(502);
        e.request_sent = Some(true);
        let out = String::from_utf8(e.to_response(Some(&id))).unwrap();
        assert!(out.starts_with(r#"{"jsonrpc":"2.0","id":12345678901234567890,"error":"#), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["code"], -32000);
        assert_eq!(v["error"]["message"], "boom \"quoted\"");
        assert_eq!(v["error"]["data"]["source"], "mcp-sidecar");
        assert_eq!(v["error"]["data"]["kind"], "server_error");
        assert_eq!(v["error"]["data"]["httpStatus"], 502);
        assert_eq!(v["error"]["data"]["requestSent"], true);
        let none = String::from_utf8(e.to_response(None)).unwrap();
        assert!(none.contains(r#""id":null"#));
    }

    #[test]
    fn t40_error_with_id_wraps_raw_parts() {
        let id = RawValue::from_string(r#""x-1""#.into()).unwrap();
        let err = RawValue::from_string(
            r#"{"code":-32022,"message":"unsupported","data":{"supported":["2025-11-25"]}}"#.into(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(error_with_id(&id, &err)).unwrap(),
            r#"{"jsonrpc":"2.0","id":"x-1","error":{"code":-32022,"message":"unsupported","data":{"supported":["2025-11-25"]}}}"#
        );
    }

    #[test]
    fn s02_flatten_lines_keeps_json_meaning() {
        let mut b = b"{\r\n  \"a\": \"x\\ny\",\n  \"b\": 1\n}".to_vec();
        flatten_lines(&mut b);
        assert!(!b.contains(&b'\n') && !b.contains(&b'\r'));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["a"], "x\ny");
    }

    #[test]
    fn sniff_id_finds_early_ids_and_refuses_guesses() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":"req-7","method":"tools/call","params":{{"x":"{}"#,
            "a".repeat(100)
        );
        assert_eq!(sniff_id(big.as_bytes()).as_deref(), Some(r#""req-7""#));
        assert_eq!(sniff_id(br#" { "id" : 42 , "jsonrpc":"2.0""#).as_deref(), Some("42"));
        // The number may continue past the prefix.
        assert_eq!(sniff_id(br#"{"id":42"#), None);
        // The id comes after an incomplete member.
        assert_eq!(sniff_id(br#"{"params":{"x":"aaaa"#), None);
        assert_eq!(sniff_id(br#"{"jsonrpc":"2.0","id":null,"#), None);
        assert_eq!(sniff_id(b"not json"), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn request_id() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            ".{0,10}".prop_map(serde_json::Value::from)
        ]
    }

    proptest! {
        /// Arbitrary bytes never panic the parser.
        #[test]
        fn parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(env) = Envelope::parse(&bytes) {
                let _ = env.kind();
                let _ = env.id_key();
                let _ = env.params();
            }
            let _ = sniff_id(&bytes);
        }

        /// Any request is classified as one, its id matches itself, and an error made for it
        /// carries exactly its id.
        #[test]
        fn requests_keep_their_ids(id in request_id(), params in json_value(), method in "[a-z/]{1,12}") {
            let msg = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
            let env = Envelope::parse(msg.as_bytes()).unwrap();
            prop_assert_eq!(env.kind(), Ok(Kind::Request));
            let key = env.id_key().unwrap();
            let err = LocalError::new(UPSTREAM_ERROR, ErrorKind::ServerError, "x").to_response(env.id);
            let back = Envelope::parse(&err).unwrap();
            prop_assert_eq!(back.kind(), Ok(Kind::Response));
            prop_assert_eq!(back.id_key(), Some(key));
            let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
            prop_assert_eq!(&v["id"], &id);
        }

        /// The start of a request, cut anywhere after its id, still yields the id.
        #[test]
        fn sniffing_finds_ids_in_any_long_enough_prefix(id in request_id(), params in json_value(), cut in 0usize..64) {
            let head = format!(r#"{{"jsonrpc":"2.0","id":{},"method":"m","params":"#, id);
            let msg = format!("{head}{}}}", params);
            let end = (head.len() + cut).min(msg.len());
            prop_assert_eq!(sniff_id(&msg.as_bytes()[..end]), Some(id.to_string()));
        }

        /// Pretty-printed JSON flattened onto one line means the same.
        #[test]
        fn flattening_keeps_meaning(v in json_value()) {
            let mut pretty = serde_json::to_vec_pretty(&v).unwrap();
            flatten_lines(&mut pretty);
            prop_assert!(!pretty.contains(&b'\n'));
            let back: serde_json::Value = serde_json::from_slice(&pretty).unwrap();
            prop_assert_eq!(back, v);
        }
    }
}
