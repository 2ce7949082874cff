//! Sign-in without a browser (issue 14): which grant, the client's proof of identity at the
//! token endpoint, and the token endpoint itself (with DPoP proofs and nonce retries).
//!
//! - Client credentials (RFC 6749 §4.4, SEP-1046): the client's secret (`client_secret_basic`
//!   or `client_secret_post`, as the metadata offers) or a signed assertion (`private_key_jwt`,
//!   RFC 7523 §2.2) from `--client-key-file`.
//! - Workload identity (SEP-1933): a CI job's OIDC token as the assertion of the JWT bearer
//!   grant (RFC 7523 §2.1), read from a file or a variable at each renewal.
//! - Enterprise-managed (SEP-990): the user's ID token exchanged at the enterprise IdP for an
//!   identity assertion grant (RFC 8693, `id-jag`), which the MCP server's authorization server
//!   takes in the JWT bearer grant.
//! - The device authorization grant (RFC 8628) lives in `super` (it talks to the user).

use base64::Engine;
use jsonwebtoken::Header;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::common::AuthError;
use super::dpop::Dpop;
use super::http::{AuthHttp, HttpError};
use crate::net::{DPOP, DPOP_NONCE};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub use crate::config::auth::{Assertion, Enterprise, Grant};
pub use crate::keyfile::ClientKey;

impl Assertion {
    /// The token, off the runtime's thread for a file.
    pub async fn read(&self) -> Result<SecretString, AuthError> {
        match self {
            Assertion::Env(_, v) => Ok(v.clone()),
            Assertion::File(path) => {
                let p = path.clone();
                let text = super::common::off_thread(move || {
                    std::fs::read_to_string(&p).map_err(|e| {
                        AuthError(format!(
                            "the identity token file {} cannot be read ({e}): check the path your CI platform writes it to",
                            p.display()
                        ))
                    })
                })
                .await?;
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(AuthError(format!(
                        "the identity token file {} is empty: check that the job requests an OIDC token",
                        path.display()
                    )));
                }
                crate::secrets::remember_as(crate::secrets::Slot::IdentityToken, &token);
                Ok(SecretString::from(token))
            }
        }
    }
}

impl ClientKey {
    /// A client assertion (RFC 7523 §3): `iss` and `sub` the client, `aud` the authorization
    /// server's issuer (SEP-1046), five minutes of life, a fresh `jti`.
    pub fn sign(&self, client_id: &str, audience: &str) -> Result<String, AuthError> {
        let now = super::common::now();
        let claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "iat": now, "exp": now.saturating_add(300), "jti": super::dpop::random_id(),
        });
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key).map_err(|e| {
            AuthError(format!("could not sign the client assertion with --client-key-file ({e})"))
        })
    }
}

/// How the client proves itself at a token endpoint.
pub enum ClientAuth<'a> {
    /// A public client: its id in the body, if it has one.
    None(Option<&'a str>),
    Basic(&'a str, &'a SecretString),
    Post(&'a str, &'a SecretString),
    /// `private_key_jwt`, with the audience of the assertion.
    Jwt(&'a str, &'a ClientKey, &'a str),
}

/// A token endpoint's answer (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Deserialize)]
pub struct Answer {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Why a token request failed.
pub enum Refused {
    /// The server said no (RFC 6749 §5.2): its error code and what it said, cleaned.
    Server { error: String, said: String },
    /// It could not be asked, or its answer makes no sense.
    Failed(AuthError),
}

impl Refused {
    /// The server's words, for an error message: `invalid_client: bad secret`.
    pub fn text(&self) -> String {
        match self {
            Refused::Server { error, said } if said.is_empty() => error.clone(),
            Refused::Server { error, said } => format!("{error}: {said}"),
            Refused::Failed(e) => e.0.clone(),
        }
    }
}

/// The token endpoint's HTTP client for the [`oauth2`] crate and for the grants here: a
/// DPoP proof on each request when there is a key, and one retry with the nonce a
/// `use_dpop_nonce` answer asks for (RFC 9449 §8).
pub struct Via<'a> {
    pub http: &'a AuthHttp,
    pub dpop: Option<&'a Dpop>,
}

impl Via<'_> {
    pub async fn send(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let Some(dpop) = self.dpop else { return self.http.oauth2(request).await };
        let url = Url::parse(&request.uri().to_string())
            .map_err(|e| HttpError(format!("the token endpoint is not a URL ({e})")))?;
        let method = request.method().as_str().to_owned();
        let mut retried = false;
        loop {
            let mut attempt = request.clone();
            let proof = dpop.proof(&method, &url, None).map_err(|e| HttpError(e.0))?;
            let value = HeaderValue::from_str(&proof).map_err(|_| HttpError("bad DPoP proof".into()))?;
            attempt.headers_mut().insert(DPOP.clone(), value);
            let response = self.http.oauth2(attempt).await?;
            let nonce = response.headers().get(&DPOP_NONCE).and_then(|v| v.to_str().ok());
            if let Some(nonce) = nonce {
                dpop.set_nonce(&url, nonce);
            }
            let asks_nonce = nonce.is_some()
                && response.status().is_client_error()
                && serde_json::from_slice::<ErrorBody>(response.body())
                    .is_ok_and(|b| b.error == "use_dpop_nonce");
            if asks_nonce && !retried {
                retried = true;
                continue;
            }
            return Ok(response);
        }
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for Via<'_> {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// One token request: `form` plus the client's authentication, POSTed to `endpoint`.
pub async fn request(
    via: &Via<'_>,
    endpoint: &str,
    mut form: Vec<(&str, String)>,
    auth: ClientAuth<'_>,
) -> Result<Answer, Refused> {
    let failed = |m: String| Refused::Failed(AuthError(m));
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(endpoint)
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    match auth {
        ClientAuth::None(id) => form.extend(id.map(|id| ("client_id", id.to_owned()))),
        ClientAuth::Basic(id, secret) => {
            // RFC 6749 §2.3.1: both form-encoded, then base64.
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(id),
                enc(secret.expose_secret())
            ));
            let mut v = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|_| failed("the client secret cannot be sent in a header".into()))?;
            v.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, v);
        }
        ClientAuth::Post(id, secret) => {
            form.push(("client_id", id.to_owned()));
            form.push(("client_secret", secret.expose_secret().to_owned()));
        }
        ClientAuth::Jwt(id, key, audience) => {
            let assertion = key.sign(id, audience).map_err(Refused::Failed)?;
            crate::secrets::remember_as(crate::secrets::Slot::Assertion, &assertion);
            form.push(("client_id", id.to_owned()));
            form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
            form.push(("client_assertion", assertion));
        }
    }
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let request = builder
        .body(body.into_bytes())
        .map_err(|e| failed(format!("the token request could not be built ({e})")))?;
    let response = via.send(request).await.map_err(|e| failed(e.0))?;
    let status = response.status();
    if status.is_success() {
        let answer: Answer = serde_json::from_slice(response.body()).map_err(|_| {
            failed(format!("{endpoint} answered something that is not an OAuth token response"))
        })?;
        if answer.access_token.is_empty() {
            return Err(failed(format!("{endpoint} answered an empty access token")));
        }
        crate::secrets::remember_as(crate::secrets::Slot::AccessToken, &answer.access_token);
        if let Some(r) = &answer.refresh_token {
            crate::secrets::remember_as(crate::secrets::Slot::RefreshToken, r);
        }
        return Ok(answer);
    }
    match serde_json::from_slice::<ErrorBody>(response.body()) {
        Ok(b) => Err(Refused::Server {
            error: super::common::clean(&b.error),
            said: b.error_description.as_deref().map(super::common::clean).unwrap_or_default(),
        }),
        Err(_) => Err(failed(format!("{endpoint} answered HTTP {}", status.as_u16()))),
    }
}

/// RFC 8693 at the enterprise IdP: the user's ID token for an identity assertion grant
/// (`id-jag`) addressed to `audience` (the authorization server's issuer) for `resource`.
pub async fn exchange_id_token(
    via: &Via<'_>,
    e: &Enterprise,
    audience: &str,
    resource: Option<&str>,
    scope: Option<&str>,
) -> Result<SecretString, AuthError> {
    let id_token = e.id_token.read().await?;
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE.to_owned()),
        ("requested_token_type", ID_JAG.to_owned()),
        ("audience", audience.to_owned()),
        ("subject_token", id_token.expose_secret().to_owned()),
        ("subject_token_type", ID_TOKEN.to_owned()),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource.to_owned()));
    }
    if let Some(s) = scope {
        form.push(("scope", s.to_owned()));
    }
    let auth = match &e.idp_client_secret {
        Some(secret) => ClientAuth::Basic(&e.idp_client_id, secret),
        None => ClientAuth::None(Some(&e.idp_client_id)),
    };
    // The IdP is not the resource's authorization server: no DPoP key goes there.
    let plain = Via { http: via.http, dpop: None };
    let answer = request(&plain, e.idp_token_endpoint.as_str(), form, auth).await.map_err(|r| {
        AuthError(format!(
            "the identity provider {} refused to exchange the ID token ({}): sign in to your identity provider again for a fresh ID token",
            crate::net::redact_url(&e.idp_token_endpoint),
            r.text()
        ))
    })?;
    Ok(SecretString::from(answer.access_token))
}
