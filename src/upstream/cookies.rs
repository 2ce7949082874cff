//! Issue 25.6: the cookies of the MCP server's origin, for load balancers that pin a session to
//! one backend with a cookie (AWS ALB's `AWSALB`, nginx's `route`, …). Kept in memory only,
//! sent only to the MCP URL's own origin (the upstream client talks to no other: its redirects
//! stay on the origin, the HTTP+SSE endpoint must be on it, OAuth has a client of its own),
//! dropped with the MCP session, never logged (the header is sensitive and each value is a
//! secret the redaction knows).
//!
//! Only what that needs of RFC 6265: `name=value`, deletion by `Max-Age` ≤ 0 or an `Expires`
//! in the past, and `Secure` cookies refused from plain http. `Domain` and `Path` are not
//! needed: every request goes to the one endpoint. Bounded: [`MAX_COOKIES`] cookies of at most
//! [`MAX_COOKIE_BYTES`] each.

use std::time::SystemTime;

use reqwest::header::{HeaderMap, HeaderValue, SET_COOKIE};

/// The most cookies kept (RFC 6265 §6.1 asks for at least 50 per domain; one endpoint's load
/// balancer sets one or two).
pub const MAX_COOKIES: usize = 16;

/// The largest `name=value` kept (RFC 6265 §6.1: at least 4096 bytes).
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The cookies of one origin.
#[derive(Debug, Default)]
pub struct Jar {
    cookies: Vec<(String, String)>,
}

impl Jar {
    /// Takes the `Set-Cookie` headers of a response; returns whether the jar changed.
    pub fn take(&mut self, headers: &HeaderMap, https: bool, now: SystemTime) -> bool {
        let mut changed = false;
        for value in headers.get_all(SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            changed |= self.set(text, https, now);
        }
        changed
    }

    /// One `Set-Cookie` value.
    fn set(&mut self, text: &str, https: bool, now: SystemTime) -> bool {
        let mut parts = text.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { return false };
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) || !is_cookie_value(value) {
            return false;
        }
        let (mut gone, mut secure) = (false, false);
        for attr in parts {
            let (key, val) = attr.split_once('=').map_or((attr.trim(), ""), |(k, v)| (k.trim(), v.trim()));
            if key.eq_ignore_ascii_case("max-age") {
                gone |= val.parse::<i64>().is_ok_and(|s| s <= 0);
            } else if key.eq_ignore_ascii_case("expires") {
                gone |= httpdate::parse_http_date(val).is_ok_and(|t| t <= now);
            } else if key.eq_ignore_ascii_case("secure") {
                secure = true;
            }
        }
        if secure && !https {
            return false; // RFC 6265bis §5.7: not from an insecure origin
        }
        let before = self.cookies.len();
        let old = self.cookies.iter().position(|(n, _)| n == name);
        if gone {
            if let Some(at) = old {
                self.cookies.remove(at);
            }
            return self.cookies.len() != before;
        }
        if name.len() + value.len() + 1 > MAX_COOKIE_BYTES {
            return false;
        }
        match old {
            Some(at) if self.cookies[at].1 == value => false,
            Some(at) => {
                self.cookies[at].1 = value.to_owned();
                true
            }
            None if self.cookies.len() >= MAX_COOKIES => false,
            None => {
                self.cookies.push((name.to_owned(), value.to_owned()));
                true
            }
        }
    }

    /// The values, for the redaction.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.cookies.iter().map(|(_, v)| v.as_str())
    }

    /// The `Cookie` header to send (sensitive: never shown), if any cookie is kept.
    pub fn header(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let text: Vec<String> = self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut value = HeaderValue::from_str(&text.join("; ")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// RFC 6265 §4.1.1 `cookie-value`: cookie-octets, or the same in double quotes.
fn is_cookie_value(v: &str) -> bool {
    let inner = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    inner.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn jar(values: &[&str], https: bool) -> Jar {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        let mut jar = Jar::default();
        jar.take(&headers, https, SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        jar
    }

    fn sent(jar: &Jar) -> String {
        jar.header().map(|h| h.to_str().unwrap().to_owned()).unwrap_or_default()
    }

    #[test]
    fn an_alb_cookie_is_kept_and_sent() {
        let j = jar(
            &[
                "AWSALB=abc/DEF+ghi==; Expires=Thu, 14 Jan 2100 10:00:00 GMT; Path=/",
                "AWSALBCORS=abc/DEF+ghi==; Expires=Thu, 14 Jan 2100 10:00:00 GMT; Path=/; SameSite=None; Secure",
            ],
            true,
        );
        assert_eq!(sent(&j), "AWSALB=abc/DEF+ghi==; AWSALBCORS=abc/DEF+ghi==");
        assert!(j.header().unwrap().is_sensitive());
    }

    #[test]
    fn deletions_replacements_and_refusals() {
        let mut j = jar(&["a=1", "b=2", "c=3"], false);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut headers = HeaderMap::new();
        for v in ["a=; Max-Age=0", "b=22", "c=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "s=1; Secure"] {
            headers.append(SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        assert!(j.take(&headers, false, now));
        assert_eq!(sent(&j), "b=22", "a and c deleted, s refused over http");
        assert!(!j.take(&headers, false, now), "nothing new");
        for hostile in ["noequals", "=v", "bad name=v", "n=va lue", "n=\"q\"x;"] {
            assert_eq!(sent(&jar(&[hostile], true)), "", "{hostile}");
        }
    }

    #[test]
    fn the_jar_is_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("c{i}=v")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(jar(&refs, true).values().count(), MAX_COOKIES);
        let huge = format!("big={}", "x".repeat(MAX_COOKIE_BYTES));
        assert_eq!(jar(&[&huge, "small=1"], true).values().collect::<Vec<_>>(), ["1"]);
    }
}
