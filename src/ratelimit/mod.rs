//! The rate-limit gate: one per origin and key, shared by all requests of this process and, through
//! a small locked state file ([`file`]), by every sidecar on the machine that uses the same key
//! and origin.
//!
//! When the server says "not before T" (a 429's headers, or a success that says the quota is
//! spent), the gate holds *every* request to that origin until T instead of letting each collect
//! its own 429 (§4.4 step 10). An optional client-side limit (`--rate-limit 10/min`) spaces
//! requests so a user who knows their plan never sees a 429. The state file keeps the deadline and
//! the limit's counters in wall-clock milliseconds; a new process reads it before its first
//! request. Corrupt or stale state is ignored, never fatal.
//!
//! No single response can lock a key out (issue 10.1): a deadline is at most
//! [`crate::retry::MAX_SERVER_WAIT`] away; while it is further than `--max-wait`, requests are
//! answered at once, but one request every [`PROBE_INTERVAL`] is let through to see whether the
//! limit has lifted; and a success of any request sent after the deadline was set clears it for
//! every process. This module waits and keeps time; it does not send anything and does not parse
//! headers (that is [`crate::retry`]).

mod buckets;
mod budget;
pub(crate) mod file;
mod state;
mod store;
mod tally;

pub use crate::config::{Limit, StoreSettings};
pub use file::{StoredLimit, clear_limits, stored_limits};
pub use store::store_limits;

use crate::sync::Locked;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use budget::{BudgetState, LEASE, Room};
use file::{LOCK_PATIENCE, StateFile};
use state::{State, now_ms};
use store::{RedisStore, STORE_TIMEOUT, SharedState};
use tally::Tally;

/// How often the shared state file is looked at when no client-side limit is set.
const LOOK_INTERVAL_MS: u64 = 250;
/// While the budget is spent by requests in flight in a window whose end no answer has said,
/// how often a held request looks again (an answer of this process wakes it sooner).
const BUDGET_RECHECK: Duration = Duration::from_millis(25);
/// After the store failed, how long the gate keeps to the local state before trying it again.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// While a deadline is further away than `--max-wait`, one request this often is sent anyway (a
/// probe): if the server answers it, the limit has lifted and the deadline is cleared; if not,
/// its new answer sets the deadline afresh. Shared by every sidecar of the origin and key.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// What a request through the gate is for: who waits on it decides what it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A client's request: past a long deadline, one a minute goes through as a probe.
    Request,
    /// A stream the client's answers come on (the HTTP+SSE transport's): never a probe.
    Stream,
    /// Work nobody waits on (a listen stream, the session's DELETE): never a probe, and never
    /// the last units of the server's budget (issue 21.4: a stream the server ended at once,
    /// reopened, ate a 10-a-minute window).
    Background,
}

/// Why the gate will not let a request through in time.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// How long it would have to wait.
    pub wait: Duration,
    /// Who set the limit: a header name, or `--rate-limit N/unit`.
    pub reason: String,
    /// Whether it is our own client-side limit (else the server's).
    pub client_side: bool,
}

/// Counters for the exit summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// Answers with HTTP 429 (or 503 with Retry-After).
    pub limited: AtomicU64,
    /// Waits sat through.
    pub waits: AtomicU64,
    /// Total time waited, in milliseconds.
    pub waited_ms: AtomicU64,
    /// Messages sent again after a wait.
    pub retries: AtomicU64,
    /// Requests let through as probes while a long deadline held the others.
    pub probes: AtomicU64,
    /// Waits because the server's budget was spent (or taken by requests in flight), and
    /// their total in milliseconds: what the budget held back instead of a 429.
    pub budget_waits: AtomicU64,
    pub budget_waited_ms: AtomicU64,
}

/// A request let through the gate. Hand it back with [`Gate::succeeded`] or
/// [`Gate::block_for`] when its answer comes; a probe's end wakes the requests of this process
/// that wait for its outcome.
#[derive(Debug)]
pub struct Admission<'a> {
    gate: &'a Gate,
    /// When it was let through ([`now_ms`]).
    at_ms: u64,
    /// Whether it went through as a probe past a long deadline.
    pub probe: bool,
    /// Whether it took a unit of the shared budget (its answer must give it back there).
    tracked: bool,
    /// Whether that unit came from this process's lease (given back in batches, issue 21.6).
    leased: bool,
    /// Its route ([`crate::stable_id::route_of`]; 0: none).
    route: u64,
}

impl Admission<'_> {
    /// Whether this admission took a unit of the shared budget (its answer must give it back).
    pub fn tracked(&self) -> bool {
        self.tracked
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.gate.probing.store(false, Ordering::Release);
            self.gate.probe_done.notify_waiters();
        }
    }
}

/// Units of the shared budget a process took at once, far from the limit (issue 21.6: each
/// process counting only in its own copy there, three busy ones on a 100-a-second key sent about
/// 147 before any answer came back). The units are in the shared list of requests in flight
/// like any other, so every process sees them; they are used without the shared state's lock,
/// and answered ones leave the list in batches. A process that stops leaves its last units to
/// the list's time limit ([`budget::PENDING_TTL`]).
#[derive(Debug, Default)]
struct Lease {
    /// Units taken and not yet used.
    left: u64,
    /// When they were taken: their entries in the shared list.
    at: u64,
    /// The entries of leased units answered since the last batch.
    answered: Vec<u64>,
    /// Leased units in flight (used, not answered).
    out: u64,
}

impl Lease {
    /// The entries to take out of the shared list now: the answered ones and the unused ones.
    fn give_back(&mut self) -> Vec<u64> {
        let mut done = std::mem::take(&mut self.answered);
        done.extend(std::iter::repeat_n(self.at, usize::try_from(self.left).unwrap_or(0)));
        self.left = 0;
        done
    }

    /// Whether it holds units to give back.
    fn owes(&self) -> bool {
        self.left > 0 || !self.answered.is_empty()
    }

    /// The entries of the answered units.
    fn take_answered(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.answered)
    }
}

/// What the state says about one request now.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Let it through at `at` (as a probe past a long deadline, or normally); `tracked`: it took
    /// a unit of the budget, `leased`: from this process's lease.
    Go { probe: bool, at: u64, tracked: bool, leased: bool },
    /// Try again after this long; `budget`: the server's budget is what holds it.
    Wait { wait: Duration, reason: String, client_side: bool, budget: bool },
    /// Not within the budget.
    Refuse { wait: Duration, reason: String, client_side: bool },
}

/// The gate for one origin and key.
#[derive(Debug)]
pub struct Gate {
    origin: String,
    state: Mutex<State>,
    limits: Vec<Limit>,
    file: Option<StateFile>,
    /// `--rate-limit-store`: the state of every machine's sidecars (the file stands in while it
    /// cannot be reached).
    store: Option<Box<dyn SharedState>>,
    /// While the store is down: when to try it again ([`now_ms`]); 0 while it answers.
    store_down_until: AtomicU64,
    /// Whether its being down was said (once per outage).
    store_down_said: AtomicBool,
    /// The state file's modification time when last read, to skip unchanged reads.
    seen_mtime: Mutex<Option<SystemTime>>,
    /// When the state file may be looked at again (milliseconds, as [`now_ms`]).
    next_look_ms: AtomicU64,
    /// A probe of this process is in flight; [`Gate::probe_done`] fires when it ends.
    probing: AtomicBool,
    probe_done: Notify,
    /// Fires when an answer of this process changed the budget (held requests look again).
    budget_changed: Notify,
    /// Units of the shared budget this process holds far from the limit (issue 21.6).
    lease: Mutex<Lease>,
    pub stats: Stats,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Decides about one request at `now` with `patience` left to wait, taking a probe slot, a unit
/// of the server's budget or a client-side slot in `state` when it lets the request through.
/// Times in the state may come from a file anyone could have written: every sum saturates, and
/// no hold counts for more than [`crate::retry::MAX_SERVER_WAIT`] from now.
fn decide(
    state: &mut State,
    limits: &[Limit],
    now: u64,
    patience: Duration,
    usage: Use,
    route: u64,
) -> Verdict {
    let may_probe = usage == Use::Request;
    let cap = now.saturating_add(millis(crate::retry::MAX_SERVER_WAIT));
    // The server's hold: a deadline, or a spent budget until its window resets.
    let mut until = state.blocked_until_ms.min(cap);
    let mut reason = state.blocked_by.clone();
    let mut by_budget = false;
    state.budgets.roll(now);
    // Issue 21.4: work nobody waits on leaves the window's last units to the client's requests.
    let reserve = |b: &BudgetState| if usage == Use::Background { b.reserve() } else { 0 };
    match state.budgets.room(route, now, reserve) {
        Some(Room::SpentUntil(d)) => {
            let spent_until = now.saturating_add(millis(d)).min(cap);
            if spent_until > until {
                until = spent_until;
                reason = "the server's budget for this window is spent".into();
                by_budget = true;
            }
        }
        Some(Room::AwaitingAnswers) if until <= now => {
            let reason = "the rest of the server's budget is taken by requests in flight".to_owned();
            return if patience.is_zero() {
                Verdict::Refuse { wait: BUDGET_RECHECK, reason, client_side: false }
            } else {
                Verdict::Wait { wait: BUDGET_RECHECK.min(patience), reason, client_side: false, budget: true }
            };
        }
        _ => {}
    }
    let mut probe = false;
    if until > now {
        let wait = Duration::from_millis(until - now);
        if wait <= patience {
            return Verdict::Wait { wait, reason, client_side: false, budget: by_budget };
        }
        if state.probe_at_ms == 0 {
            // A hold that no 429 set (a spent budget): its probe clock starts now.
            state.probe_at_ms = now.saturating_add(millis(PROBE_INTERVAL));
            state.updated_ms = now;
        }
        let probe_in = Duration::from_millis(state.probe_at_ms.saturating_sub(now));
        if !may_probe || probe_in > patience {
            return Verdict::Refuse { wait, reason, client_side: false };
        }
        if !probe_in.is_zero() {
            return Verdict::Wait { wait: probe_in, reason, client_side: false, budget: by_budget };
        }
        probe = true;
    }
    if let Some(held) = client_side(state, limits, now, patience) {
        return held;
    }
    if probe {
        state.probe_at_ms = now.saturating_add(millis(PROBE_INTERVAL));
        state.updated_ms = now;
    }
    let tracked = state.budgets.take(route, now);
    Verdict::Go { probe, at: now, tracked, leased: false }
}

/// The client-side limits (`--rate-limit`): what holds a request now, or `None` when each has
/// room, and then the send is counted in each.
fn client_side(state: &mut State, limits: &[Limit], now: u64, patience: Duration) -> Option<Verdict> {
    state.tallies.resize(limits.len(), Tally::default());
    let mut longest: Option<(Duration, &Limit)> = None;
    for (limit, tally) in limits.iter().zip(state.tallies.iter_mut()) {
        if let Some(wait) = tally.full_for(now, millis(limit.window), u64::from(limit.count))
            && longest.is_none_or(|(w, _)| wait > w)
        {
            longest = Some((wait, limit));
        }
    }
    if let Some((wait, limit)) = longest {
        let reason = format!("--rate-limit {}", limit.describe());
        return Some(if wait <= patience {
            Verdict::Wait { wait, reason, client_side: true, budget: false }
        } else {
            Verdict::Refuse { wait, reason, client_side: true }
        });
    }
    for (limit, tally) in limits.iter().zip(state.tallies.iter_mut()) {
        tally.add(now, millis(limit.window));
    }
    None
}

impl Gate {
    /// A gate for `origin` and `key_id` (anything that tells keys apart; it is hashed, never
    /// stored), sharing state under `state_dir` when given.
    pub fn new(origin: &str, key_id: &str, state_dir: Option<&Path>, limits: Vec<Limit>) -> Gate {
        Gate::with_store(origin, key_id, state_dir, limits, None)
    }

    /// A gate that shares its state through `store` (Redis or Valkey) as well: every sidecar of
    /// every machine with the same origin and key keeps one budget.
    pub fn with_store(
        origin: &str,
        key_id: &str,
        state_dir: Option<&Path>,
        limits: Vec<Limit>,
        store: Option<&StoreSettings>,
    ) -> Gate {
        let state = State { tallies: vec![Tally::default(); limits.len()], ..State::default() };
        let store =
            store.and_then(|settings| match RedisStore::new(settings, &store::key_name(origin, key_id)) {
                Ok(store) => Some(Box::new(store) as Box<dyn SharedState>),
                Err(e) => {
                    tracing::warn!("{e}; the rate-limit state stays on this machine");
                    None
                }
            });
        Gate {
            origin: origin.to_owned(),
            state: Mutex::new(state),
            limits,
            store,
            store_down_until: AtomicU64::new(0),
            store_down_said: AtomicBool::new(false),
            file: state_dir.map(|dir| StateFile::new(dir, origin, key_id)),
            seen_mtime: Mutex::new(None),
            next_look_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_done: Notify::new(),
            budget_changed: Notify::new(),
            lease: Mutex::new(Lease::default()),
            stats: Stats::default(),
        }
    }

    /// Waits until a request may go out: not before a server-given deadline, and within the
    /// client-side limits (a slot is taken). Fails at once if that is more than `max_wait` away,
    /// except that, for a client's request ([`Use::Request`]), one request every [`PROBE_INTERVAL`] goes through past a
    /// long deadline (and waits for that moment if it comes within `max_wait`). `on_wait` is
    /// called before each wait (for the log line).
    pub async fn admit(
        &self,
        max_wait: Duration,
        usage: Use,
        on_wait: impl FnMut(Duration, &str),
    ) -> Result<Admission<'_>, Blocked> {
        self.admit_route(max_wait, usage, 0, on_wait).await
    }

    /// [`Gate::admit`] for a request of `route` ([`crate::stable_id::route_of`]): held by the server's budgets of
    /// the buckets that route is counted in (issue 21.2).
    pub async fn admit_route(
        &self,
        max_wait: Duration,
        usage: Use,
        route: u64,
        mut on_wait: impl FnMut(Duration, &str),
    ) -> Result<Admission<'_>, Blocked> {
        let started = Instant::now();
        let mut waited = false;
        loop {
            let budget = max_wait.saturating_sub(started.elapsed());
            // Registered before the check, so a probe or an answer that ends in between is not
            // missed.
            let probe_ended = self.probe_done.notified();
            tokio::pin!(probe_ended);
            probe_ended.as_mut().enable();
            let budget_changed = self.budget_changed.notified();
            tokio::pin!(budget_changed);
            budget_changed.as_mut().enable();
            let (wait, reason, client_side, by_budget) = match self.decide_now(budget, usage, route).await {
                Verdict::Go { probe, at, tracked, leased } => {
                    if probe {
                        self.probing.store(true, Ordering::Release);
                        self.stats.probes.fetch_add(1, Ordering::Relaxed);
                        debug!("letting one request through to see whether the rate limit has lifted");
                    }
                    return Ok(Admission { gate: self, at_ms: at, probe, tracked, leased, route });
                }
                Verdict::Refuse { wait, reason, client_side } => {
                    // A probe of ours is out: its answer may lift the limit; wait for it.
                    if !client_side
                        && usage == Use::Request
                        && self.probing.load(Ordering::Acquire)
                        && !budget.is_zero()
                    {
                        let _ = tokio::time::timeout(budget, probe_ended).await;
                        continue;
                    }
                    return Err(Blocked { wait, reason, client_side });
                }
                Verdict::Wait { wait, reason, client_side, budget } => (wait, reason, client_side, budget),
            };
            // Each request held by a server deadline adds its own jitter, so that a held queue does
            // not return all at once; the budget needs none (it lets through only what fits, one
            // unit at a time), nor do our own client-side limits.
            let wait = if client_side || by_budget { wait } else { crate::retry::with_jitter(wait) };
            // Told, and counted, once per request (a request woken by an answer that left no room
            // waits on). A budget's wait is at most until the reset: an answer may free room
            // sooner, and the log says so (issue 23.11: "waiting 7.6 s" for a call answered in
            // 57 ms).
            if !waited || !by_budget {
                if by_budget {
                    on_wait(wait, &format!("{reason}; sooner if an answer frees room"));
                    self.stats.budget_waits.fetch_add(1, Ordering::Relaxed);
                } else {
                    on_wait(wait, &reason);
                }
                self.stats.waits.fetch_add(1, Ordering::Relaxed);
            }
            waited = true;
            let slept = Instant::now();
            if by_budget {
                // An answer may free room before the window resets.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = budget_changed => {}
                }
            } else {
                tokio::time::sleep(wait).await;
            }
            // What was waited, not what was planned (issue 23.11: the summary counted the plan).
            let spent = millis(slept.elapsed());
            if by_budget {
                self.stats.budget_waited_ms.fetch_add(spent, Ordering::Relaxed);
            }
            self.stats.waited_ms.fetch_add(spent, Ordering::Relaxed);
        }
    }

    /// The verdict for a request now. Without client-side limits the state in memory decides
    /// (refreshed from the shared file at most every [`LOOK_INTERVAL_MS`]), and the file is
    /// written only to take a probe slot; with limits, every admission takes a slot in the file.
    async fn decide_now(&self, patience: Duration, usage: Use, route: u64) -> Verdict {
        if self.limits.is_empty() {
            self.refresh().await;
            let now = now_ms();
            let (verdict, changed) = {
                let mut state = self.state.locked();
                // The hot path: no deadline, and no budget or one far from spent (then only this
                // process's copy counts the request).
                if state.blocked_until_ms <= now {
                    if state.budgets.is_empty() {
                        return Verdict::Go { probe: false, at: now, tracked: false, leased: false };
                    }
                    // (With one bucket: the common case. Several are shared request by request.)
                    if let Some(b) = state.budgets.single()
                        && b.roll(now)
                        && b.far()
                    {
                        let mut lease = self.lease.locked();
                        // (Its entries are forgotten after PENDING_TTL: an old lease is not used.)
                        let fresh = now.saturating_sub(lease.at) < millis(budget::PENDING_TTL) / 2;
                        if lease.left > 0 && fresh {
                            lease.left -= 1;
                            lease.out = lease.out.saturating_add(1);
                            return Verdict::Go { probe: false, at: lease.at, tracked: true, leased: true };
                        }
                    }
                }
                let mut copy = state.clone();
                let verdict = decide(&mut copy, &[], now, patience, usage, route);
                (verdict, copy.updated_ms != state.updated_ms)
            };
            // A hold is answered from this copy; a unit of a budget near its end, a probe slot
            // or a probe clock started is taken in the shared state, and the units of a lease
            // that are done go back there (held, this process would keep them from everyone).
            let owed = self.lease.locked().owes();
            if !changed && !owed && !matches!(verdict, Verdict::Go { .. }) {
                return verdict;
            }
        }
        let mine = self.state.locked().budgets.clone();
        // Units of the lease answered, or not used (a lease is used only far from the limit),
        // leave the shared list of requests in flight now.
        let done = self.lease.locked().give_back();
        let (verdict, leased) = self
            .update(|state| {
                // What this process learned joins the shared budget; the shared list of requests
                // in flight (every process's) is the one that counts.
                let mut merged = mine.clone();
                merged.merge(&state.budgets);
                state.budgets = merged;
                state.budgets.forget_pending(&done);
                let mut verdict = decide(state, &self.limits, now_ms(), patience, usage, route);
                let mut leased = 0;
                if let (Verdict::Go { at, tracked: true, leased: lease, .. }, Some(b)) =
                    (&mut verdict, state.budgets.single())
                {
                    // Far from the limit, the unit comes with a lease of a few more.
                    leased = b.lease(*at);
                    *lease = leased > 0;
                    tracing::trace!(pid = std::process::id(), at, leased, remaining = b.remaining, pending = ?b.pending, reset = b.reset_ms, began = b.began_ms, "budget: a unit taken");
                }
                (verdict, leased)
            })
            .await;
        if let Verdict::Go { at, leased: true, .. } = verdict {
            let mut lease = self.lease.locked();
            // Requests of this process renew at the same time: what another renewal left unused
            // goes back with the next batch.
            let unused = usize::try_from(lease.left).unwrap_or(0);
            let old = lease.at;
            lease.answered.extend(std::iter::repeat_n(old, unused));
            (lease.left, lease.at) = (leased, at);
            lease.out = lease.out.saturating_add(1);
        }
        verdict
    }

    /// The answer to `admitted` came, with the server's budget when its headers said one. A
    /// unit taken from the shared budget is given back there; what the answer says is merged
    /// (shared too when the budget is near its end); requests waiting on the budget look again.
    pub async fn answered(&self, admitted: &Admission<'_>, budget: Option<crate::retry::Budget>) {
        if budget.is_none() && !admitted.tracked {
            return;
        }
        let now = now_ms();
        let at = admitted.tracked.then_some(admitted.at_ms);
        let leased = admitted.leased;
        if let Some(b) = budget {
            tracing::trace!(
                remaining = b.remaining,
                resets_in_ms = b.resets_in.as_millis() as u64,
                tracked = admitted.tracked,
                "budget: an answer says"
            );
        }
        let (sent_at, probe) = (admitted.at_ms, admitted.probe);
        let route = admitted.route;
        let apply = |state: &mut State| match budget {
            // Sent before `status --clear-limits`: its word is older than the clearing.
            Some(_) if sent_at < state.cleared_ms => {}
            Some(seen) => {
                let reset = now.saturating_add(millis(seen.resets_in));
                let bucket = state.budgets.bucket(seen.bucket, || {
                    let mut b = BudgetState::new(seen.limit, seen.remaining, reset);
                    b.observed_at = sent_at;
                    b
                });
                // (Its unit leaves every bucket's list of requests in flight below, once.)
                bucket.budget.observe(seen.limit, seen.remaining, reset, Some(sent_at), false, probe);
                state.budgets.answered(seen.bucket, route, at);
            }
            None => {
                if let Some(at) = at {
                    state.budgets.forget_pending(&[at]);
                }
            }
        };
        let shared = {
            let mut state = self.state.locked();
            apply(&mut state);
            let near = !state.budgets.far(route);
            // A leased unit goes back with the lease's next batch: when a lease's worth is
            // answered, or nothing leased is in flight any more (a pause, or the end: then the
            // unused units go back too), or at once when the budget is near its end.
            if leased {
                let mut lease = self.lease.locked();
                lease.out = lease.out.saturating_sub(1);
                // (Sent now, its own entry leaves with what the answer says, below.)
                let now = near || lease.out == 0 || lease.answered.len() + 1 >= LEASE as usize;
                if !now {
                    lease.answered.push(admitted.at_ms);
                }
                now
            } else {
                admitted.tracked || near
            }
        };
        if shared {
            let done = {
                let mut lease = self.lease.locked();
                if lease.out == 0 { lease.give_back() } else { lease.take_answered() }
            };
            Box::pin(self.update(|state| {
                apply(state);
                state.budgets.forget_pending(&done);
            }))
            .await;
        }
        self.budget_changed.notify_waiters();
    }

    /// Gives back the units of this process's lease it did not use and those answered (at exit:
    /// otherwise they would hold the budget back for [`budget::PENDING_TTL`]).
    pub async fn release(&self) {
        let done = {
            let mut lease = self.lease.locked();
            if !lease.owes() {
                return;
            }
            lease.give_back()
        };
        self.update(|state| state.budgets.forget_pending(&done)).await;
    }

    /// Holds every request until `delay` from now, as the server asked (`source` names the
    /// header), at most [`crate::retry::MAX_SERVER_WAIT`]. `admitted` is the request whose
    /// answer said so: if it was let through after the deadline in force was set (a probe),
    /// its answer is the newer word and replaces that deadline; otherwise the later one stays.
    pub async fn block_for(&self, delay: Duration, source: &str, admitted: Option<&Admission<'_>>) {
        let now = now_ms();
        let until = now.saturating_add(millis(delay.min(crate::retry::MAX_SERVER_WAIT)));
        let newer = admitted.map(|a| a.at_ms);
        let apply = |state: &mut State| {
            let replaces = newer.is_some_and(|at| at > state.blocked_at_ms) || state.blocked_until_ms <= now;
            if !replaces && until <= state.blocked_until_ms {
                return;
            }
            state.blocked_until_ms = until;
            state.blocked_by = source.to_owned();
            state.blocked_at_ms = now;
            state.probe_at_ms = now.saturating_add(millis(PROBE_INTERVAL));
            state.updated_ms = now;
        };
        {
            // Memory first, so a deadline never waits on the file's lock to take effect here.
            let mut state = self.state.locked();
            let before = state.updated_ms;
            apply(&mut state);
            if state.updated_ms == before {
                return;
            }
        }
        self.update(apply).await;
    }

    /// The request `admitted` was answered: if a deadline was set before it was let through,
    /// the server has lifted the limit, so the deadline goes, for every process.
    pub async fn succeeded(&self, admitted: &Admission<'_>) {
        let stale = |state: &State| state.blocked_until_ms != 0 && admitted.at_ms > state.blocked_at_ms;
        if !stale(&self.state.locked()) {
            return;
        }
        if admitted.probe {
            tracing::info!("{} answers again; the rate-limit deadline is cleared", self.origin);
        }
        self.update(|state| {
            if stale(state) {
                state.clear(now_ms());
            }
        })
        .await;
    }

    /// Merges the shared state into memory: from the store when it answers, else from the file
    /// when it changed. Looks at most every [`LOOK_INTERVAL_MS`]: a deadline or budget another
    /// process learned (or cleared) is honoured within that, and the per-message path saves a
    /// round trip (or a `stat`).
    async fn refresh(&self) {
        let now = now_ms();
        if now < self.next_look_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_look_ms.store(now.saturating_add(LOOK_INTERVAL_MS), Ordering::Relaxed);
        if let Some(store) = self.usable_store(now) {
            match tokio::time::timeout(STORE_TIMEOUT, store.load()).await {
                Ok(Ok(shared)) => {
                    self.store_answers(store);
                    if let Some(shared) = shared {
                        self.state.locked().merge_from(shared);
                    }
                    return;
                }
                Ok(Err(e)) => self.store_fails(store, &e.0),
                Err(_) => self.store_fails(store, "no answer in time"),
            }
        }
        let Some(file) = &self.file else { return };
        let mtime = file.modified();
        {
            let mut seen = self.seen_mtime.locked();
            if mtime.is_none() || *seen == mtime {
                return;
            }
            *seen = mtime;
        }
        if let Some(shared) = file.read() {
            self.state.locked().merge_from(shared);
        }
    }

    /// The store, unless it failed less than [`STORE_RETRY`] ago.
    fn usable_store(&self, now: u64) -> Option<&dyn SharedState> {
        let store = self.store.as_deref()?;
        (now >= self.store_down_until.load(Ordering::Relaxed)).then_some(store)
    }

    /// The store answered: if it had been down, say it is back.
    fn store_answers(&self, store: &dyn SharedState) {
        if self.store_down_until.swap(0, Ordering::Relaxed) != 0
            && self.store_down_said.swap(false, Ordering::Relaxed)
        {
            tracing::info!(
                "the rate-limit store {} is reachable again; sharing the budget through it",
                store.describe()
            );
        }
    }

    /// The store failed: keep to the local state for a while, and say so once per outage.
    fn store_fails(&self, store: &dyn SharedState, why: &str) {
        self.store_down_until.store(now_ms().saturating_add(millis(STORE_RETRY)).max(1), Ordering::Relaxed);
        if !self.store_down_said.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the rate-limit store {} could not be used ({why}); using this machine's state for now, and the store again as soon as it can be",
                store.describe()
            );
        }
    }

    /// Runs `f` on the shared state and stores the result, mirroring it in memory: in the store
    /// when it answers, else under the state file's lock, else (no usable file, or its lock held
    /// past [`LOCK_PATIENCE`]) in memory alone. `f` may run more than once (on newer state).
    async fn update<T: Send>(&self, mut f: impl FnMut(&mut State) -> T + Send) -> T {
        let store = self.usable_store(now_ms());
        let file = self.file.as_ref().map(|f| f as &dyn SharedState);
        for (shared, remote) in [(store, true), (file, false)] {
            let Some(shared) = shared else { continue };
            let mut out = None;
            let result = {
                let origin = &self.origin;
                let mut change = |state: &mut State| {
                    state.origin.clone_from(origin);
                    out = Some(f(state));
                };
                // The file bounds its own wait (the lock's patience); the store gets a timeout.
                let patience = if remote { STORE_TIMEOUT } else { LOCK_PATIENCE * 2 };
                tokio::time::timeout(patience, shared.update(&mut change)).await
            };
            match result {
                Ok(Ok(state)) => {
                    if remote {
                        self.store_answers(shared);
                    }
                    *self.state.locked() = state;
                    if let Some(out) = out {
                        return out;
                    }
                }
                Ok(Err(e)) if remote => self.store_fails(shared, &e.0),
                Err(_) if remote => self.store_fails(shared, "no answer in time"),
                Ok(Err(e)) => {
                    debug!("rate-limit state {} not usable ({e}); deciding in memory", shared.describe())
                }
                Err(_) => {
                    debug!("rate-limit state {} not usable in time; deciding in memory", shared.describe())
                }
            }
        }
        f(&mut self.state.locked())
    }
}

#[cfg(test)]
mod tests {
    use super::state::shared_now;
    use super::*;
    use std::fs;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-gate-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn limits_parse_and_describe() {
        assert_eq!(Limit::parse("10/min").unwrap(), Limit { count: 10, window: Duration::from_secs(60) });
        assert_eq!(Limit::parse(" 100 / day ").unwrap().describe(), "100/day");
        assert!(Limit::parse("0/min").is_err());
        assert!(Limit::parse("10").is_err());
        assert!(Limit::parse("10/fortnight").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_deadline_holds_every_request() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        gate.block_for(Duration::from_secs(3), "Retry-After", None).await;
        let mut waits = Vec::new();
        gate.admit(Duration::from_secs(10), Use::Request, |w, why| {
            waits.push((w.as_secs_f64().round(), why.to_owned()))
        })
        .await
        .unwrap();
        // 3 s and a jitter of at most 0.3 s.
        assert_eq!(waits.len(), 1);
        assert!(waits[0].0 == 3.0 && waits[0].1 == "Retry-After", "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_beyond_max_wait_fails_at_once() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        gate.block_for(Duration::from_secs(3600), "X-RateLimit-Reset", None).await;
        let before = Instant::now();
        let b = gate.admit(Duration::from_secs(45), Use::Request, |_, _| {}).await.unwrap_err();
        assert!(b.wait > Duration::from_secs(3590) && !b.client_side);
        assert_eq!(Instant::now(), before, "no waiting at all");
    }

    /// Issue 10.1: past a long deadline, one request a minute goes through as a probe; its
    /// success clears the deadline; another 429 sets it afresh and starts a new minute.
    #[tokio::test(start_paused = true)]
    async fn one_probe_a_minute_passes_a_long_deadline_and_its_success_clears_it() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        gate.block_for(Duration::from_secs(31_536_000), "Retry-After", None).await;
        let max = Duration::from_secs(45);
        let b = gate.admit(max, Use::Request, |_, _| {}).await.unwrap_err();
        assert_eq!(b.wait, crate::retry::MAX_SERVER_WAIT, "a year is read as the named maximum");
        // 20 s later the probe slot (60 s after the 429) is within --max-wait: wait for it.
        tokio::time::advance(Duration::from_secs(20)).await;
        let before = Instant::now();
        let probe = gate.admit(max, Use::Request, |_, _| {}).await.unwrap();
        assert!(probe.probe);
        let waited = Instant::now() - before;
        assert!(waited >= Duration::from_secs(40) && waited <= Duration::from_secs(45), "{waited:?}");
        // While it is out, the next request waits for its outcome instead of failing at once.
        let (second, _) = tokio::join!(gate.admit(max, Use::Request, |_, _| {}), async {
            tokio::time::advance(Duration::from_secs(1)).await;
            gate.block_for(Duration::from_secs(31_536_000), "Retry-After", Some(&probe)).await;
            drop(probe);
        });
        assert!(second.is_err(), "the probe got another 429: the others fail");
        // No second probe within the minute.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err());
        tokio::time::advance(Duration::from_secs(31)).await;
        let probe = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(probe.probe);
        gate.succeeded(&probe).await;
        drop(probe);
        let next = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(!next.probe, "the deadline is gone");
        // Streams (may_probe: false) never take the probe.
        gate.block_for(Duration::from_secs(3600), "Retry-After", Some(&next)).await;
        tokio::time::advance(MINUTE * 2).await;
        assert!(gate.admit(Duration::ZERO, Use::Stream, |_, _| {}).await.is_err());
    }

    /// A success of a request let through before the deadline was set (it crossed the 429 on
    /// the wire) says nothing about the limit now: the deadline stays.
    #[tokio::test(start_paused = true)]
    async fn an_older_success_does_not_clear_a_newer_deadline() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        let early = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        gate.block_for(Duration::from_secs(30), "Retry-After", None).await;
        gate.succeeded(&early).await;
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn client_side_limit_counts_in_memory() {
        let gate = Gate::new("https://h", "k", None, vec![Limit::parse("2/min").unwrap()]);
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
        let b = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap_err();
        assert!(b.client_side && b.wait <= Duration::from_secs(60) && b.wait > Duration::from_secs(58));
        assert_eq!(b.reason, "--rate-limit 2/min");
    }

    #[tokio::test(start_paused = true)]
    async fn state_is_shared_through_the_file_and_survives_corruption() {
        let dir = temp("shared");
        let a = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let other_key = Gate::new("https://h", "other", Some(&dir), Vec::new());
        a.block_for(Duration::from_secs(30), "Retry-After", None).await;
        let seen = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap_err();
        assert!(seen.wait > Duration::from_secs(28) && seen.reason == "Retry-After");
        assert!(other_key.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok(), "keys do not share");

        // Limits counted across processes.
        let l = vec![Limit::parse("3/min").unwrap()];
        let (c, d) = (Gate::new("o", "k2", Some(&dir), l.clone()), Gate::new("o", "k2", Some(&dir), l));
        for g in [&c, &d, &c] {
            assert!(g.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
        }
        assert!(
            d.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err(),
            "the fourth request in a minute waits, whichever process sends it"
        );

        // Corrupt state is ignored, never fatal.
        for entry in fs::read_dir(dir.join("ratelimit")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                fs::write(&p, b"{not json").unwrap();
            }
        }
        let e = Gate::new("https://h", "key", Some(&dir), Vec::new());
        assert!(e.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
        e.block_for(Duration::from_secs(5), "Retry-After", None).await;
        let f = Gate::new("https://h", "key", Some(&dir), Vec::new());
        assert!(f.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 10.1: a success in one process clears the deadline for the others, and `status
    /// --clear-limits` clears it for running ones too; both within the look interval.
    #[tokio::test(start_paused = true)]
    async fn clearing_reaches_every_process() {
        let dir = temp("clear");
        let a = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "key", Some(&dir), Vec::new());
        a.block_for(Duration::from_secs(3600), "X-RateLimit-Reset", None).await;
        assert!(b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err());
        let listed = stored_limits(&dir, None);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].origin.as_str(), listed[0].by.as_str()), ("https://h", "X-RateLimit-Reset"));
        assert!(stored_limits(&dir, Some("https://other")).is_empty());
        // A probe of b succeeds: a learns it.
        tokio::time::advance(MINUTE).await;
        let probe = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(probe.probe);
        b.succeeded(&probe).await;
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok(), "a sees b's success");
        assert!(stored_limits(&dir, None).is_empty());
        // Set again, then cleared by the command.
        a.block_for(Duration::from_secs(3600), "Retry-After", Some(&probe)).await;
        drop(probe);
        let cleared = clear_limits(&dir, Some("https://h")).unwrap();
        assert_eq!(cleared.len(), 1);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok(), "b sees the clearing");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 21.3: after a suspend the wall clock is ahead of the anchored monotonic one by the
    /// whole sleep: the shared clock follows the wall clock; set back, it does not go back.
    #[test]
    fn the_shared_clock_follows_a_suspend_and_never_goes_back() {
        let start = 1_800_000_000_000;
        let hours = 8 * 3600 * 1000;
        // Awake: the wall clock a little ahead or behind changes nothing.
        assert_eq!(shared_now(start + 5, start + 3, 0), (start + 5, 0));
        assert_eq!(shared_now(start + 5, start + 4_000, 0), (start + 5, 0));
        // After 8 hours of sleep the monotonic clock has barely moved; the wall clock has.
        let (now, offset) = shared_now(start + 10, start + hours, 0);
        assert_eq!((now, offset), (start + hours, hours - 10));
        // It goes on from there; the wall clock set back an hour does not take it back.
        assert_eq!(shared_now(start + 20, start + hours - 3_600_000, offset), (start + hours + 10, offset));
        // Absurd readings saturate.
        assert_eq!(shared_now(u64::MAX, 0, u64::MAX).0, u64::MAX);
    }

    /// Issue 21.2: a budget spent until a reset a day away is listed by `status` and cleared
    /// by `--clear-limits` for good: the process that still holds it in memory cannot write it
    /// back, and a probe's answer saying the server recovered lifts it.
    #[tokio::test(start_paused = true)]
    async fn a_budget_hold_is_listed_cleared_for_good_and_lifted_by_a_newer_answer() {
        let dir = temp("budget-hold");
        let a = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let day = Duration::from_secs(86_400);
        let spent = crate::retry::Budget { limit: Some(5000), remaining: 0, resets_in: day, bucket: 1 };
        let first = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        a.answered(&first, Some(spent)).await;
        drop(first);
        assert!(b.admit(Duration::from_secs(65), Use::Stream, |_, _| {}).await.is_err(), "held for the day");
        let listed = stored_limits(&dir, None);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(listed[0].by.contains("budget"), "{listed:?}");
        assert_eq!(clear_limits(&dir, Some("https://h")).unwrap().len(), 1);
        tokio::time::advance(Duration::from_millis(300)).await;
        // a still has the spent budget in memory; its next write must not bring it back.
        let next = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.expect("a sees the clearing");
        a.succeeded(&next).await;
        drop(next);
        assert!(stored_limits(&dir, None).is_empty());
        assert!(b.admit(Duration::ZERO, Use::Stream, |_, _| {}).await.is_ok());
        // Spent again; the probe a minute later is answered "4999 left": the hold is lifted.
        let again = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        b.answered(&again, Some(spent)).await;
        drop(again);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(
            a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err(),
            "held; the probe clock starts"
        );
        tokio::time::advance(MINUTE).await;
        let probe = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(probe.probe);
        a.answered(&probe, Some(crate::retry::Budget { remaining: 4999, ..spent })).await;
        drop(probe);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(b.admit(Duration::ZERO, Use::Stream, |_, _| {}).await.is_ok(), "the server's newer word");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 10.13: a state file anyone could have written (u64::MAX everywhere) is capped,
    /// never an overflow.
    #[tokio::test(start_paused = true)]
    async fn absurd_stored_times_are_capped() {
        let dir = temp("absurd");
        let gate = Gate::new("https://h", "key", Some(&dir), vec![Limit::parse("1/s").unwrap()]);
        gate.block_for(Duration::from_secs(1), "Retry-After", None).await;
        let path = gate.file.as_ref().unwrap().path().to_owned();
        let max = u64::MAX;
        fs::write(
            &path,
            format!(
                r#"{{"blocked_until_ms":{max},"blocked_by":"x","blocked_at_ms":{max},"probe_at_ms":{max},"updated_ms":{max},"sent":[[{max},0,{max}]]}}"#
            ),
        )
        .unwrap();
        let b = Gate::new("https://h", "key", Some(&dir), vec![Limit::parse("1/s").unwrap()]);
        let err = b.admit(Duration::from_secs(45), Use::Request, |_, _| {}).await.unwrap_err();
        assert_eq!(err.wait, crate::retry::MAX_SERVER_WAIT);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn state_files_hold_no_key_and_are_private() {
        let dir = temp("priv");
        let gate = Gate::new("https://h", "inv_SECRET_KEY", Some(&dir), Vec::new());
        gate.block_for(Duration::from_secs(5), "Retry-After", None).await;
        for entry in fs::read_dir(dir.join("ratelimit")).unwrap() {
            let p = entry.unwrap().path();
            assert!(!p.to_string_lossy().contains("SECRET"));
            assert!(!fs::read_to_string(&p).unwrap_or_default().contains("SECRET"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("ratelimit")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "state dir must be private");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn seen(remaining: u64, resets_in: Duration) -> crate::retry::Budget {
        crate::retry::Budget { limit: Some(3), remaining, resets_in, bucket: 1 }
    }

    /// Issue 11: with a budget of three in the window, three requests go at once, the fourth
    /// waits for the reset (not for a 429), and an answer that leaves no room keeps it waiting.
    #[tokio::test(start_paused = true)]
    async fn the_budget_admits_what_is_left_and_holds_the_rest_until_the_reset() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        let first = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        gate.answered(&first, Some(seen(2, Duration::from_secs(10)))).await;
        drop(first);
        let a = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        let b = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(a.tracked() && b.tracked());
        let refused = gate.admit(Duration::from_secs(5), Use::Request, |_, _| {}).await.unwrap_err();
        assert!(refused.wait > Duration::from_secs(9) && refused.reason.contains("budget"), "{refused:?}");
        // Within --max-wait it waits for the window, and counts the wait as the budget's.
        let before = Instant::now();
        let (c, _) = tokio::join!(gate.admit(Duration::from_secs(45), Use::Request, |_, _| {}), async {
            gate.answered(&a, Some(seen(1, Duration::from_secs(10)))).await;
            gate.answered(&b, Some(seen(0, Duration::from_secs(10)))).await;
        });
        let waited = Instant::now() - before;
        assert!(c.is_ok() && waited >= Duration::from_secs(10), "{waited:?}");
        assert!(gate.stats.budget_waits.load(Ordering::Relaxed) >= 1);
    }

    /// Issue 23.11: a budget's wait that an answer ends after 1 s of a planned 60 is counted as
    /// 1 s, once, and said as "sooner if an answer frees room" (the summary counted the plan).
    #[tokio::test(start_paused = true)]
    async fn a_wait_cut_short_is_counted_as_waited() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        let first = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        gate.answered(&first, Some(seen(1, Duration::from_secs(60)))).await;
        drop(first);
        let a = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        let mut said = Vec::new();
        let (held, _) = tokio::join!(
            gate.admit(Duration::from_secs(90), Use::Request, |wait, why| said.push((wait, why.to_owned()))),
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                gate.answered(&a, Some(seen(5, Duration::from_secs(59)))).await;
            }
        );
        assert!(held.is_ok());
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].0 > Duration::from_secs(50) && said[0].1.ends_with("sooner if an answer frees room"));
        assert_eq!(gate.stats.waits.load(Ordering::Relaxed), 1);
        let waited = gate.stats.waited_ms.load(Ordering::Relaxed);
        assert!((1000..2000).contains(&waited), "{waited} ms counted");
        assert_eq!(gate.stats.budget_waited_ms.load(Ordering::Relaxed), waited);
    }

    /// Issue 11: an answer of a request in flight frees its unit at once: a request held only
    /// by requests in flight goes as soon as an answer says room is left.
    #[tokio::test(start_paused = true)]
    async fn an_answer_frees_the_unit_its_request_held() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        let first = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        gate.answered(&first, Some(seen(1, Duration::from_secs(60)))).await;
        drop(first);
        let a = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(
            gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err(),
            "the last unit is in flight"
        );
        // The server counted it in another window after all: room again.
        gate.answered(&a, Some(seen(3, Duration::from_secs(120)))).await;
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
    }

    /// Issue 21.4: work nobody waits on (a listen stream reopened, the DELETE) never spends the
    /// last units of a window: with one left, a background request is held, a client's goes.
    #[tokio::test(start_paused = true)]
    async fn background_work_leaves_the_last_units_to_the_clients_requests() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        let first = gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        gate.answered(
            &first,
            Some(crate::retry::Budget {
                limit: Some(10),
                remaining: 2,
                resets_in: Duration::from_secs(60),
                bucket: 1,
            }),
        )
        .await;
        drop(first);
        let bg = gate.admit(Duration::ZERO, Use::Background, |_, _| {}).await.unwrap();
        let held = gate.admit(Duration::from_secs(5), Use::Background, |_, _| {}).await.unwrap_err();
        assert!(held.reason.contains("budget") && held.wait > Duration::from_secs(50), "{held:?}");
        assert!(gate.admit(Duration::ZERO, Use::Stream, |_, _| {}).await.is_ok(), "the last unit");
        drop(bg);
        // A window of unknown end (after the reset, no answer yet): the same reserve.
        let mut b = BudgetState::new(Some(10), 1, u64::MAX);
        assert_eq!(b.room_leaving(0, b.reserve()), budget::Room::AwaitingAnswers);
        assert_eq!(b.room_leaving(0, 0), budget::Room::Free);
        b.remaining = 2;
        assert_eq!(b.room_leaving(0, b.reserve()), budget::Room::Free);
    }

    /// Issue 11: two processes (gates on one state file) share one budget near its end.
    #[tokio::test(start_paused = true)]
    async fn processes_share_one_budget() {
        let dir = temp("budget-shared");
        let a = Gate::new("https://h", "k", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "k", Some(&dir), Vec::new());
        let first = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        a.answered(&first, Some(seen(2, Duration::from_secs(30)))).await;
        drop(first);
        let x = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        let y = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(x.tracked() && y.tracked());
        assert!(a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err(), "b took the last unit");
        assert!(b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    /// The requests in flight the shared state lists, as another process reads them.
    fn shared_pending(gate: &Gate) -> usize {
        let state = gate.file.as_ref().unwrap().read().unwrap();
        state.budgets.0.iter().map(|b| b.budget.pending.len()).sum()
    }

    /// Issue 21.6: far from the limit a process takes its units in leases the shared state
    /// lists (three busy processes on a 100-a-second key used to send about 147 before any
    /// answer came back, each counting only in its own copy); answered units leave the list in
    /// batches, and none is left behind however the requests interleave (a renewal of one
    /// request used to overwrite another's lease, whose units then held the key for 60 s).
    #[tokio::test(start_paused = true)]
    async fn far_from_the_limit_units_are_leased_in_the_shared_state_and_all_come_back() {
        let dir = temp("leases");
        let a = Gate::new("https://h", "k", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "k", Some(&dir), Vec::new());
        let budget = |remaining| crate::retry::Budget {
            limit: Some(100),
            remaining,
            resets_in: Duration::from_secs(30),
            bucket: 1,
        };
        let first = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        a.answered(&first, Some(budget(99))).await;
        drop(first);
        let one = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert!(one.tracked());
        assert_eq!(shared_pending(&a), LEASE as usize, "a lease of {LEASE}, seen by every process");
        // The rest of the lease costs no shared write.
        let more: Vec<_> = futures_util::future::join_all(
            (0..LEASE - 1).map(|_| a.admit(Duration::ZERO, Use::Request, |_, _| {})),
        )
        .await;
        assert_eq!(shared_pending(&a), LEASE as usize);
        // Another process counts them: 99 − 8 leaves it far, so it leases too.
        tokio::time::advance(Duration::from_millis(300)).await;
        let theirs = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        assert_eq!(shared_pending(&a), 2 * LEASE as usize);
        b.answered(&theirs, Some(budget(90))).await;
        drop(theirs);
        // Many at once, renewing together (they all wait for the state's lock another process
        // holds): every unit comes back once all are answered.
        let path = a.file.as_ref().unwrap().path().with_extension("lock");
        let held = fs::OpenOptions::new().write(true).open(path).unwrap();
        held.try_lock().unwrap();
        let (burst, ()) = tokio::join!(
            futures_util::future::join_all((0..20).map(|_| a.admit(Duration::ZERO, Use::Request, |_, _| {}))),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(held);
            }
        );
        let mut left = 89;
        for admitted in std::iter::once(Ok(one)).chain(more).chain(burst) {
            let admitted = admitted.unwrap();
            left -= 1;
            a.answered(&admitted, Some(budget(left))).await;
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        let last = b.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        b.answered(&last, Some(budget(left - 1))).await;
        drop(last);
        assert_eq!(shared_pending(&a), 0, "nothing left in flight");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 21.6: at exit the units of a lease that were not used go back at once.
    #[tokio::test(start_paused = true)]
    async fn a_lease_goes_back_at_exit() {
        let dir = temp("lease-exit");
        let a = Gate::new("https://h", "k", Some(&dir), Vec::new());
        let seen = crate::retry::Budget {
            limit: Some(100),
            remaining: 99,
            resets_in: Duration::from_secs(30),
            bucket: 1,
        };
        let first = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        a.answered(&first, Some(seen)).await;
        drop(first);
        let one = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        let _two = a.admit(Duration::ZERO, Use::Request, |_, _| {}).await.unwrap();
        a.answered(&one, Some(crate::retry::Budget { remaining: 98, ..seen })).await;
        drop(one);
        assert_eq!(shared_pending(&a), LEASE as usize, "the lease, until its next batch");
        a.release().await;
        assert_eq!(shared_pending(&a), 1, "only the request still in flight");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Issue 10.14: a lock another process holds does not freeze the runtime: the gate waits
    /// for it asynchronously (timers keep running) and decides in memory after LOCK_PATIENCE.
    #[tokio::test(start_paused = true)]
    async fn a_held_state_lock_never_blocks_the_runtime() {
        let dir = temp("held");
        let gate = Gate::new("https://h", "key", Some(&dir), vec![Limit::parse("5/s").unwrap()]);
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok());
        let lock_path = gate.file.as_ref().unwrap().path().with_extension("lock");
        let holder = fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
        holder.lock().unwrap();
        let ticks = std::sync::Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let started = Instant::now();
        assert!(gate.admit(Duration::ZERO, Use::Request, |_, _| {}).await.is_ok(), "decided in memory");
        assert!(Instant::now() - started >= LOCK_PATIENCE);
        assert!(ticks.load(Ordering::Relaxed) >= 50, "other tasks ran while the lock was held");
        ticker.abort();
        drop(holder);
        let _ = fs::remove_dir_all(&dir);
    }
}
