//! mcp-sidecar: a stdio MCP server that forwards every message to a remote MCP server over HTTP.
//!
//! # Layout
//!
//! One message travels left to right once:
//!
//! ```text
//! stdin ─► stdio::LineReader ─► envelope::Envelope ─► proxy::Proxy ─► upstream::Upstream ─► HTTP
//!                                                          │
//! stdout ◄─ stdio::write_lines ◄─ stdio::Outbox ◄──────────┘ (answers, server messages, local errors)
//! ```
//!
//! - [`cli`] and [`config`]: flags, then one validated [`config::Config`] (keys from the environment).
//! - [`stdio`]: bounded line framing on stdin; the single task that owns stdout.
//! - [`envelope`]: the borrowed JSON-RPC envelope; the proxy's own error responses.
//! - [`proxy`]: the pending-request table, one task per request, exactly one answer each; the era
//!   bridge between a handshake-era client and a stateless server, and the other way.
//! - [`era`]: which protocol era a message or a server speaks; the rewrites between them.
//! - [`upstream`]: the HTTP client (Streamable HTTP), SSE decoding, MCP header derivation.
//! - [`auth`]: OAuth 2.1 sign-in (discovery, PKCE, the loopback callback, refresh, token store).
//! - [`retry`] and [`ratelimit`]: how long the server asks us to wait; the per-origin gate that
//!   makes every request (and every sidecar with the same key) wait for it.
//! - [`secrets`]: every secret the process holds, redacted from whatever a server echoes back.
//! - [`platform`]: what differs between operating systems (signals, the parent-process watch).
//!
//! [`run`] ties them together; `main.rs` only parses flags, sets up logging and calls it.

#![deny(clippy::print_stdout)]

pub mod auth;
pub mod cli;
pub mod client;
pub mod clientcert;
pub mod commands;
pub mod config;
pub mod envelope;
pub mod era;
pub mod keycmd;
pub mod keyfile;
pub mod logfile;
pub mod net;
pub mod platform;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod secrets;
pub mod stable_id;
pub mod statedir;
pub mod stdio;
mod sync;
pub mod upstream;

use std::future::Future;

use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, error};

use config::Config;
use proxy::Proxy;
use stdio::{LineReader, Outbox};
use upstream::Upstream;

/// Why a run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP client could not be set up.
    /// (reqwest says only "builder error"; the cause is in its sources.)
    #[error("could not set up the HTTP client: {}", net::error_chain(.0))]
    Client(#[source] reqwest::Error),
    /// The sign-in state could not be loaded.
    #[error("{0}")]
    Auth(#[source] auth::AuthError),
    /// Reading stdin failed.
    #[error("reading stdin failed: {0}")]
    Stdin(#[source] std::io::Error),
    /// The client's `initialize` was answered only with errors: no MCP session started (the
    /// reason went to the client and, once, to stderr).
    #[error("no MCP session started: the client's initialize failed")]
    Handshake,
}

/// Why the read loop stopped.
#[derive(Debug)]
enum Stop {
    Eof,
    Signal,
    StdoutClosed,
    ParentGone,
    ReadError(std::io::Error),
}

/// How many lines stdin is read ahead while a dispatch waits (issue 21.1).
const READ_AHEAD: usize = 64;
/// The least time the last lines have to reach a client at exit.
const FINAL_FLUSH_MIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The proxy for `config`, the outbox it writes to, and the receiving end of that outbox.
pub(crate) async fn build(
    config: &Config,
) -> Result<(std::sync::Arc<Proxy>, Outbox, stdio::Inbox), RunError> {
    config.remember_secrets();
    let oauth = match &config.oauth {
        Some(settings) => Some(std::sync::Arc::new(
            auth::OAuth::open(config, settings.clone()).await.map_err(RunError::Auth)?,
        )),
        None => None,
    };
    let up = Upstream::new(config, oauth).map_err(RunError::Client)?;
    let (outbox, rx) = Outbox::new(config.max_message_bytes.saturating_mul(stdio::OUTBOX_MESSAGES));
    let key_id = config.api_key.as_ref().map(|k| k.secret.expose_secret().to_owned()).unwrap_or_default();
    let gate = ratelimit::Gate::with_store(
        &config.url.origin().ascii_serialization(),
        &key_id,
        config.state_dir.as_deref(),
        config.rate_limits.clone(),
        config.rate_limit_store.as_ref(),
    );
    drop(key_id);
    let proxy = Proxy::new(up, outbox.clone(), gate, config);
    Ok((proxy, outbox, rx))
}

/// Reads stdin and dispatches each message until the input ends, `shutdown` resolves, stdout
/// closes or the parent goes; says which, and since when (stdin's end may be seen while a
/// dispatch waits: the time it had since counts in shutdown's 2 s, issue 23.4).
async fn serve<R: AsyncRead + Unpin>(
    proxy: &std::sync::Arc<Proxy>,
    reader: &mut LineReader<R>,
    outbox: &Outbox,
    shutdown: impl Future<Output = ()>,
) -> (Stop, tokio::time::Instant) {
    tokio::pin!(shutdown);
    let parent = platform::parent_gone();
    tokio::pin!(parent);
    // Lines read while a dispatch waits, and whether stdin has ended.
    let mut backlog = std::collections::VecDeque::new();
    let mut ended: Option<Stop> = None;
    let mut drain_until = None;
    let stop = 'run: loop {
        let frame = match backlog.pop_front() {
            Some(frame) => frame,
            None => match ended.take() {
                Some(stop) => break stop,
                None => tokio::select! {
                    biased;
                    _ = &mut shutdown => break Stop::Signal,
                    _ = outbox.closed() => break Stop::StdoutClosed,
                    _ = &mut parent => break Stop::ParentGone,
                    frame = reader.next_frame() => match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break Stop::Eof,
                        Err(e) => break Stop::ReadError(e),
                    },
                },
            },
        };
        // Dispatch may wait (initialize is sent in line, stdout may be full): a signal, a
        // closed stdout or a vanished parent must still end the run at once, and stdin is still
        // read, a few lines ahead, so that its end is seen (issue 21.1): from then on the
        // dispatch has what every request in flight at the end has, [`proxy::DRAIN_TIMEOUT`]; a
        // request it did not answer by then is answered at shutdown, and the lines read ahead
        // are dispatched in the same time.
        let dispatch = proxy.dispatch(frame);
        tokio::pin!(dispatch);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break 'run Stop::Signal,
                _ = outbox.closed() => break 'run Stop::StdoutClosed,
                _ = &mut parent => break 'run Stop::ParentGone,
                _ = &mut dispatch => break,
                _ = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)),
                    if drain_until.is_some() => break,
                frame = reader.next_frame(), if ended.is_none() && backlog.len() < READ_AHEAD => {
                    match frame {
                        Ok(Some(frame)) => backlog.push_back(frame),
                        Ok(None) => ended = Some(Stop::Eof),
                        Err(e) => ended = Some(Stop::ReadError(e)),
                    }
                    if ended.is_some() && drain_until.is_none() {
                        drain_until = Some(retry::deadline_after(proxy::DRAIN_TIMEOUT));
                    }
                }
            }
        }
    };
    let now = tokio::time::Instant::now();
    (stop, drain_until.map_or(now, |d| d.checked_sub(proxy::DRAIN_TIMEOUT).unwrap_or(now)))
}

/// Runs the proxy: reads messages from `input`, forwards them, writes answers to `output`, until
/// `input` ends, `shutdown` resolves, or `output` closes. Shuts down in order either way.
pub async fn run<R, W, F>(config: Config, input: R, output: W, shutdown: F) -> Result<(), RunError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let (proxy, outbox, rx) = build(&config).await?;
    let (finish, finished) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(stdio::write_lines(rx, output, finished));
    let mut reader = LineReader::new(input, config.max_message_bytes);

    let (stop, since) = serve(&proxy, &mut reader, &outbox, shutdown).await;
    debug!(?stop, "no more input");
    if matches!(stop, Stop::ParentGone) {
        tracing::info!("the client that started mcp-sidecar has exited; shutting down");
    }
    proxy.shutdown(!matches!(stop, Stop::StdoutClosed | Stop::ParentGone), since).await;
    drop(outbox);
    let _ = finish.send(());
    // What is queued still goes out, unless the client has stopped reading: then mcp-sidecar
    // exits anyway rather than wait forever on a full pipe (within the shutdown's 2 s, with a
    // moment for the last lines however late they were queued).
    let flush_until = since
        .checked_add(proxy::SHUTDOWN_BUDGET)
        .unwrap_or(since)
        .max(retry::deadline_after(FINAL_FLUSH_MIN));
    match tokio::time::timeout_at(flush_until, writer).await {
        Ok(Ok(Err(e))) if e.kind() != std::io::ErrorKind::BrokenPipe => error!("writing stdout failed: {e}"),
        Err(_) => debug!("the client reads stdout no more; exiting with lines unwritten"),
        _ => {}
    }
    match stop {
        Stop::ReadError(e) => Err(RunError::Stdin(e)),
        _ if proxy.handshake_failed() => Err(RunError::Handshake),
        _ => Ok(()),
    }
}
