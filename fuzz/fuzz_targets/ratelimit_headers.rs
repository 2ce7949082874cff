//! Rate-limit header parsing on arbitrary values: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::retry::{quota_spent, server_wait};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

const NAMES: &[&str] =
    &["retry-after", "ratelimit", "x-ratelimit-reset", "x-ratelimit-reset-after", "x-ratelimit-remaining", "date"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (i, part) in data.split(|b| *b == 0).enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), v);
        }
    }
    let now = std::time::SystemTime::now();
    let _ = server_wait(&headers, now);
    let _ = quota_spent(&headers, now);
});
