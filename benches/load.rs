//! `cargo bench --bench load`: 100,000 `tools/call` messages through the real binary at C=64,
//! with 1 % 429s and 1 % session expiries injected by the server. Fails unless every call gets
//! exactly one answer; reports throughput and the proxy's RSS at start, peak and end.

#[path = "../tests/it/load_driver.rs"]
mod load_driver;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` runs bench targets once as a check: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let n = if quick { 2_000 } else { 100_000 };
    let r = load_driver::run(env!("CARGO_BIN_EXE_mcp-sidecar"), n, 64).await;
    eprintln!("mcp-sidecar load test: {n} calls at C=64, 1 % 429 and 1 % session expiry injected");
    eprintln!(
        "  answered / lost / duplicated / errors   {} / {} / {} / {}",
        r.answered, r.lost, r.duplicated, r.errors
    );
    eprintln!(
        "  429s injected / sessions expired        {} / {} (sessions started: {})",
        r.limited, r.expired, r.sessions
    );
    eprintln!(
        "  time, rate                              {:.1} s, {:.0} calls/s",
        r.elapsed.as_secs_f64(),
        n as f64 / r.elapsed.as_secs_f64()
    );
    eprintln!(
        "  proxy RSS start / peak / end            {:.1} / {:.1} / {:.1} MB",
        r.rss_start_kb as f64 / 1024.0,
        r.rss_peak_kb as f64 / 1024.0,
        r.rss_end_kb as f64 / 1024.0
    );
    assert!(r.answered == n && r.lost == 0 && r.duplicated == 0 && r.errors == 0, "{r:?}");
}
