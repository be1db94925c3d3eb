//! Reading a package's metadata out of any bytes an uploader sends must never panic, and
//! must stay within its bounds (the fuzzer's RSS limit catches a runaway allocation).
#![no_main]

use std::io::Cursor;

use cairn_store::package::{inspect, PackageFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let format = match pick % 4 {
        0 => PackageFormat::Wheel,
        1 => PackageFormat::Sdist,
        2 => PackageFormat::NpmTarball,
        _ => PackageFormat::Crate,
    };
    let _ = inspect(format, Cursor::new(file.to_vec()));
});
