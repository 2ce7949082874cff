//! The exit statuses of the subcommands (README, "Exit codes").

/// Done.
pub const OK: u8 = 0;
/// Failed: the reason is on stderr.
pub const FAILED: u8 = 1;
/// A configuration problem.
pub const CONFIG: u8 = 2;
/// The server answered with a JSON-RPC error (`call`, `tool`), or a tool reported `isError`.
pub const SERVER_ERROR: u8 = 3;
