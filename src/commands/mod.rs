//! The subcommands. They print for people: progress and errors on stderr, answers on stdout.
//! Each returns its exit status.
//!
//! - [`auth`]: `login`, `logout`, `status` (OAuth sign-in from a terminal).
//! - [`oneshot`]: `call`, `tools`, `tool` (one request through the in-process proxy).
//! - [`check`]: `check` (each step of a connection, timed, with a verdict).
//! - [`install`]: `install` (Claude Desktop's config file, Claude Code's `claude mcp add`).
//! - [`completions`]: `completions` (the shells' scripts, bash's mended).

pub mod auth;
pub mod check;
pub mod completions;
mod exit;
pub mod install;
pub mod oneshot;

pub use auth::{login, logout, status};

pub use exit::{CONFIG, FAILED, OK, SERVER_ERROR};
