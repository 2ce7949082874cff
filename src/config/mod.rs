//! Turns the command line and the environment into a validated [`Config`], in one place.
//!
//! Everything that can be wrong with a setup is found here, before stdin is read, and reported as
//! one [`ConfigError`] sentence that names the cause and the fix (exit status 2). Nothing after
//! `Config` reads the environment or sees clap types. The API key is read from the variable named
//! by `--api-key-env` (or the preset) straight into a [`SecretString`]; no message here ever
//! contains it.

pub mod auth;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::cli::{Args, AuthMethod, LogFormat, LogLevel, Plan, Preset, ProtocolEra, Transport};
use crate::net::{is_loopback, redact_url};

/// Header name used with `--auth-header x-api-key`.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What a preset fills in, from the vendor's published docs.
#[derive(Debug, Clone)]
pub struct PresetSpec {
    /// The name users know the service by.
    pub label: &'static str,
    /// The endpoint, or `None` when the docs give no host (then `--url` is required).
    pub url: Option<&'static str>,
    /// The path of the API-key endpoint on a user-given host.
    pub path: &'static str,
    /// The variable that holds the key.
    pub key_env: &'static str,
    /// How the key is sent.
    pub auth: AuthStyle,
    /// Prefixes a valid key starts with.
    pub key_prefixes: &'static [&'static str],
}

impl Preset {
    /// The settings this preset stands for.
    pub fn spec(self) -> PresetSpec {
        match self {
            // vendor-investra-auth.txt: "Authorization: Bearer inv_…", "https://www.investraapp.com/api/mcp".
            Preset::Investra => PresetSpec {
                label: "Investra",
                url: Some("https://www.investraapp.com/api/mcp"),
                path: "/api/mcp",
                key_env: "INVESTRA_API_KEY",
                auth: AuthStyle::Bearer,
                key_prefixes: &["inv_"],
            },
            // vendor-ai2fin-auth.md: API keys go to /mcp/inspector as X-API-Key, prefix mcp_; no host.
            Preset::Ai2fin => PresetSpec {
                label: "AI2Fin",
                url: None,
                path: "/mcp/inspector",
                key_env: "AI2FIN_API_KEY",
                auth: AuthStyle::XApiKey,
                key_prefixes: &["mcp_"],
            },
            // vendor-converra-auth.txt: Bearer sk_live_/sk_test_, "https://converra.ai/api/mcp".
            Preset::Converra => PresetSpec {
                label: "Converra",
                url: Some("https://converra.ai/api/mcp"),
                path: "/api/mcp",
                key_env: "CONVERRA_API_KEY",
                auth: AuthStyle::Bearer,
                key_prefixes: &["sk_live_", "sk_test_"],
            },
        }
    }
}

/// How the API key travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `X-API-Key: KEY`.
    XApiKey,
    /// `<Name>: KEY`.
    Header(HeaderName),
}

impl AuthStyle {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "bearer" | "authorization" => Ok(AuthStyle::Bearer),
            "x-api-key" => Ok(AuthStyle::XApiKey),
            _ => HeaderName::from_bytes(s.as_bytes()).map(AuthStyle::Header).map_err(|_| {
                ConfigError(format!(
                    "--auth-header {s:?} is not a header name: use bearer, x-api-key, or a name like X-Auth-Token"
                ))
            }),
        }
    }
}

/// The API key and how to send it.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The variable it came from, for messages ("the key in INVESTRA_API_KEY was rejected").
    pub env_name: String,
    /// The key.
    pub secret: SecretString,
    /// The header it goes in.
    pub header: HeaderName,
    /// The header value, marked sensitive.
    pub value: HeaderValue,
    /// Issue 25.2: `--api-key-command`'s argv, run again after a 401 (a rotated key).
    pub command: Option<Vec<String>>,
}

/// A configuration problem, as one sentence for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The validated settings of a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The MCP endpoint.
    pub url: Url,
    /// The endpoint's path as the `--preset` knows it (for the hint when a URL answers 404).
    pub preset_path: Option<&'static str>,
    /// What reaches the model (issue 24.1).
    pub filters: Filters,
    /// A one-shot command (`call`, `tool`, `tools`, `check`), which spends as few of the user's
    /// requests as the protocol allows (issue 23.5): no stream for messages the server starts
    /// (nobody reads them), and no closing `DELETE` where the server states a rate limit (the
    /// session expires by itself; the request is the user's).
    pub one_shot: bool,
    /// Issue 24.5: the last `initialize` answer and lists are kept, to answer a client at
    /// start while the server cannot (`--no-list-cache` turns it off; one-shots keep none).
    pub keep_lists: bool,
    /// The API key, when one is configured.
    pub api_key: Option<ApiKey>,
    /// OAuth sign-in, when no key is configured and `--auth none` is not given: used when the
    /// server answers 401 with a Bearer challenge.
    pub oauth: Option<self::auth::Settings>,
    /// Extra headers, `${VAR}` already expanded; values marked sensitive.
    pub headers: HeaderMap,
    /// The values `${VAR}` put into those headers (secrets, by assumption).
    pub header_secrets: Vec<SecretString>,
    /// `--transport`.
    pub transport: Transport,
    /// `--protocol-era`.
    pub protocol_era: ProtocolEra,
    /// Extra trusted CA certificates (`--ca-file`).
    pub ca_certs: Vec<reqwest::Certificate>,
    /// `--client-cert`/`--client-key` (issue 25.3).
    pub client_cert: Option<std::sync::Arc<crate::clientcert::ClientCert>>,
    /// `--state-dir` or the XDG state dir; not created until needed.
    pub state_dir: Option<PathBuf>,
    /// `--connect-timeout`.
    pub connect_timeout: Duration,
    /// `--request-timeout`.
    pub request_timeout: Duration,
    /// `--max-message-bytes`.
    pub max_message_bytes: usize,
    /// `--max-retries` and `--max-wait`.
    pub retry: RetryPolicy,
    /// `--rate-limit`.
    pub rate_limits: Vec<Limit>,
    /// `--rate-limit-store` and its password.
    pub rate_limit_store: Option<StoreSettings>,
    /// `--log-level`.
    pub log_level: LogLevel,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--log-file` (issue 25.4).
    pub log_file: Option<std::path::PathBuf>,
    /// `--ping-interval` (issue 25.6); `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// Warnings found while resolving (a key without the expected prefix …), logged once at start.
    pub warnings: Vec<String>,
}

/// A client-side limit: at most `count` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

impl Limit {
    /// Parses `N/s`, `N/min`, `N/h` or `N/day`.
    pub fn parse(s: &str) -> Result<Limit, String> {
        let (n, unit) =
            s.trim().split_once('/').ok_or_else(|| format!("{s:?}: write it as N/min or N/day"))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{s:?}: {n:?} is not a positive number"))?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => return Err(format!("{s:?}: unknown unit {other:?}; use s, min, h or day")),
        };
        Ok(Limit { count, window })
    }

    /// `10/min`, for messages.
    pub fn describe(&self) -> String {
        let unit = match self.window.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "day",
        };
        format!("{}/{unit}", self.count)
    }
}

/// Where `--rate-limit-store` points, and the password from its variable.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `redis://host:port/db` or `rediss://…`, without a password.
    pub url: Url,
    /// The password from the variable named by `--rate-limit-store-password-env`, whole (the
    /// user, if any, is in the URL).
    pub password: Option<SecretString>,
    /// `--ca-file`'s certificates (PEM), trusted for `rediss://` instead of the system's store
    /// (a private CA, as for the MCP server).
    pub ca_pem: Option<Vec<u8>>,
}

/// The retry budget and the fallback backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `--max-retries`: automatic re-sends of one message.
    pub max_retries: u32,
    /// `--max-wait`: the longest single wait sat through; longer ones fail at once.
    pub max_wait: Duration,
}

/// The API key: from `--api-key-env` or the preset's variable, sent in the header `--auth-header`
/// or the preset names; `None` when another way to authenticate is chosen.
fn resolve_api_key(
    cli: &Args,
    preset: Option<&PresetSpec>,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<ApiKey>, ConfigError> {
    let key_env = match cli.auth {
        Some(AuthMethod::ApiKey) | None => {
            cli.api_key_env.clone().or_else(|| preset.map(|p| p.key_env.to_owned()))
        }
        Some(other) => {
            if cli.api_key_env.is_some() {
                return Err(ConfigError(format!(
                    "--api-key-env does not go with --auth {}: drop one of them",
                    method_name(other)
                )));
            }
            None
        }
    };
    if cli.api_key_command.is_some() && !matches!(cli.auth, None | Some(AuthMethod::ApiKey)) {
        return Err(ConfigError("--api-key-command is for an API key: drop --auth, or the command".into()));
    }
    if cli.auth == Some(AuthMethod::ApiKey) && key_env.is_none() && cli.api_key_command.is_none() {
        return Err(ConfigError(
            "--auth api-key needs a key: name the variable that holds it with --api-key-env (or use --preset)"
                .into(),
        ));
    }
    let style = match (&cli.auth_header, preset) {
        (Some(s), _) => AuthStyle::parse(s)?,
        (None, Some(p)) => p.auth.clone(),
        (None, None) => AuthStyle::Bearer,
    };
    if let Some(command) = &cli.api_key_command {
        return key_from_command(command, style).map(Some);
    }
    match key_env {
        Some(name) => {
            let key = read_key(&name, env, cli.preset, cli.installing)?;
            if let Some(p) = preset
                && !p.key_prefixes.iter().any(|pre| key.expose_secret().starts_with(pre))
            {
                warnings.push(format!(
                    "the key in {name} does not start with {}, as {} keys do: check that it is the right key",
                    p.key_prefixes.join(" or "),
                    p.label
                ));
            }
            Ok(Some(api_key(name, key, style)?))
        }
        None if cli.auth_header.is_some() => Err(ConfigError(
            "--auth-header needs a key: name the variable that holds it with --api-key-env".into(),
        )),
        None => Ok(None),
    }
}

impl Config {
    /// Resolves `cli` against the environment (`env` looks a variable up; tests pass a map).
    pub fn from_cli(cli: Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let spec = cli.preset.map(Preset::spec);
        let preset = spec.as_ref();
        let mut warnings = Vec::new();

        // Before anything else: a key given as a name is refused without being repeated.
        if let Some(name) = &cli.api_key_env {
            refuse_a_key_for_a_name(name)?;
        }
        let url = resolve_url(given_url(&cli, env)?.as_deref(), preset)?;
        check_scheme(&url, cli.allow_http)?;

        let api_key = resolve_api_key(&cli, preset, env, &mut warnings)?;
        one_credential(&url, api_key.as_ref())?;

        let mut header_secrets = Vec::new();
        let headers = parse_headers(&cli.headers, env, &mut header_secrets)?;
        let oauth = if api_key.is_none() && cli.auth != Some(AuthMethod::None) {
            Some(oauth_settings(&cli, env)?)
        } else {
            warn_oauth_flags_ignored(&cli, &mut warnings);
            None
        };
        if let Some(key) = &api_key
            && headers.contains_key(&key.header)
        {
            return Err(ConfigError(format!(
                "--header sets {} as well as the key in {}: drop one of them",
                key.header, key.env_name
            )));
        }

        let rate_limit_store = rate_limit_store(&cli, env)?;
        Ok(Config {
            url,
            preset_path: preset.map(|p| p.path),
            one_shot: cli.one_shot,
            keep_lists: !cli.no_list_cache && !cli.one_shot,
            filters: Filters::from_cli(&cli)?,
            api_key,
            oauth,
            headers,
            header_secrets,
            transport: cli.transport,
            protocol_era: cli.protocol_era,
            client_cert: client_cert(&cli, env, &mut warnings)?,
            ca_certs: match &cli.ca_file {
                Some(path) => read_ca_file(path)?,
                None => Vec::new(),
            },
            state_dir: cli.state_dir.or_else(default_state_dir),
            connect_timeout: seconds("--connect-timeout", cli.connect_timeout)?,
            request_timeout: seconds(
                "--request-timeout",
                cli.request_timeout.unwrap_or(crate::cli::DEFAULT_REQUEST_TIMEOUT),
            )?,
            max_message_bytes: cli.max_message_bytes.max(1024),
            retry: RetryPolicy {
                max_retries: cli.max_retries,
                max_wait: Duration::try_from_secs_f64(cli.max_wait).map_err(|_| {
                    ConfigError(format!("--max-wait {} is not a number of seconds (0 or more)", cli.max_wait))
                })?,
            },
            rate_limits: rate_limits(&cli.rate_limit, cli.plan, cli.preset)?,
            rate_limit_store,
            log_level: adjust_level(cli.log_level, cli.verbose, cli.quiet),
            log_format: cli.log_format,
            log_file: cli.log_file,
            ping_interval: ping_interval(cli.ping_interval)?,
            warnings,
        })
    }
}

impl Config {
    /// The file `dir/NAME.json` of the state dir that belongs to this endpoint and key (a hash
    /// that says nothing about either; issue 24: pins, kept lists); `None` without a state dir.
    pub fn endpoint_file(&self, dir: &str) -> Option<std::path::PathBuf> {
        let key = self.api_key.as_ref().map(|k| k.secret.expose_secret()).unwrap_or_default();
        let name = crate::statedir::state_name(self.url.as_str(), key);
        Some(self.state_dir.as_ref()?.join(dir).join(format!("{name}.json")))
    }

    /// Tells [`crate::secrets`] every secret this configuration holds (the key, the values of
    /// variables in headers, the client secret), so no error or log line can show one.
    pub fn remember_secrets(&self) {
        if let Some(key) = &self.api_key {
            crate::secrets::remember(key.secret.expose_secret());
        }
        for value in &self.header_secrets {
            crate::secrets::remember(value.expose_secret());
        }
        if let Some(oauth) = &self.oauth {
            if let Some((_, secret)) = &oauth.client_secret {
                crate::secrets::remember(secret.expose_secret());
            }
            // Issue 14: the identity tokens and the IdP client's secret.
            use self::auth::{Assertion, Grant};
            let (token, idp_secret) = match &oauth.grant {
                Grant::WorkloadIdentity(a) => (Some(a), None),
                Grant::Enterprise(e) => (Some(&e.id_token), e.idp_client_secret.as_ref()),
                _ => (None, None),
            };
            if let Some(Assertion::Env(_, v)) = token {
                crate::secrets::remember(v.expose_secret());
            }
            if let Some(v) = idp_secret {
                crate::secrets::remember(v.expose_secret());
            }
        }
        if let Some(password) = self.rate_limit_store.as_ref().and_then(|s| s.password.as_ref()) {
            crate::secrets::remember(password.expose_secret());
        }
    }
}

/// `--rate-limit-store` (issue 11): a redis:// or rediss:// URL without a password; the
/// password comes from the variable named by `--rate-limit-store-password-env`.
pub fn rate_limit_store(
    cli: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<StoreSettings>, ConfigError> {
    let Some(text) = cli.rate_limit_store.as_deref().filter(|t| !t.trim().is_empty()) else {
        if cli.rate_limit_store_password_env.is_some() {
            return Err(ConfigError(
                "--rate-limit-store-password-env needs --rate-limit-store: name the store too".into(),
            ));
        }
        return Ok(None);
    };
    let url = Url::parse(text.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some())
        .ok_or_else(|| {
            ConfigError(format!(
                "--rate-limit-store {:?} is not a Redis URL: write it as redis://HOST:PORT/DB (or rediss:// for TLS)",
                text.split('@').next_back().unwrap_or("")
            ))
        })?;
    if url.password().is_some() {
        return Err(ConfigError(
            "--rate-limit-store holds a password, which any local user could read in the process list: take it out of the URL and name the variable that holds it with --rate-limit-store-password-env".into(),
        ));
    }
    let password = secret_from_env(
        cli.rate_limit_store_password_env.as_deref(),
        env,
        "--rate-limit-store-password-env",
        "export the store's password in it",
    )?;
    let ca_pem = match &cli.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            ConfigError(format!(
                "--ca-file {} cannot be read ({e}): give the path of a PEM file",
                path.display()
            ))
        })?),
        None => None,
    };
    Ok(Some(StoreSettings { url, password, ca_pem }))
}

/// `--rate-limit` and the limits of `--plan` (issue 11), the strictest of each window kept.
fn rate_limits(
    given: &[String],
    plan: Option<Plan>,
    preset: Option<Preset>,
) -> Result<Vec<Limit>, ConfigError> {
    let mut limits: Vec<Limit> = given
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Limit::parse(l).map_err(|e| ConfigError(format!("--rate-limit {e}"))))
        .collect::<Result<_, _>>()?;
    if let Some(plan) = plan {
        if preset != Some(Preset::Investra) {
            return Err(ConfigError(
                "--plan goes with --preset investra (the only service whose plans mcp-sidecar knows): for another service, give its limits with --rate-limit, e.g. 60/min,5000/day".into(),
            ));
        }
        let (per_minute, per_day) = match plan {
            Plan::Free => (10, 100),
            Plan::Pro => (30, 1000),
            Plan::ProPlus => (60, 5000),
        };
        for (count, secs) in [(per_minute, 60), (per_day, 86_400)] {
            let window = Duration::from_secs(secs);
            if !limits.iter().any(|l| l.window == window && l.count <= count) {
                limits.retain(|l| l.window != window);
                limits.push(Limit { count, window });
            }
        }
    }
    Ok(limits)
}

/// `--log-level`, moved up by each `-v` and down by each `-q`.
fn adjust_level(level: LogLevel, verbose: u8, quiet: u8) -> LogLevel {
    const ORDER: [LogLevel; 5] =
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];
    let at = ORDER.iter().position(|l| *l == level).unwrap_or(2) as i32;
    ORDER[(at + i32::from(verbose) - i32::from(quiet)).clamp(0, 4) as usize]
}

/// The OAuth settings; the client secret is read from its variable here, like the key.
fn oauth_settings(
    cli: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<self::auth::Settings, ConfigError> {
    let client_secret = client_secret(cli, env)?;
    if let Some(u) = &cli.client_metadata_url {
        let ok =
            Url::parse(u).is_ok_and(|u| u.scheme() == "https" && u.path() != "/" && u.fragment().is_none());
        if !ok {
            return Err(ConfigError(format!(
                "--client-metadata-url {u:?} must be an https URL with a path, where your client ID metadata document is hosted"
            )));
        }
    }
    let keyring = cli.token_store == crate::cli::TokenStoreKind::Keyring;
    if keyring && !cfg!(feature = "keyring") {
        return Err(ConfigError(
            "--token-store keyring: this mcp-sidecar was built without keyring support; reinstall with cargo install --features keyring, or use --token-store file".into(),
        ));
    }
    let grant = grant(cli, env)?;
    let client_key = client_key(cli, client_secret.is_some())?;
    if matches!(grant, self::auth::Grant::ClientCredentials)
        && client_secret.is_none()
        && client_key.is_none()
    {
        return Err(ConfigError(
            "--auth client-credentials needs the client's credential: --client-secret-env NAME (the variable with its secret) or --client-key-file PATH (its private key)".into(),
        ));
    }
    Ok(self::auth::Settings {
        client_id: cli.client_id.clone(),
        client_secret,
        client_metadata_url: cli.client_metadata_url.clone(),
        callback_port: cli.callback_port,
        timeout: seconds("--auth-timeout", cli.auth_timeout)?,
        browser: env("BROWSER"),
        interactive: true,
        explicit: !matches!(cli.auth, None | Some(AuthMethod::ApiKey | AuthMethod::None)),
        keyring,
        grant,
        client_key,
        headless: false,
        idp: idp_knobs(cli)?,
    })
}

/// The value of the variable a `flag` names (`None` when no variable is named); an unset or
/// empty one is an error that says `fix`.
fn secret_from_env(
    name: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    flag: &str,
    fix: &str,
) -> Result<Option<SecretString>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    match env(name) {
        Some(v) if !v.is_empty() => Ok(Some(SecretString::from(v))),
        _ => Err(ConfigError(format!("{name} ({flag}) is not set: {fix}"))),
    }
}

/// Issue 25.3: `--client-cert` and `--client-key`, read and checked now (the passphrase from
/// the variable `--client-key-password-env` names).
fn client_cert(
    cli: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Option<std::sync::Arc<crate::clientcert::ClientCert>>, ConfigError> {
    let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) else { return Ok(None) };
    let password = secret_from_env(
        cli.client_key_password_env.as_deref(),
        env,
        "--client-key-password-env",
        "export it with the key's passphrase",
    )?;
    if let Some(p) = &password {
        crate::secrets::remember(p.expose_secret());
    }
    let loaded = crate::clientcert::ClientCert::load(cert, key, password.as_ref()).map_err(ConfigError)?;
    if let Some(expired) = loaded.expired() {
        warnings.push(format!(
            "the client certificate {} {expired}: servers that check it will refuse it; get a current one",
            loaded.shown
        ));
    }
    Ok(Some(std::sync::Arc::new(loaded)))
}

/// `--ping-interval`: at least a second (0 turns it off), at most a day.
fn ping_interval(given: Option<f64>) -> Result<Option<Duration>, ConfigError> {
    match given {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(s) if (1.0..=86_400.0).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(ConfigError(format!(
            "--ping-interval {s} is not a number of seconds from 1 to 86400 (0 turns pings off): give e.g. --ping-interval 240, under the idle timeout in front of the server"
        ))),
    }
}

/// The OAuth flags given with an API key or `--auth none`: ignored, and said so.
fn warn_oauth_flags_ignored(cli: &Args, warnings: &mut Vec<String>) {
    if cli.client_id.is_some()
        || cli.client_secret_env.is_some()
        || cli.client_metadata_url.is_some()
        || cli.client_key_file.is_some()
    {
        warnings.push(
            "--client-id, --client-secret-env, --client-key-file and --client-metadata-url are for OAuth; they are ignored with an API key or --auth none".into(),
        );
    }
    // Issue 25.1's identity-provider flags.
    if cli.scope.is_some()
        || cli.oauth_resource.is_some()
        || cli.no_resource_indicator
        || !cli.authorize_params.is_empty()
        || cli.use_id_token
    {
        warnings.push(
            "--scope, --oauth-resource, --no-resource-indicator, --authorize-param and --use-id-token are for OAuth; they are ignored with an API key or --auth none".into(),
        );
    }
}

/// Issue 25.1: `--scope`, `--oauth-resource`, `--no-resource-indicator`, `--authorize-param`,
/// `--use-id-token`, checked.
fn idp_knobs(cli: &Args) -> Result<self::auth::Knobs, ConfigError> {
    let scope = match cli.scope.as_deref().map(str::split_whitespace) {
        Some(words) => {
            let words: Vec<&str> = words.collect();
            if words.is_empty()
                || words.iter().any(|w| w.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
            {
                return Err(ConfigError(format!(
                    "--scope {:?} is not a list of scopes: give them separated by spaces, e.g. --scope 'openid offline_access'",
                    cli.scope.as_deref().unwrap_or_default()
                )));
            }
            Some(words.join(" "))
        }
        None => None,
    };
    let resource = match (&cli.oauth_resource, cli.no_resource_indicator) {
        (Some(r), _) => match Url::parse(r) {
            Ok(u) if u.fragment().is_none() => self::auth::Resource::Given(r.clone()),
            _ => {
                return Err(ConfigError(format!(
                    "--oauth-resource {r:?} is not an absolute URI without a fragment (RFC 8707): give the server's resource, e.g. api://00000000-0000-0000-0000-000000000000 or https://mcp.example.com"
                )));
            }
        },
        (None, true) => self::auth::Resource::Omitted,
        (None, false) => self::auth::Resource::Discovered,
    };
    let mut authorize_params = Vec::new();
    for p in &cli.authorize_params {
        let Some((key, value)) = p.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(ConfigError(format!(
                "--authorize-param {p:?} is not KEY=VALUE: write it as e.g. --authorize-param access_type=offline"
            )));
        };
        let key = key.trim();
        if self::auth::OWN_AUTHORIZE_PARAMS.iter().any(|own| own.eq_ignore_ascii_case(key)) {
            let instead = match key.to_ascii_lowercase().as_str() {
                "scope" => ": use --scope",
                "resource" => ": use --oauth-resource or --no-resource-indicator",
                _ => "",
            };
            return Err(ConfigError(format!(
                "--authorize-param {key}=…: the sign-in sets {key} itself, and it cannot be replaced{instead}"
            )));
        }
        authorize_params.push((key.to_owned(), value.to_owned()));
    }
    Ok(self::auth::Knobs { scope, resource, authorize_params, use_id_token: cli.use_id_token })
}

/// `--client-secret-env`: the variable's value, read here like the key.
fn client_secret(
    cli: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, SecretString)>, ConfigError> {
    match &cli.client_secret_env {
        Some(name) => {
            if cli.client_id.is_none() {
                return Err(ConfigError(
                    "--client-secret-env needs --client-id: name the client the secret belongs to".into(),
                ));
            }
            match env(name) {
                Some(v) if !v.trim().is_empty() => {
                    Ok(Some((name.clone(), SecretString::from(v.trim().to_owned()))))
                }
                _ => Err(ConfigError(format!(
                    "{name} (--client-secret-env) is not set: export it with the client secret, or drop --client-secret-env for a public client"
                ))),
            }
        }
        None => Ok(None),
    }
}

/// `--client-key-file`: the private key for `private_key_jwt`, with the flags it needs.
fn client_key(cli: &Args, has_secret: bool) -> Result<Option<crate::keyfile::ClientKey>, ConfigError> {
    match &cli.client_key_file {
        Some(path) => {
            if !matches!(
                cli.auth,
                Some(AuthMethod::ClientCredentials | AuthMethod::WorkloadIdentity | AuthMethod::Enterprise)
            ) {
                return Err(ConfigError(
                "--client-key-file signs client assertions for --auth client-credentials (or workload-identity, enterprise): add that, or drop the key file".into(),
            ));
            }
            if cli.client_id.is_none() {
                return Err(ConfigError(
                    "--client-key-file needs --client-id: name the client whose public key is registered"
                        .into(),
                ));
            }
            if has_secret {
                return Err(ConfigError(
                "--client-key-file and --client-secret-env are two ways to authenticate the client: keep one".into(),
            ));
            }
            Ok(Some(crate::keyfile::ClientKey::load(path).map_err(ConfigError)?))
        }
        None => Ok(None),
    }
}

/// The `--auth` value as typed.
fn method_name(m: AuthMethod) -> String {
    use clap::ValueEnum;
    m.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// How tokens are obtained, from `--auth` and the flags that go with it (issue 14).
fn grant(cli: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<self::auth::Grant, ConfigError> {
    use self::auth::{Enterprise, Grant};
    let needs_client = |what: &str| {
        if cli.client_id.is_none() {
            return Err(ConfigError(format!(
                "--auth {what} needs --client-id: the id of the client registered for mcp-sidecar at the authorization server"
            )));
        }
        Ok(())
    };
    Ok(match cli.auth {
        Some(AuthMethod::OauthDevice) => Grant::Device,
        Some(AuthMethod::ClientCredentials) => {
            needs_client("client-credentials")?;
            Grant::ClientCredentials
        }
        Some(AuthMethod::WorkloadIdentity) => {
            Grant::WorkloadIdentity(identity_token(cli, env, "workload-identity")?)
        }
        Some(AuthMethod::Enterprise) => {
            needs_client("enterprise")?;
            let endpoint = cli.idp_token_endpoint.as_deref().ok_or_else(|| {
                ConfigError(
                    "--auth enterprise needs --idp-token-endpoint: the token endpoint of your identity provider".into(),
                )
            })?;
            let url = Url::parse(endpoint)
                .ok()
                .filter(|u| u.scheme() == "https" || (u.scheme() == "http" && is_loopback(u)))
                .ok_or_else(|| {
                    ConfigError(format!(
                        "--idp-token-endpoint {endpoint:?} must be an https URL (the ID token travels there)"
                    ))
                })?;
            let idp_client_id = cli.idp_client_id.clone().ok_or_else(|| {
                ConfigError("--auth enterprise needs --idp-client-id: mcp-sidecar's client id at your identity provider".into())
            })?;
            let idp_client_secret = match &cli.idp_client_secret_env {
                Some(name) => Some(SecretString::from(env(name).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                    ConfigError(format!("{name} (--idp-client-secret-env) is not set: export it with the client's secret at your identity provider"))
                })?.trim().to_owned())),
                None => None,
            };
            Grant::Enterprise(Box::new(Enterprise {
                idp_token_endpoint: url,
                idp_client_id,
                idp_client_secret,
                id_token: identity_token(cli, env, "enterprise")?,
            }))
        }
        _ => {
            if cli.identity_token_file.is_some()
                || cli.identity_token_env.is_some()
                || cli.idp_token_endpoint.is_some()
            {
                return Err(ConfigError(
                    "--identity-token-file/--identity-token-env and --idp-token-endpoint go with --auth workload-identity or --auth enterprise: add one of those".into(),
                ));
            }
            Grant::Browser
        }
    })
}

/// `--identity-token-file` or `--identity-token-env` (exactly one).
fn identity_token(
    cli: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    what: &str,
) -> Result<self::auth::Assertion, ConfigError> {
    use self::auth::Assertion;
    match (&cli.identity_token_file, &cli.identity_token_env) {
        (Some(path), None) => Ok(Assertion::File(path.clone())),
        (None, Some(name)) => match env(name) {
            Some(v) if !v.trim().is_empty() => {
                Ok(Assertion::Env(name.clone(), SecretString::from(v.trim().to_owned())))
            }
            _ => Err(ConfigError(format!(
                "{name} (--identity-token-env) is not set: export the identity token there (in CI, the job's OIDC token)"
            ))),
        },
        (Some(_), Some(_)) => Err(ConfigError(
            "--identity-token-file and --identity-token-env both name the identity token: keep one".into(),
        )),
        (None, None) => Err(ConfigError(format!(
            "--auth {what} needs the identity token: --identity-token-file PATH or --identity-token-env NAME"
        ))),
    }
}

/// Issue 23.11: a key where a word of the command line goes (`--api-key-env inv_…`, a
/// positional `inv_…`): the preset of the service whose keys look like it.
pub fn looks_like_a_key(text: &str) -> Option<PresetSpec> {
    [Preset::Investra, Preset::Ai2fin, Preset::Converra]
        .into_iter()
        .map(Preset::spec)
        .find(|spec| spec.key_prefixes.iter().any(|pre| text.starts_with(pre) && text.len() > pre.len() + 3))
}

/// The error for a key given where a word goes: it is said without the key.
fn key_on_the_command_line(spec: &PresetSpec, place: &str) -> ConfigError {
    ConfigError(format!(
        "{place} looks like {} {} API key, which never goes on a command line (every local user can read it there; it is not repeated here): export it (export {}=…) and use --preset {} or --api-key-env {}",
        if spec.label.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" },
        spec.label,
        spec.key_env,
        spec.label.to_ascii_lowercase(),
        spec.key_env
    ))
}

/// Issue 23.11: credentials in the URL went as Basic auth instead of the key, and the 401 then
/// blamed the key's variable: one or the other.
fn one_credential(url: &Url, api_key: Option<&ApiKey>) -> Result<(), ConfigError> {
    match api_key {
        Some(key) if !url.username().is_empty() || url.password().is_some() => Err(ConfigError(format!(
            "the URL carries credentials (user:password@) and the key in {} is configured too: keep one (take them out of the URL, or pass --auth none to send only the URL's)",
            key.env_name
        ))),
        _ => Ok(()),
    }
}

/// `--allow-tools`, `--deny-tools`, `--allow-prompts`, `--deny-prompts`, `--deny-resources`:
/// globs, as given (issue 24.1); `--tool-prefix` and `--rename-tool` (issue 24.2), checked.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub allow_tools: Vec<String>,
    pub deny_tools: Vec<String>,
    pub allow_prompts: Vec<String>,
    pub deny_prompts: Vec<String>,
    pub deny_resources: Vec<String>,
    pub tool_prefix: Option<String>,
    /// `(OLD, NEW)`, in the order given.
    pub renames: Vec<(String, String)>,
    /// `--pin-tools` (issue 24.3).
    pub pin_tools: Option<crate::cli::PinMode>,
}

impl Filters {
    fn from_cli(cli: &Args) -> Result<Filters, ConfigError> {
        Ok(Filters {
            allow_tools: tool_globs("--allow-tools", &cli.allow_tools)?,
            deny_tools: tool_globs("--deny-tools", &cli.deny_tools)?,
            allow_prompts: tool_globs("--allow-prompts", &cli.allow_prompts)?,
            deny_prompts: tool_globs("--deny-prompts", &cli.deny_prompts)?,
            deny_resources: tool_globs("--deny-resources", &cli.deny_resources)?,
            tool_prefix: tool_prefix(cli.tool_prefix.as_deref())?,
            renames: renames(&cli.rename_tool)?,
            pin_tools: cli.pin_tools,
        })
    }

    /// Whether tools are listed under other names than the server's.
    pub fn renaming(&self) -> bool {
        self.tool_prefix.is_some() || !self.renames.is_empty()
    }
}

/// What makes `name` break the spec's rules for a tool's name (2025-11-25, "Tool names": 1 to
/// 128 characters of `A-Z a-z 0-9 _ - .`); `None` when it keeps them.
pub fn tool_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > 128 {
        return Some(format!("it is {} characters long, and a tool's name has at most 128", name.len()));
    }
    let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))?;
    Some(format!("it has {bad:?}, and a tool's name has only letters, digits, _, - and ."))
}

/// `--tool-prefix`: a start of a valid tool name (issue 24.2).
fn tool_prefix(given: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(prefix) = given else { return Ok(None) };
    match tool_name_problem(prefix) {
        Some(problem) if !prefix.is_empty() => {
            Err(ConfigError(format!("--tool-prefix {prefix:?} cannot start a tool's name: {problem}")))
        }
        Some(_) => {
            Err(ConfigError("--tool-prefix is empty: give a prefix like jira_, or leave the flag out".into()))
        }
        None if prefix.len() >= 128 => Err(ConfigError(format!(
            "--tool-prefix is {} characters long, which leaves no room for a tool's name (at most 128 in all)",
            prefix.len()
        ))),
        None => Ok(Some(prefix.to_owned())),
    }
}

/// `--rename-tool OLD=NEW`, each NEW a valid tool name, no OLD renamed twice and no NEW given
/// to two tools (issue 24.2).
fn renames(given: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in given {
        let Some((old, new)) = pair.split_once('=').map(|(o, n)| (o.trim(), n.trim())) else {
            return Err(ConfigError(format!(
                "--rename-tool {pair:?} is not OLD=NEW: give the server's name, =, and the name to list, like search=jira_search"
            )));
        };
        if old.is_empty() {
            return Err(ConfigError(format!("--rename-tool {pair:?} has no OLD name before =")));
        }
        if let Some(problem) = tool_name_problem(new) {
            return Err(ConfigError(format!(
                "--rename-tool {pair:?}: the new name {new:?} is not a valid tool name: {problem}"
            )));
        }
        if let Some((_, first)) = out.iter().find(|(o, _)| o == old) {
            return Err(ConfigError(format!(
                "--rename-tool renames {old} twice (to {first} and to {new}): keep one"
            )));
        }
        if let Some((other, _)) = out.iter().find(|(_, n)| n == new) {
            return Err(ConfigError(format!(
                "--rename-tool gives the name {new} to two tools, {other} and {old}: the client could not tell them apart"
            )));
        }
        out.push((old.to_owned(), new.to_owned()));
    }
    Ok(out)
}

/// The globs of one of those flags, trimmed; an empty one is refused (a stray
/// comma would otherwise hide every tool, or none).
fn tool_globs(flag: &str, given: &[String]) -> Result<Vec<String>, ConfigError> {
    given
        .iter()
        .map(|g| match g.trim() {
            "" => Err(ConfigError(format!(
                "{flag} has an empty glob (two commas, or one at an end): list names or globs like jira_*,echo"
            ))),
            g => Ok(g.to_owned()),
        })
        .collect()
}

/// `--api-key-env` takes a variable's name: a key there is refused, unrepeated (issue 23.11).
fn refuse_a_key_for_a_name(name: &str) -> Result<(), ConfigError> {
    if let Some(spec) = looks_like_a_key(name) {
        return Err(key_on_the_command_line(&spec, "the value of --api-key-env"));
    }
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Err(ConfigError(
            "--api-key-env takes the name of the variable that holds the key (letters, digits and _, e.g. MY_API_KEY), and what was given is not one (it is not repeated here, in case it is the key): export the key in a variable and name that"
                .into(),
        ));
    }
    Ok(())
}

/// The URL given: on the command line (positional or `--url`; both only if they agree), else
/// `MCP_SIDECAR_URL` (issue 23.7: the variable exported and a URL on the command line were a
/// conflict, though flags win over the environment everywhere else).
fn given_url(cli: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    match (&cli.url, &cli.url_flag) {
        (Some(a), Some(b)) if a != b => {
            let shown = |u: &str| Url::parse(u).map_or_else(|_| format!("{u:?}"), |u| redact_url(&u));
            Err(ConfigError(format!(
                "two different URLs were given, {} and {} (--url): give one",
                shown(a),
                shown(b)
            )))
        }
        (Some(u), _) | (None, Some(u)) => Ok(Some(u.clone())),
        (None, None) => Ok(env("MCP_SIDECAR_URL").filter(|u| !u.is_empty())),
    }
}

fn resolve_url(given: Option<&str>, preset: Option<&PresetSpec>) -> Result<Url, ConfigError> {
    if let Some(spec) = given.and_then(looks_like_a_key) {
        return Err(key_on_the_command_line(&spec, "the argument where the server's URL goes"));
    }
    let text = match (given, preset) {
        (Some(u), _) => u,
        (None, Some(p)) => p.url.ok_or_else(|| {
            ConfigError(format!(
                "--preset {} needs --url: {}'s docs give no host, so pass the server's address, e.g. --url https://<host>{}",
                p.label.to_ascii_lowercase(),
                p.label,
                p.path
            ))
        })?,
        (None, None) => {
            return Err(ConfigError(
                "no server URL: pass it as an argument (mcp-sidecar https://host/mcp) or use --preset".into(),
            ));
        }
    };
    if matches!(text, "login" | "logout" | "status") {
        return Err(ConfigError(format!(
            "{text} is a command: put it first, before the options (mcp-sidecar {text} --preset …)"
        )));
    }
    let mut url = Url::parse(text).map_err(|e| {
        // Issue 23.7: a word where a command goes is not "an invalid URL".
        if let Some(meant) = crate::cli::mistyped_command(text) {
            return ConfigError(format!("{text:?} is not a command: did you mean mcp-sidecar {meant}?"));
        }
        if !text.contains(['/', ':', '.']) {
            return ConfigError(format!(
                "{text:?} is neither a command ({}) nor a URL (the full address, e.g. https://host/mcp)",
                crate::cli::command_names().join(", ")
            ));
        }
        ConfigError(format!(
            "{text:?} is not a valid URL ({e}): give the full address, e.g. https://host/mcp"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError(format!(
            "{} is not an http(s) URL: give the full address, e.g. https://host/mcp",
            redact_url(&url)
        )));
    }
    // A preset with a user-given host and no path: the preset knows the path.
    if let Some(p) = preset
        && (url.path() == "/" || url.path().is_empty())
    {
        url.set_path(p.path);
    }
    Ok(url)
}

/// Plain http is refused for anything but loopback unless `--allow-http` says otherwise.
fn check_scheme(url: &Url, allow_http: bool) -> Result<(), ConfigError> {
    if url.scheme() == "http" && !allow_http && !is_loopback(url) {
        return Err(ConfigError(format!(
            "refusing plain http to {}: credentials would travel unencrypted. Use https, or pass --allow-http if you mean it",
            url.host_str().unwrap_or("?")
        )));
    }
    Ok(())
}

fn read_key(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    preset: Option<Preset>,
    installing: bool,
) -> Result<SecretString, ConfigError> {
    let example = preset.map_or("your-key", |p| p.spec().key_prefixes[0]);
    let suffix = if preset.is_some() { "..." } else { "" };
    match env(name) {
        // Issue 23.9: `install` writes the key into the client's "env" block itself.
        None if installing => Err(ConfigError(format!(
            "{name} is not set: export it (export {name}={example}{suffix}) and run install again: it copies the key into the \"env\" block of the client's config for you (or name another variable with --api-key-env)"
        ))),
        None => Err(ConfigError(format!(
            "{name} is not set: export it (export {name}={example}{suffix}) or put it in the \"env\" block of your MCP client's config, or name another variable with --api-key-env"
        ))),
        Some(v) if v.trim().is_empty() => Err(ConfigError(format!(
            "{name} is empty: set it to your API key, or name another variable with --api-key-env"
        ))),
        // Keys never have surrounding whitespace; a pasted newline or space would only get a 401.
        Some(v) => Ok(SecretString::from(v.trim().to_owned())),
    }
}

fn api_key(env_name: String, secret: SecretString, style: AuthStyle) -> Result<ApiKey, ConfigError> {
    let (header, text) = match style {
        AuthStyle::Bearer => (AUTHORIZATION, format!("Bearer {}", secret.expose_secret())),
        AuthStyle::XApiKey => (X_API_KEY.clone(), secret.expose_secret().to_owned()),
        AuthStyle::Header(name) => (name, secret.expose_secret().to_owned()),
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        ConfigError(format!(
            "the key in {env_name} contains characters that cannot go in an HTTP header (a line break or non-ASCII text?): set it to the key alone"
        ))
    })?;
    value.set_sensitive(true);
    Ok(ApiKey { env_name, secret, header, value, command: None })
}

/// Issue 25.2: the key `--api-key-command` prints (run now: a command that fails is said at
/// start), kept with its argv for a rerun after a 401.
fn key_from_command(command: &str, style: AuthStyle) -> Result<ApiKey, ConfigError> {
    let argv = crate::keycmd::split(command).map_err(ConfigError)?;
    let secret = crate::keycmd::run(&argv, crate::keycmd::TIMEOUT).map_err(ConfigError)?;
    let key = api_key(KEY_COMMAND.into(), secret, style)?;
    Ok(ApiKey { command: Some(argv), ..key })
}

/// What an API key from `--api-key-command` is called in messages ("the API key in …").
pub const KEY_COMMAND: &str = "the output of --api-key-command";

/// Parses `Name: value` headers, expanding `${VAR}` from the environment; the values the
/// variables held go to `secrets`.
fn parse_headers(
    raw: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    secrets: &mut Vec<SecretString>,
) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for h in raw.iter().filter(|h| !h.trim().is_empty()) {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ConfigError(format!("--header {h:?} has no colon: write it as 'Name: value'")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            ConfigError(format!("--header {:?}: {:?} is not a valid header name", h, name.trim()))
        })?;
        let expanded = expand_vars(value.trim(), env, secrets).map_err(|var| {
            ConfigError(format!(
                "--header {name}: the variable {var} is not set: export it, or remove the header"
            ))
        })?;
        let mut value = HeaderValue::from_str(&expanded).map_err(|_| {
            ConfigError(format!(
                "--header {name}: the value contains characters that cannot go in an HTTP header"
            ))
        })?;
        // Expanded values are often secrets; never print them.
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

/// Replaces every `${VAR}` with its value (kept in `values` too); `$$` stands for `$`. Returns
/// the name of an unset variable.
fn expand_vars(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    values: &mut Vec<SecretString>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = rest.strip_prefix("${").and_then(|r| r.find('}')) {
            let name = &rest[2..2 + end];
            let value = env(name).ok_or_else(|| name.to_owned())?;
            out.push_str(&value);
            values.push(SecretString::from(value));
            rest = &rest[3 + end..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the certificates of `--ca-file`.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError(format!("--ca-file {shown} cannot be read ({e}): give the path of a PEM file"))
    })?;
    match reqwest::Certificate::from_pem_bundle(&bytes) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(ConfigError(format!(
            "--ca-file {shown} holds no PEM certificate: it should contain -----BEGIN CERTIFICATE----- blocks"
        ))),
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError(format!("{flag} {secs} is not a positive number of seconds")))
}

/// Where tokens and rate-limit state live: `$XDG_STATE_HOME/mcp-sidecar` (or
/// `~/.local/state/mcp-sidecar`) on Linux and macOS (a command-line tool's XDG layout, which
/// etcetera chooses on macOS too); `%LOCALAPPDATA%\mcp-sidecar` on Windows: local, not roaming
/// (issue 12), since tokens and windows belong to this machine, and a roaming profile would copy
/// them to others.
pub fn default_state_dir() -> Option<PathBuf> {
    use etcetera::BaseStrategy;
    let base = etcetera::choose_base_strategy().ok()?;
    // Windows has no state directory; etcetera's cache directory there is %LOCALAPPDATA%.
    let dir =
        if cfg!(windows) { base.cache_dir() } else { base.state_dir().unwrap_or_else(|| base.data_dir()) };
    Some(dir.join("mcp-sidecar"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: Windows keeps tokens and state in the local app data, not the roaming one.
    #[cfg(windows)]
    #[test]
    fn windows_state_lives_in_local_app_data() {
        let local = std::env::var_os("LOCALAPPDATA").expect("Windows sets LOCALAPPDATA");
        assert_eq!(default_state_dir(), Some(PathBuf::from(local).join("mcp-sidecar")));
    }
    use clap::Parser;
    use std::collections::HashMap;

    fn config(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cli = crate::cli::Cli::try_parse_from(std::iter::once("mcp-sidecar").chain(args.iter().copied()))
            .unwrap();
        Config::from_cli(cli.args, &|k| vars.get(k).cloned())
    }

    fn err(args: &[&str], vars: &[(&str, &str)]) -> String {
        config(args, vars).unwrap_err().0
    }

    /// Issue 14: each grant says what it is missing, and secrets never come from flags.
    #[test]
    fn headless_grants_name_what_they_need() {
        let u = "https://h.example/mcp";
        let e = err(&[u, "--auth", "client-credentials"], &[]);
        assert!(e.contains("--client-id"), "{e}");
        let e = err(&[u, "--auth", "client-credentials", "--client-id", "c"], &[]);
        assert!(e.contains("--client-secret-env") && e.contains("--client-key-file"), "{e}");
        let e = err(&[u, "--auth", "workload-identity"], &[]);
        assert!(e.contains("--identity-token-file") && e.contains("--identity-token-env"), "{e}");
        let e = err(&[u, "--auth", "workload-identity", "--identity-token-env", "T"], &[]);
        assert!(e.contains("T (--identity-token-env) is not set"), "{e}");
        let e = err(
            &[u, "--auth", "workload-identity", "--identity-token-env", "T", "--identity-token-file", "/f"],
            &[("T", "x")],
        );
        assert!(e.contains("keep one"), "{e}");
        let e =
            err(&[u, "--auth", "enterprise", "--client-id", "c", "--identity-token-env", "T"], &[("T", "x")]);
        assert!(e.contains("--idp-token-endpoint"), "{e}");
        let e = err(
            &[
                u,
                "--auth",
                "enterprise",
                "--client-id",
                "c",
                "--idp-token-endpoint",
                "http://idp.example/t",
                "--idp-client-id",
                "i",
                "--identity-token-env",
                "T",
            ],
            &[("T", "x")],
        );
        assert!(e.contains("https"), "the ID token does not travel in the clear: {e}");
        let e = err(&[u, "--auth", "oauth", "--client-id", "c", "--client-key-file", "/k"], &[]);
        assert!(e.contains("--auth client-credentials"), "{e}");
        let e = err(&[u, "--identity-token-file", "/f"], &[]);
        assert!(e.contains("--auth workload-identity"), "{e}");
        let e = err(&[u, "--auth", "oauth-device", "--api-key-env", "K"], &[("K", "k")]);
        assert!(e.contains("--auth oauth-device"), "{e}");

        let c = config(
            &[u, "--auth", "workload-identity", "--identity-token-env", "T"],
            &[("T", " tok-SECRET \n")],
        )
        .unwrap();
        let o = c.oauth.unwrap();
        assert!(o.explicit && o.grant.unattended() && o.grant.kind() == "workload_identity");
        match o.grant {
            self::auth::Grant::WorkloadIdentity(self::auth::Assertion::Env(n, v)) => {
                assert_eq!((n.as_str(), v.expose_secret()), ("T", "tok-SECRET"));
            }
            other => panic!("{other:?}"),
        }
        let c = config(&[u, "--auth", "oauth-device"], &[]).unwrap();
        assert!(matches!(c.oauth.unwrap().grant, self::auth::Grant::Device));
    }

    #[test]
    fn issue23_7_a_url_on_the_command_line_wins_over_mcp_sidecar_url() {
        let env = [("MCP_SIDECAR_URL", "http://127.0.0.1:1/env"), ("K", "k")];
        let c = config(&["http://127.0.0.1:2/arg", "--api-key-env", "K"], &env).unwrap();
        assert_eq!(c.url.as_str(), "http://127.0.0.1:2/arg");
        let c = config(&["--url", "http://127.0.0.1:3/flag", "--api-key-env", "K"], &env).unwrap();
        assert_eq!(c.url.as_str(), "http://127.0.0.1:3/flag");
        let c = config(&["--api-key-env", "K"], &env).unwrap();
        assert_eq!(c.url.as_str(), "http://127.0.0.1:1/env");
        let same = ["http://127.0.0.1:2/a", "--url", "http://127.0.0.1:2/a", "--api-key-env", "K"];
        assert!(config(&same, &env).is_ok());
        let e =
            err(&["http://u:pw@127.0.0.1:2/a", "--url", "http://127.0.0.1:2/b", "--api-key-env", "K"], &env);
        assert!(e.starts_with("two different URLs were given") && !e.contains("pw"), "{e}");
        let e = err(&["chek", "--api-key-env", "K"], &env);
        assert_eq!(e, r#""chek" is not a command: did you mean mcp-sidecar check?"#);
    }

    #[test]
    fn issue23_11_a_key_where_a_name_or_the_url_goes_is_refused_unrepeated() {
        let key = "inv_abcdefSECRET123";
        for args in
            [&["--api-key-env", key][..], &[key], &["http://127.0.0.1:1/mcp", "--api-key-env", "my-var.x"]]
        {
            let e = err(args, &[]);
            assert!(!e.contains("SECRET") && !e.contains("my-var"), "{e}");
        }
        assert!(err(&["--api-key-env", key], &[]).contains("export INVESTRA_API_KEY"));
        assert!(looks_like_a_key("sk_live_1234567").is_some_and(|p| p.label == "Converra"));
        assert!(looks_like_a_key("INVESTRA_API_KEY").is_none() && looks_like_a_key("inv_").is_none());
        let env = [("K", "inv_abcdef123456")];
        let e = err(&["https://u:pw@h.example/mcp", "--api-key-env", "K"], &env);
        assert!(e.starts_with("the URL carries credentials") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn investra_preset_fills_everything() {
        let c = config(&["--preset", "investra"], &[("INVESTRA_API_KEY", "inv_abc")]).unwrap();
        assert_eq!(c.url.as_str(), "https://www.investraapp.com/api/mcp");
        let key = c.api_key.unwrap();
        assert_eq!(key.header, AUTHORIZATION);
        assert_eq!(key.value, "Bearer inv_abc");
        assert!(key.value.is_sensitive());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn ai2fin_preset_requires_url_and_adds_the_inspector_path() {
        let e = err(&["--preset", "ai2fin"], &[("AI2FIN_API_KEY", "mcp_x")]);
        assert!(e.contains("--url") && e.contains("/mcp/inspector"), "{e}");
        let c =
            config(&["--preset", "ai2fin", "https://fin.example"], &[("AI2FIN_API_KEY", "mcp_x")]).unwrap();
        assert_eq!(c.url.as_str(), "https://fin.example/mcp/inspector");
        assert_eq!(c.api_key.unwrap().header, "x-api-key");
    }

    #[test]
    fn explicit_options_override_the_preset() {
        let c = config(
            &["--preset", "converra", "--api-key-env", "K", "--auth-header", "x-api-key", "https://h/x"],
            &[("K", "sk_test_1")],
        )
        .unwrap();
        assert_eq!(c.url.as_str(), "https://h/x");
        let key = c.api_key.unwrap();
        assert_eq!((key.env_name.as_str(), key.header.as_str()), ("K", "x-api-key"));
    }

    #[test]
    fn missing_and_empty_key_name_the_variable_and_the_fix() {
        let e = err(&["--preset", "investra"], &[]);
        assert!(e.starts_with("INVESTRA_API_KEY is not set"), "{e}");
        assert!(e.contains("--api-key-env"), "{e}");
        let e = err(&["--preset", "investra"], &[("INVESTRA_API_KEY", "  ")]);
        assert!(e.starts_with("INVESTRA_API_KEY is empty"), "{e}");
    }

    #[test]
    fn wrong_prefix_warns_without_the_key() {
        let c = config(&["--preset", "investra"], &[("INVESTRA_API_KEY", "sk_live_SECRETVALUE")]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("inv_"));
        assert!(!c.warnings[0].contains("SECRETVALUE"));
    }

    #[test]
    fn key_is_trimmed_and_bad_characters_are_refused_without_echo() {
        let c = config(&["http://127.0.0.1:1/mcp", "--api-key-env", "K"], &[("K", " abc \n")]).unwrap();
        assert_eq!(c.api_key.unwrap().value, "Bearer abc");
        let e = err(&["http://127.0.0.1:1/mcp", "--api-key-env", "K"], &[("K", "ab\ncd-SECRET")]);
        assert!(e.contains("cannot go in an HTTP header") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let e = err(&["http://example.com/mcp"], &[]);
        assert!(e.contains("--allow-http"), "{e}");
        assert!(config(&["http://example.com/mcp", "--allow-http"], &[]).is_ok());
        assert!(config(&["http://localhost:9/mcp"], &[]).is_ok());
        assert!(config(&["http://[::1]:9/mcp"], &[]).is_ok());
    }

    #[test]
    fn headers_expand_variables_and_name_unset_ones() {
        let c = config(
            &["http://127.0.0.1:1/mcp", "-H", "X-Tenant: t-${TENANT}", "-H", "X-Cost: $$5"],
            &[("TENANT", "42")],
        )
        .unwrap();
        assert_eq!(c.headers["x-tenant"], "t-42");
        assert_eq!(c.headers["x-cost"], "$5");
        let e = err(&["http://127.0.0.1:1/mcp", "-H", "X-Token: ${NOPE}"], &[]);
        assert!(e.contains("NOPE is not set"), "{e}");
        let e = err(&["http://127.0.0.1:1/mcp", "-H", "no colon"], &[]);
        assert!(e.contains("no colon"), "{e}");
    }

    #[test]
    fn no_url_says_how_to_give_one() {
        assert!(err(&[], &[]).contains("no server URL"));
        assert!(err(&["ftp://x/y"], &[]).contains("not an http(s) URL"));
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert!(
            err(&["http://127.0.0.1:1/mcp", "--request-timeout", "0"], &[]).contains("--request-timeout")
        );
        let c = config(&["http://127.0.0.1:1/mcp", "--request-timeout", "1.5"], &[]).unwrap();
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn retry_and_rate_limit_options() {
        let c = config(&["http://127.0.0.1:1/mcp", "--max-wait", "0", "--rate-limit", "10/min,100/day"], &[])
            .unwrap();
        assert_eq!(c.retry.max_wait, Duration::ZERO);
        assert_eq!(c.retry.max_retries, 3);
        assert_eq!(c.rate_limits.len(), 2);
        let e = err(&["http://127.0.0.1:1/mcp", "--rate-limit", "10/fortnight"], &[]);
        assert!(e.starts_with("--rate-limit") && e.contains("unit"), "{e}");
        assert!(err(&["http://127.0.0.1:1/mcp", "--max-wait=-1"], &[]).contains("--max-wait"));
    }

    /// Issue 11: `--plan` adds Investra's published limits; a stricter --rate-limit wins.
    #[test]
    fn plans_add_their_limits() {
        let key = [("INVESTRA_API_KEY", "inv_abc")];
        let c = config(&["--preset", "investra", "--plan", "pro"], &key).unwrap();
        let shown: Vec<String> = c.rate_limits.iter().map(Limit::describe).collect();
        assert_eq!(shown, ["30/min", "1000/day"]);
        let c =
            config(&["--preset", "investra", "--plan", "pro-plus", "--rate-limit", "20/min"], &key).unwrap();
        let shown: Vec<String> = c.rate_limits.iter().map(Limit::describe).collect();
        assert_eq!(shown, ["20/min", "5000/day"]);
        let c = config(&["--preset", "investra", "--rate-limit", "60/min,5000/day"], &key).unwrap();
        assert_eq!(c.rate_limits.len(), 2, "several limits in one value");
        let e = err(&["http://127.0.0.1:1/mcp", "--plan", "free"], &[]);
        assert!(e.contains("--preset investra"), "{e}");
    }

    /// Issue 11: the store's URL is checked and never holds the password.
    #[test]
    fn the_rate_limit_store_takes_its_password_from_a_variable() {
        let base = ["http://127.0.0.1:1/mcp", "--rate-limit-store"];
        let c = config(&[&base[..], &["redis://127.0.0.1:6380/2"]].concat(), &[]).unwrap();
        assert_eq!(c.rate_limit_store.unwrap().url.as_str(), "redis://127.0.0.1:6380/2");
        let e = err(&[&base[..], &["redis://:SECRETPW@h:6379"]].concat(), &[]);
        assert!(e.contains("--rate-limit-store-password-env") && !e.contains("SECRETPW"), "{e}");
        let e = err(&[&base[..], &["http://h:6379"]].concat(), &[]);
        assert!(e.contains("not a Redis URL"), "{e}");
        let line = [&base[..], &["rediss://h:6380", "--rate-limit-store-password-env", "RP"]].concat();
        let c = config(&line, &[("RP", "fleet:pw-1")]).unwrap();
        assert_eq!(c.rate_limit_store.unwrap().password.unwrap().expose_secret(), "fleet:pw-1");
        assert!(err(&line, &[]).contains("RP (--rate-limit-store-password-env) is not set"));
    }

    #[test]
    fn redacted_urls_lose_credentials_and_query() {
        let u = Url::parse("https://user:pw@h/mcp?token=abc#x").unwrap();
        assert_eq!(redact_url(&u), "https://h/mcp");
    }
}
