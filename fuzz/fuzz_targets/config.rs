//! `config`: arbitrary text as proxy.toml; see `harmony_proxy::config::load::fuzz_load`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| harmony_proxy::config::load::fuzz_load(&String::from_utf8_lossy(data)));
