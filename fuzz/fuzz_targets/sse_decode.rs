//! `sse_decode`: see `harmony_filters::fuzz_targets::sse_decode` for the properties asserted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harmony_filters::fuzz_targets::sse_decode(data));
