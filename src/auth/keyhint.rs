//! A 401 from a server that wants an API key, told apart from one that wants a sign-in
//! (issue 23.2): with no key set, a 401 used to lead into OAuth, whose registration the key
//! server then refused ("refused to register mcp-sidecar as a client … pass --client-id"),
//! sending a person who had only forgotten to export a key after client ids.
//!
//! A server is taken to want a key when it offers no OAuth at all (no `resource_metadata` in
//! its challenge, no protected-resource document, no authorization-server metadata on its
//! origin) and the body of its 401 speaks of a key. Anything else is left to the sign-in.

use url::Url;

use super::challenge::BearerChallenge;
use super::http::AuthHttp;
use super::metadata;
use crate::net::redact_url;

/// Whether a 401's body speaks of a key: a word `key`/`keys`/`apikey` in any case, whatever
/// joins it (`API key`, `api_key`, `X-API-Key`, `INVALID_API_KEY`).
pub fn speaks_of_a_key(body: &str) -> bool {
    body.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| ["key", "keys", "apikey", "apikeys"].iter().any(|k| w.eq_ignore_ascii_case(k)))
}

/// The error for a server that refused a request for want of a key (`said`: its message).
pub fn message(mcp: &Url, said: Option<&str>) -> String {
    let said = said.map(|s| format!(": {}", crate::net::cut(s, 120))).unwrap_or_default();
    format!(
        "{} wants an API key, not a sign-in (HTTP 401{said}; it offers no OAuth): export your key and name its variable with --api-key-env NAME (or use --preset for a known service)",
        mcp.host_str().unwrap_or("the server")
    )
}

/// Whether `mcp` wants a key rather than a sign-in: the error to give then. Any failure to
/// find out (the network, a malformed document) is `None`: the sign-in's own path reports it.
pub async fn wants_a_key(http: &AuthHttp, mcp: &Url, challenge: Option<&BearerChallenge>) -> Option<String> {
    if challenge.is_some_and(|c| c.resource_metadata.is_some()) {
        return None;
    }
    if !matches!(metadata::protected_resource(http, mcp, None).await, Ok(None)) {
        return None;
    }
    let probe = http.probe(mcp).await.ok()?;
    if probe.status != reqwest::StatusCode::UNAUTHORIZED || !speaks_of_a_key(&probe.body) {
        return None;
    }
    let mut origin = mcp.clone();
    origin.set_path("/");
    origin.set_query(None);
    if !matches!(metadata::authorization_server(http, &origin, true).await, Ok(None)) {
        return None;
    }
    tracing::debug!("{} offers no OAuth and its 401 speaks of a key", redact_url(mcp));
    Some(message(mcp, crate::net::server_message(probe.body.as_bytes()).as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue23_2_a_body_that_speaks_of_a_key() {
        for body in [
            r#"{"error":"unauthorized","message":"Invalid API key"}"#,
            r#"{"error":{"code":"UNAUTHORIZED","message":"Missing X-API-Key header"}}"#,
            r#"{"error":{"data":{"errorType":"INVALID_API_KEY"}}}"#,
            "apikey required",
            "no keys given",
        ] {
            assert!(speaks_of_a_key(body), "{body}");
        }
        for body in ["", "Unauthorized", r#"{"error":"invalid_token"}"#, "keycloak realm", "monkey business"]
        {
            assert!(!speaks_of_a_key(body), "{body}");
        }
    }

    #[test]
    fn issue23_2_the_message_names_the_flag() {
        let url = Url::parse("https://api.example.com/mcp").unwrap();
        let m = message(&url, Some("Invalid API key"));
        assert!(
            m.starts_with("api.example.com wants an API key, not a sign-in (HTTP 401: Invalid API key;"),
            "{m}"
        );
        assert!(m.contains("--api-key-env NAME") && m.contains("--preset"), "{m}");
    }
}
