//! What the gate remembers, shared with other processes (a file, or Redis), and the clock it is
//! kept in. A leaf of `ratelimit`: the store and the file read and write it, the gate decides on
//! it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::buckets::Buckets;
use super::tally::Tally;

/// What the gate remembers, in wall-clock milliseconds so that processes can share it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// The server's origin, for `status` (never the key).
    #[serde(default)]
    pub(super) origin: String,
    /// No request before this moment (a server-given deadline); 0 for none.
    #[serde(default)]
    pub(super) blocked_until_ms: u64,
    /// Which header set it.
    #[serde(default)]
    pub(super) blocked_by: String,
    /// When it was set: a success of a request admitted later proves it stale.
    #[serde(default)]
    pub(super) blocked_at_ms: u64,
    /// While blocked beyond `--max-wait`: when the next probe may go.
    #[serde(default)]
    pub(super) probe_at_ms: u64,
    /// When this state last changed (the newer of memory and file wins).
    #[serde(default)]
    pub(super) updated_ms: u64,
    /// Per limit (in `--rate-limit` order): the sends counted in its window, per slice of it.
    #[serde(default)]
    pub(super) tallies: Vec<Tally>,
    /// The server's budgets, one per bucket, from the rate-limit headers of its answers (issues
    /// 11, 21.2).
    #[serde(default)]
    pub(super) budgets: Buckets,
    /// When `status --clear-limits` last cleared this state: a budget a running process still
    /// holds from before cannot come back, nor can an answer to a request sent before (21.2).
    #[serde(default)]
    pub(super) cleared_ms: u64,
}

impl State {
    /// Takes in what another process wrote: its deadline if that state is newer, and its
    /// budget by the budget's own rules (newer window, else the lower count).
    pub(super) fn merge_from(&mut self, shared: State) {
        if shared.cleared_ms > self.cleared_ms {
            // Cleared by `status --clear-limits` since this copy was made: what it held goes.
            self.budgets = Buckets::default();
            self.cleared_ms = shared.cleared_ms;
        }
        let mut budgets = std::mem::take(&mut self.budgets);
        budgets.merge(&shared.budgets);
        if shared.updated_ms >= self.updated_ms {
            *self = shared;
        }
        self.budgets = budgets;
    }

    /// Forgets the server's deadline.
    pub(super) fn clear(&mut self, now: u64) {
        self.blocked_until_ms = 0;
        self.blocked_by.clear();
        self.blocked_at_ms = 0;
        self.probe_at_ms = 0;
        self.budgets = Buckets::default();
        self.cleared_ms = now;
        self.updated_ms = now;
    }

    /// The server's budget spent until its window resets (`remaining` 0): when, if ahead.
    pub(super) fn budget_hold(&self, now: u64) -> Option<u64> {
        self.budgets.hold(now)
    }
}

/// Wall-clock milliseconds, the unit shared with other processes: the wall clock at start,
/// advanced by tokio's clock (waits follow the monotonic clock, and tokio's paused clock in
/// tests), moved forward whenever the wall clock is ahead by more than [`SUSPEND_GAP`]. Issue
/// 21.3: the monotonic clock stops while a laptop sleeps, so without that a long-running sidecar
/// read every deadline another process wrote as hours away, and wrote deadlines already past. It
/// never goes back, even when the wall clock is set back.
pub(super) fn now_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    let wall = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let (start, mono) = *ANCHOR.get_or_init(|| (wall(), Instant::now()));
    let ticked = start.saturating_add(Instant::now().saturating_duration_since(mono).as_millis() as u64);
    let (now, offset) = shared_now(ticked, wall(), OFFSET.load(Ordering::Relaxed));
    OFFSET.fetch_max(offset, Ordering::Relaxed);
    now
}

/// A wall clock ahead of the anchored one by more than this means the machine slept (timer slack
/// and scheduling are milliseconds).
const SUSPEND_GAP: u64 = 5_000;

/// The shared clock and its new offset, from tokio's anchored reading (`ticked`), the wall clock
/// and the offset so far (which only grows).
pub(super) fn shared_now(ticked: u64, wall: u64, offset: u64) -> (u64, u64) {
    let now = ticked.saturating_add(offset);
    if wall > now.saturating_add(SUSPEND_GAP) { (wall, wall - ticked) } else { (now, offset) }
}
