//! Tool names as the client sees them (issue 24.2): `--tool-prefix PREFIX` lists every tool as
//! PREFIX + its name, `--rename-tool OLD=NEW` lists OLD as NEW (no prefix). Lists are renamed on
//! the way down; a `tools/call` is called back under the server's name on the way up (so the
//! `Mcp-Name` header and any bridge see the server's name); and the answer of a renamed call
//! says the client's name where its error text names the tool. A name the client cannot have
//! seen (the server's own name of a renamed tool, a name without the prefix) is an unknown tool,
//! answered here. Two tools listed under one name is refused, with both names. Nothing of this
//! runs when neither flag is given.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::warn;

use crate::config::Filters;
use crate::envelope::{ErrorKind, LocalError, NAME_COLLISION};

/// The names of one run.
pub(in crate::proxy) struct ToolNames {
    prefix: Option<String>,
    /// OLD → NEW.
    to_client: HashMap<String, String>,
    /// NEW → OLD.
    to_server: HashMap<String, String>,
    /// A collision is said once in the log, not at every listing.
    warned: AtomicBool,
}

impl ToolNames {
    /// The names `filters` asks for, or `None` when tools keep the server's names.
    pub(in crate::proxy) fn new(filters: &Filters) -> Option<ToolNames> {
        if !filters.renaming() {
            return None;
        }
        let to_client: HashMap<String, String> = filters.renames.iter().cloned().collect();
        let to_server = filters.renames.iter().map(|(old, new)| (new.clone(), old.clone())).collect();
        Some(ToolNames {
            prefix: filters.tool_prefix.clone(),
            to_client,
            to_server,
            warned: AtomicBool::new(false),
        })
    }

    /// The name the client sees for the server's tool `server`.
    pub(in crate::proxy) fn client_name<'a>(&'a self, server: &'a str) -> Cow<'a, str> {
        match (self.to_client.get(server), &self.prefix) {
            (Some(new), _) => Cow::Borrowed(new),
            (None, Some(prefix)) => Cow::Owned(format!("{prefix}{server}")),
            (None, None) => Cow::Borrowed(server),
        }
    }

    /// The server's name of the tool the client calls `client`; `None` when no tool is listed
    /// under that name (the server's own name of a renamed tool, a name without the prefix).
    pub(in crate::proxy) fn server_name<'a>(&'a self, client: &'a str) -> Option<&'a str> {
        if let Some(old) = self.to_server.get(client) {
            return Some(old);
        }
        let server = match &self.prefix {
            Some(prefix) => client.strip_prefix(prefix.as_str()).filter(|rest| !rest.is_empty())?,
            None => client,
        };
        (!self.to_client.contains_key(server)).then_some(server)
    }

    /// The rename whose NEW name the server's tool `server` would also be listed under: the
    /// collision (`None` when there is none).
    fn collision(&self, server: &str) -> Option<(&str, &str)> {
        if self.to_client.contains_key(server) {
            return None;
        }
        let listed = self.client_name(server);
        self.to_server.get_key_value(listed.as_ref()).map(|(new, old)| (old.as_str(), new.as_str()))
    }

    /// A `tools/list` answer with the client's names (`Ok(None)`: nothing to rename, the bytes
    /// go on unchanged), or the error that refuses it: a tool listed under a name
    /// `--rename-tool` gives another.
    pub(in crate::proxy) fn list(&self, message: &[u8]) -> Result<Option<Vec<u8>>, LocalError> {
        let Ok(mut msg) = serde_json::from_slice::<Value>(message) else { return Ok(None) };
        let Some(tools) = msg.pointer_mut("/result/tools").and_then(Value::as_array_mut) else {
            return Ok(None);
        };
        let mut changed = false;
        for tool in tools.iter_mut() {
            let Some(name) = tool.get_mut("name") else { continue };
            let Some(server) = name.as_str() else { continue };
            if let Some((old, new)) = self.collision(server) {
                return Err(self.collided(server, old, new));
            }
            let client = self.client_name(server).into_owned();
            if client != server {
                *name = Value::String(client);
                changed = true;
            }
        }
        Ok(changed.then(|| serde_json::to_vec(&msg).unwrap_or_default()))
    }

    /// The error for a listing in which the server's `server` would be listed as `new`, the
    /// name `--rename-tool old=new` gives (said once in the log).
    fn collided(&self, server: &str, old: &str, new: &str) -> LocalError {
        let message = format!(
            "the server's tool {server} would be listed as {new}, the name --rename-tool {old}={new} gives {old}: choose another name for {old}, or rename {server} too"
        );
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!("tools/list refused: {message}");
        }
        LocalError::new(NAME_COLLISION, ErrorKind::NameCollision, message)
    }

    /// The answer of a call of the server's tool `server` with the client's name where its
    /// error says the server's (a JSON-RPC error's message; the text of a result with
    /// `isError`); `None` when nothing names it.
    pub(in crate::proxy) fn call_answer(&self, server: &str, message: &[u8]) -> Option<Vec<u8>> {
        let client = self.client_name(server);
        if client == server || !contains_word(message, server) {
            return None;
        }
        let mut msg: Value = serde_json::from_slice(message).ok()?;
        let mut changed = false;
        let mut mend = |text: &mut Value| {
            if let Some(t) = text.as_str().filter(|t| contains_word(t.as_bytes(), server)) {
                *text = Value::String(replace_word(t, server, &client));
                changed = true;
            }
        };
        if let Some(text) = msg.pointer_mut("/error/message") {
            mend(text);
        }
        if msg.pointer("/result/isError").and_then(Value::as_bool) == Some(true)
            && let Some(items) = msg.pointer_mut("/result/content").and_then(Value::as_array_mut)
        {
            items.iter_mut().filter_map(|item| item.get_mut("text")).for_each(&mut mend);
        }
        changed.then(|| serde_json::to_vec(&msg).unwrap_or_default())
    }
}

/// Whether a byte may be part of a tool's name (the spec's characters, 2025-11-25).
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

/// The places `word` stands alone in `text` (not inside a longer name).
fn word_at(text: &[u8], word: &str) -> Vec<usize> {
    let w = word.as_bytes();
    if w.is_empty() || text.len() < w.len() {
        return Vec::new();
    }
    (0..=text.len() - w.len())
        .filter(|&i| {
            &text[i..i + w.len()] == w
                && (i == 0 || !name_byte(text[i - 1]))
                && text.get(i + w.len()).is_none_or(|b| !name_byte(*b))
        })
        .collect()
}

fn contains_word(text: &[u8], word: &str) -> bool {
    !word_at(text, word).is_empty()
}

/// `text` with each standalone `word` replaced by `with`.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    let mut from = 0;
    for at in word_at(text.as_bytes(), word) {
        if at < from {
            continue;
        }
        out.push_str(&text[from..at]);
        out.push_str(with);
        from = at + word.len();
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: Option<&str>, renames: &[(&str, &str)]) -> ToolNames {
        let filters = Filters {
            tool_prefix: prefix.map(str::to_owned),
            renames: renames.iter().map(|(o, n)| (o.to_string(), n.to_string())).collect(),
            ..Filters::default()
        };
        ToolNames::new(&filters).unwrap()
    }

    #[test]
    fn issue24_2_names_go_both_ways_and_unlisted_names_are_unknown() {
        assert!(ToolNames::new(&Filters::default()).is_none(), "nothing configured: nothing runs");
        let n = names(Some("jira_"), &[("search", "find_issues")]);
        assert_eq!(n.client_name("echo"), "jira_echo");
        assert_eq!(n.client_name("search"), "find_issues", "a renamed tool takes no prefix");
        assert_eq!(n.server_name("jira_echo"), Some("echo"));
        assert_eq!(n.server_name("find_issues"), Some("search"));
        assert_eq!(n.server_name("echo"), None, "without the prefix: not a listed name");
        assert_eq!(n.server_name("jira_search"), None, "a renamed tool's prefixed name is not listed");
        assert_eq!(n.server_name("jira_"), None);
        let r = names(None, &[("a", "b"), ("b", "c")]);
        assert_eq!(
            (r.server_name("b"), r.server_name("c"), r.server_name("a")),
            (Some("a"), Some("b"), None)
        );
        assert_eq!(r.server_name("other"), Some("other"));
    }

    #[test]
    fn issue24_2_a_list_is_renamed_and_a_collision_refused_with_both_names() {
        let n = names(Some("j_"), &[("search", "find")]);
        let page = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"search"},{"name":"echo","description":"echo"}],"nextCursor":"c"}}"#;
        let out: Value = serde_json::from_slice(&n.list(page).unwrap().unwrap()).unwrap();
        assert_eq!(out["result"]["tools"][0]["name"], "find");
        assert_eq!(out["result"]["tools"][1]["name"], "j_echo");
        assert_eq!(out["result"]["tools"][1]["description"], "echo");
        assert_eq!(out["result"]["nextCursor"], "c");
        // A rename onto a name the server lists too.
        let onto = names(None, &[("search", "echo")]);
        let err = onto.list(page).unwrap_err();
        assert_eq!(err.code, NAME_COLLISION);
        assert!(
            err.message.contains("tool echo") && err.message.contains("--rename-tool search=echo"),
            "{}",
            err.message
        );
        // With the prefix: a NEW that is the prefixed name of another tool.
        let err = names(Some("j_"), &[("search", "j_echo")]).list(page).unwrap_err();
        assert!(err.message.contains("listed as j_echo"), "{}", err.message);
        // Nothing to rename: the bytes go on as they came.
        assert!(names(None, &[("nope", "x")]).list(page).unwrap().is_none());
    }

    #[test]
    fn issue24_2_an_answer_says_the_name_the_client_called() {
        let n = names(None, &[("search", "find")]);
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unknown tool: search"}}"#;
        let out: Value = serde_json::from_slice(&n.call_answer("search", error).unwrap()).unwrap();
        assert_eq!(out["error"]["message"], "Unknown tool: find");
        let result = br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[{"type":"text","text":"Error executing tool search: research failed; search_all too"}]}}"#;
        let out: Value = serde_json::from_slice(&n.call_answer("search", result).unwrap()).unwrap();
        assert_eq!(
            out["result"]["content"][0]["text"],
            "Error executing tool find: research failed; search_all too"
        );
        let ok =
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"search results"}]}}"#;
        assert!(n.call_answer("search", ok).is_none(), "a tool's own output is left alone");
        assert!(n.call_answer("other", error).is_none());
    }
}
