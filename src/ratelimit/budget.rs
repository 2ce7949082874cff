//! The server's budget (issue 11): how many requests the current window still allows, from the
//! rate-limit headers of every answer, so that the gate spends the window to the last request
//! without provoking a 429.
//!
//! The server counts a request when it arrives; its answer reports what is left. Between the
//! two, a request admitted here is *pending*: it may already be counted or not. The gate admits
//! a request only while `remaining − pending > 0`, so requests in flight never overrun the
//! window. An answer for an older window never raises the count of a newer one; within a window
//! the lowest count reported wins (answers arrive out of order). When the window's reset passes,
//! a window of `limit` requests begins, its end unknown until an answer says (a foreseen end
//! could be wrong by whole windows after a quiet spell, and would hold requests needlessly).
//! Spent before any answer said when it ends, the gate waits for the answers of the requests in
//! flight; with none in flight, it lets one go (its answer will tell). Pending admissions older than
//! [`PENDING_TTL`] are forgotten: a process that died with requests in flight cannot hold the
//! budget back for long. Times are milliseconds of the gate's clock; every sum saturates.

use std::collections::VecDeque;
use std::time::Duration;

/// The most units a lease holds (a process takes up to this many of the server's budget at
/// once, issue 21.6).
pub(super) const LEASE: u64 = 8;

use serde::{Deserialize, Serialize};

/// How long an admission stays pending without its answer (a request this old has long been
/// counted by the server, and its answer would have said so).
pub const PENDING_TTL: Duration = Duration::from_secs(60);
/// Below this many requests left (or half the window, whichever is more), admissions are counted
/// in the shared state under its lock; above, each process goes on its own copy: far from the
/// limit the budget costs nothing per request.
pub const NEAR: u64 = 32;
/// A new window is used only this long after the reset an answer named: a request sent at the
/// very moment must not reach the server while its old window is still counting.
pub const ROLL_MARGIN_MS: u64 = 25;
/// Resets this close are the same window. A reset given in epoch seconds or milliseconds lands
/// within a few milliseconds whoever computes it; windows are a second or longer, so the next
/// window's reset is at least a second later. (A reset given as delta seconds is only exact to
/// a second: answers from one window may then look half a window apart, and are still told
/// apart from the next window's.)
const SAME_WINDOW_MS: u64 = 500;

/// What the gate knows of the server's budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    /// Requests a window allows, when the server said.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Requests left in the current window, as the server last said (lowest report wins).
    #[serde(default)]
    pub remaining: u64,
    /// When the current window ends; `u64::MAX` while no answer has said (after a reset).
    #[serde(default)]
    pub reset_ms: u64,
    /// While the end is unknown: when the window began (the reset that ended the one before),
    /// so that answers from that earlier window are told apart.
    #[serde(default)]
    pub began_ms: u64,
    /// Admissions not yet answered (when they were let through).
    #[serde(default)]
    pub pending: VecDeque<u64>,
    /// When the probe whose answer last set `remaining` was let through: the answer to a probe
    /// let through later (past a spent budget) is the server's newer word and may raise the count
    /// (issue 21.2: one `Remaining: 0` held the key for the rest of a day-long window however the
    /// server recovered). Other answers may arrive in another order than the server counted
    /// them, so they only ever lower it.
    #[serde(default)]
    pub observed_at: u64,
}

/// What the budget says about one more request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// There is room: one unit may be taken.
    Free,
    /// Spent until the window resets, this far ahead.
    SpentUntil(Duration),
    /// Spent by requests in flight, in a window whose end no answer has said yet: look again
    /// when an answer comes.
    AwaitingAnswers,
}

impl BudgetState {
    /// A budget from one answer.
    pub fn new(limit: Option<u64>, remaining: u64, reset_ms: u64) -> Self {
        BudgetState { limit, remaining, reset_ms, began_ms: 0, pending: VecDeque::new(), observed_at: 0 }
    }

    /// Starts the next window when the current one has ended; forgets stale admissions.
    /// Returns false when the budget means nothing any more (a reset passed and the window's
    /// size was never said): the gate then behaves as without one until an answer says more.
    pub fn roll(&mut self, now: u64) -> bool {
        let ttl = PENDING_TTL.as_millis() as u64;
        while self
            .pending
            .front()
            .is_some_and(|&t| t.saturating_add(ttl) <= now || t > now.saturating_add(ttl))
        {
            self.pending.pop_front();
        }
        if self.reset_ms == u64::MAX || now < self.reset_ms.saturating_add(ROLL_MARGIN_MS) {
            return true;
        }
        let Some(limit) = self.limit else { return false };
        self.remaining = limit;
        self.began_ms = self.reset_ms;
        self.reset_ms = u64::MAX;
        true
    }

    /// Whether one more request fits now.
    #[cfg(test)]
    pub fn room(&self, now: u64) -> Room {
        self.room_leaving(now, 0)
    }

    /// Whether one more request fits now and leaves `reserve` units for others.
    pub fn room_leaving(&self, now: u64, reserve: u64) -> Room {
        let taken = (self.pending.len() as u64).saturating_add(reserve);
        if self.remaining > taken {
            return Room::Free;
        }
        if self.reset_ms == u64::MAX {
            // Spent in a window of unknown end: with nothing in flight, a request goes and finds
            // out; one that must leave a reserve waits for the answers (or the next window).
            return if taken == 0 { Room::Free } else { Room::AwaitingAnswers };
        }
        Room::SpentUntil(Duration::from_millis(
            self.reset_ms.saturating_add(ROLL_MARGIN_MS).saturating_sub(now),
        ))
    }

    /// The units work nobody waits on must leave to the client's requests: a tenth of the window,
    /// at least one.
    pub fn reserve(&self) -> u64 {
        (self.limit.unwrap_or(0) / 10).max(1)
    }

    /// Whether the budget is far from spent: admissions need not be shared under the lock.
    pub fn far(&self) -> bool {
        let margin = NEAR.max(self.limit.unwrap_or(0) / 2);
        self.reset_ms != u64::MAX && self.remaining.saturating_sub(self.pending.len() as u64) > margin
    }

    /// Takes one unit for a request let through at `now`.
    pub fn take(&mut self, now: u64) {
        self.pending.push_back(now);
    }

    /// After a unit was taken at `at`: far from the limit, takes up to [`LEASE`] − 1
    /// more at the same time, never so many that the budget comes near its end. Returns how many.
    pub fn lease(&mut self, at: u64) -> u64 {
        if !self.far() {
            return 0;
        }
        let margin = NEAR.max(self.limit.unwrap_or(0) / 2);
        let above = self.remaining.saturating_sub(self.pending.len() as u64).saturating_sub(margin);
        let n = (LEASE - 1).min(above.saturating_sub(1));
        for _ in 0..n {
            self.pending.push_back(at);
        }
        n
    }

    /// Takes out of the list of requests in flight one entry per time in `done`.
    pub fn forget_pending(&mut self, done: &[u64]) {
        for at in done {
            if let Some(i) = self.pending.iter().position(|t| t == at) {
                self.pending.remove(i);
            }
        }
    }

    /// Learns from an answer: `remaining` left in the window that resets at `reset_ms`, of
    /// `limit`; the request it answers was let through at `sent_at` (as a `probe` past a spent
    /// budget or a deadline), and is no longer pending when it was tracked (`tracked`). Within a
    /// window, the answer to a probe sent after the count was last lifted is the newest word;
    /// other answers (arriving in any order) only ever lower the count.
    pub fn observe(
        &mut self,
        limit: Option<u64>,
        remaining: u64,
        reset_ms: u64,
        sent_at: Option<u64>,
        tracked: bool,
        probe: bool,
    ) {
        if let Some(at) = sent_at.filter(|_| tracked)
            && let Some(i) = self.pending.iter().position(|&t| t == at)
        {
            self.pending.remove(i);
        }
        let seen = BudgetState::new(limit, remaining, reset_ms);
        let (newer, older) = (seen.later_than(self), self.later_than(&seen));
        if older {
            return; // an answer from a window that has ended says nothing of this one
        }
        if limit.is_some() {
            self.limit = limit;
        }
        let newest = probe && sent_at.is_some_and(|at| at > self.observed_at);
        if newer {
            self.remaining = remaining;
            self.reset_ms = reset_ms;
        } else if newest {
            self.remaining = remaining;
        } else {
            self.remaining = self.remaining.min(remaining);
        }
        if newer || newest {
            self.observed_at = sent_at.unwrap_or(self.observed_at);
        }
    }

    /// Whether this budget's window comes after `other`'s. A window of unknown end began when
    /// the one before it reset: it is later than that one, earlier than any that ends after.
    fn later_than(&self, other: &BudgetState) -> bool {
        let same = SAME_WINDOW_MS;
        match (self.reset_ms == u64::MAX, other.reset_ms == u64::MAX) {
            (false, false) => self.reset_ms > other.reset_ms.saturating_add(same),
            (true, false) => self.began_ms.saturating_add(same) >= other.reset_ms,
            (false, true) => self.reset_ms > other.began_ms.saturating_add(same),
            (true, true) => self.began_ms > other.began_ms.saturating_add(same),
        }
    }

    /// Merges what the shared state knows (`other`) into this copy: the later window wins; in
    /// the same window the newer word (the answer to the request sent last), else the lower
    /// count; the shared list of requests in flight always counts (it spans windows: a request
    /// may be counted in the next one).
    pub fn merge(&mut self, other: &BudgetState) {
        let pending = other.pending.clone();
        if other.later_than(self) {
            *self = other.clone();
        } else if !self.later_than(other) {
            if self.reset_ms == u64::MAX && other.reset_ms != u64::MAX {
                // The same window, its end now known.
                self.reset_ms = other.reset_ms;
            }
            // The same window: the newer word, else the lower count.
            match other.observed_at.cmp(&self.observed_at) {
                std::cmp::Ordering::Greater => {
                    self.remaining = other.remaining;
                    self.observed_at = other.observed_at;
                }
                std::cmp::Ordering::Equal => self.remaining = self.remaining.min(other.remaining),
                std::cmp::Ordering::Less => {}
            }
            self.limit = other.limit.or(self.limit);
        }
        self.pending = pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    /// A moment just past a reset at `at` (the roll margin).
    fn past(at: u64) -> u64 {
        at + ROLL_MARGIN_MS
    }

    #[test]
    fn requests_in_flight_count_against_what_is_left() {
        let mut b = BudgetState::new(Some(10), 2, 10 * S);
        assert_eq!(b.room(0), Room::Free);
        b.take(1);
        assert_eq!(b.room(1), Room::Free);
        b.take(2);
        assert_eq!(
            b.room(2),
            Room::SpentUntil(Duration::from_millis(past(10 * S) - 2)),
            "two in flight, two left"
        );
        // The first answer says one is left: one still in flight, so no room.
        b.observe(Some(10), 1, 10 * S, Some(1), true, false);
        assert_eq!(b.room(3), Room::SpentUntil(Duration::from_millis(past(10 * S) - 3)));
        b.observe(Some(10), 0, 10 * S, Some(2), true, false);
        assert!(b.pending.is_empty());
        assert!(matches!(b.room(4), Room::SpentUntil(_)));
    }

    #[test]
    fn out_of_order_answers_never_raise_the_count_within_a_window() {
        let mut b = BudgetState::new(Some(10), 5, 10 * S);
        b.observe(Some(10), 3, 10 * S, None, false, false);
        b.observe(Some(10), 4, 10 * S + 400, None, false, false); // a delta-seconds reset, rounded differently
        assert_eq!(b.remaining, 3);
        // A server whose Remaining goes up mid-window is not believed until the window ends.
        b.observe(Some(10), 9, 10 * S, None, false, false);
        assert_eq!(b.remaining, 3);
    }

    /// Issue 21.2: the answer to a probe sent past a spent budget is the newer word: a server
    /// that recovers (or a plan upgraded mid-window) is believed at once; other answers still
    /// only lower it (they may come in another order than the server counted them).
    #[test]
    fn the_answer_to_a_later_request_is_the_newer_word_and_may_raise_the_count() {
        let day = 86_400 * S;
        let mut b = BudgetState::new(Some(5000), 5000, day);
        b.observe(Some(5000), 0, day, Some(10), false, false);
        assert!(matches!(b.room(11), Room::SpentUntil(_)), "held until the reset");
        b.observe(Some(5000), 4999, day, Some(5), false, false);
        assert_eq!(b.remaining, 0, "an answer to an earlier request does not raise it");
        b.observe(Some(5000), 4999, day, Some(30 * S), false, false);
        assert_eq!(b.remaining, 0, "an ordinary answer (maybe reordered) does not raise it either");
        b.observe(Some(5000), 4999, day, Some(60 * S), false, true);
        assert_eq!(b.remaining, 4999, "the probe's answer lifts the hold");
        assert_eq!(b.room(60 * S + 1), Room::Free);
        // Shared: the newer word wins the merge both ways; the same word, the lower count.
        let mut stale = BudgetState::new(Some(5000), 0, day);
        stale.observed_at = 10;
        let mut merged = stale.clone();
        merged.merge(&b);
        assert_eq!(merged.remaining, 4999);
        let mut kept = b.clone();
        kept.merge(&stale);
        assert_eq!(kept.remaining, 4999);
    }

    #[test]
    fn an_answer_for_an_older_window_never_raises_a_newer_one() {
        let mut b = BudgetState::new(Some(10), 2, 20 * S);
        b.observe(Some(10), 8, 10 * S, None, false, false);
        assert_eq!((b.remaining, b.reset_ms), (2, 20 * S));
    }

    #[test]
    fn windows_roll_over_to_the_limit_until_an_answer_says_more() {
        let mut b = BudgetState::new(Some(10), 0, 10 * S);
        assert!(b.roll(10 * S));
        assert_eq!(b.remaining, 0, "not before the margin past the reset");
        assert!(b.roll(past(10 * S)));
        assert_eq!((b.remaining, b.reset_ms), (10, u64::MAX), "a new window, its end not yet said");
        assert_eq!(b.room(past(10 * S)), Room::Free);
        b.observe(Some(10), 9, 11 * S, None, false, false);
        assert_eq!((b.remaining, b.reset_ms), (9, 11 * S));
        // A late answer from the window that ended: not believed.
        b.observe(Some(10), 0, 10 * S, None, false, false);
        assert_eq!(b.remaining, 9);
    }

    #[test]
    fn a_window_of_unknown_size_is_forgotten_when_it_ends() {
        let mut b = BudgetState::new(None, 0, 10 * S);
        assert!(b.roll(9 * S));
        assert!(!b.roll(past(10 * S)), "no limit known: behave as without a budget");
    }

    #[test]
    fn a_spent_window_without_a_known_end_waits_for_answers() {
        let mut b = BudgetState::new(Some(2), 0, 10 * S);
        b.roll(past(10 * S));
        b.take(past(10 * S));
        b.take(past(10 * S) + 1);
        assert_eq!(b.room(past(10 * S) + 2), Room::AwaitingAnswers);
        b.pending.clear();
        b.remaining = 0;
        assert_eq!(
            b.room(past(10 * S) + 3),
            Room::Free,
            "nobody in flight to say more: one goes and finds out"
        );
    }

    #[test]
    fn stale_admissions_are_forgotten() {
        let mut b = BudgetState::new(Some(10), 1, 100 * S);
        b.take(0);
        assert!(matches!(b.room(1), Room::SpentUntil(_)));
        b.roll(PENDING_TTL.as_millis() as u64);
        assert_eq!(b.room(61 * S), Room::Free, "a process that died with a request in flight");
    }

    #[test]
    fn far_from_the_limit_nothing_is_shared() {
        let b = BudgetState::new(Some(1000), 900, 10 * S);
        assert!(b.far());
        let b = BudgetState::new(Some(1000), 400, 10 * S);
        assert!(!b.far(), "under half the window");
        let b = BudgetState::new(Some(10), 10, 10 * S);
        assert!(!b.far(), "small windows are always shared");
    }

    #[test]
    fn merging_takes_the_newer_window_or_the_lower_count() {
        let mut a = BudgetState::new(Some(10), 6, 10 * S);
        let mut b = BudgetState::new(Some(10), 4, 10 * S);
        b.take(5);
        a.merge(&b);
        assert_eq!((a.remaining, a.pending.len()), (4, 1));
        let newer = BudgetState::new(Some(10), 9, 20 * S);
        a.merge(&newer);
        assert_eq!((a.remaining, a.reset_ms), (9, 20 * S));
        a.merge(&BudgetState::new(Some(10), 1, 10 * S));
        assert_eq!(a.remaining, 9, "an older window never lowers a newer one");
    }

    /// A copy that rolled into a new window (end unknown) meets the shared state of the window
    /// that ended: the older count must not empty the new window (found by the end-to-end test).
    #[test]
    fn a_rolled_window_is_later_than_the_one_it_followed() {
        let mut mine = BudgetState::new(Some(10), 0, 10 * S);
        mine.roll(past(10 * S) + 100);
        let shared = BudgetState::new(Some(10), 0, 10 * S);
        let mut merged = mine.clone();
        merged.merge(&shared);
        assert_eq!((merged.remaining, merged.reset_ms), (10, u64::MAX));
        let mut shared = shared;
        shared.merge(&mine);
        assert_eq!((shared.remaining, shared.reset_ms), (10, u64::MAX), "and the other way round");
        // The new window's first answer is later than the unknown-end copy: adopted.
        let first = BudgetState::new(Some(10), 9, 11 * S);
        merged.merge(&first);
        assert_eq!((merged.remaining, merged.reset_ms), (9, 11 * S));
        // A late answer from the ended window changes nothing.
        mine.observe(Some(10), 0, 10 * S, None, false, false);
        assert_eq!((mine.remaining, mine.reset_ms), (10, u64::MAX));
    }

    /// One-second windows: the next window's answer, its reset computed a few milliseconds
    /// early by another process's clock, is still the next window (found end to end).
    #[test]
    fn the_next_one_second_window_is_told_apart_despite_clock_jitter() {
        let mut b = BudgetState::new(Some(10), 0, 10 * S);
        b.roll(past(10 * S));
        b.observe(Some(10), 9, 11 * S - 3, None, false, false);
        assert_eq!((b.remaining, b.reset_ms), (9, 11 * S - 3));
        let mut rolled = BudgetState::new(Some(10), 0, 10 * S);
        rolled.roll(past(10 * S));
        rolled.merge(&b);
        assert_eq!(rolled.remaining, 9);
    }

    #[test]
    fn absurd_values_saturate() {
        let mut b = BudgetState::new(Some(u64::MAX), u64::MAX, u64::MAX - 1);
        b.take(u64::MAX);
        b.observe(Some(u64::MAX), u64::MAX, u64::MAX, Some(u64::MAX), true, false);
        assert!(b.roll(u64::MAX));
        let _ = b.room(u64::MAX);
    }
}
