//! Lines from the client on the same-era path: each parsed once, a request entered in the ledger
//! and sent by a task of its own (only `initialize` and `notifications/initialized` in line, S-11),
//! a notification or a client response sent one way, and what cannot be read answered at once.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::envelope::{
    Envelope, ErrorKind, INVALID_REQUEST, IdKey, Kind, LocalError, OVERLOADED, PARSE_ERROR,
};
use crate::upstream::headers::MessageHeaders;

use super::core::{Core, DISCOVER_TIMEOUT};
use super::ledger::Flags;
use super::policy::Step;
use super::room::{IN_FLIGHT_MESSAGES, holding};
use super::streams::Streams;

/// Handles one line as it is, with no bridge.
pub(super) async fn dispatch_plain(core: &Arc<Core>, line: Bytes) {
    if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return dispatch_batch(core, line).await;
    }
    let env = match Envelope::parse(&line) {
        Ok(env) => env,
        Err(e) => return reject_unparsable(core, &e).await,
    };
    match env.kind() {
        Ok(Kind::Request) => dispatch_request(core, env, &line).await,
        Ok(Kind::Notification) => dispatch_notification(core, env, &line).await,
        Ok(Kind::Response) => {
            // The client's answer to a server request (T-30).
            drop(env);
            let room = core.room.wait(line.len()).await;
            core.tasks.spawn(holding(
                room,
                super::exchange::send_one_way(
                    core.clone(),
                    line,
                    MessageHeaders::default(),
                    "response".into(),
                ),
            ));
        }
        Err(invalid) => {
            let id = env.id.filter(|id| IdKey::new(id).is_some());
            let err = LocalError::new(
                INVALID_REQUEST,
                ErrorKind::InvalidRequest,
                format!("invalid JSON-RPC message: {invalid}"),
            );
            core.ledger.refuse(id, &err).await;
        }
    }
}

/// A client request: answered from the list cache, refused for want of room, or entered in
/// the ledger and sent by a task of its own (`initialize` in line).
async fn dispatch_request(core: &Arc<Core>, env: Envelope<'_>, line: &Bytes) {
    let method = env.method.as_deref().unwrap_or_default();
    let params = env.params();
    let init = method == "initialize";
    // Issue 24.5: while the server's handshake is owed, the lists kept answer at once.
    if core.link.owes_handshake()
        && let Some(id) = env.id
        && let Some(answer) = core.policies.stale(method, id, &params)
    {
        return core.ledger.write(answer).await;
    }
    let (headers, hooks) = match core.policies.request(method, &params) {
        Step::Pass(headers, hooks) => (headers, hooks),
        Step::Answer(result) => {
            let Some(id) = env.id else { return };
            return core.ledger.write(crate::era::response_with_id(id, "result", &result).into()).await;
        }
        Step::Refuse(err) => return core.ledger.write(err.to_response(env.id).into()).await,
    };
    let Some(room) = core.room.now(line.len()) else {
        let mut err = LocalError::new(
            OVERLOADED,
            ErrorKind::Overloaded,
            format!(
                "too many requests are in flight: together they hold more than {} bytes ({IN_FLIGHT_MESSAGES} × --max-message-bytes), so this one was not sent: wait for answers before sending more",
                core.room.limit()
            ),
        );
        err.request_sent = Some(false);
        return core.ledger.refuse(env.id, &err).await;
    };
    let limit = if method == "server/discover" {
        core.limits.request_timeout.min(DISCOVER_TIMEOUT)
    } else {
        core.limits.request_timeout
    };
    let modern = headers.is_modern();
    let flags = Flags { initialize: init, modern, internal: false, held: true };
    let progress = hooks.progress.clone();
    let Some((key, id)) = core.ledger.open(&env, flags, hooks) else { return };
    if init {
        core.link.keep_init_line(line.clone());
    }
    let what = format!("{method} (id {})", env.id.map_or("?", RawValue::get));
    let ids = vec![(key.clone(), id)];
    let handle = core.tasks.spawn(holding(
        Some(room),
        super::exchange::run_request(
            core.clone(),
            line.clone(),
            headers,
            ids,
            super::exchange::Sending { initialize: init, limit, what, progress },
        ),
    ));
    if init {
        // In line: whatever the client sends next needs the session this creates
        // (a client must wait for the answer anyway, S-11; scripts may not).
        let _ = handle.await;
    } else {
        core.ledger.set_abort(&key, handle.abort_handle());
    }
}

/// A client notification: a cancel ends its request (T-25, J-08); the others are sent
/// (`notifications/initialized` in line, then the GET stream opens).
async fn dispatch_notification(core: &Arc<Core>, env: Envelope<'_>, line: &Bytes) {
    let method = env.method.as_deref().unwrap_or_default().to_owned();
    let params = env.params();
    if method == "notifications/cancelled" {
        let modern = params.request_id.and_then(IdKey::new).and_then(|k| core.ledger.cancel(&k));
        // In the 2026-07-28 era, closing the request's stream is the cancellation (T-25).
        if modern == Some(true) {
            return;
        }
    }
    let headers = MessageHeaders::derive(&method, &params);
    drop(env);
    if method == "notifications/initialized" && core.link.owes_handshake() {
        return; // the owed handshake sends its own (issue 24.5)
    }
    let room = core.room.wait(line.len()).await;
    if method == "notifications/initialized" {
        // In line: the server must see it before the requests that follow (S-11).
        if super::exchange::send_one_way(core.clone(), line.clone(), headers, method).await {
            Streams::open_get(core);
        }
    } else {
        core.tasks
            .spawn(holding(room, super::exchange::send_one_way(core.clone(), line.clone(), headers, method)));
    }
}

/// A 2025-03-26 batch (J-07): valid members go out in one POST, invalid ones are answered here
/// (the whole batch, where the session's revision has no batches: see [`batches_removed`]).
async fn dispatch_batch(core: &Arc<Core>, line: Bytes) {
    let members: Vec<&RawValue> = match serde_json::from_slice(&line) {
        Ok(m) => m,
        Err(e) => return reject_unparsable(core, &e).await,
    };
    if members.is_empty() {
        let err = LocalError::new(
            INVALID_REQUEST,
            ErrorKind::InvalidRequest,
            "invalid JSON-RPC message: empty batch",
        );
        return core.ledger.write(err.to_response(None).into()).await;
    }
    let refused = batches_removed(core);
    let mut valid: Vec<&str> = Vec::new();
    let mut ids = Vec::new();
    for member in &members {
        let env = Envelope::parse(member.get().as_bytes());
        match env.as_ref().map(|e| (e.kind(), e)) {
            Ok((Ok(kind), env)) if let Some(err) = &refused => {
                if kind == Kind::Request {
                    core.ledger.write(err.to_response(env.id).into()).await;
                }
            }
            Ok((Ok(kind), env)) => {
                if kind == Kind::Request {
                    let method = env.method.as_deref().unwrap_or_default();
                    if let Some(err) = core.policies.refusal(method, &env.params()) {
                        core.ledger.write(err.to_response(env.id).into()).await;
                        continue;
                    }
                    let hooks = core.policies.hooks(method, &env.params(), false);
                    match core.ledger.open(env, Flags::default(), hooks) {
                        Some(entry) => ids.push(entry),
                        None => continue,
                    }
                }
                valid.push(member.get());
            }
            Ok((Err(invalid), env)) => {
                let id = env.id.filter(|id| IdKey::new(id).is_some());
                invalid_member(core, id, &format!("invalid JSON-RPC message: {invalid}")).await;
            }
            Err(_) => invalid_member(core, None, "invalid JSON-RPC message in batch").await,
        }
    }
    if valid.is_empty() || refused.is_some() {
        return;
    }
    let body: Bytes =
        if valid.len() == members.len() { line.clone() } else { format!("[{}]", valid.join(",")).into() };
    drop(members);
    let room = core.room.wait(body.len()).await;
    if ids.is_empty() {
        core.tasks.spawn(holding(
            room,
            super::exchange::send_one_way(core.clone(), body, MessageHeaders::default(), "batch".into()),
        ));
    } else {
        let limit = core.limits.request_timeout;
        let what = format!("a batch of {}", valid.len());
        core.tasks.spawn(holding(
            room,
            super::exchange::run_request(
                core.clone(),
                body,
                MessageHeaders::default(),
                ids,
                super::exchange::Sending { initialize: false, limit, what, progress: None },
            ),
        ));
    }
}

/// Answers an invalid member of a batch (-32600).
async fn invalid_member(core: &Core, id: Option<&RawValue>, message: &str) {
    let err = LocalError::new(INVALID_REQUEST, ErrorKind::InvalidRequest, message);
    core.ledger.write(err.to_response(id).into()).await;
}

/// Issue 23.11: a batch to a server whose negotiated revision has none (they were removed in
/// 2025-06-18) went out and came back as "HTTP 415" for each request. Such a batch is answered
/// here, nothing sent: each request gets this error (said once in the log; notifications in
/// it are dropped with it), each invalid member its own.
fn batches_removed(core: &Core) -> Option<LocalError> {
    let version = core.link.up.session().version?;
    let version = version.to_str().ok().filter(|v| *v >= "2025-06-18")?;
    let mut err = LocalError::new(
        INVALID_REQUEST,
        ErrorKind::InvalidRequest,
        format!(
            "JSON-RPC batches were removed from MCP in 2025-06-18, and this session speaks {version}: send each message on a line of its own"
        ),
    );
    err.request_sent = Some(false);
    core.ledger.report(&err);
    Some(err)
}

/// Answers a line that is not JSON (-32700) or not an object (-32600), with id null (J-05).
async fn reject_unparsable(core: &Core, e: &serde_json::Error) {
    let err = if e.is_data() {
        LocalError::new(
            INVALID_REQUEST,
            ErrorKind::InvalidRequest,
            "invalid JSON-RPC message: expected a JSON object",
        )
    } else {
        LocalError::new(
            PARSE_ERROR,
            ErrorKind::Parse,
            format!("parse error: the line is not valid JSON ({e})"),
        )
    };
    core.ledger.refuse(None, &err).await;
}
