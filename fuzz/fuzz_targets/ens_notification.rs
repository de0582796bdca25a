//! Fuzz target `ens_notification`: see `fuzz_targets::fuzz_ens_notification`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_ens_notification(data));
