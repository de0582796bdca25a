//! Fuzz target `www_authenticate`: see `fuzz_targets::fuzz_www_authenticate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_www_authenticate(data));
