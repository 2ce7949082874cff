//! The command line, as close to the flags as possible; [`crate::config`] turns it into a `Config`.
//!
//! Conventions (after xh's `cli.rs`): the doc comment of each field is its `--help` text; every
//! option that takes a value has an uppercase `value_name`; every option can also come from an
//! `MCP_SIDECAR_*` environment variable; nothing here reads a secret: keys come only from the
//! variable named by `--api-key-env`, never from a flag value (argv is visible to every user).
//! Flag names are a contract with users' scripts and client configs: never rename one.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default `--max-retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default `--request-timeout` of the proxy, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT: f64 = 300.0;
/// Default `--request-timeout` of `call`, `tool` and `tools` (issue 23.3: a person waits at a
/// terminal; a stalled server was five silent minutes). An MCP client's usual timeout.
pub const ONE_SHOT_REQUEST_TIMEOUT: f64 = 60.0;
/// Default `--request-timeout` of each step of `check`: a health check answers quickly.
pub const CHECK_REQUEST_TIMEOUT: f64 = 10.0;

const AFTER_HELP: &str = "\
Examples:
  # Investra: the key comes from INVESTRA_API_KEY, sent as Authorization: Bearer
  INVESTRA_API_KEY=inv_... mcp-sidecar --preset investra

  # Any server, key from MY_KEY, sent as X-API-Key
  MY_KEY=... mcp-sidecar https://mcp.example.com/mcp --api-key-env MY_KEY --auth-header x-api-key

  # Extra headers; ${VAR} is read from the environment so secrets stay out of argv
  mcp-sidecar https://mcp.example.com/mcp --header 'X-Tenant: ${TENANT_ID}'

  # A server that uses OAuth: sign in once in a terminal, then use it without a key
  mcp-sidecar login https://mcp.example.com/mcp
  mcp-sidecar https://mcp.example.com/mcp

Claude Code (it passes its environment on: export the key where you start claude, or let
install keep it in Claude Code's config file; never put a key on a command line):
  claude mcp add investra -- mcp-sidecar --preset investra
  mcp-sidecar install --client claude-code --store-key --preset investra

Exit status: 0 after a clean shutdown (stdin closed, SIGTERM, SIGINT, or the client went away),
2 for a configuration error (reported before stdin is read), 1 for any other failure.
login/logout/status: 0 done, 1 failed, 2 configuration error.";

/// `--version`: the version and the protocol revisions this build speaks.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nMCP protocol revisions: 2026-07-28, 2025-11-25, 2025-06-18, 2025-03-26 (Streamable HTTP), 2024-11-05 (HTTP+SSE)"
);

/// A stdio MCP server that forwards every message to a remote MCP server over HTTP.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-sidecar",
    // Not argv[0]: on Windows that is mcp-sidecar.exe, and usage lines should read the same
    // everywhere (found by the end-to-end tests under Wine).
    bin_name = "mcp-sidecar",
    version = VERSION,
    about,
    after_help = AFTER_HELP,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub args: Args,
}

/// What to do instead of proxying.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in to a server that uses OAuth, in this terminal, so that MCP clients never have to
    /// (takes the same options as the proxy).
    #[command(
        after_help = "Example:\n  mcp-sidecar login https://mcp.example.com/mcp\n  mcp-sidecar login --device https://mcp.example.com/mcp   (no browser here: a code to enter on another device)\n  mcp-sidecar login --preset ai2fin --url https://host/mcp --auth oauth"
    )]
    Login(LoginArgs),
    /// Forget the stored tokens and client registration of a server.
    Logout(Args),
    /// Show what is stored per server: sign-ins (client id, scopes, expiry; never a token) and
    /// rate-limit deadlines. Without a URL or preset: every server.
    #[command(
        after_help = "Example:\n  mcp-sidecar status\n  mcp-sidecar status --clear-limits https://mcp.example.com/mcp"
    )]
    Status(StatusArgs),
    /// Connect to a server and report each step (configuration, DNS, TLS, HTTP, MCP handshake,
    /// tools, auth, rate limits) with its timing; exit 0 when healthy.
    Check(CheckArgs),
    /// Send one request and print its result JSON on stdout (errors on stderr).
    #[command(
        after_help = "Example:\n  mcp-sidecar call tools/list --preset investra\n  mcp-sidecar call tools/call '{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}' --url https://host/mcp"
    )]
    Call(CallArgs),
    /// List the server's tools, one per line with its description (what a client sees, after
    /// --allow-tools and --deny-tools).
    Tools(ToolsArgs),
    /// Call one tool and print its result JSON.
    #[command(
        after_help = "Example:\n  mcp-sidecar tool sum --arg a=1 --arg b=2 --url https://host/mcp\n  mcp-sidecar tool echo --json '{\"text\":\"hi\"}' --preset investra"
    )]
    Tool(ToolArgs),
    /// Add the server to Claude Desktop's or Claude Code's configuration (the key goes in env,
    /// never in any command line).
    Install(InstallArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh or fish.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Sign in with a code entered on another device (RFC 8628), for machines without a
    /// browser; chosen by itself when no browser can be opened and the server offers it.
    #[arg(long)]
    pub device: bool,

    #[command(flatten)]
    pub args: Args,
}

/// `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub args: Args,
}

/// `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Remove the stored rate-limit deadlines (this server's, given a URL or preset; else all),
    /// so that every mcp-sidecar sends requests again at once.
    #[arg(long)]
    pub clear_limits: bool,
    #[command(flatten)]
    pub args: Args,
}

/// Issue 23.7: a first word that is neither a command nor a URL, but close to a command's name
/// (`chek`): the command it likely meant.
pub fn mistyped_command(word: &str) -> Option<String> {
    if word.starts_with('-') || word.contains(['/', ':', '.', '@']) {
        return None;
    }
    let names = command_names();
    if names.iter().any(|n| n == word) {
        return None;
    }
    let word = word.to_ascii_lowercase();
    names
        .into_iter()
        .map(|name| (strsim::damerau_levenshtein(&word, &name), name))
        // Two edits at most, and fewer than half the word (`to` is not `tool` mistyped).
        .filter(|(d, name)| *d <= 2 && d * 2 < name.len().max(word.len()))
        .min()
        .map(|(_, name)| name)
}

/// The names of the commands, for messages.
pub fn command_names() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command().get_subcommands().map(|c| c.get_name().to_owned()).filter(|n| n != "help").collect()
}

/// What `--pin-tools` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PinMode {
    /// Changed tools and new ones (also `MCP_SIDECAR_PIN_TOOLS=1`, `true`, `on` or `yes`).
    #[value(alias = "1", alias = "true", alias = "on", alias = "yes")]
    Strict,
    /// Changed tools only: new ones are pinned as they are first seen.
    NewOk,
}

/// `tools`.
#[derive(Debug, Clone, clap::Args)]
pub struct ToolsArgs {
    /// Every tool the server offers, those --allow-tools or --deny-tools hide marked with the
    /// rule that hides them.
    #[arg(long)]
    pub all: bool,
    /// Shows what changed in each tool --pin-tools holds (or the NAMEs given) since it was
    /// pinned, and pins it as it is now.
    #[arg(long)]
    pub approve: bool,
    #[command(flatten)]
    pub args: Args,
    /// With --approve: the tools to approve (all held ones when none is named).
    #[arg(value_name = "NAME", requires = "approve")]
    pub names: Vec<String>,
}

impl ToolsArgs {
    /// `tools --approve NAME` with the URL from a preset or the environment: the first name
    /// was read as the URL.
    pub fn sorted(mut self) -> ToolsArgs {
        let is_url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
        if self.approve
            && let Some(first) = self.args.url.take_if(|u| !is_url(u))
        {
            self.names.insert(0, first);
        }
        self
    }
}

/// `call`.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// The JSON-RPC method, e.g. tools/list.
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// Its params as JSON [default: {}].
    #[arg(value_name = "PARAMS_JSON")]
    pub params: Option<String>,
    #[command(flatten)]
    pub args: Args,
}

impl CallArgs {
    /// Issue 23.7: `call tools/list URL` put the URL in PARAMS_JSON ("must be a JSON object",
    /// or "no server URL"). The positional arguments are read by what they are, in any order:
    /// an http(s) URL is the server, a JSON object or array the params, the other word the
    /// method. Anything ambiguous is left as written.
    pub fn sorted(mut self) -> CallArgs {
        let given: Vec<String> = [Some(self.method.clone()), self.params.clone(), self.args.url.clone()]
            .into_iter()
            .flatten()
            .collect();
        let is_url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
        let is_json = |s: &str| s.trim_start().starts_with(['{', '[']);
        let urls: Vec<&String> = given.iter().filter(|s| is_url(s)).collect();
        let jsons: Vec<&String> = given.iter().filter(|s| is_json(s)).collect();
        let words: Vec<&String> = given.iter().filter(|s| !is_url(s) && !is_json(s)).collect();
        if urls.len() > 1 || jsons.len() > 1 || words.len() != 1 {
            return self;
        }
        self.method = words[0].clone();
        self.params = jsons.first().map(|s| (*s).clone());
        self.args.url = urls.first().map(|s| (*s).clone());
        self
    }
}

/// `tool`.
#[derive(Debug, Clone, clap::Args)]
pub struct ToolArgs {
    /// The tool's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// An argument key=value (repeatable); the value is JSON if it parses, else a string.
    #[arg(long = "arg", value_name = "KEY=VALUE", conflicts_with = "json")]
    pub arg: Vec<String>,
    /// All arguments as one JSON object.
    #[arg(long, value_name = "JSON")]
    pub json: Option<String>,
    #[command(flatten)]
    pub args: Args,
}

/// `install`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Which client to configure.
    #[arg(long, value_name = "CLIENT")]
    pub client: InstallClient,
    /// The server's name in the client [default: the preset, or the URL's host].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Show the change without making it.
    #[arg(long)]
    pub dry_run: bool,
    /// The config file to change [default: Claude Desktop's at the platform's location; with
    /// --store-key, Claude Code's ~/.claude.json].
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Claude Code: keep the key (and other secrets from variables) in Claude Code's own config
    /// file (user scope, private to you) instead of expecting them exported where claude runs.
    /// Secrets never go on a command line.
    #[arg(long)]
    pub store_key: bool,
    #[command(flatten)]
    pub args: Args,
}

/// `install --client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InstallClient {
    /// claude_desktop_config.json, merged (a backup of the old file is kept).
    ClaudeDesktop,
    /// Runs (or with --dry-run prints) the matching claude mcp add command, without secrets;
    /// with --store-key, writes Claude Code's config file instead.
    ClaudeCode,
}

/// The headings the proxy's options are grouped under in every command's help (issue 23.11: a
/// command's own options first, then these, instead of ~40 options in one list).
const SERVER: &str = "Server and key";
const SIGN_IN: &str = "Sign-in (OAuth and other grants)";
const CONNECTION: &str = "Connection, timeouts and retries";
const RATE_LIMITS: &str = "Rate limits";
const LOGGING: &str = "Messages and logging";
const TOOLS: &str = "What reaches the model";

/// The options of the proxy (and of `login`, `logout`, `status`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The remote MCP endpoint, e.g. https://mcp.example.com/mcp.
    #[arg(value_name = "URL")]
    pub url: Option<String>,

    /// The remote MCP endpoint (same as the positional URL). Also read from MCP_SIDECAR_URL,
    /// which a URL on the command line overrides.
    #[arg(help_heading = SERVER, long = "url", value_name = "URL")]
    pub url_flag: Option<String>,

    /// Fill in endpoint, key variable, header style and key prefix for a known service.
    #[arg(help_heading = SERVER, long, value_name = "NAME", env = "MCP_SIDECAR_PRESET")]
    pub preset: Option<Preset>,

    /// The environment variable that holds the API key (the key itself is never an option).
    #[arg(help_heading = SERVER, long, value_name = "NAME", env = "MCP_SIDECAR_API_KEY_ENV")]
    pub api_key_env: Option<String>,

    /// A command that prints the API key, run without a shell (e.g. "op read
    /// op://Private/Investra/key"): at start, and once more after a 401 for a rotated key.
    #[arg(help_heading = SERVER, long, value_name = "COMMAND", env = "MCP_SIDECAR_API_KEY_COMMAND", conflicts_with = "api_key_env")]
    pub api_key_command: Option<String>,

    /// How the key is sent: bearer (Authorization: Bearer KEY), x-api-key, or a header name.
    #[arg(help_heading = SERVER, long, value_name = "STYLE", env = "MCP_SIDECAR_AUTH_HEADER")]
    pub auth_header: Option<String>,

    /// How to authenticate: api-key (the key variable), oauth (sign in with the browser when
    /// the server asks), oauth-device (sign in with a code on another device),
    /// client-credentials (a machine: --client-id with --client-secret-env or
    /// --client-key-file), workload-identity (a CI job's OIDC token, --identity-token-file or
    /// --identity-token-env), enterprise (an ID token exchanged at your identity provider,
    /// --idp-token-endpoint), none. Default: api-key when a key variable is configured, else
    /// OAuth when the server asks for it.
    #[arg(help_heading = SIGN_IN, long, value_name = "METHOD", env = "MCP_SIDECAR_AUTH")]
    pub auth: Option<AuthMethod>,

    /// OAuth: the id of a client registered with the authorization server beforehand (else
    /// mcp-sidecar registers itself).
    #[arg(help_heading = SIGN_IN, long, value_name = "ID", env = "MCP_SIDECAR_CLIENT_ID")]
    pub client_id: Option<String>,

    /// OAuth: the environment variable that holds the pre-registered client's secret.
    #[arg(help_heading = SIGN_IN, long, value_name = "NAME", env = "MCP_SIDECAR_CLIENT_SECRET_ENV")]
    pub client_secret_env: Option<String>,

    /// OAuth client credentials: a PEM private key (P-256, RSA or Ed25519; chmod 600) whose
    /// public key is registered for --client-id, to authenticate with signed assertions
    /// (private_key_jwt) instead of a secret: the safer choice, since an assertion is short-lived
    /// and names its audience, while a secret works anywhere it is sent. Either way the
    /// authorization server first seen is pinned in the state dir.
    #[arg(help_heading = SIGN_IN, long, value_name = "PATH", env = "MCP_SIDECAR_CLIENT_KEY_FILE")]
    pub client_key_file: Option<std::path::PathBuf>,

    /// Workload identity / enterprise: a file holding the identity token (a CI job's OIDC
    /// token; the user's ID token), read again at every renewal.
    #[arg(help_heading = SIGN_IN, long, value_name = "PATH", env = "MCP_SIDECAR_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<std::path::PathBuf>,

    /// Workload identity / enterprise: the environment variable that holds the identity token.
    #[arg(help_heading = SIGN_IN, long, value_name = "NAME", env = "MCP_SIDECAR_IDENTITY_TOKEN_ENV")]
    pub identity_token_env: Option<String>,

    /// Enterprise: the token endpoint of your identity provider, where the ID token is
    /// exchanged for an identity assertion (RFC 8693).
    #[arg(help_heading = SIGN_IN, long, value_name = "URL", env = "MCP_SIDECAR_IDP_TOKEN_ENDPOINT")]
    pub idp_token_endpoint: Option<String>,

    /// Enterprise: mcp-sidecar's client id at your identity provider.
    #[arg(help_heading = SIGN_IN, long, value_name = "ID", env = "MCP_SIDECAR_IDP_CLIENT_ID")]
    pub idp_client_id: Option<String>,

    /// Enterprise: the environment variable that holds that client's secret, if it has one.
    #[arg(help_heading = SIGN_IN, long, value_name = "NAME", env = "MCP_SIDECAR_IDP_CLIENT_SECRET_ENV")]
    pub idp_client_secret_env: Option<String>,

    /// OAuth: an https URL where a client ID metadata document for mcp-sidecar is hosted, used
    /// as the client id where the authorization server supports that.
    #[arg(help_heading = SIGN_IN, long, value_name = "URL", env = "MCP_SIDECAR_CLIENT_METADATA_URL")]
    pub client_metadata_url: Option<String>,

    /// OAuth: the 127.0.0.1 port the browser is sent back to [default: any free port].
    #[arg(help_heading = SIGN_IN, long, value_name = "PORT", env = "MCP_SIDECAR_CALLBACK_PORT")]
    pub callback_port: Option<u16>,

    /// OAuth: where tokens are kept: file (under --state-dir, private to you) or keyring (the OS
    /// credential store; builds with the keyring feature).
    #[arg(help_heading = SIGN_IN, long, value_name = "STORE", env = "MCP_SIDECAR_TOKEN_STORE", default_value = "file")]
    pub token_store: TokenStoreKind,

    /// OAuth: seconds to wait for the sign-in in the browser.
    #[arg(help_heading = SIGN_IN, long, value_name = "SECS", env = "MCP_SIDECAR_AUTH_TIMEOUT", default_value = "300")]
    pub auth_timeout: f64,

    /// OAuth: the scopes to ask for (space-separated), instead of those the server names
    /// (Entra: 'api://APP-ID/.default offline_access').
    #[arg(help_heading = SIGN_IN, long, value_name = "SCOPES", env = "MCP_SIDECAR_SCOPE")]
    pub scope: Option<String>,

    /// OAuth: the resource indicator (RFC 8707) to send instead of the server's URL (Entra: its
    /// 'api://APP-ID').
    #[arg(help_heading = SIGN_IN, long, value_name = "URI", env = "MCP_SIDECAR_OAUTH_RESOURCE", conflicts_with = "no_resource_indicator")]
    pub oauth_resource: Option<String>,

    /// OAuth: send no resource parameter on the authorization, token and refresh requests (for
    /// authorization servers that refuse it, as Microsoft Entra does: AADSTS9010010).
    #[arg(help_heading = SIGN_IN, long, env = "MCP_SIDECAR_NO_RESOURCE_INDICATOR", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_resource_indicator: bool,

    /// OAuth: an extra parameter of the authorization request, KEY=VALUE (repeatable: Google's
    /// access_type=offline, Auth0's audience=…); not one the sign-in sets itself (state,
    /// redirect_uri, code_challenge, scope, resource, …).
    #[arg(help_heading = SIGN_IN, long = "authorize-param", value_name = "KEY=VALUE", env = "MCP_SIDECAR_AUTHORIZE_PARAM", value_delimiter = ',')]
    pub authorize_params: Vec<String>,

    /// OAuth: send the OpenID Connect ID token as the bearer instead of the access token, and
    /// refresh it (Amazon Cognito, Bedrock AgentCore); asks for the openid scope.
    #[arg(help_heading = SIGN_IN, long, env = "MCP_SIDECAR_USE_ID_TOKEN", value_parser = clap::builder::BoolishValueParser::new())]
    pub use_id_token: bool,

    /// An extra header 'Name: value' (repeatable); ${VAR} in the value is read from the
    /// environment. In MCP_SIDECAR_HEADER, separate several headers with newlines.
    #[arg(
        help_heading = CONNECTION,
        long = "header",
        short = 'H',
        value_name = "HEADER",
        env = "MCP_SIDECAR_HEADER",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub headers: Vec<String>,

    /// Which HTTP transport to use: auto tries Streamable HTTP and falls back to the 2024-11-05
    /// HTTP+SSE transport when the server only speaks that.
    #[arg(help_heading = CONNECTION, long, value_name = "TRANSPORT", env = "MCP_SIDECAR_TRANSPORT", default_value = "auto")]
    pub transport: Transport,

    /// Which protocol era the server speaks: auto learns it once per origin (a server/discover
    /// probe, remembered for a day) and bridges a client of the other era; legacy and modern
    /// skip the probe.
    #[arg(help_heading = CONNECTION, long, value_name = "ERA", env = "MCP_SIDECAR_PROTOCOL_ERA", default_value = "auto")]
    pub protocol_era: ProtocolEra,

    /// Where state shared between runs is kept [default: $XDG_STATE_HOME/mcp-sidecar].
    #[arg(help_heading = CONNECTION, long, value_name = "DIR", env = "MCP_SIDECAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Also trust the CA certificates in this PEM file (a private or corporate CA), on top of the
    /// system's trust store.
    #[arg(help_heading = CONNECTION, long, value_name = "FILE", env = "MCP_SIDECAR_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// A client certificate (PEM: the certificate, then its intermediates) for servers that
    /// require one (mTLS); with --client-key.
    #[arg(help_heading = CONNECTION, long, value_name = "PEM", env = "MCP_SIDECAR_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM; readable by you alone).
    #[arg(help_heading = CONNECTION, long, value_name = "PEM", env = "MCP_SIDECAR_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// The environment variable that holds the passphrase of an encrypted --client-key.
    #[arg(help_heading = CONNECTION, long, value_name = "NAME", env = "MCP_SIDECAR_CLIENT_KEY_PASSWORD_ENV", requires = "client_key")]
    pub client_key_password_env: Option<String>,

    /// Allow plain http:// to hosts other than loopback (credentials would travel unencrypted).
    #[arg(help_heading = CONNECTION, long, env = "MCP_SIDECAR_ALLOW_HTTP")]
    pub allow_http: bool,

    /// Send a ping after this many seconds without a request, to keep the MCP session alive
    /// through a load balancer or proxy whose idle timeout would drop it [default: off]. Each
    /// ping is a request the server may count.
    #[arg(help_heading = CONNECTION, long, value_name = "SECS", env = "MCP_SIDECAR_PING_INTERVAL")]
    pub ping_interval: Option<f64>,

    /// Seconds to wait for a TCP/TLS connection to the server.
    #[arg(help_heading = CONNECTION, long, value_name = "SECS", env = "MCP_SIDECAR_CONNECT_TIMEOUT", default_value = "10")]
    pub connect_timeout: f64,

    /// Seconds one request may wait for its answer before the client gets an error; a progress
    /// notification from the server restarts the clock [default: 300; 60 for call, tool and
    /// tools; 10 for each step of check].
    #[arg(help_heading = CONNECTION, long, value_name = "SECS", env = "MCP_SIDECAR_REQUEST_TIMEOUT")]
    pub request_timeout: Option<f64>,

    /// How many times one message is sent again after a 429 (or a 503 with Retry-After), or
    /// after a connection that failed before the request went out. Never after a reply that may
    /// mean the server processed it.
    #[arg(
        help_heading = CONNECTION,
        long,
        value_name = "N",
        env = "MCP_SIDECAR_MAX_RETRIES",
        default_value_t = DEFAULT_MAX_RETRIES
    )]
    pub max_retries: u32,

    /// The longest single wait for a rate limit, in seconds. A longer one is answered at once
    /// with an error that says when the limit resets. The default stays under the 60 s request
    /// timeout of common clients; raise it if yours waits longer.
    #[arg(help_heading = CONNECTION, long, value_name = "SECS", env = "MCP_SIDECAR_MAX_WAIT", default_value = "45")]
    pub max_wait: f64,

    /// A client-side limit such as 10/min or 1000/day (repeatable, or comma-separated:
    /// 60/min,5000/day), shared by every mcp-sidecar on this machine that uses the same key, so
    /// the server's limit is never hit.
    #[arg(help_heading = RATE_LIMITS, long, value_name = "N/UNIT", env = "MCP_SIDECAR_RATE_LIMIT", value_delimiter = ',')]
    pub rate_limit: Vec<String>,

    /// Share the rate-limit state (deadlines, the server's budget, client-side limits) in Redis
    /// or Valkey, so that every mcp-sidecar on every machine using the same key keeps one
    /// budget: redis://HOST:PORT[/DB] or rediss:// (TLS). No password here: see
    /// --rate-limit-store-password-env. While the store cannot be reached, the local state is
    /// used.
    #[arg(help_heading = RATE_LIMITS, long, value_name = "URL", env = "MCP_SIDECAR_RATE_LIMIT_STORE")]
    pub rate_limit_store: Option<String>,

    /// The environment variable that holds the store's password, whole (a user goes in the URL:
    /// redis://USER@HOST:PORT).
    #[arg(help_heading = RATE_LIMITS, long, value_name = "NAME", env = "MCP_SIDECAR_RATE_LIMIT_STORE_PASSWORD_ENV")]
    pub rate_limit_store_password_env: Option<String>,

    /// Your plan with the preset's service, for its published limits as --rate-limit (Investra:
    /// free 10/min and 100/day, pro 30/min and 1000/day, pro-plus 60/min and 5000/day).
    #[arg(help_heading = RATE_LIMITS, long, value_name = "PLAN", env = "MCP_SIDECAR_PLAN")]
    pub plan: Option<Plan>,

    /// Only the tools whose names match one of these globs (`*` any run of characters, `?` one;
    /// comma-separated, repeatable) are listed and may be called.
    #[arg(help_heading = TOOLS, long, value_name = "GLOB,…", env = "MCP_SIDECAR_ALLOW_TOOLS", value_delimiter = ',')]
    pub allow_tools: Vec<String>,

    /// Tools whose names match one of these globs are left out of lists, and their calls are
    /// answered as calls of an unknown tool, never sent (deny wins over --allow-tools).
    #[arg(help_heading = TOOLS, long, value_name = "GLOB,…", env = "MCP_SIDECAR_DENY_TOOLS", value_delimiter = ',')]
    pub deny_tools: Vec<String>,

    /// Only the prompts whose names match one of these globs are listed and may be got.
    #[arg(help_heading = TOOLS, long, value_name = "GLOB,…", env = "MCP_SIDECAR_ALLOW_PROMPTS", value_delimiter = ',')]
    pub allow_prompts: Vec<String>,

    /// Prompts whose names match one of these globs are left out of lists and never got (deny
    /// wins over --allow-prompts).
    #[arg(help_heading = TOOLS, long, value_name = "GLOB,…", env = "MCP_SIDECAR_DENY_PROMPTS", value_delimiter = ',')]
    pub deny_prompts: Vec<String>,

    /// Resources whose URIs match one of these globs (`file:///secret/*`) are left out of lists
    /// and never read.
    #[arg(help_heading = TOOLS, long, value_name = "GLOB,…", env = "MCP_SIDECAR_DENY_RESOURCES", value_delimiter = ',')]
    pub deny_resources: Vec<String>,

    /// Every tool is listed under this prefix (PREFIX + its name) and called back under its
    /// own name, so that two servers' tools cannot collide in one client.
    #[arg(help_heading = TOOLS, long, value_name = "PREFIX", env = "MCP_SIDECAR_TOOL_PREFIX")]
    pub tool_prefix: Option<String>,

    /// The tool OLD is listed as NEW (no prefix added) and called back as OLD (repeatable;
    /// comma-separated). --allow-tools and --deny-tools match the server's own names.
    #[arg(help_heading = TOOLS, long, value_name = "OLD=NEW", env = "MCP_SIDECAR_RENAME_TOOL", value_delimiter = ',')]
    pub rename_tool: Vec<String>,

    /// Pin each tool's definition at the server's first listing (kept in the state dir); later a
    /// changed tool, or a new one, is withheld and its calls refused until `mcp-sidecar tools
    /// --approve URL NAME` (new-ok: new tools pass, changed ones are still held).
    #[arg(
        help_heading = TOOLS,
        long,
        value_name = "new-ok",
        env = "MCP_SIDECAR_PIN_TOOLS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "strict"
    )]
    pub pin_tools: Option<PinMode>,

    /// Do not keep the server's last initialize answer and tool, prompt and resource lists in
    /// the state dir (by default they answer a client at start while the server is
    /// rate-limited past --max-wait or unreachable, marked stale in the log).
    #[arg(help_heading = TOOLS, long, env = "MCP_SIDECAR_NO_LIST_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_list_cache: bool,

    /// The largest message accepted, in bytes, on stdin and from the server.
    #[arg(
        help_heading = LOGGING,
        long,
        value_name = "BYTES",
        env = "MCP_SIDECAR_MAX_MESSAGE_BYTES",
        default_value_t = crate::stdio::DEFAULT_MAX_MESSAGE_BYTES
    )]
    pub max_message_bytes: usize,

    /// More logging (-v debug, -vv trace; --debug, as mcp-remote spells it, is -v).
    #[arg(help_heading = LOGGING, short = 'v', long = "verbose", alias = "debug", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less logging (-q warnings and errors, -qq errors only).
    #[arg(help_heading = LOGGING, short = 'q', long = "quiet", action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Set by `install` (not a flag): the settings are read to be written into a client's config,
    /// so a missing key is to be exported before install runs, not put in the "env" block by hand.
    #[arg(skip)]
    pub installing: bool,

    /// Set by the one-shot commands (not a flag): see [`crate::config::Config::one_shot`].
    #[arg(skip)]
    pub one_shot: bool,

    /// How much to log on stderr: error, warn, info, debug or trace (bodies only at trace).
    #[arg(help_heading = LOGGING, long, value_name = "LEVEL", env = "MCP_SIDECAR_LOG_LEVEL", default_value = "info")]
    pub log_level: LogLevel,

    /// Log line format on stderr.
    #[arg(help_heading = LOGGING, long, value_name = "FORMAT", env = "MCP_SIDECAR_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Also write the log lines to this file (the owner's only): one file a day, the date before
    /// its extension (mcp-sidecar.log → mcp-sidecar.2026-12-07.log), the last 7 kept. For
    /// clients that hide a server's stderr.
    #[arg(help_heading = LOGGING, long, value_name = "PATH", env = "MCP_SIDECAR_LOG_FILE")]
    pub log_file: Option<PathBuf>,
}

/// Known services, from their published authentication docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Investra: https://www.investraapp.com/api/mcp, INVESTRA_API_KEY, Bearer, inv_ keys.
    Investra,
    /// AI2Fin API-key access: <host>/mcp/inspector (needs --url), AI2FIN_API_KEY, X-API-Key, mcp_.
    Ai2fin,
    /// Converra: https://converra.ai/api/mcp, CONVERRA_API_KEY, Bearer, sk_live_ or sk_test_.
    Converra,
}

/// `--plan` (Investra's published tiers, vendor-investra-auth.txt "Rate Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Plan {
    /// 10 requests a minute, 100 a day.
    Free,
    /// 30 requests a minute, 1,000 a day.
    Pro,
    /// 60 requests a minute, 5,000 a day.
    ProPlus,
}

/// `--auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMethod {
    /// The key in the variable named by --api-key-env (or the preset's).
    ApiKey,
    /// OAuth 2.1: sign in with the browser when the server asks.
    Oauth,
    /// OAuth 2.1 device authorization (RFC 8628): a code entered on another device.
    OauthDevice,
    /// OAuth client credentials: the client itself (a machine), no person.
    ClientCredentials,
    /// The JWT bearer grant with a workload's identity token (CI OIDC tokens).
    WorkloadIdentity,
    /// Enterprise-managed authorization: the ID token exchanged at the identity provider.
    Enterprise,
    /// No credential.
    None,
}

/// `--token-store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenStoreKind {
    /// A file per server under --state-dir (0600).
    File,
    /// The OS keyring (Secret Service, Keychain, Credential Manager).
    Keyring,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Streamable HTTP, falling back to HTTP+SSE where the server only speaks that.
    Auto,
    /// Streamable HTTP only.
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport only.
    Sse,
}

/// `--protocol-era`: the server's era.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolEra {
    /// Learn it from the server and bridge when the client speaks the other one.
    Auto,
    /// The handshake era (initialize, sessions; 2025-11-25 and before): no probe.
    Legacy,
    /// The stateless era (per-request metadata, server/discover; 2026-07-28): no probe.
    Modern,
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn positional_and_flag_url_both_parse() {
        // Whether they agree is the config's to say (issue 23.7).
        let cli = Cli::try_parse_from(["mcp-sidecar", "http://a/mcp", "--url", "http://b/mcp"]).unwrap();
        assert_eq!(cli.args.url.as_deref(), Some("http://a/mcp"));
        assert_eq!(cli.args.url_flag.as_deref(), Some("http://b/mcp"));
    }

    #[test]
    fn issue23_7_a_word_close_to_a_command_is_named() {
        assert_eq!(mistyped_command("chek").as_deref(), Some("check"));
        assert_eq!(mistyped_command("tols").as_deref(), Some("tools"));
        assert_eq!(mistyped_command("Login").as_deref(), Some("login"));
        assert_eq!(mistyped_command("instal").as_deref(), Some("install"));
        for not in ["tools", "tool", "check", "to", "hello", "https://chek", "mcp.chek.io", "--chek", "x"] {
            assert_eq!(mistyped_command(not), None, "{not}");
        }
    }

    #[test]
    fn issue23_7_calls_arguments_are_read_by_what_they_are() {
        let parse = |argv: &[&str]| {
            let cli = Cli::try_parse_from([&["mcp-sidecar", "call"][..], argv].concat()).unwrap();
            let Some(Command::Call(c)) = cli.command else { panic!() };
            let c = c.sorted();
            (c.method, c.params, c.args.url)
        };
        let url = Some("https://h/mcp".to_owned());
        let json = Some(r#"{"a":1}"#.to_owned());
        assert_eq!(parse(&["tools/list", "https://h/mcp"]), ("tools/list".into(), None, url.clone()));
        assert_eq!(parse(&["https://h/mcp", "tools/list"]), ("tools/list".into(), None, url.clone()));
        assert_eq!(
            parse(&["tools/call", "https://h/mcp", r#"{"a":1}"#]),
            ("tools/call".into(), json.clone(), url.clone())
        );
        assert_eq!(parse(&["tools/call", r#"{"a":1}"#, "https://h/mcp"]), ("tools/call".into(), json, url));
        // Ambiguous: as written (PARAMS_JSON's own error follows).
        assert_eq!(parse(&["a", "b"]), ("a".into(), Some("b".into()), None));
    }

    #[test]
    fn repeated_headers_are_kept_in_order() {
        let cli = Cli::try_parse_from(["mcp-sidecar", "-H", "A: 1", "--header", "B: 2"]).unwrap();
        assert_eq!(cli.args.headers, ["A: 1", "B: 2"]);
    }

    #[test]
    fn presets_parse_by_name() {
        let cli = Cli::try_parse_from(["mcp-sidecar", "--preset", "ai2fin"]).unwrap();
        assert_eq!(cli.args.preset, Some(Preset::Ai2fin));
    }

    #[test]
    fn subcommands_take_the_proxy_options_and_urls_stay_positional() {
        let cli = Cli::try_parse_from(["mcp-sidecar", "login", "https://h/mcp", "--client-id", "c"]).unwrap();
        match cli.command {
            Some(Command::Login(LoginArgs { args: a, device: false })) => {
                assert_eq!(a.url.as_deref(), Some("https://h/mcp"));
                assert_eq!(a.client_id.as_deref(), Some("c"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["mcp-sidecar", "https://h/mcp", "--auth", "oauth"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.args.auth, Some(AuthMethod::Oauth));
        let cli = Cli::try_parse_from(["mcp-sidecar", "status"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Status(_))));
    }
}
