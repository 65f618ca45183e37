//! What a token costs: a long llama.cpp-style stream (one token per SSE event) through the
//! whole response phase, against the SSE decoding alone (what a plain byte proxy that
//! understood SSE would pay). `cargo bench -p harmony-filters --bench pipeline`
//!
//! Prints CPU time per upstream token, and the memory an open stream holds.

use std::time::Instant;

use harmony_filters::testing::{llama_sse, pipeline, run_sse};
use harmony_filters::upstream::SseDecoder;
use harmony_filters::RequestMeta;

fn main() {
    let words: Vec<String> = (0..2000).map(|i| format!(" word{}", i % 97)).collect();
    let mut deltas: Vec<String> = vec!["<|channel|>".into(), "analysis".into(), "<|message|>".into()];
    deltas.extend(words[..500].iter().cloned());
    deltas.extend(["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>"].map(String::from));
    deltas.extend(words.iter().cloned());
    let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let body = llama_sse(&refs, "stop");
    let tokens = deltas.len() as f64;

    let p = pipeline(
        r#"[{ type = "harmony-parse" }, { type = "fallback" }, { type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content" }, { type = "watchdog" }, { type = "sse-encode" }]"#,
    );
    // Feed it in network-sized reads, as hyper would.
    let parts: Vec<&[u8]> = body.chunks(1400).collect();
    let meta = RequestMeta::new("bench", true);
    for _ in 0..3 {
        run_sse(&p, &meta, &parts); // warm up
    }
    let rounds = 20;
    let t = Instant::now();
    let mut out_bytes = 0;
    for _ in 0..rounds {
        out_bytes += run_sse(&p, &meta, &parts).len();
    }
    let full = t.elapsed().as_secs_f64() / (rounds as f64 * tokens);

    let t = Instant::now();
    for _ in 0..rounds {
        let mut d = SseDecoder::new();
        let mut evs = Vec::new();
        for part in &parts {
            d.push(part, &mut evs);
            evs.clear();
        }
        d.finish(&mut evs);
    }
    let decode = t.elapsed().as_secs_f64() / (rounds as f64 * tokens);

    println!("stream: {} upstream tokens, {} bytes in, {} bytes out per run", tokens, body.len(), out_bytes / rounds);
    println!("full response phase: {:.2} µs per token ({:.0} tokens/s on one core)", full * 1e6, 1.0 / full);
    println!("SSE decoding alone:  {:.2} µs per token", decode * 1e6);
    println!("(the Python proxy this replaces: ~80 µs per token)");

    // Memory per open stream: many chains mid-answer at once, resident set before and after.
    let n = 2000;
    let before = rss_kib();
    let mut open = Vec::with_capacity(n);
    let head = llama_sse(&refs[..600], "stop");
    let head = &head[..head.len() - 100]; // mid-stream: no finish, no [DONE]
    for _ in 0..n {
        let mut chain = p.new_chain(&meta);
        let mut d = SseDecoder::new();
        let (mut evs, mut out) = (Vec::new(), Vec::new());
        // As the server does: network-sized reads, each read's frames written before the next.
        for part in head.chunks(1400) {
            d.push(part, &mut evs);
            chain.push_all(&mut evs, &mut out);
            out.clear();
        }
        open.push((chain, d));
    }
    if let (Some(b), Some(a)) = (before, rss_kib()) {
        println!("open streams: {n} mid-answer (600 tokens in): {:.1} KiB each", (a.saturating_sub(b)) as f64 / n as f64);
    }
    drop(open);
}

/// Resident set size from /proc (Linux), in KiB.
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
