//! One exchange with the server for a client request: POSTed through the link until it is
//! answered, the reply read (JSON, or an event stream resumed after a break, T-23), each message
//! delivered, and every id left open answered with the error that explains why (issue 16.1).
//! The decision after an error status is a pure function ([`after_error`]), tested without HTTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use crate::cli::Transport;
use crate::envelope::{self, Envelope, ErrorKind, IdKey, LocalError, SHUTTING_DOWN};
use crate::retry;
use crate::upstream::headers::{MessageHeaders, SESSION_ID};
use crate::upstream::{MAX_ERROR_BODY_BYTES, jsonrpc_error, sse};

use super::core::{Core, bad_response, unreadable};
use super::ledger::Flags;
use super::link::OnWire;
use super::reply::{self, BodyError, Resumption, read_body};
use super::room::holding;
use super::streams::Streams;

/// What a client request (or batch) is, beside its bytes: for [`run_request`].
pub(super) struct Sending {
    pub(super) initialize: bool,
    pub(super) limit: Duration,
    /// The request, for people.
    pub(super) what: String,
    /// Its progress token's track (issue 24.4).
    pub(super) progress: Option<Arc<super::policy::progress::Track>>,
}

/// Sends one request (or batch) and sees that each of its ids is answered.
pub(super) async fn run_request(
    core: Arc<Core>,
    body: Bytes,
    headers: MessageHeaders,
    ids: Vec<(IdKey, oneshot::Receiver<()>)>,
    sending: Sending,
) {
    let Sending { initialize, limit, what, progress } = sending;
    let keys: Vec<IdKey> = ids.iter().map(|(k, _)| k.clone()).collect();
    // Issue 23.4: from here on the request may reach the server; before, shutdown can say it
    // was never sent.
    let on_wire = |on| core.ledger.sending(&keys, on);
    let attempt = Attempt {
        body: &body,
        initialize,
        limit,
        what: &what,
        on_wire: Some(&on_wire),
        progress: progress.as_ref(),
    };
    if let Err(err) = exchange(&core, attempt, &headers, ids).await {
        if let [key] = keys.as_slice()
            && let Some(answer) = stale_list(&core, &body, &err)
        {
            core.hand_over(key, answer, false, None).await;
            return;
        }
        for key in &keys {
            core.ledger.fail(key, &err).await;
        }
    }
}

/// Issue 24.5: a list the server cannot give now (rate-limited past `--max-wait`, unreachable)
/// is answered from the one kept, in any era (a stateless client has no handshake to answer
/// stale); its next listing asks the server again. `None` for anything else.
fn stale_list(core: &Core, body: &[u8], err: &LocalError) -> Option<Bytes> {
    if !err.passing() {
        return None;
    }
    core.policies.kept.as_ref()?;
    let env = Envelope::parse(body).ok()?;
    let answer = core.policies.stale(env.method.as_deref()?, env.id?, &env.params())?;
    info!("{}; answered from what was kept", err.message);
    Some(answer)
}

/// The HTTP exchange of a request. Returns once every id is answered, or with the error that
/// answers the ids still pending.
async fn exchange(
    core: &Arc<Core>,
    attempt: Attempt<'_>,
    headers: &MessageHeaders,
    ids: Vec<(IdKey, oneshot::Receiver<()>)>,
) -> Result<(), LocalError> {
    let Attempt { initialize, limit, .. } = attempt;
    if initialize {
        core.link.up.reset_session();
        if core.link.transport == Transport::Sse && !core.link.up.is_legacy() {
            Box::pin(Streams::start_legacy(core))
                .await
                .map_err(|reason| Streams::legacy_error(&core.link, &reason))?;
        }
    }
    let Some((response, deadline)) = post_until_answered(core, &attempt, headers, &ids).await? else {
        return Ok(()); // the ids were answered from the error response
    };
    let status = response.status();
    // The server answers again: if the GET stream had given up, it is worth another try.
    Streams::reopen_if_lost(core);
    if initialize {
        core.link.up.set_session_id(response.headers().get(&SESSION_ID).cloned());
    }
    let mut deadline = deadline;
    if core.link.up.is_legacy() {
        // HTTP+SSE: the POST only says "accepted"; the answer comes on the stream (T-61).
        drop(response);
    } else if reply::is_event_stream(response.headers()) {
        deadline = read_events(core, response, headers.is_modern(), &ids, deadline, &attempt).await?;
    } else {
        read_json(core, response, deadline, limit).await?;
    }
    if !core.ledger.any_open(&ids) {
        return Ok(());
    }
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT || core.link.up.is_legacy() {
        // Accepted without an answer: it will come on the GET stream (T-20).
        for (key, done) in ids {
            if core.ledger.is_open(&key) && timeout_at(deadline, done).await.is_err() {
                return Err(core.link.up.timeout_error(limit));
            }
        }
        return Ok(());
    }
    Err(bad_response(
        "the server ended its reply without answering this request; it may or may not have been processed"
            .into(),
    ))
}

/// POSTs the request until the server answers it with a success (and returns that), after
/// each error status trying what [`after_error`] names; `None` when the error status was
/// the answer and the ids were answered from it.
async fn post_until_answered(
    core: &Arc<Core>,
    attempt: &Attempt<'_>,
    headers: &MessageHeaders,
    ids: &[(IdKey, oneshot::Receiver<()>)],
) -> Result<Option<(reqwest::Response, Instant)>, LocalError> {
    let Attempt { body, initialize, limit, what, on_wire, progress } = *attempt;
    // Copied only when a relist changes the `Mcp-Param-*` headers.
    let mut headers = std::borrow::Cow::Borrowed(headers);
    let mut tried = Tried::default();
    loop {
        let send = core.link.send(body, &headers, initialize, limit, what, on_wire);
        let (response, sent_session, deadline) = match progress {
            // Issue 24.4: the client hears of each wait here (boxed: the hot path's future
            // would otherwise hold this one's room too).
            Some(track) => {
                let write = |note: Vec<u8>| core.ledger.write(note.into());
                Box::pin(super::policy::progress::while_held(track, send, write)).await?
            }
            None => send.await?,
        };
        let status = response.status();
        debug!(status = status.as_u16(), "POST answered");
        if status.is_success() {
            return Ok(Some((response, deadline)));
        }
        let resp_headers = response.headers().clone();
        let error_body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
        let legacy_possible =
            initialize && core.link.transport == Transport::Auto && !core.link.up.is_legacy();
        let mut next = after_error(status, &error_body, body, &headers, legacy_possible, &tried);
        if next == Next::Relist {
            tried.relisted = true;
            let params = &core.policies.params;
            if Box::pin(params.relist_tools(&core.link, body, limit, core.limits.max_message)).await {
                let env = Envelope::parse(body).map_err(|_| bad_response("unreadable request".into()))?;
                headers.to_mut().params = params.param_headers(&env.params());
                continue;
            }
            next = after_error(status, &error_body, body, &headers, legacy_possible, &tried);
        }
        match next {
            Next::SameVersion => {
                tried.version = true;
                debug!(what, "the server refused a version it lists as supported; sending the request again");
                continue;
            }
            Next::Legacy => match Box::pin(Streams::start_legacy(core)).await {
                Ok(()) => continue,
                Err(reason) => debug!("no HTTP+SSE fallback either: {reason}"),
            },
            Next::Relist | Next::Give => {}
        }
        Box::pin(answer_http_error(core, status, &resp_headers, &error_body, sent_session, ids)).await?;
        return Ok(None);
    }
}

/// Reads a reply stream (T-21), delivering each message, until every id is answered or the
/// stream ends; a broken stream of the handshake era is resumed with Last-Event-ID (T-23).
/// Returns the deadline, moved on by each progress notification (T-32).
async fn read_events(
    core: &Arc<Core>,
    response: reqwest::Response,
    modern: bool,
    ids: &[(IdKey, oneshot::Receiver<()>)],
    mut deadline: Instant,
    attempt: &Attempt<'_>,
) -> Result<Instant, LocalError> {
    let limit = attempt.limit;
    let mut events = sse::decode(response.bytes_stream(), core.limits.max_message);
    // Resumption state (T-23, T-24): the last event id and the server's `retry`.
    let mut resumption = Resumption::default();
    loop {
        let event = match timeout_at(deadline, events.next()).await {
            Err(_) => return Err(core.link.up.timeout_error(limit)),
            Ok(next @ (None | Some(Err(_)))) => {
                // The stream ended or broke before the answer. A legacy server that gave
                // event ids can replay it on a GET with Last-Event-ID; 2026-07-28 cannot.
                let broken = next.and_then(Result::err);
                let resumed = match resumption.next_try(modern) {
                    Some((id, wait)) => Box::pin(resume(core, &id, wait, deadline, attempt)).await?,
                    None => None,
                };
                match (resumed, broken) {
                    (Some(r), _) => {
                        events = sse::decode(r.bytes_stream(), core.limits.max_message);
                        continue;
                    }
                    (None, Some(e)) => return Err(core.stream_error(&e)),
                    (None, None) => return Ok(deadline),
                }
            }
            Ok(Some(Ok(event))) => event,
        };
        resumption.saw(&event);
        if !sse::is_message(&event) {
            continue;
        }
        let data = Bytes::from(event.data.unwrap_or_default());
        if core.deliver_body_from(data, ids.first().map(|(k, _)| k)).await {
            deadline = retry::deadline_after(limit);
        }
        if !core.ledger.any_open(ids) {
            return Ok(deadline);
        }
    }
}

/// Reads a JSON reply and delivers what it holds.
async fn read_json(
    core: &Arc<Core>,
    response: reqwest::Response,
    deadline: Instant,
    limit: Duration,
) -> Result<(), LocalError> {
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    let body = match read_body(response, core.limits.max_message, deadline).await {
        Ok(body) => body,
        Err(BodyError::Timeout) => return Err(core.link.up.timeout_error(limit)),
        Err(BodyError::TooLarge) => return Err(core.too_large()),
        Err(BodyError::Http(e)) => return Err(core.link.up.send_error(&e)),
    };
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        let content_type =
            content_type.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if !content_type.is_empty() && !content_type.contains("json") {
            return Err(bad_response(format!(
                "the server answered with {content_type}, not JSON or an event stream: check that the URL is the MCP endpoint"
            )));
        }
        core.deliver_body(body).await;
    }
    Ok(())
}

/// The GET that resumes a broken reply stream after `id` (T-23), after the server's `wait`
/// (issue 10.2: it counts against the request's deadline), through the gate; its unit goes
/// back with what the answer says, or as not sent when there is none (issue 21.5). The
/// response, if it opened a stream.
async fn resume(
    core: &Arc<Core>,
    id: &str,
    wait: Duration,
    deadline: Instant,
    attempt: &Attempt<'_>,
) -> Result<Option<reqwest::Response>, LocalError> {
    let what = attempt.what;
    debug!(what, last_event_id = %id, wait_ms = wait.as_millis() as u64, "resuming the reply stream");
    if timeout_at(deadline, tokio::time::sleep(wait)).await.is_err() {
        return Err(core.link.up.timeout_error(attempt.limit));
    }
    let admitted = core.link.admit(what, 0).await?;
    let resumed = timeout_at(deadline, core.link.up.get_stream(Some(id)).send()).await;
    match &resumed {
        Ok(Ok(r)) => core.link.answered(&admitted, r.headers()).await,
        _ => core.link.gate.answered(&admitted, None).await,
    }
    Ok(resumed.ok().and_then(Result::ok).filter(|r| r.status().is_success()))
}

/// Answers the pending ids of a request that got an HTTP error status: the server's own
/// JSON-RPC error where it sent one (T-40), else an error that explains the status.
async fn answer_http_error(
    core: &Arc<Core>,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    sent_session: bool,
    ids: &[(IdKey, oneshot::Receiver<()>)],
) -> Result<(), LocalError> {
    let own_message =
        matches!(status.as_u16(), 401 | 403) || (status == StatusCode::NOT_FOUND && sent_session);
    if !own_message
        && let [(key, _)] = ids
        && let Some((error, server_id)) = jsonrpc_error(body)
    {
        let Some(id) = core.ledger.id_of(key) else { return Ok(()) };
        // The server's answer as it sent it when it is a well-formed error response for
        // this id; else one made of its error object under the pending id (issue 21.1: a body
        // with `result` too, or a `method`, was dropped by `deliver` and left unanswered).
        let same_id = server_id.and_then(IdKey::new).as_ref() == Some(key);
        let mut message = if same_id && is_error_response(body) {
            body.to_vec()
        } else {
            envelope::error_with_id(&id, error)
        };
        // Unless it echoes a secret of ours (issue 10.9), redacted inside its strings only.
        if let Some(clean) = crate::secrets::redact_json_text(&String::from_utf8_lossy(&message)) {
            message = clean.into_bytes();
        }
        envelope::flatten_lines(&mut message);
        core.deliver(message.into()).await;
        if !core.ledger.is_open(key) {
            return Ok(());
        }
    }
    Err(core.link.up.status_error(status, headers, body, sent_session))
}

/// Sends a notification or a client response; nothing comes back to the client. Returns
/// whether the server accepted it.
pub(super) async fn send_one_way(
    core: Arc<Core>,
    body: Bytes,
    headers: MessageHeaders,
    what: String,
) -> bool {
    match core.link.send(&body, &headers, false, core.limits.request_timeout, &what, None).await {
        Err(err) => {
            core.ledger.report_with(&err, &format!("{what} was not delivered"));
            false
        }
        Ok((response, _, _)) if response.status().is_success() => {
            // Any body on a 2xx to a message without a request is ignored (T-04).
            debug!(status = response.status().as_u16(), what, "one-way message accepted");
            true
        }
        Ok((response, sent_session, _)) => {
            let status = response.status();
            let resp_headers = response.headers().clone();
            let deadline = retry::deadline_after(Duration::from_secs(5));
            let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
            let err = core.link.up.status_error(status, &resp_headers, &body, sent_session);
            core.ledger.report_with(&err, &format!("the server did not accept a {what}"));
            false
        }
    }
}

/// Issue 24.5: the lists answered from what was kept while the server's handshake was owed
/// are asked again, as the proxy's own requests; one that differs is announced to the client
/// when its answer is kept (`Core::deliver`).
pub(super) fn refresh_kept(core: &Arc<Core>) {
    let Some(kept) = core.policies.kept.as_ref() else { return };
    for method in kept.served() {
        let core = core.clone();
        core.clone().tasks.spawn(async move {
            let (_, id) = core.own_id();
            let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}});
            let limit = core.limits.request_timeout;
            if let Err(e) = call(&core, body.to_string().into(), true, false, limit, &method).await {
                debug!("{method} was not asked again: {}", e.message);
            }
        });
    }
}

/// Sends a request and returns the server's response instead of writing it to stdout.
/// `internal` requests are the proxy's own (shutdown does not answer them on stdout); the
/// client's `initialize` is sent this way under its own id, so that its answer can be read.
pub(super) async fn call(
    core: &Arc<Core>,
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
    let headers = core.policies.params.request_headers(method, &params);
    let modern = headers.is_modern();
    let flags = Flags { initialize, modern, internal, held: false };
    let hooks = core.policies.hooks(method, &params, modern);
    let progress = hooks.progress.clone();
    let (done, capture) = core.ledger.open_captured(raw_id, &key, flags, hooks)?;
    drop(env);
    // The client's own request stays in the table if this is dropped (a signal while it is
    // sent): shutdown answers it (every request read gets exactly one response).
    let _unregister = Unregister { core, key: internal.then(|| key.clone()) };
    let attempt =
        Attempt { body: &body, initialize, limit, what, on_wire: None, progress: progress.as_ref() };
    let sent = exchange(core, attempt, &headers, vec![(key.clone(), done)]).await;
    // Answered or not, the request is over: its caller answers the client from what this
    // returns, so its entry leaves now (no second answer at exit, and its id can be used
    // again, issue 20). An answer is delivered before the exchange returns, so a capture
    // still empty here will stay empty.
    core.ledger.forget(&key);
    sent?;
    capture.await.map_err(|_| {
        if core.shutting_down.load(Ordering::Relaxed) {
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
    core: &Core,
    key: &IdKey,
    room: Option<tokio::sync::OwnedSemaphorePermit>,
    task: F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = core.tasks.spawn(holding(room, task));
    core.ledger.set_abort(key, handle.abort_handle());
}

/// Removes a request's entry from the pending table when its sender stops caring (an abort).
struct Unregister<'a> {
    core: &'a Core,
    key: Option<IdKey>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.core.ledger.forget(&key);
        }
    }
}

/// What one exchange sends, the same at each try.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    body: &'a Bytes,
    initialize: bool,
    limit: Duration,
    what: &'a str,
    /// Told when the request goes out, and when it waits to go again (see [`OnWire`]).
    on_wire: OnWire<'a>,
    /// A request with a progress token: told of each wait (issue 24.4).
    progress: Option<&'a std::sync::Arc<super::policy::progress::Track>>,
}

/// The second tries an exchange has spent after error statuses.
#[derive(Default)]
struct Tried {
    relisted: bool,
    version: bool,
}

/// What comes after an error status.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// T-15: re-list the tools (their `x-mcp-header` schemas are stale), then send again.
    Relist,
    /// T-13: send again unchanged.
    SameVersion,
    /// T-60: try the 2024-11-05 HTTP+SSE transport.
    Legacy,
    /// The status is the answer.
    Give,
}

/// What to do after the error status `status` with `error_body`, for a request `body` sent with
/// `headers`: a pure function of what came back and what was tried already.
fn after_error(
    status: StatusCode,
    error_body: &[u8],
    body: &[u8],
    headers: &MessageHeaders,
    legacy_possible: bool,
    tried: &Tried,
) -> Next {
    let bad_request = status == StatusCode::BAD_REQUEST && headers.is_modern();
    // T-15: HeaderMismatch about Mcp-Param-* means our schemas are stale: re-list, retry once.
    if bad_request
        && !tried.relisted
        && jsonrpc_error(error_body).is_some_and(|(e, _)| e.get().contains("-32020"))
        && Envelope::parse(body).is_ok_and(|e| e.method.as_deref() == Some("tools/call"))
    {
        return Next::Relist;
    }
    // T-13: `-32022` listing the very version the request carries (a server mid-rollout, or one
    // that rejects a first request) was not processed: sent again once, unchanged.
    if bad_request
        && !tried.version
        && headers.protocol_version.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| {
            crate::era::response_error(error_body).is_some_and(|e| e.supported_modern().as_deref() == Some(v))
        })
    {
        return Next::SameVersion;
    }
    // T-60: a server that refuses the initialize POST with 400/404/405 and no JSON-RPC error
    // may speak only the 2024-11-05 HTTP+SSE transport: try its GET stream.
    if legacy_possible && matches!(status.as_u16(), 400 | 404 | 405) && jsonrpc_error(error_body).is_none() {
        return Next::Legacy;
    }
    Next::Give
}

/// Whether `body` is a JSON-RPC error response and nothing else (no `result`, no `method`).
fn is_error_response(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .ok()
        .and_then(crate::era::object_members)
        .is_some_and(|members| members.iter().all(|(k, _)| matches!(k.as_ref(), "jsonrpc" | "id" | "error")))
}

#[cfg(test)]
mod future_sizes {
    use super::*;
    use clap::Parser;

    /// The task of each request is copied whole at every spawn (and glibc copies blocks over a
    /// few KiB differently): cold paths (sign-in, session renewal, the HTTP+SSE fallback) are
    /// boxed so that the hot path's future stays small. Measured: 3.2 KiB (6.7 KiB before).
    #[tokio::test]
    async fn request_futures_stay_small() {
        const BUDGET: usize = 4096;
        let cli =
            crate::cli::Cli::try_parse_from(["mcp-sidecar", "http://127.0.0.1:1/mcp", "--auth", "none"])
                .unwrap();
        let config = crate::config::Config::from_cli(cli.args, &|_| None).unwrap();
        let (proxy, _out, _rx) = crate::build(&config).await.unwrap();
        let (body, headers) = (Bytes::from_static(b"{}"), MessageHeaders::default());
        let limit = Duration::from_secs(1);
        let sending = Sending { initialize: false, limit, what: String::new(), progress: None };
        let request = run_request(proxy.core.clone(), body.clone(), headers.clone(), Vec::new(), sending);
        assert!(
            std::mem::size_of_val(&request) <= BUDGET,
            "run_request: {}",
            std::mem::size_of_val(&request)
        );
        let one_way = send_one_way(proxy.core.clone(), body, headers, String::new());
        assert!(
            std::mem::size_of_val(&one_way) <= BUDGET,
            "send_one_way: {}",
            std::mem::size_of_val(&one_way)
        );
    }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use crate::proxy::reply::{MAX_RESUMPTIONS, MAX_SSE_RETRY};
    use reqwest::header::HeaderValue;

    fn modern(version: &str) -> MessageHeaders {
        MessageHeaders {
            protocol_version: Some(HeaderValue::from_str(version).unwrap()),
            ..Default::default()
        }
    }

    const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#;

    #[test]
    fn t15_a_header_mismatch_relists_once_then_gives_the_error() {
        let error =
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32020,"message":"Mcp-Param-Region mismatch"}}"#;
        let headers = modern("2026-07-28");
        let fresh = Tried::default();
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &headers, false, &fresh), Next::Relist);
        let relisted = Tried { relisted: true, ..Tried::default() };
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &headers, false, &relisted), Next::Give);
        // Not for the handshake era, and not for another status.
        let legacy = MessageHeaders::default();
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &legacy, false, &fresh), Next::Give);
        assert_eq!(after_error(StatusCode::FORBIDDEN, error, CALL, &headers, false, &fresh), Next::Give);
    }

    #[test]
    fn t13_the_same_version_listed_as_supported_is_sent_again_once() {
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"x","data":{"supported":["2026-07-28"]}}}"#;
        let fresh = Tried::default();
        let same = modern("2026-07-28");
        assert_eq!(
            after_error(StatusCode::BAD_REQUEST, error, CALL, &same, false, &fresh),
            Next::SameVersion
        );
        let tried = Tried { version: true, ..Tried::default() };
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &same, false, &tried), Next::Give);
        let other = modern("2027-01-01");
        assert_eq!(after_error(StatusCode::BAD_REQUEST, error, CALL, &other, false, &fresh), Next::Give);
    }

    #[test]
    fn t60_only_a_bare_refusal_of_initialize_tries_http_sse() {
        let fresh = Tried::default();
        let none = MessageHeaders::default();
        for status in [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED] {
            assert_eq!(after_error(status, b"Not Found", b"{}", &none, true, &fresh), Next::Legacy);
            assert_eq!(after_error(status, b"Not Found", b"{}", &none, false, &fresh), Next::Give);
        }
        let jsonrpc = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"x"}}"#;
        assert_eq!(after_error(StatusCode::BAD_REQUEST, jsonrpc, b"{}", &none, true, &fresh), Next::Give);
        assert_eq!(
            after_error(StatusCode::INTERNAL_SERVER_ERROR, b"", b"{}", &none, true, &fresh),
            Next::Give
        );
    }

    #[test]
    fn t23_a_reply_stream_is_resumed_at_most_three_times_with_a_bounded_wait() {
        let mut r = Resumption::default();
        assert_eq!(r.next_try(false), None, "no event id, nothing to resume after");
        r.last_id = Some("7".into());
        assert_eq!(r.next_try(true), None, "2026-07-28 has no resumption");
        r.retry = Some(Duration::from_millis(u64::MAX));
        for _ in 0..MAX_RESUMPTIONS {
            assert_eq!(r.next_try(false), Some(("7".into(), MAX_SSE_RETRY)));
        }
        assert_eq!(r.next_try(false), None);
    }
}
