//! Fuzz target `ens_stream`: see `fuzz_targets::fuzz_ens_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_ens_stream(data));
