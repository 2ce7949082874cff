//! The link to the server: one POST through the rate-limit gate, waiting out 429s, retrying
//! only what provably was not processed, renewing a refused token or an expired session, and
//! the errors for requests a rate limit keeps back.
//!
//! [`Link`] owns everything a send needs and nothing about who waits for the answer: the
//! [`Upstream`], the [`Gate`], the retry settings, the rate-limit headers last seen, and the
//! client's `initialize` line with the lock that makes concurrent 404s start one new session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::policy::progress;
use super::reply::{first_response, read_body};
use crate::auth::challenge::BearerChallenge as Challenge;
use crate::auth::{OAuth, Renew};
use crate::cli::Transport;
use crate::config::RetryPolicy;
use crate::envelope::{self, AUTH_ERROR, Envelope, ErrorKind, LocalError, RATE_LIMITED, UPSTREAM_ERROR};
use crate::ratelimit::{Admission, Gate, Use};
use crate::retry;
use crate::sync::Locked;
use crate::upstream::headers::{MessageHeaders, SESSION_ID};
use crate::upstream::{MAX_ERROR_BODY_BYTES, Upstream};

/// How many new sessions one request follows after 404s (T-12) before it is answered with an
/// error: once per expired session it met (so "at most once" for any one expiry); renewals it
/// merely waited for do not count. A server that drops every new session cannot make it loop.
const MAX_RENEWALS: u32 = 5;
/// Retries of a request that could not reach a server that never answered yet (refused, no
/// such host), and the pause before it: a server still starting gets one more chance.
const FIRST_CONTACT_RETRIES: u32 = 1;
const FIRST_CONTACT_RETRY: Duration = Duration::from_millis(250);
/// Token renewals per request after a 401 (a stored or refreshed token, then one sign-in; never
/// a loop of browser tabs).
const MAX_SIGN_INS: u32 = 2;
/// Browser sign-ins per request, the first one and those for more scope after a 403
/// `insufficient_scope` together (A-12: "no more than a few times").
const MAX_AUTHORIZATIONS: u32 = 3;

tokio::task_local! {
    /// What the requests sent by this task are for, when not a client's request: the
    /// `subscriptions/listen` stream of the bridge runs under [`Use::Background`] (issue 21.4).
    pub(super) static USAGE: Use;
}

/// Told of each rate-limit wait: how long, and why.
pub type WaitObserver = Box<dyn Fn(Duration, &str) + Send + Sync>;

/// Told `true` just before a request goes out to the server, `false` when its answer says it
/// was not processed and it waits to go again (issue 23.4: shutdown then says so).
pub(super) type OnWire<'a> = Option<&'a (dyn Fn(bool) + Sync)>;

/// What one POST came back with: the response, whether it carried the session id, and the
/// deadline for reading it.
pub(super) type Sent = (reqwest::Response, bool, Instant);

/// What comes after one try of a send.
#[allow(clippy::large_enum_variant)] // moved once per try, never stored: a box would cost a malloc per request
enum Next {
    /// Send it again.
    Again,
    /// This is the answer.
    Done(Sent),
}

/// The retries one send has spent, each against its own bound.
#[derive(Default)]
struct Tries<'a> {
    /// Told when the request goes out, and when it waits to go again.
    on_wire: OnWire<'a>,
    /// Whether `on_wire` was last told `true`.
    on_the_wire: bool,
    retries: u32,
    renewals: u32,
    sign_ins: u32,
    authorizations: u32,
    nonce_retried: bool,
    /// Issue 25.2: `--api-key-command` was run again for this request.
    key_rerun: bool,
}

impl Tries<'_> {
    /// Tells `on_wire` that the request goes out (`true`) or waits to go again, once per change.
    fn tell(&mut self, on: bool) {
        if self.on_the_wire != on {
            self.on_the_wire = on;
            if let Some(tell) = self.on_wire {
                tell(on);
            }
        }
    }
}

/// The way to the server, and what a send must remember across requests.
pub(super) struct Link {
    pub(super) up: Upstream,
    /// The rate-limit gate of this origin and key.
    pub(super) gate: Gate,
    /// `--max-retries`, `--max-wait`.
    pub(super) policy: RetryPolicy,
    /// `--transport`.
    pub(super) transport: Transport,
    max_message: usize,
    /// The rate-limit headers of the last 429, for errors made while holding requests.
    last_limit_headers: Mutex<Vec<(String, String)>>,
    /// The rate-limit headers of the last successful response that had any (for `check`),
    /// recorded only when `record_limits` is set (the stdio proxy does not pay for it).
    seen_limit_headers: Mutex<Vec<(String, String)>>,
    record_limits: AtomicBool,
    /// Shown rate-limit waits instead of logging them (the one-shot commands' countdown).
    wait_observer: OnceLock<WaitObserver>,
    /// The client's `initialize` line, replayed to start a new session when the server has
    /// dropped the old one (T-12): the client will not send it again.
    init_line: Mutex<Option<Bytes>>,
    /// Makes concurrent 404s start one new session, not one each.
    renewing: tokio::sync::Mutex<()>,
    /// Told when a new session was started (the GET stream is reopened for it).
    on_renewed: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Issue 24.5: the client's `initialize` was answered from what was kept; the server's
    /// handshake is owed, paid by the first request that goes to it.
    owed: AtomicBool,
    /// Told when the owed handshake was paid (the lists served stale are asked again).
    on_paid: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Issue 24.5: held by the client's `initialize` while it goes on behind an answer from
    /// what was kept (a sign-in outlasted the client's patience); the owed handshake waits for
    /// it instead of starting a second session.
    paying: Arc<tokio::sync::Mutex<()>>,
    /// Issue 25.2: one rerun of `--api-key-command` at a time.
    renewing_key: tokio::sync::Mutex<()>,
    /// Token renewals going on now (a refresh or a sign-in), for [`Link::sign_in_going`].
    renewing_token: tokio::sync::watch::Sender<usize>,
    /// The server has answered once (any HTTP status): from then on a refused connection is a
    /// server restarting, worth the usual retries; before, a wrong URL or a server that is down,
    /// said at once (issue 23.4).
    reached: AtomicBool,
    /// A one-shot command's with a rate limit given (`--rate-limit`, a preset's plan): see
    /// [`Link::spares_the_delete`].
    one_shot: bool,
    limits_given: bool,
}

impl Link {
    pub(super) fn new(up: Upstream, gate: Gate, config: &crate::config::Config) -> Link {
        Link {
            up,
            gate,
            policy: config.retry.clone(),
            transport: config.transport,
            max_message: config.max_message_bytes,
            last_limit_headers: Mutex::new(Vec::new()),
            seen_limit_headers: Mutex::new(Vec::new()),
            record_limits: AtomicBool::new(false),
            wait_observer: OnceLock::new(),
            init_line: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            on_renewed: OnceLock::new(),
            owed: AtomicBool::new(false),
            on_paid: OnceLock::new(),
            paying: Arc::new(tokio::sync::Mutex::new(())),
            renewing_token: tokio::sync::watch::Sender::new(0),
            renewing_key: tokio::sync::Mutex::new(()),
            reached: AtomicBool::new(false),
            one_shot: config.one_shot,
            limits_given: !config.rate_limits.is_empty(),
        }
    }

    /// Issue 23.5: a one-shot command leaves out the closing `DELETE` (T-22 is a SHOULD; the
    /// session expires by itself) where requests are counted: a rate limit given, or stated by
    /// the server's headers. Elsewhere the session is ended as usual.
    pub(super) fn spares_the_delete(&self) -> bool {
        self.one_shot
            && (self.limits_given
                || !self.seen_limit_headers.locked().is_empty()
                || !self.last_limit_headers.locked().is_empty())
    }

    /// Calls `observe` for each rate-limit wait instead of logging it.
    pub(super) fn observe_waits(&self, observe: WaitObserver) {
        let _ = self.wait_observer.set(observe);
    }

    /// Calls `renewed` after each new session this link started.
    pub(super) fn on_renewed(&self, renewed: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_renewed.set(renewed);
    }

    /// Issue 24.5: the client's handshake was answered from what was kept; the server's is owed.
    pub(super) fn owe_handshake(&self) {
        self.owed.store(true, Ordering::Relaxed);
    }

    /// Whether the server's handshake is owed (no session yet).
    pub(super) fn owes_handshake(&self) -> bool {
        self.owed.load(Ordering::Relaxed)
    }

    /// Issue 24.5: the lock the client's `initialize` holds while it goes on in the background
    /// (taken before it starts: nothing else holds it then).
    pub(super) fn paying(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.paying.clone().try_lock_owned().ok()
    }

    /// Returns once a token renewal (a refresh or a sign-in) is going on.
    pub(super) async fn sign_in_going(&self) {
        let mut going = self.renewing_token.subscribe();
        if going.wait_for(|n| *n > 0).await.is_err() {
            std::future::pending::<()>().await; // the link is gone: never
        }
    }

    /// Issue 24.5: the client's `initialize`, gone on in the background after the client was
    /// answered from what was kept, came back (`answered`: with a result): the session it
    /// started is completed with `notifications/initialized`, and the handshake is paid.
    /// Otherwise it stays owed, for the next request to pay.
    pub(super) async fn paid_late(&self, answered: Result<(), String>, limit: Duration) {
        if let Err(detail) = answered {
            warn!(
                "the server's initialize after the sign-in failed ({detail}); the next request starts the session"
            );
            return;
        }
        let (request, _) = self.up.post(initialized(), &MessageHeaders::default(), Some(&self.up.session()));
        match timeout(limit, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => {}
            Ok(Ok(r)) => debug!("notifications/initialized: HTTP {}", r.status().as_u16()),
            _ => debug!("notifications/initialized was not delivered"),
        }
        self.paid();
    }

    /// The owed handshake is paid: the GET stream opens, the lists served stale are asked again.
    fn paid(&self) {
        self.owed.store(false, Ordering::Relaxed);
        info!("the server answers again: the MCP session is started, and requests go on");
        if let Some(renewed) = self.on_renewed.get() {
            renewed();
        }
        if let Some(paid) = self.on_paid.get() {
            paid();
        }
    }

    /// Told when the owed handshake is paid.
    pub(super) fn on_paid(&self, paid: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_paid.set(paid);
    }

    /// Records the rate-limit headers of successful responses too (for `check`).
    pub(super) fn record_limits(&self) {
        self.record_limits.store(true, Ordering::Relaxed);
    }

    /// The rate-limit headers last seen: on a success, else on a 429.
    pub(super) fn rate_limit_headers(&self) -> Vec<(String, String)> {
        let seen = self.seen_limit_headers.locked().clone();
        if seen.is_empty() { self.last_limit_headers.locked().clone() } else { seen }
    }

    /// Keeps the client's `initialize` line for session renewals.
    pub(super) fn keep_init_line(&self, line: Bytes) {
        *self.init_line.locked() = Some(line);
    }

    /// No session to renew: the bridge has none.
    pub(super) fn forget_init_line(&self) {
        *self.init_line.locked() = None;
    }

    pub(super) fn init_line(&self) -> Option<Bytes> {
        self.init_line.locked().clone()
    }

    /// Sends one POST: through the rate-limit gate, waiting out 429s (and 503s with Retry-After)
    /// as the server asks, and sending again only what provably was not processed (a refused
    /// connection, a 429; RFC 9110 §9.2.2, R-05).
    pub(super) async fn send(
        &self,
        body: &Bytes,
        headers: &MessageHeaders,
        initialize: bool,
        limit: Duration,
        what: &str,
        on_wire: OnWire<'_>,
    ) -> Result<Sent, LocalError> {
        let mut tries = Tries { on_wire, ..Tries::default() };
        loop {
            match self.try_once(body, headers, initialize, limit, what, &mut tries).await? {
                // Every way to another try is an answer that says "not processed".
                Next::Again => tries.tell(false),
                Next::Done(sent) => return Ok(sent),
            }
        }
    }

    /// One try of [`Link::send`]: admitted by the gate, sent, and its status judged.
    async fn try_once(
        &self,
        body: &Bytes,
        headers: &MessageHeaders,
        initialize: bool,
        limit: Duration,
        what: &str,
        tries: &mut Tries<'_>,
    ) -> Result<Next, LocalError> {
        if !initialize && self.owes_handshake() {
            Box::pin(self.pay_handshake(what, limit, tries)).await?;
        }
        let admitted = self.admit(what, headers.route).await?;
        let oauth = self.up.oauth();
        if let Some(o) = oauth
            && o.expiring()
        {
            // Cold paths are boxed: their futures (a whole sign-in) would otherwise sit in
            // every request's task, copied at each spawn.
            Box::pin(o.refresh_ahead()).await;
        }
        let token = oauth.and_then(|o| o.header());
        let key_generation = self.up.key_generation();
        let session = if initialize { None } else { Some(self.up.session()) };
        let (request, sent_session) = self.up.post(body.clone(), headers, session.as_ref());
        // The timeout measures the server, not the time spent waiting for the gate.
        let deadline = retry::deadline_after(limit);
        tries.tell(true);
        progress::going();
        let response = match timeout_at(deadline, request.send()).await {
            Err(_) => {
                // Issue 21.5: no answer will give the unit back; it is given back now.
                self.gate.answered(&admitted, None).await;
                return Err(self.up.timeout_error(limit));
            }
            Ok(Err(e)) => {
                self.gate.answered(&admitted, None).await;
                return Box::pin(self.not_sent(&e, tries, what)).await;
            }
            Ok(Ok(r)) => r,
        };
        self.reached.store(true, Ordering::Relaxed);
        // Issue 11: what the answer says of the server's budget (and the unit this request took
        // from it) goes back to the gate, whatever the status.
        self.answered(&admitted, response.headers()).await;
        if self.credential_refused(&response, token.as_ref(), key_generation, tries, limit).await? {
            return Ok(Next::Again);
        }
        // T-12: a 404 for a request that carried the session id means the session is gone.
        // A request in flight may meet several expiries under load; a server that drops every
        // new session must not make it loop, hence the bound.
        if response.status() == StatusCode::NOT_FOUND
            && tries.renewals < MAX_RENEWALS
            && let Some(expired) = session.as_ref().and_then(|s| s.id.clone())
            && self.init_line.locked().is_some()
        {
            drop(response);
            if Box::pin(self.renew_session(&expired, limit)).await? {
                tries.renewals += 1;
            }
            return Ok(Next::Again);
        }
        if !retry::asks_to_wait(response.status(), response.headers()) {
            self.passed(&admitted, &response).await;
            return Ok(Next::Done((response, sent_session, deadline)));
        }
        Box::pin(self.wait_as_asked(response, &admitted, deadline, what, tries)).await
    }

    /// A send that failed before any answer: sent again after a backoff when it provably did
    /// not reach the server (and the failure is not TLS), else the error.
    async fn not_sent(
        &self,
        e: &reqwest::Error,
        tries: &mut Tries<'_>,
        what: &str,
    ) -> Result<Next, LocalError> {
        let err = self.up.send_error(e);
        // Before the server ever answered: one quick retry (a server still starting), then the
        // error, at once: `connection refused` after 9 s helped nobody (issue 23.4).
        let reached = self.reached.load(Ordering::Relaxed);
        let max = if reached {
            self.policy.max_retries
        } else {
            self.policy.max_retries.min(FIRST_CONTACT_RETRIES)
        };
        if err.request_sent != Some(false) || Upstream::is_tls_failure(e) || tries.retries >= max {
            return Err(err);
        }
        let wait = if reached { self.policy.backoff(tries.retries) } else { FIRST_CONTACT_RETRY };
        tries.retries += 1;
        self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
        info!("{what}: {}; trying again in {} ({} of {max})", err.message, retry::human(wait), tries.retries);
        tries.tell(false);
        progress::held(|| format!("another try at {} ({})", self.up.host(), err.message), Some(wait));
        tokio::time::sleep(wait).await;
        Ok(Next::Again)
    }

    /// Issues 5 and 14: whether a 401 or 403 was dealt with so that the request goes again
    /// (it was not processed): a DPoP nonce handed out (`nonce_given`) with `use_dpop_nonce`
    /// (RFC 9449 §9), or a renewed token (stored, refreshed, or a new sign-in, within bounds).
    async fn token_refused(
        &self,
        o: &OAuth,
        response: &reqwest::Response,
        nonce_given: bool,
        token: Option<&reqwest::header::HeaderValue>,
        tries: &mut Tries<'_>,
        limit: Duration,
    ) -> Result<bool, LocalError> {
        let status = response.status();
        let values: Vec<&str> =
            response.headers().get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect();
        let challenge = crate::auth::challenge::bearer(&values);
        let error = challenge.as_ref().and_then(|c| c.error.as_deref());
        if nonce_given && !tries.nonce_retried && error == Some("use_dpop_nonce") {
            tries.nonce_retried = true;
            return Ok(true);
        }
        let step_up = status == StatusCode::FORBIDDEN && error == Some("insufficient_scope");
        let refused = status == StatusCode::UNAUTHORIZED && (challenge.is_some() || o.explicit());
        let how = if step_up && tries.authorizations < MAX_AUTHORIZATIONS {
            Renew::StepUp
        } else if refused && tries.sign_ins < MAX_SIGN_INS {
            tries.sign_ins += 1;
            Renew::Refused
        } else {
            return Ok(false);
        };
        tries.tell(false); // refused, so not processed: it waits for a token now
        progress::held(|| format!("a new token for {} (a refresh, or a sign-in)", self.up.host()), None);
        let _renewing = Renewing::new(&self.renewing_token);
        if Box::pin(renew_token(o, token, challenge.as_ref(), how, limit, status)).await? {
            tries.authorizations += 1;
            tries.sign_ins = MAX_SIGN_INS; // a fresh sign-in that is refused is not retried
        }
        Ok(true)
    }

    /// Whether a refused credential was dealt with so that the request goes again: a DPoP nonce
    /// or a new token (OAuth, issues 5 and 14), or a new key from `--api-key-command` (issue
    /// 25.2). Every answer passes here: a DPoP nonce handed out goes into the next proofs.
    async fn credential_refused(
        &self,
        response: &reqwest::Response,
        token: Option<&reqwest::header::HeaderValue>,
        key_generation: u64,
        tries: &mut Tries<'_>,
        limit: Duration,
    ) -> Result<bool, LocalError> {
        let status = response.status();
        if let Some(o) = self.up.oauth() {
            let nonce = response.headers().get(&crate::net::DPOP_NONCE).and_then(|n| n.to_str().ok());
            let nonce_given = nonce.is_some_and(|n| o.dpop_nonce(response.url(), n));
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && Box::pin(self.token_refused(o, response, nonce_given, token, tries, limit)).await?
            {
                return Ok(true);
            }
        }
        Ok(status == StatusCode::UNAUTHORIZED
            && !tries.key_rerun
            && self.up.key_command().is_some()
            && Box::pin(self.key_refused(key_generation, tries)).await)
    }

    /// Issue 25.2: a 401 for a key from `--api-key-command`: the command runs once more (off
    /// the runtime thread, one request at a time), and a new key sends the request again (a 401
    /// was not processed). A key another request renewed meanwhile is used without a rerun.
    async fn key_refused(&self, sent_with: u64, tries: &mut Tries<'_>) -> bool {
        tries.key_rerun = true;
        let _one_at_a_time = self.renewing_key.lock().await;
        if self.up.key_generation() != sent_with {
            tries.tell(false);
            return true;
        }
        let Some(argv) = self.up.key_command().map(<[String]>::to_vec) else { return false };
        progress::held(|| "a new key from --api-key-command".into(), None);
        let run =
            tokio::task::spawn_blocking(move || crate::keycmd::run(&argv, crate::keycmd::TIMEOUT)).await;
        match run {
            Ok(Ok(secret)) if self.up.rotate_key(&secret) => {
                info!(
                    "the server refused the key; --api-key-command printed a new one, and the request goes again"
                );
                tries.tell(false);
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(why)) => {
                warn!("{why}");
                false
            }
            Err(_) => false,
        }
    }

    /// A success lifts a deadline set meanwhile (issue 10.1); `check` keeps its headers.
    async fn passed(&self, admitted: &Admission<'_>, response: &reqwest::Response) {
        let status = response.status();
        if status.is_success() {
            self.gate.succeeded(admitted).await;
        }
        if status.is_success() && self.record_limits.load(Ordering::Relaxed) {
            let seen = retry::rate_limit_headers(response.headers());
            if !seen.is_empty() {
                *self.seen_limit_headers.locked() = seen;
            }
        }
    }

    /// A 429 (or a 503 with a wait): every request waits for the deadline it names, and this
    /// one goes again, unless the wait is past `--max-wait` or the retries are spent.
    async fn wait_as_asked(
        &self,
        response: reqwest::Response,
        admitted: &Admission<'_>,
        deadline: Instant,
        what: &str,
        tries: &mut Tries<'_>,
    ) -> Result<Next, LocalError> {
        let status = response.status();
        self.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
        debug!(status = status.as_u16(), what, "the server asks to wait");
        let resp_headers = response.headers().clone();
        *self.last_limit_headers.locked() = retry::rate_limit_headers(&resp_headers);
        let asked = retry::server_wait(&resp_headers, SystemTime::now());
        let wait = match asked {
            Some(w) => self.policy.with_jitter(w.delay),
            None => self.policy.backoff(tries.retries),
        };
        let source = asked.map_or(retry::Source::Backoff, |w| w.source);
        if let Some(w) = asked {
            // Whatever happens to this request, the others wait for the same deadline.
            Box::pin(self.gate.block_for(w.delay, source.as_str(), Some(admitted))).await;
        }
        if wait > self.policy.max_wait || tries.retries >= self.policy.max_retries {
            let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
            let over_cap = wait > self.policy.max_wait;
            let answer = Some((status, &body[..]));
            return Err(self.rate_limited(answer, wait, source.as_str(), over_cap, tries.retries, false));
        }
        if asked.is_none() {
            Box::pin(self.gate.block_for(wait, source.as_str(), Some(admitted))).await;
        }
        drop(response);
        tries.retries += 1;
        self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
        Ok(Next::Again)
    }

    /// Gives the gate what an answer says of the server's budget, and the unit the request took
    /// from it (issue 11); a spent budget's headers are kept for the error that may follow.
    /// Issue 25.6: the cookies it sets are kept (every answer of the server passes here).
    pub(super) async fn answered(&self, admitted: &Admission<'_>, headers: &reqwest::header::HeaderMap) {
        self.up.take_cookies(headers);
        let budget = retry::budget(headers, SystemTime::now());
        if budget.is_none() && !admitted.tracked() {
            return;
        }
        if budget.is_some_and(|b| b.remaining == 0) {
            *self.last_limit_headers.locked() = retry::rate_limit_headers(headers);
        }
        Box::pin(self.gate.answered(admitted, budget)).await;
    }

    /// Waits at the gate, logging each wait; a wait longer than `--max-wait` is an error (but
    /// the gate lets one request a minute through as a probe, issue 10.1).
    pub(super) async fn admit(&self, what: &str, route: u64) -> Result<Admission<'_>, LocalError> {
        let max = self.policy.max_wait;
        let usage = USAGE.try_with(|u| *u).unwrap_or(Use::Request);
        self.gate
            .admit_route(max, usage, route, |wait, why| {
                progress::held(|| format!("the rate limit of {} ({why})", self.up.host()), Some(wait));
                match self.wait_observer.get() {
                    Some(observe) => observe(wait, why),
                    None => info!("{what}: waiting {} for the rate limit ({why})", retry::human(wait)),
                }
            })
            .await
            .map_err(|b| {
                if b.client_side {
                    client_side_limited(&b.reason, b.wait, max)
                } else {
                    self.rate_limited(None, b.wait, &b.reason, true, 0, true)
                }
            })
    }

    /// The error for a request the rate limit keeps from going through: when it resets, which
    /// limit (a guess at a daily quota for long waits), and the headers seen.
    pub(super) fn rate_limited(
        &self,
        response: Option<(StatusCode, &[u8])>,
        wait: Duration,
        source: &str,
        over_cap: bool,
        retries: u32,
        held: bool,
    ) -> LocalError {
        let host = self.up.host();
        let resets = if source == retry::Source::Backoff.as_str() {
            "the server did not say when it resets".to_owned()
        } else {
            let daily = if wait >= Duration::from_secs(3600) { " (a daily quota?)" } else { "" };
            format!("it resets in {} ({source}){daily}", retry::human(wait))
        };
        let status = response.map_or(String::new(), |(s, body)| {
            let said = crate::net::server_message(body)
                .map(|t| format!(": {}", self.up.redact(&t)))
                .unwrap_or_default();
            format!(" (HTTP {}{said})", s.as_u16())
        });
        // Issue 10.1: past a long deadline the gate lets a probe through every minute.
        let sooner = if wait > crate::ratelimit::PROBE_INTERVAL {
            " (one request a minute is let through to see whether it lifts sooner)"
        } else {
            ""
        };
        let max_wait = retry::human(self.policy.max_wait);
        let message = if held {
            format!(
                "rate limit reached at {host}; {resets}, longer than --max-wait {max_wait}: try again then{sooner}"
            )
        } else if over_cap {
            format!(
                "rate limit reached at {host}{status}; {resets}, longer than --max-wait {max_wait}, so the request was not sent again: try again then{sooner}"
            )
        } else {
            format!(
                "still rate limited by {host}{status} after {retries} retries (--max-retries); {resets}: try again then"
            )
        };
        let mut err = LocalError::new(RATE_LIMITED, ErrorKind::RateLimited, message);
        err.http_status = response.map(|(s, _)| s.as_u16());
        err.request_sent = Some(false);
        err.retry_after = (source != retry::Source::Backoff.as_str()).then_some(wait);
        err.rate_limit_headers = self.last_limit_headers.locked().clone();
        err
    }

    /// Starts a new session after the server dropped `expired` (T-12): replays the client's
    /// `initialize` and `notifications/initialized` upstream (their answers stay here: the client
    /// has its session already) and reopens the GET stream. One renewal for all the requests
    /// that met the same 404. Returns whether this call started it (false: another request had).
    pub(super) async fn renew_session(
        &self,
        expired: &reqwest::header::HeaderValue,
        limit: Duration,
    ) -> Result<bool, LocalError> {
        let _one_at_a_time = self.renewing.lock().await;
        if self.up.session().id.as_ref() != Some(expired) {
            return Ok(false); // renewed by another request meanwhile
        }
        let Some(line) = self.init_line() else {
            return Err(LocalError::new(
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                "the server ended the MCP session",
            ));
        };
        warn!("the server ended the MCP session (HTTP 404 for its session id); starting a new one");
        self.start_session(line, retry::deadline_after(limit)).await.map_err(|detail| {
            let mut err = LocalError::new(
                UPSTREAM_ERROR,
                ErrorKind::WrongEndpoint,
                format!(
                    "the server ended the MCP session and starting a new one failed ({detail}): restart the client"
                ),
            );
            err.request_sent = Some(false);
            err
        })?;
        if let Some(renewed) = self.on_renewed.get() {
            renewed();
        }
        info!("new MCP session started; requests continue");
        Ok(true)
    }

    /// Issue 24.5: starts the session the client was told it has (its `initialize` answered
    /// from what was kept), through the gate, before the request that needs it; while the
    /// server cannot be reached, waits and tries again within `--max-retries` (the request
    /// waits with progress), then says the request was not sent.
    async fn pay_handshake(
        &self,
        what: &str,
        limit: Duration,
        tries: &mut Tries<'_>,
    ) -> Result<(), LocalError> {
        if self.paying.try_lock().is_err() {
            progress::held(|| format!("the sign-in to {} to finish", self.up.host()), None);
        }
        // The client's `initialize` going on behind a kept answer (a sign-in) pays it, or not.
        drop(self.paying.lock().await);
        let _one_at_a_time = self.renewing.lock().await;
        loop {
            let Some(line) = self.init_line().filter(|_| self.owes_handshake()) else { return Ok(()) };
            let admitted = self.admit(what, 0).await?;
            progress::going();
            let started = self.start_session(line, retry::deadline_after(limit)).await;
            self.gate.answered(&admitted, None).await;
            let detail = match started {
                Ok(()) => {
                    self.paid();
                    return Ok(());
                }
                Err(detail) => detail,
            };
            if tries.retries >= self.policy.max_retries {
                let mut err = LocalError::new(
                    UPSTREAM_ERROR,
                    ErrorKind::Unreachable,
                    format!(
                        "the server still cannot start the MCP session ({detail}); this request was not sent: try again later"
                    ),
                );
                err.request_sent = Some(false);
                return Err(err);
            }
            let wait = self.policy.backoff(tries.retries);
            tries.retries += 1;
            progress::held(|| format!("{} to start the session ({detail})", self.up.host()), Some(wait));
            debug!("starting the owed session failed ({detail}); again in {}", retry::human(wait));
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends the client's `initialize` line and `notifications/initialized` for a new session,
    /// taking its id and negotiated version; what failed, for people.
    async fn start_session(&self, line: Bytes, deadline: Instant) -> Result<(), String> {
        // Issue 25.6: the old session's cookies pinned it to a backend; the new one gets its own.
        self.up.drop_cookies();
        let (request, _) = self.up.post(line, &MessageHeaders::default(), None);
        let response = match timeout_at(deadline, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => {
                self.up.take_cookies(r.headers());
                r
            }
            Ok(Ok(r)) => return Err(format!("HTTP {}", r.status().as_u16())),
            Ok(Err(e)) => return Err(self.up.send_error(&e).message),
            Err(_) => return Err("no answer".into()),
        };
        let new_id = response.headers().get(&SESSION_ID).cloned();
        let version = first_response(response, self.max_message, deadline).await.and_then(|bytes| {
            let env = Envelope::parse(&bytes).ok()?;
            let params: envelope::Params = serde_json::from_str(env.result?.get()).ok()?;
            params.protocol_version.map(|v| v.into_owned())
        });
        self.up.set_session_id(new_id);
        if let Some(v) = version {
            self.up.set_protocol_version(&v);
        }
        let (request, _) = self.up.post(initialized(), &MessageHeaders::default(), Some(&self.up.session()));
        match timeout_at(deadline, request.send()).await {
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("notifications/initialized: HTTP {}", r.status().as_u16())),
            _ => Err("notifications/initialized was not delivered".into()),
        }
    }

    /// Sends the client's `initialize` and `notifications/initialized` again, for a new session
    /// of the HTTP+SSE transport; their answers are dropped.
    pub(super) async fn replay_handshake(&self, limit: Duration) {
        let Some(line) = self.init_line() else { return };
        for body in [line, initialized()] {
            let (request, _) = self.up.post(body, &MessageHeaders::default(), None);
            match timeout(limit, request.send()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!("replaying the handshake failed: {}", self.up.send_error(&e).message),
                Err(_) => debug!("replaying the handshake timed out"),
            }
        }
    }
}

/// A token renewal going on, counted while it lives.
struct Renewing<'a>(&'a tokio::sync::watch::Sender<usize>);

impl<'a> Renewing<'a> {
    fn new(count: &'a tokio::sync::watch::Sender<usize>) -> Renewing<'a> {
        count.send_modify(|n| *n += 1);
        Renewing(count)
    }
}

impl Drop for Renewing<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn initialized() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
}

/// A new token after a refusal; an error if none can be had.
async fn renew_token(
    o: &OAuth,
    token: Option<&reqwest::header::HeaderValue>,
    challenge: Option<&Challenge>,
    how: Renew,
    limit: Duration,
    status: StatusCode,
) -> Result<bool, LocalError> {
    o.renew(token, challenge, how, limit).await.map_err(|e| {
        let mut err = LocalError::new(AUTH_ERROR, ErrorKind::AuthRejected, e.0);
        err.http_status = Some(status.as_u16());
        err.request_sent = Some(false);
        err
    })
}

/// The error for a request `--rate-limit` keeps back longer than `--max-wait`.
fn client_side_limited(reason: &str, wait: Duration, max: Duration) -> LocalError {
    let limit = reason.trim_start_matches("--rate-limit ");
    let message = match limit.strip_suffix("/day") {
        // Issue 11: a plan's daily budget, said the way the plan says it.
        Some(n) => format!(
            "daily limit of {n} spent; next request allowed in {} (--rate-limit {limit}): try again then",
            retry::human(wait)
        ),
        None => format!(
            "the client-side limit {limit} is used up; a slot frees in {}, longer than --max-wait {}: try again then, or raise the limit",
            retry::human(wait),
            retry::human(max)
        ),
    };
    let mut err = LocalError::new(RATE_LIMITED, ErrorKind::RateLimited, message);
    err.request_sent = Some(false);
    err.retry_after = Some(wait);
    err
}
