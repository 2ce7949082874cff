//! The remote side: one HTTP client, the session state it carries, and what its failures mean.
//!
//! [`Upstream`] builds every HTTP request the proxy sends (POST per message, the GET stream, the
//! closing DELETE) with the credential, the extra headers and the session headers, and turns
//! transport failures and HTTP error statuses into [`LocalError`]s that say what happened and
//! what to do. It never writes to stdout and never decides what to do with a message; that is
//! [`crate::proxy`]'s job. Credentials stay on the origin: redirects are followed only when they
//! are 307/308 to the same scheme, host and port (T-52; reqwest's own policy would carry a custom
//! `X-API-Key` to another host).

pub mod cookies;
pub mod headers;
pub mod sse;

use std::error::Error as _;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::value::RawValue;
use url::Url;

use crate::config::{ApiKey, Config};
use crate::envelope::{AUTH_ERROR, ErrorKind, LocalError, REQUEST_TIMEOUT, UPSTREAM_ERROR};
use crate::net::{cut, error_chain, redact_url, server_message};
use crate::sync::Locked;
use headers::MessageHeaders;

/// How many same-origin 307/308 redirects are followed.
const MAX_REDIRECTS: usize = 5;
/// How much of an error body is read to explain an HTTP error.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
static ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
static ACCEPT_SSE: HeaderValue = HeaderValue::from_static("text/event-stream");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static LAST_EVENT_ID: reqwest::header::HeaderName = reqwest::header::HeaderName::from_static("last-event-id");

/// Session state learned from the server: the session id (T-10) and the negotiated version (T-13).
#[derive(Debug, Default, Clone)]
pub struct Session {
    /// `Mcp-Session-Id`, echoed on every request after `initialize`.
    pub id: Option<HeaderValue>,
    /// `result.protocolVersion` of `initialize`, sent as `MCP-Protocol-Version`.
    pub version: Option<HeaderValue>,
}

/// The HTTP client for one MCP endpoint.
pub struct Upstream {
    client: reqwest::Client,
    url: Url,
    /// The URL as it may appear in logs and messages.
    shown_url: String,
    /// What to say when the URL is not an MCP endpoint (issue 23.6).
    endpoint_hint: String,
    api_key: Option<ApiKey>,
    /// OAuth sign-in, when the credential is an OAuth token (issue 5).
    oauth: Option<std::sync::Arc<crate::auth::OAuth>>,
    extra: HeaderMap,
    session: RwLock<Session>,
    /// The POST endpoint the 2024-11-05 HTTP+SSE transport announced (T-61); `None` for
    /// Streamable HTTP, where messages go to the URL itself.
    endpoint: RwLock<Option<Url>>,
    /// Issue 25.6: the origin's cookies (sticky sessions), and the `Cookie` header they make.
    jar: std::sync::Mutex<cookies::Jar>,
    cookie: RwLock<Option<HeaderValue>>,
    has_cookie: std::sync::atomic::AtomicBool,
    /// Issue 25.2: the key header value `--api-key-command` printed after a 401, and how many
    /// times it changed (0: the one read at start).
    rotated: RwLock<Option<HeaderValue>>,
    key_generation: std::sync::atomic::AtomicU64,
    /// Issue 25.3: the client certificate, for what a refused handshake means.
    client_cert: Option<std::sync::Arc<crate::clientcert::ClientCert>>,
}

impl Upstream {
    /// Builds the client. Fails only if the TLS backend cannot be initialized.
    pub fn new(
        config: &Config,
        oauth: Option<std::sync::Arc<crate::auth::OAuth>>,
    ) -> Result<Self, reqwest::Error> {
        // Issue 21.10: with a DPoP-bound token each request carries a proof naming its URL; the
        // same proof sent to the redirect's target is refused (and wasted two refreshes), so
        // no redirect is followed then, and the error says which URL to use.
        let bound = oauth.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let same_origin =
                attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
            let status = attempt.status();
            if attempt.previous().len() > MAX_REDIRECTS || bound.as_ref().is_some_and(|o| o.dpop_bound()) {
                attempt.stop()
            } else if same_origin
                && matches!(status, StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT)
            {
                attempt.follow()
            } else {
                // Surface the 3xx: the user decides whether to trust the new location.
                attempt.stop()
            }
        });
        let mut builder = direct_to_loopback(reqwest::Client::builder(), &config.url);
        if config.url.scheme() == "http" {
            // No TLS can happen (a redirect to https is another origin, never followed): do not
            // load the system's CA store, which costs a file read per certificate at startup.
            builder = builder.tls_certs_only(Vec::new());
        }
        if let Some(cert) = &config.client_cert {
            builder = builder.identity(cert.identity()?);
        }
        let client = builder
            .redirect(policy)
            .connect_timeout(config.connect_timeout)
            // A connection a NAT or proxy dropped silently is found by keepalive probes within
            // about 30 s + 3 × 15 s, so no stream waits on a dead peer for long.
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_keepalive_interval(Duration::from_secs(15))
            .tcp_keepalive_retries(3u32)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("mcp-sidecar/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(config.ca_certs.iter().cloned())
            .build()?;
        Ok(Upstream {
            client,
            shown_url: redact_url(&config.url),
            endpoint_hint: endpoint_hint(&config.url, config.preset_path),
            url: config.url.clone(),
            api_key: config.api_key.clone(),
            oauth,
            extra: config.headers.clone(),
            session: RwLock::new(Session::default()),
            endpoint: RwLock::new(None),
            jar: std::sync::Mutex::new(cookies::Jar::default()),
            cookie: RwLock::new(None),
            has_cookie: std::sync::atomic::AtomicBool::new(false),
            rotated: RwLock::new(None),
            key_generation: std::sync::atomic::AtomicU64::new(0),
            client_cert: config.client_cert.clone(),
        })
    }

    /// The server's host, for messages.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("the server")
    }

    /// The endpoint, fit for messages.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// A copy of the session state.
    pub fn session(&self) -> Session {
        self.session.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Forgets the session: a new `initialize` starts a new one, without a session id (T-12),
    /// and without the old one's cookies.
    pub fn reset_session(&self) {
        if let Ok(mut s) = self.session.write() {
            *s = Session::default();
        }
        self.drop_cookies();
    }

    /// Issue 25.6: keeps the cookies a response of the server sets (only what carries
    /// `Set-Cookie` costs more than one lookup).
    pub fn take_cookies(&self, headers: &HeaderMap) {
        if !headers.contains_key(reqwest::header::SET_COOKIE) {
            return;
        }
        let mut jar = self.jar.locked();
        if !jar.take(headers, self.url.scheme() == "https", std::time::SystemTime::now()) {
            return;
        }
        for (i, value) in jar.values().enumerate() {
            crate::secrets::remember_as(crate::secrets::Slot::Cookie(i as u8), value);
        }
        let header = jar.header();
        drop(jar);
        self.has_cookie.store(header.is_some(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut c) = self.cookie.write() {
            *c = header;
        }
    }

    /// Forgets the cookies (the session they pinned is over).
    pub fn drop_cookies(&self) {
        if !self.has_cookie.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        *self.jar.locked() = cookies::Jar::default();
        if let Ok(mut c) = self.cookie.write() {
            *c = None;
        }
    }

    /// Records the session id from the `initialize` response (T-10).
    pub fn set_session_id(&self, id: Option<HeaderValue>) {
        if let Ok(mut s) = self.session.write() {
            s.id = id.map(|mut v| {
                v.set_sensitive(true);
                v
            });
        }
    }

    /// Records the negotiated protocol version (T-13).
    pub fn set_protocol_version(&self, version: &str) {
        if let Ok(mut s) = self.session.write() {
            s.version = HeaderValue::from_str(version).ok();
        }
    }

    /// A request with the credential and extra headers. POSTs go to the HTTP+SSE endpoint when
    /// one was announced.
    fn request(&self, method: Method) -> RequestBuilder {
        let url = match (&method, self.endpoint.read().ok().and_then(|e| e.clone())) {
            (&Method::POST, Some(endpoint)) => endpoint,
            _ => self.url.clone(),
        };
        let proof = self.oauth.as_ref().and_then(|o| o.proof(&method, &url));
        let mut req = self.client.request(method, url).headers(self.extra.clone());
        if let Some((name, value)) = self.key_header() {
            req = req.header(name, value);
        }
        if let Some(token) = self.oauth.as_ref().and_then(|o| o.header()) {
            req = req.header(AUTHORIZATION, token);
        }
        // Issue 14: a DPoP-bound token goes with a fresh proof of this request (RFC 9449 §7.1).
        if let Some(proof) = proof {
            req = req.header(crate::net::DPOP.clone(), proof);
        }
        if self.has_cookie.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(cookie) = self.cookie.read().ok().and_then(|c| c.clone())
        {
            req = req.header(reqwest::header::COOKIE, cookie);
        }
        req
    }

    /// The API key's header and value: the one read at start, or the one its command printed
    /// after a 401 (issue 25.2).
    fn key_header(&self) -> Option<(reqwest::header::HeaderName, HeaderValue)> {
        let key = self.api_key.as_ref()?;
        if self.key_generation.load(std::sync::atomic::Ordering::Relaxed) > 0
            && let Some(value) = self.rotated.read().ok().and_then(|v| v.clone())
        {
            return Some((key.header.clone(), value));
        }
        Some((key.header.clone(), key.value.clone()))
    }

    /// Issue 25.2: `--api-key-command`'s argv, when that is where the key comes from.
    pub fn key_command(&self) -> Option<&[String]> {
        self.api_key.as_ref()?.command.as_deref()
    }

    /// How many times the key changed (a request sent with one generation and refused need not
    /// run the command again once another request has).
    pub fn key_generation(&self) -> u64 {
        self.key_generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Issue 25.2: uses `secret` as the key from now on, in the header style of the one read at
    /// start; returns whether it differs from the key in use.
    pub fn rotate_key(&self, secret: &secrecy::SecretString) -> bool {
        use secrecy::ExposeSecret;
        let Some(key) = &self.api_key else { return false };
        let Some((_, current)) = self.key_header() else { return false };
        let first = key.value.to_str().unwrap_or_default();
        let prefix = first.strip_suffix(key.secret.expose_secret()).unwrap_or_default();
        let Ok(mut value) = HeaderValue::from_str(&format!("{prefix}{}", secret.expose_secret())) else {
            return false;
        };
        if value == current {
            return false;
        }
        value.set_sensitive(true);
        crate::secrets::remember(secret.expose_secret());
        if let Ok(mut r) = self.rotated.write() {
            *r = Some(value);
        }
        self.key_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// The OAuth sign-in, when that is the credential.
    pub fn oauth(&self) -> Option<&std::sync::Arc<crate::auth::OAuth>> {
        self.oauth.as_ref()
    }

    /// The session headers every request after `initialize` carries (T-11, T-13).
    fn with_session(&self, mut req: RequestBuilder, session: &Session, version: bool) -> RequestBuilder {
        if let Some(id) = &session.id {
            req = req.header(&headers::SESSION_ID, id.clone());
        }
        if version && let Some(v) = &session.version {
            req = req.header(&headers::PROTOCOL_VERSION, v.clone());
        }
        req
    }

    /// The POST for one message (T-01, T-02). `session` is `None` for `initialize`, which must
    /// not carry the old session's id; returns whether a session id was sent.
    pub fn post(
        &self,
        body: Bytes,
        derived: &MessageHeaders,
        session: Option<&Session>,
    ) -> (RequestBuilder, bool) {
        let mut req = self
            .request(Method::POST)
            .header(ACCEPT, ACCEPT_BOTH.clone())
            .header(CONTENT_TYPE, JSON.clone())
            .body(body);
        let mut sent_session = false;
        if let Some(session) = session {
            // A 2026-07-28 request names its own version; legacy ones use the negotiated one.
            req = self.with_session(req, session, derived.protocol_version.is_none());
            sent_session = session.id.is_some();
        }
        if let Some(v) = &derived.protocol_version {
            req = req.header(&headers::PROTOCOL_VERSION, v.clone());
        }
        if let Some(v) = &derived.method {
            req = req.header(&headers::METHOD, v.clone());
        }
        if let Some(v) = &derived.name {
            req = req.header(&headers::NAME, v.clone());
        }
        for (name, value) in &derived.params {
            req = req.header(name, value.clone());
        }
        (req, sent_session)
    }

    /// The GET that opens the stream for server-initiated messages (T-20), resuming after
    /// `last_event_id` when given (T-23).
    pub fn get_stream(&self, last_event_id: Option<&str>) -> RequestBuilder {
        let session = self.session();
        let mut req =
            self.with_session(self.request(Method::GET), &session, true).header(ACCEPT, ACCEPT_SSE.clone());
        if let Some(id) = last_event_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            req = req.header(&LAST_EVENT_ID, id);
        }
        req
    }

    /// Whether messages go over the 2024-11-05 HTTP+SSE transport.
    pub fn is_legacy(&self) -> bool {
        self.endpoint.read().is_ok_and(|e| e.is_some())
    }

    /// The GET that opens a 2024-11-05 HTTP+SSE stream (T-61): credential, no session headers.
    pub fn legacy_stream(&self) -> RequestBuilder {
        self.client
            .request(Method::GET, self.url.clone())
            .headers(self.extra.clone())
            .header(ACCEPT, ACCEPT_SSE.clone())
            .headers(self.key_header().into_iter().collect())
            .headers(self.oauth.iter().filter_map(|o| o.header()).map(|v| (AUTHORIZATION, v)).collect())
            .headers(
                self.oauth
                    .iter()
                    .filter_map(|o| o.proof(&Method::GET, &self.url))
                    .map(|v| (crate::net::DPOP.clone(), v))
                    .collect(),
            )
    }

    /// Takes the `endpoint` event's URI: resolved against the stream's URL and refused unless it
    /// has the same scheme, host and port, since every POST will carry the credential (T-61).
    pub fn set_endpoint(&self, uri: &str) -> Result<(), String> {
        let endpoint =
            self.url.join(uri.trim()).map_err(|e| format!("the endpoint {uri:?} is not a URL ({e})"))?;
        if endpoint.origin() != self.url.origin() {
            return Err(format!(
                "the server announced a message endpoint on another origin ({}); credentials are not sent there",
                redact_url(&endpoint)
            ));
        }
        if let Ok(mut e) = self.endpoint.write() {
            *e = Some(endpoint);
        }
        Ok(())
    }

    /// The DELETE that ends the session (T-22), if there is one.
    pub fn delete_session(&self) -> Option<RequestBuilder> {
        let session = self.session();
        session.id.as_ref()?;
        Some(self.with_session(self.request(Method::DELETE), &session, true))
    }

    /// Replaces every secret the process holds (the key, tokens, header values from variables,
    /// client secrets) wherever a server echoed it back, so no message of ours carries it.
    pub fn redact(&self, text: &str) -> String {
        crate::secrets::redact(text).into_owned()
    }

    /// What a failed send means: unreachable (nothing sent), or broken after sending.
    pub fn send_error(&self, e: &reqwest::Error) -> LocalError {
        let host = self.url.host_str().unwrap_or("the server");
        let port = self.url.port_or_known_default().unwrap_or(0);
        let chain = error_chain(e);
        let lower = chain.to_ascii_lowercase();
        let (message, sent) = if let Some(tls) = tls_error(e) {
            (tls_message(tls, host, port, self.client_cert.as_deref()), false)
        } else if e.is_connect() || lower.contains("dns error") {
            let m = if lower.contains("dns error")
                || lower.contains("lookup")
                || lower.contains("name or service")
            {
                format!("could not resolve the host {host}: check the URL's spelling and your network or DNS")
            } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
                format!(
                    "the TLS connection to {host} failed ({chain}): check the URL, the system clock, and that the server's certificate is valid for {host}"
                )
            } else if lower.contains("refused") {
                format!(
                    "could not connect to {host}:{port}: connection refused. Is the server running, and is the URL right?"
                )
            } else if e.is_timeout() {
                format!(
                    "could not connect to {host}:{port} within --connect-timeout: the server or the network is down or slow"
                )
            } else {
                format!("could not connect to {host}:{port} ({chain}): check the URL and your network")
            };
            (m, false)
        } else if e.is_timeout() {
            (
                format!(
                    "{host} stopped responding ({chain}); the request may have been processed, so it was not retried"
                ),
                true,
            )
        } else {
            (
                format!(
                    "the connection to {host} failed ({chain}); the request may have been processed, so it was not retried"
                ),
                true,
            )
        };
        let mut err = LocalError::new(UPSTREAM_ERROR, ErrorKind::Unreachable, message);
        err.request_sent = Some(sent);
        err.lasting = tls_error(e).is_some();
        err
    }

    /// Whether a failed send is a TLS failure (a certificate problem does not go away by
    /// trying again, so it is not retried).
    pub fn is_tls_failure(e: &reqwest::Error) -> bool {
        tls_error(e).is_some()
    }

    /// The error for a request that got no answer within `timeout`.
    pub fn timeout_error(&self, timeout: Duration) -> LocalError {
        let mut err = LocalError::new(
            REQUEST_TIMEOUT,
            ErrorKind::Timeout,
            format!(
                "no answer from {} within {} s (--request-timeout); the request may still be running on the server",
                self.url.host_str().unwrap_or("the server"),
                fmt_secs(timeout)
            ),
        );
        err.request_sent = Some(true);
        err
    }

    /// Why a redirect to `to` was not followed (issue 21.10: never with a DPoP-bound token).
    fn redirect_message(&self, to: &str, code: u16) -> String {
        if self.oauth().is_some_and(|o| o.dpop_bound()) {
            format!(
                "the server redirected to {to} (HTTP {code}), which is not followed with a DPoP-bound token (each proof names the URL it is for): use that address as the URL"
            )
        } else {
            format!(
                "the server redirected to {to} (HTTP {code}); redirects that could carry your credentials elsewhere are not followed: if you trust that address, use it as the URL"
            )
        }
    }

    /// What a 401 means, by the credential in use (`said`: what the server said, if anything).
    fn unauthorized_message(&self, said: &str) -> String {
        match &self.api_key {
            None if self.oauth.is_some() => match self.oauth.as_ref().and_then(|o| o.refused_hint()) {
                Some(hint) => {
                    format!("the server did not accept the OAuth access token (HTTP 401{said}): {hint}")
                }
                None => format!(
                    "the server did not accept the OAuth sign-in (HTTP 401{said}): run mcp-sidecar login {} to sign in again",
                    self.shown_url
                ),
            },
            Some(key) => format!(
                "the server rejected the API key in {} (HTTP 401{said}): check that it is current and complete, or create a new key, then restart the client",
                key.env_name
            ),
            None => format!(
                "the server requires authentication (HTTP 401{said}): set the variable that holds your key with --api-key-env NAME (or use --preset), or pass the credential with --header"
            ),
        }
    }

    /// What an HTTP error status means for a request, given the start of its body.
    /// `sent_session`: whether the request carried `Mcp-Session-Id` (a 404 then means expiry, T-12).
    pub fn status_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        sent_session: bool,
    ) -> LocalError {
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or("");
        let server_text = server_message(body).map(|t| self.redact(&t));
        let said = server_text.as_deref().map(|t| format!(": {t}")).unwrap_or_default();
        let (code_rpc, kind, message) = match code {
            401 => (AUTH_ERROR, ErrorKind::AuthRejected, self.unauthorized_message(&said)),
            403 => (
                AUTH_ERROR,
                ErrorKind::Forbidden,
                format!(
                    "the server refused this request (HTTP 403{said}): the credential lacks the permission or scope for it; use a key with the needed scope"
                ),
            ),
            404 if sent_session => (
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                format!(
                    "the server ended the MCP session (HTTP 404 for session id{said}): restart the client to start a new session"
                ),
            ),
            404 | 405 | 410 => (
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                format!(
                    "{} is not an MCP endpoint (HTTP {code} {reason}{said}): {}",
                    self.shown_url, self.endpoint_hint
                ),
            ),
            300..=399 => {
                let to = headers
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| self.url.join(l).ok())
                    .map(|u| redact_url(&u))
                    .unwrap_or_else(|| "another address".into());
                (UPSTREAM_ERROR, ErrorKind::Redirect, self.redirect_message(&to, code))
            }
            429 => {
                let after = headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("; the server asks to wait {v} s"))
                    .unwrap_or_default();
                let host = self.url.host_str().unwrap_or("the server");
                let m = format!("rate limited by {host} (HTTP 429{said}){after}: wait and try again");
                (UPSTREAM_ERROR, ErrorKind::HttpError, m)
            }
            500..=599 => (
                UPSTREAM_ERROR,
                ErrorKind::ServerError,
                format!(
                    "the server failed (HTTP {code} {reason}{said}); the request may have been processed, so it was not retried"
                ),
            ),
            _ => (
                UPSTREAM_ERROR,
                ErrorKind::HttpError,
                format!("the server answered HTTP {code} {reason}{said}"),
            ),
        };
        let mut err = LocalError::new(code_rpc, kind, message);
        err.http_status = Some(code);
        err.request_sent = Some(code != 429 && !(300..400).contains(&code));
        err.server_body = server_body(body).map(crate::secrets::redact_json);
        err
    }
}

/// Loopback traffic never goes through a proxy (issue 10.7): it stays on this machine, which is
/// why plain http is allowed to it without `--allow-http`, and an `HTTP_PROXY` would carry it,
/// credentials included, in clear text to another host. A client for one origin (redirects are
/// followed only on it) gets no proxy at all when that origin is loopback.
pub fn direct_to_loopback(builder: reqwest::ClientBuilder, url: &Url) -> reqwest::ClientBuilder {
    if crate::net::is_loopback(url) { builder.no_proxy() } else { builder }
}

/// The URLs most likely to be the MCP endpoint when `url` answers 404 (issue 23.6), best first:
/// the path the `--preset` knows; else `url` with `/mcp` appended and the host's `/mcp`, when the
/// URL does not end with `/mcp` already. Empty when nothing better is known.
pub fn likely_endpoints(url: &Url, preset_path: Option<&str>) -> Vec<Url> {
    let path = url.path().trim_end_matches('/');
    let paths = match preset_path {
        Some(p) if path != p.trim_end_matches('/') => vec![p.to_owned()],
        Some(_) => vec![],
        None if path.ends_with("/mcp") => vec![],
        None => vec![format!("{path}/mcp"), "/mcp".to_owned()],
    };
    let mut out: Vec<Url> = Vec::new();
    for p in paths {
        let mut likely = url.clone();
        likely.set_path(&p);
        likely.set_query(None);
        if !out.contains(&likely) {
            out.push(likely);
        }
    }
    out
}

/// What to say of a URL that is not an MCP endpoint: the likely one when something better is
/// known (the preset's path, or `/mcp`), never a hint the URL already follows.
pub fn endpoint_hint(url: &Url, preset_path: Option<&str>) -> String {
    match (likely_endpoints(url, preset_path).into_iter().next(), preset_path) {
        (Some(likely), Some(_)) => format!("the preset's endpoint is {}: use that URL", redact_url(&likely)),
        (Some(likely), None) => format!("MCP endpoints usually end in /mcp: try {}", redact_url(&likely)),
        (None, _) => "check the URL with the server's documentation: the host answers, but this path is not its MCP endpoint".into(),
    }
}

/// The JSON-RPC error object of an HTTP error body, if it is one (T-40): `{"error":{"code":int,…}}`.
pub fn jsonrpc_error(body: &[u8]) -> Option<(&RawValue, Option<&RawValue>)> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        jsonrpc: Option<&'a str>,
        #[serde(borrow)]
        error: &'a RawValue,
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorObj {
        #[allow(dead_code)]
        code: i64,
    }
    let parsed: Body = serde_json::from_slice(body).ok()?;
    parsed.jsonrpc.filter(|v| *v == "2.0")?;
    serde_json::from_str::<ErrorObj>(parsed.error.get()).ok()?;
    Some((parsed.error, parsed.id))
}

/// The error body for `data.serverBody`: JSON as is, other text cut short.
fn server_body(body: &[u8]) -> Option<serde_json::Value> {
    if body.is_empty() {
        return None;
    }
    serde_json::from_slice(body)
        .ok()
        .or_else(|| Some(serde_json::Value::String(cut(&String::from_utf8_lossy(body), 1000))))
}

/// The TLS error behind a failed request, if that is what it was. rustls errors arrive as a
/// source, or wrapped in an `io::Error` by the TLS stream.
fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        // io::Error::source() skips the error it wraps; get_ref() reaches it.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(s);
        while let Some(i) = inner {
            if let Some(tls) = i.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            inner = i.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as _);
        }
        source = s.source();
    }
    None
}

/// Windows' codes for a revocation check that could not be made: CERT_E_REVOCATION_FAILURE,
/// CRYPT_E_REVOCATION_OFFLINE, CRYPT_E_NO_REVOCATION_CHECK (as the signed HRESULTs the OS error
/// carries).
const WINDOWS_REVOCATION_UNCHECKED: [i32; 3] = [-2146762482, -2146885613, -2146885614];

fn revocation_unknown(host: &str) -> String {
    format!(
        "this machine could not check whether the TLS certificate of {host} has been revoked (the certificate authority's revocation servers did not answer; firewalls and proxies often block them): allow this machine to reach them, or ask your network administrator"
    )
}

/// One sentence per TLS failure users meet: not TLS at all, untrusted, expired, wrong host,
/// revoked or not checkable for revocation.
fn tls_message(
    e: &rustls::Error,
    host: &str,
    port: u16,
    cert: Option<&crate::clientcert::ClientCert>,
) -> String {
    use rustls::{AlertDescription as Alert, CertificateError, Error};
    match e {
        // Issue 25.3: the server's word on the client certificate (mTLS).
        Error::AlertReceived(Alert::CertificateRequired | Alert::HandshakeFailure) if cert.is_none() => {
            format!(
                "{host} asked for a client certificate and none was given: give yours with --client-cert and --client-key"
            )
        }
        Error::AlertReceived(
            alert @ (Alert::CertificateExpired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::AccessDenied
            | Alert::CertificateRequired),
        ) => {
            let expired = cert.and_then(crate::clientcert::ClientCert::expired);
            let cert = cert.map_or("the client certificate", |c| c.shown.as_str());
            let why = match (alert, expired) {
                (_, Some(expired)) => format!(": it {expired}"),
                (Alert::UnknownCA, None) => ": it is not signed by an authority the server trusts".into(),
                (Alert::CertificateRevoked, None) => ": it has been revoked".into(),
                (other, None) => format!(" ({other:?})"),
            };
            format!(
                "{host} refused the client certificate ({cert}){why}: get a current one from whoever issues them"
            )
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!(
                "the TLS certificate of {host} is not signed by an authority this machine trusts (self-signed, or a private CA): pass that CA's certificate with --ca-file"
            )
        }
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!(
                "the TLS certificate of {host} has expired (or this machine's clock is wrong): the server must renew it"
            )
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            format!("the TLS certificate presented by {host} is for another host name: check the URL's host")
        }
        Error::InvalidCertificate(CertificateError::Revoked) => {
            format!(
                "the TLS certificate of {host} has been revoked by its authority: the server must replace it"
            )
        }
        Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => revocation_unknown(host),
        // Windows' verifier reports what rustls has no variant for as OS error codes; the one
        // people meet is a revocation check that could not be made (a firewall or proxy blocks
        // the authority's CRL/OCSP servers), which would otherwise read as a bare number.
        Error::InvalidCertificate(CertificateError::Other(other))
            if WINDOWS_REVOCATION_UNCHECKED
                .iter()
                .any(|code| other.to_string().contains(&format!("os error {code})"))) =>
        {
            revocation_unknown(host)
        }
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => {
            format!(
                "{host}:{port} did not answer with TLS: if it serves plain HTTP, use an http:// URL (with --allow-http for remote hosts)"
            )
        }
        other => format!(
            "the TLS handshake with {host} failed ({other}): check the URL and the server's certificate"
        ),
    }
}

/// Formats seconds without noise: 300, 1.5.
pub fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0}") } else { format!("{s}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue23_6_the_404_hint_names_what_is_known_and_never_what_the_url_already_does() {
        let url = |s: &str| Url::parse(s).unwrap();
        let shown = |u: Vec<Url>| u.iter().map(Url::to_string).collect::<Vec<_>>();
        // Ends in /mcp, no preset: nothing better is known, and the hint does not say "/mcp".
        assert!(likely_endpoints(&url("https://h/v2/mcp"), None).is_empty());
        let hint = endpoint_hint(&url("https://h/v2/mcp"), None);
        assert!(!hint.contains("end in /mcp") && hint.contains("documentation"), "{hint}");
        // Does not end in /mcp: the URL with /mcp, then the host's /mcp.
        assert_eq!(
            shown(likely_endpoints(&url("https://h/api?x=1"), None)),
            ["https://h/api/mcp", "https://h/mcp"]
        );
        assert_eq!(shown(likely_endpoints(&url("https://h/"), None)), ["https://h/mcp"]);
        assert!(endpoint_hint(&url("https://h/api"), None).contains("try https://h/api/mcp"));
        // A preset knows its path: that one only, and nothing when the URL has it.
        assert_eq!(shown(likely_endpoints(&url("https://h/mcp"), Some("/api/mcp"))), ["https://h/api/mcp"]);
        assert!(likely_endpoints(&url("https://h/mcp/inspector"), Some("/mcp/inspector")).is_empty());
        let hint = endpoint_hint(&url("https://h/mcp"), Some("/mcp/inspector"));
        assert!(hint.contains("https://h/mcp/inspector") && hint.contains("preset"), "{hint}");
    }

    /// Issue 12: Windows' verifier speaks in OS error codes; the revocation check that a
    /// firewall blocks is explained, not shown as a number.
    #[test]
    fn revocation_failures_are_explained_on_every_platform() {
        use rustls::{CertificateError, Error, OtherError};
        let os = |code: i32| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(std::sync::Arc::new(
                std::io::Error::from_raw_os_error(code),
            ))))
        };
        for e in [
            os(-2146762482),
            os(-2146885613),
            Error::InvalidCertificate(CertificateError::UnknownRevocationStatus),
        ] {
            let said = tls_message(&e, "mcp.example.com", 443, None);
            assert!(
                said.contains(
                    "could not check whether the TLS certificate of mcp.example.com has been revoked"
                ),
                "{said}"
            );
        }
        let revoked = tls_message(&Error::InvalidCertificate(CertificateError::Revoked), "h", 443, None);
        assert!(revoked.contains("has been revoked by its authority"), "{revoked}");
        let other = tls_message(&os(-2146762495), "h", 443, None);
        assert!(other.starts_with("the TLS handshake with h failed"), "another code stays as it is: {other}");
    }

    #[test]
    fn t40_recognizes_jsonrpc_error_bodies() {
        let (err, id) =
            jsonrpc_error(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"x"}}"#).unwrap();
        assert_eq!(err.get(), r#"{"code":-32000,"message":"x"}"#);
        assert!(id.is_none(), "a null id matches no request");
        // Converra's 401 body has a string code: not JSON-RPC.
        assert!(jsonrpc_error(br#"{"error":{"code":"UNAUTHORIZED","message":"Invalid API key"}}"#).is_none());
        assert!(jsonrpc_error(b"Bad Request").is_none());
    }

    #[test]
    fn server_messages_from_each_vendor_shape() {
        assert_eq!(
            server_message(br#"{"error":{"code":"UNAUTHORIZED","message":"Invalid API key"}}"#).unwrap(),
            "Invalid API key"
        );
        assert_eq!(
            server_message(
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":401,"message":"Unauthorized","data":{"errorType":"INVALID_API_KEY","message":"API key not found or has been revoked"}}}"#
            )
            .unwrap(),
            "Unauthorized (API key not found or has been revoked)"
        );
        assert_eq!(server_message(b"\n  upstream timed out\nmore").unwrap(), "upstream timed out");
        assert_eq!(server_message(b"<html><body>502</body></html>"), None);
        assert_eq!(server_message(b""), None);
    }

    #[test]
    fn cut_marks_long_text() {
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
