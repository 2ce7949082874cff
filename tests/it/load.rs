//! The load test, scaled down for CI: 3,000 calls at C=64 with 1 % 429s and 1 % session
//! expiries injected. The full 100,000-message run is `cargo bench --bench load`.

use crate::load_driver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_answered_once_under_load_with_429s_and_expiring_sessions() {
    let r = load_driver::run(env!("CARGO_BIN_EXE_mcp-sidecar"), 3000, 64).await;
    assert_eq!(r.answered, 3000, "{r:?}");
    assert_eq!((r.lost, r.duplicated, r.errors), (0, 0, 0), "no loss, no duplicates, no errors: {r:?}");
    assert!(r.limited >= 25 && r.expired >= 25, "the faults were injected: {r:?}");
    assert!(r.sessions > r.expired, "each expiry led to a new session: {r:?}");
}
