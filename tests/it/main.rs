//! Integration tests: the real `mcp-sidecar` binary between a real MCP client and a real MCP
//! server (rmcp, over HTTP on 127.0.0.1). One test binary, one link step.
//!
//! - `architecture`: the shape of `src/` (no import circle, no function over 80 lines; issue 22).
//! - `harness`: the example server behind a recording/fault layer; the sidecar process; the
//!   invariant checks every test runs on its captured stdout and stderr.
//! - `streamable`: the Streamable HTTP happy paths with a real rmcp client (T-01…T-33).
//! - `bytes`: messages forwarded byte for byte in both directions (J-01, J-11).
//! - `eras`: the era bridge between a handshake-era client and a stateless server (issue 13).
//! - `errors`: HTTP and network failures become one clear JSON-RPC error with the request's id.
//! - `hardening`: issue 10's promises against hostile servers, absurd values, slow clients.
//! - `faults`: servers dying mid-request, replies cut off, bodies over the limit.
//! - `legacy`: the 2024-11-05 HTTP+SSE transport, found by auto or forced (T-60, T-61).
//! - `load`, `load_driver`: thousands of calls with 429s and expiring sessions (the full run is a bench).
//! - `ratelimit`: 429s waited out as the server says, one gate per origin shared by processes (R-xx).
//! - `resilience`: expired sessions, server restarts, a dying parent (T-12, issue 4).
//! - `tls`: certificate failures explained; `--ca-file`.
//! - `stdio`: framing, invalid input, shutdown and exit codes (S-01…S-06).
//! - `scripts`: the README's test command (`scripts/test.sh`) with stand-in package managers.

mod architecture;
mod bytes;
mod commands;
mod eras;
mod errors;
mod faults;
mod hardening;
mod harness;
mod legacy;
mod load;
mod load_driver;
// Unix only: the stand-in browser that follows the sign-in redirect is a bash script ($BROWSER,
// /dev/tcp). Windows' own part of the sign-in (opening the browser, `$BROWSER` with drive letters
// and spaces) is in `auth::browser`'s unit tests, which run under Wine in CI.
#[cfg(unix)]
mod oauth;
mod ratelimit;
mod resilience;
// Unix only: bash drives scripts/test.sh with stand-in commands.
#[cfg(unix)]
mod scripts;
mod stdio;
mod streamable;
mod tls;
