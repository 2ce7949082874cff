//! What the proxy does to messages beyond forwarding them: each policy is a small type with its
//! own state, built once at start. Today: `params` (`x-mcp-header` learning and the
//! `Mcp-Param-*` headers, T-15) and `lists` (stateless-era lists reused within their `ttlMs`).
//! New per-message policies (filters, renaming, pinning) go here, beside them.

pub(super) mod lists;
pub(super) mod params;

/// The policies of one run, each owning its state.
#[derive(Default)]
pub(super) struct Policies {
    pub(super) params: params::Params,
    pub(super) lists: lists::ListCache,
}
