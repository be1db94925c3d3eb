//! Frame decoding must never panic, whatever bytes arrive, and a decoded frame re-encodes.
#![no_main]

use cairn_sync::wire::{self, FrameReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::default();
    reader.push(data);
    while let Ok(Some(frame)) = reader.next_frame() {
        let bytes = wire::encode(&frame);
        let mut again = FrameReader::default();
        again.push(&bytes);
        assert_eq!(again.next_frame().ok().flatten(), Some(frame));
    }
});
