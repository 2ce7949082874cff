//! HTTP headers derived from a message: `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`.
//!
//! Legacy sessions (2025-06-18 … 2025-11-25) send the version negotiated by `initialize` on every
//! request after it (T-13). The 2026-07-28 era has no handshake: each request names its version in
//! `params._meta["io.modelcontextprotocol/protocolVersion"]`, the header must equal it, and every
//! POST also carries `Mcp-Method` and, for `tools/call`, `resources/read` and `prompts/get`,
//! `Mcp-Name` (T-14); servers reject a request without them with `400`/`-32020`. This module only
//! computes values; it never sends anything.

use base64::Engine;
use reqwest::header::{HeaderName, HeaderValue};

use crate::envelope::Params;

/// `MCP-Protocol-Version` (T-13).
pub static PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// `Mcp-Session-Id` (T-10).
pub static SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// `Mcp-Method` (T-14, 2026-07-28).
pub static METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// `Mcp-Name` (T-14, 2026-07-28).
pub static NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The protocol revisions this build speaks, oldest first.
pub const SUPPORTED_REVISIONS: &[&str] = &["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];

/// The headers one message adds to its POST.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MessageHeaders {
    /// The per-request protocol version of a 2026-07-28 request; `None` for legacy messages,
    /// which get the session's negotiated version instead.
    pub protocol_version: Option<HeaderValue>,
    /// `Mcp-Method` and `Mcp-Name` (2026-07-28 only).
    pub method: Option<HeaderValue>,
    /// `Mcp-Name`.
    pub name: Option<HeaderValue>,
    /// `Mcp-Param-*` mirrored from `tools/call` arguments (T-15).
    pub params: Vec<(HeaderName, HeaderValue)>,
    /// The request's route for the rate-limit gate (its method and tool or prompt name: the
    /// server's bucket it is counted in is learned per route, issue 21.2); 0 when unknown.
    pub route: u64,
}

impl MessageHeaders {
    /// Derives the headers of a request or notification with `method` and `params`.
    pub fn derive(method: &str, params: &Params<'_>) -> Self {
        let named = matches!(method, "tools/call" | "prompts/get").then(|| params.name.as_deref()).flatten();
        let route = crate::stable_id::route_of(method, named);
        let Some(version) = params.meta.as_ref().and_then(|m| m.protocol_version.as_deref()) else {
            return MessageHeaders { route, ..MessageHeaders::default() };
        };
        // T-14 names tools/call, resources/read and prompts/get; servers also route (and
        // rmcp validates) subscriptions and tasks by name.
        let name = match method {
            "tools/call" | "prompts/get" => params.name.as_deref(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => params.uri.as_deref(),
            "tasks/get" | "tasks/update" | "tasks/cancel" => params.task_id.as_deref(),
            _ => None,
        };
        MessageHeaders {
            protocol_version: Some(encode_value(version)),
            method: Some(encode_value(method)),
            name: name.map(encode_value),
            params: Vec::new(),
            route,
        }
    }

    /// Whether the message belongs to the 2026-07-28 (sessionless) era.
    pub fn is_modern(&self) -> bool {
        self.protocol_version.is_some()
    }
}

/// One `x-mcp-header` annotation of a tool: the header's name and the property path to its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// `Mcp-Param-{Name}`.
    pub header: HeaderName,
    /// Property names from the arguments' root.
    pub path: Vec<String>,
}

/// The `x-mcp-header` annotations of a tool's `inputSchema`, or why the tool must be excluded
/// (T-15): each must be a non-empty RFC 9110 token, case-insensitively unique, on a string,
/// integer or boolean property reached from the root through `properties` keys alone.
pub fn param_annotations(input_schema: &serde_json::Value) -> Result<Vec<ParamHeader>, String> {
    fn walk(
        schema: &serde_json::Value,
        on_chain: bool,
        path: &mut Vec<String>,
        out: &mut Vec<ParamHeader>,
        seen: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(obj) = schema.as_object() else { return Ok(()) };
        if let Some(header) = obj.get("x-mcp-header") {
            let prop = path.join(".");
            if !on_chain || path.is_empty() {
                return Err(format!(
                    "x-mcp-header must sit on a property reached through `properties` ({prop:?})"
                ));
            }
            let name =
                header.as_str().ok_or_else(|| format!("property `{prop}`: x-mcp-header must be a string"))?;
            let token = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(format!("property `{prop}`: x-mcp-header {name:?} is not an HTTP token"));
            }
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                return Err(format!("property `{prop}`: x-mcp-header {name:?} is used twice"));
            }
            if !matches!(obj.get("type").and_then(|t| t.as_str()), Some("string" | "integer" | "boolean")) {
                return Err(format!(
                    "property `{prop}`: x-mcp-header needs a string, integer or boolean property"
                ));
            }
            let header = HeaderName::from_bytes(format!("mcp-param-{name}").as_bytes())
                .map_err(|_| format!("property `{prop}`: x-mcp-header {name:?} is not an HTTP token"))?;
            seen.push(name.to_owned());
            out.push(ParamHeader { header, path: path.clone() });
        }
        for (key, value) in obj {
            match (key.as_str(), value) {
                ("properties", serde_json::Value::Object(props)) => {
                    for (name, prop) in props {
                        path.push(name.clone());
                        walk(prop, on_chain, path, out, seen)?;
                        path.pop();
                    }
                }
                // Anywhere else (items, anyOf, $defs …) an annotation is off the chain.
                (_, serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                    for nested in
                        value.as_array().into_iter().flatten().chain(value.is_object().then_some(value))
                    {
                        walk(nested, false, path, out, seen)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(input_schema, true, &mut Vec::new(), &mut out, &mut Vec::new())?;
    Ok(out)
}

/// The `Mcp-Param-*` headers for `arguments`: strings as they are, integers in decimal, booleans
/// as `true`/`false`; absent or null values send nothing (T-15).
pub fn param_values(
    annotations: &[ParamHeader],
    arguments: &serde_json::Value,
) -> Vec<(HeaderName, HeaderValue)> {
    annotations
        .iter()
        .filter_map(|a| {
            let value = a.path.iter().try_fold(arguments, |v, key| v.get(key))?;
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => return None,
            };
            Some((a.header.clone(), encode_value(&text)))
        })
        .collect()
}

/// Encodes a header value, using the `=?base64?…?=` sentinel form for anything that is not plain,
/// header-safe ASCII: non-ASCII, control characters, leading or trailing whitespace, or text that
/// itself looks like the sentinel (T-14 "Value Encoding").
pub fn encode_value(value: &str) -> HeaderValue {
    let looks_like_sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with([' ', '\t'])
        && !value.ends_with([' ', '\t'])
        && !looks_like_sentinel;
    let text = if plain || value.is_empty() {
        value.to_owned()
    } else {
        format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(value))
    };
    // Both forms are visible ASCII (or empty), which is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn derive(msg: &str) -> MessageHeaders {
        let env = Envelope::parse(msg.as_bytes()).unwrap();
        MessageHeaders::derive(env.method.as_deref().unwrap(), &env.params())
    }

    #[test]
    fn t13_legacy_message_adds_nothing_itself() {
        let h = derive(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sum"}}"#);
        let route = crate::stable_id::route_of("tools/call", Some("sum"));
        assert_eq!(
            h,
            MessageHeaders { route, ..MessageHeaders::default() },
            "no header, only the gate's route"
        );
        assert!(!h.is_modern());
    }

    #[test]
    fn t14_modern_tools_call_gets_version_method_and_name() {
        let h = derive(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sum","arguments":{},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(h.protocol_version.unwrap(), "2026-07-28");
        assert_eq!(h.method.unwrap(), "tools/call");
        assert_eq!(h.name.unwrap(), "sum");
    }

    #[test]
    fn t14_resources_read_names_the_uri_and_list_has_no_name() {
        let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#;
        let h = derive(&format!(
            r#"{{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{{"uri":"file:///a b",{meta}}}}}"#
        ));
        assert_eq!(h.name.unwrap(), "file:///a b");
        let h = derive(&format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{{meta}}}}}"#));
        assert_eq!(h.method.unwrap(), "tools/list");
        assert!(h.name.is_none());
    }

    #[test]
    fn t14_unsafe_values_use_the_base64_sentinel() {
        assert_eq!(encode_value("plain-name_1.x"), "plain-name_1.x");
        assert_eq!(encode_value("héllo"), "=?base64?aMOpbGxv?=");
        assert_eq!(encode_value(" lead"), "=?base64?IGxlYWQ=?=");
        assert_eq!(encode_value("trail "), "=?base64?dHJhaWwg?=");
        assert_eq!(encode_value("a\nb"), "=?base64?YQpi?=");
        assert_eq!(encode_value("=?base64?abc?="), "=?base64?PT9iYXNlNjQ/YWJjPz0=?=");
    }

    #[test]
    fn t15_annotations_are_found_along_properties_and_validated() {
        use serde_json::json;
        let schema = json!({"type":"object","properties":{
            "region": {"type":"string","x-mcp-header":"Region"},
            "opts": {"type":"object","properties":{"dry": {"type":"boolean","x-mcp-header":"Dry-Run"}}},
            "n": {"type":"integer","x-mcp-header":"N"}}});
        let found = param_annotations(&schema).unwrap();
        let names: Vec<_> = found.iter().map(|a| (a.header.as_str(), a.path.join("."))).collect();
        assert!(names.contains(&("mcp-param-region", "region".into())));
        assert!(names.contains(&("mcp-param-dry-run", "opts.dry".into())));
        let args = json!({"region":"eu west","opts":{"dry":true},"n":7,"other":1});
        let mut values: Vec<_> = param_values(&found, &args)
            .into_iter()
            .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        values.sort();
        assert_eq!(
            values,
            [
                ("mcp-param-dry-run".into(), "true".into()),
                ("mcp-param-n".into(), "7".into()),
                ("mcp-param-region".into(), "eu west".to_string())
            ]
        );
        assert!(param_values(&found, &json!({"region": null})).is_empty(), "null and absent send nothing");
        for bad in [
            json!({"properties":{"x":{"type":"number","x-mcp-header":"X"}}}),
            json!({"properties":{"x":{"type":"string","x-mcp-header":""}}}),
            json!({"properties":{"x":{"type":"string","x-mcp-header":"Bad Name"}}}),
            json!({"properties":{"a":{"type":"string","x-mcp-header":"A"},"b":{"type":"string","x-mcp-header":"a"}}}),
            json!({"properties":{"l":{"type":"array","items":{"type":"string","x-mcp-header":"Item"}}}}),
            json!({"x-mcp-header":"Root","properties":{}}),
        ] {
            assert!(param_annotations(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn t14_escaped_names_are_unescaped_before_encoding() {
        let h = derive(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"caf\u00e9",
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(h.name.unwrap(), "=?base64?Y2Fmw6k=?=");
    }
}
