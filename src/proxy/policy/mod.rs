//! The policy seam: what the proxy does to messages beyond forwarding them, in one place.
//!
//! Each policy is a small type with its own state, built once at start ([`Policies::default`]);
//! the three hooks below are the only places the message path calls them, in a fixed order:
//!
//! - [`Policies::request`]: a client request on its way up, synchronous, on the borrowed
//!   message. It gives the request's headers and the [`Hooks`] its answer needs, or answers it
//!   here ([`Step::Answer`]).
//! - [`Policies::answer`]: the answer of a request whose [`Hooks`] name a policy, just before
//!   the ledger hands it over (nothing for the others: no cost on the common path).
//! - [`Policies::observe`]: a server notification on its way to the client.
//!
//! Today: `params` (`x-mcp-header` learning and the `Mcp-Param-*` headers, T-15), `lists`
//! (stateless-era lists reused within their `ttlMs`), `filter` (`--allow-tools`,
//! `--deny-tools`, issue 24.1) and `names` (`--tool-prefix`, `--rename-tool`, issue 24.2).
//! A new per-message policy (a pin) is a file here, a field of [`Policies`] and a line in each
//! hook it uses.
//!
//! Filters and names also read each client line once before any era adapter
//! ([`Policies::client_line`]): a hidden or unlisted tool's call is answered there, and a
//! renamed tool's call goes on under the server's name, in every era, bridged or not.

pub(super) mod disk;
pub(super) mod filter;
pub(super) mod kept;
pub(super) mod lists;
pub(super) mod names;
pub(super) mod params;
pub(super) mod pins;
pub(super) mod progress;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::envelope::{self, Envelope, Kind, Params};
use crate::upstream::headers::MessageHeaders;

/// The policies of one run, each owning its state.
#[derive(Default)]
pub(super) struct Policies {
    pub(super) params: params::Params,
    pub(super) lists: lists::ListCache,
    /// `--allow-tools`/`--deny-tools`, `--allow-prompts`/`--deny-prompts`, `--deny-resources`
    /// (issue 24.1); empty when none is given.
    pub(super) filters: Vec<filter::NameFilter>,
    /// `--tool-prefix`, `--rename-tool` (issue 24.2); `None` when tools keep their names.
    pub(super) names: Option<names::ToolNames>,
    /// Progress while a request waits here (issue 24.4): the tracks of requests with a token.
    pub(super) progress: progress::Tracks,
    /// `--pin-tools` (issue 24.3).
    pub(super) pins: Option<pins::Pins>,
    /// The last `initialize` answer and lists, kept for a bad minute (issue 24.5).
    pub(super) kept: Option<kept::Kept>,
}

/// What a request's answer passes through on its way back (kept with the request in the ledger).
#[derive(Debug, Clone, Default)]
pub(super) struct Hooks {
    /// A 2026-07-28 `tools/list`: its result teaches `x-mcp-header` (T-15).
    pub(super) learn_tools: bool,
    /// A stateless-era list whose result may be reused: its key in the list cache.
    pub(super) list_key: Option<String>,
    /// A list whose answer loses the items a filter hides (issue 24.1).
    pub(super) filter: Option<filter::Over>,
    /// A `tools/list` whose tools are listed under the client's names (issue 24.2).
    pub(super) rename_list: bool,
    /// A `tools/list` whose tools are judged against their pins (issue 24.3).
    pub(super) pin_list: bool,
    /// A call of a renamed tool: the server's name, which its answer's errors say as the
    /// client's (issue 24.2).
    pub(super) called: Option<Box<str>>,
    /// A request with a progress token: the client hears of its waits here (issue 24.4). Not
    /// an answer hook: its answer goes by as any other.
    pub(super) progress: Option<std::sync::Arc<progress::Track>>,
    /// An answer kept for a bad minute (issue 24.5): its method. Not an answer hook either:
    /// the server's bytes are kept as they came, in `Core::deliver`.
    pub(super) keep: Option<&'static str>,
}

impl Hooks {
    fn any(&self) -> bool {
        self.learn_tools
            || self.list_key.is_some()
            || self.filter.is_some()
            || self.rename_list
            || self.pin_list
            || self.called.is_some()
    }
}

/// A client line after [`Policies::client_line`].
pub(super) struct Inbound {
    /// What goes on to the era adapter (`None`: nothing is left to send).
    pub(super) line: Option<Bytes>,
    /// Answers made here, for stdout.
    pub(super) answers: Vec<Bytes>,
    /// A `tools/list` while `--pin-tools` holds a tool: the pins are read again first
    /// ([`Policies::refresh_pins`]).
    pub(super) relist: bool,
}

/// One message of a client line, as the filters and names see it.
enum Seen {
    Keep,
    Rewritten(Vec<u8>),
    Refused(Bytes),
}

/// What the policies decided for a client request on its way up.
#[allow(clippy::large_enum_variant)] // moved once per request, never stored: a box would cost a malloc
pub(super) enum Step {
    /// Send it, with these headers; its answer passes through these hooks.
    Pass(MessageHeaders, Hooks),
    /// Answered here with this result (a list still fresh in the cache costs the server nothing).
    Answer(Box<RawValue>),
    /// Answered here with this error (a hidden tool's call: it never reaches the server).
    Refuse(crate::envelope::LocalError),
}

impl Policies {
    /// The policies `config` asks for.
    pub(super) fn new(config: &crate::config::Config) -> Policies {
        let f = &config.filters;
        let filters = [
            filter::NameFilter::new(filter::Over::Tools, &f.allow_tools, &f.deny_tools),
            filter::NameFilter::new(filter::Over::Prompts, &f.allow_prompts, &f.deny_prompts),
            filter::NameFilter::new(filter::Over::Resources, &[], &f.deny_resources),
        ];
        Policies {
            filters: filters.into_iter().flatten().collect(),
            names: names::ToolNames::new(&config.filters),
            pins: pins::Pins::new(config, &crate::net::redact_url(&config.url)),
            kept: kept::Kept::new(config, &crate::net::redact_url(&config.url)),
            ..Policies::default()
        }
    }

    /// Whether client lines are read before the era adapter: names or pins are given, or
    /// filters with an adapter other than the same-era path (`same`), which asks
    /// [`Policies::request`] instead: one parse of each line, not two.
    pub(super) fn reads_lines(&self, same: bool) -> bool {
        self.names.is_some() || self.pins.is_some() || (!same && !self.filters.is_empty())
    }

    /// A client line before any era adapter (a batch member by member): the call of a tool a
    /// filter hides, or of a name the client was never shown, is answered here with the spec's
    /// error for an unknown tool (`data.kind` `hidden_tool`) and never sent; a renamed tool's
    /// call goes on under the server's name. Other messages go on as they came.
    pub(super) fn client_line(&self, line: Bytes) -> Inbound {
        if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return self.client_batch(line);
        }
        let relist = self.pins.as_ref().is_some_and(pins::Pins::holds_any)
            && Envelope::parse(&line).is_ok_and(|e| e.method.as_deref() == Some("tools/list"));
        match self.client_message(&line) {
            Seen::Keep => Inbound { line: Some(line), answers: Vec::new(), relist },
            Seen::Rewritten(new) => Inbound { line: Some(new.into()), answers: Vec::new(), relist },
            Seen::Refused(answer) => Inbound { line: None, answers: vec![answer], relist: false },
        }
    }

    /// Shutdown: the pins and kept lists being written are on disk before the process ends.
    pub(super) async fn flush(&self) {
        if let Some(pins) = &self.pins {
            pins.flush().await;
        }
        if let Some(kept) = &self.kept {
            kept.flush().await;
        }
    }

    /// Issue 24.5: the answer to the client's `method` request `id` from what was kept, passed
    /// through the same policies as a fresh one; `None` when nothing was kept for it.
    pub(super) fn stale(&self, method: &str, id: &RawValue, params: &Params<'_>) -> Option<Bytes> {
        let keep = kept::Kept::keeps(method, params.cursor.is_some())?;
        let (result, _) = self.kept.as_ref()?.stale(keep)?;
        let message: Bytes = crate::era::response_with_id(id, "result", &result).into();
        Some(self.answer(&self.hooks(method, params, false), message))
    }

    /// Reads the pins again if an approval changed them (issue 24.3).
    /// A list kept from before is forgotten then: it lacks what was approved.
    pub(super) async fn refresh_pins(&self) {
        if let Some(pins) = &self.pins
            && pins.refresh().await
        {
            self.lists.changed("notifications/tools/list_changed");
        }
    }

    /// [`Policies::client_line`] for a 2025-03-26 batch (J-07): members refused here leave it.
    fn client_batch(&self, line: Bytes) -> Inbound {
        let Ok(members) = serde_json::from_slice::<Vec<&RawValue>>(&line) else {
            return Inbound { line: Some(line), answers: Vec::new(), relist: false };
        };
        let (mut kept, mut answers, mut changed) = (Vec::new(), Vec::new(), false);
        for member in &members {
            match self.client_message(member.get().as_bytes()) {
                Seen::Keep => kept.push(member.get().to_owned()),
                Seen::Rewritten(new) => {
                    kept.push(String::from_utf8(new).unwrap_or_default());
                    changed = true;
                }
                Seen::Refused(answer) => {
                    answers.push(answer);
                    changed = true;
                }
            }
        }
        let line = match (changed, kept.is_empty()) {
            (false, _) => Some(line.clone()),
            (true, true) => None,
            (true, false) => Some(format!("[{}]", kept.join(",")).into()),
        };
        Inbound { line, answers, relist: false }
    }

    /// One client message: a request for a hidden or unlisted item refused, a renamed tool's
    /// call rewritten.
    fn client_message(&self, msg: &[u8]) -> Seen {
        let Ok(env) = Envelope::parse(msg) else { return Seen::Keep };
        if env.kind().ok() != Some(Kind::Request) {
            return Seen::Keep;
        }
        let method = env.method.as_deref().unwrap_or_default();
        let params = env.params();
        let item = if method == "resources/read" { params.uri.as_deref() } else { params.name.as_deref() };
        let mut renamed = None;
        if let (Some(names), "tools/call", Some(client)) = (&self.names, method, item) {
            match names.server_name(client) {
                Some(server) if server != client => renamed = Some(server),
                Some(_) => {}
                None => {
                    tracing::info!("tools/call of {client:?}, a name no tool is listed under, answered here");
                    return Seen::Refused(filter::Over::Tools.unknown(client).to_response(env.id).into());
                }
            }
        }
        if let Some(item) = item
            && let Some(err) = self.refusal_of(method, renamed.unwrap_or(item), item)
        {
            return Seen::Refused(err.to_response(env.id).into());
        }
        match renamed.and_then(|server| with_name(msg, server)) {
            Some(new) => Seen::Rewritten(new),
            None => Seen::Keep,
        }
    }

    /// The error for a request answered here (an item a filter hides, a tool the pins hold);
    /// `None` for the others, at once when neither is given. The same-era path asks this in
    /// [`Policies::request`] (one parse of the line when only filters are given).
    pub(super) fn refusal(&self, method: &str, params: &Params<'_>) -> Option<crate::envelope::LocalError> {
        if self.filters.is_empty() && self.pins.is_none() {
            return None;
        }
        let item = if method == "resources/read" { params.uri.as_deref() } else { params.name.as_deref() }?;
        self.refusal_of(method, item, item)
    }

    /// [`Policies::refusal`] of the item the server calls `item` and the client `shown`.
    fn refusal_of(&self, method: &str, item: &str, shown: &str) -> Option<crate::envelope::LocalError> {
        if let Some(err) = self.hidden(method, item, shown) {
            return Some(err);
        }
        match (&self.pins, method) {
            (Some(pins), "tools/call") => pins.refuse(item, shown),
            _ => None,
        }
    }

    /// Issue 24.1: the error for a request of the item `item` (the server's name; `shown`:
    /// the client's) a filter hides (`tools/call`, `prompts/get`, `resources/read`: the spec's
    /// error for an unknown one, which the model reads; `data.kind` says `hidden_tool`); `None`
    /// otherwise.
    fn hidden(&self, method: &str, item: &str, shown: &str) -> Option<crate::envelope::LocalError> {
        if self.filters.is_empty() {
            return None;
        }
        let over = filter::Over::of_request(method)?;
        let filter = self.filters.iter().find(|f| f.over() == over)?;
        let rule = filter.hides(item)?;
        tracing::info!("{method} of the hidden {item:?} answered here ({rule})");
        Some(over.unknown(shown))
    }

    /// The filter a request of `method` has its answer pass through, if any.
    pub(super) fn filters(&self, method: &str) -> Option<filter::Over> {
        if self.filters.is_empty() {
            return None;
        }
        filter::Over::of_list(method).filter(|over| self.filters.iter().any(|f| f.over() == *over))
    }

    /// The progress track of a client line that carries a progress token (issue 24.4).
    pub(super) fn track_of(&self, line: &[u8]) -> Option<std::sync::Arc<progress::Track>> {
        let env = Envelope::parse(line).ok()?;
        let token = env.params().meta?.progress_token?;
        self.progress.start(token)
    }

    /// The hooks the answer of a request of `method` passes through (`modern`: in the
    /// 2026-07-28 era); the list cache's key is the caller's.
    pub(super) fn hooks(&self, method: &str, params: &Params<'_>, modern: bool) -> Hooks {
        let names = self.names.as_ref();
        let called = (method == "tools/call")
            .then_some(names)
            .flatten()
            .zip(params.name.as_deref())
            .filter(|(names, server)| names.client_name(server) != *server)
            .map(|(_, server)| server.into());
        Hooks {
            learn_tools: modern && method == "tools/list",
            list_key: None,
            filter: self.filters(method),
            rename_list: names.is_some() && method == "tools/list",
            pin_list: self.pins.is_some() && method == "tools/list",
            called,
            progress: params
                .meta
                .as_ref()
                .and_then(|m| m.progress_token)
                .and_then(|t| self.progress.start(t)),
            keep: self.kept.as_ref().and_then(|_| kept::Kept::keeps(method, params.cursor.is_some())),
        }
    }

    /// A client request of the same era on its way up (after [`Policies::client_line`]).
    pub(super) fn request(&self, method: &str, params: &Params<'_>) -> Step {
        if let Some(err) = self.refusal(method, params) {
            return Step::Refuse(err);
        }
        let headers = self.params.request_headers(method, params);
        let modern = headers.is_modern();
        let list_key = (modern && lists::cacheable(method)).then(|| lists::key(method, params));
        if let Some(cached) = list_key.as_deref().and_then(|k| self.lists.get(k)) {
            return Step::Answer(cached);
        }
        Step::Pass(headers, Hooks { list_key, ..self.hooks(method, params, modern) })
    }

    /// The answer `message` of a request with `hooks`, made one line (S-02), as the client gets
    /// it: tools with invalid `x-mcp-header` annotations left out (T-15), the list kept.
    pub(super) fn answer(&self, hooks: &Hooks, message: Bytes) -> Bytes {
        if !hooks.any() {
            return envelope::one_line(message);
        }
        let message = match hooks.learn_tools.then(|| self.params.learn_tools(&message)).flatten() {
            Some(filtered) => envelope::one_line(filtered.into()),
            None => envelope::one_line(message),
        };
        let filtered = hooks
            .filter
            .and_then(|over| self.filters.iter().find(|f| f.over() == over))
            .and_then(|f| f.list(&message));
        let message = filtered.map_or(message, |m| envelope::one_line(m.into()));
        let pinned = self.pins.as_ref().filter(|_| hooks.pin_list).and_then(|p| p.list(&message));
        let message = pinned.map_or(message, |m| envelope::one_line(m.into()));
        let message = match &self.names {
            Some(names) if hooks.rename_list => match names.list(&message) {
                Ok(renamed) => renamed.map_or(message, |m| envelope::one_line(m.into())),
                Err(err) => {
                    let id = Envelope::parse(&message).ok().and_then(|e| e.id.map(RawValue::to_owned));
                    return err.to_response(id.as_deref()).into();
                }
            },
            Some(names) if let Some(server) = &hooks.called => {
                names.call_answer(server, &message).map_or(message, |m| envelope::one_line(m.into()))
            }
            _ => message,
        };
        if let Some(key) = &hooks.list_key {
            self.lists.put(key.clone(), &message);
        }
        message
    }

    /// A server notification of `method` on its way to the client: a list change forgets the
    /// list kept.
    pub(super) fn observe(&self, method: &str) {
        if !self.lists.is_empty() {
            self.lists.changed(method);
        }
    }
}

/// `msg` with `params.name` set to `name` (a renamed tool's call, issue 24.2).
fn with_name(msg: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(msg).ok()?;
    *value.pointer_mut("/params/name")? = Value::String(name.to_owned());
    serde_json::to_vec(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filters;
    use serde_json::json;

    /// Issue 24.2 (and 24.1) in a 2025-03-26 batch: a renamed member goes on under the server's
    /// name, an unlisted or hidden one leaves the batch with its answer, the rest go as they came.
    #[test]
    fn issue24_2_a_batch_is_read_member_by_member() {
        let given = Filters {
            deny_tools: vec!["secret".into()],
            renames: vec![("sum".into(), "add".into())],
            ..Filters::default()
        };
        let policies = Policies {
            filters: filter::NameFilter::new(filter::Over::Tools, &[], &given.deny_tools)
                .into_iter()
                .collect(),
            names: names::ToolNames::new(&given),
            ..Policies::default()
        };
        let line = Bytes::from_static(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{}}},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"sum"}},
                {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"secret"}},
                {"jsonrpc":"2.0","method":"notifications/progress","params":{"name":"sum"}}]"#,
        );
        let seen = policies.client_line(line);
        let sent: Vec<Value> = serde_json::from_slice(&seen.line.unwrap()).unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0]["params"]["name"], "sum");
        assert_eq!(sent[1]["params"]["name"], "sum", "a notification goes on as it came");
        let answers: Vec<Value> = seen.answers.iter().map(|a| serde_json::from_slice(a).unwrap()).collect();
        assert_eq!(answers[0]["error"]["message"], "Unknown tool: sum");
        assert_eq!(answers[1]["error"]["message"], "Unknown tool: secret");
        assert_eq!((answers[0]["id"].clone(), answers[1]["id"].clone()), (json!(2), json!(3)));
        // Nothing left to send.
        let all_refused = Bytes::from_static(
            br#"[{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"secret"}}]"#,
        );
        assert!(policies.client_line(all_refused).line.is_none());
        // A line that names no tool goes on as the same bytes.
        let plain =
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(policies.client_line(plain.clone()).line.unwrap(), plain);
    }
}
