//! Fuzz target `uem_json`: see `fuzz_targets::fuzz_uem_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_uem_json(data));
