//! Lists and the handshake that survive a bad minute (issue 24.5). The server's last
//! `initialize` result and its `tools/list`, `prompts/list` and `resources/list` results (whole
//! lists, one page) are kept in the state dir, per endpoint and key (owner-only, at most
//! [`MAX_KEPT_BYTES`]), as the server sent them: filters, names and pins apply when they are
//! served, as to a fresh answer. When at start the server is rate-limited past `--max-wait` or
//! unreachable, or a sign-in outlasts the grace a client's `initialize` gets, the client's `initialize` and those lists are answered from what was kept (the
//! log says they are stale and how old); the handshake is owed to the server and paid by the
//! first request that goes to it (waiting with progress, issue 24.4); then the lists served
//! stale are asked again, and one that differs is announced with its `list_changed`
//! notification. Never a `tools/call` result. `--no-list-cache` turns it off.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::envelope::Envelope;
use crate::sync::Locked;

/// The most bytes the kept answers take: one that would pass it is not kept.
pub const MAX_KEPT_BYTES: usize = 4 << 20;

/// The methods whose results are kept.
pub const KEPT: [&str; 4] = ["initialize", "tools/list", "prompts/list", "resources/list"];

/// One kept result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// When it was kept (Unix seconds, wall clock).
    at: u64,
    result: Box<RawValue>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeptFile {
    endpoint: String,
    results: BTreeMap<String, Entry>,
}

impl KeptFile {
    fn bytes(&self) -> usize {
        self.results.values().map(|e| e.result.get().len()).sum()
    }
}

/// The kept answers of one run.
pub(in crate::proxy) struct Kept {
    state: Mutex<State>,
    /// The file (`None` in unit tests).
    disk: Option<super::disk::Disk>,
}

#[derive(Default)]
struct State {
    file: KeptFile,
    /// The lists answered from what was kept: a fresh one that differs is announced.
    served: HashSet<String>,
    version: u64,
}

impl Kept {
    /// What was kept for `config`'s endpoint and key; `None` with `--no-list-cache` or without
    /// a state dir.
    pub(in crate::proxy) fn new(config: &crate::config::Config, shown: &str) -> Option<Kept> {
        if !config.keep_lists {
            return None;
        }
        let path = config.endpoint_file("kept")?;
        let file = match load(&path) {
            Ok(file) => file.unwrap_or_default(),
            Err(e) => {
                debug!("the kept lists cannot be read ({e}); starting afresh");
                KeptFile::default()
            }
        };
        let file = KeptFile { endpoint: shown.to_owned(), ..file };
        let state = State { file, ..State::default() };
        Some(Kept { state: Mutex::new(state), disk: Some(super::disk::Disk::new(path)) })
    }

    /// Whether `method` (with no cursor) is kept.
    pub(in crate::proxy) fn keeps(method: &str, cursor: bool) -> Option<&'static str> {
        KEPT.into_iter().find(|m| *m == method && !cursor)
    }

    /// Keeps the result of the server's answer `response` to `method` (a whole list: one with a
    /// `nextCursor` is not kept). Returns whether it differs from a list served stale, which
    /// the client must then be told of.
    pub(in crate::proxy) fn record(&self, method: &'static str, response: &[u8]) -> bool {
        let Ok(env) = Envelope::parse(response) else { return false };
        let Some(result) = env.result else { return false };
        if method != "initialize" && result.get().contains("\"nextCursor\"") && has_cursor(result) {
            return false;
        }
        let mut state = self.state.locked();
        let before = state.file.results.get(method).map(|e| e.result.get().to_owned());
        let same = before.as_deref() == Some(result.get());
        let served = state.served.remove(method);
        if same {
            return false;
        }
        let others = state.file.bytes() - before.map_or(0, |b| b.len());
        if others + result.get().len() > MAX_KEPT_BYTES {
            debug!(method, "not kept: past the {MAX_KEPT_BYTES} bytes kept");
            return served;
        }
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        state.file.results.insert(method.to_owned(), Entry { at, result: result.to_owned() });
        state.version += 1;
        let (file, version) = (state.file.clone(), state.version);
        drop(state);
        self.write(file, version);
        served
    }

    /// Whether a result of `method` is kept (nothing is logged or remembered).
    pub(in crate::proxy) fn holds(&self, method: &str) -> bool {
        self.state.locked().file.results.contains_key(method)
    }

    /// The kept result of `method` and its age, for an answer while the server cannot give
    /// one (a list: remembered as served stale).
    pub(in crate::proxy) fn stale(&self, method: &str) -> Option<(Box<RawValue>, Duration)> {
        let mut state = self.state.locked();
        let entry = state.file.results.get(method)?.clone();
        if method != "initialize" {
            state.served.insert(method.to_owned());
        }
        drop(state);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let age = Duration::from_secs(now.saturating_sub(entry.at));
        info!(
            "{method} answered from what was kept {} ago (stale: the server cannot answer now)",
            crate::retry::human(age)
        );
        Some((entry.result, age))
    }

    /// The lists served stale (asked again once the server answers).
    pub(in crate::proxy) fn served(&self) -> Vec<String> {
        self.state.locked().served.iter().cloned().collect()
    }

    fn write(&self, file: KeptFile, version: u64) {
        let Some(disk) = &self.disk else { return };
        disk.write(version, move |path| {
            let written = serde_json::to_vec(&file)
                .map_err(std::io::Error::other)
                .and_then(|bytes| crate::statedir::write_private(path, &bytes, false));
            written
                .map_err(|e| warn!("the kept lists could not be written to {} ({e})", path.display()))
                .is_ok()
        });
    }

    /// Waits for the last write.
    pub(in crate::proxy) async fn flush(&self) {
        if let Some(disk) = &self.disk {
            disk.flush().await;
        }
    }
}

/// Whether a list result has a `nextCursor` (more pages).
fn has_cursor(result: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow, rename = "nextCursor")]
        next: Option<&'a RawValue>,
    }
    serde_json::from_str::<Page<'_>>(result.get())
        .ok()
        .and_then(|p| p.next)
        .is_some_and(|c| c.get() != "null")
}

fn load(path: &Path) -> io::Result<Option<KeptFile>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Kept {
        Kept { state: Mutex::default(), disk: None }
    }

    #[test]
    fn issue24_5_whole_lists_are_kept_and_a_change_after_a_stale_answer_is_told() {
        let k = kept();
        let list = |tools: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{tools}]}}}}"#);
        assert!(!k.record("tools/list", list(r#"{"name":"a"}"#).as_bytes()), "nothing was served stale");
        let (result, _) = k.stale("tools/list").unwrap();
        assert_eq!(result.get(), r#"{"tools":[{"name":"a"}]}"#);
        assert!(
            !k.record("tools/list", list(r#"{"name":"a"}"#).as_bytes()),
            "the same list: nothing to tell"
        );
        k.stale("tools/list");
        assert!(k.record("tools/list", list(r#"{"name":"b"}"#).as_bytes()), "it changed: told once");
        assert!(!k.record("tools/list", list(r#"{"name":"c"}"#).as_bytes()), "not served stale since");
        // A page with more after it, an error, and a result past the cap are not kept.
        let paged = r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[],"nextCursor":"2"}}"#;
        k.record("prompts/list", paged.as_bytes());
        k.record("resources/list", br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#);
        let huge = list(&format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_KEPT_BYTES)));
        k.record("initialize", huge.as_bytes());
        assert!(k.stale("prompts/list").is_none() && k.stale("resources/list").is_none());
        assert!(k.stale("initialize").is_none());
        assert_eq!(Kept::keeps("tools/list", true), None, "a later page is not kept");
        assert_eq!(Kept::keeps("tools/call", false), None, "never a call's result");
    }
}
