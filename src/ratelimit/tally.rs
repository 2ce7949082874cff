//! The sends a client-side limit (`--rate-limit`, `--plan`) counts, per slice of its window
//! (issue 21.7): a limit of 5,000 a day kept 5,000 timestamps (about 70 KB), rewritten into the
//! shared state at every admission. A tally keeps at most [`SLICES`] + 1 counts whatever the
//! limit: per slice of the window, its latest send and how many. A slice counts until its latest
//! send has left the window, so the limit is never exceeded; the price is that a slot may free
//! up to one slice (a 64th of the window) later than with every time kept, and not at all when
//! the sends were one to a slice. Times are milliseconds of the gate's clock, possibly written by
//! another process: every sum saturates.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Slices per window.
pub const SLICES: u64 = 64;

/// Sends per slice of one limit's window: (the slice's latest send, how many).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally(VecDeque<(u64, u64)>);

/// A slice's width for a window of `window` milliseconds.
fn width(window: u64) -> u64 {
    (window / SLICES).max(1)
}

impl Tally {
    /// Forgets the slices whose every send has left the window at `now`, and any from further
    /// ahead than a window (a clock set back, or a state file anyone could have written).
    fn forget(&mut self, now: u64, window: u64) {
        let gone = |last: u64| last.saturating_add(window) <= now;
        let ahead = |last: u64| last > now.saturating_add(window);
        self.0.retain(|&(last, _)| !gone(last) && !ahead(last));
    }

    /// Sends counted in the window at `now`.
    pub fn count(&mut self, now: u64, window: u64) -> u64 {
        self.forget(now, window);
        self.0.iter().fold(0u64, |sum, &(_, n)| sum.saturating_add(n))
    }

    /// How long until one more send fits under `limit`, if it does not now.
    pub fn full_for(&mut self, now: u64, window: u64, limit: u64) -> Option<Duration> {
        let mut left = self.count(now, window);
        if left < limit {
            return None;
        }
        for &(last, n) in &self.0 {
            left = left.saturating_sub(n);
            if left < limit {
                let free_at = last.saturating_add(window);
                return Some(Duration::from_millis(free_at.saturating_sub(now)));
            }
        }
        Some(Duration::from_millis(window))
    }

    /// Counts one send at `now`. One that comes before the newest slice (another process's
    /// clock a little behind) is counted in the newest: counted longer, never less.
    pub fn add(&mut self, now: u64, window: u64) {
        let w = width(window);
        match self.0.back_mut() {
            Some((last, n)) if *last - *last % w >= now - now % w => {
                *last = (*last).max(now);
                *n = n.saturating_add(1);
            }
            _ => self.0.push_back((now, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn a_limit_is_never_exceeded_and_frees_at_most_a_slice_late() {
        let mut t = Tally::default();
        let window = 1000;
        for i in 0..10 {
            assert_eq!(t.full_for(i * 10, window, 10), None);
            t.add(i * 10, window);
        }
        let wait = t.full_for(100, window, 10).expect("full");
        // Exact times would free the first slot at 1000; its slice (0..15) holds 0 and 10.
        assert_eq!(wait, Duration::from_millis(910));
        assert!(t.full_for(1000, window, 10).is_some(), "not before the slice has left");
        assert_eq!(t.full_for(1010, window, 10), None);
        // One send to a slice: exact.
        let mut t = Tally::default();
        t.add(0, 60_000);
        t.add(30_000, 60_000);
        assert_eq!(t.full_for(30_000, 60_000, 2), Some(Duration::from_millis(30_000)));
    }

    /// Issue 21.7: a plan's 5,000 a day is at most 65 counts, whatever was sent.
    #[test]
    fn a_days_limit_keeps_a_few_counts_not_every_timestamp() {
        let mut t = Tally::default();
        for i in 0..5000u64 {
            let now = i * (DAY / 5000);
            assert_eq!(t.full_for(now, DAY, 5000), None, "at {i}");
            t.add(now, DAY);
        }
        assert!(t.0.len() as u64 <= SLICES + 1, "{}", t.0.len());
        assert!(t.full_for(DAY - 1, DAY, 5000).is_some());
        assert!(serde_json::to_string(&t).unwrap().len() < 2_000);
    }

    #[test]
    fn absurd_times_saturate_and_are_forgotten() {
        let mut t = Tally(VecDeque::from([(u64::MAX, u64::MAX), (0, u64::MAX)]));
        assert_eq!(t.count(5, 1000), u64::MAX, "the one from the future is forgotten");
        t.add(u64::MAX, u64::MAX);
        let _ = t.full_for(u64::MAX, u64::MAX, u64::MAX);
        let mut late = Tally::default();
        late.add(5000, 1000);
        late.add(4990, 1000);
        assert_eq!(late.count(5000, 1000), 2, "a send from a clock a little behind still counts");
    }
}
