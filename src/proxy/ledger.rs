//! The ledger of requests read on stdin: the one place that decides who answers an id.
//!
//! Every client request is entered here ([`Ledger::open`]) before it is sent, and leaves exactly
//! once: by [`Ledger::settle`] (the server's answer, or a local one), by [`Ledger::fail`] (a
//! local error), by [`Ledger::cancel`] (J-08: the only end without an answer), or by
//! [`Ledger::drain`] at shutdown. The table is private; each of those ends reserves room on
//! stdout first and then, with no await in between, removes the entry and queues the answer
//! (issue 10.4): a task aborted while it waits has changed nothing. The ledger also owns the
//! outbox, the exit counters and the warnings already given, so that an answer, its count and
//! its log line are decided together.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use super::policy::Hooks;
use crate::envelope::{Envelope, ErrorKind, INVALID_REQUEST, IdKey, LocalError, SHUTTING_DOWN};
use crate::stdio::Outbox;
use crate::sync::Locked;

/// What one open request is, beyond its id.
#[derive(Clone, Copy, Default)]
pub(super) struct Flags {
    /// `initialize` (its result sets the negotiated version).
    pub initialize: bool,
    /// Of the 2026-07-28 era (cancelling it means closing its stream, T-25).
    pub modern: bool,
    /// A request of the proxy's own: shutdown answers nobody for it.
    pub internal: bool,
    /// Not sent yet (it waits for its turn: the rate limit, a backoff, a token), until
    /// [`Ledger::sending`]: shutdown then says it was not processed (issue 23.4).
    pub held: bool,
}

/// A request waiting for its answer.
struct Entry {
    /// The id exactly as the client wrote it.
    id: Box<RawValue>,
    flags: Flags,
    /// Wakes the request's task when the answer came by another way (the GET stream).
    done: Option<oneshot::Sender<()>>,
    /// Aborts the request's task when the client cancels it.
    abort: Option<AbortHandle>,
    /// Where its answer goes instead of stdout (requests the bridges read).
    capture: Option<oneshot::Sender<Bytes>>,
    /// The policies its answer passes through.
    hooks: Hooks,
}

/// What the answer path needs to know of an open request before it settles it.
pub(super) struct Open {
    pub flags: Flags,
    pub captured: bool,
    pub hooks: Hooks,
}

/// What [`Ledger::settle`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    /// A response that answered a pending request.
    Answer,
    /// A progress notification (restarts request timeouts, T-32).
    Progress,
    /// Any other message written to stdout.
    Other,
    /// Not written: not JSON-RPC, or a response nobody waits for.
    Dropped,
}

/// The requests in flight, stdout, and what is reported at exit.
pub(super) struct Ledger {
    table: Mutex<HashMap<IdKey, Entry>>,
    out: Outbox,
    requests: AtomicU64,
    local_errors: AtomicU64,
    /// Error kinds already logged at warn level: one line per problem, not per message.
    warned: Mutex<Vec<ErrorKind>>,
    /// How the client's `initialize` was answered: [`NO_HANDSHAKE`], [`HANDSHAKE_OK`] (once is
    /// enough) or [`HANDSHAKE_FAILED`] (only errors so far): the exit status says it (issue 23.1).
    handshake: AtomicU8,
}

const NO_HANDSHAKE: u8 = 0;
const HANDSHAKE_OK: u8 = 1;
const HANDSHAKE_FAILED: u8 = 2;

impl Ledger {
    pub(super) fn new(out: Outbox) -> Ledger {
        Ledger {
            table: Mutex::new(HashMap::new()),
            out,
            requests: AtomicU64::new(0),
            local_errors: AtomicU64::new(0),
            warned: Mutex::new(Vec::new()),
            handshake: AtomicU8::new(NO_HANDSHAKE),
        }
    }

    /// Records how the client's `initialize` was answered: with a result (`ok`), or with an error.
    pub(super) fn handshake(&self, ok: bool) {
        if ok {
            self.handshake.store(HANDSHAKE_OK, Ordering::Relaxed);
        } else {
            let _ = self.handshake.compare_exchange(
                NO_HANDSHAKE,
                HANDSHAKE_FAILED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether the client's `initialize` was answered, only ever with errors.
    pub(super) fn handshake_failed(&self) -> bool {
        self.handshake.load(Ordering::Relaxed) == HANDSHAKE_FAILED
    }

    /// Enters a client request. Returns its key and the receiver that wakes its task, or `None`
    /// (after answering it) when its id is already in flight (J-02).
    pub(super) fn open(
        &self,
        env: &Envelope<'_>,
        flags: Flags,
        hooks: Hooks,
    ) -> Option<(IdKey, oneshot::Receiver<()>)> {
        let (raw, key) = env.id.zip(env.id_key())?;
        let (tx, rx) = oneshot::channel();
        let mut table = self.table.locked();
        if table.contains_key(&key) {
            drop(table);
            let err = in_use(raw);
            self.report(&err);
            let out = self.out.clone();
            let bytes: Bytes = err.to_response(Some(raw)).into();
            tokio::spawn(async move { out.send(bytes).await });
            return None;
        }
        let entry = Entry { id: raw.to_owned(), flags, done: Some(tx), abort: None, capture: None, hooks };
        table.insert(key.clone(), entry);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some((key, rx))
    }

    /// Enters a request whose answer is handed back instead of written ([`Ledger::settle`] sends
    /// it to the returned receiver): the bridges' and the era probe's. Returns the receiver that
    /// wakes its task and the one its answer comes on; an id already in flight is an error.
    #[allow(clippy::type_complexity)]
    pub(super) fn open_captured(
        &self,
        raw: &RawValue,
        key: &IdKey,
        flags: Flags,
        hooks: Hooks,
    ) -> Result<(oneshot::Receiver<()>, oneshot::Receiver<Bytes>), LocalError> {
        let (capture_tx, capture) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let mut table = self.table.locked();
        if table.contains_key(key) {
            return Err(in_use(raw));
        }
        let entry = Entry {
            id: raw.to_owned(),
            flags,
            done: Some(done_tx),
            abort: None,
            capture: Some(capture_tx),
            hooks,
        };
        table.insert(key.clone(), entry);
        Ok((done, capture))
    }

    /// Enters a request the eras are being settled on, if it is not in already: shutdown will
    /// answer it (issue 21.1).
    pub(super) fn owe(&self, key: IdKey, id: Box<RawValue>) {
        self.table.locked().entry(key).or_insert(Entry {
            id,
            flags: Flags::default(),
            done: None,
            abort: None,
            capture: None,
            hooks: Hooks::default(),
        });
    }

    /// Ties the task of an open request to it, so that a cancel aborts it.
    pub(super) fn set_abort(&self, key: &IdKey, abort: AbortHandle) {
        if let Some(e) = self.table.locked().get_mut(key) {
            e.abort = Some(abort);
        }
    }

    /// Drops a request the client cancelled (J-08): no answer will be written for it. Returns
    /// whether it was a 2026-07-28 request, or `None` if it was not pending.
    pub(super) fn cancel(&self, key: &IdKey) -> Option<bool> {
        let entry = self.table.locked().remove(key)?;
        if let Some(abort) = entry.abort {
            abort.abort();
        }
        debug!(id = %entry.id, "request cancelled by the client");
        Some(entry.flags.modern)
    }

    /// Forgets a captured request whose caller answers the client from what it returned.
    pub(super) fn forget(&self, key: &IdKey) {
        self.table.locked().remove(key);
    }

    /// Issue 24.5: a client request answered otherwise (its `initialize`, from what was kept)
    /// whose exchange goes on: its answer stays captured, and shutdown answers it no more.
    pub(super) fn disown(&self, key: &IdKey) {
        if let Some(entry) = self.table.locked().get_mut(key) {
            entry.flags.internal = true;
        }
    }

    pub(super) fn is_open(&self, key: &IdKey) -> bool {
        self.table.locked().contains_key(key)
    }

    pub(super) fn any_open(&self, ids: &[(IdKey, oneshot::Receiver<()>)]) -> bool {
        let table = self.table.locked();
        ids.iter().any(|(k, _)| table.contains_key(k))
    }

    /// The id of an open request as its client wrote it.
    pub(super) fn id_of(&self, key: &IdKey) -> Option<Box<RawValue>> {
        self.table.locked().get(key).map(|e| e.id.clone())
    }

    /// What the answer path needs to know of an open request; `None` if it is not open.
    pub(super) fn peek(&self, key: &IdKey) -> Option<Open> {
        let table = self.table.locked();
        let e = table.get(key)?;
        Some(Open { flags: e.flags, captured: e.capture.is_some(), hooks: e.hooks.clone() })
    }

    /// Answers the open request `key` with `message`: to stdout, or to whoever captures it.
    /// Room first (this may wait; a captured answer needs none), then, with no await in
    /// between, the entry leaves the table, `then` runs (what the answer settles, such as the
    /// negotiated version) and the answer is queued: both happen or neither.
    pub(super) async fn settle(
        &self,
        key: &IdKey,
        message: Bytes,
        captured: bool,
        then: impl FnOnce(),
    ) -> Delivered {
        let slot = if captured { None } else { self.out.reserve(message.len()).await };
        let Some(mut entry) = self.table.locked().remove(key) else {
            return Delivered::Dropped; // answered meanwhile (a timeout, a cancel)
        };
        then();
        if let Some(done) = entry.done.take() {
            let _ = done.send(());
        }
        if let Some(capture) = entry.capture.take() {
            let _ = capture.send(message);
        } else if !slot.is_some_and(|slot| slot.send(message)) {
            debug!("stdout is closed; answer dropped");
        }
        Delivered::Answer
    }

    /// Answers an open request with a local error, unless it was answered already.
    pub(super) async fn fail(&self, key: &IdKey, err: &LocalError) {
        let Some(id) = self.id_of(key) else { return };
        let message: Bytes = err.to_response(Some(&id)).into();
        let slot = self.out.reserve(message.len()).await;
        let Some(entry) = self.table.locked().remove(key) else { return };
        if entry.flags.initialize {
            self.handshake(false);
        }
        self.local_errors.fetch_add(1, Ordering::Relaxed);
        self.report(err);
        if !slot.is_some_and(|slot| slot.send(message)) {
            debug!("stdout is closed; error answer dropped");
        }
    }

    /// Answers at once a client request that never entered the table: its `initialize` under a
    /// bridge, or the request the eras were settled on. It counts as a request read on stdin
    /// (issue 21.14).
    pub(super) async fn answer_unopened(&self, id: Option<&RawValue>, answer: Result<Bytes, LocalError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(bytes) => self.write(bytes).await,
            Err(err) => {
                self.local_errors.fetch_add(1, Ordering::Relaxed);
                self.refuse(id, &err).await;
            }
        }
    }

    /// Answers a line that never became an open request (unparsable, too long, overloaded, a
    /// duplicate) with `err`, and reports it.
    pub(super) async fn refuse(&self, id: Option<&RawValue>, err: &LocalError) {
        self.report(err);
        self.write(err.to_response(id).into()).await;
    }

    /// Writes a message that answers no open request (a notification, a local result).
    pub(super) async fn write(&self, bytes: Bytes) {
        if !self.out.send(bytes).await {
            debug!("stdout is closed; message dropped");
        }
    }

    /// Shutdown: every request still open leaves the table; those of the client are answered
    /// with an error, within what is `left` of the shutdown's budget after `started`.
    pub(super) async fn drain(&self, end: Instant) {
        let left: Vec<Entry> = self.table.locked().drain().map(|(_, e)| e).collect();
        for entry in left {
            if let Some(abort) = &entry.abort {
                abort.abort();
            }
            if entry.flags.internal {
                continue;
            }
            // An `initialize` cut short by the end of the run did not fail: the run was stopped.
            let err = if entry.flags.held {
                let mut err = LocalError::new(
                    SHUTTING_DOWN,
                    ErrorKind::ShuttingDown,
                    "mcp-sidecar is shutting down before this request was sent (it was waiting for its turn: the rate limit, a retry or a sign-in); it was not processed",
                );
                err.request_sent = Some(false);
                err
            } else {
                LocalError::new(
                    SHUTTING_DOWN,
                    ErrorKind::ShuttingDown,
                    "mcp-sidecar is shutting down and the server had not answered yet; the request may have been processed",
                )
            };
            let message: Bytes = err.to_response(Some(&entry.id)).into();
            match timeout_at(end, self.out.reserve(message.len())).await {
                Ok(Some(slot)) => {
                    slot.send(message);
                }
                _ => debug!("stdout takes nothing more; a shutdown answer was not written"),
            }
        }
    }

    /// The requests `keys` go out to the server now (`on`), or wait to go again after an
    /// answer that says they were not processed ([`Flags::held`]).
    pub(super) fn sending(&self, keys: &[IdKey], on: bool) {
        let mut table = self.table.locked();
        for key in keys {
            if let Some(entry) = table.get_mut(key) {
                entry.flags.held = !on;
            }
        }
    }

    /// Requests read, and those answered with a local error, for the exit summary.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.local_errors.load(Ordering::Relaxed))
    }

    /// Logs a problem: the first time of its kind at warn level, later ones at debug.
    pub(super) fn report(&self, err: &LocalError) {
        self.report_with(err, "");
    }

    pub(super) fn report_with(&self, err: &LocalError, context: &str) {
        let first = {
            let mut warned = self.warned.locked();
            let first = !warned.contains(&err.kind);
            if first {
                warned.push(err.kind);
            }
            first
        };
        let sep = if context.is_empty() { "" } else { ": " };
        if first {
            warn!("{context}{sep}{}", err.message);
        } else {
            debug!("{context}{sep}{}", err.message);
        }
    }
}

fn in_use(raw: &RawValue) -> LocalError {
    LocalError::new(
        INVALID_REQUEST,
        ErrorKind::InvalidRequest,
        format!("request id {} is already in use by a request in flight: use a new id", raw.get()),
    )
}
