//! Fuzz target `admin_api`: see `fuzz_targets::fuzz_admin_api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_admin_api(data));
