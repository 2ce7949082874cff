//! Filters over what reaches the model (issue 24.1): `--allow-tools` and `--deny-tools`, globs
//! over tool names (`*` any run of characters, `?` one; deny wins); `--allow-prompts` and
//! `--deny-prompts` over prompt names; `--deny-resources` over resource URIs. A hidden item is
//! left out of every page of its list (an emptied page keeps its `nextCursor`, so a listing goes
//! on) and of the lists kept, and a request for it (`tools/call`, `prompts/get`,
//! `resources/read`) is answered here with the spec's error for an unknown one: it never
//! reaches the server. Nothing of this runs when no filter is given.

use serde_json::Value;
use tracing::debug;
use wildmatch::WildMatch;

use crate::envelope::{ErrorKind, INVALID_PARAMS, LocalError};

/// What a filter is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Over {
    Tools,
    Prompts,
    Resources,
}

impl Over {
    /// The list request, the request for one item, the array of the list's result, the field
    /// that names an item, and the flags' stem.
    fn spec(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            Over::Tools => ("tools/list", "tools/call", "/result/tools", "name", "tools"),
            Over::Prompts => ("prompts/list", "prompts/get", "/result/prompts", "name", "prompts"),
            Over::Resources => ("resources/list", "resources/read", "/result/resources", "uri", "resources"),
        }
    }

    /// The kind whose list `method` is.
    pub(in crate::proxy) fn of_list(method: &str) -> Option<Over> {
        [Over::Tools, Over::Prompts, Over::Resources].into_iter().find(|o| o.spec().0 == method)
    }

    /// The kind whose single-item request `method` is.
    pub(in crate::proxy) fn of_request(method: &str) -> Option<Over> {
        [Over::Tools, Over::Prompts, Over::Resources].into_iter().find(|o| o.spec().1 == method)
    }

    /// The spec's error for an unknown item (tools and prompts: -32602; resources: -32002).
    pub(in crate::proxy) fn unknown(self, item: &str) -> LocalError {
        let (code, message) = match self {
            Over::Tools => (INVALID_PARAMS, format!("Unknown tool: {item}")),
            Over::Prompts => (INVALID_PARAMS, format!("Unknown prompt: {item}")),
            Over::Resources => (RESOURCE_NOT_FOUND, format!("Resource not found: {item}")),
        };
        LocalError::new(code, ErrorKind::HiddenTool, message)
    }
}

/// The spec's code for a resource that does not exist.
const RESOURCE_NOT_FOUND: i64 = -32002;

/// The globs of one kind; `None` from [`NameFilter::new`] when none is given.
pub(in crate::proxy) struct NameFilter {
    over: Over,
    allow: Vec<(String, WildMatch)>,
    deny: Vec<(String, WildMatch)>,
}

impl NameFilter {
    /// The filter over `over` for these globs, or `None` when there are none.
    pub(in crate::proxy) fn new(over: Over, allow: &[String], deny: &[String]) -> Option<NameFilter> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        let compile = |globs: &[String]| globs.iter().map(|g| (g.clone(), WildMatch::new(g))).collect();
        Some(NameFilter { over, allow: compile(allow), deny: compile(deny) })
    }

    /// What it filters.
    pub(in crate::proxy) fn over(&self) -> Over {
        self.over
    }

    /// Why `item` is hidden, as the rule that hides it; `None` when the client may see it.
    pub(in crate::proxy) fn hides(&self, item: &str) -> Option<String> {
        let stem = self.over.spec().4;
        if let Some((glob, _)) = self.deny.iter().find(|(_, m)| m.matches(item)) {
            return Some(format!("--deny-{stem} {glob}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|(_, m)| m.matches(item)) {
            return Some(format!("not in --allow-{stem}"));
        }
        None
    }

    /// A list answer without the hidden items; `None` when it hides none (the bytes then go
    /// on unchanged).
    pub(in crate::proxy) fn list(&self, message: &[u8]) -> Option<Vec<u8>> {
        let (_, _, pointer, field, _) = self.over.spec();
        let mut msg: Value = serde_json::from_slice(message).ok()?;
        let items = msg.pointer_mut(pointer)?.as_array_mut()?;
        let before = items.len();
        items.retain(|item| {
            let name = item.get(field).and_then(Value::as_str).unwrap_or_default();
            match self.hides(name) {
                Some(rule) => {
                    debug!("{name:?} left out of the list ({rule})");
                    false
                }
                None => true,
            }
        });
        (items.len() != before).then(|| serde_json::to_vec(&msg).unwrap_or_default())
    }
}

/// Which rule of `--allow-tools`/`--deny-tools` hides a tool, for `tools --all` (issue 24.1);
/// the rules match the server's names, the list says the client's (issue 24.2).
pub struct HiddenBy(Option<NameFilter>, Option<super::names::ToolNames>);

impl HiddenBy {
    pub fn new(filters: &crate::config::Filters) -> HiddenBy {
        HiddenBy(
            NameFilter::new(Over::Tools, &filters.allow_tools, &filters.deny_tools),
            super::names::ToolNames::new(filters),
        )
    }

    /// The rule that hides the tool the client sees as `name`, if one does.
    pub fn tool(&self, name: &str) -> Option<String> {
        self.0.as_ref()?.hides(self.server_name(name)?)
    }

    /// The server's name of the tool the client sees as `name` (`None`: no tool is listed so).
    pub fn server_name<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match &self.1 {
            Some(names) => names.server_name(name),
            None => Some(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(over: Over, allow: &[&str], deny: &[&str]) -> NameFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        NameFilter::new(over, &own(allow), &own(deny)).unwrap()
    }

    #[test]
    fn issue24_1_deny_wins_and_allow_keeps_only_what_it_names() {
        assert!(NameFilter::new(Over::Tools, &[], &[]).is_none(), "nothing configured: no filter at all");
        let f = filter(Over::Tools, &["jira_*", "echo"], &["*_delete*"]);
        assert_eq!(f.hides("jira_search"), None);
        assert_eq!(f.hides("echo"), None);
        assert_eq!(f.hides("jira_delete_issue").as_deref(), Some("--deny-tools *_delete*"));
        assert_eq!(f.hides("sum").as_deref(), Some("not in --allow-tools"));
        // Globs that match nothing or everything.
        assert_eq!(filter(Over::Tools, &[], &["*"]).hides("anything").as_deref(), Some("--deny-tools *"));
        assert_eq!(filter(Over::Tools, &[], &["no_such_tool"]).hides("sum"), None);
        assert_eq!(filter(Over::Tools, &["?um"], &[]).hides("sum"), None);
        let r = filter(Over::Resources, &[], &["file:///secret/*"]);
        assert_eq!(r.hides("file:///secret/a.txt").as_deref(), Some("--deny-resources file:///secret/*"));
        assert_eq!(Over::of_request("resources/read"), Some(Over::Resources));
        assert_eq!(Over::of_list("prompts/list"), Some(Over::Prompts));
        assert_eq!(Over::Resources.unknown("x").code, -32002);
    }

    #[test]
    fn issue24_1_a_page_loses_its_hidden_items_and_keeps_its_cursor() {
        let f = filter(Over::Tools, &[], &["secret_*"]);
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
        let p = filter(Over::Prompts, &["keep"], &[]);
        let page = br#"{"jsonrpc":"2.0","id":2,"result":{"prompts":[{"name":"keep"},{"name":"drop"}]}}"#;
        let out: Value = serde_json::from_slice(&p.list(page).unwrap()).unwrap();
        assert_eq!(out["result"]["prompts"], serde_json::json!([{"name":"keep"}]));
    }
}
