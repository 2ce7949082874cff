//! The stdin line decoder: any bytes, in any chunking, never panic and never yield a line
//! longer than the limit or containing a newline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_sidecar::stdio::{Frame, LineReader};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let max = 64 + usize::from(data.first().copied().unwrap_or(0));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let (mut tx, rx) = tokio::io::duplex(256);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in input.chunks(7) {
                let _ = tx.write_all(chunk).await;
            }
        });
        let mut reader = LineReader::new(rx, max);
        while let Ok(Some(frame)) = reader.next_frame().await {
            if let Frame::Line(line) = frame {
                assert!(line.len() <= max && !line.contains(&b'\n'));
            }
        }
        let _ = writer.await;
    });
});
