//! Every secret this process holds, so that none is ever shown (issue 10.9).
//!
//! The API key, the values `${VAR}` put into headers and a client secret are [`remember`]ed as
//! soon as the process has them; OAuth access and refresh tokens, assertions, identity tokens, a
//! registered client's secret and the DPoP key by [`remember_as`], the newest of each kind. Whatever text a server
//! sends back (error bodies, `error_description`s) passes [`redact`] before it becomes an error
//! message, `data.serverBody` or a log line; the log writer redacts every line as a last guard.
//! Matching is by value, so a server that echoes a token in any shape of body is caught.
//! Messages forwarded between client and server are not touched (their bytes are the protocol).

use std::borrow::Cow;
use std::sync::RwLock;

use crate::sync::ReadWrite;

/// Values shorter than this are not treated as secrets: redacting a two-digit tenant id from
/// every message would garble them and protect nothing.
pub const MIN_SECRET_CHARS: usize = 6;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// A kind of secret that a newer one replaces (issue 21.11: every token renewal, assertion and
/// identity-token re-read added a value, so the list grew for the life of the process and each
/// log line was scanned against all of them). The superseded value is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    AccessToken,
    RefreshToken,
    IdentityToken,
    Assertion,
    ClientSecret,
    DpopKey,
    /// The server's cookies (issue 25.6), by their place in the jar.
    Cookie(u8),
}

/// The secrets: those of the configuration (a fixed few), the latest of each [`Slot`], and the
/// matcher built from them at each change, longest first (a secret that contains another is
/// replaced whole).
struct Known {
    fixed: Vec<String>,
    slots: Vec<(Slot, String)>,
    finders: Vec<(memchr::memmem::Finder<'static>, String)>,
}

impl Known {
    fn rebuild(&mut self) {
        let mut all: Vec<&String> = self.fixed.iter().chain(self.slots.iter().map(|(_, s)| s)).collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        self.finders = all
            .into_iter()
            .map(|s| (memchr::memmem::Finder::new(s.as_bytes()).into_owned(), s.clone()))
            .collect();
    }
}

static KNOWN: RwLock<Known> =
    RwLock::new(Known { fixed: Vec::new(), slots: Vec::new(), finders: Vec::new() });

/// Adds `secret` to what is never shown, for the life of the process (the configuration's: the
/// key, `${VAR}` header values, a client secret from the environment).
pub fn remember(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS || KNOWN.reading().fixed.iter().any(|s| s == secret) {
        return;
    }
    let mut known = KNOWN.writing();
    if !known.fixed.iter().any(|s| s == secret) {
        known.fixed.push(secret.to_owned());
        known.rebuild();
    }
}

/// Makes `secret` the one of its kind never shown; the one it replaces is forgotten.
pub fn remember_as(slot: Slot, secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS
        || KNOWN.reading().slots.iter().any(|(k, s)| *k == slot && s == secret)
    {
        return;
    }
    let mut known = KNOWN.writing();
    known.slots.retain(|(k, _)| *k != slot);
    known.slots.push((slot, secret.to_owned()));
    known.rebuild();
}

/// `text` with every known secret, and every JWT, replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.reading();
    let jwt = text.contains(JWT_START);
    if !jwt && !known.finders.iter().any(|(f, _)| f.find(text.as_bytes()).is_some()) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for (finder, s) in known.finders.iter() {
        if finder.find(out.as_bytes()).is_some() {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    if jwt {
        out = without_jwts(&out);
    }
    if out == text { Cow::Borrowed(text) } else { Cow::Owned(out) }
}

/// How a JWT's base64url header (`{"`) begins.
const JWT_START: &str = "eyJ";

/// Issue 14: JWTs by their shape (`eyJ…`.`…`.`…`): a DPoP proof is new for every request, and
/// an identity token or assertion a server echoes may never have been [`remember`]ed, so none
/// is shown whether known or not.
fn without_jwts(text: &str) -> String {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = text[i..].find(JWT_START) {
        let start = i + found;
        let run = |from: usize| from + bytes[from..].iter().take_while(|c| b64(**c)).count();
        let header_end = run(start);
        let boundary = start == 0 || !b64(bytes[start - 1]);
        let claims_end = (bytes.get(header_end) == Some(&b'.')).then(|| run(header_end + 1));
        let end = claims_end
            .filter(|&c| c > header_end + 1 && bytes.get(c) == Some(&b'.'))
            .map(|c| run(c + 1))
            .filter(|_| boundary && header_end - start >= 10);
        match end {
            Some(end) => {
                out.push_str(&text[i..start]);
                out.push_str(REDACTED);
                i = end;
            }
            None => {
                out.push_str(&text[i..start + JWT_START.len()]);
                i = start + JWT_START.len();
            }
        }
    }
    out.push_str(&text[i..]);
    out
}

/// A JSON value with every known secret redacted inside its strings (and keys), and nowhere else:
/// a secret of digits (a `${VAR}` header value) must not cut a number in two (issue 21.1).
pub fn redact_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => match redact(&s) {
            Cow::Owned(clean) => Value::String(clean),
            Cow::Borrowed(_) => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(redact_json).collect()),
        Value::Object(members) => Value::Object(
            members.into_iter().map(|(k, v)| (redact(&k).into_owned(), redact_json(v))).collect(),
        ),
        other => other,
    }
}

/// A JSON text with every known secret redacted inside its strings; `None` when it holds none
/// (the text is then used as it is, byte for byte) or is not JSON.
pub fn redact_json_text(text: &str) -> Option<String> {
    if let Cow::Borrowed(_) = redact(text) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(redact_json(value).to_string())
}

/// A writer for log lines that redacts each write (the log formatter writes an event at once).
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf).map(redact) {
            Ok(Cow::Owned(clean)) => self.0.write_all(clean.as_bytes()).map(|()| buf.len()),
            _ => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a JWT (a DPoP proof, an assertion) is redacted by its shape, known or not;
    /// text that only resembles one is left alone.
    #[test]
    fn jwts_are_redacted_by_their_shape() {
        let jwt = "eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJodG0iOiJQT1NUIn0.c2lnbmF0dXJl-_x";
        assert_eq!(redact(&format!("invalid proof {jwt}, try again")), "invalid proof [redacted], try again");
        assert_eq!(redact(&format!("DPoP: {jwt}\n{jwt}")), "DPoP: [redacted]\n[redacted]");
        assert_eq!(redact("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), "[redacted]", "unsigned too");
        for harmless in
            ["keyJam.x.y", "eyJ", "eyJ0eXAiOiJKV1Qi only", "eyJ0eXAiOiJKV1Qi.", "eyJ0eXAiOiJKV1Qi..x"]
        {
            assert_eq!(redact(harmless), harmless);
        }
        assert_eq!(redact("é eyJ0eXAiOiJKV1QiLCJh.e30.sig é"), "é [redacted] é");
    }

    /// Issue 21.11: a renewed secret replaces the one of its kind (the list no longer grows with
    /// every renewal), and what is known is still redacted wherever it appears.
    #[test]
    fn a_renewed_secret_replaces_the_one_of_its_kind() {
        for n in 0..1000 {
            remember_as(Slot::Assertion, &format!("assertion-SECRET-{n:04}"));
        }
        let known = KNOWN.reading();
        let assertions = known.slots.iter().filter(|(k, _)| *k == Slot::Assertion).count();
        assert_eq!(assertions, 1);
        assert!(known.finders.len() <= known.fixed.len() + known.slots.len());
        drop(known);
        assert_eq!(redact("x assertion-SECRET-0999 y"), "x [redacted] y");
        assert_eq!(redact("x assertion-SECRET-0998 y"), "x assertion-SECRET-0998 y", "superseded: forgotten");
    }

    #[test]
    fn known_secrets_are_replaced_wherever_they_appear() {
        remember("tok-SECRET-redaction-test-1");
        remember("tok-SECRET-redaction-test-1-and-more");
        remember("short");
        let text = "a tok-SECRET-redaction-test-1-and-more b tok-SECRET-redaction-test-1 c short";
        assert_eq!(redact(text), "a [redacted] b [redacted] c short");
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        let v = serde_json::json!({"echo": "Bearer tok-SECRET-redaction-test-1", "n": 1});
        assert_eq!(redact_json(v), serde_json::json!({"echo": "Bearer [redacted]", "n": 1}));
        let mut out = Vec::new();
        std::io::Write::write_all(&mut RedactingWriter(&mut out), b"WARN x tok-SECRET-redaction-test-1\n")
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "WARN x [redacted]\n");
    }
}
