//! Finding the authorization server of an MCP server: protected-resource metadata (RFC 9728,
//! A-02…A-04), then the authorization server's metadata (RFC 8414 / OpenID Connect Discovery,
//! A-05…A-08), each checked before it is used.

use serde::Deserialize;
use tracing::{debug, warn};
use url::Url;

use crate::config::auth::Resource;

use super::common::AuthError;
use super::discovery::{
    authorization_server_urls, canonical_resource, protected_resource_urls, resource_allowed,
};
use super::http::{AuthHttp, Fetched};
use crate::net::redact_url;

/// RFC 9728 protected-resource metadata (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct ProtectedResource {
    pub resource: Option<String>,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Option<Vec<String>>,
}

/// RFC 8414 authorization-server metadata (the fields used).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuthServer {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub registration_endpoint: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    pub code_challenge_methods_supported: Option<Vec<String>>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    /// RFC 8628 §4: where device codes are issued.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// RFC 9449 §5.1: DPoP is offered with these algorithms.
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// What discovery found for one MCP server.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The RFC 8707 `resource` value: the PRM's `resource`, else our canonical URL;
    /// `--oauth-resource` instead, none with `--no-resource-indicator` (issue 25.1).
    pub resource: Option<String>,
    /// The PRM's `scopes_supported`, if a PRM was found.
    pub scopes_supported: Option<Vec<String>>,
    pub server: AuthServer,
    /// Whether the metadata came from the server (`false`: the 2025-03-26 default endpoints).
    pub from_metadata: bool,
}

/// Runs discovery for `mcp`, starting from the challenge's `resource_metadata` when given.
pub async fn discover(
    http: &AuthHttp,
    mcp: &Url,
    resource_metadata: Option<&str>,
    knob: &Resource,
) -> Result<Discovered, AuthError> {
    let prm = protected_resource(http, mcp, resource_metadata).await?;
    let legacy = prm.is_none();
    let (issuer, resource, scopes_supported) = match prm {
        Some(prm) => {
            let Some(first) = prm.authorization_servers.first() else {
                return Err(AuthError(format!(
                    "the protected-resource metadata of {} names no authorization server: the server's sign-in is misconfigured",
                    redact_url(mcp)
                )));
            };
            let issuer = Url::parse(first).map_err(|_| {
                AuthError(format!(
                    "the authorization server {first:?} named by {} is not a URL",
                    redact_url(mcp)
                ))
            })?;
            let resource = prm.resource.clone().unwrap_or_else(|| canonical_resource(mcp));
            (issuer, resource, prm.scopes_supported)
        }
        None => {
            // 2025-03-26 servers have no PRM; the authorization base URL is the origin.
            let mut base = mcp.clone();
            base.set_path("/");
            base.set_query(None);
            base.set_fragment(None);
            (base, canonical_resource(mcp), None)
        }
    };
    check_url(&issuer)?;
    let resource = match knob {
        Resource::Discovered => Some(resource),
        Resource::Given(given) => Some(given.clone()),
        Resource::Omitted => None,
    };
    match authorization_server(http, &issuer, legacy).await? {
        Some(server) => Ok(Discovered { resource, scopes_supported, server, from_metadata: true }),
        None if legacy => {
            // A-08 fallback: the default endpoints at the authorization base URL.
            let at = |p: &str| issuer.join(p).map(|u| u.to_string()).ok();
            debug!(
                "no authorization-server metadata at {}; using /authorize, /token, /register",
                redact_url(&issuer)
            );
            let server = AuthServer {
                issuer: issuer.as_str().trim_end_matches('/').to_owned(),
                authorization_endpoint: at("/authorize"),
                token_endpoint: at("/token"),
                registration_endpoint: at("/register"),
                ..AuthServer::default()
            };
            Ok(Discovered { resource, scopes_supported, server, from_metadata: false })
        }
        None => Err(AuthError(format!(
            "the authorization server {} publishes no OAuth metadata: the server's sign-in is misconfigured",
            redact_url(&issuer)
        ))),
    }
}

/// the first protected-resource metadata found, validated; `None` if there is none.
pub(super) async fn protected_resource(
    http: &AuthHttp,
    mcp: &Url,
    resource_metadata: Option<&str>,
) -> Result<Option<ProtectedResource>, AuthError> {
    // Issue 10.11: the challenge may name any URL; one that is neither on the server's own
    // origin nor https (say another port of 127.0.0.1) would make us send a blind request to a
    // local service. It is ignored, and the well-known locations are used instead.
    let resource_metadata = resource_metadata.filter(|u| {
        let allowed = resource_metadata_allowed(u, mcp);
        if !allowed {
            warn!(
                "the server's challenge names resource metadata at {}, which is neither on its own origin nor https: ignored",
                mcp.join(u).map_or_else(|_| "an invalid URL".to_owned(), |u| redact_url(&u))
            );
        }
        allowed
    });
    for url in protected_resource_urls(mcp, resource_metadata) {
        check_url(&url)?;
        match http.get_json::<ProtectedResource>(&url).await? {
            Fetched::Found(prm) => {
                if let Some(resource) = &prm.resource
                    && !resource_allowed(resource, mcp)
                {
                    return Err(AuthError(format!(
                        "the server's protected-resource metadata is for {resource}, not {}: refusing to sign in, since a token for it could be misused",
                        redact_url(mcp)
                    )));
                }
                debug!("protected-resource metadata from {}", redact_url(&url));
                return Ok(Some(prm));
            }
            Fetched::Missing(why) => debug!("no protected-resource metadata at {} ({why})", redact_url(&url)),
        }
    }
    Ok(None)
}

/// Whether a challenge's `resource_metadata` may be fetched for `mcp`: same origin, or https.
pub fn resource_metadata_allowed(url: &str, mcp: &Url) -> bool {
    mcp.join(url).is_ok_and(|u| u.origin() == mcp.origin() || u.scheme() == "https")
}

/// the first authorization-server metadata found, validated. `legacy`: the
/// 2025-03-26 fallback (no protected-resource metadata; the MCP origin is the authorization
/// base), where an `issuer` with a path on that same origin is accepted with a warning (servers
/// of that era often put their OAuth routes under a prefix such as `/oauth`).
pub(super) async fn authorization_server(
    http: &AuthHttp,
    issuer: &Url,
    legacy: bool,
) -> Result<Option<AuthServer>, AuthError> {
    let expected = issuer.as_str().trim_end_matches('/');
    for url in authorization_server_urls(issuer) {
        match http.get_json::<AuthServer>(&url).await? {
            Fetched::Found(server) => {
                let same_origin = Url::parse(&server.issuer).is_ok_and(|u| u.origin() == issuer.origin());
                if legacy && server.issuer.trim_end_matches('/') != expected && same_origin {
                    warn!(
                        "the authorization server's metadata at {} names the issuer {:?} on the same origin (a 2025-03-26 server without protected-resource metadata): using it",
                        redact_url(&url),
                        server.issuer
                    );
                } else if server.issuer.trim_end_matches('/') != expected {
                    // the metadata must be about the issuer it was looked up for.
                    return Err(AuthError(format!(
                        "the authorization server's metadata at {} names the issuer {:?}, not {expected:?}: refusing to sign in there",
                        redact_url(&url),
                        server.issuer
                    )));
                }
                for endpoint in [
                    &server.authorization_endpoint,
                    &server.token_endpoint,
                    &server.registration_endpoint,
                    &server.device_authorization_endpoint,
                ]
                .into_iter()
                .flatten()
                {
                    check_url(&Url::parse(endpoint).map_err(|_| {
                        AuthError(format!("the authorization server's endpoint {endpoint:?} is not a URL"))
                    })?)?;
                }
                debug!("authorization-server metadata from {}", redact_url(&url));
                return Ok(Some(server));
            }
            Fetched::Missing(why) => {
                debug!("no authorization-server metadata at {} ({why})", redact_url(&url))
            }
        }
    }
    Ok(None)
}

/// the authorization-code grant needs PKCE with S256, or there is no sign-in (the
/// grants without a redirect have no code to protect; issue 14). Checked for metadata the
/// server published (the 2025-03-26 defaults have none to check).
pub fn check_pkce(d: &Discovered) -> Result<(), AuthError> {
    let s256 =
        d.server.code_challenge_methods_supported.as_ref().is_some_and(|m| m.iter().any(|m| m == "S256"));
    if d.from_metadata && !s256 {
        return Err(AuthError(format!(
            "the authorization server {} does not advertise PKCE with S256 (code_challenge_methods_supported), which OAuth 2.1 requires: refusing to sign in; ask the server's operator to enable it",
            d.server.issuer
        )));
    }
    Ok(())
}

/// OAuth URLs are https, or http on a loopback host.
pub fn check_url(url: &Url) -> Result<(), AuthError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if crate::net::is_loopback(url) => Ok(()),
        _ => Err(AuthError(format!(
            "the sign-in URL {} is not https: refusing to send credentials over it",
            redact_url(url)
        ))),
    }
}
