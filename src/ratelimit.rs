//! The rate-limit gate: one per origin and key, shared by all requests of this process and, through
//! a small locked state file, by every sidecar on the machine that uses the same key and origin.
//!
//! When the server says "not before T" (a 429's headers, or a success that says the quota is
//! spent), the gate holds *every* request to that origin until T instead of letting each collect
//! its own 429 (§4.4 step 10). An optional client-side limit (`--rate-limit 10/min`) spaces
//! requests so a user who knows their plan never sees a 429. The state file keeps the deadline and
//! the limit's counters in wall-clock milliseconds; a new process reads it before its first
//! request. Corrupt or stale state is ignored, never fatal. This module waits and keeps time; it
//! does not send anything and does not parse headers (that is [`crate::retry`]).

use crate::sync::{Locked, create_private_dir};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::debug;

/// How often the shared state file is looked at when no client-side limit is set.
const LOOK_INTERVAL_MS: u64 = 250;

/// A client-side limit: at most `count` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

impl Limit {
    /// Parses `N/s`, `N/min`, `N/h` or `N/day`.
    pub fn parse(s: &str) -> Result<Limit, String> {
        let (n, unit) =
            s.trim().split_once('/').ok_or_else(|| format!("{s:?}: write it as N/min or N/day"))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{s:?}: {n:?} is not a positive number"))?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => return Err(format!("{s:?}: unknown unit {other:?}; use s, min, h or day")),
        };
        Ok(Limit { count, window })
    }

    /// `10/min`, for messages.
    pub fn describe(&self) -> String {
        let unit = match self.window.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "day",
        };
        format!("{}/{unit}", self.count)
    }
}

/// What the gate remembers, in wall-clock milliseconds so that processes can share it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// No request before this moment (a server-given deadline).
    #[serde(default)]
    blocked_until_ms: u64,
    /// Which header set it.
    #[serde(default)]
    blocked_by: String,
    /// Per limit (in `--rate-limit` order): the send times inside the current window.
    #[serde(default)]
    sent: Vec<VecDeque<u64>>,
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
}

/// The gate for one origin and key.
pub struct Gate {
    state: Mutex<State>,
    limits: Vec<Limit>,
    file: Option<StateFile>,
    /// The state file's modification time when last read, to skip unchanged reads.
    seen_mtime: Mutex<Option<SystemTime>>,
    /// When the state file may be looked at again (milliseconds, as [`now_ms`]).
    next_look_ms: AtomicU64,
    pub stats: Stats,
}

/// The shared state file and its lock file.
struct StateFile {
    path: PathBuf,
    lock: PathBuf,
}

/// Wall-clock milliseconds (the unit shared with other processes), advanced by tokio's clock
/// from one anchor: waits follow the monotonic clock (and tokio's paused clock in tests), not
/// wall-clock jumps.
fn now_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    let (wall, mono) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        (wall, Instant::now())
    });
    wall + Instant::now().saturating_duration_since(mono).as_millis() as u64
}

impl Gate {
    /// A gate for `origin` and `key_id` (anything that tells keys apart; it is hashed, never
    /// stored), sharing state under `state_dir` when given.
    pub fn new(origin: &str, key_id: &str, state_dir: Option<&Path>, limits: Vec<Limit>) -> Gate {
        let file = state_dir.map(|dir| {
            let mut h = Sha256::new();
            h.update(origin.as_bytes());
            h.update([0]);
            h.update(key_id.as_bytes());
            let name: String = h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect();
            let dir = dir.join("ratelimit");
            StateFile { path: dir.join(format!("{name}.json")), lock: dir.join(format!("{name}.lock")) }
        });
        let state = State { sent: vec![VecDeque::new(); limits.len()], ..State::default() };
        Gate {
            state: Mutex::new(state),
            limits,
            file,
            seen_mtime: Mutex::new(None),
            next_look_ms: AtomicU64::new(0),
            stats: Stats::default(),
        }
    }

    /// Waits until a request may go out: not before a server-given deadline, and within the
    /// client-side limits (a slot is taken). Fails at once if that is more than `max_wait` away.
    /// `on_wait` is called before each wait (for the log line).
    pub async fn admit(
        &self,
        max_wait: Duration,
        mut on_wait: impl FnMut(Duration, &str),
    ) -> Result<(), Blocked> {
        loop {
            let blocked = if self.limits.is_empty() { self.check_deadline() } else { self.take_slot() };
            let Some(b) = blocked else { return Ok(()) };
            if b.wait > max_wait {
                return Err(b);
            }
            // Each waiting request adds its own jitter: a held queue does not return all at once.
            let wait = if b.client_side { b.wait } else { crate::retry::with_jitter(b.wait) };
            on_wait(wait, &b.reason);
            self.stats.waits.fetch_add(1, Ordering::Relaxed);
            self.stats.waited_ms.fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    /// Holds every request until `delay` from now, as the server asked (`source` names the header).
    pub fn block_for(&self, delay: Duration, source: &str) {
        let until = now_ms().saturating_add(delay.as_millis().min(u64::MAX as u128) as u64);
        {
            let mut state = self.state.locked();
            if until <= state.blocked_until_ms {
                return;
            }
            state.blocked_until_ms = until;
            state.blocked_by = source.to_owned();
        }
        self.with_file(|shared| {
            if until > shared.blocked_until_ms {
                shared.blocked_until_ms = until;
                shared.blocked_by = source.to_owned();
            }
        });
    }

    /// The remaining server-given wait, looking at the shared file only when it changed.
    fn check_deadline(&self) -> Option<Blocked> {
        self.refresh_from_file();
        let state = self.state.locked();
        let now = now_ms();
        (state.blocked_until_ms > now).then(|| Blocked {
            wait: Duration::from_millis(state.blocked_until_ms - now),
            reason: state.blocked_by.clone(),
            client_side: false,
        })
    }

    /// Merges a newer deadline from the shared file into memory. Looks at most every
    /// [`LOOK_INTERVAL_MS`]: a deadline another process learned is honoured within that, and
    /// the per-message path saves a `stat`.
    fn refresh_from_file(&self) {
        let Some(file) = &self.file else { return };
        let now = now_ms();
        if now < self.next_look_ms.load(Ordering::Relaxed) {
            return;
        }
        self.next_look_ms.store(now + LOOK_INTERVAL_MS, Ordering::Relaxed);
        let mtime = fs::metadata(&file.path).and_then(|m| m.modified()).ok();
        {
            let mut seen = self.seen_mtime.locked();
            if mtime.is_none() || *seen == mtime {
                return;
            }
            *seen = mtime;
        }
        if let Some(shared) = read_state(&file.path) {
            let mut state = self.state.locked();
            if shared.blocked_until_ms > state.blocked_until_ms {
                state.blocked_until_ms = shared.blocked_until_ms;
                state.blocked_by = shared.blocked_by;
            }
        }
    }

    /// Checks the deadline and the client-side limits, taking a slot when all allow it now.
    fn take_slot(&self) -> Option<Blocked> {
        let limits = self.limits.clone();
        let mut verdict = None;
        let decide = |state: &mut State| -> Option<Blocked> {
            let now = now_ms();
            if state.blocked_until_ms > now {
                return Some(Blocked {
                    wait: Duration::from_millis(state.blocked_until_ms - now),
                    reason: state.blocked_by.clone(),
                    client_side: false,
                });
            }
            state.sent.resize(limits.len(), VecDeque::new());
            let mut longest: Option<Blocked> = None;
            for (limit, sent) in limits.iter().zip(state.sent.iter_mut()) {
                let window = limit.window.as_millis() as u64;
                while sent.front().is_some_and(|t| t + window <= now || *t > now + window) {
                    sent.pop_front();
                }
                if sent.len() >= limit.count as usize {
                    // The slot frees when the oldest send leaves the window.
                    let oldest = sent[sent.len() - limit.count as usize];
                    let wait = Duration::from_millis(oldest + window - now);
                    if longest.as_ref().is_none_or(|b| wait > b.wait) {
                        longest = Some(Blocked {
                            wait,
                            reason: format!("--rate-limit {}", limit.describe()),
                            client_side: true,
                        });
                    }
                }
            }
            if longest.is_none() {
                for sent in state.sent.iter_mut() {
                    sent.push_back(now);
                }
            }
            longest
        };
        let shared = self.with_file(|shared| verdict = decide(shared));
        if !shared {
            verdict = decide(&mut self.state.locked());
        }
        verdict
    }

    /// Runs `f` on the shared state under the file lock and writes the result back atomically.
    /// Returns false (and leaves the file alone) when there is no usable state directory.
    fn with_file(&self, f: impl FnOnce(&mut State)) -> bool {
        let Some(file) = &self.file else { return false };
        match locked_update(file, f) {
            Ok(()) => true,
            Err(e) => {
                debug!(
                    "rate-limit state file {} not usable ({e}); keeping state in memory",
                    file.path.display()
                );
                false
            }
        }
    }
}

fn read_state(path: &Path) -> Option<State> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Read-modify-write of the state file under an exclusive lock on its lock file.
fn locked_update(file: &StateFile, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
    let dir = file.path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&file.lock)?;
    lock.lock()?;
    // Corrupt or missing state starts afresh; stale deadlines are harmless (they are in the past).
    let mut state = read_state(&file.path).unwrap_or_default();
    f(&mut state);
    let tmp = file.path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut out = File::create(&tmp)?;
        out.write_all(&serde_json::to_vec(&state).unwrap_or_default())?;
    }
    fs::rename(&tmp, &file.path)?;
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        gate.block_for(Duration::from_secs(3), "Retry-After");
        let mut waits = Vec::new();
        gate.admit(Duration::from_secs(10), |w, why| waits.push((w.as_secs_f64().round(), why.to_owned())))
            .await
            .unwrap();
        // 3 s and a jitter of at most 0.3 s.
        assert_eq!(waits.len(), 1);
        assert!(waits[0].0 == 3.0 && waits[0].1 == "Retry-After", "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_beyond_max_wait_fails_at_once() {
        let gate = Gate::new("https://h", "k", None, Vec::new());
        gate.block_for(Duration::from_secs(3600), "X-RateLimit-Reset");
        let before = Instant::now();
        let b = gate.admit(Duration::from_secs(45), |_, _| {}).await.unwrap_err();
        assert!(b.wait > Duration::from_secs(3590) && !b.client_side);
        assert_eq!(Instant::now(), before, "no waiting at all");
    }

    #[test]
    fn client_side_limit_counts_in_memory() {
        let gate = Gate::new("https://h", "k", None, vec![Limit::parse("2/min").unwrap()]);
        assert!(gate.take_slot().is_none());
        assert!(gate.take_slot().is_none());
        let b = gate.take_slot().unwrap();
        assert!(b.client_side && b.wait <= Duration::from_secs(60) && b.wait > Duration::from_secs(58));
        assert_eq!(b.reason, "--rate-limit 2/min");
    }

    #[test]
    fn state_is_shared_through_the_file_and_survives_corruption() {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-gate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let b = Gate::new("https://h", "key", Some(&dir), Vec::new());
        let other_key = Gate::new("https://h", "other", Some(&dir), Vec::new());
        a.block_for(Duration::from_secs(30), "Retry-After");
        let seen = b.check_deadline().expect("b sees a's deadline");
        assert!(seen.wait > Duration::from_secs(28) && seen.reason == "Retry-After");
        assert!(other_key.check_deadline().is_none(), "keys do not share");

        // Limits counted across processes.
        let l = vec![Limit::parse("3/min").unwrap()];
        let (c, d) = (Gate::new("o", "k2", Some(&dir), l.clone()), Gate::new("o", "k2", Some(&dir), l));
        assert!(c.take_slot().is_none() && d.take_slot().is_none() && c.take_slot().is_none());
        assert!(d.take_slot().is_some(), "the fourth request in a minute waits, whichever process sends it");

        // Corrupt state is ignored, never fatal.
        for entry in fs::read_dir(dir.join("ratelimit")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                fs::write(&p, b"{not json").unwrap();
            }
        }
        let e = Gate::new("https://h", "key", Some(&dir), Vec::new());
        assert!(e.check_deadline().is_none());
        e.block_for(Duration::from_secs(5), "Retry-After");
        assert!(Gate::new("https://h", "key", Some(&dir), Vec::new()).check_deadline().is_some());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_files_hold_no_key_and_are_private() {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-gate-priv-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let gate = Gate::new("https://h", "inv_SECRET_KEY", Some(&dir), Vec::new());
        gate.block_for(Duration::from_secs(5), "Retry-After");
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
}
