//! Small helpers about URLs, HTTP errors and what servers say, shared by the mechanisms (issue
//! 22: they lived in `config` and `upstream`, which tied `auth` and `config` into import
//! circles). A leaf: it imports nothing of the crate.

use std::error::Error as _;

use reqwest::header::HeaderName;
use url::{Host, Url};

/// RFC 9449 §4.1: the proof of possession of a DPoP-bound token (issue 14).
pub static DPOP: HeaderName = HeaderName::from_static("dpop");
/// RFC 9449 §8, §9: the nonce a server wants in the next proofs.
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// How much server-provided text goes into one error message.
const MAX_SERVER_TEXT: usize = 300;

/// Whether the URL's host is this machine.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL's host and, when it names one, its port, as a person reads them ("127.0.0.1:8931").
pub fn host_and_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("the server");
    url.port().map_or_else(|| host.to_owned(), |p| format!("{host}:{p}"))
}

/// A URL fit for logs and messages: no user info, no query, no fragment.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The human part of an error body: JSON `error.message` (+ `error.data.message`), `message`,
/// `error` (string), or the first line of a text body; cut short.
pub fn server_message(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let err = v.get("error");
            let msg = err
                .and_then(|e| e.get("message"))
                .or_else(|| v.get("message"))
                .or(err.filter(|e| e.is_string()))
                .and_then(|m| m.as_str());
            let detail =
                err.and_then(|e| e.get("data")).and_then(|d| d.get("message")).and_then(|m| m.as_str());
            match (msg, detail) {
                (Some(m), Some(d)) if m != d => format!("{m} ({d})"),
                (Some(m), _) => m.to_owned(),
                (None, Some(d)) => d.to_owned(),
                (None, None) => return None,
            }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty())?.to_owned();
            if line.starts_with('<') {
                // An HTML error page says nothing useful in one line.
                return None;
            }
            line
        }
    };
    Some(cut(&text, MAX_SERVER_TEXT))
}

/// Cuts `text` to at most `max` characters, marking the cut.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// The causes of an error, innermost last, without the URL reqwest likes to include.
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    // Keep the most specific causes; the outer ones repeat them.
    let n = parts.len();
    parts[n.saturating_sub(2)..].join(": ")
}

/// Splits a header value on `sep` outside quoted strings (backslash escapes honoured inside),
/// trimming each part: structured-field lists, auth-params.
pub fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(s[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}
