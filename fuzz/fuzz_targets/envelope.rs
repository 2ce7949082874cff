//! The JSON-RPC envelope, the id sniffer and line flattening on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::envelope::{Envelope, flatten_lines, sniff_id};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse(data) {
        let _ = env.kind();
        let _ = env.id_key();
        let _ = env.params();
    }
    let _ = sniff_id(data);
    let mut copy = data.to_vec();
    flatten_lines(&mut copy);
    assert!(!copy.contains(&b'\n') && !copy.contains(&b'\r'));
    // Flattening keeps valid JSON valid (it is only applied to valid JSON).
    if serde_json_valid(data) {
        assert!(serde_json_valid(&copy));
    }
});

fn serde_json_valid(b: &[u8]) -> bool {
    Envelope::parse(b).is_ok()
}
