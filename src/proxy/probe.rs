//! What both era bridges share (issue 22: `bridge.rs` and `reverse.rs` imported each other for
//! it): the verdict of a `server/discover` probe, and reading a bridged line again.

use serde_json::value::RawValue;

use crate::envelope::{Envelope, ErrorKind, LocalError, UPSTREAM_ERROR};
use crate::era::{ClientMeta, Era};

/// What the `server/discover` probe found.
pub(super) enum Probe {
    /// The server speaks the stateless era only.
    Stateless { discover: Box<RawValue>, meta: ClientMeta },
    /// It speaks the handshake era (perhaps both).
    Speaks(Era),
    /// No answer to judge by (unreachable, refused credentials, a timeout).
    Failed(LocalError),
}

/// A bridged request's line, read again in its task, and its id.
pub(super) fn reread(line: &[u8]) -> Result<(Envelope<'_>, &RawValue), LocalError> {
    let env = Envelope::parse(line).map_err(|_| unreadable())?;
    let id = env.id.ok_or_else(unreadable)?;
    Ok((env, id))
}

/// A message the bridge made or checked already cannot be read: a bug, said as one.
pub(super) fn unreadable() -> LocalError {
    let mut err = LocalError::new(
        UPSTREAM_ERROR,
        ErrorKind::BadResponse,
        "mcp-sidecar cannot read a message it made or checked before (a bug)",
    );
    err.request_sent = Some(true);
    err
}
