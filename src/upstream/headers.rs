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
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MessageHeaders {
    /// The per-request protocol version of a 2026-07-28 request; `None` for legacy messages,
    /// which get the session's negotiated version instead.
    pub protocol_version: Option<HeaderValue>,
    /// `Mcp-Method` and `Mcp-Name` (2026-07-28 only).
    pub method: Option<HeaderValue>,
    /// `Mcp-Name`.
    pub name: Option<HeaderValue>,
}

impl MessageHeaders {
    /// Derives the headers of a request or notification with `method` and `params`.
    pub fn derive(method: &str, params: &Params<'_>) -> Self {
        let Some(version) = params.meta.as_ref().and_then(|m| m.protocol_version.as_deref()) else {
            return MessageHeaders::default();
        };
        let name = match method {
            "tools/call" | "prompts/get" => params.name.as_deref(),
            "resources/read" => params.uri.as_deref(),
            _ => None,
        };
        MessageHeaders {
            protocol_version: Some(encode_value(version)),
            method: Some(encode_value(method)),
            name: name.map(encode_value),
        }
    }

    /// Whether the message belongs to the 2026-07-28 (sessionless) era.
    pub fn is_modern(&self) -> bool {
        self.protocol_version.is_some()
    }
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
        assert_eq!(h, MessageHeaders::default());
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
    fn t14_escaped_names_are_unescaped_before_encoding() {
        let h = derive(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"caf\u00e9",
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(h.name.unwrap(), "=?base64?Y2Fmw6k=?=");
    }
}
