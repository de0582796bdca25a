//! Fuzz target `ews_operation`: see `fuzz_targets::fuzz_ews_operation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_ews_operation(data));
