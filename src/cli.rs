//! The command line, as close to the flags as possible; [`crate::config`] turns it into a `Config`.
//!
//! Conventions (after xh's `cli.rs`): the doc comment of each field is its `--help` text; every
//! option that takes a value has an uppercase `value_name`; every option can also come from an
//! `MCP_SIDECAR_*` environment variable; nothing here reads a secret: keys come only from the
//! variable named by `--api-key-env`, never from a flag value (argv is visible to every user).
//! Flag names are a contract with users' scripts and client configs: never rename one.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  # Investra: the key comes from INVESTRA_API_KEY, sent as Authorization: Bearer
  INVESTRA_API_KEY=inv_... mcp-sidecar --preset investra

  # Any server, key from MY_KEY, sent as X-API-Key
  MY_KEY=... mcp-sidecar https://mcp.example.com/mcp --api-key-env MY_KEY --auth-header x-api-key

  # Extra headers; ${VAR} is read from the environment so secrets stay out of argv
  mcp-sidecar https://mcp.example.com/mcp --header 'X-Tenant: ${TENANT_ID}'

Claude Code:
  claude mcp add investra -e INVESTRA_API_KEY=inv_... -- mcp-sidecar --preset investra

Exit status: 0 after a clean shutdown (stdin closed, SIGTERM, SIGINT, or the client went away),
2 for a configuration error (reported before stdin is read), 1 for any other failure.";

/// A stdio MCP server that forwards every message to a remote MCP server over HTTP.
#[derive(Debug, Parser)]
#[command(name = "mcp-sidecar", version, about, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// The remote MCP endpoint, e.g. https://mcp.example.com/mcp.
    #[arg(value_name = "URL", conflicts_with = "url_flag")]
    pub url: Option<String>,

    /// The remote MCP endpoint (same as the positional URL).
    #[arg(long = "url", value_name = "URL", env = "MCP_SIDECAR_URL")]
    pub url_flag: Option<String>,

    /// Fill in endpoint, key variable, header style and key prefix for a known service.
    #[arg(long, value_name = "NAME", env = "MCP_SIDECAR_PRESET")]
    pub preset: Option<Preset>,

    /// The environment variable that holds the API key (the key itself is never an option).
    #[arg(long, value_name = "NAME", env = "MCP_SIDECAR_API_KEY_ENV")]
    pub api_key_env: Option<String>,

    /// How the key is sent: bearer (Authorization: Bearer KEY), x-api-key, or a header name.
    #[arg(long, value_name = "STYLE", env = "MCP_SIDECAR_AUTH_HEADER")]
    pub auth_header: Option<String>,

    /// An extra header 'Name: value' (repeatable); ${VAR} in the value is read from the
    /// environment. In MCP_SIDECAR_HEADER, separate several headers with newlines.
    #[arg(
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
    #[arg(long, value_name = "TRANSPORT", env = "MCP_SIDECAR_TRANSPORT", default_value = "auto")]
    pub transport: Transport,

    /// Where state shared between runs is kept [default: $XDG_STATE_HOME/mcp-sidecar].
    #[arg(long, value_name = "DIR", env = "MCP_SIDECAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Also trust the CA certificates in this PEM file (a private or corporate CA), on top of the
    /// system's trust store.
    #[arg(long, value_name = "FILE", env = "MCP_SIDECAR_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Allow plain http:// to hosts other than loopback (credentials would travel unencrypted).
    #[arg(long, env = "MCP_SIDECAR_ALLOW_HTTP")]
    pub allow_http: bool,

    /// Seconds to wait for a TCP/TLS connection to the server.
    #[arg(long, value_name = "SECS", env = "MCP_SIDECAR_CONNECT_TIMEOUT", default_value = "10")]
    pub connect_timeout: f64,

    /// Seconds one request may wait for its answer before the client gets an error; a progress
    /// notification from the server restarts the clock.
    #[arg(long, value_name = "SECS", env = "MCP_SIDECAR_REQUEST_TIMEOUT", default_value = "300")]
    pub request_timeout: f64,

    /// How many times one message is sent again after a 429 (or a 503 with Retry-After), or
    /// after a connection that failed before the request went out. Never after a reply that may
    /// mean the server processed it.
    #[arg(
        long,
        value_name = "N",
        env = "MCP_SIDECAR_MAX_RETRIES",
        default_value_t = crate::retry::DEFAULT_MAX_RETRIES
    )]
    pub max_retries: u32,

    /// The longest single wait for a rate limit, in seconds. A longer one is answered at once
    /// with an error that says when the limit resets. The default stays under the 60 s request
    /// timeout of common clients; raise it if yours waits longer.
    #[arg(long, value_name = "SECS", env = "MCP_SIDECAR_MAX_WAIT", default_value = "45")]
    pub max_wait: f64,

    /// A client-side limit such as 10/min or 1000/day (repeatable, or comma-separated), shared
    /// by every mcp-sidecar on this machine that uses the same key, so the server's limit is
    /// never hit.
    #[arg(long, value_name = "N/UNIT", env = "MCP_SIDECAR_RATE_LIMIT", value_delimiter = ',')]
    pub rate_limit: Vec<String>,

    /// The largest message accepted, in bytes, on stdin and from the server.
    #[arg(
        long,
        value_name = "BYTES",
        env = "MCP_SIDECAR_MAX_MESSAGE_BYTES",
        default_value_t = crate::stdio::DEFAULT_MAX_MESSAGE_BYTES
    )]
    pub max_message_bytes: usize,

    /// How much to log on stderr: error, warn, info, debug or trace (bodies only at trace).
    #[arg(long, value_name = "LEVEL", env = "MCP_SIDECAR_LOG_LEVEL", default_value = "info")]
    pub log_level: LogLevel,

    /// Log line format on stderr.
    #[arg(long, value_name = "FORMAT", env = "MCP_SIDECAR_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
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
    fn positional_and_flag_url_conflict() {
        assert!(Cli::try_parse_from(["mcp-sidecar", "http://a/mcp", "--url", "http://b/mcp"]).is_err());
        let cli = Cli::try_parse_from(["mcp-sidecar", "--url", "http://b/mcp"]).unwrap();
        assert_eq!(cli.url_flag.as_deref(), Some("http://b/mcp"));
    }

    #[test]
    fn repeated_headers_are_kept_in_order() {
        let cli = Cli::try_parse_from(["mcp-sidecar", "-H", "A: 1", "--header", "B: 2"]).unwrap();
        assert_eq!(cli.headers, ["A: 1", "B: 2"]);
    }

    #[test]
    fn presets_parse_by_name() {
        let cli = Cli::try_parse_from(["mcp-sidecar", "--preset", "ai2fin"]).unwrap();
        assert_eq!(cli.preset, Some(Preset::Ai2fin));
    }
}
