//! The era bridge the other way: a stateless-era client (per-request `_meta`, no handshake)
//! talking to a server of the handshake era only.
//!
//! The client's first stateless request settles it ([`settle_stateless_client`]): the
//! server's era comes from the state dir, or from the answer to the client's own
//! `server/discover` (else a probe of ours, T-62). For a handshake-only server the sidecar
//! performs `initialize` upstream with the client's capabilities and info (S-09), answers
//! `server/discover` from its result, and sends every request with the stateless `_meta` keys
//! taken out. The session, its renewal (T-12) and DELETE are the sidecar's business, as for any
//! client.
//!
//! A server request that arrives on a request's stream (sampling, elicitation, roots; T-30)
//! becomes an `input_required` result for that request (T-31): the upstream request stays open,
//! parked under the `requestState` the client is given, and the client's retry with
//! `inputResponses` sends the answers to the server and continues to wait for the answer, now
//! under the retry's id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::value::RawValue;
use tracing::{debug, info};

use crate::cli::ProtocolEra;
use crate::envelope::{Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError, OVERLOADED};
use crate::era::{self, Additions, Era, Verdict};
use crate::sync::Locked;
use crate::upstream::headers::MessageHeaders;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::core::{Core, DISCOVER_TIMEOUT, Inbound, bad_response, unreadable};
use super::exchange;
use super::ledger::Flags;
use super::policy::Hooks;
use super::probe::{self, Probe, reread};
use super::router;
use super::streams::Streams;

type CallTask = AbortOnDropHandle<Result<Bytes, LocalError>>;
type Room = tokio::sync::OwnedSemaphorePermit;

/// The most requests of a stateless client parked at once, waiting for its answers.
const MAX_PARKED: usize = 32;
/// The most server questions queued within one request before the client has seen them.
const MAX_QUESTIONS: usize = 16;

/// Forgets the way to the client's answers for an upstream request when its call ends.
struct ForgetAsks {
    reverse: Arc<Reverse>,
    upstream: IdKey,
}

impl Drop for ForgetAsks {
    fn drop(&mut self) {
        self.reverse.asks.locked().remove(&self.upstream);
    }
}

/// A request waiting for the client's retry with the answers the server asked for.
struct Parked {
    call: CallTask,
    asks: mpsc::Receiver<Bytes>,
    upstream: IdKey,
    /// The request's room in flight (issue 21.13): a parked call still holds an upstream
    /// stream, so it counts against `--max-message-bytes` × 4 until the retry takes over.
    _room: Option<Room>,
    /// Gives the request up if the client never comes back.
    _expiry: Option<AbortOnDropHandle<()>>,
}

/// The state of a bridge between a stateless-era client and a handshake-era server.
pub(super) struct Reverse {
    /// The `DiscoverResult` answered to the client, raw.
    discover: String,
    /// Server requests on the stream of each upstream request, by its (internal) id.
    asks: Mutex<HashMap<IdKey, mpsc::Sender<Bytes>>>,
    /// Requests waiting for the client's retry, by the `requestState` it was given.
    parked: Mutex<HashMap<String, Parked>>,
    /// The upstream id of each client request in flight, to cancel it upstream (J-08).
    upstream_of: Mutex<HashMap<IdKey, IdKey>>,
    next_state: AtomicU64,
    pub(super) bridged: AtomicU64,
    pub(super) rounds: AtomicU64,
}

/// Settles the eras at a client's first request that is not `initialize`. Returns whether
/// the request was handled (answered, or taken by the reverse bridge).
///
/// The client's own `server/discover` is forwarded and its answer decides: a
/// `DiscoverResult` or a stateless-era error means the server takes this client's era (it
/// is forwarded unchanged from then on); a refusal the handshake era gives (T-62) starts the
/// reverse bridge. Another first request is preceded by a probe of ours, unless the state
/// dir remembers the server. Nothing is settled while no answer proves an era.
pub(super) async fn settle_stateless_client(core: &Arc<Core>, line: &Bytes) -> (bool, Option<Arc<Reverse>>) {
    let Ok(env) = Envelope::parse(line) else { return (false, None) };
    let method = env.method.as_deref().unwrap_or_default().to_owned();
    let params = env.params();
    let meta_version = params.meta.as_ref().and_then(|m| m.protocol_version.as_deref());
    if era::client_era(&method, meta_version) != Some(Era::Stateless) {
        return (false, None);
    }
    let client_id = env.id.map(RawValue::to_owned);
    let meta_raw = env.params.and_then(|p| {
        era::object_members(p.get())?.into_iter().find(|(k, _)| k == "_meta").map(|(_, v)| v.to_owned())
    });
    drop(env);
    let known = match core.eras.setting {
        ProtocolEra::Modern => Some(Era::Stateless),
        ProtocolEra::Legacy => Some(Era::Handshake),
        ProtocolEra::Auto => core.eras.cached().await,
    };
    let found = match known {
        Some(found) => found,
        None if method == "server/discover" => {
            // The client's own probe is ours too: its answer decides.
            let limit = core.limits.request_timeout.min(DISCOVER_TIMEOUT);
            let answer = exchange::call(core, line.clone(), false, false, limit, "server/discover").await;
            let found = discover_verdict(&answer);
            if found != Some(Era::Handshake) {
                if let Some(found) = found {
                    learned(core, found).await;
                }
                core.ledger.answer_unopened(client_id.as_deref(), answer).await;
                return (true, None);
            }
            Era::Handshake
        }
        None => {
            let meta = era::ClientMeta::from_meta(meta_raw.as_deref(), era::FIRST_MODERN);
            match probe::probe_when_due(core, meta).await {
                Some(Probe::Stateless { .. }) => Era::Stateless,
                Some(Probe::Speaks(found)) => found,
                Some(Probe::Failed(_)) | None => return (false, None),
            }
        }
    };
    if found != Era::Handshake {
        if known.is_none() {
            learned(core, found).await;
        }
        core.eras.settle(found);
        return (false, None);
    }
    bridge_stateless_client(core, known.is_some(), client_id.as_deref(), meta_raw.as_deref(), line).await
}

/// Remembers what a stateless client's request taught: a refusal (the handshake era only),
/// or that the server takes the stateless era. Only a refusal of the handshake itself, seen
/// by `bridge::settle_era`, is remembered as the stateless era only.
async fn learned(core: &Core, found: Era) {
    let stored = if found == Era::Handshake { Era::Handshake } else { Era::Both };
    core.eras.remember(stored).await;
    core.eras.settle(found);
}

/// Starts the reverse bridge for a stateless client and hands it the first request.
async fn bridge_stateless_client(
    core: &Arc<Core>,
    remembered: bool,
    client_id: Option<&RawValue>,
    meta: Option<&RawValue>,
    line: &Bytes,
) -> (bool, Option<Arc<Reverse>>) {
    match start_reverse(core, meta).await {
        Ok(reverse) => {
            let _ = core.inbound.set(reverse.clone());
            if !remembered {
                core.eras.remember(Era::Handshake).await;
            }
            core.eras.settle(Era::Handshake);
            dispatch_reverse(core, &reverse, line.clone()).await;
            (true, Some(reverse))
        }
        // Remembered as handshake-era, but the handshake fails: the memory is stale (the
        // server moved on); forgotten, and the request forwarded as it came, so that a
        // stale memory cannot lock the client out.
        Err(err) if remembered && core.eras.setting == ProtocolEra::Auto => {
            debug!("the handshake for a stateless client failed ({}); forwarding as it is", err.message);
            core.eras.forget();
            (false, None)
        }
        Err(err) => {
            core.ledger.answer_unopened(client_id, Err(err)).await;
            (true, None)
        }
    }
}

/// Opens the handshake upstream for a stateless client: `initialize` with its capabilities
/// and info, `notifications/initialized`, the GET stream.
async fn start_reverse(core: &Arc<Core>, meta: Option<&RawValue>) -> Result<Arc<Reverse>, LocalError> {
    let client = era::ClientMeta::from_meta(meta, era::FIRST_MODERN);
    let info = client
        .info
        .clone()
        .unwrap_or_else(|| format!(r#"{{"name":"mcp-sidecar","version":"{}"}}"#, env!("CARGO_PKG_VERSION")));
    let (_, id) = core.own_id();
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":"initialize","params":{{"protocolVersion":"{}","capabilities":{},"clientInfo":{info}}}}}"#,
        serde_json::to_string(&id).unwrap_or_default(),
        era::LATEST_LEGACY,
        client.capabilities
    );
    let init = Bytes::from(init);
    core.link.keep_init_line(init.clone());
    let answer = exchange::call(
        core,
        init,
        true,
        true,
        core.limits.request_timeout,
        "initialize (for a stateless-era client)",
    )
    .await?;
    let result = Envelope::parse(&answer).ok().and_then(|e| match (e.result, e.error) {
        (Some(r), _) => Some(Ok(r.to_owned())),
        (None, Some(e)) => Some(Err(e.get().to_owned())),
        _ => None,
    });
    let result = match result {
        Some(Ok(result)) => result,
        Some(Err(error)) => {
            return Err(bad_response(format!(
                "the server refused the handshake mcp-sidecar made for this client: {error}"
            )));
        }
        None => return Err(bad_response("the server's answer to initialize cannot be read".into())),
    };
    let initialized = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    if exchange::send_one_way(
        core.clone(),
        initialized,
        MessageHeaders::default(),
        "notifications/initialized".into(),
    )
    .await
    {
        Streams::open_get(core);
    }
    info!("the server speaks only the handshake era; bridging this stateless-era client to it");
    Ok(Arc::new(Reverse {
        discover: era::discover_result(&result),
        asks: Mutex::new(HashMap::new()),
        parked: Mutex::new(HashMap::new()),
        upstream_of: Mutex::new(HashMap::new()),
        next_state: AtomicU64::new(0),
        bridged: AtomicU64::new(0),
        rounds: AtomicU64::new(0),
    }))
}

/// Handles one line from a stateless-era client while the reverse bridge is in use.
pub(super) async fn dispatch_reverse(core: &Arc<Core>, reverse: &Arc<Reverse>, line: Bytes) {
    let env = match Envelope::parse(&line) {
        Ok(env) => env,
        Err(_) => return router::dispatch_plain(core, line).await,
    };
    match env.kind() {
        Ok(Kind::Request) => {
            let method = env.method.as_deref().unwrap_or_default().to_owned();
            if method == "server/discover" {
                let id = env.id.map(RawValue::to_owned);
                drop(env);
                if let (Some(id), Ok(result)) = (id, RawValue::from_string(reverse.discover.clone())) {
                    core.ledger.write(era::response_with_id(&id, "result", &result).into()).await;
                }
                return;
            }
            let Some(room) = core.room.now(line.len()) else {
                drop(env);
                return router::dispatch_plain(core, line).await;
            };
            let Some((key, _)) = core.ledger.open(&env, Flags::default(), Hooks::default()) else { return };
            drop(env);
            let what = format!("{method} (bridged to the handshake era)");
            // The room goes with the request, into its parked entry if the server asks.
            exchange::spawn_request(
                core,
                &key,
                None,
                run_reverse(core.clone(), reverse.clone(), key.clone(), line, what, room),
            );
        }
        Ok(Kind::Notification) if env.method.as_deref() == Some("notifications/cancelled") => {
            let Some(key) = env.params().request_id.and_then(IdKey::new) else { return };
            drop(env);
            // A handshake-era server is told (closing a stream is no cancellation there, T-25).
            let upstream = reverse.upstream_of.locked().remove(&key);
            if core.ledger.cancel(&key).is_some()
                && let Some(upstream) = upstream
            {
                cancel_upstream(core, &upstream).await;
            }
        }
        _ => {
            drop(env);
            router::dispatch_plain(core, line).await;
        }
    }
}

async fn run_reverse(
    core: Arc<Core>,
    reverse: Arc<Reverse>,
    key: IdKey,
    line: Bytes,
    what: String,
    room: Room,
) {
    let outcome = reverse_request(&core, &reverse, &key, &line, &what, room).await;
    reverse.upstream_of.locked().remove(&key);
    match outcome {
        Ok(answer) => {
            core.ledger.settle(&key, answer, false, || {}).await;
        }
        Err(err) => core.ledger.fail(&key, &err).await,
    }
}

/// One request of a stateless client: a new one, or the retry of a parked one.
async fn reverse_request(
    core: &Arc<Core>,
    reverse: &Arc<Reverse>,
    key: &IdKey,
    line: &[u8],
    what: &str,
    room: Room,
) -> Result<Bytes, LocalError> {
    let (env, client_id) = reread(line)?;
    let method = env.method.as_deref().unwrap_or_default();
    let members = env.params.and_then(|p| era::object_members(p.get())).unwrap_or_default();
    let state = members.iter().find(|(k, _)| k == "requestState").map(|(_, v)| v.get().to_owned());
    let responses = members.iter().find(|(k, _)| k == "inputResponses").map(|(_, v)| *v);
    let parked = state.as_ref().and_then(|s| reverse.parked.locked().remove(s));
    let (call, mut asks, upstream) = match (parked, state) {
        (Some(parked), _) => {
            // The answers go to the server as responses to its requests (T-30).
            for (server_id, result) in
                responses.and_then(|r| era::object_members(r.get())).unwrap_or_default()
            {
                let Ok(id) = RawValue::from_string(server_id.into_owned()) else { continue };
                let body = Bytes::from(era::response_with_id(&id, "result", result));
                exchange::send_one_way(
                    core.clone(),
                    body,
                    MessageHeaders::default(),
                    "an answer to a server request".into(),
                )
                .await;
            }
            reverse.upstream_of.locked().insert(key.clone(), parked.upstream.clone());
            (parked.call, parked.asks, parked.upstream)
        }
        (None, Some(_)) => {
            return Err(LocalError::new(
                INVALID_REQUEST,
                ErrorKind::InvalidRequest,
                "this requestState is unknown or has expired: send the request again without it",
            ));
        }
        (None, None) => {
            reverse.bridged.fetch_add(1, Ordering::Relaxed);
            let (upstream, id) = core.own_id();
            let body = era::rewrite_request(method, env.params, &id, &Additions::default()).map_err(|e| {
                LocalError::new(INVALID_REQUEST, ErrorKind::InvalidRequest, format!("invalid params: {e}"))
            })?;
            let (tx, rx) = mpsc::channel(MAX_QUESTIONS);
            reverse.asks.locked().insert(upstream.clone(), tx);
            reverse.upstream_of.locked().insert(key.clone(), upstream.clone());
            let me = core.clone();
            let (what, limit) = (what.to_owned(), core.limits.request_timeout);
            // The way to the client's answers goes with the upstream call, however it ends
            // (answered, given up, cancelled: issue 21.13, an entry per cancelled request
            // stayed for ever).
            let forget = ForgetAsks { reverse: reverse.clone(), upstream: upstream.clone() };
            let call = AbortOnDropHandle::new(tokio::spawn(async move {
                let _forget = forget;
                exchange::call(&me, body.into(), true, false, limit, &what).await
            }));
            (call, rx, upstream)
        }
    };
    let mut call = call;
    tokio::select! {
        answer = &mut call => {
            let answer = answer.map_err(|_| bad_response("the request was given up".into()))??;
            stateless_answer(method, client_id, &answer)
        }
        Some(first) = asks.recv() => {
            // The server asks the client something: an input_required round (T-31).
            let mut questions = vec![first];
            while let Ok(more) = asks.try_recv() {
                questions.push(more);
            }
            let parked = Parked { call, asks, upstream, _room: Some(room), _expiry: None };
            park(core, reverse, client_id, &questions, parked).await
        }
    }
}

/// Parks a request whose server asked the client something, and answers the client with
/// the `input_required` result that stands for the questions; unless too many requests
/// already wait for this client (issue 21.13: each holds an upstream stream and a task), when
/// the request is given up and the server told. The count and the insertion are one step.
async fn park(
    core: &Arc<Core>,
    reverse: &Arc<Reverse>,
    client_id: &RawValue,
    questions: &[Bytes],
    mut parked: Parked,
) -> Result<Bytes, LocalError> {
    let n = reverse.next_state.fetch_add(1, Ordering::Relaxed);
    let token =
        serde_json::to_string(&format!("mcp-sidecar-state-{n}-{}", fastrand::u64(..))).unwrap_or_default();
    let result = era::input_required_result(questions, &token);
    let upstream = parked.upstream.clone();
    parked._expiry = Some({
        let (reverse, token, me) = (reverse.clone(), token.clone(), core.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            // As long as any request may take (`--request-timeout`).
            tokio::time::sleep(me.limits.request_timeout).await;
            let parked = reverse.parked.locked().remove(&token);
            if let Some(parked) = parked {
                debug!("a parked request was given up: the client did not come back with the answers");
                cancel_upstream(&me, &parked.upstream).await;
            }
        }))
    });
    let refused = {
        let mut all = reverse.parked.locked();
        if all.len() >= MAX_PARKED {
            Some(parked)
        } else {
            all.insert(token, parked);
            None
        }
    };
    if let Some(parked) = refused {
        drop(parked);
        cancel_upstream(core, &upstream).await;
        let mut err = LocalError::new(
            OVERLOADED,
            ErrorKind::Overloaded,
            format!(
                "{MAX_PARKED} requests already wait for this client's answers to the server's questions: answer those first"
            ),
        );
        err.request_sent = Some(true);
        return Err(err);
    }
    reverse.rounds.fetch_add(1, Ordering::Relaxed);
    let result = RawValue::from_string(result).map_err(|_| unreadable())?;
    Ok(era::response_with_id(client_id, "result", &result).into())
}

/// Tells a handshake-era server that a request of ours is cancelled (J-08).
async fn cancel_upstream(core: &Arc<Core>, upstream: &IdKey) {
    let IdKey::Str(id) = upstream else { return };
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":"given up by mcp-sidecar"}}}}"#,
        serde_json::to_string(id).unwrap_or_default()
    );
    exchange::send_one_way(
        core.clone(),
        body.into(),
        MessageHeaders::default(),
        "notifications/cancelled".into(),
    )
    .await;
}

impl Reverse {
    /// What the bridge did, for people.
    pub(super) fn summary(&self) -> String {
        format!(
            "{} requests of a stateless-era client bridged to the handshake-era server, {} input rounds",
            self.bridged.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed)
        )
    }
}

impl Inbound for Reverse {
    fn takes_requests(&self) -> bool {
        true
    }

    /// A server request while the reverse bridge is in use: a ping is answered here; one on a
    /// request's stream becomes that request's `input_required` round; any other cannot reach a
    /// stateless client and is refused.
    fn request(&self, core: &Arc<Core>, owner: Option<&IdKey>, bytes: &Bytes) {
        let reverse = self;
        let Ok(env) = Envelope::parse(bytes) else { return };
        let (Some(id), method) = (env.id, env.method.as_deref().unwrap_or_default()) else { return };
        let refusal = |code: i64, message: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":"{message}"}}}}"#,
                id.get()
            )
        };
        let answer = if method == "ping" {
            format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id.get())
        } else if let Some(tx) = owner.and_then(|o| reverse.asks.locked().get(o).cloned()) {
            match tx.try_send(bytes.clone()) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    refusal(-32603, "too many questions at once within one request")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    refusal(-32603, "the request this belongs to has ended")
                }
            }
        } else {
            refusal(-32601, "the client speaks the stateless MCP era and can only be asked within a request")
        };
        core.tasks.spawn(exchange::send_one_way(
            core.clone(),
            answer.into(),
            MessageHeaders::default(),
            "an answer to a server request".into(),
        ));
    }
}

/// The server's answer to a bridged request, under the client's id, as a valid answer of the
/// client's era (issue 20: the Python SDK refuses a `CallToolResult` without `resultType`).
fn stateless_answer(method: &str, client_id: &RawValue, answer: &[u8]) -> Result<Bytes, LocalError> {
    let reply = Envelope::parse(answer).map_err(|_| unreadable())?;
    match (reply.result, reply.error) {
        (Some(result), _) => {
            match era::stateless_result(method, result).and_then(|r| RawValue::from_string(r).ok()) {
                Some(result) => Ok(era::response_with_id(client_id, "result", &result).into()),
                None => Ok(era::response_with_id(client_id, "result", result).into()),
            }
        }
        (None, Some(error)) => Ok(era::response_with_id(client_id, "error", error).into()),
        _ => Err(unreadable()),
    }
}

/// What the answer to a stateless client's own `server/discover` proves, if anything: a
/// `DiscoverResult` or a stateless-era error (`-32022`) that the server takes that era; another
/// JSON-RPC error or a 4xx, that it does not (T-62, S-09); a server's internal error, a timeout
/// or an unreachable server, nothing.
fn discover_verdict(answer: &Result<Bytes, LocalError>) -> Option<Era> {
    match answer {
        Ok(bytes) => match era::probe_verdict(bytes) {
            Verdict::Stateless(_) | Verdict::RetryWith(_) => Some(Era::Stateless),
            Verdict::Both => Some(Era::Both),
            Verdict::Handshake
                if era::response_error(bytes).is_some_and(|e| e.code == era::INTERNAL_ERROR) =>
            {
                None
            }
            Verdict::Handshake => Some(Era::Handshake),
        },
        Err(e) if is_unknown_method(e) => Some(Era::Handshake),
        Err(_) => None,
    }
}

/// Whether a failed probe means the server does not know the method (an old server).
fn is_unknown_method(e: &LocalError) -> bool {
    e.http_status.is_some_and(|s| (400..500).contains(&s) && !matches!(s, 401 | 403 | 429))
}
