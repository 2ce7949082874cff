//! The era bridge: a handshake-era client (it opens with `initialize`) talking to a server of
//! the stateless era (2026-07-28), which has no handshake, no sessions and no server requests.
//!
//! Each client's own era goes first ([`Proxy::settle_era`]): its `initialize` is forwarded as
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
//! [`Proxy::call`], so rate limits, retries and sign-in work exactly as for forwarded requests.

use std::sync::OnceLock;

use super::probe::{Probe, reread, unreadable};
use super::*;
use crate::cli::ProtocolEra;
use crate::era::{self, Additions, ClientMeta, Era, EraCache, Verdict};

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
/// The longest a failed era probe keeps the next one waiting (issue 20).
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(60);
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

/// The era settings of one run.
pub(super) struct Eras {
    /// `--protocol-era`.
    pub(super) setting: ProtocolEra,
    /// Where the server's era is remembered (no state dir: not remembered).
    pub(super) cache: Option<EraCache>,
    /// The client's `initialize` has been seen and the era decided.
    pub(super) settled: AtomicBool,
    /// The server's era, once learned.
    pub(super) server: Mutex<Option<Era>>,
    /// Set when a bridge is in use.
    pub(super) bridge: OnceLock<Arc<Bridge>>,
    /// Set when the reverse bridge (a stateless client, a handshake server) is in use.
    pub(super) reverse: super::reverse::Slot,
    /// Ids of the proxy's own requests.
    next_id: AtomicU64,
    /// When the era probe may be tried again after a failure.
    backoff: Mutex<ProbeBackoff>,
}

/// Failed era probes in a row, and when the next one is due.
#[derive(Default)]
pub(super) struct ProbeBackoff {
    failures: u32,
    until: Option<Instant>,
}

impl Eras {
    pub(super) fn new(setting: ProtocolEra, cache: Option<EraCache>) -> Eras {
        Eras {
            setting,
            cache,
            settled: AtomicBool::new(false),
            server: Mutex::new(None),
            bridge: OnceLock::new(),
            reverse: OnceLock::new(),
            next_id: AtomicU64::new(0),
            backoff: Mutex::new(ProbeBackoff::default()),
        }
    }

    /// The server's era is known (`found`): nothing is decided again for this run.
    pub(super) fn settle(&self, found: Era) {
        *self.server.locked() = Some(found);
        self.settled.store(true, Ordering::Relaxed);
    }
}

/// Removes a request's entry from the pending table when its sender stops caring (an abort).
struct Unregister<'a> {
    proxy: &'a Proxy,
    key: Option<IdKey>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.proxy.ledger.forget(&key);
        }
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

impl Proxy {
    /// The server's era as learned, and whether a bridge is in use (for `check`).
    pub fn eras(&self) -> (Option<Era>, bool) {
        (*self.eras.server.locked(), self.eras.bridge.get().is_some() || self.eras.reverse.get().is_some())
    }

    /// Whether the server also takes the stateless era, asked with a `server/discover` probe
    /// (for `check`, which reports both eras; the proxy itself never asks a server that took the
    /// handshake). `None`: no answer to judge by.
    pub async fn takes_the_stateless_era(self: &Arc<Self>) -> Option<bool> {
        match self.probe(ClientMeta::from_meta(None, era::FIRST_MODERN)).await {
            Probe::Stateless { .. } | Probe::Speaks(Era::Both | Era::Stateless) => Some(true),
            Probe::Speaks(Era::Handshake) => Some(false),
            Probe::Failed(_) => None,
        }
    }

    /// What the bridge did, for people (`None`: no bridge).
    pub fn bridge_summary(&self) -> Option<String> {
        if let Some(reverse) = self.eras.reverse.get() {
            return Some(format!(
                "{} requests of a stateless-era client bridged to the handshake-era server, {} input rounds",
                reverse.bridged.load(Ordering::Relaxed),
                reverse.rounds.load(Ordering::Relaxed)
            ));
        }
        let bridge = self.eras.bridge.get()?;
        Some(format!(
            "{} requests bridged to the stateless server, {} input rounds played with the client",
            bridge.bridged.load(Ordering::Relaxed),
            bridge.rounds.load(Ordering::Relaxed)
        ))
    }

    /// A fresh id for a request of the proxy's own, and its key.
    pub(super) fn own_id(&self) -> (IdKey, String) {
        loop {
            let n = self.eras.next_id.fetch_add(1, Ordering::Relaxed);
            let id = format!("mcp-sidecar-{n}");
            let key = IdKey::Str(id.clone());
            if !self.ledger.is_open(&key) && !self.bridge_waits_for(&key) {
                return (key, id);
            }
        }
    }

    fn bridge_waits_for(&self, key: &IdKey) -> bool {
        self.eras.bridge.get().is_some_and(|b| b.waiting.locked().contains_key(key))
    }

    /// Sends a request and returns the server's response instead of writing it to stdout.
    /// `internal` requests are the proxy's own (shutdown does not answer them on stdout); the
    /// client's `initialize` is sent this way under its own id, so that its answer can be read.
    pub(super) async fn call(
        self: &Arc<Self>,
        body: Bytes,
        internal: bool,
        initialize: bool,
        limit: Duration,
        what: &str,
    ) -> Result<Bytes, LocalError> {
        let env = Envelope::parse(&body).map_err(|_| unreadable())?;
        let (Some(raw_id), Some(key)) = (env.id, env.id_key()) else { return Err(unreadable()) };
        let method = env.method.as_deref().unwrap_or_default();
        let params = env.params();
        let headers = self.policies.params.request_headers(method, &params);
        let modern = headers.is_modern();
        let flags = Flags { initialize, modern, lists_tools: modern && method == "tools/list", internal };
        let (done, capture) = self.ledger.open_captured(raw_id, &key, flags)?;
        drop(env);
        // The client's own request stays in the table if this is dropped (a signal while it is
        // sent): shutdown answers it (every request read gets exactly one response).
        let _unregister = Unregister { proxy: self, key: internal.then(|| key.clone()) };
        let sent = self.exchange(body, &headers, vec![(key.clone(), done)], initialize, limit, what).await;
        // Answered or not, the request is over: its caller answers the client from what this
        // returns, so its entry leaves now (no second answer at exit, and its id can be used
        // again, issue 20). An answer is delivered before the exchange returns, so a capture
        // still empty here will stay empty.
        self.ledger.forget(&key);
        sent?;
        capture.await.map_err(|_| {
            if self.shutting_down.load(Ordering::Relaxed) {
                LocalError::new(
                    SHUTTING_DOWN,
                    ErrorKind::ShuttingDown,
                    "mcp-sidecar is shutting down and the server had not answered yet; the request may have been processed",
                )
            } else {
                bad_response(
                    "the server ended its reply without answering this request; it may or may not have been processed"
                        .into(),
                )
            }
        })
    }

    /// Runs the task of a registered client request, holding its room; a cancel aborts it.
    pub(super) fn spawn_request<F>(
        &self,
        key: &IdKey,
        room: Option<tokio::sync::OwnedSemaphorePermit>,
        task: F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = self.tasks.spawn(holding(room, task));
        self.ledger.set_abort(key, handle.abort_handle());
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
    pub(super) async fn settle_era(self: &Arc<Self>, line: &Bytes) -> bool {
        if self.eras.setting == ProtocolEra::Legacy || self.link.transport == Transport::Sse {
            self.eras.settle(Era::Handshake);
            return false;
        }
        let Ok(env) = Envelope::parse(line) else { return false };
        let client_id = env.id.map(RawValue::to_owned);
        let params = env.params.map(RawValue::to_owned);
        let requested = env.params().protocol_version.map(|v| v.into_owned());
        drop(env);
        let meta = || ClientMeta::from_initialize(params.as_deref(), era::FIRST_MODERN);
        let modern = self.eras.setting == ProtocolEra::Modern;
        let remembered = !modern && self.cached_era().await == Some(Era::Stateless);
        if modern || remembered {
            match self.probe_when_due(meta()).await {
                // Not remembered again: after a day, the handshake is tried again.
                Some(Probe::Stateless { discover, meta }) => {
                    return self
                        .start_bridge(client_id.as_deref(), requested.as_deref(), discover, meta)
                        .await;
                }
                Some(Probe::Failed(err)) if modern => {
                    self.ledger.answer_unopened(client_id.as_deref(), Err(err)).await;
                    return true;
                }
                Some(Probe::Speaks(found)) if modern => warn!(
                    "--protocol-era modern, but the server speaks the {}: forwarding as it is",
                    found.name()
                ),
                // The memory is stale (the server speaks the handshake era now), or nothing
                // can be learned now: the client's `initialize` decides.
                Some(Probe::Speaks(_)) => self.forget_era(),
                Some(Probe::Failed(_)) | None => {}
            }
        }
        self.link.keep_init_line(line.clone());
        let answer = self.call(line.clone(), false, true, self.request_timeout, "initialize").await;
        if refuses_the_handshake(&answer)
            && !modern
            && let Some(Probe::Stateless { discover, meta }) = self.probe_when_due(meta()).await
        {
            self.remember(Era::Stateless).await;
            return self.start_bridge(client_id.as_deref(), requested.as_deref(), discover, meta).await;
        }
        if answer.as_ref().is_ok_and(|bytes| era::response_error(bytes).is_none()) {
            self.eras.settle(Era::Handshake);
        }
        self.ledger.answer_unopened(client_id.as_deref(), answer).await;
        true
    }

    /// Forgets the era remembered for this server, in memory and in the state dir.
    pub(super) fn forget_era(&self) {
        if let Some(cache) = &self.eras.cache {
            cache.forget();
        }
        *self.eras.server.locked() = None;
    }

    /// [`Proxy::probe`], unless a probe failed a moment ago (`None`): see [`probe_backoff`].
    pub(super) async fn probe_when_due(self: &Arc<Self>, meta: ClientMeta) -> Option<Probe> {
        if self.eras.backoff.locked().until.is_some_and(|until| Instant::now() < until) {
            debug!("the era probe failed a moment ago; not asking again yet");
            return None;
        }
        let probe = self.probe(meta).await;
        let mut backoff = self.eras.backoff.locked();
        if matches!(probe, Probe::Failed(_)) {
            backoff.failures = backoff.failures.saturating_add(1);
            backoff.until = Instant::now().checked_add(probe_backoff(backoff.failures));
        } else {
            *backoff = ProbeBackoff::default();
        }
        Some(probe)
    }

    /// The server's era as remembered in the state dir (read off the runtime thread).
    pub(super) async fn cached_era(&self) -> Option<Era> {
        let cache = self.eras.cache.clone()?;
        tokio::task::spawn_blocking(move || cache.load(SystemTime::now())).await.ok().flatten()
    }

    /// Remembers the server's era, in memory and (off the runtime thread) in the state dir.
    pub(super) async fn remember(&self, found: Era) {
        *self.eras.server.locked() = Some(found);
        if let Some(cache) = &self.eras.cache {
            let cache = cache.clone();
            let stored = tokio::task::spawn_blocking(move || cache.store(found, SystemTime::now())).await;
            if let Ok(Err(e)) = stored {
                debug!("could not remember the server's era: {e}");
            }
        }
    }

    /// Asks the server `server/discover` (S-09, T-62), once more after `-32022` with a version it
    /// lists.
    pub(super) async fn probe(self: &Arc<Self>, mut meta: ClientMeta) -> Probe {
        let limit = self.request_timeout.min(DISCOVER_TIMEOUT);
        for attempt in 0..2 {
            let (_, id) = self.own_id();
            let body = match era::rewrite_request(
                "server/discover",
                None,
                &id,
                &Additions { meta: Some(&meta), ..Additions::default() },
            ) {
                Ok(body) => body,
                Err(_) => return Probe::Speaks(Era::Handshake),
            };
            match self.call(body.into(), true, false, limit, "the server/discover probe").await {
                // A server that failed proves nothing about its era.
                Ok(answer) if era::response_error(&answer).is_some_and(|e| e.code == era::INTERNAL_ERROR) => {
                    return Probe::Failed(bad_response("the server failed to answer server/discover".into()));
                }
                Ok(answer) => match era::probe_verdict(&answer) {
                    Verdict::Stateless(discover) => return Probe::Stateless { discover, meta },
                    Verdict::Both => return Probe::Speaks(Era::Both),
                    Verdict::RetryWith(version) if attempt == 0 => {
                        debug!(version, "the server asks for another stateless version");
                        meta.version = version;
                    }
                    _ => return Probe::Speaks(Era::Handshake),
                },
                // A 4xx without a JSON-RPC error: an old server (or the HTTP+SSE transport)
                // that does not know the method (T-60, T-62).
                Err(e)
                    if e.http_status
                        .is_some_and(|s| (400..500).contains(&s) && !matches!(s, 401 | 403 | 429)) =>
                {
                    return Probe::Speaks(Era::Handshake);
                }
                Err(e) => return Probe::Failed(e),
            }
        }
        Probe::Speaks(Era::Handshake)
    }

    /// Installs the bridge and answers the client's `initialize` from `discover`.
    async fn start_bridge(
        self: &Arc<Self>,
        client_id: Option<&RawValue>,
        requested: Option<&str>,
        discover: Box<RawValue>,
        meta: ClientMeta,
    ) -> bool {
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
        let _ = self.eras.bridge.set(bridge.clone());
        self.eras.settle(Era::Stateless);
        // A forwarded `initialize` the server answered (at a stateless-era version) may have
        // left a session and a line to replay: the stateless era has neither.
        self.link.up.reset_session();
        self.link.forget_init_line();
        self.relisten(&bridge);
        let answer = match (client_id, RawValue::from_string(result)) {
            (Some(id), Ok(result)) => Ok(era::response_with_id(id, "result", &result).into()),
            _ => Err(bad_response("the server's discovery result cannot be read".into())),
        };
        self.ledger.answer_unopened(client_id, answer).await;
        true
    }

    /// (Re)opens the `subscriptions/listen` stream with the current filter (T-33); the old one
    /// is closed, which ends it for the server (T-25).
    fn relisten(self: &Arc<Self>, bridge: &Arc<Bridge>) {
        let mut listen = bridge.listen.locked();
        if let Some(old) = listen.task.take() {
            old.abort();
        }
        if listen.filter().is_none() || self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        listen.task = Some(tokio::spawn(self.clone().listen_stream(bridge.clone())).abort_handle());
    }

    /// Keeps a `subscriptions/listen` stream open: its notifications go to the client as the
    /// handshake era has them (the acknowledgement is the bridge's); a stream that ends or breaks
    /// is opened again with a new id (no resumption in this era), with backoff.
    async fn listen_stream(self: Arc<Self>, bridge: Arc<Bridge>) {
        let mut failures = 0u32;
        loop {
            let Some(params) = bridge.listen.locked().filter() else { return };
            let meta = bridge.meta.locked().clone();
            let (_, id) = self.own_id();
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
            let call = self.call(body.into(), true, false, LISTEN_LIMIT, what);
            // Nobody waits on it: it never takes the last units of the server's budget.
            let outcome = super::link::USAGE.scope(crate::ratelimit::Use::Background, call).await;
            // A stream the server ends within seconds is no listening at all (issue 21.4: one
            // ended at once was reopened every 500 ms for ever, each through the rate-limit gate).
            let short = opened.elapsed() < MIN_LISTEN_LIFE;
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            match outcome {
                Ok(answer) => match era::response_error(&answer) {
                    Some(e) if e.code == -32601 => {
                        debug!(
                            "the server offers no subscriptions/listen; list changes come only with lists"
                        );
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

    /// Stops the `subscriptions/listen` stream (shutdown).
    pub(super) fn stop_listening(&self) {
        if let Some(bridge) = self.eras.bridge.get()
            && let Some(task) = bridge.listen.locked().task.take()
        {
            task.abort();
        }
    }

    /// Handles one line from a handshake-era client while a bridge is in use.
    pub(super) async fn dispatch_bridged(self: &Arc<Self>, bridge: &Arc<Bridge>, line: Bytes) {
        if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            // A 2025-03-26 batch: the stateless era has none; its members go one by one.
            let members: Vec<Bytes> = match serde_json::from_slice::<Vec<&RawValue>>(&line) {
                Ok(m) if !m.is_empty() => m.iter().map(|m| line.slice_ref(m.get().as_bytes())).collect(),
                _ => return self.dispatch_line_plain(line).await,
            };
            for member in members {
                Box::pin(self.dispatch_bridged(bridge, member)).await;
            }
            return;
        }
        let env = match Envelope::parse(&line) {
            Ok(env) => env,
            Err(_) => return self.dispatch_line_plain(line).await,
        };
        let method = env.method.as_deref().unwrap_or_default().to_owned();
        match env.kind() {
            Ok(Kind::Request) => {
                let local = self.answer_locally(bridge, &env, &method);
                if let Some(result) = local {
                    let id = env.id.map(RawValue::to_owned);
                    drop(env);
                    if let (Some(id), Ok(result)) = (id, RawValue::from_string(result)) {
                        self.ledger.write(era::response_with_id(&id, "result", &result).into()).await;
                    }
                    return;
                }
                let Some(room) = self.room.now(line.len()) else {
                    drop(env);
                    return self.dispatch_line_plain(line).await; // answered there as overloaded
                };
                let flags = Flags { modern: true, lists_tools: method == "tools/list", ..Flags::default() };
                let Some((key, _)) = self.ledger.open(&env, flags) else { return };
                drop(env);
                let what = format!("{method} (bridged)");
                self.spawn_request(
                    &key,
                    Some(room),
                    self.clone().run_bridged(bridge.clone(), key.clone(), line, what),
                );
            }
            Ok(Kind::Notification) => {
                if method == "notifications/cancelled"
                    && let Some(key) = env.params().request_id.and_then(IdKey::new)
                {
                    // Aborting the request's task drops its HTTP exchange: the stream closes,
                    // which is the cancellation in the stateless era (T-25).
                    self.ledger.cancel(&key);
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
                self.dispatch_line_plain(line).await;
            }
        }
    }

    /// The result of a client request the bridge answers itself, if it is one: there is no
    /// handshake and no `ping` upstream, subscriptions are the filter of the listen stream
    /// (T-33), and the log level goes into each request's `_meta`.
    fn answer_locally(
        self: &Arc<Self>,
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
                self.relisten(bridge);
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
    async fn run_bridged(self: Arc<Self>, bridge: Arc<Bridge>, key: IdKey, line: Bytes, what: String) {
        match self.bridged_rounds(&bridge, &line, &what).await {
            Ok(answer) => {
                self.ledger.settle(&key, answer, false, || {}).await;
            }
            Err(err) => self.ledger.fail(&key, &err).await,
        }
    }

    /// Sends a client request upstream in the stateless form, plays the `input_required`
    /// rounds with the client, and returns the answer under the client's id.
    async fn bridged_rounds(
        self: &Arc<Self>,
        bridge: &Bridge,
        line: &[u8],
        what: &str,
    ) -> Result<Bytes, LocalError> {
        let (env, client_id) = reread(line)?;
        let method = env.method.as_deref().unwrap_or_default();
        bridge.bridged.fetch_add(1, Ordering::Relaxed);
        let list_key =
            super::policy::lists::cacheable(method).then(|| super::policy::lists::key(method, &env.params()));
        if let Some(cached) = list_key.as_deref().and_then(|k| self.policies.lists.get(k)) {
            return Ok(era::response_with_id(client_id, "result", &cached).into());
        }
        let mut answers: Option<Vec<(String, Box<RawValue>)>> = None;
        let mut state: Option<Box<RawValue>> = None;
        let (mut version_retried, mut reissued) = (false, false);
        let mut rounds = 0u32;
        loop {
            let meta = bridge.meta.locked().clone();
            let (_, id) = self.own_id();
            let add =
                Additions { meta: Some(&meta), input_responses: answers.as_deref(), state: state.as_deref() };
            let body = era::rewrite_request(method, env.params, &id, &add).map_err(|e| {
                LocalError::new(INVALID_REQUEST, ErrorKind::InvalidRequest, format!("invalid params: {e}"))
            })?;
            let answer = match self.call(body.into(), true, false, self.request_timeout, what).await {
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
                    self.policies.lists.put(list_key, &answer);
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
            answers = Some(self.ask_client(bridge, input.requests).await?);
            state = input.state;
        }
    }

    /// Sends each of the server's input requests to the client as the handshake-era request it
    /// stands for, under a fresh id, and collects the results by key.
    async fn ask_client(
        &self,
        bridge: &Bridge,
        requests: Vec<era::InputRequest>,
    ) -> Result<Vec<(String, Box<RawValue>)>, LocalError> {
        let mut asked = Vec::with_capacity(requests.len());
        let mut unwait = Unwait { bridge, keys: Vec::new() };
        for request in &requests {
            let (key, id) = self.own_id();
            let (tx, rx) = oneshot::channel();
            bridge.waiting.locked().insert(key.clone(), tx);
            unwait.keys.push(key);
            self.ledger
                .write(era::client_request(&id, &request.method, request.params.as_deref()).into())
                .await;
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
            let line = match timeout(self.request_timeout, rx).await {
                Ok(answer) => answer.map_err(|_| gone())?,
                Err(_) => {
                    let mut err = LocalError::new(
                        REQUEST_TIMEOUT,
                        ErrorKind::Timeout,
                        format!(
                            "the server needs {} from the client to finish this request, and the client did not answer within {} (--request-timeout)",
                            request.method,
                            retry::human(self.request_timeout)
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
}

/// How long the next era probe waits after `failures` in a row: none after the first (a server
/// slow at a cold start is asked again at the next first request), then 1 s, doubling up to
/// [`MAX_PROBE_BACKOFF`] (a dead one is not asked at every line).
fn probe_backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1).saturating_mul(2u32.saturating_pow(n - 2)).min(MAX_PROBE_BACKOFF),
    }
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

    #[test]
    fn probes_back_off_from_none_to_a_minute_without_overflow() {
        assert_eq!(probe_backoff(1), Duration::ZERO);
        assert_eq!(probe_backoff(2), Duration::from_secs(1));
        assert_eq!(probe_backoff(4), Duration::from_secs(4));
        assert_eq!(probe_backoff(40), MAX_PROBE_BACKOFF);
        assert_eq!(probe_backoff(u32::MAX), MAX_PROBE_BACKOFF);
    }
}
