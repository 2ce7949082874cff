//! OAuth 2.1 sign-in for MCP servers that require it (issue 5; requirement ids A-xx).
//!
//! [`OAuth`] holds the access token the proxy sends and renews it when the server refuses it:
//! from the token store when another process already renewed it, by refreshing it, or by a
//! browser sign-in (discovery → client identity → PKCE authorization → code exchange). One
//! renewal runs at a time per process (a mutex) and per server across processes (a lock file in
//! the store), so a client that starts five sidecars gets one browser tab, and the others pick
//! up its tokens.
//!
//! - [`challenge`]: `WWW-Authenticate` parsed as RFC 9110 auth-params (A-10).
//! - [`discovery`] and [`metadata`]: where the metadata is (A-02, A-05), fetching and checking it.
//! - [`http`]: the sign-in's own HTTP client (no redirects, 429s waited out).
//! - [`callback`] and [`browser`]: the loopback redirect listener and `$BROWSER`.
//! - [`store`]: the token files (one per server, 0700/0600, atomic, exposed files refused).

pub mod browser;
pub mod callback;
pub mod challenge;
mod common;
pub mod discovery;
pub mod dpop;
pub mod grants;
pub mod http;
mod keyhint;
pub mod metadata;
pub mod store;

use std::io::IsTerminal;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use oauth2::basic::BasicErrorResponseType;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    PkceCodeChallenge, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};
use url::Url;

use crate::net::redact_url;
use crate::sync::ReadWrite;
use challenge::BearerChallenge;
use dpop::Dpop;
use grants::{ClientAuth, Grant, Via};
use metadata::{AuthServer, Discovered};
use store::{Client, Entry, Lock, TokenAuth, TokenStore, Tokens};

/// Tokens expiring within this margin are refreshed before use.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The client name registered with authorization servers.
const CLIENT_NAME: &str = "mcp-sidecar";

pub use crate::config::auth::Settings;
pub use common::AuthError;
use common::{clean, now, off_thread};

/// What [`OAuth::renew`] is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    /// The token was refused (401): a newer stored one, a refresh, or a sign-in.
    Refused,
    /// The token lacks a scope (403 `insufficient_scope`, A-12): a sign-in for more scopes.
    StepUp,
    /// `mcp-sidecar login`: a sign-in, whatever is stored.
    Login,
    /// The token expires soon: a newer stored one or a refresh, never a sign-in.
    Ahead,
}

/// The token in use.
#[derive(Default)]
struct Current {
    header: Option<HeaderValue>,
    expires_at: Option<u64>,
    issued_at: Option<u64>,
    has_refresh: bool,
}

/// The sign-in state of one MCP server.
pub struct OAuth {
    http: http::AuthHttp,
    mcp: Url,
    origin: String,
    key: String,
    store: TokenStore,
    settings: Settings,
    current: RwLock<Current>,
    /// Serializes renewals in this process; holds the scopes asked for so far (A-12 union).
    flow: tokio::sync::Mutex<Option<String>>,
    /// The DPoP key, once the authorization server asked for bound tokens (RFC 9449).
    dpop: RwLock<Option<Arc<Dpop>>>,
    /// What discovery found, for a machine grant's renewals: a renewal ahead of expiry has no
    /// challenge to name the metadata, and needs no new discovery.
    known: std::sync::Mutex<Option<Discovered>>,
    /// Where a machine grant's authorization server is pinned at first sight (issue 21.8).
    issuer_pin: std::path::PathBuf,
    /// Issue 25.1: a token answer carried an ID token that is not the bearer (a 401 then
    /// suggests `--use-id-token`).
    id_token_unused: std::sync::atomic::AtomicBool,
}

impl OAuth {
    /// Sets up sign-in for `config`'s server, with what the store holds. The store (a file, or
    /// the OS keyring, which may wait for the user to unlock it) is read off the runtime's
    /// thread (issue 10.14).
    pub async fn open(config: &crate::config::Config, settings: Settings) -> Result<OAuth, AuthError> {
        let state_dir = config.state_dir.clone().ok_or_else(|| {
            AuthError("no state directory to keep sign-in tokens in: set --state-dir (or HOME)".into())
        })?;
        let http = http::AuthHttp::new(config);
        let issuer_pin =
            issuer_pin_file(&state_dir, &config.url, settings.client_id.as_deref().unwrap_or(""));
        let keyring = settings.keyring;
        // The file store takes no I/O to set up; the keyring does (D-Bus, Keychain).
        let store = if keyring {
            off_thread(move || token_store(&state_dir, keyring)).await?
        } else {
            TokenStore::new(&state_dir)
        };
        let oauth = OAuth {
            http,
            origin: config.url.origin().ascii_serialization(),
            key: discovery::canonical_resource(&config.url),
            mcp: config.url.clone(),
            store,
            settings,
            current: RwLock::new(Current::default()),
            flow: tokio::sync::Mutex::new(None),
            dpop: RwLock::new(None),
            known: std::sync::Mutex::new(None),
            issuer_pin,
            id_token_unused: std::sync::atomic::AtomicBool::new(false),
        };
        // Issue 14: a machine grant keeps its tokens in memory only (no person is needed to get
        // new ones), and never adopts what a browser sign-in stored for the same server.
        if oauth.settings.grant.unattended() {
            return Ok(oauth);
        }
        if let Some(entry) = oauth.load_entry().await? {
            entry.remember_secrets();
            oauth.use_stored_key(&entry)?;
            if let Some(tokens) = &entry.tokens {
                debug!("using the stored sign-in for {}", redact_url(&oauth.mcp));
                oauth.adopt(tokens);
            }
            *oauth.flow.try_lock().map_err(|_| AuthError("sign-in state busy".into()))? =
                entry.tokens.as_ref().and_then(|t| t.scope.clone());
        }
        Ok(oauth)
    }

    /// The `Authorization` header value to send, if signed in.
    pub fn header(&self) -> Option<HeaderValue> {
        self.current.reading().header.clone()
    }

    /// Issue 25.1: the fix for a server that refuses the access token of a fresh sign-in, when
    /// the sign-in also brought an ID token (Amazon Cognito, Bedrock AgentCore want that one).
    pub fn refused_hint(&self) -> Option<&'static str> {
        self.id_token_unused.load(std::sync::atomic::Ordering::Relaxed).then_some(
            "the sign-in also brought an ID token, which servers behind Amazon Cognito or Bedrock AgentCore take as the bearer: add --use-id-token",
        )
    }

    /// Whether the token in use is DPoP-bound (each request carries a proof naming its URL).
    pub fn dpop_bound(&self) -> bool {
        self.current.reading().header.as_ref().is_some_and(|h| h.as_bytes().starts_with(b"DPoP "))
    }

    /// Whether the token expires soon and can be refreshed first.
    pub fn expiring(&self) -> bool {
        let c = self.current.reading();
        let renewable = c.has_refresh || self.settings.grant.unattended();
        let Some(at) = c.expires_at.filter(|_| c.header.is_some() && renewable) else { return false };
        refresh_due(at, c.issued_at, now())
    }

    /// What the store holds for this server, read off the runtime's thread. Nothing stored (the
    /// usual case at start: one `stat`) costs no thread.
    async fn load_entry(&self) -> Result<Option<Entry>, AuthError> {
        if !self.store.has(&self.origin, &self.key) {
            return Ok(None);
        }
        let (store, origin, key) = (self.store.clone(), self.origin.clone(), self.key.clone());
        off_thread(move || store.load(&origin, &key)).await
    }

    /// Stores `entry` for this server, off the runtime's thread (the write is fsynced, and the
    /// keyring may be slow).
    async fn save_entry(&self, entry: &Entry) -> Result<(), AuthError> {
        let (store, origin, key, entry) =
            (self.store.clone(), self.origin.clone(), self.key.clone(), entry.clone());
        off_thread(move || store.save(&origin, &key, &entry)).await
    }

    /// The store and the key of this server in it (for `logout` and `status`).
    pub fn store(&self) -> (&TokenStore, &str, &str) {
        (&self.store, &self.origin, &self.key)
    }

    fn adopt(&self, tokens: &Tokens) {
        tokens.remember();
        let value = auth_value(tokens).map(|mut v| {
            v.set_sensitive(true);
            v
        });
        *self.current.writing() = Current {
            header: value,
            expires_at: tokens.expires_at,
            issued_at: tokens.issued_at,
            has_refresh: tokens.refresh_token.is_some(),
        };
    }

    /// The `DPoP` proof header for a request with the current token (RFC 9449 §7.1), when it
    /// is bound to a key (sent as `DPoP <token>`).
    pub fn proof(&self, method: &reqwest::Method, url: &Url) -> Option<HeaderValue> {
        let token = self.current.reading().header.as_ref()?.to_str().ok()?.strip_prefix("DPoP ")?.to_owned();
        let key = self.dpop.reading().clone()?;
        match key.proof(method.as_str(), url, Some(&token)) {
            Ok(p) => HeaderValue::from_str(&p).ok(),
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// Keeps a `DPoP-Nonce` the MCP server sent (RFC 9449 §9); whether there is a key to use
    /// it with.
    pub fn dpop_nonce(&self, url: &Url, nonce: &str) -> bool {
        match self.dpop.reading().as_ref() {
            Some(key) => {
                key.set_nonce(url, nonce);
                true
            }
            None => false,
        }
    }

    /// The key for bound tokens when the authorization server offers DPoP: the one in use
    /// (the stored one, see [`OAuth::use_stored_key`]), else a new one (stored with the tokens
    /// it binds).
    fn dpop_for(&self, server: &AuthServer) -> Result<Option<Arc<Dpop>>, AuthError> {
        if !dpop::offered(server.dpop_signing_alg_values_supported.as_deref()) {
            return Ok(None);
        }
        if let Some(key) = self.dpop.reading().clone() {
            return Ok(Some(key));
        }
        let key = Arc::new(Dpop::generate()?);
        *self.dpop.writing() = Some(key.clone());
        Ok(Some(key))
    }

    /// Uses the key `entry`'s tokens are bound to: at start, and whenever the store is read
    /// again (another process may have signed in with a key it made).
    fn use_stored_key(&self, entry: &Entry) -> Result<(), AuthError> {
        let Some(stored) = &entry.dpop_key else { return Ok(()) };
        let same = self
            .dpop
            .reading()
            .as_ref()
            .is_some_and(|k| k.stored().expose_secret() == stored.expose_secret());
        if !same {
            *self.dpop.writing() = Some(Arc::new(Dpop::from_stored(stored)?));
        }
        Ok(())
    }

    /// Gets a token that the server may accept instead of `failed` (the header the refused
    /// request carried). See [`Renew`]. Returns whether that took a sign-in. A wait for another
    /// process's renewal lasts at most `within` (the request's time, issue 21.9); a person's
    /// sign-in has `--auth-timeout`.
    pub async fn renew(
        &self,
        failed: Option<&HeaderValue>,
        challenge: Option<&BearerChallenge>,
        what: Renew,
        within: Duration,
    ) -> Result<bool, AuthError> {
        let mut requested = self.flow.lock().await;
        let refused = matches!(what, Renew::Refused | Renew::Ahead);
        if refused && self.header().as_ref() != failed {
            return Ok(false); // another request of this process renewed it meanwhile
        }
        if self.settings.grant.unattended() {
            let scope = self.scope_for(challenge, what, requested.as_deref());
            let tokens = self.unattended(challenge, scope.clone()).await?;
            self.adopt(&tokens);
            *requested = scope.or_else(|| tokens.scope.clone());
            return Ok(true);
        }
        {
            let Some(_entry_lock) = self.lock(Lock::Entry, what == Renew::Ahead, within).await? else {
                // Another process is renewing: the token in hand is still valid.
                return Ok(false);
            };
            if refused && self.renewed_from_store(failed).await? {
                return Ok(false);
            }
        }
        if what == Renew::Ahead {
            return Ok(false);
        }
        // Issue 23.2: a server that wants a key is not sent into a sign-in it cannot offer.
        if !self.settings.explicit
            && let Some(hint) = keyhint::wants_a_key(&self.http, &self.mcp, challenge).await
        {
            return Err(AuthError(hint));
        }
        let device = matches!(self.settings.grant, Grant::Device);
        self.may_ask_a_person(what, device)?;
        // Issue 21.9: a person's sign-in holds only the sign-in lock (processes that need one too
        // wait for it, then use what it stored); the entry's lock is taken again to store the
        // result, so refreshes of other processes never wait for a browser.
        let _signing = self.lock(Lock::SignIn, false, within).await?;
        if refused && self.stored_differs(failed).await? {
            return Ok(false);
        }
        let scope = self.scope_for(challenge, what, requested.as_deref());
        let entry = self.load_entry().await?.unwrap_or_default();
        entry.remember_secrets();
        self.use_stored_key(&entry)?;
        let (tokens, discovered, client, grant) =
            self.sign_in(&entry, challenge, scope.clone(), device).await?;
        let _entry_lock = self.lock(Lock::Entry, false, LOCK_WAIT).await?;
        let mut entry = self.load_entry().await?.unwrap_or_default();
        entry.remember_secrets();
        entry.server = redact_url(&self.mcp);
        entry.grant = Some(grant.to_owned());
        entry.dpop_key = self.dpop.reading().as_ref().filter(|_| tokens.dpop).map(|k| k.stored().clone());
        entry.issuer = Some(discovered.server.issuer.clone());
        entry.token_endpoint = discovered.server.token_endpoint.clone();
        entry.resource = discovered.resource.clone();
        // A pre-registered client's secret stays in its variable; the rest (the token-endpoint
        // authentication chosen from the metadata) is kept for refreshes.
        let pre_registered = self.settings.client_id.is_some();
        entry.client =
            Some(Client { client_secret: client.client_secret.filter(|_| !pre_registered), ..client });
        self.adopt(&tokens);
        *requested = scope.or_else(|| tokens.scope.clone());
        entry.tokens = Some(tokens);
        self.save_entry(&entry).await?;
        Ok(true)
    }

    /// Under the entry's lock: uses the tokens another process stored if they differ from
    /// `failed`, else refreshes with the stored refresh token. Whether that gave a new token; a
    /// refresh token the server rejects is forgotten (tried once, never in a loop).
    async fn renewed_from_store(&self, failed: Option<&HeaderValue>) -> Result<bool, AuthError> {
        if self.stored_differs(failed).await? {
            return Ok(true);
        }
        let mut entry = self.load_entry().await?.unwrap_or_default();
        entry.remember_secrets();
        entry.server = redact_url(&self.mcp);
        let Some(refresh) = entry.tokens.as_ref().and_then(|t| t.refresh_token.clone()) else {
            return Ok(false);
        };
        match self.refresh(&entry, &refresh).await {
            Ok(tokens) => {
                self.adopt(&tokens);
                entry.tokens = Some(tokens);
                self.save_entry(&entry).await?;
                info!("renewed the access token for {}", redact_url(&self.mcp));
                Ok(true)
            }
            Err(Refresh::Rejected(why)) => {
                warn!(
                    "the authorization server no longer accepts the refresh token ({why}); signing in again"
                );
                entry.tokens = None;
                self.save_entry(&entry).await?;
                Ok(false)
            }
            Err(Refresh::Failed(e)) => Err(e),
        }
    }

    /// Whether the stored tokens differ from `failed` (another process signed in or renewed):
    /// then they are used, with the key they may be bound to.
    async fn stored_differs(&self, failed: Option<&HeaderValue>) -> Result<bool, AuthError> {
        let entry = self.load_entry().await?.unwrap_or_default();
        entry.remember_secrets();
        self.use_stored_key(&entry)?;
        let Some(tokens) = &entry.tokens else { return Ok(false) };
        if auth_value(tokens).as_ref() == failed {
            return Ok(false);
        }
        info!("using the sign-in another mcp-sidecar completed for {}", redact_url(&self.mcp));
        self.adopt(tokens);
        Ok(true)
    }

    /// Whether a person may be asked to sign in now: only where one may be (an interactive run;
    /// RFC 8628 in the middle of a proxied request only where a person reads stderr, since an
    /// MCP client's log file is not where anyone looks for a code).
    fn may_ask_a_person(&self, what: Renew, device: bool) -> Result<(), AuthError> {
        let unseen = device && what != Renew::Login && !std::io::stderr().is_terminal();
        if self.settings.interactive && !unseen {
            return Ok(());
        }
        Err(AuthError(format!(
            "{} needs a sign-in: run mcp-sidecar login{} {} in a terminal, then restart the client",
            self.mcp.host_str().unwrap_or("the server"),
            if device { " --device" } else { "" },
            redact_url(&self.mcp)
        )))
    }

    /// Asks the server, without a credential, whether it wants a sign-in (for `login`).
    pub async fn probe(&self) -> Result<http::Probe, AuthError> {
        self.http.probe(&self.mcp).await
    }

    /// Whether OAuth was asked for explicitly (`--auth oauth`): then any 401 starts a sign-in,
    /// not only one with a Bearer challenge.
    pub fn explicit(&self) -> bool {
        self.settings.explicit
    }

    /// Refreshes ahead of expiry; failures are left to the 401 path.
    pub async fn refresh_ahead(&self) {
        let failed = self.header();
        if let Err(e) = self.renew(failed.as_ref(), None, Renew::Ahead, Duration::ZERO).await {
            debug!("refreshing ahead of expiry failed: {e}");
        }
    }

    /// One of the cross-process locks of this server's entry ([`Lock`]). `once`: a refresh
    /// ahead of expiry tries once and goes on with the valid token when another process holds it
    /// (`None`); anything else waits, at most [`LOCK_WAIT`] (issue 21.9: a blocking wait held
    /// every request of every sidecar near expiry while `login` waited for a browser, and for
    /// ever if its holder was stopped).
    async fn lock(
        &self,
        which: Lock,
        once: bool,
        within: Duration,
    ) -> Result<Option<std::fs::File>, AuthError> {
        let patience = within.min(LOCK_WAIT);
        let deadline = crate::retry::deadline_after(patience);
        loop {
            let (store, origin, key) = (self.store.clone(), self.origin.clone(), self.key.clone());
            if let Some(lock) = off_thread(move || store.try_lock(&origin, &key, which)).await? {
                return Ok(Some(lock));
            }
            if once {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AuthError(format!(
                    "another mcp-sidecar is signing in to {} or renewing its token and has not finished within {}: finish that sign-in (or stop it), then try again",
                    self.mcp.host_str().unwrap_or("the server"),
                    crate::retry::human(patience)
                )));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// A-11/A-12: the scope to ask for.
    fn scope_for(
        &self,
        challenge: Option<&BearerChallenge>,
        what: Renew,
        before: Option<&str>,
    ) -> Option<String> {
        let challenged = challenge.and_then(|c| c.scope.clone());
        match what {
            // Draft step-up rule: the union of what was asked before and what is challenged.
            Renew::StepUp => {
                let mut all: Vec<String> = Vec::new();
                for s in before.into_iter().chain(challenged.as_deref()).flat_map(str::split_whitespace) {
                    if !all.iter().any(|a| a == s) {
                        all.push(s.to_owned());
                    }
                }
                (!all.is_empty()).then(|| all.join(" "))
            }
            // Issue 25.1: `--scope` replaces what the server names.
            _ => self.settings.idp.scope.clone().or(challenged),
        }
    }

    /// [`scope_to_ask`], with `--scope` as given and `openid` for `--use-id-token` (issue 25.1).
    fn scope_to_ask(&self, discovered: &Discovered, scope: Option<String>, offline: bool) -> Option<String> {
        let scope = match &self.settings.idp.scope {
            Some(_) => scope,
            None => scope_to_ask(discovered, scope, offline),
        };
        if !self.settings.idp.use_id_token {
            return scope;
        }
        match scope {
            Some(s) if s.split_whitespace().any(|w| w == "openid") => Some(s),
            Some(s) if !s.trim().is_empty() => Some(format!("openid {s}")),
            _ => Some("openid".into()),
        }
    }

    /// A person's sign-in: discovery, then the device flow (`device`, or `login` with no
    /// browser here when the server offers it) or the browser: client identity, authorization
    /// with PKCE, code exchange. Returns the grant used too.
    async fn sign_in(
        &self,
        entry: &Entry,
        challenge: Option<&BearerChallenge>,
        scope: Option<String>,
        device: bool,
    ) -> Result<(Tokens, Discovered, Client, &'static str), AuthError> {
        let discovered = metadata::discover(
            &self.http,
            &self.mcp,
            challenge.and_then(|c| c.resource_metadata.as_deref()),
            &self.settings.idp.resource,
        )
        .await?;
        let server = &discovered.server;
        self.check_pinned_issuer(entry, &server.issuer)?;
        if device || (self.settings.headless && server.device_authorization_endpoint.is_some()) {
            if !device {
                info!("no browser can be opened here; signing in with a device code instead");
            }
            let (tokens, client) = self.device_sign_in(entry, &discovered, scope).await?;
            return Ok((tokens, discovered, client, Grant::Device.kind()));
        }
        metadata::check_pkce(&discovered)?;
        let scope = self.scope_to_ask(&discovered, scope, true);
        let dpop = self.dpop_for(server)?;
        let (auth_url, token_url) = match (&server.authorization_endpoint, &server.token_endpoint) {
            (Some(a), Some(t)) => (a.clone(), t.clone()),
            _ => {
                return Err(AuthError(format!(
                    "the authorization server {} publishes no authorization or token endpoint: the server's sign-in is misconfigured",
                    server.issuer
                )));
            }
        };
        let reuse = entry.client.clone().filter(|_| entry.issuer.as_deref() == Some(server.issuer.as_str()));
        let listener =
            callback::Listener::bind(self.settings.callback_port, reuse.as_ref().and_then(|c| c.port))
                .await?;
        let redirect_uri = listener.redirect_uri();
        let client = self.client_identity(server, reuse, Some((&redirect_uri, listener.port))).await?;

        let oauth = OidcClient::new(ClientId::new(client.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(auth_url).map_err(|e| AuthError(format!("bad authorization endpoint: {e}")))?,
            )
            .set_token_uri(
                TokenUrl::new(token_url).map_err(|e| AuthError(format!("bad token endpoint: {e}")))?,
            )
            .set_redirect_uri(
                RedirectUrl::new(redirect_uri).map_err(|e| AuthError(format!("bad redirect URI: {e}")))?,
            );
        let oauth = authenticated(oauth, &client);
        let (challenge_pkce, verifier) = PkceCodeChallenge::new_random_sha256();
        let request = oauth.authorize_url(CsrfToken::new_random).set_pkce_challenge(challenge_pkce);
        let (url, state) = self.authorize_extras(request, discovered.resource.as_ref(), scope.as_ref()).url();
        metadata::check_url(&url)?;

        let callback = self.ask_the_browser(listener, &url, state.secret().clone()).await?;
        check_issuer(server, discovered.from_metadata, callback.get("iss"))?;
        let code = code_of(&callback)?;
        let mut exchange =
            oauth.exchange_code(AuthorizationCode::new(code.to_owned())).set_pkce_verifier(verifier);
        if let Some(resource) = &discovered.resource {
            exchange = exchange.add_extra_param("resource", resource.clone());
        }
        let response =
            exchange.request_async(&Via { http: &self.http, dpop: dpop.as_deref() }).await.map_err(|e| {
                AuthError(format!(
                    "the authorization server refused the sign-in code ({}): sign in again",
                    token_error(&e)
                ))
            })?;
        let tokens = self.bearer(&response, tokens_from(&response, None, scope))?;
        info!("signed in to {}", self.mcp.host_str().unwrap_or("the server"));
        Ok((tokens, discovered, client, Grant::Browser.kind()))
    }

    /// The authorization request's `resource` (RFC 8707), scope, and `--authorize-param`s.
    fn authorize_extras<'a>(
        &self,
        mut request: oauth2::AuthorizationRequest<'a>,
        resource: Option<&String>,
        scope: Option<&String>,
    ) -> oauth2::AuthorizationRequest<'a> {
        if let Some(resource) = resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        for (key, value) in &self.settings.idp.authorize_params {
            request = request.add_extra_param(key.clone(), value.clone());
        }
        if let Some(scope) = scope {
            request = request.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())));
        }
        request
    }

    /// Shows the sign-in URL on stderr (and opens a browser on it), then waits for the browser's
    /// answer at `listener`, at most `--auth-timeout`.
    async fn ask_the_browser(
        &self,
        listener: callback::Listener,
        url: &Url,
        state: String,
    ) -> Result<callback::Callback, AuthError> {
        let host = self.mcp.host_str().unwrap_or("the server");
        let opened = browser::open(url, self.settings.browser.as_deref()).await;
        let how = if opened {
            "a browser window opened; if not, open this URL"
        } else {
            "open this URL in a browser"
        };
        // The log file too (issue 25.4): where a client hides stderr, the URL is found there.
        crate::logfile::eprintln(&format!("mcp-sidecar: {host} needs you to sign in: {how}:\n\n  {url}\n"));
        tokio::time::timeout(self.settings.timeout, listener.wait(state)).await.map_err(|_| {
            AuthError(format!(
                "no sign-in answer from the browser within {} s (--auth-timeout): run mcp-sidecar login {} in a terminal, or try again",
                self.settings.timeout.as_secs(),
                redact_url(&self.mcp)
            ))
        })
    }

    /// RFC 8628: a code the user enters on another device, while this polls the token
    /// endpoint at the server's interval (`slow_down` adds 5 s, RFC 8628 §3.5).
    async fn device_sign_in(
        &self,
        entry: &Entry,
        discovered: &Discovered,
        scope: Option<String>,
    ) -> Result<(Tokens, Client), AuthError> {
        let server = &discovered.server;
        let (Some(device_url), Some(token_url)) =
            (&server.device_authorization_endpoint, &server.token_endpoint)
        else {
            return Err(AuthError(format!(
                "the authorization server {} does not offer sign-in with a device code (no device_authorization_endpoint): sign in with the browser (mcp-sidecar login on a machine with one)",
                server.issuer
            )));
        };
        let scope = self.scope_to_ask(discovered, scope, true);
        let dpop = self.dpop_for(server)?;
        let reuse = entry
            .client
            .clone()
            .filter(|c| entry.issuer.as_deref() == Some(server.issuer.as_str()) && c.port.is_none());
        let client = self.client_identity(server, reuse, None).await?;
        let oauth = OidcClient::new(ClientId::new(client.client_id.clone()))
            .set_device_authorization_url(
                DeviceAuthorizationUrl::new(device_url.clone())
                    .map_err(|e| AuthError(format!("bad device authorization endpoint: {e}")))?,
            )
            .set_token_uri(
                TokenUrl::new(token_url.clone())
                    .map_err(|e| AuthError(format!("bad token endpoint: {e}")))?,
            );
        let oauth = authenticated(oauth, &client);
        let via = Via { http: &self.http, dpop: dpop.as_deref() };
        let mut ask = oauth.exchange_device_code();
        if let Some(resource) = &discovered.resource {
            ask = ask.add_extra_param("resource", resource.clone());
        }
        if let Some(scope) = &scope {
            ask = ask.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())));
        }
        let details: oauth2::StandardDeviceAuthorizationResponse =
            ask.request_async(&self.http).await.map_err(|e| {
                AuthError(format!(
                    "the authorization server refused to start a device sign-in ({}): check --client-id, or sign in with the browser",
                    token_error(&e)
                ))
            })?;
        let details = sane_interval(details)?;
        // Bounded by the code's life and by --auth-timeout, whichever ends first; no sleep
        // between polls outlasts that.
        let wait = details.expires_in().min(self.settings.timeout);
        let deadline = crate::retry::deadline_after(wait);
        self.show_device_code(&details, wait)?;
        let mut poll = oauth.exchange_device_access_token(&details);
        if let Some(resource) = &discovered.resource {
            poll = poll.add_extra_param("resource", resource.clone());
        }
        let response = poll
            .request_async(
                &via,
                |d: Duration| {
                    tokio::time::sleep(d.min(deadline.saturating_duration_since(tokio::time::Instant::now())))
                },
                Some(wait),
            )
            .await
            .map_err(|e| self.device_error(&e))?;
        let tokens = self.bearer(&response, tokens_from(&response, None, scope))?;
        info!("signed in to {}", self.mcp.host_str().unwrap_or("the server"));
        Ok((tokens, client))
    }

    /// Shows where to enter the device code (after checking the URLs are ones to show), for
    /// `wait` at most.
    fn show_device_code(
        &self,
        details: &oauth2::StandardDeviceAuthorizationResponse,
        wait: Duration,
    ) -> Result<(), AuthError> {
        let host = self.mcp.host_str().unwrap_or("the server");
        let uri = details.verification_uri().to_string();
        let complete = details.verification_uri_complete().map(|c| c.secret().clone());
        for u in [Some(&uri), complete.as_ref()].into_iter().flatten() {
            metadata::check_url(
                &Url::parse(u).map_err(|_| AuthError(format!("the verification URI {u:?} is not a URL")))?,
            )?;
        }
        let code = clean(details.user_code().secret());
        let link = complete
            .map(|c| {
                format!("\n\nor open this link, which carries the code (for a phone):\n\n  {}", clean(&c))
            })
            .unwrap_or_default();
        crate::logfile::eprintln(&format!(
            "mcp-sidecar: {host} needs you to sign in. On any device, open\n\n  {}\n\nand enter the code  {code}{link}\n\n(waiting up to {} s)",
            clean(&uri),
            wait.as_secs()
        ));
        Ok(())
    }

    /// What a failed device sign-in means for people.
    fn device_error<RE: std::error::Error + 'static>(
        &self,
        e: &RequestTokenError<RE, oauth2::DeviceCodeErrorResponse>,
    ) -> AuthError {
        match e {
            RequestTokenError::ServerResponse(r)
                if *r.error() == oauth2::DeviceCodeErrorResponseType::ExpiredToken =>
            {
                AuthError(format!(
                    "the device code expired before the sign-in was approved: run mcp-sidecar login --device {} again and enter the new code sooner",
                    redact_url(&self.mcp)
                ))
            }
            RequestTokenError::ServerResponse(r)
                if *r.error() == oauth2::DeviceCodeErrorResponseType::AccessDenied =>
            {
                AuthError(
                    "the sign-in was denied on the other device: run the login again and approve it".into(),
                )
            }
            _ => AuthError(format!("the device sign-in failed ({}): try again", token_error(e))),
        }
    }

    /// Issue 14: tokens for a machine, no person: client credentials, workload identity or
    /// enterprise-managed, authenticated as the flags say; kept in memory only.
    async fn unattended(
        &self,
        challenge: Option<&BearerChallenge>,
        scope: Option<String>,
    ) -> Result<Tokens, AuthError> {
        let discovered = self.machine_discovery(challenge).await?;
        let server = &discovered.server;
        let Some(token_url) = &server.token_endpoint else {
            return Err(AuthError(format!(
                "the authorization server {} publishes no token endpoint: the server's sign-in is misconfigured",
                server.issuer
            )));
        };
        let scope = self.scope_to_ask(&discovered, scope, false);
        let dpop = self.dpop_for(server)?;
        let via = Via { http: &self.http, dpop: dpop.as_deref() };
        let mut form: Vec<(&str, String)> =
            discovered.resource.iter().map(|r| ("resource", r.clone())).collect();
        if let Some(s) = &scope {
            form.push(("scope", s.clone()));
        }
        let fix = self.grant_form(&via, &discovered, scope.as_deref(), &mut form).await?;
        let answer =
            grants::request(&via, token_url, form, self.machine_auth(server)).await.map_err(|r| {
                AuthError(format!(
                    "the authorization server {} refused the {} grant ({}): {fix}",
                    server.issuer,
                    self.settings.grant.kind().replace('_', " "),
                    r.text()
                ))
            })?;
        let host = self.mcp.host_str().unwrap_or("the server");
        info!("got an access token for {host} ({})", self.settings.grant.kind().replace('_', " "));
        let now = now();
        Ok(Tokens {
            access_token: SecretString::from(answer.access_token),
            // A machine asks again instead of keeping a refresh token.
            refresh_token: None,
            expires_at: answer.expires_in.map(|d| now.saturating_add(d.max(MIN_TOKEN_LIFE))),
            issued_at: Some(now),
            scope: answer.scope.or(scope),
            dpop: is_dpop(&answer.token_type) && dpop.is_some(),
        })
    }

    /// The authorization server of a machine grant. Issue 21.8: a machine's credential must not
    /// follow a challenge elsewhere: only the server's own origin names its metadata, and the
    /// issuer is pinned at first sight.
    async fn machine_discovery(&self, challenge: Option<&BearerChallenge>) -> Result<Discovered, AuthError> {
        use crate::sync::Locked;
        let named = own_resource_metadata(challenge, &self.mcp);
        if let Some(d) = self.known.locked().clone().filter(|_| named.is_none()) {
            return Ok(d);
        }
        let d = metadata::discover(&self.http, &self.mcp, named, &self.settings.idp.resource).await?;
        self.pin_machine_issuer(&d.server.issuer).await?;
        *self.known.locked() = Some(d.clone());
        Ok(d)
    }

    /// How a machine client authenticates at `server`'s token endpoint, as the flags say.
    fn machine_auth<'a>(&'a self, server: &'a AuthServer) -> ClientAuth<'a> {
        let id = self.settings.client_id.as_deref();
        match (id, &self.settings.client_key, &self.settings.client_secret) {
            (Some(id), Some(key), _) => ClientAuth::Jwt(id, key, &server.issuer),
            (Some(id), None, Some((_, secret))) => {
                match pick_auth(server.token_endpoint_auth_methods_supported.as_deref(), true) {
                    TokenAuth::ClientSecretPost => ClientAuth::Post(id, secret),
                    _ => ClientAuth::Basic(id, secret),
                }
            }
            (id, _, _) => ClientAuth::None(id),
        }
    }

    /// The grant's own fields of a machine token request (its type and assertion), added to
    /// `form`; returns the fix to give if the server refuses it.
    async fn grant_form(
        &self,
        via: &Via<'_>,
        discovered: &Discovered,
        scope: Option<&str>,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<String, AuthError> {
        let server = &discovered.server;
        let client = self.settings.client_id.as_deref().unwrap_or("mcp-sidecar");
        Ok(match &self.settings.grant {
            Grant::ClientCredentials => {
                form.push(("grant_type", "client_credentials".into()));
                match &self.settings.client_secret {
                    Some((name, _)) => format!("check --client-id {client} and the secret in {name}"),
                    None => format!(
                        "check --client-id {client} and that the key in --client-key-file is registered for it"
                    ),
                }
            }
            Grant::WorkloadIdentity(assertion) => {
                let token = assertion.read().await?;
                form.push(("grant_type", grants::JWT_BEARER.into()));
                form.push(("assertion", token.expose_secret().to_owned()));
                format!(
                    "check that the identity token is meant for {} (its audience) and not expired, and that the server trusts its issuer",
                    server.issuer
                )
            }
            Grant::Enterprise(e) => {
                let jag =
                    grants::exchange_id_token(via, e, &server.issuer, discovered.resource.as_deref(), scope)
                        .await?;
                form.push(("grant_type", grants::JWT_BEARER.into()));
                form.push(("assertion", jag.expose_secret().to_owned()));
                format!(
                    "check --client-id {client} and its secret, and that your identity provider may grant access to it"
                )
            }
            Grant::Browser | Grant::Device => unreachable!("a person's grant is not unattended"),
        })
    }

    /// Issue 21.8: a machine grant (client credentials, workload identity, enterprise) sends a
    /// secret, a signed assertion or a replayable identity token to the authorization server
    /// discovery names. The first one seen is pinned in the state dir (`issuers/`), per server
    /// and client; one that differs later is refused with the fix, and receives nothing.
    async fn pin_machine_issuer(&self, issuer: &str) -> Result<(), AuthError> {
        let (path, found) = (self.issuer_pin.clone(), issuer.to_owned());
        let pinned = off_thread(move || -> Result<Option<String>, AuthError> {
            match std::fs::read_to_string(&path) {
                Ok(pinned) => Ok(Some(pinned.trim().to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let dir = path.parent().unwrap_or(std::path::Path::new("."));
                    let write =
                        crate::statedir::create_private_dir(dir).and_then(|()| std::fs::write(&path, &found));
                    write.map_err(|e| {
                        AuthError(format!("cannot pin the authorization server in {}: {e}", dir.display()))
                    })?;
                    Ok(None)
                }
                Err(e) => Err(AuthError(format!("cannot read {}: {e}", path.display()))),
            }
        })
        .await?;
        match pinned {
            Some(pinned) if pinned != issuer => Err(AuthError(format!(
                "{} now names the authorization server {:?}, not {pinned:?} where this machine's credentials went before, so they are not sent there: if the service really moved, delete {} and start again",
                self.mcp.host_str().unwrap_or("the server"),
                clean(issuer),
                self.issuer_pin.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Issue 10.11: the issuer recorded at the first sign-in is pinned for a pre-registered
    /// client, whose secret was issued by that authorization server alone: discovery that now
    /// leads elsewhere (a moved service, or a tampered metadata document) must not receive it.
    /// A dynamically registered client follows the change with a fresh registration at the new
    /// server, never reusing the old one's credentials (SEP-2352), and says so.
    fn check_pinned_issuer(&self, entry: &Entry, issuer: &str) -> Result<(), AuthError> {
        let Some(pinned) = entry.issuer.as_deref().filter(|p| *p != issuer) else { return Ok(()) };
        let host = self.mcp.host_str().unwrap_or("the server");
        if let Some(id) = &self.settings.client_id {
            return Err(AuthError(format!(
                "{host} now names the authorization server {:?}, not {pinned:?} where client {id} signed in, so its secret is not sent there: if the service really moved, run mcp-sidecar logout {} and sign in again",
                clean(issuer),
                redact_url(&self.mcp)
            )));
        }
        warn!(
            "{host} now names the authorization server {:?} instead of {pinned:?}; registering there afresh",
            clean(issuer)
        );
        Ok(())
    }

    /// A-20: pre-registered, then stored, then CIMD, then dynamic registration.
    async fn client_identity(
        &self,
        server: &AuthServer,
        stored: Option<Client>,
        redirect: Option<(&str, u16)>,
    ) -> Result<Client, AuthError> {
        let port = redirect.map(|(_, p)| p);
        if let Some(id) = &self.settings.client_id {
            let secret = self.settings.client_secret.as_ref().map(|(_, s)| s.clone());
            let auth = pick_auth(server.token_endpoint_auth_methods_supported.as_deref(), secret.is_some());
            return Ok(Client { client_id: id.clone(), client_secret: secret, auth, port });
        }
        if let Some(client) = stored
            && (client.port == port || client.client_id.starts_with("https://"))
        {
            return Ok(client);
        }
        if let Some(url) = &self.settings.client_metadata_url
            && server.client_id_metadata_document_supported
        {
            return Ok(Client { client_id: url.clone(), client_secret: None, auth: TokenAuth::None, port });
        }
        let Some(endpoint) = &server.registration_endpoint else {
            return Err(AuthError(format!(
                "the authorization server {} does not register clients automatically: register one there and pass its id with --client-id (and its secret with --client-secret-env)",
                server.issuer
            )));
        };
        let endpoint =
            Url::parse(endpoint).map_err(|e| AuthError(format!("bad registration endpoint: {e}")))?;
        let (status, bytes) = self.http.post_json(&endpoint, &registration(redirect)).await?;
        if !status.is_success() {
            let said =
                crate::net::server_message(&bytes).map(|m| format!(": {}", clean(&m))).unwrap_or_default();
            return Err(AuthError(format!(
                "the authorization server refused to register mcp-sidecar as a client (HTTP {}{said}): register a client there and pass --client-id",
                status.as_u16()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Registered {
            client_id: String,
            client_secret: Option<String>,
            token_endpoint_auth_method: Option<String>,
        }
        let r: Registered = serde_json::from_slice(&bytes).map_err(|_| {
            AuthError("the authorization server's registration answer has no client_id".into())
        })?;
        let auth = r.token_endpoint_auth_method.as_deref().and_then(TokenAuth::parse).unwrap_or(
            if r.client_secret.is_some() { TokenAuth::ClientSecretBasic } else { TokenAuth::None },
        );
        debug!("registered as client {} at {}", r.client_id, server.issuer);
        if let Some(secret) = &r.client_secret {
            crate::secrets::remember_as(crate::secrets::Slot::ClientSecret, secret);
        }
        Ok(Client {
            client_id: r.client_id,
            client_secret: r.client_secret.map(SecretString::from),
            auth,
            port,
        })
    }

    /// A refresh-token grant (A-42), rotating the refresh token when a new one comes.
    async fn refresh(&self, entry: &Entry, refresh: &SecretString) -> Result<Tokens, Refresh> {
        let (Some(token_url), Some(client)) = (&entry.token_endpoint, &entry.client_or(&self.settings))
        else {
            return Err(Refresh::Rejected("nothing to refresh with".into()));
        };
        let token_url = TokenUrl::new(token_url.clone())
            .map_err(|e| Refresh::Failed(AuthError(format!("bad token endpoint: {e}"))))?;
        let oauth = authenticated(
            OidcClient::new(ClientId::new(client.client_id.clone())).set_token_uri(token_url),
            client,
        );
        let refresh_token = RefreshToken::new(refresh.expose_secret().to_owned());
        let mut request = oauth.exchange_refresh_token(&refresh_token);
        let resource = match &self.settings.idp.resource {
            crate::config::auth::Resource::Discovered => entry.resource.as_ref(),
            crate::config::auth::Resource::Given(given) => Some(given),
            crate::config::auth::Resource::Omitted => None,
        };
        if let Some(resource) = resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        // RFC 9449 §5: a bound token's refresh carries a proof with the same key.
        let dpop = entry.dpop_key.as_ref().and_then(|_| self.dpop.reading().clone());
        match request.request_async(&Via { http: &self.http, dpop: dpop.as_deref() }).await {
            Ok(response) => {
                let old_scope = entry.tokens.as_ref().and_then(|t| t.scope.clone());
                self.bearer(&response, tokens_from(&response, Some(refresh), old_scope))
                    .map_err(Refresh::Failed)
            }
            Err(RequestTokenError::ServerResponse(e))
                if matches!(
                    e.error(),
                    BasicErrorResponseType::InvalidGrant
                        | BasicErrorResponseType::InvalidClient
                        | BasicErrorResponseType::UnauthorizedClient
                ) =>
            {
                Err(Refresh::Rejected(e.error().to_string()))
            }
            Err(e) => Err(Refresh::Failed(AuthError(format!(
                "refreshing the access token failed ({}): try again, or sign in again with mcp-sidecar login",
                token_error(&e)
            )))),
        }
    }
}

impl Entry {
    /// The client to refresh with: the stored one, with a pre-registered client's secret taken
    /// from its variable (and the pre-registered id winning over anything stored).
    fn client_or(&self, settings: &Settings) -> Option<Client> {
        let Some(id) = &settings.client_id else { return self.client.clone() };
        let secret = settings.client_secret.as_ref().map(|(_, s)| s.clone());
        let auth = match &self.client {
            Some(c) if &c.client_id == id => c.auth,
            _ if secret.is_some() => TokenAuth::ClientSecretBasic,
            _ => TokenAuth::None,
        };
        Some(Client { client_id: id.clone(), client_secret: secret, auth, port: None })
    }
}

enum Refresh {
    /// The refresh token is no longer good: sign in again (once).
    Rejected(String),
    Failed(AuthError),
}

/// What a dynamic client registration asks for (RFC 7591): a native public client, with its
/// loopback redirect, or for the device grant (RFC 8628: no redirect).
fn registration(redirect: Option<(&str, u16)>) -> serde_json::Value {
    match redirect {
        Some((redirect_uri, _)) => serde_json::json!({
            "client_name": CLIENT_NAME,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        }),
        None => serde_json::json!({
            "client_name": CLIENT_NAME,
            "grant_types": [grants::DEVICE_CODE, "refresh_token"],
            "response_types": [],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
        }),
    }
}

/// The authorization code a browser's answer carries, or the error the authorization server
/// gave instead.
fn code_of(callback: &callback::Callback) -> Result<&str, AuthError> {
    if let Some(error) = callback.get("error") {
        let said = callback.get("error_description").map(|d| format!(": {}", clean(d))).unwrap_or_default();
        let fix = idp_fix(&said).unwrap_or("sign in again and approve the request");
        return Err(AuthError(format!(
            "the authorization server did not grant access ({}{said}): {fix}",
            clean(error)
        )));
    }
    callback.get("code").ok_or_else(|| {
        AuthError("the sign-in answer carried no authorization code: try signing in again".into())
    })
}

/// Issue 25.1: the flag that cures an identity provider's known refusal, from its words.
pub fn idp_fix(said: &str) -> Option<&'static str> {
    if said.contains("AADSTS9010010") || said.contains("AADSTS901002") {
        // Microsoft Entra: "The resource parameter provided in the request doesn't match with
        // the requested scopes" (Entra v2 takes the resource from the scope instead).
        return Some(
            "Microsoft Entra refuses the resource parameter: add --no-resource-indicator, with --scope 'api://APP-ID/.default offline_access'",
        );
    }
    None
}

/// Where a machine grant's authorization server for `mcp` and `client` is pinned.
fn issuer_pin_file(state_dir: &std::path::Path, mcp: &Url, client: &str) -> std::path::PathBuf {
    state_dir.join("issuers").join(crate::statedir::state_name(mcp.as_str(), client))
}

/// The challenge's `resource_metadata` if it is on `mcp`'s own origin (relative URLs included);
/// another origin is ignored, with a warning (issue 21.8: for machine grants).
fn own_resource_metadata<'a>(challenge: Option<&'a BearerChallenge>, mcp: &Url) -> Option<&'a str> {
    challenge.and_then(|c| c.resource_metadata.as_deref()).filter(|u| {
        let own = mcp.join(u).is_ok_and(|u| u.origin() == mcp.origin());
        if !own {
            warn!("the server's challenge names resource metadata on another origin: ignored for a machine grant");
        }
        own
    })
}

#[cfg(feature = "keyring")]
fn token_store(dir: &std::path::Path, keyring: bool) -> Result<TokenStore, AuthError> {
    Ok(if keyring { TokenStore::with_keyring(dir)? } else { TokenStore::new(dir) })
}

#[cfg(not(feature = "keyring"))]
fn token_store(dir: &std::path::Path, _keyring: bool) -> Result<TokenStore, AuthError> {
    Ok(TokenStore::new(dir))
}

/// The longest a renewal waits for another process's sign-in (issue 21.9).
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often a renewal looks whether that sign-in is done.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// The shortest lifetime a token is taken to have, in seconds (issue 21.11): an authorization
/// server answering `expires_in: 0` would otherwise make every request a token request. A token
/// that really is expired is refused with a 401, which renews it.
const MIN_TOKEN_LIFE: u64 = 30;

/// Whether a token expiring at `at` is due for a refresh: a minute ahead, or a quarter of its
/// lifetime for short-lived tokens (one that lives 30 s must not be refreshed before every
/// request).
fn refresh_due(at: u64, issued_at: Option<u64>, now: u64) -> bool {
    let lifetime = issued_at.map_or(u64::MAX, |i| at.saturating_sub(i));
    at <= now.saturating_add(REFRESH_MARGIN.as_secs().min(lifetime / 4))
}

/// A-32 (RFC 9207 §2.4): the `iss` of the authorization response against the recorded issuer.
fn check_issuer(server: &AuthServer, from_metadata: bool, iss: Option<&str>) -> Result<(), AuthError> {
    match iss {
        Some(iss) if from_metadata && iss != server.issuer => Err(AuthError(format!(
            "the sign-in answer says it comes from {:?}, not from the authorization server {:?} it was sent to: it was not used (a mix-up attack, or a misconfigured server)",
            clean(iss),
            server.issuer
        ))),
        None if server.authorization_response_iss_parameter_supported => Err(AuthError(format!(
            "the sign-in answer does not name its issuer, though {} promises to (RFC 9207): it was not used",
            server.issuer
        ))),
        _ => Ok(()),
    }
}

/// A-22: the token-endpoint authentication to use for a pre-registered client.
fn pick_auth(supported: Option<&[String]>, has_secret: bool) -> TokenAuth {
    let Some(supported) = supported else {
        return if has_secret { TokenAuth::ClientSecretBasic } else { TokenAuth::None };
    };
    let offers = |m: TokenAuth| supported.iter().any(|s| s == m.as_str());
    if has_secret {
        for m in [TokenAuth::ClientSecretBasic, TokenAuth::ClientSecretPost] {
            if offers(m) {
                return m;
            }
        }
    }
    TokenAuth::None
}

/// OpenID Connect's `id_token` in a token answer (issue 25.1, `--use-id-token`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct OidcFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl oauth2::ExtraTokenFields for OidcFields {}

/// A token answer, with the ID token when there is one.
type TokenAnswer = oauth2::StandardTokenResponse<OidcFields, oauth2::basic::BasicTokenType>;

/// [`oauth2::basic::BasicClient`] whose token answers keep the ID token.
type OidcClient<
    A = oauth2::EndpointNotSet,
    D = oauth2::EndpointNotSet,
    I = oauth2::EndpointNotSet,
    R = oauth2::EndpointNotSet,
    T = oauth2::EndpointNotSet,
> = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    TokenAnswer,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    A,
    D,
    I,
    R,
    T,
>;

impl OAuth {
    /// Issue 25.1, `--use-id-token`: the ID token of `response` becomes the bearer, until its own
    /// `exp` (or the access token's end, if sooner); without one, the fix.
    fn bearer(&self, response: &TokenAnswer, tokens: Tokens) -> Result<Tokens, AuthError> {
        if !self.settings.idp.use_id_token {
            if response.extra_fields().id_token.is_some() {
                self.id_token_unused.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(tokens);
        }
        let Some(id_token) = response.extra_fields().id_token.as_deref().filter(|t| !t.is_empty()) else {
            return Err(AuthError(format!(
                "the authorization server {} sent no ID token (--use-id-token): ask for the openid scope (--scope 'openid …'), or drop --use-id-token",
                redact_url(&self.mcp)
            )));
        };
        let exp = jwt_exp(id_token);
        let expires_at = match (exp, tokens.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Tokens {
            access_token: SecretString::from(id_token.to_owned()),
            expires_at,
            dpop: false,
            ..tokens
        })
    }
}

/// The `exp` claim of a JWT (unverified: the token is only passed on), if it has one.
fn jwt_exp(jwt: &str) -> Option<u64> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.exp
}

fn tokens_from<R: TokenResponse<TokenType = oauth2::basic::BasicTokenType>>(
    response: &R,
    old_refresh: Option<&SecretString>,
    asked: Option<String>,
) -> Tokens {
    Tokens {
        access_token: SecretString::from(response.access_token().secret().clone()),
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().clone()))
            .or_else(|| old_refresh.cloned()),
        expires_at: response.expires_in().map(|d| now().saturating_add(d.as_secs().max(MIN_TOKEN_LIFE))),
        issued_at: Some(now()),
        scope: response
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
            .or(asked),
        dpop: is_dpop(response.token_type().as_ref()),
    }
}

/// Whether a token response's `token_type` is `DPoP` (RFC 9449 §5; case-insensitive).
fn is_dpop(token_type: &str) -> bool {
    token_type.eq_ignore_ascii_case("dpop")
}

/// The `Authorization` value for stored tokens: `DPoP` for bound ones (RFC 9449 §7.1).
fn auth_value(tokens: &Tokens) -> Option<HeaderValue> {
    let scheme = if tokens.dpop { "DPoP" } else { "Bearer" };
    HeaderValue::from_str(&format!("{scheme} {}", tokens.access_token.expose_secret())).ok()
}

/// A-11: the challenge's scope, else everything the resource supports, else none; A-13 with
/// `offline`: `offline_access` added where the server offers it (a person signs in; machines
/// get new tokens by themselves).
fn scope_to_ask(discovered: &Discovered, scope: Option<String>, offline: bool) -> Option<String> {
    let mut scope = scope.or_else(|| discovered.scopes_supported.as_ref().map(|s| s.join(" ")));
    if offline
        && discovered
            .server
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x == "offline_access"))
        && !scope.as_deref().unwrap_or("").split_whitespace().any(|s| s == "offline_access")
    {
        scope = Some(match scope {
            Some(s) if !s.is_empty() => format!("{s} offline_access"),
            _ => "offline_access".into(),
        });
    }
    scope
}

/// RFC 8628 §3.2: the server's polling `interval`, kept within 1 s to a minute (issue 10.13):
/// the oauth2 crate adds 5 s to it at each `slow_down`, which u64::MAX seconds would overflow,
/// and a zero interval would poll without pause.
fn sane_interval(
    details: oauth2::StandardDeviceAuthorizationResponse,
) -> Result<oauth2::StandardDeviceAuthorizationResponse, AuthError> {
    let interval = details.interval().as_secs();
    if (1..=60).contains(&interval) {
        return Ok(details);
    }
    let mut value = serde_json::to_value(&details)
        .map_err(|e| AuthError(format!("the device authorization answer cannot be used ({e})")))?;
    value["interval"] = serde_json::json!(interval.clamp(1, 60));
    serde_json::from_value(value)
        .map_err(|e| AuthError(format!("the device authorization answer cannot be used ({e})")))
}

/// A-22: the client's authentication at the token endpoint, on an [`oauth2`] client.
fn authenticated<A, D, I, R, T>(
    oauth: OidcClient<A, D, I, R, T>,
    client: &Client,
) -> OidcClient<A, D, I, R, T>
where
    A: oauth2::EndpointState,
    D: oauth2::EndpointState,
    I: oauth2::EndpointState,
    R: oauth2::EndpointState,
    T: oauth2::EndpointState,
{
    let oauth = oauth.set_auth_type(match client.auth {
        TokenAuth::ClientSecretBasic => AuthType::BasicAuth,
        _ => AuthType::RequestBody,
    });
    match (&client.client_secret, client.auth) {
        (Some(secret), TokenAuth::ClientSecretBasic | TokenAuth::ClientSecretPost) => {
            oauth.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()))
        }
        _ => oauth,
    }
}

/// A token endpoint's refusal (of any grant: the code, a refresh, a device code) in words.
fn token_error<RE: std::error::Error + 'static, T: oauth2::ErrorResponseType + std::fmt::Display>(
    e: &RequestTokenError<RE, oauth2::StandardErrorResponse<T>>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let d = r.error_description().map(|d| format!(": {}", clean(d))).unwrap_or_default();
            match idp_fix(&d) {
                // Issue 25.1: a refusal that names its cure says it first.
                Some(fix) => format!("{}{d}; {fix}", r.error()),
                None => format!("{}{d}", r.error()),
            }
        }
        RequestTokenError::Request(e) => e.to_string(),
        RequestTokenError::Parse(_, _) => "the answer is not an OAuth token response".into(),
        RequestTokenError::Other(s) => clean(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(iss_supported: bool) -> AuthServer {
        AuthServer {
            issuer: "https://as.example/tenant".into(),
            authorization_response_iss_parameter_supported: iss_supported,
            ..AuthServer::default()
        }
    }

    #[test]
    fn issuer_check_follows_rfc_9207_table() {
        // A-32: supported+present compares; supported+absent rejects; unsupported+present
        // compares; unsupported+absent proceeds. No normalization.
        assert!(check_issuer(&server(true), true, Some("https://as.example/tenant")).is_ok());
        assert!(check_issuer(&server(true), true, None).is_err());
        assert!(check_issuer(&server(false), true, Some("https://evil.example")).is_err());
        assert!(check_issuer(&server(false), true, Some("https://as.example/tenant/")).is_err());
        assert!(check_issuer(&server(false), true, None).is_ok());
    }

    #[test]
    fn token_endpoint_auth_selection() {
        // A-22
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_auth(None, true), TokenAuth::ClientSecretBasic);
        assert_eq!(pick_auth(None, false), TokenAuth::None);
        assert_eq!(pick_auth(Some(&s(&["client_secret_post", "none"])), true), TokenAuth::ClientSecretPost);
        assert_eq!(
            pick_auth(Some(&s(&["none", "client_secret_post", "client_secret_basic"])), true),
            TokenAuth::ClientSecretBasic
        );
        assert_eq!(pick_auth(Some(&s(&["client_secret_basic"])), false), TokenAuth::None);
    }

    #[test]
    fn refresh_is_due_a_minute_ahead_or_a_quarter_of_a_short_lifetime() {
        let now = 1_000_000;
        assert!(!refresh_due(now + 3600, Some(now), now));
        assert!(refresh_due(now + 59, Some(now + 59 - 3600), now));
        assert!(refresh_due(now + 59, None, now), "lifetime unknown: a minute");
        assert!(!refresh_due(now + 30, Some(now), now), "a fresh 30 s token is used as is");
        assert!(refresh_due(now + 7, Some(now - 23), now), "its last quarter");
        assert!(refresh_due(now - 1, Some(now - 100), now), "expired");
    }

    /// Issue 21.11: `expires_in: 0` is taken as a lifetime of 30 s, so the token is not renewed
    /// before every request (a 401 still renews one that really has expired).
    #[test]
    fn a_token_that_expires_at_once_lives_30_s_for_renewal() {
        let response: oauth2::basic::BasicTokenResponse =
            serde_json::from_str(r#"{"access_token":"a","token_type":"bearer","expires_in":0}"#).unwrap();
        let tokens = tokens_from(&response, None, None);
        let (at, issued) = (tokens.expires_at.unwrap(), tokens.issued_at.unwrap());
        // (Two readings of the clock: a second may tick between them.)
        assert!((MIN_TOKEN_LIFE - 1..=MIN_TOKEN_LIFE).contains(&(at - issued)), "{at} {issued}");
        assert!(!refresh_due(at, Some(issued), issued), "not renewed before the first request");
        assert!(refresh_due(at, Some(issued), at), "renewed once it is past");
    }

    /// Issue 10.13: an `expires_in` of u64::MAX seconds, or a clock at the end of time, is a
    /// token that expires "never", not an overflow.
    #[test]
    fn absurd_lifetimes_do_not_overflow() {
        let response: oauth2::basic::BasicTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"bearer","expires_in":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(tokens_from(&response, None, None).expires_at, Some(u64::MAX));
        assert!(refresh_due(u64::MAX, Some(0), u64::MAX));
        assert!(!refresh_due(u64::MAX, None, 0));
        assert!(refresh_due(0, Some(u64::MAX), u64::MAX - 1));
    }

    /// Issue 10.14: token-store work (fsync, the keyring) never runs on the runtime's thread.
    #[tokio::test]
    async fn store_work_runs_off_the_runtime_thread() {
        let here = std::thread::current().id();
        let there = off_thread(|| Ok::<_, AuthError>(std::thread::current().id())).await.unwrap();
        assert_ne!(here, there);
    }

    /// A hostile or careless device endpoint's interval: kept to 1 s .. 60 s.
    #[test]
    fn device_intervals_are_kept_sane() {
        let parse = |interval: &str| {
            let d: oauth2::StandardDeviceAuthorizationResponse = serde_json::from_str(&format!(
                r#"{{"device_code":"d","user_code":"u","verification_uri":"https://a/v","expires_in":600,"interval":{interval}}}"#
            ))
            .unwrap();
            sane_interval(d).unwrap().interval().as_secs()
        };
        assert_eq!(parse("18446744073709551615"), 60);
        assert_eq!(parse("0"), 1);
        assert_eq!(parse("7"), 7);
        assert_eq!(parse("null"), 5, "RFC 8628: 5 s when not said");
    }

    #[test]
    fn server_text_is_cleaned() {
        assert_eq!(clean("a\nb\x1b[31m"), "ab[31m");
        assert_eq!(clean(&"x".repeat(500)).len(), 200);
    }

    /// Issue 25.1: an ID token's `exp`, read without trusting it (a hostile value is only a
    /// time to refresh at, and `bearer` keeps the sooner of it and the access token's end).
    #[test]
    fn an_id_token_s_exp_is_read_and_garbage_is_none() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |claims: &str| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims));
        assert_eq!(jwt_exp(&jwt(r#"{"exp":1767225600}"#)), Some(1_767_225_600));
        assert_eq!(jwt_exp(&jwt(r#"{"exp":18446744073709551615}"#)), Some(u64::MAX));
        assert_eq!(jwt_exp(&jwt(r#"{"exp":-1}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_exp("not a jwt"), None);
        assert_eq!(jwt_exp("a.%%%.c"), None);
    }

    #[test]
    fn entra_s_refusal_names_its_flag() {
        let said = ": AADSTS9010010: The resource parameter provided in the request doesn't match";
        assert!(idp_fix(said).is_some_and(|f| f.contains("--no-resource-indicator")));
        assert_eq!(idp_fix(": invalid_grant"), None);
    }
}
