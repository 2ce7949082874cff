//! `cargo run --example example_server -- --vendor investra`: an MCP server on 127.0.0.1 that
//! behaves like the vendors in the docs mcp-sidecar is built from (see `server.rs`).
//!
//! It accepts the key held in the vendor's variable (INVESTRA_API_KEY, AI2FIN_API_KEY,
//! CONVERRA_API_KEY, or EXAMPLE_API_KEY for `generic`; `--key-env` names another), so the same
//! exported key works for the server and for `mcp-sidecar --preset …`. It prints its URL on the
//! first line of stdout.

mod record;
mod server;

use std::io::Write;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// An example remote MCP server for trying mcp-sidecar offline.
#[derive(Debug, Parser)]
struct Args {
    /// generic, investra, ai2fin or converra.
    #[arg(long, default_value = "generic")]
    vendor: String,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The variable holding the accepted key [default: the vendor's].
    #[arg(long, value_name = "NAME")]
    key_env: Option<String>,
    /// Treat the key as read-only (AI2Fin: write tools answer 403).
    #[arg(long)]
    read_only: bool,
    /// Requests per minute per key before answering 429.
    #[arg(long, value_name = "N")]
    per_minute: Option<u32>,
    /// The length of the rate-limit window in seconds (the vendors use 60).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    window_secs: u64,
    /// A fixed window of N POSTs per S seconds per key that sends X-RateLimit-Limit,
    /// -Remaining and -Reset with every answer, whatever the vendor (sets --per-minute N
    /// --window-secs S).
    #[arg(long, value_name = "N/S")]
    window: Option<String>,
    /// Answer with plain JSON and no sessions (default: sessions and SSE).
    #[arg(long)]
    json: bool,
    /// Write one JSON line per HTTP request to this file (the interop matrix reads it).
    #[arg(long, value_name = "FILE")]
    record: Option<std::path::PathBuf>,
    /// Answer the first POST with 429 and `Retry-After: 1`.
    #[arg(long)]
    first_429: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let vendor = server::Vendor::parse(&args.vendor)
        .ok_or("--vendor must be generic, investra, ai2fin or converra")?;
    let key_env = args.key_env.unwrap_or_else(|| vendor.key_env().to_owned());
    let keys: Vec<String> = std::env::var(&key_env).ok().filter(|k| !k.is_empty()).into_iter().collect();
    if keys.is_empty() && vendor != server::Vendor::Generic {
        return Err(format!("{key_env} is not set: export the key this server should accept").into());
    }
    let window = match args.window.as_deref() {
        Some(w) => {
            let (n, s) = w.split_once('/').ok_or("--window takes N/S, e.g. 10/1")?;
            Some((n.trim().parse::<u32>()?, s.trim().parse::<u64>()?))
        }
        None => None,
    };
    let opts = server::Options {
        vendor,
        read_only_keys: if args.read_only { keys.clone() } else { Vec::new() },
        keys,
        per_minute: window.map(|(n, _)| n).or(args.per_minute),
        window_secs: window.map_or(args.window_secs, |(_, s)| s),
        limit_headers: window.is_some(),
        json: args.json,
        ..server::Options::default()
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let url = format!("http://{}{}", listener.local_addr()?, vendor.path());
    println!("{url}");
    std::io::stdout().flush()?;
    eprintln!("example MCP server ({}) listening on {url}; Ctrl-C stops it", args.vendor);
    let ct = CancellationToken::new();
    let stop = ct.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let mut router = server::router(opts, ct.clone());
    if args.record.is_some() || args.first_429 {
        router = record::Recorder::open(args.record.as_deref(), args.first_429)?.wrap(router);
    }
    server::serve(listener, router, ct).await;
    Ok(())
}
