//! `x-mcp-header` for 2026-07-28 (T-15): learning annotations from `tools/list`, leaving out
//! tools whose annotations are invalid, mirroring arguments into `Mcp-Param-*` headers.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::super::link::Link;
use super::super::reply::first_response;
use crate::envelope::{self, Envelope};
use crate::sync::ReadWrite;
use crate::upstream::headers::{MessageHeaders, ParamHeader, param_annotations, param_values};

/// The `x-mcp-header` annotations of each tool, from the last `tools/list` (T-15).
#[derive(Default)]
pub(in crate::proxy) struct Params {
    tool_headers: RwLock<HashMap<String, Vec<ParamHeader>>>,
}

impl Params {
    /// The `Mcp-Param-*` headers of a 2026-07-28 `tools/call` (T-15).
    /// The headers of a request: T-13/T-14 from its method and `_meta`, and for a 2026-07-28
    /// `tools/call` the `Mcp-Param-*` its tool's schema asks for (T-15).
    pub(in crate::proxy) fn request_headers(
        &self,
        method: &str,
        params: &envelope::Params<'_>,
    ) -> MessageHeaders {
        let mut headers = MessageHeaders::derive(method, params);
        if headers.is_modern() && method == "tools/call" {
            headers.params = self.param_headers(params);
        }
        headers
    }

    pub(in crate::proxy) fn param_headers(
        &self,
        params: &envelope::Params<'_>,
    ) -> Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
        let Some(name) = params.name.as_deref() else { return Vec::new() };
        let known = self.tool_headers.reading();
        let Some(annotations) = known.get(name).filter(|a| !a.is_empty()) else { return Vec::new() };
        let arguments = params
            .arguments
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a.get()).ok())
            .unwrap_or(serde_json::Value::Null);
        param_values(annotations, &arguments)
    }

    /// Learns the `x-mcp-header` annotations of a `tools/list` result (T-15). Tools with invalid
    /// annotations must be excluded: then the message is rebuilt without them and returned.
    pub(in crate::proxy) fn learn_tools(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut msg: serde_json::Value = serde_json::from_slice(message).ok()?;
        let tools = msg.pointer_mut("/result/tools")?.as_array_mut()?;
        let mut known = self.tool_headers.writing();
        let before = tools.len();
        tools.retain(|tool| {
            let name = tool.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            match param_annotations(tool.get("inputSchema").unwrap_or(&serde_json::Value::Null)) {
                Ok(annotations) => {
                    known.insert(name.to_owned(), annotations);
                    true
                }
                Err(reason) => {
                    warn!("tool {name:?} left out of tools/list: its schema has an invalid x-mcp-header ({reason})");
                    known.remove(name);
                    false
                }
            }
        });
        (tools.len() != before).then(|| serde_json::to_vec(&msg).unwrap_or_default())
    }

    /// Runs `tools/list` for the proxy itself (every page), with the `_meta` of `call`, to learn
    /// the current `x-mcp-header` annotations. Returns whether it got a list.
    pub(in crate::proxy) async fn relist_tools(
        &self,
        link: &Link,
        call: &[u8],
        limit: Duration,
        max_message: usize,
    ) -> bool {
        let Ok(call) = serde_json::from_slice::<serde_json::Value>(call) else { return false };
        let meta = call.pointer("/params/_meta").cloned().unwrap_or(serde_json::Value::Null);
        let mut cursor: Option<serde_json::Value> = None;
        for page in 0..10 {
            let mut params = serde_json::json!({ "_meta": meta });
            if let Some(c) = cursor.take() {
                params["cursor"] = c;
            }
            let request = serde_json::json!({"jsonrpc":"2.0","id":format!("mcp-sidecar-tools-list-{page}"),"method":"tools/list","params":params});
            let bytes = Bytes::from(request.to_string());
            let headers = match Envelope::parse(&bytes) {
                Ok(env) => MessageHeaders::derive("tools/list", &env.params()),
                Err(_) => return false,
            };
            let what = "tools/list (to refresh x-mcp-header)";
            let Ok((response, _, deadline)) = link.send(&bytes, &headers, false, limit, what, None).await
            else {
                return false;
            };
            if !response.status().is_success() {
                return false;
            }
            let Some(answer) = first_response(response, max_message, deadline).await else {
                return false;
            };
            self.learn_tools(&answer);
            let next = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.pointer("/result/nextCursor").cloned());
            match next {
                Some(c) if !c.is_null() => cursor = Some(c),
                _ => return true,
            }
        }
        true
    }
}
