//! `install`: adds the server to an MCP client's configuration.
//!
//! Claude Desktop: `claude_desktop_config.json` at the platform's location (or `--config-file`)
//! is merged, not replaced: other servers and settings stay; the old file is kept as a backup
//! next to it; the new one is written atomically and private (it now holds a key). The key goes
//! in the entry's `env`, never in `args`.
//!
//! Claude Code: by default the matching `claude mcp add` command is printed, and run when
//! `claude` is on PATH, without any secret: no secret goes into any process's argv, ours or a
//! child's (issue 10.6), and Claude Code passes its own environment to the servers it starts, so
//! an exported variable reaches mcp-sidecar. With `--store-key` the entry is instead merged into
//! Claude Code's own config file (user scope, `~/.claude.json`) with the secrets in its `env`,
//! the same way as for Claude Desktop. `--dry-run` shows the change only.
//!
//! The entry's arguments carry every option the server's state depends on (`--state-dir`,
//! `--token-store`, `--callback-port`, the timeouts; issue 10.10), so the installed sidecar
//! finds the sign-in and the rate-limit state that `login` and this shell see.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::{CONFIG, FAILED, OK};
use crate::cli::{Args, Cli, InstallClient, TokenStoreKind, Transport};
use crate::config::Config;

/// What `install` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub client: InstallClient,
    pub name: Option<&'a str>,
    pub dry_run: bool,
    pub config_file: Option<&'a Path>,
    /// Claude Code: keep the secrets in its config file instead of relying on the environment.
    pub store_key: bool,
}

/// `install`.
pub fn install(config: &Config, args: &Args, request: Request<'_>) -> u8 {
    let name = request.name.map(str::to_owned).unwrap_or_else(|| default_name(config, args));
    let server_args = server_args(args, config);
    let env = env_block(config, args);
    let exe = std::env::current_exe().ok();
    let via = exe.as_deref().and_then(launcher);
    let (command, server_args) = match via {
        Some(via) => {
            eprintln!(
                "mcp-sidecar: this mcp-sidecar runs from {}'s cache, which it may clear: the entry starts it through {} instead",
                via.name, via.name
            );
            let (command, mut prefix) = via.command();
            let through_cmd = prefix.first().is_some_and(|a| a == "/c");
            let server_args = if through_cmd {
                match cmd_args(server_args) {
                    Ok(args) => args,
                    Err(why) => {
                        eprintln!("mcp-sidecar: {why}");
                        return CONFIG;
                    }
                }
            } else {
                server_args
            };
            prefix.extend(server_args);
            (command, prefix)
        }
        None => (exe.map_or_else(|| "mcp-sidecar".into(), |p| p.display().to_string()), server_args),
    };
    match request.client {
        InstallClient::ClaudeDesktop => {
            let Some(path) = request.config_file.map(Path::to_path_buf).or_else(desktop_config_path) else {
                eprintln!(
                    "mcp-sidecar: cannot tell where Claude Desktop keeps its config here: pass --config-file"
                );
                return CONFIG;
            };
            let mut entry = json!({"command": command, "args": server_args});
            if !env.is_empty() {
                entry["env"] = Value::Object(env);
            }
            merge_entry(&path, &name, entry, request.dry_run, "restart Claude Desktop to use it")
        }
        InstallClient::ClaudeCode if request.store_key => {
            let Some(path) = request.config_file.map(Path::to_path_buf).or_else(claude_code_config_path)
            else {
                eprintln!(
                    "mcp-sidecar: cannot tell where Claude Code keeps its config here: pass --config-file"
                );
                return CONFIG;
            };
            let mut entry = json!({"type": "stdio", "command": command, "args": server_args});
            if !env.is_empty() {
                entry["env"] = Value::Object(env);
            }
            merge_entry(
                &path,
                &name,
                entry,
                request.dry_run,
                "restart Claude Code to use it (user scope: every project)",
            )
        }
        InstallClient::ClaudeCode => {
            // Claude Code finds mcp-sidecar on its PATH, or the launcher it came through.
            let command = if via.is_some() { command } else { "mcp-sidecar".to_owned() };
            code(&name, &command, &server_args, &env, request.dry_run)
        }
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

/// The built-in default of a flag (not what the environment says: the client that starts the
/// installed entry does not have this shell's `MCP_SIDECAR_*` variables).
fn default_of(long: &str) -> Option<String> {
    Cli::command()
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_default_values().first().map(|v| v.to_string_lossy().into_owned()))
}

/// The arguments the client will start mcp-sidecar with: the options given here that describe
/// the server or that its state depends on, never a secret (`${VAR}` in headers stays as
/// written). Numbers are written when they differ from the built-in default.
pub fn server_args(a: &Args, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) =
        a.url.clone().or_else(|| a.url_flag.clone()).or_else(|| std::env::var("MCP_SIDECAR_URL").ok())
    {
        out.push(u);
    }
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push(flag.to_owned());
            out.push(v);
        }
    };
    opt("--preset", a.preset.map(name_of));
    opt("--api-key-env", a.api_key_env.clone());
    opt("--api-key-command", a.api_key_command.clone());
    opt("--auth-header", a.auth_header.clone());
    opt("--auth", a.auth.map(name_of));
    opt("--client-id", a.client_id.clone());
    opt("--client-secret-env", a.client_secret_env.clone());
    opt("--client-metadata-url", a.client_metadata_url.clone());
    // Issue 14: the headless grants' flags; files by absolute path, secrets by variable name.
    opt("--client-key-file", a.client_key_file.as_ref().map(|p| absolute(p).display().to_string()));
    opt("--identity-token-file", a.identity_token_file.as_ref().map(|p| absolute(p).display().to_string()));
    opt("--identity-token-env", a.identity_token_env.clone());
    opt("--idp-token-endpoint", a.idp_token_endpoint.clone());
    opt("--idp-client-id", a.idp_client_id.clone());
    opt("--idp-client-secret-env", a.idp_client_secret_env.clone());
    opt("--ca-file", a.ca_file.as_ref().map(|p| absolute(p).display().to_string()));
    // Issue 25.3: the client certificate by absolute path; its passphrase by variable name.
    opt("--client-cert", a.client_cert.as_ref().map(|p| absolute(p).display().to_string()));
    opt("--client-key", a.client_key.as_ref().map(|p| absolute(p).display().to_string()));
    opt("--client-key-password-env", a.client_key_password_env.clone());
    // Issue 25.4: the log file, by absolute path (the client starts us elsewhere).
    opt("--log-file", a.log_file.as_ref().map(|p| absolute(p).display().to_string()));
    opt("--transport", (a.transport != Transport::Auto).then(|| name_of(a.transport)));
    // Issue 21.16: the era, when told, travels too.
    opt("--protocol-era", (a.protocol_era != crate::cli::ProtocolEra::Auto).then(|| name_of(a.protocol_era)));
    // Where the sign-in and the rate-limit state live: given, or (for OAuth, whose tokens are
    // there) the directory this shell resolves, since the client's environment may differ.
    let state_dir = a.state_dir.clone().or_else(|| config.oauth.as_ref().and(config.state_dir.clone()));
    opt("--state-dir", state_dir.map(|d| absolute(&d).display().to_string()));
    opt("--token-store", (a.token_store != TokenStoreKind::File).then(|| name_of(a.token_store)));
    opt("--callback-port", a.callback_port.map(|p| p.to_string()));
    opt("--ping-interval", a.ping_interval.map(|s| s.to_string()));
    // Issue 25.1: the identity provider's knobs (none is a secret).
    opt("--scope", a.scope.clone());
    opt("--oauth-resource", a.oauth_resource.clone());
    for p in &a.authorize_params {
        opt("--authorize-param", Some(p.clone()));
    }
    // The proxy's default stays out (one-shot commands have their own, issue 23.3).
    let timeout = a.request_timeout.filter(|&s| s != crate::cli::DEFAULT_REQUEST_TIMEOUT);
    opt("--request-timeout", timeout.map(|s| s.to_string()));
    let numbers = [
        ("--auth-timeout", a.auth_timeout.to_string()),
        ("--connect-timeout", a.connect_timeout.to_string()),
        ("--max-wait", a.max_wait.to_string()),
        ("--max-retries", a.max_retries.to_string()),
        ("--max-message-bytes", a.max_message_bytes.to_string()),
    ];
    for (flag, value) in numbers {
        let default = default_of(&flag[2..]);
        let same = default.as_deref().is_some_and(|d| {
            d == value || d.parse::<f64>().ok().zip(value.parse::<f64>().ok()).is_some_and(|(x, y)| x == y)
        });
        opt(flag, (!same).then_some(value));
    }
    for h in &a.headers {
        opt("--header", Some(h.clone()));
    }
    for l in &a.rate_limit {
        opt("--rate-limit", Some(l.clone()));
    }
    opt("--plan", a.plan.map(name_of));
    opt("--rate-limit-store", a.rate_limit_store.clone());
    opt("--rate-limit-store-password-env", a.rate_limit_store_password_env.clone());
    tool_args(a, &mut out);
    out
}

/// Issue 24: what reaches the model travels too; and the switches.
fn tool_args(a: &Args, out: &mut Vec<String>) {
    let lists = [
        ("--allow-tools", &a.allow_tools),
        ("--deny-tools", &a.deny_tools),
        ("--allow-prompts", &a.allow_prompts),
        ("--deny-prompts", &a.deny_prompts),
        ("--deny-resources", &a.deny_resources),
    ];
    for (flag, globs) in lists.into_iter().filter(|(_, g)| !g.is_empty()) {
        out.extend([flag.to_owned(), globs.join(",")]);
    }
    if let Some(prefix) = &a.tool_prefix {
        out.extend(["--tool-prefix".to_owned(), prefix.clone()]);
    }
    for r in &a.rename_tool {
        out.extend(["--rename-tool".to_owned(), r.clone()]);
    }
    let switches = [
        ("--allow-http", a.allow_http),
        ("--no-resource-indicator", a.no_resource_indicator),
        ("--use-id-token", a.use_id_token),
        ("--no-list-cache", a.no_list_cache),
    ];
    out.extend(switches.into_iter().filter(|(_, on)| *on).map(|(flag, _)| flag.to_owned()));
    match a.pin_tools {
        Some(crate::cli::PinMode::Strict) => out.push("--pin-tools".into()),
        Some(crate::cli::PinMode::NewOk) => out.push("--pin-tools=new-ok".into()),
        None => {}
    }
}

/// `path` made absolute against the current directory (the client starts us elsewhere).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The entry's `env`: the key's variable, the client secret's, and those `${VAR}` headers use.
fn env_block(config: &Config, a: &Args) -> Map<String, Value> {
    let mut env = Map::new();
    // Issue 25.2: a key a command prints stays where it is; the entry runs the command.
    if let Some(key) = config.api_key.as_ref().filter(|k| k.command.is_none()) {
        env.insert(key.env_name.clone(), json!(key.secret.expose_secret()));
    }
    for n in secret_vars(a) {
        if let Ok(v) = std::env::var(&n) {
            env.insert(n, json!(v));
        }
    }
    env
}

/// The variables besides the key that the entry needs: the client secret's, the identity
/// token's, the IdP client secret's, the rate-limit store password's, and those in headers.
fn secret_vars(a: &Args) -> Vec<String> {
    // Issue 21.16: the Redis password's too (without it the installed entry exits at start).
    let mut names: Vec<String> = [
        &a.client_secret_env,
        &a.identity_token_env,
        &a.idp_client_secret_env,
        &a.rate_limit_store_password_env,
        &a.client_key_password_env,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    for h in &a.headers {
        let mut rest = h.as_str();
        while let Some(i) = rest.find("${") {
            let Some(end) = rest[i..].find('}') else { break };
            names.push(rest[i + 2..i + end].to_owned());
            rest = &rest[i + end..];
        }
    }
    names
}

/// A package runner whose cache this mcp-sidecar runs from (`npx -y mcp-sidecar`, `uvx`,
/// `pipx run`): an entry naming the cached binary would break when the cache is cleared, so it
/// names the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Launcher {
    name: &'static str,
    args: &'static [&'static str],
}

impl Launcher {
    /// The entry's command and its first arguments. The runner by full path where it can be
    /// found: a client started from the desktop may not have the shell's PATH (nvm, mise,
    /// Homebrew). Windows: npm's `npx.cmd` is a batch file, which clients that start programs
    /// without a shell cannot run: node is started with npm's `npx-cli.js` beside it, so no
    /// shell reads the arguments (issue 21.15: through `cmd /c` a URL with `&` was cut there and
    /// the rest run as a command); where that layout is not found, `cmd /c npx`, whose arguments
    /// [`cmd_args`] escapes.
    fn command(self) -> (String, Vec<String>) {
        let args = self.args.iter().map(|a| (*a).to_owned());
        if cfg!(windows) && self.name == "npx" {
            if let Some((node, cli)) = which::which("npx").ok().as_deref().and_then(npx_through_node) {
                return (node, std::iter::once(cli).chain(args).collect());
            }
            let cmd = std::env::var("ComSpec").unwrap_or_else(|_| "cmd.exe".into());
            return (cmd, ["/c", "npx"].iter().map(|a| (*a).to_owned()).chain(args).collect());
        }
        let program =
            which::which(self.name).map_or_else(|_| self.name.to_owned(), |p| p.display().to_string());
        (program, args.collect())
    }
}

/// Which runner's cache `exe` lies in, if any: npm's `_npx` folder; uv's
/// `archive-vN/ID/bin/` (`Scripts\` on Windows) wherever `UV_CACHE_DIR` puts it; pipx's `.cache`
/// under a `pipx` folder.
fn launcher(exe: &Path) -> Option<Launcher> {
    let parts: Vec<String> =
        exe.components().map(|c| c.as_os_str().to_string_lossy().to_ascii_lowercase()).collect();
    let from_end = |n: usize| parts.len().checked_sub(n).map_or("", |i| parts[i].as_str());
    if parts.iter().any(|p| p == "_npx") {
        Some(Launcher { name: "npx", args: &["-y", "mcp-sidecar"] })
    } else if from_end(4).starts_with("archive-v") && matches!(from_end(2), "bin" | "scripts") {
        Some(Launcher { name: "uvx", args: &["mcp-sidecar"] })
    } else if parts
        .iter()
        .position(|p| p == "pipx")
        .is_some_and(|i| parts[i + 1..].contains(&".cache".into()))
    {
        Some(Launcher { name: "pipx", args: &["run", "mcp-sidecar"] })
    } else {
        None
    }
}

/// node and npm's `npx-cli.js` beside the `npx` found (the layout of Node's Windows installer,
/// nvm-windows and fnm): the same npx, without the batch file.
fn npx_through_node(npx: &Path) -> Option<(String, String)> {
    let dir = npx.parent()?;
    let node = ["node.exe", "node"].iter().map(|n| dir.join(n)).find(|p| p.is_file())?;
    let cli = dir.join("node_modules").join("npm").join("bin").join("npx-cli.js");
    cli.is_file().then(|| (node.display().to_string(), cli.display().to_string()))
}

/// The arguments after `cmd /c npx`, escaped for cmd.exe, which reads `& | < > ^ ( )` as its
/// own and expands `%NAME%`: outside quotes a caret makes each literal; an argument with a
/// space (quoted by the client that starts the entry, where carets would stay) or a `%` or `"`
/// cannot be carried safely, and is refused with the fix.
fn cmd_args(args: Vec<String>) -> Result<Vec<String>, String> {
    const SPECIAL: &[char] = &['&', '|', '<', '>', '^', '(', ')'];
    args.into_iter()
        .map(|a| {
            let risky = a.contains(SPECIAL) || a.contains('%') || a.contains('"');
            if risky && (a.contains(char::is_whitespace) || a.contains('%') || a.contains('"')) {
                return Err(format!(
                    "{a:?} cannot be passed safely through cmd.exe (which npx needs here): install mcp-sidecar itself (npm install -g mcp-sidecar, or install.ps1) and run install again"
                ));
            }
            Ok(a.chars().fold(String::new(), |mut out, c| {
                if SPECIAL.contains(&c) {
                    out.push('^');
                }
                out.push(c);
                out
            }))
        })
        .collect()
}

/// Where Claude Code keeps its user-scope servers: `$CLAUDE_CONFIG_DIR/.claude.json`, else
/// `~/.claude.json`.
fn claude_code_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join(".claude.json"));
    }
    etcetera::home_dir().ok().map(|h| h.join(".claude.json"))
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

/// Merges `entry` as `mcpServers.<name>` into the JSON config at `path`: other settings stay,
/// the old file is kept as a backup, the new one is written atomically and private (it may hold
/// a key). With `dry_run`, shows the entry (secrets masked) instead.
fn merge_entry(path: &Path, name: &str, entry: Value, dry_run: bool, then: &str) -> u8 {
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
    let mut backup = None;
    if let Some((bytes, _)) = &old {
        match write_backup(path, bytes) {
            Ok(saved) => {
                eprintln!("mcp-sidecar: the old config is saved as {}", saved.display());
                backup = Some(saved);
            }
            Err(e) => {
                eprintln!("mcp-sidecar: cannot back up {} ({e}); nothing was changed", path.display());
                return FAILED;
            }
        }
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    let tmp = path.with_extension("json.tmp");
    match write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => {
            eprintln!("mcp-sidecar: {}; {then}", written(name, path, replaced, backup.as_deref()));
            OK
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("mcp-sidecar: cannot write {} ({e})", path.display());
            FAILED
        }
    }
}

/// What was written, for people: an entry of the same name replaced is said so (issue 23.9).
fn written(name: &str, path: &Path, replaced: bool, backup: Option<&Path>) -> String {
    match (replaced, backup) {
        (true, Some(saved)) => format!(
            "replaced the existing \"{name}\" in {} (the old one is in {})",
            path.display(),
            saved.display()
        ),
        (true, None) => format!("replaced the existing \"{name}\" in {}", path.display()),
        (false, _) => format!("added \"{name}\" in {}", path.display()),
    }
}

/// Saves `bytes` (the config as it was) beside `path` under a name no other backup has
/// (issue 23.9: two installs within one second overwrote the original's backup): `.bak-<epoch>`,
/// else `.bak-<epoch>-2`, `-3`, …, each created only if it does not exist yet.
fn write_backup(path: &Path, bytes: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let stamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for n in 1..=1000u32 {
        let suffix = if n == 1 { format!("json.bak-{stamp}") } else { format!("json.bak-{stamp}-{n}") };
        let backup = path.with_extension(suffix);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&backup) {
            Ok(mut f) => {
                f.write_all(bytes)?;
                f.sync_all()?;
                return Ok(backup);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("a thousand backups of this second exist already"))
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

/// `claude mcp add NAME -- mcp-sidecar ARGS`, printed and run: no secret in its arguments.
fn code(name: &str, command: &str, args: &[String], env: &Map<String, Value>, dry_run: bool) -> u8 {
    let quote = |s: &str| {
        if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
            s.to_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut argv = vec!["mcp".to_owned(), "add".into(), name.to_owned(), "--".into(), command.to_owned()];
    argv.extend(args.iter().cloned());
    let shown: Vec<String> =
        std::iter::once("claude".to_owned()).chain(argv.iter().map(|a| quote(a))).collect();
    let _ = writeln!(std::io::stdout().lock(), "{}", shown.join(" "));
    if !env.is_empty() {
        let vars: Vec<&str> = env.keys().map(String::as_str).collect();
        eprintln!(
            "mcp-sidecar: Claude Code passes its environment to the servers it starts: export {} where you start claude (e.g. in your shell profile), or run install again with --store-key to keep {} in Claude Code's config file (private to you)",
            vars.join(", "),
            if vars.len() == 1 { "it" } else { "them" }
        );
    }
    if dry_run {
        return OK;
    }
    // `which` resolves `claude` as the platform does: on Windows npm installs `claude.cmd`, which
    // `Command::new("claude")` would not find (it tries `.exe` only); std runs a `.cmd` through
    // cmd.exe with its arguments escaped, or refuses arguments it cannot escape (issue 12).
    let Ok(claude) = which::which("claude") else {
        eprintln!("mcp-sidecar: claude is not on PATH: run the command above where Claude Code is installed");
        return FAILED;
    };
    match std::process::Command::new(&claude).args(&argv).stdin(std::process::Stdio::null()).status() {
        Ok(s) if s.success() => {
            eprintln!("mcp-sidecar: added \"{name}\" to Claude Code");
            OK
        }
        Ok(s) => {
            eprintln!("mcp-sidecar: claude mcp add failed ({s}); run the command above yourself");
            FAILED
        }
        Err(e) => {
            eprintln!(
                "mcp-sidecar: cannot run {} ({e}): run the command above where Claude Code is installed",
                claude.display()
            );
            FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: run through npx, uvx or pipx run, the binary lies in a cache; the entry names
    /// the runner instead. Installed binaries (cargo, the install script, npm -g) are named as
    /// they are.
    #[test]
    fn a_binary_in_a_package_runners_cache_is_started_through_the_runner() {
        let npx = |p: &str| launcher(Path::new(p)).map(|l| l.name);
        assert_eq!(
            npx("/home/u/.npm/_npx/0123abcd/node_modules/@mcp-sidecar/linux-x64/bin/mcp-sidecar"),
            Some("npx")
        );
        assert_eq!(npx("/home/u/.cache/uv/archive-v0/Xy12/bin/mcp-sidecar"), Some("uvx"));
        assert_eq!(npx("/ci/uv-cache/archive-v0/aMHZ/bin/mcp-sidecar"), Some("uvx"), "UV_CACHE_DIR");
        assert_eq!(npx("/Users/u/.local/pipx/.cache/5f1e/bin/mcp-sidecar"), Some("pipx"));
        for installed in [
            "/home/u/.local/bin/mcp-sidecar",
            "/home/u/.cargo/bin/mcp-sidecar",
            "/usr/lib/node_modules/mcp-sidecar/node_modules/@mcp-sidecar/linux-x64/bin/mcp-sidecar",
            "/home/u/.local/share/uv/tools/mcp-sidecar/bin/mcp-sidecar",
            "/home/u/.local/pipx/venvs/mcp-sidecar/bin/mcp-sidecar",
        ] {
            assert_eq!(npx(installed), None, "{installed}");
        }
        #[cfg(windows)]
        {
            let p = r"C:\Users\U\AppData\Local\npm-cache\_npx\ab12\node_modules\@mcp-sidecar\win32-x64\bin\mcp-sidecar.exe";
            assert_eq!(npx(p), Some("npx"));
            let (command, args) = launcher(Path::new(p)).unwrap().command();
            // node with npm's npx-cli.js where Node's layout is found, else cmd /c npx.
            if command.to_ascii_lowercase().ends_with("node.exe") {
                assert!(args[0].ends_with("npx-cli.js") && args[1..] == ["-y", "mcp-sidecar"], "{args:?}");
            } else {
                assert!(command.to_ascii_lowercase().ends_with("cmd.exe"), "{command}");
                assert_eq!(args, ["/c", "npx", "-y", "mcp-sidecar"]);
            }
        }
    }
    /// Issue 21.15: what goes through `cmd /c` is escaped for it, or refused when it cannot be;
    /// npx is started through node when its layout is found, so no shell reads the arguments.
    #[test]
    fn arguments_for_cmd_are_escaped_or_refused() {
        let ok =
            cmd_args(vec!["https://h/mcp?tenant=a&region=eu".into(), "X-A: b|c<d>e^f(g)".replace(' ', "")])
                .unwrap();
        assert_eq!(ok, ["https://h/mcp?tenant=a^&region=eu", "X-A:b^|c^<d^>e^^f^(g^)"]);
        assert_eq!(cmd_args(vec!["--auth".into(), "none".into()]).unwrap(), ["--auth", "none"]);
        for bad in ["https://h/mcp?x=%PATH%", "X-A: a&b", "a\"&b"] {
            let err = cmd_args(vec![bad.into()]).unwrap_err();
            assert!(err.contains("cannot be passed safely"), "{err}");
        }
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-npx-{}", std::process::id()));
        let cli = dir.join("node_modules").join("npm").join("bin");
        std::fs::create_dir_all(&cli).unwrap();
        std::fs::write(cli.join("npx-cli.js"), "").unwrap();
        assert_eq!(npx_through_node(&dir.join("npx.cmd")), None, "no node beside it");
        std::fs::write(dir.join("node.exe"), "").unwrap();
        let (node, script) = npx_through_node(&dir.join("npx.cmd")).unwrap();
        assert!(node.ends_with("node.exe") && script.ends_with("npx-cli.js"), "{node} {script}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    use clap::Parser;

    fn args_for(line: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(std::iter::once("mcp-sidecar").chain(line.iter().copied())).unwrap();
        let config =
            Config::from_cli(cli.args.clone(), &|n| matches!(n, "IDT" | "RP").then(|| "t".to_owned()))
                .unwrap();
        server_args(&cli.args, &config)
    }

    /// Issue 14: a machine's entry carries its grant's flags; the token by variable name only.
    #[test]
    fn the_entry_carries_the_headless_grant() {
        let line = ["https://h/mcp", "--auth", "workload-identity", "--identity-token-env", "IDT"];
        let args = args_for(&line);
        assert_eq!(
            args[..5],
            ["https://h/mcp", "--auth", "workload-identity", "--identity-token-env", "IDT"]
        );
        let cli = Cli::try_parse_from(std::iter::once("mcp-sidecar").chain(line)).unwrap();
        assert_eq!(secret_vars(&cli.args), ["IDT"]);
        let args =
            args_for(&["https://h/mcp", "--auth", "workload-identity", "--identity-token-file", "rel/tok"]);
        let at = args.iter().position(|a| a == "--identity-token-file").unwrap();
        assert!(Path::new(&args[at + 1]).is_absolute(), "{args:?}");
    }

    /// Issue 21.16: the Redis password's variable is in the entry's `env` (its value, like the
    /// client secret's), and a chosen protocol era is in its arguments.
    #[test]
    fn the_entry_carries_the_store_password_variable_and_the_era() {
        let line = [
            "https://h/mcp",
            "--auth",
            "none",
            "--rate-limit-store",
            "redis://h:6379",
            "--rate-limit-store-password-env",
            "RP",
            "--protocol-era",
            "modern",
        ];
        let cli = Cli::try_parse_from(std::iter::once("mcp-sidecar").chain(line)).unwrap();
        assert_eq!(secret_vars(&cli.args), ["RP"]);
        let args = args_for(&line);
        let at = args.iter().position(|a| a == "--protocol-era").expect("the era");
        assert_eq!(args[at + 1], "modern");
        assert!(!args_for(&["https://h/mcp", "--auth", "none"]).contains(&"--protocol-era".to_owned()));
    }

    /// Issue 10.10: the token store and the state directory travel with the entry; defaults do not.
    #[test]
    fn the_entry_names_the_token_store_and_leaves_defaults_out() {
        let args =
            args_for(&["https://h/mcp", "--auth", "none", "--token-store", "keyring", "--max-retries", "3"]);
        assert_eq!(args, ["https://h/mcp", "--auth", "none", "--token-store", "keyring"]);
        let args =
            args_for(&["https://h/mcp", "--auth", "none", "--state-dir", "rel/dir", "--max-retries", "5"]);
        let at = args.iter().position(|a| a == "--state-dir").unwrap();
        assert!(Path::new(&args[at + 1]).is_absolute(), "{args:?}");
        assert!(args.ends_with(&["--max-retries".to_owned(), "5".to_owned()]), "{args:?}");
    }
}
