//! Tool filters (issue 24.1): `--allow-tools` and `--deny-tools`, globs over tool names (`*`
//! any run of characters, `?` one; deny wins). A hidden tool is left out of every `tools/list`
//! page (an emptied page keeps its `nextCursor`, so a listing goes on), of the lists kept, and
//! its `tools/call` is answered here with the spec's unknown-tool error: it never reaches the
//! server. Nothing of this runs when no filter is given.

use serde_json::Value;
use tracing::debug;
use wildmatch::WildMatch;

/// The tool filters of a run; `None` from [`ToolFilter::new`] when none is given.
pub(in crate::proxy) struct ToolFilter {
    allow: Vec<(String, WildMatch)>,
    deny: Vec<(String, WildMatch)>,
}

impl ToolFilter {
    /// The filter for these globs, or `None` when there are none.
    pub(in crate::proxy) fn new(allow: &[String], deny: &[String]) -> Option<ToolFilter> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        let compile = |globs: &[String]| globs.iter().map(|g| (g.clone(), WildMatch::new(g))).collect();
        Some(ToolFilter { allow: compile(allow), deny: compile(deny) })
    }

    /// Why `name` is hidden, as the rule that hides it; `None` when the client may see it.
    pub(in crate::proxy) fn hides(&self, name: &str) -> Option<String> {
        if let Some((glob, _)) = self.deny.iter().find(|(_, m)| m.matches(name)) {
            return Some(format!("--deny-tools {glob}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|(_, m)| m.matches(name)) {
            return Some("not in --allow-tools".to_owned());
        }
        None
    }

    /// A `tools/list` answer without the hidden tools; `None` when it hides none (the bytes
    /// then go on unchanged).
    pub(in crate::proxy) fn list(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut msg: Value = serde_json::from_slice(message).ok()?;
        let tools = msg.pointer_mut("/result/tools")?.as_array_mut()?;
        let before = tools.len();
        tools.retain(|tool| {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            match self.hides(name) {
                Some(rule) => {
                    debug!("tool {name:?} left out of tools/list ({rule})");
                    false
                }
                None => true,
            }
        });
        (tools.len() != before).then(|| serde_json::to_vec(&msg).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> ToolFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ToolFilter::new(&own(allow), &own(deny)).unwrap()
    }

    #[test]
    fn issue24_1_deny_wins_and_allow_keeps_only_what_it_names() {
        assert!(ToolFilter::new(&[], &[]).is_none(), "nothing configured: no filter at all");
        let f = filter(&["jira_*", "echo"], &["*_delete*"]);
        assert_eq!(f.hides("jira_search"), None);
        assert_eq!(f.hides("echo"), None);
        assert_eq!(f.hides("jira_delete_issue").as_deref(), Some("--deny-tools *_delete*"));
        assert_eq!(f.hides("sum").as_deref(), Some("not in --allow-tools"));
        // Globs that match nothing or everything.
        assert_eq!(filter(&[], &["*"]).hides("anything").as_deref(), Some("--deny-tools *"));
        assert_eq!(filter(&[], &["no_such_tool"]).hides("sum"), None);
        assert_eq!(filter(&["?um"], &[]).hides("sum"), None);
    }

    #[test]
    fn issue24_1_a_page_loses_its_hidden_tools_and_keeps_its_cursor() {
        let f = filter(&[], &["secret_*"]);
        let page = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret_a"},{"name":"secret_b"}],"nextCursor":"c2"}}"#;
        let out: Value = serde_json::from_slice(&f.list(page).unwrap()).unwrap();
        assert_eq!(out["result"]["tools"], serde_json::json!([]));
        assert_eq!(out["result"]["nextCursor"], "c2", "an emptied page does not end the listing");
        assert_eq!(out["id"], 7);
        assert!(f.list(br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"sum"}]}}"#).is_none());
        // 10,000 tools.
        let many: Vec<Value> =
            (0..10_000).map(|i| serde_json::json!({"name": format!("secret_{i}")})).collect();
        let big = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"tools":many}}).to_string();
        let out: Value = serde_json::from_slice(&f.list(big.as_bytes()).unwrap()).unwrap();
        assert_eq!(out["result"]["tools"].as_array().unwrap().len(), 0);
    }
}
