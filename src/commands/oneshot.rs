//! `call`, `tools`, `tool`: one request through the in-process proxy, for scripts.
//!
//! The result JSON goes to stdout (pretty-printed), errors to stderr as one sentence. Rate
//! limits are waited out as the proxy does; with stderr on a terminal the wait is a countdown.
//! A server that needs an OAuth sign-in gets one in the browser when run from a terminal; a
//! script is told to run `mcp-sidecar login` first.
//! Exit status: 0 a result, 1 failed (network, auth, the proxy's own error), 2 bad arguments,
//! 3 the server answered with an error (or the tool reported `isError`).

use std::io::{IsTerminal, Write};

use serde_json::{Map, Value, json};

use super::{CONFIG, FAILED, OK, SERVER_ERROR};
use crate::client::Client;
use crate::config::Config;

/// `call METHOD [PARAMS_JSON]`.
pub async fn call(config: Config, method: &str, params: Option<&str>) -> u8 {
    let params = match params.map(serde_json::from_str::<Value>) {
        None => json!({}),
        Some(Ok(v)) if v.is_object() || v.is_array() => v,
        Some(_) => {
            eprintln!(
                "mcp-sidecar: PARAMS_JSON must be a JSON object, e.g. '{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hi\"}}}}' (in single quotes)"
            );
            return CONFIG;
        }
    };
    let Some((mut client, init)) = connect(&config).await else { return FAILED };
    let code = if method == "initialize" {
        print(&init) // the handshake was the call: what the server said about itself
    } else {
        match client.request(method, params).await {
            Ok(result) => print(&result),
            Err(e) => report(&e),
        }
    };
    client.close().await;
    code
}

/// The most pages of `tools/list` read: a server that keeps paging is cut off here.
pub const MAX_TOOL_PAGES: usize = 100;

/// `tools`: one line per tool, `name  description`. Pagination ends at the last page, at a
/// cursor seen before (a cycle of any length, issue 10.15), or after [`MAX_TOOL_PAGES`].
/// `all` (issue 24.1): the proxy lists without the tool filters, and each tool they hide is
/// marked with the rule that hides it. With `--pin-tools` (issue 24.3) the tools it holds are
/// judged here (listed with `all`, counted otherwise); `approve` shows what changed in them
/// and pins them as they are now.
pub async fn tools(config: Config, all: bool, approve: Option<Vec<String>>) -> u8 {
    let hidden = crate::proxy::HiddenBy::new(&config.filters);
    let pins = match Pinned::open(&config, approve.is_some()) {
        Ok(pins) => pins,
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            return FAILED;
        }
    };
    let mut config = config;
    if all || approve.is_some() {
        config.filters.allow_tools.clear();
        config.filters.deny_tools.clear();
    }
    config.filters.pin_tools = None;
    let Some((mut client, _)) = connect(&config).await else { return FAILED };
    let (listed, code) = list_tools(&mut client).await;
    client.close().await;
    if code != OK {
        return code;
    }
    if let Some(names) = approve {
        let Some(pins) = pins else { return FAILED };
        return pins.approve(&hidden, &listed, &names);
    }
    let pins = pins.map(|p| p.first_listing(&hidden, &listed));
    let mut lines = Vec::new();
    let mut held = 0;
    for tool in &listed {
        let name = tool["name"].as_str().unwrap_or("?");
        let mut about = tool["description"].as_str().unwrap_or("").lines().next().unwrap_or("").to_owned();
        if let Some(rule) = hidden.tool(name).filter(|_| all) {
            about = format!("[hidden: {rule}] {about}");
        }
        if let Some(change) = pins.as_ref().and_then(|p| p.held(&hidden, name, tool)) {
            held += 1;
            if !all {
                continue;
            }
            about = format!("[held: {}] {about}", change.said());
        }
        lines.push((name.to_owned(), about));
    }
    let width = lines.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (name, about) in &lines {
        let _ = writeln!(out, "{name:<width$}  {about}");
    }
    drop(out);
    if held > 0 && !all {
        eprintln!(
            "mcp-sidecar: {held} tool(s) are held by --pin-tools (changed or new since they were pinned): see them with tools --all, review and approve them with tools --approve {}",
            crate::net::redact_url(&config.url)
        );
    }
    OK
}

/// Every tool the server lists, page after page; the exit status.
async fn list_tools(client: &mut Client) -> (Vec<Value>, u8) {
    let mut cursor: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    let mut listed = Vec::new();
    loop {
        if seen.len() >= MAX_TOOL_PAGES {
            eprintln!(
                "mcp-sidecar: the server kept paging after {MAX_TOOL_PAGES} pages of tools; showing those"
            );
            return (listed, OK);
        }
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let result = match client.request("tools/list", params).await {
            Ok(result) => result,
            Err(e) => return (listed, report(&e)),
        };
        listed.extend(result["tools"].as_array().into_iter().flatten().cloned());
        match result["nextCursor"].as_str() {
            Some(c) if seen.insert(c.to_owned()) => cursor = Some(c.to_owned()),
            Some(_) => {
                eprintln!(
                    "mcp-sidecar: the server's tool pages loop back to an earlier page; showing each once"
                );
                return (listed, OK);
            }
            None => return (listed, OK),
        }
    }
}

/// The pins of `--pin-tools` (issue 24.3), for `tools`.
struct Pinned {
    path: std::path::PathBuf,
    /// `None`: nothing pinned yet.
    file: Option<crate::proxy::PinFile>,
}

impl Pinned {
    /// The pins of `config`'s endpoint and credential, when `--pin-tools` is given or `approve`.
    fn open(config: &Config, approve: bool) -> Result<Option<Pinned>, String> {
        if config.filters.pin_tools.is_none() && !approve {
            return Ok(None);
        }
        let path = crate::proxy::PinFile::path(config)
            .ok_or("there is no state dir to keep pinned tools in: give one with --state-dir DIR")?;
        let file = crate::proxy::PinFile::load(&path)
            .map_err(|e| format!("the pinned tools cannot be read: {e}"))?;
        Ok(Some(Pinned { path, file }))
    }

    /// Nothing pinned yet: the tools listed are pinned, as the proxy's first listing would.
    fn first_listing(mut self, hidden: &crate::proxy::HiddenBy, listed: &[Value]) -> Pinned {
        if self.file.is_some() {
            return self;
        }
        let mut file = crate::proxy::PinFile::default();
        for tool in listed {
            if let Some(server) = tool["name"].as_str().and_then(|n| hidden.server_name(n)) {
                file.pin(server, tool);
            }
        }
        match file.save(&self.path, true) {
            Ok(_) => {
                eprintln!("mcp-sidecar: {} tools pinned as they are now (--pin-tools)", file.tools.len())
            }
            Err(e) => eprintln!(
                "mcp-sidecar: the pinned tools could not be written to {} ({e})",
                self.path.display()
            ),
        }
        self.file = crate::proxy::PinFile::load(&self.path).ok().flatten();
        self
    }

    /// What keeps the tool the client sees as `name` held, if anything does.
    fn held(
        &self,
        hidden: &crate::proxy::HiddenBy,
        name: &str,
        tool: &Value,
    ) -> Option<crate::proxy::Change> {
        let server = hidden.server_name(name)?;
        let change = self.file.as_ref()?.change(server, tool);
        (change != crate::proxy::Change::Same).then_some(change)
    }

    /// `tools --approve [NAME…]`: each held tool named (every held one when none is), its
    /// changes shown as a diff, then pinned as it is now.
    fn approve(self, hidden: &crate::proxy::HiddenBy, listed: &[Value], names: &[String]) -> u8 {
        let mut file = self.file.unwrap_or_default();
        let (mut approved, mut matched) = (0, std::collections::HashSet::new());
        let mut out = std::io::stdout().lock();
        for tool in listed {
            let shown = tool["name"].as_str().unwrap_or_default();
            let Some(server) = hidden.server_name(shown) else { continue };
            let named: Vec<&String> = names.iter().filter(|n| *n == shown || *n == server).collect();
            let change = file.change(server, tool);
            if (names.is_empty() || !named.is_empty()) && change != crate::proxy::Change::Same {
                let _ = writeln!(out, "{shown}: {}\n{}", change.said(), file.diff(server, tool));
                file.pin(server, tool);
                approved += 1;
            }
            matched.extend(named);
        }
        drop(out);
        if let Some(missing) = names.iter().find(|n| !matched.contains(n)) {
            eprintln!(
                "mcp-sidecar: the server lists no tool {missing}: check the name with mcp-sidecar tools --all"
            );
            return CONFIG;
        }
        if approved == 0 {
            eprintln!("mcp-sidecar: nothing to approve: every tool is as it was pinned");
            return OK;
        }
        if let Err(e) = file.save(&self.path, false) {
            eprintln!("mcp-sidecar: the pinned tools could not be written to {} ({e})", self.path.display());
            return FAILED;
        }
        eprintln!(
            "mcp-sidecar: {approved} tool(s) approved and pinned as they are now; running sidecars let them through at their next listing"
        );
        OK
    }
}

/// `tool NAME [--arg k=v …|--json '{…}']`.
pub async fn tool(config: Config, name: &str, args: &[String], json_args: Option<&str>) -> u8 {
    let arguments = match tool_arguments(args, json_args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            return CONFIG;
        }
    };
    let Some((mut client, _)) = connect(&config).await else { return FAILED };
    let mut arguments = arguments;
    if json_args.is_none() {
        Box::pin(type_by_schema(&mut client, name, args, &mut arguments)).await;
    }
    let code = match client.request("tools/call", json!({"name": name, "arguments": arguments})).await {
        Ok(result) => {
            let code = print(&result);
            if result["isError"] == json!(true) {
                let text: Vec<&str> = result["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect();
                eprintln!("mcp-sidecar: the tool {name} reported an error: {}", text.join(" "));
                SERVER_ERROR
            } else {
                code
            }
        }
        Err(e) if e["data"]["kind"] == "hidden_tool" => {
            eprintln!(
                "mcp-sidecar: the tool {name:?} is hidden by --allow-tools or --deny-tools, so it was not called: mcp-sidecar tools, with the same options, lists what a client sees"
            );
            CONFIG
        }
        Err(e) if unknown_tool(&e) => {
            // Issue 23.11: "tool not found" named neither the tool nor where the list is.
            eprintln!(
                "mcp-sidecar: the server has no tool {name:?} ({}: {}): mcp-sidecar tools, with the same options, lists the ones it has",
                e["code"],
                e["message"].as_str().unwrap_or("?")
            );
            SERVER_ERROR
        }
        Err(e) => report(&e),
    };
    client.close().await;
    code
}

/// Whether a `tools/call` error says the tool does not exist (the spec's -32602 "Unknown tool",
/// or the wording servers use).
fn unknown_tool(error: &Value) -> bool {
    let message = error["message"].as_str().unwrap_or_default().to_ascii_lowercase();
    error["data"]["source"] != "mcp-sidecar"
        && message.contains("tool")
        && ["unknown", "not found", "no such", "does not exist"].iter().any(|w| message.contains(w))
}

/// Issue 23.11: `--arg text=true` was sent as a boolean though the tool's schema says string.
/// Only when some `--arg` value reads as something other than a string is the tool's schema
/// looked up (one `tools/list` a page, until the tool is found: the call costs nothing more
/// otherwise), and a value whose property is declared a string, and not the type it read as,
/// goes as the text given.
async fn type_by_schema(client: &mut Client, name: &str, pairs: &[String], arguments: &mut Value) {
    let Some(map) = arguments.as_object_mut() else { return };
    let typed: Vec<&String> = map.iter().filter(|(_, v)| !v.is_string()).map(|(k, _)| k).collect();
    if typed.is_empty() {
        return;
    }
    let Some(schema) = tool_schema(client, name).await else { return };
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else { continue };
        let declared = &schema["properties"][key]["type"];
        let types: Vec<&str> = match declared {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let read_as = match map.get(key) {
            Some(Value::Bool(_)) => "boolean",
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => "integer",
            Some(Value::Number(_)) => "number",
            Some(Value::Null) => "null",
            Some(Value::Array(_)) => "array",
            Some(Value::Object(_)) => "object",
            _ => continue,
        };
        let fits = types.contains(&read_as) || (read_as == "integer" && types.contains(&"number"));
        if types.contains(&"string") && !fits {
            map.insert(key.to_owned(), Value::String(raw.to_owned()));
        }
    }
}

/// The `inputSchema` of the tool `name`, from the server's list (at most ten pages).
async fn tool_schema(client: &mut Client, name: &str) -> Option<Value> {
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let page = client.request("tools/list", params).await.ok()?;
        let tools = page["tools"].as_array()?;
        if let Some(tool) = tools.iter().find(|t| t["name"] == name) {
            return Some(tool["inputSchema"].clone());
        }
        cursor = Some(page["nextCursor"].as_str()?.to_owned());
    }
    None
}

/// The arguments object from `--json`, or from `--arg key=value` pairs (JSON values where they
/// parse: `n=3` is a number, `flag=true` a boolean, `name=bob` a string).
pub fn tool_arguments(args: &[String], json_args: Option<&str>) -> Result<Value, String> {
    if let Some(j) = json_args {
        return match serde_json::from_str::<Value>(j) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(format!("--json {j:?} is not a JSON object: write it like '{{\"text\":\"hi\"}}'")),
        };
    }
    let mut map = Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!("--arg {a:?} needs the form key=value"));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        map.insert(k.to_owned(), value);
    }
    Ok(Value::Object(map))
}

/// Sets up the proxy and runs the handshake; the client and the initialize result, or `None`
/// after reporting why not.
/// A browser sign-in starts only from a terminal; a script gets the error that says to run
/// `mcp-sidecar login` first.
async fn connect(config: &Config) -> Option<(Client, Value)> {
    let mut config = config.clone();
    if let Some(oauth) = config.oauth.as_mut() {
        oauth.interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    }
    let config = &config;
    let mut client = match Client::new(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            return None;
        }
    };
    client.show_waits(std::io::stderr().is_terminal(), config);
    match client.initialize().await {
        (Ok(init), _) => Some((client, init)),
        (Err(e), _) => {
            report(&e);
            client.close().await;
            None
        }
    }
}

fn print(result: &Value) -> u8 {
    let mut out = std::io::stdout().lock();
    let text = serde_json::to_string_pretty(result).unwrap_or_default();
    match writeln!(out, "{text}") {
        Ok(()) => OK,
        Err(_) => FAILED,
    }
}

/// Prints a JSON-RPC error as one line; the exit status says whose error it was.
fn report(error: &Value) -> u8 {
    let message = error["message"].as_str().unwrap_or("unknown error");
    let local = error["data"]["source"] == "mcp-sidecar";
    if local {
        eprintln!("mcp-sidecar: {message}");
        FAILED
    } else {
        let code = &error["code"];
        eprintln!("mcp-sidecar: the server answered with an error ({code}): {message}");
        SERVER_ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_arguments_from_pairs_or_json() {
        let a = tool_arguments(&["n=3".into(), "flag=true".into(), "name=bob".into(), "eq=a=b".into()], None)
            .unwrap();
        assert_eq!(a, json!({"n": 3, "flag": true, "name": "bob", "eq": "a=b"}));
        assert_eq!(tool_arguments(&[], Some(r#"{"text":"hi"}"#)).unwrap(), json!({"text": "hi"}));
        assert!(tool_arguments(&[], Some("[1]")).unwrap_err().contains("JSON object"));
        assert!(tool_arguments(&["novalue".into()], None).unwrap_err().contains("key=value"));
    }
}
