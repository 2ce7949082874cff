//! Bounded SSE decoding of arbitrary bytes: never panics, never yields an event over the limit.
#![no_main]

use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::upstream::sse;

fuzz_target!(|data: &[u8]| {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        data.chunks(5).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut events = sse::decode(futures_util::stream::iter(chunks), 128);
        while let Some(Ok(event)) = events.next().await {
            assert!(event.data.as_deref().map_or(0, str::len) <= 128 * 2);
            let _ = sse::is_message(&event);
        }
    });
});
