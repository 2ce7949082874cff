//! A server of the stateless era only (2026-07-28), on 127.0.0.1: the one the integration tests
//! use (tests/it/eras.rs), as a program for the interop matrix (issue 20).
//!
//!   cargo run --example stateless_server -- [--record FILE] [--first-429]
//!
//! Prints its URL on stdout once it listens. Tools: `echo` (says what it saw of the request),
//! `ask` (one elicitation round), `all` (two rounds), `slow` (never answers; a progress event
//! first when asked for progress), `forever`, `breaks`.

#[path = "../example_server/record.rs"]
mod record;
mod server;

use std::io::Write;

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Write one JSON line per HTTP request to this file.
    #[arg(long, value_name = "FILE")]
    record: Option<std::path::PathBuf>,
    /// Answer the first POST with 429 and `Retry-After: 1`.
    #[arg(long)]
    first_429: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let recorder = record::Recorder::open(args.record.as_deref(), args.first_429)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let router = recorder.wrap(server::router());
    println!("{url}");
    std::io::stdout().flush()?;
    axum::serve(listener, router).await?;
    Ok(())
}
