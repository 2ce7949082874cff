//! Where the OAuth metadata of an MCP server is, in the order the specification requires.
//!
//! Protected-resource metadata (RFC 9728, A-02): the `resource_metadata` URL of the challenge when
//! there is one; else the path-inserted well-known URL, then the root one. Authorization-server
//! metadata (RFC 8414 and OpenID Connect Discovery, A-05): for an issuer with a path, the
//! path-inserted OAuth URL, the path-inserted OIDC URL, then the path-appended OIDC URL; without
//! a path, the two root URLs. Nothing here fetches anything.

use url::Url;

/// The protected-resource metadata URLs to try for `mcp`, in order.
pub fn protected_resource_urls(mcp: &Url, challenge_url: Option<&str>) -> Vec<Url> {
    if let Some(u) = challenge_url.and_then(|u| mcp.join(u).ok()) {
        return vec![u];
    }
    let path = mcp.path().trim_matches('/');
    let mut urls = Vec::new();
    if !path.is_empty()
        && let Ok(u) = origin(mcp).join(&format!("/.well-known/oauth-protected-resource/{path}"))
    {
        urls.push(u);
    }
    if let Ok(u) = origin(mcp).join("/.well-known/oauth-protected-resource") {
        urls.push(u);
    }
    urls
}

/// The authorization-server metadata URLs to try for `issuer`, in order.
pub fn authorization_server_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_matches('/');
    let base = origin(issuer);
    let candidates: Vec<String> = if path.is_empty() {
        vec!["/.well-known/oauth-authorization-server".into(), "/.well-known/openid-configuration".into()]
    } else {
        vec![
            format!("/.well-known/oauth-authorization-server/{path}"),
            format!("/.well-known/openid-configuration/{path}"),
            format!("/{path}/.well-known/openid-configuration"),
        ]
    };
    candidates.iter().filter_map(|c| base.join(c).ok()).collect()
}

/// Whether a protected resource's `resource` may be used for requests to `mcp`: the same
/// origin, and a path that is a prefix of ours at a segment boundary (what the reference SDK
/// accepts; RFC 9728 §3.3 asks for identity, which rejects servers that name their origin).
pub fn resource_allowed(resource: &str, mcp: &Url) -> bool {
    let Ok(resource) = Url::parse(resource) else { return false };
    if resource.origin() != mcp.origin() {
        return false;
    }
    let theirs = resource.path().trim_end_matches('/');
    let ours = mcp.path().trim_end_matches('/');
    ours == theirs || ours.starts_with(&format!("{theirs}/")) || theirs.is_empty()
}

/// The canonical URI of the MCP server for RFC 8707 `resource`: no fragment, no query, no
/// trailing slash (unless the path is only `/`).
pub fn canonical_resource(mcp: &Url) -> String {
    let mut u = mcp.clone();
    u.set_fragment(None);
    u.set_query(None);
    u.to_string().trim_end_matches('/').to_owned()
}

fn origin(u: &Url) -> Url {
    let mut o = u.clone();
    o.set_path("/");
    o.set_query(None);
    o.set_fragment(None);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn strings(urls: Vec<Url>) -> Vec<String> {
        urls.into_iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn a02_challenge_url_first_then_path_inserted_then_root() {
        let mcp = url("https://mcp.example.com/api/mcp");
        assert_eq!(
            strings(protected_resource_urls(&mcp, Some("https://mcp.example.com/prm"))),
            ["https://mcp.example.com/prm"]
        );
        assert_eq!(
            strings(protected_resource_urls(&mcp, None)),
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/api/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource"
            ]
        );
        // A server at the root has no path-inserted form.
        assert_eq!(
            strings(protected_resource_urls(&url("https://h:8443/"), None)),
            ["https://h:8443/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn a05_issuer_with_and_without_path() {
        assert_eq!(
            strings(authorization_server_urls(&url("https://auth.example.com/tenant1"))),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            strings(authorization_server_urls(&url("https://auth.example.com"))),
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn a04_resource_must_be_ours() {
        let mcp = url("https://mcp.example.com/api/mcp");
        assert!(resource_allowed("https://mcp.example.com/api/mcp", &mcp));
        assert!(resource_allowed("https://mcp.example.com/api", &mcp));
        assert!(resource_allowed("https://mcp.example.com", &mcp), "the conformance suite's root resource");
        assert!(!resource_allowed("https://evil.example.com/mcp", &mcp), "auth/resource-mismatch");
        assert!(!resource_allowed("https://mcp.example.com/ap", &mcp), "a prefix, but not a path segment");
        assert!(!resource_allowed("http://mcp.example.com/api/mcp", &mcp), "another scheme");
        assert!(!resource_allowed("not a url", &mcp));
    }

    #[test]
    fn canonical_resource_drops_query_fragment_and_trailing_slash() {
        assert_eq!(
            canonical_resource(&url("https://MCP.example.com/mcp/?x=1#f")),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(canonical_resource(&url("https://mcp.example.com")), "https://mcp.example.com");
    }
}
