//! Fuzz target `kdc_reply`: see `fuzz_targets::fuzz_kdc_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_kdc_reply(data));
