//! Every committed seed of the fuzz targets (crashes found included, as `seed-crash-*`)
//! runs as a regular test, so `cargo test` keeps them all as regression tests.

use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

#[test]
fn harmony_stream_seeds() {
    for (_, data) in seeds("harmony_stream") {
        harmony_filters::fuzz_targets::harmony_stream(&data);
    }
}

#[test]
fn sse_decode_seeds() {
    for (_, data) in seeds("sse_decode") {
        harmony_filters::fuzz_targets::sse_decode(&data);
    }
}

#[test]
fn request_seeds() {
    for (_, data) in seeds("request") {
        harmony_filters::fuzz_targets::request(&data);
    }
}

#[test]
fn responses_request_seeds() {
    for (_, data) in seeds("responses_request") {
        harmony_filters::fuzz_targets::responses_request(&data);
    }
}

#[test]
fn messages_request_seeds() {
    for (_, data) in seeds("messages_request") {
        harmony_filters::fuzz_targets::messages_request(&data);
    }
}
