//! The era bridge: a handshake-era client (it opens with `initialize`) talking to a server of
//! the stateless era (2026-07-28), which has no handshake, no sessions and no server requests.
//!
//! Each client's own era goes first ([`settle_era`]): its `initialize` is forwarded as
//! it came, and only a server that refuses it the stateless way (T-62), and then answers a
//! `server/discover` probe with a `DiscoverResult`, gets a bridge; that refusal is remembered
//! per endpoint in the state dir for a day, so the next run probes first. A dual-era server
//! (one that lists only the stateless versions when asked in that era, as the Python SDK's
//! does) keeps its handshake, its session and its cancellations: no probe is sent to it at all.
//! The era is settled by the first answer that proves one; a failed probe or `initialize`
//! settles nothing, and the next first request tries again (probes back off, 0 s, 1 s, … 60 s).

//! With a bridge, `initialize` is answered here from the server's `DiscoverResult`; every
//! request goes upstream under a new id with the per-request `_meta` (J-11) and the headers it
//! implies (T-13, T-14), is retried once with a version the server lists after `-32022`, and
//! each `input_required` round (T-31) is played with the client as the handshake-era requests it
//! stands for. The client sees one response under its own id. Sending goes through
//! `exchange::call`, so rate limits, retries and sign-in work exactly as for forwarded requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

use crate::cli::{ProtocolEra, Transport};
use crate::envelope::{
    Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError, REQUEST_TIMEOUT, SHUTTING_DOWN,
    UPSTREAM_ERROR,
};
use crate::era::{self, Additions, ClientMeta, Era};
use crate::retry;
use crate::sync::Locked;

use super::core::{Core, Inbound, bad_response, unreadable};
use super::exchange;
use super::ledger::Flags;
use super::policy::Hooks;
use super::probe::{self, Probe, reread};
use super::router;

/// The most `input_required` rounds one request may take before it is answered with an error:
/// a server that keeps asking cannot keep a request open for ever.
pub const MAX_INPUT_ROUNDS: u32 = 10;
/// How long a `subscriptions/listen` stream may stay open (it is meant to stay open).
const LISTEN_LIMIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Consecutive failures of the `subscriptions/listen` stream after which it is given up.
const MAX_LISTEN_FAILURES: u32 = 5;
/// A `subscriptions/listen` stream that ends sooner than this counts as a failure.
const MIN_LISTEN_LIFE: Duration = Duration::from_secs(10);
/// The wait before the stream is opened again, doubled at each failure in a row.
const LISTEN_BACKOFF: Duration = Duration::from_millis(250);
/// Requests that change nothing: sent again with a new id when their stream breaks (the
/// stateless era has no resumption). Others may have been processed and are not.
const IDEMPOTENT: &[&str] = &[
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/get",
    "completion/complete",
];

/// The state of a bridge between a handshake-era client and a stateless server.
pub(super) struct Bridge {
    /// What every request carries in `_meta`; the version changes after a `-32022`.
    meta: Mutex<ClientMeta>,
    /// The server's `DiscoverResult`, for the local `initialize` answer.
    discover: Box<RawValue>,
    /// Requests of ours to the client (an `input_required` entry), by id, awaiting its answer.
    waiting: Mutex<HashMap<IdKey, oneshot::Sender<Bytes>>>,
    /// Requests bridged, and `input_required` rounds played, for the exit summary.
    pub(super) bridged: AtomicU64,
    pub(super) rounds: AtomicU64,
    /// What the server can notify (from its capabilities), and the resources the client
    /// subscribed to: the filter of the `subscriptions/listen` stream (T-33).
    listen: Mutex<Listen>,
}

/// The `subscriptions/listen` stream that stands for the handshake era's GET stream and
/// `resources/subscribe` (T-33).
#[derive(Default)]
struct Listen {
    tools: bool,
    prompts: bool,
    resources: bool,
    subscribe: bool,
    uris: Vec<String>,
    task: Option<AbortHandle>,
}

impl Listen {
    /// From the server's capabilities in its `DiscoverResult`.
    fn from_discover(discover: &RawValue) -> Listen {
        let caps: serde_json::Value = serde_json::from_str::<serde_json::Value>(discover.get())
            .ok()
            .and_then(|d| d.get("capabilities").cloned())
            .unwrap_or_default();
        let yes = |pointer: &str| caps.pointer(pointer).and_then(|v| v.as_bool()).unwrap_or(false);
        Listen {
            tools: yes("/tools/listChanged"),
            prompts: yes("/prompts/listChanged"),
            resources: yes("/resources/listChanged"),
            subscribe: yes("/resources/subscribe"),
            uris: Vec::new(),
            task: None,
        }
    }

    /// The `notifications` filter, or `None` when there is nothing to listen for.
    fn filter(&self) -> Option<serde_json::Value> {
        if !(self.tools || self.prompts || self.resources || !self.uris.is_empty()) {
            return None;
        }
        let mut filter = serde_json::Map::new();
        for (key, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                filter.insert(key.into(), true.into());
            }
        }
        if !self.uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), self.uris.clone().into());
        }
        Some(serde_json::json!({ "notifications": filter }))
    }
}

impl Bridge {
    /// What the bridge did, for people.
    pub(super) fn summary(&self) -> String {
        format!(
            "{} requests bridged to the stateless server, {} input rounds played with the client",
            self.bridged.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed)
        )
    }

    /// Stops the `subscriptions/listen` stream (shutdown).
    pub(super) fn stop_listening(&self) {
        if let Some(task) = self.listen.locked().task.take() {
            task.abort();
        }
    }
}

impl Inbound for Bridge {
    /// The listen stream's acknowledgement is the bridge's business (T-33).
    fn keeps(&self, method: &str) -> bool {
        method == "notifications/subscriptions/acknowledged"
    }

    /// The bridge's questions to the client (`input_required` rounds) use ids of the proxy's own.
    fn waits_for(&self, key: &IdKey) -> bool {
        self.waiting.locked().contains_key(key)
    }
}

/// Forgets requests to the client whose answers nobody waits for any more.
struct Unwait<'a> {
    bridge: &'a Bridge,
    keys: Vec<IdKey>,
}

impl Drop for Unwait<'_> {
    fn drop(&mut self) {
        let mut waiting = self.bridge.waiting.locked();
        for key in &self.keys {
            waiting.remove(key);
        }
    }
}

/// Decides the eras at a handshake-era client's `initialize` and answers it. Returns `false`
/// when the `initialize` is to be forwarded the usual way (`--protocol-era legacy`, HTTP+SSE).
///
/// The client's own era goes first: its `initialize` is forwarded as it came, and only a
/// stateless-style refusal of it (T-62), confirmed by a `DiscoverResult`, starts the bridge.
/// A `DiscoverResult` alone proves nothing about the handshake: a dual-era server (the
/// Python SDK's) lists only the stateless versions when asked in that era (issue 20). A
/// server remembered as refusing the handshake, or `--protocol-era modern`, is probed first.
/// Nothing is settled until an answer proves an era: after a timeout or an unreachable
/// server the next `initialize` decides again.
pub(super) async fn settle_era(core: &Arc<Core>, line: &Bytes) -> (bool, Option<Arc<Bridge>>) {
    if core.eras.setting == ProtocolEra::Legacy || core.link.transport == Transport::Sse {
        core.eras.settle(Era::Handshake);
        return (false, None);
    }
    let Ok(env) = Envelope::parse(line) else { return (false, None) };
    let client_id = env.id.map(RawValue::to_owned);
    let params = env.params.map(RawValue::to_owned);
    let requested = env.params().protocol_version.map(|v| v.into_owned());
    drop(env);
    let meta = || ClientMeta::from_initialize(params.as_deref(), era::FIRST_MODERN);
    let modern = core.eras.setting == ProtocolEra::Modern;
    let remembered = !modern && core.eras.cached().await == Some(Era::Stateless);
    if modern || remembered {
        match probe::probe_when_due(core, meta()).await {
            // Not remembered again: after a day, the handshake is tried again.
            Some(Probe::Stateless { discover, meta }) => {
                return start_bridge(core, client_id.as_deref(), requested.as_deref(), discover, meta).await;
            }
            Some(Probe::Failed(err)) if modern => {
                core.ledger.handshake(false);
                core.ledger.answer_unopened(client_id.as_deref(), Err(err)).await;
                return (true, None);
            }
            Some(Probe::Speaks(found)) if modern => warn!(
                "--protocol-era modern, but the server speaks the {}: forwarding as it is",
                found.name()
            ),
            // The memory is stale (the server speaks the handshake era now), or nothing
            // can be learned now: the client's `initialize` decides.
            Some(Probe::Speaks(_)) => core.eras.forget(),
            Some(Probe::Failed(_)) | None => {}
        }
    }
    core.link.keep_init_line(line.clone());
    let answer = forward_initialize(core, line, client_id.as_deref()).await;
    if refuses_the_handshake(&answer)
        && !modern
        && let Some(Probe::Stateless { discover, meta }) = probe::probe_when_due(core, meta()).await
    {
        core.eras.remember(Era::Stateless).await;
        return start_bridge(core, client_id.as_deref(), requested.as_deref(), discover, meta).await;
    }
    let answered = answer.as_ref().is_ok_and(|bytes| era::response_error(bytes).is_none());
    if answered {
        core.eras.settle(Era::Handshake);
    }
    core.ledger.handshake(answered);
    core.ledger.answer_unopened(client_id.as_deref(), answer).await;
    (true, None)
}

/// How long a client's `initialize` waits for a sign-in before it is answered from what was
/// kept (issue 24.5): well inside the 60 s most clients give an `initialize`.
const SIGN_IN_GRACE: Duration = Duration::from_secs(10);

/// Forwards the client's `initialize`. Issue 24.5: with something kept, it is answered from
/// that when the server cannot answer now ([`kept_handshake`]), or when a sign-in (OAuth) is
/// still going on after [`SIGN_IN_GRACE`]: the client would give up first. The `initialize`
/// then goes on in the background under the client's id (its answer captured, never written)
/// and pays the handshake owed when it is answered; requests wait for it.
async fn forward_initialize(
    core: &Arc<Core>,
    line: &Bytes,
    client_id: Option<&RawValue>,
) -> Result<Bytes, LocalError> {
    let limit = core.limits.request_timeout;
    let kept = core.policies.kept.as_ref().is_some_and(|k| k.holds("initialize"));
    let paying =
        if kept && client_id.is_some() && core.link.up.oauth().is_some() { core.link.paying() } else { None };
    let Some(paying) = paying else {
        let answer = exchange::call(core, line.clone(), false, true, limit, "initialize").await;
        return answer.or_else(|err| kept_handshake(core, client_id, err));
    };
    let (c, l) = (core.clone(), line.clone());
    let mut call = tokio::spawn(async move { exchange::call(&c, l, false, true, limit, "initialize").await });
    let signing_in = async {
        tokio::time::sleep(SIGN_IN_GRACE).await;
        core.link.sign_in_going().await;
    };
    let early = tokio::select! {
        joined = &mut call => Some(joined),
        () = signing_in => None,
    };
    let joined = match early {
        Some(joined) => joined,
        None => match answer_while_signing_in(core, client_id, &call) {
            Some(kept) => {
                let core = core.clone();
                tokio::spawn(async move {
                    let answered = match call.await {
                        Ok(Ok(bytes)) => {
                            era::response_error(&bytes).map_or(Ok(()), |e| Err(format!("error {}", e.code)))
                        }
                        Ok(Err(err)) => Err(err.message),
                        Err(_) => Err("it was stopped".into()),
                    };
                    core.link.paid_late(answered, core.limits.request_timeout).await;
                    drop(paying);
                });
                return Ok(kept);
            }
            None => call.await,
        },
    };
    let answer = joined.unwrap_or_else(|_| Err(bad_response("the initialize was stopped".into())));
    answer.or_else(|err| kept_handshake(core, client_id, err))
}

/// Issue 24.5: the client's `initialize` answered from what was kept while a sign-in goes on;
/// its exchange, `call`, is disowned (its answer captured, never written, nor at shutdown).
fn answer_while_signing_in<T>(
    core: &Core,
    client_id: Option<&RawValue>,
    call: &tokio::task::JoinHandle<T>,
) -> Option<Bytes> {
    let (id, kept) = (client_id?, core.policies.kept.as_ref()?);
    if call.is_finished() {
        return None;
    }
    let (result, _) = kept.stale("initialize")?;
    if let Some(key) = IdKey::new(id) {
        core.ledger.disown(&key);
    }
    warn!(
        "the sign-in to {} goes on; the client's initialize was answered from what was kept, and its requests wait for the sign-in",
        core.link.up.host()
    );
    core.link.owe_handshake();
    Some(era::response_with_id(id, "result", &result).into())
}

/// Issue 24.5: a client's `initialize` the server cannot answer now (rate-limited past
/// `--max-wait`, unreachable) is answered from the last one kept, if any; the server's
/// handshake is then owed, paid by the first request that goes to it.
fn kept_handshake(core: &Core, client_id: Option<&RawValue>, err: LocalError) -> Result<Bytes, LocalError> {
    if !err.passing() {
        return Err(err);
    }
    let (Some(id), Some(kept)) = (client_id, core.policies.kept.as_ref()) else { return Err(err) };
    let Some((result, _)) = kept.stale("initialize") else { return Err(err) };
    warn!(
        "{}; the client's initialize was answered from what was kept, and its requests wait for the server",
        err.message
    );
    core.link.owe_handshake();
    Ok(era::response_with_id(id, "result", &result).into())
}

/// Installs the bridge and answers the client's `initialize` from `discover`.
async fn start_bridge(
    core: &Arc<Core>,
    client_id: Option<&RawValue>,
    requested: Option<&str>,
    discover: Box<RawValue>,
    meta: ClientMeta,
) -> (bool, Option<Arc<Bridge>>) {
    let version = era::negotiated_legacy(requested);
    let result = era::initialize_result(&discover, version);
    info!(
        "the server speaks only the stateless era ({}); bridging this client's handshake era to it",
        meta.version
    );
    let listen = Listen::from_discover(&discover);
    let bridge = Arc::new(Bridge {
        meta: Mutex::new(meta),
        listen: Mutex::new(listen),
        discover,
        waiting: Mutex::new(HashMap::new()),
        bridged: AtomicU64::new(0),
        rounds: AtomicU64::new(0),
    });
    let _ = core.inbound.set(bridge.clone());
    core.eras.settle(Era::Stateless);
    // A forwarded `initialize` the server answered (at a stateless-era version) may have
    // left a session and a line to replay: the stateless era has neither.
    core.link.up.reset_session();
    core.link.forget_init_line();
    relisten(core, &bridge);
    let answer = match (client_id, RawValue::from_string(result)) {
        (Some(id), Ok(result)) => Ok(era::response_with_id(id, "result", &result).into()),
        _ => Err(bad_response("the server's discovery result cannot be read".into())),
    };
    core.ledger.handshake(answer.is_ok());
    core.ledger.answer_unopened(client_id, answer).await;
    (true, Some(bridge))
}

/// (Re)opens the `subscriptions/listen` stream with the current filter (T-33); the old one
/// is closed, which ends it for the server (T-25).
fn relisten(core: &Arc<Core>, bridge: &Arc<Bridge>) {
    let mut listen = bridge.listen.locked();
    if let Some(old) = listen.task.take() {
        old.abort();
    }
    if listen.filter().is_none() || core.shutting_down.load(Ordering::Relaxed) || !core.streams.listening {
        return;
    }
    listen.task = Some(tokio::spawn(listen_stream(core.clone(), bridge.clone())).abort_handle());
}

/// Keeps a `subscriptions/listen` stream open: its notifications go to the client as the
/// handshake era has them (the acknowledgement is the bridge's); a stream that ends or breaks
/// is opened again with a new id (no resumption in this era), with backoff.
async fn listen_stream(core: Arc<Core>, bridge: Arc<Bridge>) {
    let mut failures = 0u32;
    loop {
        let Some(params) = bridge.listen.locked().filter() else { return };
        let meta = bridge.meta.locked().clone();
        let (_, id) = core.own_id();
        let params = RawValue::from_string(params.to_string()).ok();
        let Ok(body) = era::rewrite_request(
            "subscriptions/listen",
            params.as_deref(),
            &id,
            &Additions { meta: Some(&meta), ..Additions::default() },
        ) else {
            return;
        };
        let opened = Instant::now();
        let what = "the subscriptions/listen stream";
        let call = exchange::call(&core, body.into(), true, false, LISTEN_LIMIT, what);
        // Nobody waits on it: it never takes the last units of the server's budget.
        let outcome = super::link::USAGE.scope(crate::ratelimit::Use::Background, call).await;
        // A stream the server ends within seconds is no listening at all (issue 21.4: one
        // ended at once was reopened every 500 ms for ever, each through the rate-limit gate).
        let short = opened.elapsed() < MIN_LISTEN_LIFE;
        if core.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        match outcome {
            Ok(answer) => match era::response_error(&answer) {
                Some(e) if e.code == -32601 => {
                    debug!("the server offers no subscriptions/listen; list changes come only with lists");
                    return;
                }
                Some(_) => failures += 1,
                None if short => failures += 1,
                // Ended by the server after a while (it tore the subscription down): listen
                // again.
                None => failures = 0,
            },
            Err(e) => {
                debug!("the subscriptions/listen stream broke: {}", e.message);
                failures += 1;
            }
        }
        if failures >= MAX_LISTEN_FAILURES {
            warn!(
                "the server's subscriptions/listen stream failed {failures} times in a row; list changes will not be announced"
            );
            return;
        }
        tokio::time::sleep(LISTEN_BACKOFF * 2u32.pow(failures.min(6))).await;
    }
}

/// Handles one line from a handshake-era client while a bridge is in use.
pub(super) async fn dispatch_bridged(core: &Arc<Core>, bridge: &Arc<Bridge>, line: Bytes) {
    if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        // A 2025-03-26 batch: the stateless era has none; its members go one by one.
        let members: Vec<Bytes> = match serde_json::from_slice::<Vec<&RawValue>>(&line) {
            Ok(m) if !m.is_empty() => m.iter().map(|m| line.slice_ref(m.get().as_bytes())).collect(),
            _ => return router::dispatch_plain(core, line).await,
        };
        for member in members {
            Box::pin(dispatch_bridged(core, bridge, member)).await;
        }
        return;
    }
    let env = match Envelope::parse(&line) {
        Ok(env) => env,
        Err(_) => return router::dispatch_plain(core, line).await,
    };
    let method = env.method.as_deref().unwrap_or_default().to_owned();
    match env.kind() {
        Ok(Kind::Request) => {
            let local = answer_locally(core, bridge, &env, &method);
            if let Some(result) = local {
                let id = env.id.map(RawValue::to_owned);
                drop(env);
                if let (Some(id), Ok(result)) = (id, RawValue::from_string(result)) {
                    core.ledger.write(era::response_with_id(&id, "result", &result).into()).await;
                }
                return;
            }
            let Some(room) = core.room.now(line.len()) else {
                drop(env);
                return router::dispatch_plain(core, line).await; // answered there as overloaded
            };
            let flags = Flags { modern: true, ..Flags::default() };
            let hooks = Hooks { learn_tools: method == "tools/list", ..Hooks::default() };
            let Some((key, _)) = core.ledger.open(&env, flags, hooks) else { return };
            drop(env);
            let what = format!("{method} (bridged)");
            exchange::spawn_request(
                core,
                &key,
                Some(room),
                run_bridged(core.clone(), bridge.clone(), key.clone(), line, what),
            );
        }
        Ok(Kind::Notification) => {
            if method == "notifications/cancelled"
                && let Some(key) = env.params().request_id.and_then(IdKey::new)
            {
                // Aborting the request's task drops its HTTP exchange: the stream closes,
                // which is the cancellation in the stateless era (T-25).
                core.ledger.cancel(&key);
            }
            // `notifications/initialized` and list changes of the client have no stateless
            // counterpart (roots are asked for in each request's rounds).
            debug!(method, "client notification kept by the bridge");
        }
        Ok(Kind::Response) => {
            let Some(key) = env.id_key() else { return };
            drop(env);
            let waiter = bridge.waiting.locked().remove(&key);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(line);
                }
                None => debug!("an answer from the client to no request of the bridge was dropped"),
            }
        }
        Err(_) => {
            drop(env);
            router::dispatch_plain(core, line).await;
        }
    }
}

/// The result of a client request the bridge answers itself, if it is one: there is no
/// handshake and no `ping` upstream, subscriptions are the filter of the listen stream
/// (T-33), and the log level goes into each request's `_meta`.
fn answer_locally(
    core: &Arc<Core>,
    bridge: &Arc<Bridge>,
    env: &Envelope<'_>,
    method: &str,
) -> Option<String> {
    match method {
        // No handshake and no ping upstream: answered here.
        "initialize" => Some(era::initialize_result(
            &bridge.discover,
            era::negotiated_legacy(env.params().protocol_version.as_deref()),
        )),
        "ping" => Some("{}".to_owned()),
        // T-33: subscriptions are the filter of the listen stream.
        "resources/subscribe" | "resources/unsubscribe" if bridge.listen.locked().subscribe => {
            let uri = env.params().uri.map(|u| u.into_owned()).unwrap_or_default();
            {
                let mut listen = bridge.listen.locked();
                listen.uris.retain(|u| *u != uri);
                if method == "resources/subscribe" {
                    listen.uris.push(uri);
                }
            }
            relisten(core, bridge);
            Some("{}".to_owned())
        }
        "logging/setLevel" => {
            #[derive(serde::Deserialize)]
            struct Level {
                level: String,
            }
            let level = env.params.and_then(|p| serde_json::from_str::<Level>(p.get()).ok());
            bridge.meta.locked().log_level = level.map(|l| l.level);
            Some("{}".to_owned())
        }
        _ => None,
    }
}

/// Runs one bridged request to its single answer.
async fn run_bridged(core: Arc<Core>, bridge: Arc<Bridge>, key: IdKey, line: Bytes, what: String) {
    match bridged_rounds(&core, &bridge, &line, &what).await {
        Ok(answer) => {
            core.ledger.settle(&key, answer, false, || {}).await;
        }
        Err(err) => core.ledger.fail(&key, &err).await,
    }
}

/// Sends a client request upstream in the stateless form, plays the `input_required`
/// rounds with the client, and returns the answer under the client's id.
async fn bridged_rounds(
    core: &Arc<Core>,
    bridge: &Bridge,
    line: &[u8],
    what: &str,
) -> Result<Bytes, LocalError> {
    let (env, client_id) = reread(line)?;
    let method = env.method.as_deref().unwrap_or_default();
    bridge.bridged.fetch_add(1, Ordering::Relaxed);
    let list_key =
        super::policy::lists::cacheable(method).then(|| super::policy::lists::key(method, &env.params()));
    if let Some(cached) = list_key.as_deref().and_then(|k| core.policies.lists.get(k)) {
        return Ok(era::response_with_id(client_id, "result", &cached).into());
    }
    let mut answers: Option<Vec<(String, Box<RawValue>)>> = None;
    let mut state: Option<Box<RawValue>> = None;
    let (mut version_retried, mut reissued) = (false, false);
    let mut rounds = 0u32;
    loop {
        let meta = bridge.meta.locked().clone();
        let (_, id) = core.own_id();
        let add =
            Additions { meta: Some(&meta), input_responses: answers.as_deref(), state: state.as_deref() };
        let body = era::rewrite_request(method, env.params, &id, &add).map_err(|e| {
            LocalError::new(INVALID_REQUEST, ErrorKind::InvalidRequest, format!("invalid params: {e}"))
        })?;
        let answer =
            match exchange::call(core, body.into(), true, false, core.limits.request_timeout, what).await {
                // A broken stream loses the request in this era; one that changes nothing is
                // asked again under a new id, once (T-23). Others may have been processed.
                Err(e)
                    if matches!(e.kind, ErrorKind::StreamEnded | ErrorKind::BadResponse)
                        && !reissued
                        && IDEMPOTENT.contains(&method) =>
                {
                    debug!(what, "the stream broke; asking again with a new id");
                    reissued = true;
                    continue;
                }
                other => other?,
            };
        let reply = Envelope::parse(&answer).map_err(|_| unreadable())?;
        if let Some(error) = reply.error {
            // -32022: the version we chose is not the server's; once, with one it lists.
            if !version_retried
                && let Some(version) = era::response_error(&answer).and_then(|e| e.supported_modern())
                && version != meta.version
            {
                debug!(version, "retrying with a version the server lists");
                version_retried = true;
                bridge.meta.locked().version = version;
                continue;
            }
            return Ok(era::response_with_id(client_id, "error", error).into());
        }
        let Some(result) = reply.result else { return Err(unreadable()) };
        let Some(input) = era::input_required(result) else {
            if let Some(list_key) = list_key {
                core.policies.lists.put(list_key, &answer);
            }
            return Ok(era::response_with_id(client_id, "result", result).into());
        };
        rounds += 1;
        if rounds > MAX_INPUT_ROUNDS {
            return Err(bad_response(format!(
                "the server asked the client for input more than {MAX_INPUT_ROUNDS} times for one request; it was given up"
            )));
        }
        bridge.rounds.fetch_add(1, Ordering::Relaxed);
        answers = Some(ask_client(core, bridge, input.requests).await?);
        state = input.state;
    }
}

/// Sends each of the server's input requests to the client as the handshake-era request it
/// stands for, under a fresh id, and collects the results by key.
async fn ask_client(
    core: &Core,
    bridge: &Bridge,
    requests: Vec<era::InputRequest>,
) -> Result<Vec<(String, Box<RawValue>)>, LocalError> {
    let mut asked = Vec::with_capacity(requests.len());
    let mut unwait = Unwait { bridge, keys: Vec::new() };
    for request in &requests {
        let (key, id) = core.own_id();
        let (tx, rx) = oneshot::channel();
        bridge.waiting.locked().insert(key.clone(), tx);
        unwait.keys.push(key);
        core.ledger.write(era::client_request(&id, &request.method, request.params.as_deref()).into()).await;
        asked.push(rx);
    }
    let mut answers = Vec::with_capacity(requests.len());
    for (request, rx) in requests.into_iter().zip(asked) {
        let gone = || {
            LocalError::new(
                SHUTTING_DOWN,
                ErrorKind::ShuttingDown,
                "the client did not answer the server's question; the request was given up",
            )
        };
        // A client that never answers cannot hold the request for ever: it has as long as
        // any request has (`--request-timeout`).
        let line = match timeout(core.limits.request_timeout, rx).await {
            Ok(answer) => answer.map_err(|_| gone())?,
            Err(_) => {
                let mut err = LocalError::new(
                    REQUEST_TIMEOUT,
                    ErrorKind::Timeout,
                    format!(
                        "the server needs {} from the client to finish this request, and the client did not answer within {} (--request-timeout)",
                        request.method,
                        retry::human(core.limits.request_timeout)
                    ),
                );
                err.request_sent = Some(true);
                return Err(err);
            }
        };
        let env = Envelope::parse(&line).map_err(|_| gone())?;
        match (env.result, env.error) {
            (Some(result), None) => answers.push((request.key, result.to_owned())),
            (_, error) => {
                let said = error
                    .and_then(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok())
                    .and_then(|e| e.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                let mut err = LocalError::new(
                    UPSTREAM_ERROR,
                    ErrorKind::InputRefused,
                    format!(
                        "the server needs {} from the client to finish this request, and the client refused it ({said})",
                        request.method
                    ),
                );
                err.request_sent = Some(true);
                return Err(err);
            }
        }
    }
    Ok(answers)
}

/// Whether the answer to a forwarded `initialize` is a stateless server's refusal: a JSON-RPC
/// error the handshake era never gives to `initialize` (T-62: missing headers, unsupported
/// version, unknown method), or a 400. A result that names a stateless-era version counts too:
/// 2026-07-28 has no handshake, so a server that answers one at that version (leniently, as the
/// conformance suite's mocks do) expects that era's per-request `_meta` and headers, which only
/// the bridge gives a handshake-era client.
fn refuses_the_handshake(answer: &Result<Bytes, LocalError>) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<Negotiated>,
    }
    #[derive(serde::Deserialize)]
    struct Negotiated {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    match answer {
        Ok(bytes) => {
            era::response_error(bytes).is_some_and(|e| matches!(e.code, -32020 | -32021 | -32022 | -32601))
                || serde_json::from_slice::<Answer>(bytes)
                    .ok()
                    .and_then(|a| a.result?.protocol_version)
                    .is_some_and(|v| era::is_modern(&v))
        }
        Err(e) => e.http_status == Some(400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t62_what_counts_as_a_refused_handshake() {
        let ok = |s: &str| Ok(Bytes::from(s.to_owned()));
        let refused =
            |code: i64| ok(&format!(r#"{{"jsonrpc":"2.0","id":0,"error":{{"code":{code},"message":"x"}}}}"#));
        assert!(refuses_the_handshake(&refused(-32020)));
        assert!(refuses_the_handshake(&refused(-32601)));
        assert!(!refuses_the_handshake(&refused(-32603)), "a failure proves nothing");
        let answered =
            |v: &str| ok(&format!(r#"{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":"{v}"}}}}"#));
        assert!(!refuses_the_handshake(&answered("2025-11-25")));
        assert!(refuses_the_handshake(&answered("2026-07-28")));
    }
}
