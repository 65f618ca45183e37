//! `messages_request`: see `harmony_filters::fuzz_targets::messages_request` for the properties asserted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harmony_filters::fuzz_targets::messages_request(data));
