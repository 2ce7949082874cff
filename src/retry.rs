//! How long to wait before sending again: the server's rate-limit headers, else backoff.
//!
//! [`server_wait`] reads every header form a server may use to say "not before" (§4.4 of the
//! requirements): `Retry-After` as delay-seconds or any of the three HTTP-date forms, computed
//! against the response's own `Date` so that clock skew cancels (R-02…R-04); the IETF `RateLimit`
//! field's `t` for an exhausted policy (R-11); `X-RateLimit-Reset-After`; and
//! `X-RateLimit-Reset`/`RateLimit-Reset` as epoch seconds, epoch milliseconds or delta seconds by
//! magnitude, or an HTTP-date, RFC 3339 time or Go duration. Names are case-insensitive; invalid
//! values are ignored, never fatal. [`RetryPolicy`] supplies the budget and, when no header
//! helps, exponential backoff with full jitter. This is the only module that uses `backon`.
//! Nothing here sleeps or sends: the caller waits, through the gate in [`crate::ratelimit`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};

pub use crate::config::RetryPolicy;
use crate::net::split_outside_quotes;

/// The longest header value parsed (rmcp keeps 128 bytes of Retry-After too).
const MAX_HEADER_BYTES: usize = 128;
pub use crate::cli::DEFAULT_MAX_RETRIES;
/// Default `--max-wait`: the longest single wait worth sitting through. Below the 60 s request
/// timeout of the reference SDKs (TypeScript `DEFAULT_REQUEST_TIMEOUT_MSEC`), with room for the
/// call itself.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(45);
/// The first backoff step when no header says how long to wait.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait any server header is taken to mean: a day, the longest window the vendors
/// document (Investra's daily quota). A longer value (`Retry-After: 31536000`, milliseconds
/// mistaken for seconds, a reset in the year 9999) is read as this. Together with the gate's
/// probe once a minute ([`crate::ratelimit`]), no single header can hold requests for longer than
/// the server itself keeps refusing them.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Jitter added after a server-given wait: at most this, and at most a tenth of the wait (R-13).
const MAX_JITTER: Duration = Duration::from_millis(500);

/// Which header a wait came from (for logs and errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    RetryAfter,
    RateLimit,
    ResetAfter,
    Reset,
    Backoff,
}

impl Source {
    /// The header's name as users see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::RetryAfter => "Retry-After",
            Source::RateLimit => "RateLimit",
            Source::ResetAfter => "X-RateLimit-Reset-After",
            Source::Reset => "X-RateLimit-Reset",
            Source::Backoff => "backoff",
        }
    }
}

/// A wait the server asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// How long, from when the response arrived.
    pub delay: Duration,
    /// Where it came from.
    pub source: Source,
}

/// The first valid value of a header, trimmed, if it is short enough to be sane.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty() && v.len() <= MAX_HEADER_BYTES).then_some(v)
}

/// The server's clock at the response (R-04). `Date` has whole seconds: when our clock agrees
/// with it to within that resolution (plus a second for the trip), ours is the more precise
/// reading of the same time; otherwise the clocks are skewed and `Date` is the server's truth.
fn server_now(headers: &HeaderMap, local_now: SystemTime) -> SystemTime {
    let date = headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    match date {
        Some(d)
            if local_now >= d && d.checked_add(Duration::from_secs(2)).is_some_and(|end| local_now < end) =>
        {
            local_now
        }
        Some(d) => d,
        None => local_now,
    }
}

/// How long after `now` the instant `at` is (zero if past).
fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Seconds as written by a server: non-negative, fractions allowed where `fractional`.
fn parse_secs(v: &str, fractional: bool) -> Option<Duration> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values instead of failing: they are "longer than anyone waits".
        return Some(v.parse::<u64>().map(Duration::from_secs).unwrap_or(Duration::MAX));
    }
    if !fractional || v.starts_with(['-', '+']) {
        return None;
    }
    let f: f64 = v.parse().ok()?;
    Duration::try_from_secs_f64(f).ok()
}

/// A wait from `Retry-After` (R-02): delay-seconds, or an HTTP-date against the server's `Date`.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if v.is_empty() || v.len() > MAX_HEADER_BYTES {
        return None;
    }
    if let Some(d) = parse_secs(v, false) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(until(at, server_now(headers, now)))
}

/// A wait from the IETF `RateLimit` field (R-11): the largest `t` among exhausted (`r=0`) items.
/// Also the pre-07 drafts' separate `RateLimit-Remaining: 0` with `RateLimit-Reset` (delta).
fn ratelimit_field(headers: &HeaderMap) -> Option<Duration> {
    if let Some(v) = headers.get("ratelimit").and_then(|v| v.to_str().ok()) {
        let mut wait: Option<u64> = None;
        for item in split_outside_quotes(v, ',') {
            let params = parse_params(item);
            let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            if get("r") == Some(0)
                && let Some(t) = get("t")
            {
                wait = Some(wait.map_or(t, |w| w.max(t)));
            }
        }
        if let Some(t) = wait {
            return Some(Duration::from_secs(t));
        }
    }
    None
}

/// The integer parameters of one structured-field item (`"name";r=0;t=30` → r, t); others skipped.
fn parse_params(item: &str) -> Vec<(&str, u64)> {
    split_outside_quotes(item, ';')
        .into_iter()
        .skip(1)
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((k.trim(), v.parse().ok()?))
        })
        .collect()
}

/// A reset value of unknown convention (§4.4 step 5): epoch nanoseconds, microseconds,
/// milliseconds or seconds, or delta seconds, by magnitude (now is about 1.8e18 ns, 1.8e15 µs,
/// 1.8e12 ms, 1.8e9 s); else an HTTP-date, an RFC 3339 time or a duration like `6m0s`. A moment
/// beyond what this platform's clock can hold (Windows' ends in 30828) is "very far away".
fn reset_value(v: &str, server_now: SystemTime) -> Option<Duration> {
    if let Some(d) = parse_secs(v, true) {
        let secs = d.as_secs_f64();
        let epoch = |per_second: f64| {
            Duration::try_from_secs_f64(secs / per_second)
                .ok()
                .and_then(|at| UNIX_EPOCH.checked_add(at))
                .map_or(Duration::MAX, |at| until(at, server_now))
        };
        return Some(if secs >= 1e18 {
            epoch(1e9)
        } else if secs >= 1e15 {
            epoch(1e6)
        } else if secs >= 1e12 {
            epoch(1e3)
        } else if secs >= 1e9 {
            epoch(1.0)
        } else {
            d
        });
    }
    if let Ok(at) = httpdate::parse_http_date(v) {
        return Some(until(at, server_now));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(v) {
        return Some(until(at, server_now));
    }
    humantime::parse_duration(v).ok()
}

/// Whether `X-RateLimit-Remaining` (or a variant) says the quota is spent, or is absent.
fn remaining(headers: &HeaderMap) -> Option<u64> {
    ["x-ratelimit-remaining", "x-rate-limit-remaining", "ratelimit-remaining"]
        .iter()
        .find_map(|n| header(headers, n))
        .and_then(|v| v.parse().ok())
}

/// The budget a response reports (issue 11): requests left in the current window, when the
/// window resets, and its size when said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Requests the window allows (`X-RateLimit-Limit`, the policy's `q`), when said.
    pub limit: Option<u64>,
    /// Requests left in it.
    pub remaining: u64,
    /// How long until it resets, from the response (at most [`MAX_SERVER_WAIT`]).
    pub resets_in: Duration,
    /// Which of the server's buckets it is (issue 21.2): the IETF policy's name, else
    /// `X-RateLimit-Resource`, else the limit, hashed ([`crate::stable_id::bucket_id`]); 0 when
    /// none is said.
    pub bucket: u64,
}

/// The budget a response reports, from `X-RateLimit-Remaining` with `-Reset` (and `-Limit`),
/// their `x-rate-limit-*` and `RateLimit-*` spellings, or the IETF `RateLimit` field (the item
/// with the fewest requests left) with `RateLimit-Policy` for its quota. `None` when no
/// remaining count and reset are given: then the gate behaves as without a budget.
pub fn budget(headers: &HeaderMap, local_now: SystemTime) -> Option<Budget> {
    if let Some(b) = ietf_budget(headers) {
        return Some(b);
    }
    let remaining = remaining(headers)?;
    let now = server_now(headers, local_now);
    let resets_in = ["x-ratelimit-reset", "x-rate-limit-reset", "ratelimit-reset"]
        .iter()
        .find_map(|n| header(headers, n))
        .and_then(|v| reset_value(v, now))?;
    let limit = ["x-ratelimit-limit", "x-rate-limit-limit", "ratelimit-limit"]
        .iter()
        .find_map(|n| header(headers, n))
        .and_then(|v| v.parse().ok());
    let bucket = match header(headers, "x-ratelimit-resource") {
        Some(resource) => crate::stable_id::bucket_id("resource", resource.as_bytes()),
        None => limit.map_or(0, |l: u64| crate::stable_id::bucket_id("limit", &l.to_le_bytes())),
    };
    Some(Budget { limit, remaining, resets_in: resets_in.min(MAX_SERVER_WAIT), bucket })
}

/// The IETF `RateLimit` field's most constrained item (`r`, `t`) and its policy's quota `q`.
fn ietf_budget(headers: &HeaderMap) -> Option<Budget> {
    let field = headers.get("ratelimit")?.to_str().ok()?;
    let mut best: Option<(String, u64, u64)> = None;
    for item in split_outside_quotes(field, ',') {
        let name = item.split(';').next().unwrap_or("").trim().trim_matches('"').to_owned();
        let params = parse_params(item);
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if let (Some(r), Some(t)) = (get("r"), get("t"))
            && best.as_ref().is_none_or(|(_, br, _)| r < *br)
        {
            best = Some((name, r, t));
        }
    }
    let (name, remaining, t) = best?;
    let limit = headers.get("ratelimit-policy").and_then(|v| v.to_str().ok()).and_then(|policy| {
        split_outside_quotes(policy, ',').into_iter().find_map(|item| {
            let n = item.split(';').next().unwrap_or("").trim().trim_matches('"');
            (n == name).then(|| parse_params(item).into_iter().find(|(k, _)| *k == "q").map(|(_, q)| q))?
        })
    });
    let bucket = crate::stable_id::bucket_id("policy", name.as_bytes());
    Some(Budget { limit, remaining, resets_in: Duration::from_secs(t).min(MAX_SERVER_WAIT), bucket })
}

/// Whether a response asks the client to come back later: a 429, or a 503 with `Retry-After`
/// (R-01, R-05). Such a request was not processed, so it may be sent again.
pub fn asks_to_wait(status: reqwest::StatusCode, headers: &HeaderMap) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && headers.contains_key(RETRY_AFTER))
}

/// The wait a 429 (or 503) response asks for, if any header says (§4.4 steps 2–6), at most
/// [`MAX_SERVER_WAIT`].
pub fn server_wait(headers: &HeaderMap, local_now: SystemTime) -> Option<Wait> {
    let now = server_now(headers, local_now);
    let found = retry_after(headers, local_now)
        .map(|d| (d, Source::RetryAfter))
        .or_else(|| ratelimit_field(headers).map(|d| (d, Source::RateLimit)))
        .or_else(|| {
            ["x-ratelimit-reset-after", "x-rate-limit-reset-after"]
                .iter()
                .find_map(|n| header(headers, n))
                .and_then(|v| parse_secs(v, true))
                .map(|d| (d, Source::ResetAfter))
        })
        .or_else(|| {
            // Only a spent quota's reset is a wait (GitHub's guidance, §4.3).
            if remaining(headers).is_some_and(|r| r > 0) {
                return None;
            }
            ["x-ratelimit-reset", "x-rate-limit-reset", "ratelimit-reset"]
                .iter()
                .find_map(|n| header(headers, n))
                .and_then(|v| reset_value(v, now))
                .map(|d| (d, Source::Reset))
        });
    found.map(|(delay, source)| Wait { delay: delay.min(MAX_SERVER_WAIT), source })
}

/// The rate-limit headers of a response, for `data.rateLimitHeaders` and logs.
pub fn rate_limit_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n == "retry-after" || n.contains("ratelimit") || n.contains("rate-limit")
        })
        .filter_map(|(n, v)| {
            Some((n.as_str().to_owned(), v.to_str().ok()?.chars().take(MAX_HEADER_BYTES).collect()))
        })
        .collect()
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: DEFAULT_MAX_RETRIES, max_wait: DEFAULT_MAX_WAIT }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (0-based) when no header helps: exponential
    /// from 1 s, capped at `max_wait`, with full jitter (uniform between zero and the step).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = backon::ExponentialBuilder::default()
            .with_min_delay(BACKOFF_BASE)
            .with_factor(2.0)
            .with_max_delay(self.max_wait)
            .with_max_times(attempt as usize + 1)
            .build()
            .nth(attempt as usize)
            .unwrap_or(self.max_wait);
        step.mul_f64(fastrand::f64())
    }

    /// A server-given wait plus a little jitter, never less than asked (R-02, R-13).
    pub fn with_jitter(&self, delay: Duration) -> Duration {
        with_jitter(delay)
    }
}

/// `delay` plus up to a tenth of it (at most 0.5 s), so that clients held to one deadline do not
/// all return at the same instant (R-13). Never shorter than `delay`.
pub fn with_jitter(delay: Duration) -> Duration {
    let cap = MAX_JITTER.min(delay / 10);
    delay.saturating_add(cap.mul_f64(fastrand::f64()))
}

/// The instant `d` from now. Timeouts come from flags (`--request-timeout 1e19`): when the
/// sum is past what the clock can hold, a century from now stands in for "never".
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86400))).unwrap_or(now)
}

/// "3 h 12 min", "45 s", "1.5 s": a wait for people.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d == Duration::MAX || s >= 100 * 86400 {
        "a very long time".into()
    } else if s >= 86400 {
        format!("{} d {} h", s / 86400, s % 86400 / 3600)
    } else if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else if s >= 120 {
        format!("{} min {} s", s / 60, s % 60)
    } else if d.subsec_millis() == 0 || s >= 10 {
        format!("{s} s")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// A fixed "now": 2026-11-22T12:00:00Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_348_800)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Milliseconds and source of a wait, as the tables below expect them.
    type Expected = Option<(u64, Source)>;

    fn wait(pairs: &[(&str, &str)]) -> Expected {
        server_wait(&headers(pairs), now()).map(|w| (w.delay.as_millis() as u64, w.source))
    }

    #[test]
    fn r02_retry_after_delay_seconds() {
        use Source::*;
        let table: &[(&[(&str, &str)], Expected)] = &[
            (&[("Retry-After", "120")], Some((120_000, RetryAfter))),
            (&[("retry-after", " 7 ")], Some((7_000, RetryAfter))),
            (&[("RETRY-AFTER", "0")], Some((0, RetryAfter))),
            // Invalid delay-seconds are ignored (R-02): fractions, signs, junk, empty.
            (&[("Retry-After", "1.5")], None),
            (&[("Retry-After", "-3")], None),
            (&[("Retry-After", "soon")], None),
            (&[("Retry-After", "")], None),
        ];
        for (h, expected) in table {
            assert_eq!(wait(h), *expected, "{h:?}");
        }
    }

    #[test]
    fn r02_huge_values_saturate_at_the_named_maximum_instead_of_failing() {
        let w = server_wait(&headers(&[("Retry-After", "99999999999999999999999")]), now()).unwrap();
        assert_eq!(w.delay, MAX_SERVER_WAIT);
        // Issue 10.1: a year, or milliseconds read as seconds (41 days), is at most a day.
        for v in ["31536000", "3600000"] {
            assert_eq!(
                wait(&[("Retry-After", v)]),
                Some((MAX_SERVER_WAIT.as_millis() as u64, Source::RetryAfter))
            );
        }
    }

    /// Issue 10.13: a reset in epoch microseconds or nanoseconds is read as such, and one beyond
    /// any clock's range (u64::MAX) is a capped wait, not a panic.
    #[test]
    fn epoch_micro_and_nanoseconds_and_the_end_of_time() {
        let at = 1_795_348_800u64 + 42;
        assert_eq!(
            wait(&[("X-RateLimit-Reset", &(at * 1_000_000).to_string())]),
            Some((42_000, Source::Reset))
        );
        assert_eq!(
            wait(&[("X-RateLimit-Reset", &(at as u128 * 1_000_000_000).to_string())]),
            Some((42_000, Source::Reset))
        );
        let capped = Some((MAX_SERVER_WAIT.as_millis() as u64, Source::Reset));
        assert_eq!(wait(&[("X-RateLimit-Reset", &u64::MAX.to_string())]), capped);
        assert_eq!(wait(&[("X-RateLimit-Reset", "Fri, 31 Dec 9999 23:59:59 GMT")]), capped);
        assert_eq!(wait(&[("X-RateLimit-Reset", "Thu, 01 Jan 1970 00:00:00 GMT")]), Some((0, Source::Reset)));
        assert_eq!(
            wait(&[
                ("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT"),
                ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")
            ]),
            Some((MAX_SERVER_WAIT.as_millis() as u64, Source::RetryAfter))
        );
    }

    #[test]
    fn r03_all_three_http_date_forms_against_the_servers_date() {
        // The server's clock is 10 s behind ours; its Retry-After is 30 s after its Date.
        let date = "Sun, 22 Nov 2026 11:59:50 GMT";
        for at in
            ["Sun, 22 Nov 2026 12:00:20 GMT", "Sunday, 22-Nov-26 12:00:20 GMT", "Sun Nov 22 12:00:20 2026"]
        {
            assert_eq!(
                wait(&[("Retry-After", at), ("Date", date)]),
                Some((30_000, Source::RetryAfter)),
                "{at}"
            );
        }
        // Without Date, our clock.
        assert_eq!(
            wait(&[("Retry-After", "Sun, 22 Nov 2026 12:00:20 GMT")]),
            Some((20_000, Source::RetryAfter))
        );
        // A past date means "now".
        assert_eq!(wait(&[("Retry-After", "Sun, 22 Nov 2026 11:00:00 GMT")]), Some((0, Source::RetryAfter)));
    }

    #[test]
    fn r11_ratelimit_field_takes_the_longest_exhausted_policy() {
        use Source::*;
        assert_eq!(wait(&[("RateLimit", r#""default";r=0;t=30"#)]), Some((30_000, RateLimit)));
        assert_eq!(
            wait(&[("RateLimit", r#""burst";r=0;t=5, "daily";r=0;t=3600"#)]),
            Some((3_600_000, RateLimit))
        );
        assert_eq!(wait(&[("ratelimit", r#""burst";r=3;t=5, "daily";r=0;t=60"#)]), Some((60_000, RateLimit)));
        // Not exhausted, or malformed: ignored (R-12).
        assert_eq!(wait(&[("RateLimit", r#""default";r=5;t=30"#)]), None);
        assert_eq!(wait(&[("RateLimit", r#""default";r=0;t=-1"#)]), None);
        assert_eq!(wait(&[("RateLimit", "garbage;;;")]), None);
        // A quoted name with separators inside does not confuse the split.
        assert_eq!(wait(&[("RateLimit", r#""a,b;c";r=0;t=9"#)]), Some((9_000, RateLimit)));
    }

    #[test]
    fn r12_retry_after_takes_precedence() {
        assert_eq!(
            wait(&[("RateLimit", r#""d";r=0;t=30"#), ("Retry-After", "5")]),
            Some((5_000, Source::RetryAfter))
        );
    }

    #[test]
    fn reset_after_and_reset_by_magnitude() {
        use Source::*;
        let epoch = 1_795_348_800u64;
        let table: Vec<(Vec<(&str, String)>, Expected)> = vec![
            (vec![("X-RateLimit-Reset-After", "2.5".into())], Some((2_500, ResetAfter))),
            (vec![("x-rate-limit-reset-after", "3".into())], Some((3_000, ResetAfter))),
            // Epoch seconds, epoch milliseconds, delta seconds.
            (vec![("X-RateLimit-Reset", (epoch + 42).to_string())], Some((42_000, Reset))),
            (vec![("X-RateLimit-Reset", ((epoch + 42) * 1000).to_string())], Some((42_000, Reset))),
            (vec![("X-RateLimit-Reset", "42".into())], Some((42_000, Reset))),
            (vec![("RateLimit-Reset", "17".into())], Some((17_000, Reset))),
            (vec![("X-Rate-Limit-Reset", "1.5".into())], Some((1_500, Reset))),
            // Past epoch: zero; a remaining quota means the reset is no wait.
            (vec![("X-RateLimit-Reset", (epoch - 100).to_string())], Some((0, Reset))),
            (vec![("X-RateLimit-Reset", "42".into()), ("X-RateLimit-Remaining", "5".into())], None),
            (
                vec![("X-RateLimit-Reset", "42".into()), ("X-RateLimit-Remaining", "0".into())],
                Some((42_000, Reset)),
            ),
            // Dates and durations.
            (vec![("X-RateLimit-Reset", "Sun, 22 Nov 2026 12:01:00 GMT".into())], Some((60_000, Reset))),
            (vec![("X-RateLimit-Reset", "2026-11-22T12:02:00Z".into())], Some((120_000, Reset))),
            (vec![("X-RateLimit-Reset", "6m0s".into())], Some((360_000, Reset))),
            (vec![("X-RateLimit-Reset", "12ms".into())], Some((12, Reset))),
            (vec![("X-RateLimit-Reset", "whenever".into())], None),
            (vec![("X-RateLimit-Reset", "-5".into())], None),
        ];
        for (h, expected) in table {
            let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(wait(&pairs), expected, "{h:?}");
        }
    }

    #[test]
    fn a_date_that_agrees_with_our_clock_does_not_cost_its_truncation() {
        // Our clock is 0.7 s past the server's whole-second Date: same clock, ours is finer.
        let local = now() + Duration::from_millis(700);
        let date = httpdate::fmt_http_date(now());
        let reset = ((1_795_348_800u64 + 2) * 1000).to_string();
        let w = server_wait(&headers(&[("X-RateLimit-Reset", &reset), ("Date", &date)]), local).unwrap();
        assert_eq!(w.delay, Duration::from_millis(1300));
    }

    #[test]
    fn epoch_reset_uses_the_servers_date() {
        let epoch = 1_795_348_800u64;
        // Server clock 100 s ahead of ours: reset 30 s after its now.
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(epoch + 100));
        let reset = (epoch + 130).to_string();
        assert_eq!(wait(&[("X-RateLimit-Reset", &reset), ("Date", &date)]), Some((30_000, Source::Reset)));
    }

    #[test]
    fn duplicate_and_oversized_fields() {
        // The first of duplicate fields wins; a value over the length bound is ignored.
        assert_eq!(wait(&[("Retry-After", "3"), ("Retry-After", "9")]), Some((3_000, Source::RetryAfter)));
        let long = "9".repeat(200);
        assert_eq!(wait(&[("Retry-After", &long)]), None);
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn budgets_from_every_header_family() {
        let b = |pairs: &[(&str, &str)]| budget(&headers(pairs), now());
        let limit = |l: u64| crate::stable_id::bucket_id("limit", &l.to_le_bytes());
        // Issue 21.2: the bucket a server names is told apart.
        let resource = b(&[
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "9"),
            ("X-RateLimit-Resource", "search"),
        ]);
        assert_eq!(resource.unwrap().bucket, crate::stable_id::bucket_id("resource", b"search"));
        let epoch = (1_795_348_800u64 + 30).to_string();
        assert_eq!(
            b(&[("X-RateLimit-Limit", "60"), ("X-RateLimit-Remaining", "7"), ("X-RateLimit-Reset", &epoch)]),
            Some(Budget {
                limit: Some(60),
                remaining: 7,
                resets_in: Duration::from_secs(30),
                bucket: limit(60)
            })
        );
        assert_eq!(
            b(&[("x-rate-limit-remaining", "0"), ("x-rate-limit-reset", "12")]),
            Some(Budget { limit: None, remaining: 0, resets_in: Duration::from_secs(12), bucket: 0 })
        );
        assert_eq!(
            b(&[("RateLimit-Limit", "100"), ("RateLimit-Remaining", "99"), ("RateLimit-Reset", "5")]),
            Some(Budget {
                limit: Some(100),
                remaining: 99,
                resets_in: Duration::from_secs(5),
                bucket: limit(100)
            })
        );
        assert_eq!(
            b(&[
                ("RateLimit", r#""burst";r=8;t=1, "day";r=3;t=3600"#),
                ("RateLimit-Policy", r#""burst";q=10;w=1, "day";q=1000;w=86400"#)
            ]),
            Some(Budget {
                limit: Some(1000),
                remaining: 3,
                resets_in: Duration::from_secs(3600),
                bucket: crate::stable_id::bucket_id("policy", b"day")
            })
        );
        assert_eq!(b(&[("X-RateLimit-Remaining", "7")]), None, "no reset: no budget");
        assert_eq!(b(&[("X-RateLimit-Reset", "7")]), None, "no remaining: no budget");
        assert_eq!(b(&[]), None);
        let far = b(&[("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "99999999999999")]).unwrap();
        assert!(far.resets_in <= MAX_SERVER_WAIT);
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let p = RetryPolicy { max_retries: 5, max_wait: Duration::from_secs(5) };
        for attempt in 0..6u32 {
            let cap = Duration::from_secs(1 << attempt).min(p.max_wait);
            for _ in 0..50 {
                assert!(p.backoff(attempt) <= cap, "attempt {attempt}");
            }
        }
    }

    #[test]
    fn jitter_never_shortens_a_server_wait() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let d = p.with_jitter(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2200), "{d:?}");
        }
    }

    #[test]
    fn human_waits() {
        assert_eq!(human(Duration::from_secs(11_520)), "3 h 12 min");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(300)), "5 min 0 s");
        assert_eq!(human(Duration::MAX), "a very long time");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_348_800)
    }

    proptest! {
        /// No header value, however odd, panics the parser or yields a wait from a field that
        /// is not a rate-limit field.
        #[test]
        fn any_header_value_is_safe(
            name in prop_oneof![Just("retry-after"), Just("ratelimit"), Just("x-ratelimit-reset"),
                Just("x-ratelimit-reset-after"), Just("ratelimit-reset"), Just("date"), Just("x-other")],
            value in "[ -~]{0,60}",
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
            let w = server_wait(&h, now());
            if name == "date" || name == "x-other" {
                prop_assert!(w.is_none());
            }
            let _ = budget(&h, now());
        }

        /// Delay-seconds are taken exactly; epoch seconds and milliseconds in the future mean
        /// the same wait.
        #[test]
        fn seconds_and_epochs_agree(secs in 0u64..10_000_000) {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
            let asked = Duration::from_secs(secs).min(MAX_SERVER_WAIT);
            prop_assert_eq!(server_wait(&h, now()).unwrap().delay, asked);
            let epoch = 1_795_348_800 + secs;
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-reset", HeaderValue::from(epoch));
            let by_s = server_wait(&h, now()).unwrap().delay;
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-reset", HeaderValue::from(epoch * 1000));
            let by_ms = server_wait(&h, now()).unwrap().delay;
            prop_assert_eq!(by_s, asked);
            prop_assert!(by_ms.abs_diff(by_s) < Duration::from_millis(2));
        }

        /// Issue 10.13: every rate-limit header, with any number up to u64::MAX in every unit
        /// a server may mean (seconds, fractions, milliseconds, microseconds, Go durations),
        /// any date from 1970 to 9999, against any clock and any `Date`: no panic, and never a
        /// wait beyond MAX_SERVER_WAIT.
        #[test]
        fn no_value_panics_or_waits_beyond_the_maximum(
            name in prop_oneof![Just("retry-after"), Just("x-ratelimit-reset"), Just("x-rate-limit-reset"),
                Just("ratelimit-reset"), Just("x-ratelimit-reset-after"), Just("ratelimit")],
            n in prop_oneof![any::<u64>(), 0u64..100_000, Just(u64::MAX), Just(u64::MAX / 1000)],
            form in 0usize..8,
            year in 1970u64..=9999,
            local in prop_oneof![Just(0u64), any::<u32>().prop_map(u64::from), Just(253_402_300_799u64)],
            date_header in any::<bool>(),
        ) {
            let value = match form {
                0 => n.to_string(),
                1 => format!("{n}.999"),
                2 => format!("{n}ms"),
                3 => format!("{n}us"),
                4 => format!("{n}h"),
                5 => format!("\"p\";r=0;t={n}"),
                6 => {
                    let at = UNIX_EPOCH + Duration::from_secs((year - 1970) * 31_556_952 % 253_402_300_800);
                    httpdate::fmt_http_date(at)
                }
                _ => format!("{year}-12-31T23:59:59Z"),
            };
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            if date_header {
                h.insert(reqwest::header::DATE, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            }
            let local_now = UNIX_EPOCH + Duration::from_secs(local);
            if let Some(w) = server_wait(&h, local_now) {
                prop_assert!(w.delay <= MAX_SERVER_WAIT, "{name}: {value} -> {:?}", w.delay);
            }
            if let Some(b) = budget(&h, local_now) {
                prop_assert!(b.resets_in <= MAX_SERVER_WAIT, "{name}: {value} -> {:?}", b.resets_in);
            }
        }
    }
}
