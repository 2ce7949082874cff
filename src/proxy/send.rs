//! The send path of one message: the rate-limit gate, waiting out 429s, retrying only what
//! provably was not processed, and the errors for requests a rate limit keeps back.

use super::*;
use crate::ratelimit::Use;

tokio::task_local! {
    /// What the requests sent by this task are for, when not a client's request: the
    /// `subscriptions/listen` stream of the bridge runs under [`Use::Background`] (issue 21.4).
    pub(super) static USAGE: Use;
}

impl Proxy {
    /// Sends one POST: through the rate-limit gate, waiting out 429s (and 503s with Retry-After)
    /// as the server asks, and sending again only what provably was not processed (a refused
    /// connection, a 429; RFC 9110 §9.2.2, R-05). Returns the response, whether it carried the
    /// session id, and the deadline for reading it.
    pub(super) async fn send(
        self: &Arc<Self>,
        body: &Bytes,
        headers: &MessageHeaders,
        initialize: bool,
        limit: Duration,
        what: &str,
    ) -> Result<(reqwest::Response, bool, Instant), LocalError> {
        let mut retries = 0u32;
        let mut renewals = 0u32;
        let (mut sign_ins, mut authorizations) = (0u32, 0u32);
        let mut nonce_retried = false;
        loop {
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
            let session = if initialize { None } else { Some(self.up.session()) };
            let (request, sent_session) = self.up.post(body.clone(), headers, session.as_ref());
            // The timeout measures the server, not the time spent waiting for the gate.
            let deadline = retry::deadline_after(limit);
            let response = match timeout_at(deadline, request.send()).await {
                Err(_) => {
                    // Issue 21.5: no answer will give the unit back; it is given back now.
                    self.gate.answered(&admitted, None).await;
                    return Err(self.up.timeout_error(limit));
                }
                Ok(Err(e)) => {
                    self.gate.answered(&admitted, None).await;
                    let err = self.up.send_error(&e);
                    if err.request_sent == Some(false)
                        && !Upstream::is_tls_failure(&e)
                        && retries < self.policy.max_retries
                    {
                        let wait = self.policy.backoff(retries);
                        retries += 1;
                        self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
                        info!(
                            "{what}: {}; trying again in {} ({retries} of {})",
                            err.message,
                            retry::human(wait),
                            self.policy.max_retries
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(err);
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            // Issue 11: what the answer says of the server's budget (and the unit this request
            // took from it) goes back to the gate, whatever the status.
            self.answered(&admitted, response.headers()).await;
            // Issue 14: a DPoP nonce the server hands out goes into the next proofs; a 401
            // `use_dpop_nonce` (RFC 9449 §9) was not processed: once more with it.
            let nonce_given = oauth.is_some_and(|o| {
                let nonce = response.headers().get(&crate::net::DPOP_NONCE);
                nonce.and_then(|n| n.to_str().ok()).is_some_and(|n| o.dpop_nonce(response.url(), n))
            });
            // Issue 5: a refused token is renewed (stored, refreshed, or a new sign-in) and the
            // request sent again: a 401 or 403 means it was not processed.
            if let Some(o) = oauth
                && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            {
                let values: Vec<&str> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let challenge = crate::auth::challenge::bearer(&values);
                if nonce_given
                    && !nonce_retried
                    && challenge.as_ref().and_then(|c| c.error.as_deref()) == Some("use_dpop_nonce")
                {
                    nonce_retried = true;
                    drop(response);
                    continue;
                }
                let step_up = status == StatusCode::FORBIDDEN
                    && challenge.as_ref().and_then(|c| c.error.as_deref()) == Some("insufficient_scope");
                let refused = status == StatusCode::UNAUTHORIZED && (challenge.is_some() || o.explicit());
                let how = if step_up && authorizations < MAX_AUTHORIZATIONS {
                    Some(Renew::StepUp)
                } else if refused && sign_ins < MAX_SIGN_INS {
                    sign_ins += 1;
                    Some(Renew::Refused)
                } else {
                    None
                };
                if let Some(how) = how {
                    drop(response);
                    let signed_in = Box::pin(o.renew(token.as_ref(), challenge.as_ref(), how, limit))
                        .await
                        .map_err(|e| {
                        let mut err = LocalError::new(AUTH_ERROR, ErrorKind::AuthRejected, e.0);
                        err.http_status = Some(status.as_u16());
                        err.request_sent = Some(false);
                        err
                    })?;
                    if signed_in {
                        authorizations += 1;
                        sign_ins = MAX_SIGN_INS; // a fresh sign-in that is refused is not retried
                    }
                    continue;
                }
            }
            // T-12: a 404 for a request that carried the session id means the session is gone.
            // A request in flight may meet several expiries under load; a server that drops
            // every new session must not make it loop, hence the bound.
            if status == StatusCode::NOT_FOUND
                && renewals < MAX_RENEWALS
                && let Some(expired) = session.as_ref().and_then(|s| s.id.clone())
                && self.init_line.locked().is_some()
            {
                drop(response);
                if Box::pin(self.renew_session(&expired, limit)).await? {
                    renewals += 1;
                }
                continue;
            }
            let limited = retry::asks_to_wait(status, response.headers());
            if !limited {
                if status.is_success() {
                    // Issue 10.1: an answer to a request sent after a deadline was set lifts it.
                    self.gate.succeeded(&admitted).await;
                }
                if status.is_success() && self.record_limits.load(Ordering::Relaxed) {
                    let seen = retry::rate_limit_headers(response.headers());
                    if !seen.is_empty() {
                        *self.seen_limit_headers.locked() = seen;
                    }
                }
                return Ok((response, sent_session, deadline));
            }
            self.gate.stats.limited.fetch_add(1, Ordering::Relaxed);
            debug!(status = status.as_u16(), what, "the server asks to wait");
            let resp_headers = response.headers().clone();
            *self.last_limit_headers.locked() = retry::rate_limit_headers(&resp_headers);
            let asked = retry::server_wait(&resp_headers, SystemTime::now());
            let wait = match asked {
                Some(w) => self.policy.with_jitter(w.delay),
                None => self.policy.backoff(retries),
            };
            let source = asked.map_or(retry::Source::Backoff, |w| w.source);
            if let Some(w) = asked {
                // Whatever happens to this request, the others wait for the same deadline.
                Box::pin(self.gate.block_for(w.delay, source.as_str(), Some(&admitted))).await;
            }
            if wait > self.policy.max_wait || retries >= self.policy.max_retries {
                let body = read_body(response, MAX_ERROR_BODY_BYTES, deadline).await.unwrap_or_default();
                let over_cap = wait > self.policy.max_wait;
                return Err(self.rate_limited(
                    Some((status, &body)),
                    wait,
                    source.as_str(),
                    over_cap,
                    retries,
                    false,
                ));
            }
            if asked.is_none() {
                Box::pin(self.gate.block_for(wait, source.as_str(), Some(&admitted))).await;
            }
            drop(response);
            retries += 1;
            self.gate.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives the gate what an answer says of the server's budget, and the unit the request took
    /// from it (issue 11); a spent budget's headers are kept for the error that may follow.
    pub(super) async fn answered(
        &self,
        admitted: &crate::ratelimit::Admission<'_>,
        headers: &reqwest::header::HeaderMap,
    ) {
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
    pub(super) async fn admit(
        &self,
        what: &str,
        route: u64,
    ) -> Result<crate::ratelimit::Admission<'_>, LocalError> {
        let max = self.policy.max_wait;
        let usage = USAGE.try_with(|u| *u).unwrap_or(Use::Request);
        self.gate
            .admit_route(max, usage, route, |wait, why| match self.wait_observer.get() {
                Some(observe) => observe(wait, why),
                None => info!("{what}: waiting {} for the rate limit ({why})", retry::human(wait)),
            })
            .await
            .map_err(|b| {
                if b.client_side {
                    let limit = b.reason.trim_start_matches("--rate-limit ");
                    let message = match limit.strip_suffix("/day") {
                        // Issue 11: a plan's daily budget, said the way the plan says it.
                        Some(n) => format!(
                            "daily limit of {n} spent; next request allowed in {} (--rate-limit {limit}): try again then",
                            retry::human(b.wait)
                        ),
                        None => format!(
                            "the client-side limit {limit} is used up; a slot frees in {}, longer than --max-wait {}: try again then, or raise the limit",
                            retry::human(b.wait),
                            retry::human(max)
                        ),
                    };
                    let mut err = LocalError::new(RATE_LIMITED, ErrorKind::RateLimited, message);
                    err.request_sent = Some(false);
                    err.retry_after = Some(b.wait);
                    err
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
        let message = if held {
            format!(
                "rate limit reached at {host}; {resets}, longer than --max-wait {}: try again then{sooner}",
                retry::human(self.policy.max_wait)
            )
        } else if over_cap {
            format!(
                "rate limit reached at {host}{status}; {resets}, longer than --max-wait {}, so the request was not sent again: try again then{sooner}",
                retry::human(self.policy.max_wait)
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
}
