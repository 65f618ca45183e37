//! `harmony_stream`: see `harmony_filters::fuzz_targets::harmony_stream` for the properties asserted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harmony_filters::fuzz_targets::harmony_stream(data));
