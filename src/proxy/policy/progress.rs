//! Progress while the sidecar holds a request (issue 24.4, J-09). A request that carries
//! `_meta.progressToken` gets a [`Track`]; while it waits here (at the rate-limit gate, for a
//! retry after a refused connection, for a new token), the client gets `notifications/progress`
//! for its token when the wait starts and every [`PROGRESS_EVERY`] after, with a message a
//! person can read ("waiting 42 s for the rate limit of api.investra.com (X-RateLimit-Reset,
//! until 12:01:07 UTC)"). Clients that reset their idle timer on progress (Claude Code, the
//! SDKs' `resetTimeoutOnProgress`) then do not give up on a request the server has not seen.
//!
//! The values the client sees for one token keep increasing (J-09 "MUST increase"), across
//! the sidecar's notifications and the server's own: the sidecar's go up by [`STEP`] from the
//! last value the client saw, and a server value that would not be above it is moved up (with
//! its `total`) by the least that makes it so, for the rest of that request. A server whose
//! values already increase past the sidecar's is passed on byte for byte.
//!
//! Nothing of this runs for a request without a token. Tokens are the spec's string or integer
//! (an object, or a string over [`MAX_TOKEN_BYTES`], gets no notification of ours; the server's
//! own pass as they came).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::envelope::IdKey;
use crate::sync::Locked;

/// How often the client hears of a wait (Claude Code's idle timeout resets on each; the issue
/// asks for at least every 10 s).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How far each of the sidecar's notifications moves the value on: small, so that a server's
/// own fraction (0.5 of 1) is moved by almost nothing when it must be moved.
const STEP: f64 = 0.001;

/// The longest progress token answered with notifications of ours, in bytes of JSON.
pub const MAX_TOKEN_BYTES: usize = 4096;

tokio::task_local! {
    /// The track of the request the current task sends, if it has a token: the link tells it
    /// when the request waits and when it goes ([`held`], [`going`]).
    static HOLDING: Arc<Track>;
}

/// Tells the request this task sends (if it has a progress token) that it waits here for
/// `why` ("the rate limit of HOST (Retry-After)"), for `wait` if known.
pub(in crate::proxy) fn held(why: impl FnOnce() -> String, wait: Option<Duration>) {
    let _ = HOLDING.try_with(|track| track.hold(why(), wait));
}

/// [`held`] for a wait that is usually short (the era probe): the client hears of it only
/// once it has lasted `grace`.
pub(in crate::proxy) fn held_after(why: impl FnOnce() -> String, grace: Duration) {
    let _ = HOLDING.try_with(|track| {
        track.hold(why(), None);
        let quiet = Instant::now().checked_add(grace).and_then(|t| t.checked_sub(PROGRESS_EVERY));
        track.state.locked().said = quiet;
    });
}

/// Tells the request this task sends that it goes out now.
pub(in crate::proxy) fn going() {
    let _ = HOLDING.try_with(|track| track.go());
}

/// The progress of one request with a token.
pub(in crate::proxy) struct Track {
    /// The token as the client gave it.
    token: Box<RawValue>,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The last value the client saw.
    seen: Option<f64>,
    /// Added to the server's values (and totals) so that they stay above `seen`.
    shift: f64,
    /// Why it waits, and until when (monotonic, and the wall clock for people).
    hold: Option<(String, Option<(Instant, SystemTime)>)>,
    /// When the client last heard of this hold (`None`: not yet).
    said: Option<Instant>,
}

impl std::fmt::Debug for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Track").field("token", &self.token.get()).finish_non_exhaustive()
    }
}

impl Track {
    fn hold(&self, why: String, wait: Option<Duration>) {
        let until =
            wait.and_then(|w| Some((Instant::now().checked_add(w)?, SystemTime::now().checked_add(w)?)));
        let mut state = self.state.locked();
        state.hold = Some((why, until));
        state.said = None;
        drop(state);
        self.changed.notify_one();
    }

    fn go(&self) {
        self.state.locked().hold = None;
    }

    /// Waits until a notification of ours is due: a hold just began, or the last one is
    /// [`PROGRESS_EVERY`] old.
    async fn due(&self) {
        loop {
            let next = {
                let state = self.state.locked();
                match (&state.hold, state.said) {
                    (None, _) => None,
                    (Some(_), None) => return,
                    (Some(_), Some(said)) => Some(said + PROGRESS_EVERY),
                }
            };
            match next {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.changed.notified()).await;
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Our notification for now, if the request still waits here.
    fn note(&self, now: Instant) -> Option<Vec<u8>> {
        let mut state = self.state.locked();
        let (why, until) = state.hold.clone()?;
        let value = state.seen.map_or(0.0, |seen| seen + STEP);
        state.seen = Some(value);
        state.said = Some(now);
        drop(state);
        let message = match until {
            Some((at, wall)) => format!(
                "waiting {} for {why}, until {} UTC",
                crate::retry::human(at.saturating_duration_since(now).max(Duration::from_secs(1))),
                clock(wall)
            ),
            None => format!("waiting for {why}"),
        };
        let params =
            serde_json::json!({"progressToken": &*self.token, "progress": value, "message": message});
        let note =
            serde_json::json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
        serde_json::to_vec(&note).ok()
    }

    /// The server's progress notification `message`, moved up if its value would not be above
    /// the last the client saw; `None` when it goes on as it came.
    fn server(&self, message: &[u8]) -> Option<Vec<u8>> {
        #[derive(serde::Deserialize)]
        struct Head {
            params: Option<Numbers>,
        }
        #[derive(serde::Deserialize)]
        struct Numbers {
            progress: Option<f64>,
        }
        let head: Head = serde_json::from_slice(message).ok()?;
        let value = head.params?.progress?;
        let mut state = self.state.locked();
        let mut shifted = value + state.shift;
        if let Some(seen) = state.seen
            && shifted <= seen
        {
            state.shift = seen + STEP - value;
            shifted = seen + STEP;
        }
        state.seen = Some(shifted);
        let shift = state.shift;
        drop(state);
        if shift == 0.0 {
            return None;
        }
        let mut msg: Value = serde_json::from_slice(message).ok()?;
        let params = msg.get_mut("params")?.as_object_mut()?;
        params.insert("progress".into(), shifted.into());
        if let Some(total) = params.get("total").and_then(Value::as_f64) {
            params.insert("total".into(), (total + shift).into());
        }
        serde_json::to_vec(&msg).ok()
    }
}

/// The wall-clock time `at`, `HH:MM:SS` in UTC.
fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The tracks of requests in flight, by token (each kept alive by its request's hooks in the
/// ledger: an answered request's track goes with it).
#[derive(Default)]
pub(in crate::proxy) struct Tracks {
    by_token: Mutex<HashMap<IdKey, Weak<Track>>>,
}

impl Tracks {
    /// The track of a request whose `_meta.progressToken` is `token`, if it is one the spec
    /// allows (a string or an integer, at most [`MAX_TOKEN_BYTES`]).
    pub(in crate::proxy) fn start(&self, token: &RawValue) -> Option<Arc<Track>> {
        if token.get().len() > MAX_TOKEN_BYTES {
            return None;
        }
        let key = IdKey::new(token)?;
        let mut map = self.by_token.locked();
        // One token, one request: a track already running for it (the era probe held the
        // request before it was entered) goes on, so its values keep increasing.
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return Some(live);
        }
        let track =
            Arc::new(Track { token: token.to_owned(), state: Mutex::default(), changed: Notify::new() });
        // Bounded by the requests in flight: the tracks of answered ones go at each start.
        map.retain(|_, track| track.strong_count() > 0);
        map.insert(key, Arc::downgrade(&track));
        Some(track)
    }

    /// A server's `notifications/progress`, kept above what the client saw of its token
    /// (`None`: it goes on as it came).
    pub(in crate::proxy) fn server(&self, message: &[u8]) -> Option<Vec<u8>> {
        let track = {
            let map = self.by_token.locked();
            if map.is_empty() {
                return None;
            }
            #[derive(serde::Deserialize)]
            struct Note<'a> {
                #[serde(borrow)]
                params: Option<Token<'a>>,
            }
            #[derive(serde::Deserialize)]
            struct Token<'a> {
                #[serde(borrow, rename = "progressToken")]
                token: Option<&'a RawValue>,
            }
            let note: Note<'_> = serde_json::from_slice(message).ok()?;
            let key = IdKey::new(note.params?.token?)?;
            map.get(&key)?.upgrade()?
        };
        track.server(message)
    }
}

/// Runs `send` (a request's way to the server, [`crate::proxy`]'s `Link::send`) while telling
/// the client, through `write`, of each wait it meets.
pub(in crate::proxy) async fn while_held<T, W>(
    track: &Arc<Track>,
    send: impl std::future::Future<Output = T>,
    write: impl Fn(Vec<u8>) -> W,
) -> T
where
    W: std::future::Future<Output = ()>,
{
    let send = HOLDING.scope(track.clone(), send);
    tokio::pin!(send);
    loop {
        tokio::select! {
            out = &mut send => return out,
            () = track.due() => {
                if let Some(note) = track.note(Instant::now()) {
                    write(note).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn progress(note: &[u8]) -> (f64, Option<f64>, String) {
        let v: Value = serde_json::from_slice(note).unwrap();
        let p = &v["params"];
        (p["progress"].as_f64().unwrap(), p["total"].as_f64(), p["message"].as_str().unwrap_or("").to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn issue24_4_a_wait_is_said_at_once_then_every_5_s_and_values_keep_increasing() {
        let tracks = Tracks::default();
        let track = tracks.start(&raw(r#""tok-1""#)).unwrap();
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        let send = async {
            held(|| "the rate limit of api.example (Retry-After)".into(), Some(Duration::from_secs(12)));
            tokio::time::sleep(Duration::from_secs(12)).await;
            going();
            tokio::time::sleep(Duration::from_secs(20)).await; // on the wire: nothing of ours
            7
        };
        let out = while_held(&track, send, |note| {
            w.locked().push(note);
            async {}
        })
        .await;
        assert_eq!(out, 7);
        let notes: Vec<_> = written.locked().iter().map(|n| progress(n)).collect();
        assert_eq!(notes.len(), 3, "at 0, 5 and 10 s: {notes:?}");
        assert!(notes.windows(2).all(|w| w[1].0 > w[0].0), "{notes:?}");
        assert!(
            notes[0].2.starts_with("waiting 12 s for the rate limit of api.example (Retry-After), until "),
            "{}",
            notes[0].2
        );
        assert!(notes[2].2.starts_with("waiting 2 s for"), "{}", notes[2].2);
        // The server's own values then start from 0: moved above ours, total with them.
        let last = notes[2].0;
        let server = |p: f64| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"tok-1","progress":{p},"total":10}}}}"#
            )
        };
        let (v1, t1, _) = progress(&tracks.server(server(0.0).as_bytes()).unwrap());
        assert!(v1 > last && (t1.unwrap() - v1 - 10.0).abs() < 1e-9, "{v1} {t1:?}");
        let (v2, _, _) = progress(&tracks.server(server(5.0).as_bytes()).unwrap());
        assert!(v2 > v1);
        // Another token's, or one whose request is over, goes on as it came.
        let other = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"x","progress":1}}"#;
        assert!(tracks.server(other.as_bytes()).is_none());
        drop(track);
        assert!(tracks.server(server(0.0).as_bytes()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn issue24_4_a_server_already_above_ours_goes_on_byte_for_byte() {
        let tracks = Tracks::default();
        let track = tracks.start(&raw("7")).unwrap();
        track.hold("x".into(), None);
        let note = progress(&track.note(Instant::now()).unwrap());
        assert_eq!((note.0, note.2.as_str()), (0.0, "waiting for x"));
        let up = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#;
        assert!(tracks.server(up).is_none());
        let same = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#;
        assert!(progress(&tracks.server(same).unwrap()).0 > 1.0, "a repeated value is moved up");
    }

    #[test]
    fn issue24_4_hostile_tokens_get_nothing_of_ours() {
        let tracks = Tracks::default();
        assert!(tracks.start(&raw(r#"{"a":1}"#)).is_none(), "an object");
        assert!(tracks.start(&raw("1.5")).is_none(), "not an integer");
        let huge = format!("\"{}\"", "x".repeat(MAX_TOKEN_BYTES));
        assert!(tracks.start(&raw(&huge)).is_none(), "over the cap");
        assert!(tracks.start(&raw(r#""\u0061""#)).is_some());
        // The map holds only live tracks.
        for i in 0..1000 {
            let _ = tracks.start(&raw(&i.to_string()));
        }
        assert!(tracks.by_token.locked().len() <= 1);
        assert_eq!(clock(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 + 3723)), "01:02:03");
    }
}
