//! `request`: see `harmony_filters::fuzz_targets::request` for the properties asserted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harmony_filters::fuzz_targets::request(data));
