//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1) and the Bearer parameters MCP uses (A-10).
//!
//! A header may hold several challenges, and commas separate both challenges and their
//! parameters; quoted strings may contain commas (the TypeScript SDK sends
//! `error_description="Invalid Authorization header format, expected 'Bearer TOKEN'"`). So the
//! value is split on commas outside quotes, and an item that starts with `token SP` opens a new
//! challenge. Parsing is lenient: what cannot be read is skipped, never fatal.

use crate::net::split_outside_quotes;

/// One challenge: its scheme (lowercase) and its parameters (names lowercase, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
    /// A token68 credential hint instead of parameters, if that is what was sent.
    pub token68: Option<String>,
}

impl Challenge {
    /// A parameter's value, by case-insensitive name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a `Bearer` challenge tells an MCP client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    /// RFC 9728 §5.1: where the protected-resource metadata is.
    pub resource_metadata: Option<String>,
    /// RFC 6750 §3: the scopes this request needs.
    pub scope: Option<String>,
    /// `invalid_token`, `insufficient_scope`, …
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Parses every challenge in the given header values.
pub fn parse(values: &[&str]) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for value in values {
        for item in split_outside_quotes(value, ',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match starts_challenge(item) {
                Some((scheme, rest)) => {
                    let mut challenge =
                        Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new(), token68: None };
                    let rest = rest.trim();
                    if is_token68(rest) {
                        challenge.token68 = Some(rest.to_owned());
                    } else if let Some(p) = param(rest) {
                        challenge.params.push(p);
                    }
                    out.push(challenge);
                }
                None => {
                    if let (Some(p), Some(current)) = (param(item), out.last_mut()) {
                        current.params.push(p);
                    }
                }
            }
        }
    }
    out
}

/// The first `Bearer` (or `DPoP`, RFC 9449 §7.1: the same parameters) challenge's MCP
/// parameters, if there is one.
pub fn bearer(values: &[&str]) -> Option<BearerChallenge> {
    let c = parse(values).into_iter().find(|c| c.scheme == "bearer" || c.scheme == "dpop")?;
    let get = |n: &str| c.param(n).map(str::to_owned);
    Some(BearerChallenge {
        resource_metadata: get("resource_metadata"),
        scope: get("scope"),
        error: get("error"),
        error_description: get("error_description"),
    })
}

/// RFC 9110 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.chars().all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `scheme SP rest` or a lone `scheme`: the start of a new challenge.
fn starts_challenge(item: &str) -> Option<(&str, &str)> {
    let end = item.find(|c: char| !is_token_char(c)).unwrap_or(item.len());
    if end == 0 {
        return None;
    }
    let (scheme, rest) = item.split_at(end);
    if rest.is_empty() {
        return Some((scheme, rest));
    }
    // `name=value` (possibly with spaces around `=`) is a parameter, not a scheme.
    if rest.trim_start().starts_with('=') && !rest.trim_start().trim_start_matches('=').is_empty() {
        return None;
    }
    rest.starts_with([' ', '\t']).then_some((scheme, rest))
}

/// `name = value` with a token or quoted-string value.
fn param(item: &str) -> Option<(String, String)> {
    let (name, value) = item.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(is_token_char) {
        return None;
    }
    let value = value.trim();
    let value = match value.strip_prefix('"') {
        Some(quoted) => {
            let mut out = String::new();
            let mut chars = quoted.chars();
            loop {
                match chars.next()? {
                    '\\' => out.push(chars.next()?),
                    '"' => break,
                    c => out.push(c),
                }
            }
            out
        }
        None => value.to_owned(),
    };
    Some((name.to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a10_bearer_parameters_in_any_order() {
        let c = bearer(&[r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", scope="files:read""#])
            .unwrap();
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(c.scope.as_deref(), Some("files:read"));
        let c = bearer(&[r#"Bearer scope="mcp:write", resource_metadata="http://localhost:9/x", error="insufficient_scope""#]).unwrap();
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(c.scope.as_deref(), Some("mcp:write"));
    }

    #[test]
    fn a10_commas_inside_quoted_strings_do_not_split() {
        let v = r#"Bearer error="invalid_token", error_description="Invalid Authorization header format, expected 'Bearer TOKEN'", resource_metadata="https://h/prm""#;
        let c = bearer(&[v]).unwrap();
        assert_eq!(
            c.error_description.as_deref(),
            Some("Invalid Authorization header format, expected 'Bearer TOKEN'")
        );
        assert_eq!(c.resource_metadata.as_deref(), Some("https://h/prm"));
    }

    #[test]
    fn several_challenges_and_header_values() {
        let all = parse(&[r#"Basic realm="x", Bearer realm="y", scope=a"#, "DPoP algs=\"ES256\""]);
        let schemes: Vec<&str> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "dpop"]);
        assert_eq!(all[1].param("REALM"), Some("y"));
        assert_eq!(all[1].param("scope"), Some("a"));
        assert_eq!(bearer(&[r#"Basic realm="x""#]), None);
        assert_eq!(parse(&["Bearer"]).len(), 1);
        assert_eq!(parse(&["Negotiate abc123=="])[0].token68.as_deref(), Some("abc123=="));
    }

    #[test]
    fn escapes_and_junk_are_survivable() {
        let c = bearer(&[r#"Bearer scope="a \"quoted\" b""#]).unwrap();
        assert_eq!(c.scope.as_deref(), Some(r#"a "quoted" b"#));
        for junk in ["", ",,,", "=\"", "Bearer scope=\"unterminated", "\"", "Bearer ,, scope = x"] {
            let _ = parse(&[junk]);
        }
        assert_eq!(bearer(&["Bearer ,, scope = x"]).unwrap().scope.as_deref(), Some("x"));
    }
}
