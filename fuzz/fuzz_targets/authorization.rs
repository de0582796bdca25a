//! Fuzz target `authorization`: see `fuzz_targets::fuzz_authorization`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_authorization(data));
