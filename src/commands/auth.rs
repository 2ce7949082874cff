//! `login`, `logout`, `status`: OAuth sign-in managed from a terminal.
//!
//! They print for people: progress and errors on stderr, the answer (`status`) on stdout. Each
//! returns the exit status: 0 done, 1 failed, 2 a configuration problem.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::grants::Grant;
use crate::auth::store::{Entry, TokenStore};
use crate::auth::{OAuth, Renew, challenge, discovery};
use crate::config::Config;
use crate::net::redact_url;

use super::exit::{CONFIG, FAILED, OK};

/// `mcp-sidecar login`: asks the server whether it needs a sign-in, and signs in.
pub async fn login(config: Config, device: bool) -> u8 {
    let Some(mut settings) = config.oauth.clone() else {
        eprintln!(
            "mcp-sidecar: this setup uses the API key in {}; login is for servers that use OAuth (drop --api-key-env/--preset's key, or pass --auth oauth)",
            config.api_key.as_ref().map_or("a variable", |k| k.env_name.as_str())
        );
        return CONFIG;
    };
    // Issue 14: `--device`, or by itself where no browser can be opened (SSH, no display) and
    // the server offers device codes.
    match settings.grant {
        Grant::Browser | Grant::Device if device => settings.grant = Grant::Device,
        Grant::Browser => settings.headless = crate::auth::browser::unavailable(&|n| std::env::var(n).ok()),
        _ if device => {
            eprintln!(
                "mcp-sidecar: --device signs a person in; it does not go with --auth {}",
                settings.grant.kind().replace('_', "-")
            );
            return CONFIG;
        }
        _ => {}
    }
    let unattended = settings.grant.unattended();
    let oauth = match OAuth::open(&config, settings).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            return FAILED;
        }
    };
    let probe = match oauth.probe().await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            return FAILED;
        }
    };
    let status = probe.status;
    let refs: Vec<&str> = probe.challenges.iter().map(String::as_str).collect();
    let bearer = challenge::bearer(&refs);
    if status.is_success() && !oauth.explicit() {
        eprintln!(
            "mcp-sidecar: {} answered without a sign-in (HTTP {}): nothing to do",
            redact_url(&config.url),
            status.as_u16()
        );
        return OK;
    }
    if status.as_u16() != 401 && !oauth.explicit() {
        eprintln!(
            "mcp-sidecar: {} answered HTTP {} instead of asking for a sign-in (401): check the URL, or pass --auth oauth to sign in anyway",
            redact_url(&config.url),
            status.as_u16()
        );
        return FAILED;
    }
    match oauth.renew(None, bearer.as_ref(), Renew::Login, Duration::MAX).await {
        Ok(_) if unattended => {
            eprintln!(
                "mcp-sidecar: the authorization server of {} accepted the credentials and issued a token. Nothing was stored: mcp-sidecar asks for a new token by itself whenever it needs one.",
                redact_url(&config.url)
            );
            OK
        }
        Ok(_) => {
            let (store, _, _) = oauth.store();
            eprintln!(
                "mcp-sidecar: signed in to {}. The tokens are in {}; every mcp-sidecar for this server uses them (mcp-sidecar logout removes them).",
                redact_url(&config.url),
                store.dir().display()
            );
            OK
        }
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            FAILED
        }
    }
}

/// `mcp-sidecar logout`: forgets the server's tokens and client registration.
pub fn logout(config: &Config) -> u8 {
    let Some(dir) = &config.state_dir else {
        eprintln!("mcp-sidecar: no state directory: pass --state-dir");
        return CONFIG;
    };
    let store = TokenStore::new(dir);
    let (origin, key) =
        (config.url.origin().ascii_serialization(), discovery::canonical_resource(&config.url));
    let had = matches!(store.load(&origin, &key), Ok(Some(_)) | Err(_));
    match store.remove(&origin, &key) {
        Ok(()) if had => {
            eprintln!(
                "mcp-sidecar: signed out of {}: removed the stored tokens and client registration. To revoke access on the server's side too, use its account settings.",
                redact_url(&config.url)
            );
            OK
        }
        Ok(()) => {
            eprintln!("mcp-sidecar: nothing was stored for {}", redact_url(&config.url));
            OK
        }
        Err(e) => {
            eprintln!("mcp-sidecar: {e}");
            FAILED
        }
    }
}

/// `mcp-sidecar status`: what is stored, for one server (`config`) or all; never a secret.
/// With `clear_limits`: removes the stored rate-limit deadlines instead. With `store`
/// (`--rate-limit-store`), the deadlines in the store too.
pub fn status(
    state_dir: Option<&Path>,
    server: Option<&Config>,
    clear_limits: bool,
    store: Option<&crate::ratelimit::StoreSettings>,
) -> u8 {
    let Some(dir) = state_dir else {
        eprintln!("mcp-sidecar: no state directory: pass --state-dir");
        return CONFIG;
    };
    let origin = server.map(|c| c.url.origin().ascii_serialization());
    let in_store = match store {
        Some(settings) => match in_the_store(settings, origin.as_deref(), clear_limits) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("mcp-sidecar: {e}: check --rate-limit-store and that the store is running");
                return FAILED;
            }
        },
        None => Vec::new(),
    };
    if clear_limits {
        for l in &in_store {
            eprintln!("mcp-sidecar: cleared in the store {}", describe_limit(l));
        }
        return clear(dir, origin.as_deref(), !in_store.is_empty());
    }
    let code = sign_ins(dir, server);
    let mut limits = crate::ratelimit::stored_limits(dir, origin.as_deref());
    limits.extend(in_store);
    let mut out = std::io::stdout().lock();
    if limits.is_empty() {
        let _ = writeln!(out, "no rate-limit deadlines stored");
    } else {
        let _ = writeln!(out, "rate-limit deadlines (mcp-sidecar status --clear-limits removes them):");
        for l in &limits {
            let _ = writeln!(out, "  {}", describe_limit(l));
        }
    }
    code
}

/// One stored deadline for people: origin, until when (and in how long), which header.
fn describe_limit(l: &crate::ratelimit::StoredLimit) -> String {
    let left = l.until.duration_since(SystemTime::now()).unwrap_or_default();
    format!(
        "{}  until {} (in {}), set by {}",
        l.origin,
        humantime::format_rfc3339_seconds(l.until),
        crate::retry::human(left),
        if l.by.is_empty() { "the server" } else { &l.by }
    )
}

/// The deadlines in the store (cleared with `clear`), on a runtime of their own.
fn in_the_store(
    settings: &crate::ratelimit::StoreSettings,
    origin: Option<&str>,
    clear: bool,
) -> Result<Vec<crate::ratelimit::StoredLimit>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(crate::ratelimit::store_limits(settings, origin, clear)).map_err(|e| e.0)
}

/// `status --clear-limits`.
fn clear(dir: &Path, origin: Option<&str>, cleared_elsewhere: bool) -> u8 {
    match crate::ratelimit::clear_limits(dir, origin) {
        Ok(cleared) if cleared.is_empty() && cleared_elsewhere => OK,
        Ok(cleared) if cleared.is_empty() => {
            eprintln!("mcp-sidecar: no rate-limit deadlines to clear");
            OK
        }
        Ok(cleared) => {
            for l in &cleared {
                eprintln!("mcp-sidecar: cleared {}", describe_limit(l));
            }
            OK
        }
        Err(e) => {
            eprintln!(
                "mcp-sidecar: the rate-limit state under {} cannot be changed ({e}): check --state-dir",
                dir.display()
            );
            FAILED
        }
    }
}

/// The sign-ins part of `status`.
fn sign_ins(dir: &Path, server: Option<&Config>) -> u8 {
    let store = TokenStore::new(dir);
    let mut out = std::io::stdout().lock();
    let entries: Vec<_> = match server {
        Some(config) => {
            let (origin, key) =
                (config.url.origin().ascii_serialization(), discovery::canonical_resource(&config.url));
            match store.load(&origin, &key) {
                Ok(Some(e)) => vec![Ok(e)],
                // Issue 23.11: an API-key setup is not "not signed in": it says which key it uses.
                Ok(None) if let Some(key) = &config.api_key => {
                    let shown = super::check::mask(secrecy::ExposeSecret::expose_secret(&key.secret));
                    let _ = writeln!(
                        out,
                        "{}: the API key in {} ({shown}), sent as {}; no OAuth sign-in is used",
                        redact_url(&config.url),
                        key.env_name,
                        key.header
                    );
                    return OK;
                }
                Ok(None) => {
                    let _ = writeln!(out, "{}: not signed in", redact_url(&config.url));
                    return OK;
                }
                Err(e) => vec![Err(e)],
            }
        }
        None => store.all().into_iter().map(|(_, e)| e).collect(),
    };
    if entries.is_empty() {
        let _ = writeln!(out, "no sign-ins stored in {}", store.dir().display());
        return OK;
    }
    let mut code = OK;
    for entry in entries {
        match entry {
            Ok(e) => {
                let _ = write!(out, "{}", describe(&e));
            }
            Err(e) => {
                let _ = writeln!(out, "unusable entry: {e}");
                code = FAILED;
            }
        }
    }
    code
}

/// One entry as text, without a secret.
fn describe(e: &Entry) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut s = format!("{}\n", if e.server.is_empty() { "(unknown server)" } else { &e.server });
    let field = |s: &mut String, k: &str, v: &str| s.push_str(&format!("  {k:<14} {v}\n"));
    field(&mut s, "issuer", e.issuer.as_deref().unwrap_or("-"));
    // Issue 14: how the tokens were obtained (entries from before it: the browser).
    let grant = match e.grant.as_deref() {
        Some("device_code") => "device code (login --device)",
        Some("authorization_code") | None => "browser sign-in (authorization code)",
        Some(other) => other,
    };
    field(&mut s, "signed in by", grant);
    match &e.client {
        Some(c) => field(&mut s, "client id", &format!("{} ({})", c.client_id, c.auth.as_str())),
        None => field(&mut s, "client id", "pre-registered (--client-id) or none"),
    }
    match &e.tokens {
        Some(t) => {
            field(&mut s, "scopes", t.scope.as_deref().unwrap_or("(none asked)"));
            let expiry = match t.expires_at {
                Some(at) if at <= now => "expired".to_owned(),
                Some(at) => format!("in {}", crate::retry::human(std::time::Duration::from_secs(at - now))),
                None => "not said".to_owned(),
            };
            field(&mut s, "access token", &format!("stored, expires {expiry}"));
            field(&mut s, "refresh token", if t.refresh_token.is_some() { "stored" } else { "none" });
            if t.dpop {
                field(&mut s, "bound to", "a DPoP key kept with the tokens (RFC 9449)");
            }
        }
        None => field(&mut s, "access token", "none (sign in with mcp-sidecar login)"),
    }
    s
}
