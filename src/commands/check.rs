//! `check`: connects and reports each step with its timing and a verdict.
//!
//! Steps: configuration (which variable holds the key, masked), DNS, TLS (issuer, expiry) and
//! HTTP (one GET), the MCP handshake through the same proxy the stdio server uses (server,
//! revision, era, transport, capabilities), what the server offers (tools, resources, prompts),
//! the auth method, and the rate-limit headers seen. The first failing step ends the check with
//! one sentence naming the cause and the fix. Exit 0 when healthy, 1 otherwise; `--json` prints
//! the same report as one JSON object.

use std::io::Write;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::exit::{FAILED, OK};
use crate::cli::Preset;
use crate::client::Client;
use crate::config::Config;
use crate::net::redact_url;

/// The fix for a step that got no answer in time.
const STALLED: &str =
    "the server is stalled or overloaded: try again later, or give it longer with --request-timeout SECS";

/// One step of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub ms: u64,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `check`. It never opens a browser: a server that needs a sign-in is reported with the fix
/// (`mcp-sidecar login`).
pub async fn check(mut config: Config, as_json: bool) -> u8 {
    if let Some(oauth) = config.oauth.as_mut() {
        oauth.interactive = false;
    }
    let mut steps = Vec::new();
    let mut server = Value::Null;
    let healthy = run(&config, &mut steps, &mut server).await;
    if as_json {
        let report =
            json!({"url": redact_url(&config.url), "healthy": healthy, "steps": steps, "server": server});
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "checking {}", redact_url(&config.url));
        for s in &steps {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {:<13} {:>6} ms  {}", s.step, s.ms, s.detail);
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "       {:<13}            {fix}", "");
            }
        }
        let _ = writeln!(out, "{}", if healthy { "healthy" } else { "not healthy" });
    }
    if healthy { OK } else { FAILED }
}

fn push(steps: &mut Vec<Step>, step: &'static str, started: Instant, ok: bool, detail: String) {
    steps.push(Step { step, ok, ms: started.elapsed().as_millis() as u64, detail, fix: None });
}

fn fail(steps: &mut Vec<Step>, step: &'static str, started: Instant, detail: String, fix: String) -> bool {
    steps.push(Step { step, ok: false, ms: started.elapsed().as_millis() as u64, detail, fix: Some(fix) });
    false
}

async fn run(config: &Config, steps: &mut Vec<Step>, server: &mut Value) -> bool {
    let auth = configuration_step(config, steps);
    if !dns_step(config, steps).await || !http_step(config, steps).await {
        return false;
    }
    // Issue 24.3: check pins nothing; it lists every tool and says which --pin-tools holds.
    let unpinned = Config {
        filters: crate::config::Filters { pin_tools: None, ..config.filters.clone() },
        ..config.clone()
    };
    let Some((mut client, init)) = handshake_step(&unpinned, steps, server).await else { return false };
    let ok = offers_step(&mut client, &init, steps, server, config).await;
    limits_step(&client, auth, steps, server);
    client.close().await;
    ok
}

/// The credential in use and the configuration's warnings; returns how auth is described.
fn configuration_step(config: &Config, steps: &mut Vec<Step>) -> String {
    let started = Instant::now();
    let auth = match (&config.api_key, &config.oauth) {
        (Some(key), _) => {
            let shown = mask(key.secret.expose_secret());
            format!("API key in {} ({shown}) sent as {}", key.env_name, key.header)
        }
        (None, Some(_)) => "no API key; OAuth sign-in when the server asks".to_owned(),
        (None, None) => "no credential (--auth none)".to_owned(),
    };
    let warnings =
        if config.warnings.is_empty() { String::new() } else { format!("; {}", config.warnings.join("; ")) };
    let detail = format!("{auth}{}{}{warnings}", filters(&config.filters), pinning(config));
    push(steps, "configuration", started, true, detail);
    auth
}

/// Issue 24.3: what `--pin-tools` keeps for this server ("" without the flag).
fn pinning(config: &Config) -> String {
    let Some(mode) = config.filters.pin_tools else { return String::new() };
    let mode = if mode == crate::cli::PinMode::NewOk { "=new-ok" } else { "" };
    let kept = match crate::proxy::PinFile::path(config).map(|p| crate::proxy::PinFile::load(&p)) {
        None => "no state dir: pins last one run".to_owned(),
        Some(Ok(None)) => "nothing pinned yet (the first listing pins)".to_owned(),
        Some(Ok(Some(file))) => format!("{} tools pinned", file.tools.len()),
        Some(Err(e)) => format!("the pins cannot be read ({e}): every tool is held"),
    };
    format!("; --pin-tools{mode}: {kept}")
}

/// Issue 24.3: the tools `--pin-tools` holds among those listed, for people ("" when none).
fn held(config: &Config, tools: &[Value]) -> String {
    let Some(Ok(Some(file))) = crate::proxy::PinFile::path(config).map(|p| crate::proxy::PinFile::load(&p))
    else {
        return String::new();
    };
    let hidden = crate::proxy::HiddenBy::new(&config.filters);
    let held: Vec<String> = tools
        .iter()
        .filter_map(|tool| {
            let name = tool["name"].as_str()?;
            let change = file.change(hidden.server_name(name)?, tool);
            (change != crate::proxy::Change::Same).then(|| format!("{name} ({})", change.said()))
        })
        .collect();
    if held.is_empty() {
        return String::new();
    }
    format!(
        "; held by --pin-tools: {} (review with mcp-sidecar tools --approve {})",
        held.join(", "),
        crate::net::redact_url(&config.url)
    )
}

/// Issue 24.1 and 24.2: the filters and names given, as flags a person can read again ("" when none).
fn filters(f: &crate::config::Filters) -> String {
    let given: Vec<String> = [
        ("--allow-tools", &f.allow_tools),
        ("--deny-tools", &f.deny_tools),
        ("--allow-prompts", &f.allow_prompts),
        ("--deny-prompts", &f.deny_prompts),
        ("--deny-resources", &f.deny_resources),
    ]
    .into_iter()
    .filter(|(_, globs)| !globs.is_empty())
    .map(|(flag, globs)| format!("{flag} {}", globs.join(",")))
    .chain(f.tool_prefix.iter().map(|p| format!("--tool-prefix {p}")))
    .chain(f.renames.iter().map(|(old, new)| format!("--rename-tool {old}={new}")))
    .collect();
    if given.is_empty() { String::new() } else { format!("; filters: {}", given.join(" ")) }
}

/// The server's name resolves.
async fn dns_step(config: &Config, steps: &mut Vec<Step>) -> bool {
    let host = config.url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = config.url.port_or_known_default().unwrap_or(443);
    let started = Instant::now();
    match tokio::time::timeout(config.connect_timeout, tokio::net::lookup_host((host.as_str(), port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).take(3).collect();
            push(steps, "dns", started, true, format!("{host} → {}", addrs.join(", ")));
            true
        }
        _ => fail(
            steps,
            "dns",
            started,
            format!("could not resolve {host}"),
            "check the URL's spelling and your network or DNS".into(),
        ),
    }
}

/// The MCP handshake, through the proxy: the client and the `initialize` result when it worked.
async fn handshake_step(
    config: &Config,
    steps: &mut Vec<Step>,
    server: &mut Value,
) -> Option<(Client, Value)> {
    let mut client = match Client::new(config).await {
        Ok(c) => c,
        Err(e) => {
            fail(steps, "mcp", Instant::now(), e.to_string(), "see the message".into());
            return None;
        }
    };
    let (answer, took) = client.initialize().await;
    let started = Instant::now() - took;
    let init = match answer {
        Ok(init) => init,
        Err(e) => {
            let message = e["message"].as_str().unwrap_or("the handshake failed").to_owned();
            let (detail, mut fix) = match split_fix(&message) {
                _ if e["data"]["kind"] == "timeout" => (
                    format!(
                        "{} sent no answer to initialize within {}",
                        crate::net::host_and_port(&config.url),
                        crate::retry::human(config.request_timeout)
                    ),
                    STALLED.to_owned(),
                ),
                Some((cause, fix)) if e["data"]["source"] == "mcp-sidecar" => {
                    (cause.to_owned(), fix.to_owned())
                }
                _ => (message.clone(), "check the URL and the credential".to_owned()),
            };
            client.close().await;
            if e["data"]["kind"] == "wrong_endpoint"
                && matches!(e["data"]["httpStatus"].as_u64(), Some(404 | 405 | 410))
                && let Some(found) = Box::pin(handshake_elsewhere(config)).await
            {
                fix = found;
            }
            // Issue 23.11: a refused credential is the auth step's failure, not the handshake's.
            let step = if e["data"]["kind"] == "auth_rejected" { "auth" } else { "mcp handshake" };
            fail(steps, step, started, detail, fix);
            return None;
        }
    };
    let revision = init["protocolVersion"].as_str().unwrap_or("?").to_owned();
    let (era, bridged) = era_of(&client, &revision).await;
    let name = init["serverInfo"]["name"].as_str().unwrap_or("?");
    let version = init["serverInfo"]["version"].as_str().unwrap_or("?");
    let caps: Vec<String> =
        init["capabilities"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    push(
        steps,
        "mcp handshake",
        started,
        true,
        format!(
            "{name} {version}, protocol {revision} ({era}), {}, capabilities: {}",
            client.transport(),
            if caps.is_empty() { "none".into() } else { caps.join(", ") }
        ),
    );
    *server = json!({
        "name": name, "version": version, "protocolVersion": revision, "era": era, "bridged": bridged,
        "transport": client.transport(), "capabilities": init["capabilities"],
    });
    Some((client, init))
}

/// What the server offers: its tools, resources and prompts, counted.
async fn offers_step(
    client: &mut Client,
    init: &Value,
    steps: &mut Vec<Step>,
    server: &mut Value,
    config: &Config,
) -> bool {
    let started = Instant::now();
    let mut counts = Vec::new();
    let mut pins = String::new();
    let mut ok = true;
    for (cap, method, field) in [
        ("tools", "tools/list", "tools"),
        ("resources", "resources/list", "resources"),
        ("prompts", "prompts/list", "prompts"),
    ] {
        if init["capabilities"].get(cap).is_none() {
            continue;
        }
        match client.request(method, json!({})).await {
            Ok(r) => {
                let n = r[field].as_array().map_or(0, Vec::len);
                let more = if r["nextCursor"].is_string() { "+" } else { "" };
                counts.push(format!("{n}{more} {field}"));
                server[field] = json!(n);
                if field == "tools" && config.filters.pin_tools.is_some() {
                    pins = held(config, r[field].as_array().map_or(&[], Vec::as_slice));
                }
            }
            Err(e) => {
                ok = false;
                counts.push(format!("{method} failed: {}", e["message"].as_str().unwrap_or("?")));
            }
        }
    }
    push(
        steps,
        "offers",
        started,
        ok,
        if counts.is_empty() { "nothing listed".into() } else { format!("{}{pins}", counts.join(", ")) },
    );
    ok
}

/// How the client was signed in, and the rate limits the server stated.
fn limits_step(client: &Client, auth: String, steps: &mut Vec<Step>, server: &mut Value) {
    let started = Instant::now();
    let auth = match client.signed_in() {
        Some(true) => "OAuth: signed in (a stored token; renewed as needed)".to_owned(),
        Some(false) => "OAuth available; this server did not ask for it".to_owned(),
        None => auth,
    };
    push(steps, "auth", started, true, auth);
    let limits = client.rate_limit_headers();
    let mut detail = if limits.is_empty() {
        "no rate-limit headers seen".to_owned()
    } else {
        limits.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    if let Some(summary) = client.rate_limit_summary() {
        detail.push_str(&format!("; during this check: {summary}"));
        server["rateLimitSummary"] = json!(summary);
    }
    server["rateLimitHeaders"] =
        limits.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
    push(steps, "rate limits", started, true, detail);
}

/// The eras, for people (issue 13): the server's, and whether this handshake-era client reaches
/// it through the bridge. The handshake was taken: whether the stateless era is too is asked here
/// only (issue 20: the proxy never asks a server that takes its client's era).
async fn era_of(client: &Client, revision: &str) -> (String, bool) {
    let (mut server_era, bridged) = client.eras();
    if !bridged
        && server_era == Some(crate::era::Era::Handshake)
        && client.takes_the_stateless_era().await == Some(true)
    {
        server_era = Some(crate::era::Era::Both);
    }
    let era = match (server_era, bridged) {
        (_, true) => "the server speaks only the stateless era (2026-07-28); handshake-era clients are bridged by mcp-sidecar".to_owned(),
        (Some(crate::era::Era::Both), false) => "the server speaks both eras: every client is forwarded unchanged".to_owned(),
        (Some(found), false) => format!("the server speaks the {}: forwarded unchanged", found.name()),
        (None, false) if revision == "2024-11-05" => "legacy era".to_owned(),
        (None, false) => "handshake era".to_owned(),
    };
    (era, bridged)
}

/// Issue 23.6: the likely endpoints (the preset's path, or the URL with `/mcp`) tried with the
/// MCP handshake itself, credentials and all; the first that answers it, for people.
async fn handshake_elsewhere(config: &Config) -> Option<String> {
    for likely in crate::upstream::likely_endpoints(&config.url, config.preset_path) {
        let there = Config { url: likely.clone(), ..config.clone() };
        let Ok(mut client) = Client::new(&there).await else { continue };
        let (answer, _) = client.initialize().await;
        client.close().await;
        if answer.is_ok() {
            return Some(format!("{} answers the MCP handshake: use that URL", redact_url(&likely)));
        }
    }
    None
}

/// What to do about a URL that answers 404 (issue 23.6): the likely endpoint (the preset's path,
/// or the URL with `/mcp`), tried with the same GET, reported when it answers as MCP endpoints do.
async fn endpoint_fix(client: &reqwest::Client, config: &Config) -> String {
    for likely in crate::upstream::likely_endpoints(&config.url, config.preset_path) {
        let answer = client.get(likely.clone()).header("accept", "text/event-stream").send().await;
        if let Ok(code) = answer.map(|r| r.status().as_u16())
            && !matches!(code, 404 | 410)
        {
            return format!("{} answers HTTP {code}, as MCP endpoints do: use that URL", redact_url(&likely));
        }
    }
    crate::upstream::endpoint_hint(&config.url, config.preset_path)
}

/// TLS (issuer, expiry) and HTTP reachability, from one GET.
async fn http_step(config: &Config, steps: &mut Vec<Step>) -> bool {
    let started = Instant::now();
    let client = crate::upstream::direct_to_loopback(reqwest::Client::builder(), &config.url)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tls_info(true)
        .tls_certs_merge(config.ca_certs.iter().cloned())
        .user_agent(concat!("mcp-sidecar/", env!("CARGO_PKG_VERSION")))
        .build();
    let Ok(client) = client else {
        return fail(steps, "http", started, "the HTTP client could not start".into(), "report this".into());
    };
    let get = || client.get(config.url.clone()).header("accept", "text/event-stream").send();
    let mut response = get().await;
    // One quick retry of a refused connection, as the proxy's first contact has (issue 23.4): a
    // server started a moment ago (the README's Quick start pasted in one go) is not "down".
    if response.as_ref().is_err_and(reqwest::Error::is_connect) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        response = get().await;
    }
    let response = match response {
        Ok(r) => r,
        Err(e) if e.is_timeout() && !e.is_connect() => {
            // Issue 23.3: which step stalled, not "check the URL".
            return fail(
                steps,
                "http",
                started,
                format!(
                    "{} accepted the connection but sent no answer to a plain GET within {}",
                    crate::net::host_and_port(&config.url),
                    crate::retry::human(config.request_timeout)
                ),
                STALLED.into(),
            );
        }
        Err(e) => {
            let up = match crate::upstream::Upstream::new(config, None) {
                Ok(up) => up,
                Err(_) => return fail(steps, "http", started, e.to_string(), "check the URL".into()),
            };
            let message = up.send_error(&e).message;
            let step = if message.contains("TLS") { "tls" } else { "http" };
            let (detail, fix) = split_fix(&message).unwrap_or((message.as_str(), "check the URL"));
            return fail(steps, step, started, detail.to_owned(), fix.to_owned());
        }
    };
    if config.url.scheme() == "https" {
        let cert = response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate());
        let detail = cert.and_then(describe_certificate).unwrap_or_else(|| "certificate not readable".into());
        push(steps, "tls", started, true, detail);
    }
    let status = response.status();
    let verdict = match status.as_u16() {
        401 | 403 => format!("reachable (HTTP {status} without credentials, as expected)"),
        405 | 400 | 406 => format!("reachable (HTTP {status} to a plain GET, as MCP endpoints answer)"),
        s if s < 400 => format!("reachable (HTTP {status})"),
        404 | 410 => {
            let fix = endpoint_fix(&client, config).await;
            return fail(
                steps,
                "http",
                started,
                format!("{} answers HTTP {status}", redact_url(&config.url)),
                fix,
            );
        }
        _ => format!("reachable (HTTP {status})"),
    };
    push(steps, "http", started, true, verdict);
    true
}

/// Issuer and expiry of a DER certificate.
fn describe_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let issuer = cert
        .issuer()
        .iter_organization()
        .chain(cert.issuer().iter_common_name())
        .filter_map(|a| a.as_str().ok())
        .next()
        .unwrap_or("unknown issuer")
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Some(format!("issued by {issuer}, expires {}", expiry(cert.validity().not_after.timestamp(), now)))
}

/// A certificate's expiry for people, from epoch seconds a server chose: checked arithmetic,
/// and a date past what HTTP dates can say (or this platform's clock can hold) shown as such.
fn expiry(expires: i64, now: i64) -> String {
    /// 9999-12-31T23:59:59Z, the last moment an HTTP date can name.
    const LAST_HTTP_DATE: u64 = 253_402_300_799;
    let days = expires.saturating_sub(now) / 86_400;
    let at = u64::try_from(expires.max(0)).unwrap_or(0);
    match std::time::UNIX_EPOCH.checked_add(Duration::from_secs(at)).filter(|_| at <= LAST_HTTP_DATE) {
        Some(when) => format!("{} (in {days} days)", httpdate::fmt_http_date(when)),
        None => format!("after the year 9999 (in {days} days)"),
    }
}

/// Splits "cause: fix" at the first ": " outside parentheses (the proxy's messages quote the
/// server inside parentheses, "(HTTP 401: Invalid API key)").
fn split_fix(message: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let bytes = message.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b' ') => {
                return Some((&message[..i], &message[i + 2..]));
            }
            _ => {}
        }
    }
    None
}

/// Keys shorter than this are shown only as a length: four characters of a short key are a
/// large share of it.
const MIN_MASKED_KEY_CHARS: usize = 16;

/// A key shown without giving it away: its documented vendor prefix (`inv_`, `mcp_`, `sk_live_`,
/// `sk_test_`) or else at most its first four characters, and its last four; a key under
/// [`MIN_MASKED_KEY_CHARS`] characters only as its length.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < MIN_MASKED_KEY_CHARS {
        return format!("{} characters", chars.len());
    }
    let documented = [Preset::Investra, Preset::Ai2fin, Preset::Converra]
        .into_iter()
        .flat_map(|p| p.spec().key_prefixes.iter().copied())
        .filter(|p| key.starts_with(p))
        .max_by_key(|p| p.len());
    let head: String = match documented {
        Some(prefix) => prefix.to_owned(),
        None => chars[..4].iter().collect(),
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_and_fix_split_outside_parentheses() {
        assert_eq!(
            split_fix("the server rejected the key (HTTP 401: bad key): create a new key"),
            Some(("the server rejected the key (HTTP 401: bad key)", "create a new key"))
        );
        assert_eq!(split_fix("no fix here"), None);
    }

    /// A hostile certificate's dates (far past, far future) are text, never a panic.
    #[test]
    fn certificate_expiry_never_overflows() {
        assert_eq!(expiry(86_400 * 10, 0), "Sun, 11 Jan 1970 00:00:00 GMT (in 10 days)");
        assert!(expiry(i64::MAX, i64::MIN).starts_with("after the year 9999"));
        assert!(expiry(i64::MIN, i64::MAX).starts_with("Thu, 01 Jan 1970"));
        assert!(expiry(253_402_300_800, 0).starts_with("after the year 9999"));
    }

    #[test]
    fn keys_are_masked_to_prefix_and_last_four() {
        assert_eq!(mask("inv_0123456789abc3f9"), "inv_…c3f9");
        assert_eq!(mask("sk_live_0123456789abcdef"), "sk_live_…cdef");
        assert_eq!(mask("mcp_0123456789abcdef"), "mcp_…cdef");
        // No documented prefix: at most four characters of the head.
        assert_eq!(mask("abcdefghijklmnop"), "abcd…mnop");
        assert_eq!(mask("my_company_token_0123456789"), "my_c…6789");
        assert_eq!(mask("short"), "5 characters");
    }

    /// Issue 10.8: a 12-character key used to be printed whole (9 leading + 4 trailing
    /// characters overlap); under 16 characters only the length is shown.
    #[test]
    fn short_keys_are_shown_only_as_their_length() {
        for key in ["inv_12345678", "abcdefghijkl", "sk_live_1234567", "0123456789abcde"] {
            let shown = mask(key);
            assert_eq!(shown, format!("{} characters", key.chars().count()), "{key}");
        }
        // The shown part never holds more than 4 characters beyond a documented prefix + 4.
        let shown = mask("x_y_z_0123456789");
        assert_eq!(shown, "x_y_…6789");
    }
}
