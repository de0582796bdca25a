//! Fuzz target `keytab`: see `fuzz_targets::fuzz_keytab`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_keytab(data));
