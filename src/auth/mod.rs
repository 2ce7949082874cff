//! OAuth 2.1 for MCP servers that require it (issue 5): the parts that are pure functions so far.
//!
//! - [`challenge`]: `WWW-Authenticate` parsed as RFC 9110 auth-params.
//! - [`discovery`]: where to look for protected-resource and authorization-server metadata, in
//!   the order the 2025-11-25 specification requires, and whether a protected
//!   resource's `resource` may be used for our URL.
//! - [`store`]: the token files (one per server, 0700/0600, atomic, exposed files refused).
//!
//! The flow itself (registration, PKCE, the loopback callback, refresh, locking between
//! processes) is not built yet; nothing here sends a request.

pub mod challenge;
pub mod discovery;
pub mod store;
