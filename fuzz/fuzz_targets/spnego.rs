//! Fuzz target `spnego`: see `fuzz_targets::fuzz_spnego`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_spnego(data));
