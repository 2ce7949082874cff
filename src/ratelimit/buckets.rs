//! The server's budgets, one per bucket it counts in (issue 21.2: servers with a bucket per tool
//! or per resource family reset them together, and one spent bucket held every method for the
//! rest of the window).
//!
//! A bucket is what the server names: the IETF `RateLimit` policy, `X-RateLimit-Resource`; else
//! its size (`X-RateLimit-Limit`): answers with another limit count elsewhere. Which bucket a
//! request will be counted in is learned from the answers to earlier requests of the same
//! *route* (the method, and the tool or prompt name). With one bucket known, it applies to every
//! request, as a single budget always did. With several, a request is held by the buckets its
//! route was answered from (a route never answered goes, and its answer teaches); a bucket that
//! has answered more than [`MAX_ROUTES`] routes applies to all. At most [`MAX_BUCKETS`] buckets
//! are kept (the one whose window ends first is forgotten): nothing keyed by what a server sends
//! grows without bound.

use serde::{Deserialize, Serialize};

use super::budget::{BudgetState, Room};
#[cfg(test)]
use crate::stable_id::{id_of, route_of};

/// The most buckets kept.
pub const MAX_BUCKETS: usize = 8;
/// The most routes a bucket keeps; past that it applies to every request.
pub const MAX_ROUTES: usize = 64;

/// One bucket's budget and the routes answered from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Which bucket ([`id_of`] its name or size; 0 when the server named neither).
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub budget: BudgetState,
    /// Routes answered from it.
    #[serde(default)]
    pub routes: Vec<u64>,
    /// More routes than [`MAX_ROUTES`] were answered from it: it applies to every request.
    #[serde(default)]
    pub every: bool,
}

impl Bucket {
    fn serves(&self, route: u64) -> bool {
        self.every || route == 0 || self.routes.contains(&route)
    }

    fn learn(&mut self, route: u64) {
        if route == 0 || self.every || self.routes.contains(&route) {
            return;
        }
        if self.routes.len() >= MAX_ROUTES {
            self.routes.clear();
            self.every = true;
        } else {
            self.routes.push(route);
        }
    }
}

/// Every bucket known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets(pub Vec<Bucket>);

impl Buckets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The single budget, when only one bucket is known (the common case, and the only one the
    /// lease-based fast path serves).
    pub fn single(&mut self) -> Option<&mut BudgetState> {
        match self.0.as_mut_slice() {
            [only] => Some(&mut only.budget),
            _ => None,
        }
    }

    /// Starts the next window where one ended; forgets buckets that mean nothing any more.
    pub fn roll(&mut self, now: u64) {
        self.0.retain_mut(|b| b.budget.roll(now));
    }

    /// The budgets that apply to a request of `route`.
    pub fn for_route(&mut self, route: u64) -> impl Iterator<Item = &mut BudgetState> {
        let single = self.0.len() == 1;
        self.0.iter_mut().filter(move |b| single || b.serves(route)).map(|b| &mut b.budget)
    }

    /// What the budgets of `route` say about one more request leaving `reserve` (the strictest).
    pub fn room(&mut self, route: u64, now: u64, reserve: impl Fn(&BudgetState) -> u64) -> Option<Room> {
        let mut strictest: Option<Room> = None;
        for b in self.for_route(route) {
            let room = b.room_leaving(now, reserve(b));
            strictest = Some(match (strictest, room) {
                (None, r) | (Some(Room::Free), r) => r,
                (Some(Room::SpentUntil(a)), Room::SpentUntil(b)) => Room::SpentUntil(a.max(b)),
                (Some(s @ Room::SpentUntil(_)), _) => s,
                (Some(Room::AwaitingAnswers), Room::SpentUntil(d)) => Room::SpentUntil(d),
                (Some(Room::AwaitingAnswers), _) => Room::AwaitingAnswers,
            });
        }
        strictest
    }

    /// Takes a unit at `now` in every budget of `route`; whether any took one.
    pub fn take(&mut self, route: u64, now: u64) -> bool {
        let mut took = false;
        for b in self.for_route(route) {
            b.take(now);
            took = true;
        }
        took
    }

    /// Whether every budget of `route` is far from spent.
    pub fn far(&mut self, route: u64) -> bool {
        self.for_route(route).all(|b| b.far())
    }

    /// Takes the entries in `done` out of every bucket's list of requests in flight.
    pub fn forget_pending(&mut self, done: &[u64]) {
        for b in &mut self.0 {
            b.budget.forget_pending(done);
        }
    }

    /// The bucket `id`, made (forgetting the one whose window ends first past
    /// [`MAX_BUCKETS`]) when new.
    pub fn bucket(&mut self, id: u64, fresh: impl FnOnce() -> BudgetState) -> &mut Bucket {
        if let Some(i) = self.0.iter().position(|b| b.id == id) {
            return &mut self.0[i];
        }
        if self.0.len() >= MAX_BUCKETS
            && let Some(i) = (0..self.0.len()).min_by_key(|&i| self.0[i].budget.reset_ms)
        {
            self.0.remove(i);
        }
        self.0.push(Bucket { id, budget: fresh(), routes: Vec::new(), every: false });
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    /// An answer of `route` came from bucket `id`: the route is learned there (and forgotten in
    /// the others: the bucket a route is counted in may change, a plan upgraded mid-window, or
    /// another policy became the tightest); the request (let through at `at` when it took
    /// units) is no longer in flight anywhere.
    pub fn answered(&mut self, id: u64, route: u64, at: Option<u64>) {
        for b in &mut self.0 {
            if b.id == id {
                b.learn(route);
            } else {
                b.routes.retain(|&r| r != route);
            }
        }
        if let Some(at) = at {
            self.forget_pending(&[at]);
        }
    }

    /// Merges what the shared state knows: bucket by bucket by the budget's rules; buckets only
    /// the other side knows are added (within the bound).
    pub fn merge(&mut self, other: &Buckets) {
        for theirs in &other.0 {
            match self.0.iter_mut().find(|b| b.id == theirs.id) {
                Some(mine) => {
                    mine.budget.merge(&theirs.budget);
                    mine.every |= theirs.every;
                    for &r in &theirs.routes {
                        mine.learn(r);
                    }
                }
                None => {
                    self.bucket(theirs.id, || theirs.budget.clone()).clone_from(theirs);
                }
            }
        }
    }

    /// The latest reset of a spent bucket still ahead (for `status`).
    pub fn hold(&self, now: u64) -> Option<u64> {
        self.0
            .iter()
            .map(|b| &b.budget)
            .filter(|b| b.remaining == 0 && b.reset_ms != u64::MAX && b.reset_ms > now)
            .map(|b| b.reset_ms)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const DAY: u64 = 86_400 * S;

    fn answer(buckets: &mut Buckets, id: u64, route: u64, remaining: u64) {
        let b = buckets.bucket(id, || BudgetState::new(Some(100), remaining, DAY));
        b.budget.observe(Some(100), remaining, DAY, None, false, false);
        buckets.answered(id, route, None);
    }

    /// Issue 21.2: a spent per-tool bucket holds its tool only, not every method, even when
    /// both buckets reset together.
    #[test]
    fn a_spent_bucket_holds_only_the_routes_it_answered() {
        let (search, fetch) = (route_of("tools/call", Some("search")), route_of("tools/call", Some("fetch")));
        let mut b = Buckets::default();
        answer(&mut b, id_of(&[b"search"]), search, 0);
        // One bucket known: it holds everything, as one budget always did.
        assert!(matches!(b.room(fetch, 0, |_| 0), Some(Room::SpentUntil(_))));
        answer(&mut b, id_of(&[b"default"]), fetch, 99);
        assert!(matches!(b.room(search, 0, |_| 0), Some(Room::SpentUntil(_))), "search is spent");
        assert_eq!(b.room(fetch, 0, |_| 0), Some(Room::Free), "fetch is not");
        assert_eq!(b.room(route_of("tools/list", None), 0, |_| 0), None, "a route never answered goes");
        assert!(matches!(b.room(0, 0, |_| 0), Some(Room::SpentUntil(_))), "work of no route: all apply");
        assert!(b.take(fetch, 5));
        assert_eq!((b.0[0].budget.pending.len(), b.0[1].budget.pending.len()), (0, 1));
        b.answered(id_of(&[b"default"]), fetch, Some(5));
        assert_eq!(b.0[1].budget.pending.len(), 0);
        assert_eq!(b.hold(0), Some(DAY));
    }

    #[test]
    fn buckets_and_routes_are_bounded() {
        let mut b = Buckets::default();
        for i in 0..(MAX_BUCKETS as u64 + 5) {
            let bucket = b.bucket(i + 1, || BudgetState::new(Some(10), 10, (i + 1) * S));
            for r in 0..(MAX_ROUTES as u64 + 3) {
                bucket.learn(r + 1);
            }
        }
        assert_eq!(b.0.len(), MAX_BUCKETS);
        assert!(b.0.iter().all(|x| x.every && x.routes.is_empty()));
        assert!(b.0.iter().all(|x| x.id > 5), "the ones that end first went");
    }

    #[test]
    fn merging_goes_bucket_by_bucket() {
        let mut mine = Buckets::default();
        answer(&mut mine, 1, 11, 50);
        let mut theirs = Buckets::default();
        answer(&mut theirs, 1, 12, 40);
        answer(&mut theirs, 2, 13, 7);
        mine.merge(&theirs);
        assert_eq!(mine.0.len(), 2);
        assert_eq!(mine.0[0].budget.remaining, 40);
        assert_eq!(mine.0[0].routes, vec![11, 12]);
        assert_eq!(mine.0[1].budget.remaining, 7);
        assert_ne!(id_of(&[b"a", b"b"]), id_of(&[b"ab"]));
        assert_eq!(route_of("tools/call", Some("x")), route_of("tools/call", Some("x")));
    }
}
