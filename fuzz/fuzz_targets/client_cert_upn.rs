//! Fuzz target `client_cert_upn`: see `fuzz_targets::fuzz_client_cert_upn`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_client_cert_upn(data));
