//! Fuzz target `seg_properties`: see `fuzz_targets::fuzz_seg_properties`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::fuzz_seg_properties(data));
