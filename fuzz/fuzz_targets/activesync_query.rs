//! Fuzz target `activesync_query`: see `fuzz_targets::fuzz_activesync_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_activesync_query(data));
