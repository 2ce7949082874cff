//! The subcommands. They print for people: progress and errors on stderr, answers on stdout.
//! Each returns its exit status.
//!
//! - [`auth`]: `login`, `logout`, `status` (OAuth sign-in from a terminal).
//! - [`oneshot`]: `call`, `tools`, `tool` (one request through the in-process proxy).
//! - [`check`]: `check` (each step of a connection, timed, with a verdict).
//! - [`install`]: `install` (Claude Desktop's config file, Claude Code's `claude mcp add`).

pub mod auth;
pub mod check;
pub mod install;
pub mod oneshot;

pub use auth::{login, logout, status};

/// Done.
pub const OK: u8 = 0;
/// Failed: the reason is on stderr.
pub const FAILED: u8 = 1;
/// A configuration problem.
pub const CONFIG: u8 = 2;
/// The server answered with a JSON-RPC error (`call`, `tool`), or a tool reported `isError`.
pub const SERVER_ERROR: u8 = 3;
