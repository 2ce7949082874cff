//! What every part of the sign-in shares: its error, the clock, work off the runtime thread, and
//! server text made safe to show. A leaf of `auth`: the parts import it, it imports none of them
//! but the store's error.

use std::time::{SystemTime, UNIX_EPOCH};

use super::store::StoreError;

/// A sign-in problem, as one sentence for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError(e.to_string())
    }
}

/// Runs blocking `work` (files, the keyring) off the runtime's thread.
pub(super) async fn off_thread<T: Send + 'static, E: Into<AuthError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, AuthError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(AuthError("the token store could not be used (its worker stopped)".into())),
    }
}

/// Server-provided text made safe for one log line: no control characters, bounded length, no
/// secret of ours echoed back (issue 10.9).
pub(super) fn clean(s: &str) -> String {
    let text: String = s.chars().filter(|c| !c.is_control()).collect();
    crate::secrets::redact(&text).chars().take(200).collect()
}

/// Seconds since the epoch, by the wall clock (tokens' lifetimes are wall-clock times).
pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
