//! The state file shared by the sidecars of one machine: `ratelimit/<hash>.json` under
//! `--state-dir`, one per origin and key (the hash covers the key; the file never holds it),
//! read-modify-written under an exclusive lock on `<hash>.lock`, replaced atomically.
//!
//! The proxy never blocks its one runtime thread on the lock: [`StateFile::lock`] tries it and,
//! while another process holds it, sleeps a little and tries again, giving up after
//! [`LOCK_PATIENCE`] (the gate then keeps that decision in memory). `status` and
//! `status --clear-limits` read and change the same files through [`stored_limits`] and
//! [`clear_limits`].

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::state::State;
use crate::statedir::create_private_dir;

/// How long the proxy waits for another process to release the state file's lock before it
/// decides in memory alone. The lock is held for a read and a write of a few hundred bytes, so
/// a holder that keeps it longer is stuck (or stopped in a debugger), not busy.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(1);
/// The first pause between two tries of a held lock; it doubles up to [`LOCK_MAX_PAUSE`].
const LOCK_FIRST_PAUSE: Duration = Duration::from_millis(1);
const LOCK_MAX_PAUSE: Duration = Duration::from_millis(20);

/// The state file of one origin and key, and its lock file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    lock: PathBuf,
}

/// The state file, locked until dropped.
pub struct Locked<'a> {
    file: &'a StateFile,
    _lock: File,
}

impl StateFile {
    /// The file for `origin` and `key_id` under `state_dir`.
    pub fn new(state_dir: &Path, origin: &str, key_id: &str) -> StateFile {
        let name = crate::statedir::state_name(origin, key_id);
        let dir = state_dir.join("ratelimit");
        StateFile { path: dir.join(format!("{name}.json")), lock: dir.join(format!("{name}.lock")) }
    }

    /// The path of the state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state as stored; `None` when missing or corrupt (corrupt state is ignored, never fatal).
    pub fn read(&self) -> Option<State> {
        read_state(&self.path)
    }

    /// When the file last changed.
    pub fn modified(&self) -> Option<SystemTime> {
        fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// Takes the exclusive lock without blocking the runtime: tries, and while another process
    /// holds it, sleeps and tries again, for at most [`LOCK_PATIENCE`].
    pub async fn lock(&self) -> std::io::Result<Locked<'_>> {
        let lock = self.open_lock()?;
        let started = tokio::time::Instant::now();
        let mut pause = LOCK_FIRST_PAUSE;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(Locked { file: self, _lock: lock }),
                Err(TryLockError::Error(e)) => return Err(e),
                Err(TryLockError::WouldBlock) if started.elapsed() >= LOCK_PATIENCE => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("another process has held {} for over a second", self.lock.display()),
                    ));
                }
                Err(TryLockError::WouldBlock) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LOCK_MAX_PAUSE);
                }
            }
        }
    }

    /// Takes the lock, waiting as long as it takes (for commands, not the proxy).
    fn lock_blocking(&self) -> std::io::Result<Locked<'_>> {
        let lock = self.open_lock()?;
        lock.lock()?;
        Ok(Locked { file: self, _lock: lock })
    }

    fn open_lock(&self) -> std::io::Result<File> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock)
    }
}

impl Locked<'_> {
    /// Runs `f` on the stored state (a fresh one when missing or corrupt) and writes the result
    /// back atomically. Returns what `f` returned, the state as changed, and whether the write
    /// worked (the decision stands either way: it was made on the freshest state there is).
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> (T, State, std::io::Result<()>) {
        let mut state = self.file.read().unwrap_or_default();
        let out = f(&mut state);
        let written = write_state(&self.file.path, &state);
        (out, state, written)
    }
}

fn read_state(path: &Path) -> Option<State> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `state` to a temporary file and renames it over `path`: readers see the old state or
/// the new one, never half.
fn write_state(path: &Path, state: &State) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut out = File::create(&tmp)?;
        out.write_all(&serde_json::to_vec(state).unwrap_or_default())?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A rate-limit deadline stored for some origin and key (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLimit {
    /// The server's origin (`https://host:port`), or "(unknown origin)" for files written
    /// before the origin was recorded.
    pub origin: String,
    /// No request before this moment.
    pub until: SystemTime,
    /// The header that set it (`Retry-After`, `X-RateLimit-Reset`, …).
    pub by: String,
}

/// The state files under `state_dir`.
fn state_files(state_dir: &Path) -> Vec<StateFile> {
    let dir = state_dir.join("ratelimit");
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<StateFile> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|path| StateFile { lock: path.with_extension("lock"), path })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The deadline `state` holds at `now_ms`, if one is still ahead.
pub(super) fn active(state: &State, now_ms: u64) -> Option<StoredLimit> {
    // A deadline a header set, or the server's budget spent until its window resets (issue
    // 21.2: status listed only deadlines, so --clear-limits could not see a budget's hold).
    let (until, by) = match (state.blocked_until_ms > now_ms, state.budget_hold(now_ms)) {
        (true, _) => (state.blocked_until_ms, state.blocked_by.clone()),
        (false, Some(reset)) => {
            (reset, "the server's budget (its rate-limit headers said none left)".to_owned())
        }
        (false, None) => return None,
    };
    Some(StoredLimit {
        origin: if state.origin.is_empty() { "(unknown origin)".into() } else { state.origin.clone() },
        until: UNIX_EPOCH.checked_add(Duration::from_millis(until)).unwrap_or(UNIX_EPOCH),
        by,
    })
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Every deadline still ahead, for `status`; `origin` narrows it to one server.
pub fn stored_limits(state_dir: &Path, origin: Option<&str>) -> Vec<StoredLimit> {
    let now = wall_ms();
    state_files(state_dir)
        .iter()
        .filter_map(|f| active(&f.read()?, now))
        .filter(|l| origin.is_none_or(|o| l.origin == o))
        .collect()
}

/// Removes every deadline still ahead (of `origin` only, when given), under each file's lock,
/// so running sidecars pick up the change within a quarter second. Returns what was removed.
/// The client-side `--rate-limit` counters are kept: they are the user's own limits.
pub fn clear_limits(state_dir: &Path, origin: Option<&str>) -> std::io::Result<Vec<StoredLimit>> {
    let now = wall_ms();
    let mut cleared = Vec::new();
    for file in state_files(state_dir) {
        let locked = file.lock_blocking()?;
        let (removed, _, written) = locked.update(|state| {
            let limit = active(state, now).filter(|l| origin.is_none_or(|o| l.origin == o))?;
            state.clear(now);
            Some(limit)
        });
        written?;
        cleared.extend(removed);
    }
    Ok(cleared)
}
