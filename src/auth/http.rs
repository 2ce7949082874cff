//! The HTTP client of the sign-in: metadata, registration and token requests.
//!
//! It follows no redirect (a token endpoint that redirects is an SSRF hole; metadata that moves
//! is read from where the specification says, not from where a server points), sends no MCP
//! credential, and waits out 429s (and 503s with `Retry-After`) exactly as the proxy does
//! (issue 5 §6): as long as the server asks, at most `--max-retries` times, never longer than
//! `--max-wait` at once. It is also the [`oauth2`] crate's HTTP client (crates.md §5.1).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::de::DeserializeOwned;
use tracing::info;
use url::Url;

use super::common::AuthError;
use crate::config::Config;
use crate::config::RetryPolicy;
use crate::net::redact_url;
use crate::retry;

/// How long one sign-in request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest metadata or token response read.
const MAX_BODY: usize = 256 * 1024;

/// The sign-in's HTTP client, built on first use: most runs never sign in, and building one
/// loads the system's CA store (milliseconds of startup). Requests to loopback addresses go
/// through a second client that never uses a proxy (issue 10.7).
pub struct AuthHttp {
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    direct: std::sync::OnceLock<Result<reqwest::Client, String>>,
    connect_timeout: Duration,
    ca_certs: Vec<reqwest::Certificate>,
    /// Issue 25.3: offered to a token endpoint that asks for a client certificate.
    client_cert: Option<std::sync::Arc<crate::clientcert::ClientCert>>,
    policy: RetryPolicy,
}

/// What a metadata fetch found.
pub enum Fetched<T> {
    Found(T),
    /// 4xx or a body that is not the document: try the next location.
    Missing(String),
}

/// What the MCP endpoint answered a request without credentials.
pub struct Probe {
    pub status: StatusCode,
    /// The `WWW-Authenticate` values.
    pub challenges: Vec<String>,
    /// The body's text (up to the largest document read).
    pub body: String,
}

/// The transport error the [`oauth2`] crate sees (its message is already for people).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

impl AuthHttp {
    /// The client for `config`'s TLS settings and timeouts (not built yet).
    pub fn new(config: &Config) -> Self {
        AuthHttp {
            client: std::sync::OnceLock::new(),
            direct: std::sync::OnceLock::new(),
            connect_timeout: config.connect_timeout,
            ca_certs: config.ca_certs.clone(),
            client_cert: config.client_cert.clone(),
            policy: config.retry.clone(),
        }
    }

    /// The client that builds requests (any of the two does).
    fn client(&self) -> Result<&reqwest::Client, AuthError> {
        self.build(&self.client, false)
    }

    /// The client that sends to `url`: without a proxy when it is loopback.
    fn client_for(&self, url: &Url) -> Result<&reqwest::Client, AuthError> {
        if crate::net::is_loopback(url) { self.build(&self.direct, true) } else { self.client() }
    }

    fn build<'a>(
        &self,
        slot: &'a std::sync::OnceLock<Result<reqwest::Client, String>>,
        direct: bool,
    ) -> Result<&'a reqwest::Client, AuthError> {
        slot.get_or_init(|| {
            let builder = reqwest::Client::builder();
            let mut builder = if direct { builder.no_proxy() } else { builder };
            if let Some(cert) = &self.client_cert {
                builder = builder.identity(cert.identity().map_err(|e| e.to_string())?);
            }
            builder
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(self.connect_timeout)
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("mcp-sidecar/", env!("CARGO_PKG_VERSION")))
                .tls_certs_merge(self.ca_certs.iter().cloned())
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| AuthError(format!("could not set up the sign-in HTTP client: {e}")))
    }

    /// Sends `request`, waiting out rate limits; the final response, whatever its status.
    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, AuthError> {
        let shown = redact_url(request.url());
        let mut tries = 0;
        loop {
            let Some(attempt) = request.try_clone() else {
                return Err(AuthError(format!("the request to {shown} cannot be sent (streamed body)")));
            };
            let response = self.client_for(attempt.url())?.execute(attempt).await.map_err(|e| {
                AuthError(format!(
                    "the sign-in request to {shown} failed ({}): check the network and the server's address",
                    crate::net::error_chain(&e)
                ))
            })?;
            let status = response.status();
            let limited = retry::asks_to_wait(status, response.headers());
            if !limited {
                return Ok(response);
            }
            let wait = match retry::server_wait(response.headers(), SystemTime::now()) {
                Some(w) => self.policy.with_jitter(w.delay),
                None => self.policy.backoff(tries),
            };
            if tries >= self.policy.max_retries || wait > self.policy.max_wait {
                return Err(AuthError(format!(
                    "{shown} keeps answering HTTP {} (rate limited; it asks to wait {}): try again later",
                    status.as_u16(),
                    retry::human(wait)
                )));
            }
            tries += 1;
            info!("sign-in: {shown} is rate limited; waiting {}", retry::human(wait));
            tokio::time::sleep(wait).await;
        }
    }

    /// GETs a JSON metadata document. `Missing` for a 4xx or a body that is not JSON of the
    /// expected shape; an error for anything that means the server is broken or unreachable.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<Fetched<T>, AuthError> {
        let request = self
            .client()?
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .build()
            .map_err(|e| AuthError(format!("{} is not a usable URL ({e})", redact_url(url))))?;
        let response = self.execute(request).await?;
        let status = response.status();
        if status.is_client_error() || status.is_redirection() {
            return Ok(Fetched::Missing(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(AuthError(format!(
                "{} answered HTTP {}: the server's sign-in is not working; try again later",
                redact_url(url),
                status.as_u16()
            )));
        }
        let body = read_limited(response).await?;
        Ok(match serde_json::from_slice(&body) {
            Ok(doc) => Fetched::Found(doc),
            Err(e) => Fetched::Missing(format!("not the expected JSON ({e})")),
        })
    }

    /// POSTs JSON and returns status and body (dynamic registration).
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, Vec<u8>), AuthError> {
        let request = self
            .client()?
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default())
            .build()
            .map_err(|e| AuthError(format!("{} is not a usable URL ({e})", redact_url(url))))?;
        let response = self.execute(request).await?;
        let status = response.status();
        Ok((status, read_limited(response).await?))
    }

    /// POSTs an `initialize` without a credential to see whether `mcp` asks for a sign-in;
    /// returns the status and the `WWW-Authenticate` values.
    pub async fn probe(&self, mcp: &Url) -> Result<Probe, AuthError> {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": "mcp-sidecar-login", "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "mcp-sidecar", "version": env!("CARGO_PKG_VERSION")}}
        });
        let request = self
            .client()?
            .post(mcp.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .build()
            .map_err(|e| AuthError(format!("{} is not a usable URL ({e})", redact_url(mcp))))?;
        let response = self.execute(request).await?;
        let values = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let status = response.status();
        // What the server said (a key's refusal reads differently from a sign-in's request,
        // issue 23.2); a body too long to be a message is no message.
        let body = read_limited(response).await.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(Probe { status, challenges: values, body: body.unwrap_or_default() })
    }

    /// The [`oauth2`] crate's HTTP client.
    pub async fn oauth2(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request)
            .map_err(|e| HttpError(format!("the token request could not be built ({e})")))?;
        let response = self.execute(request).await.map_err(|e| HttpError(e.0))?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = read_limited(response).await.map_err(|e| HttpError(e.0))?;
        builder.body(body).map_err(|e| HttpError(format!("the token response could not be read ({e})")))
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for AuthHttp {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.oauth2(request))
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, AuthError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(AuthError(format!(
                        "{} sent more than {} KiB; that is not an OAuth document",
                        redact_url(response.url()),
                        MAX_BODY / 1024
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(AuthError(format!(
                    "reading the answer of {} failed ({})",
                    redact_url(response.url()),
                    crate::net::error_chain(&e)
                )));
            }
        }
    }
}
