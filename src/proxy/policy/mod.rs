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
//! Today: `params` (`x-mcp-header` learning and the `Mcp-Param-*` headers, T-15) and `lists`
//! (stateless-era lists reused within their `ttlMs`). A new per-message policy (a tool filter, a
//! rename, a pin) is a file here, a field of [`Policies`] and a line in each hook it uses.

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
}

/// What a request's answer passes through on its way back (kept with the request in the ledger).
#[derive(Debug, Clone, Default)]
pub(super) struct Hooks {
    /// A 2026-07-28 `tools/list`: its result teaches `x-mcp-header` (T-15).
    pub(super) learn_tools: bool,
    /// A stateless-era list whose result may be reused: its key in the list cache.
    pub(super) list_key: Option<String>,
}

impl Hooks {
    fn any(&self) -> bool {
        self.learn_tools || self.list_key.is_some()
    }
}

/// What the policies decided for a client request on its way up.
pub(super) enum Step {
    /// Send it, with these headers; its answer passes through these hooks.
    Pass(MessageHeaders, Hooks),
    /// Answered here with this result (a list still fresh in the cache costs the server nothing).
    Answer(Box<RawValue>),
}

impl Policies {
    /// A client request of the same era on its way up.
    pub(super) fn request(&self, method: &str, params: &Params<'_>) -> Step {
        let headers = self.params.request_headers(method, params);
        let modern = headers.is_modern();
        let list_key = (modern && lists::cacheable(method)).then(|| lists::key(method, params));
        if let Some(cached) = list_key.as_deref().and_then(|k| self.lists.get(k)) {
            return Step::Answer(cached);
        }
        Step::Pass(headers, Hooks { learn_tools: modern && method == "tools/list", list_key })
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
