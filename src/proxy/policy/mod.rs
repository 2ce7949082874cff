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
//! (stateless-era lists reused within their `ttlMs`) and `filter` (`--allow-tools`,
//! `--deny-tools`, issue 24.1). A new per-message policy (a tool filter, a
//! rename, a pin) is a file here, a field of [`Policies`] and a line in each hook it uses.

pub(super) mod filter;
pub(super) mod lists;
pub(super) mod params;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::envelope::{self, Params};
use crate::upstream::headers::MessageHeaders;

/// The policies of one run, each owning its state.
#[derive(Default)]
pub(super) struct Policies {
    pub(super) params: params::Params,
    pub(super) lists: lists::ListCache,
    /// `--allow-tools`/`--deny-tools`, `--allow-prompts`/`--deny-prompts`, `--deny-resources`
    /// (issue 24.1); empty when none is given.
    pub(super) filters: Vec<filter::NameFilter>,
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
}

impl Hooks {
    fn any(&self) -> bool {
        self.learn_tools || self.list_key.is_some() || self.filter.is_some()
    }
}

/// What the policies decided for a client request on its way up.
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
        Policies { filters: filters.into_iter().flatten().collect(), ..Policies::default() }
    }

    /// Issue 24.1: the error for a request of an item a filter hides (`tools/call`,
    /// `prompts/get`, `resources/read`: the spec's error for an unknown one, which the model
    /// reads; `data.kind` says `hidden_tool`); `None` otherwise. Every era and adapter asks this
    /// before a request goes on.
    pub(super) fn hidden_call(
        &self,
        method: &str,
        params: &Params<'_>,
    ) -> Option<crate::envelope::LocalError> {
        if self.filters.is_empty() {
            return None;
        }
        let over = filter::Over::of_request(method)?;
        let filter = self.filters.iter().find(|f| f.over() == over)?;
        let item =
            if over == filter::Over::Resources { params.uri.as_deref() } else { params.name.as_deref() }?;
        let rule = filter.hides(item)?;
        tracing::info!("{method} of the hidden {item:?} answered here ({rule})");
        Some(over.unknown(item))
    }

    /// The filter a request of `method` has its answer pass through, if any.
    pub(super) fn filters(&self, method: &str) -> Option<filter::Over> {
        if self.filters.is_empty() {
            return None;
        }
        filter::Over::of_list(method).filter(|over| self.filters.iter().any(|f| f.over() == *over))
    }

    /// Whether any filter is given.
    pub(super) fn filtering(&self) -> bool {
        !self.filters.is_empty()
    }

    /// A client request of the same era on its way up.
    pub(super) fn request(&self, method: &str, params: &Params<'_>) -> Step {
        if let Some(err) = self.hidden_call(method, params) {
            return Step::Refuse(err);
        }
        let headers = self.params.request_headers(method, params);
        let modern = headers.is_modern();
        let list_key = (modern && lists::cacheable(method)).then(|| lists::key(method, params));
        if let Some(cached) = list_key.as_deref().and_then(|k| self.lists.get(k)) {
            return Step::Answer(cached);
        }
        let filter = self.filters(method);
        Step::Pass(headers, Hooks { learn_tools: modern && method == "tools/list", list_key, filter })
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
