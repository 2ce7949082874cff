//! What is known of the server's era (issues 13, 20): `--protocol-era`, the memory in the state
//! dir (a day, per endpoint), the era once an answer proved one, and when the next era probe may
//! go after a failed one. A leaf: the probe and the bridges use it; it sends nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::debug;

use crate::cli::ProtocolEra;
use crate::era::{Era, EraCache};
use crate::sync::Locked;

/// The longest a failed era probe keeps the next one waiting (issue 20).
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(60);

/// The era settings and knowledge of one run.
pub(super) struct Eras {
    /// `--protocol-era`.
    pub(super) setting: ProtocolEra,
    /// Where the server's era is remembered (no state dir: not remembered).
    cache: Option<EraCache>,
    /// The era is decided for this run.
    settled: AtomicBool,
    /// The server's era, once learned.
    server: Mutex<Option<Era>>,
    /// Ids of the proxy's own requests.
    next_id: AtomicU64,
    /// When the era probe may be tried again after a failure.
    backoff: Mutex<ProbeBackoff>,
}

/// Failed era probes in a row, and when the next one is due.
#[derive(Default)]
struct ProbeBackoff {
    failures: u32,
    until: Option<Instant>,
}

impl Eras {
    pub(super) fn new(setting: ProtocolEra, cache: Option<EraCache>) -> Eras {
        Eras {
            setting,
            cache,
            settled: AtomicBool::new(false),
            server: Mutex::new(None),
            next_id: AtomicU64::new(0),
            backoff: Mutex::new(ProbeBackoff::default()),
        }
    }

    /// The server's era is known (`found`): nothing is decided again for this run.
    pub(super) fn settle(&self, found: Era) {
        *self.server.locked() = Some(found);
        self.settled.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// The server's era as learned.
    pub(super) fn server(&self) -> Option<Era> {
        *self.server.locked()
    }

    /// A number for the next id of the proxy's own.
    pub(super) fn next_own_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets the era remembered for this server, in memory and in the state dir.
    pub(super) fn forget(&self) {
        if let Some(cache) = &self.cache {
            cache.forget();
        }
        *self.server.locked() = None;
    }

    /// The server's era as remembered in the state dir (read off the runtime thread).
    pub(super) async fn cached(&self) -> Option<Era> {
        let cache = self.cache.clone()?;
        tokio::task::spawn_blocking(move || cache.load(SystemTime::now())).await.ok().flatten()
    }

    /// Remembers the server's era, in memory and (off the runtime thread) in the state dir.
    pub(super) async fn remember(&self, found: Era) {
        *self.server.locked() = Some(found);
        if let Some(cache) = &self.cache {
            let cache = cache.clone();
            let stored = tokio::task::spawn_blocking(move || cache.store(found, SystemTime::now())).await;
            if let Ok(Err(e)) = stored {
                debug!("could not remember the server's era: {e}");
            }
        }
    }

    /// Whether an era probe may go now (none failed a moment ago).
    pub(super) fn probe_due(&self) -> bool {
        self.backoff.locked().until.is_none_or(|until| Instant::now() >= until)
    }

    /// Records how a probe went: a failure puts the next one off (see [`probe_backoff`]).
    pub(super) fn probed(&self, failed: bool) {
        let mut backoff = self.backoff.locked();
        if failed {
            backoff.failures = backoff.failures.saturating_add(1);
            backoff.until = Instant::now().checked_add(probe_backoff(backoff.failures));
        } else {
            *backoff = ProbeBackoff::default();
        }
    }
}

/// How long the next era probe waits after `failures` in a row: none after the first (a server
/// slow at a cold start is asked again at the next first request), then 1 s, doubling up to
/// [`MAX_PROBE_BACKOFF`] (a dead one is not asked at every line).
fn probe_backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(n - 2)).min(MAX_PROBE_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_back_off_from_none_to_a_minute_without_overflow() {
        assert_eq!(probe_backoff(1), Duration::ZERO);
        assert_eq!(probe_backoff(2), Duration::from_secs(1));
        assert_eq!(probe_backoff(4), Duration::from_secs(4));
        assert_eq!(probe_backoff(40), MAX_PROBE_BACKOFF);
        assert_eq!(probe_backoff(u32::MAX), MAX_PROBE_BACKOFF);
    }
}
