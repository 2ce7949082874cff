//! `install`: adds the server to an MCP client's configuration.
//!
//! Claude Desktop: `claude_desktop_config.json` at the platform's location (or `--config-file`)
//! is merged, not replaced: other servers and settings stay; the old file is kept as a backup
//! next to it; the new one is written atomically and private (it now holds a key). Claude Code:
//! the matching `claude mcp add` command is printed, and run when `claude` is on PATH. The key
//! always goes in the entry's `env`, never in `args`. `--dry-run` shows the change only.

use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::{CONFIG, FAILED, OK};
use crate::cli::{Args, InstallClient, Transport};
use crate::config::Config;

/// `install`.
pub fn install(
    config: &Config,
    args: &Args,
    client: InstallClient,
    name: Option<&str>,
    dry_run: bool,
    config_file: Option<&Path>,
) -> u8 {
    let name = name.map(str::to_owned).unwrap_or_else(|| default_name(config, args));
    let server_args = server_args(args);
    let env = env_block(config, args);
    match client {
        InstallClient::ClaudeDesktop => {
            let Some(path) = config_file.map(Path::to_path_buf).or_else(desktop_config_path) else {
                eprintln!(
                    "mcp-sidecar: cannot tell where Claude Desktop keeps its config here: pass --config-file"
                );
                return CONFIG;
            };
            desktop(&path, &name, &server_args, &env, dry_run)
        }
        InstallClient::ClaudeCode => code(&name, &server_args, &env, dry_run),
    }
}

/// The server's name: `--name`, else the preset, else the URL's host.
fn default_name(config: &Config, args: &Args) -> String {
    match args.preset {
        Some(p) => name_of(p),
        None => config
            .url
            .host_str()
            .unwrap_or("remote")
            .split('.')
            .find(|p| *p != "www" && *p != "mcp")
            .unwrap_or("remote")
            .to_owned(),
    }
}

/// A flag value as it is written on the command line.
fn name_of(v: impl clap::ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_owned()).unwrap_or_default()
}

/// The arguments the client will start mcp-sidecar with: the options given here that describe
/// the server, never a secret (`${VAR}` in headers stays as written).
pub fn server_args(a: &Args) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = a.url.as_ref().or(a.url_flag.as_ref()) {
        out.push(u.clone());
    }
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push(flag.to_owned());
            out.push(v);
        }
    };
    opt("--preset", a.preset.map(name_of));
    opt("--api-key-env", a.api_key_env.clone());
    opt("--auth-header", a.auth_header.clone());
    opt("--auth", a.auth.map(name_of));
    opt("--client-id", a.client_id.clone());
    opt("--client-secret-env", a.client_secret_env.clone());
    opt("--client-metadata-url", a.client_metadata_url.clone());
    opt("--ca-file", a.ca_file.as_ref().map(|p| p.display().to_string()));
    opt("--transport", (a.transport != Transport::Auto).then(|| name_of(a.transport)));
    for h in &a.headers {
        opt("--header", Some(h.clone()));
    }
    for l in &a.rate_limit {
        opt("--rate-limit", Some(l.clone()));
    }
    if a.allow_http {
        out.push("--allow-http".into());
    }
    out
}

/// The entry's `env`: the key's variable, the client secret's, and those `${VAR}` headers use.
fn env_block(config: &Config, a: &Args) -> Map<String, Value> {
    let mut env = Map::new();
    if let Some(key) = &config.api_key {
        env.insert(key.env_name.clone(), json!(key.secret.expose_secret()));
    }
    let mut names: Vec<String> = a.client_secret_env.iter().cloned().collect();
    for h in &a.headers {
        let mut rest = h.as_str();
        while let Some(i) = rest.find("${") {
            let Some(end) = rest[i..].find('}') else { break };
            names.push(rest[i + 2..i + end].to_owned());
            rest = &rest[i + end..];
        }
    }
    for n in names {
        if let Ok(v) = std::env::var(&n) {
            env.insert(n, json!(v));
        }
    }
    env
}

/// Where Claude Desktop reads its config on this platform.
fn desktop_config_path() -> Option<PathBuf> {
    use etcetera::BaseStrategy;
    if cfg!(target_os = "macos") {
        return etcetera::home_dir()
            .ok()
            .map(|h| h.join("Library/Application Support/Claude/claude_desktop_config.json"));
    }
    etcetera::choose_base_strategy().ok().map(|s| s.config_dir().join("Claude/claude_desktop_config.json"))
}

fn desktop(path: &Path, name: &str, args: &[String], env: &Map<String, Value>, dry_run: bool) -> u8 {
    let old = match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => Some((bytes, v)),
            _ => {
                eprintln!(
                    "mcp-sidecar: {} is not a JSON object: fix or move it, then run install again (nothing was changed)",
                    path.display()
                );
                return FAILED;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            eprintln!("mcp-sidecar: cannot read {} ({e})", path.display());
            return FAILED;
        }
    };
    let mut doc = old.as_ref().map_or_else(|| json!({}), |(_, v)| v.clone());
    let command =
        std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "mcp-sidecar".into());
    let mut entry = json!({"command": command, "args": args});
    if !env.is_empty() {
        entry["env"] = Value::Object(env.clone());
    }
    let Some(servers) = doc
        .as_object_mut()
        .map(|d| d.entry("mcpServers").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        eprintln!("mcp-sidecar: \"mcpServers\" in {} is not an object: fix it first", path.display());
        return FAILED;
    };
    let replaced = servers.insert(name.to_owned(), entry.clone()).is_some();
    let verb = if replaced { "replace" } else { "add" };
    if dry_run {
        let mut shown = entry.clone();
        if let Some(env) = shown.get_mut("env").and_then(Value::as_object_mut) {
            for v in env.values_mut() {
                *v = json!(super::check::mask(v.as_str().unwrap_or("")));
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "would {verb} \"{name}\" in {}:", path.display());
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&shown).unwrap_or_default());
        return OK;
    }
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("mcp-sidecar: cannot create {} ({e})", dir.display());
        return FAILED;
    }
    if let Some((bytes, _)) = &old {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let backup = path.with_extension(format!("json.bak-{stamp}"));
        if let Err(e) = write_private(&backup, bytes) {
            eprintln!("mcp-sidecar: cannot back up {} ({e}); nothing was changed", path.display());
            return FAILED;
        }
        eprintln!("mcp-sidecar: the old config is saved as {}", backup.display());
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    let tmp = path.with_extension("json.tmp");
    match write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => {
            eprintln!(
                "mcp-sidecar: {verb}ed \"{name}\" in {}; restart Claude Desktop to use it",
                path.display()
            );
            OK
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("mcp-sidecar: cannot write {} ({e})", path.display());
            FAILED
        }
    }
}

/// Writes a file only its owner can read (it may hold a key).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn code(name: &str, args: &[String], env: &Map<String, Value>, dry_run: bool) -> u8 {
    let quote = |s: &str| {
        if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
            s.to_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    // Shown with "$VAR" so the key is never printed; run with the value, as claude needs it.
    let mut shown = vec!["claude".to_owned(), "mcp".into(), "add".into(), quote(name)];
    let mut argv = vec!["mcp".to_owned(), "add".into(), name.to_owned()];
    for (k, v) in env {
        shown.push("-e".into());
        shown.push(format!("{k}=\"${k}\""));
        argv.push("-e".into());
        argv.push(format!("{k}={}", v.as_str().unwrap_or("")));
    }
    shown.push("--".into());
    shown.push("mcp-sidecar".into());
    argv.push("--".into());
    argv.push("mcp-sidecar".into());
    for a in args {
        shown.push(quote(a));
        argv.push(a.clone());
    }
    let _ = writeln!(std::io::stdout().lock(), "{}", shown.join(" "));
    if dry_run {
        return OK;
    }
    match std::process::Command::new("claude").args(&argv).stdin(std::process::Stdio::null()).status() {
        Ok(s) if s.success() => {
            eprintln!("mcp-sidecar: added \"{name}\" to Claude Code");
            OK
        }
        Ok(s) => {
            eprintln!("mcp-sidecar: claude mcp add failed ({s}); run the command above yourself");
            FAILED
        }
        Err(_) => {
            eprintln!(
                "mcp-sidecar: claude is not on PATH: run the command above where Claude Code is installed"
            );
            FAILED
        }
    }
}
