//! What rendering costs before the first byte goes upstream (`harmony-render`): an IDE
//! agent's conversation of about 32k tokens (tools, many tool-call turns with reasoning and
//! results), rendered cold (nothing cached) and when only the newest turn is new (every
//! earlier message's tokens cached by content, as from the previous turn).
//! `cargo bench -p harmony-filters --bench render`

use std::time::{Duration, Instant};

use harmony_filters::stages::harmony_render::{render_request, Effort, RenderCache};
use serde_json::{json, Value};

fn conversation(turns: usize) -> Value {
    let tool = |name: &str| {
        json!({"type": "function", "function": {"name": name, "description": format!("The {name} tool of an IDE agent: reads, writes and searches the workspace."),
        "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "workspace-relative path"}, "query": {"type": "string"}, "content": {"type": "string"}}, "required": ["path"]}}})
    };
    let tools: Vec<Value> = ["read_file", "write_file", "search", "list_dir", "run_tests", "apply_diff"].iter().map(|n| tool(n)).collect();
    let mut messages = vec![json!({"role": "system", "content": "You are a careful coding agent. ".repeat(40)})];
    messages.push(json!({"role": "user", "content": "Fix the failing test in the parser module and explain the change."}));
    for i in 0..turns {
        let file: String = (0..60).map(|l| format!("fn line_{i}_{l}(x: u32) -> u32 {{ x.wrapping_mul({l}) ^ {i} }}\n")).collect();
        messages.push(json!({"role": "assistant", "content": null, "reasoning_content": format!("Step {i}: I should look at the next file, then compare with the failing assertion. ").repeat(4),
            "tool_calls": [{"id": format!("call_{i}"), "type": "function", "function": {"name": "read_file", "arguments": format!("{{\"path\":\"src/mod_{i}.rs\"}}")}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": file}));
    }
    json!({"model": "gpt-oss-20b", "messages": messages, "tools": tools})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let enc = harmony_filters::vocab::encoding().expect("vocabulary");
    let chat = conversation(22);
    let body = harmony_filters::api::chat::decode::conversation(chat.clone());
    let tokens = render_request(&enc, &RenderCache::default(), &body, Effort::Medium, "2026-11-22").unwrap().len();
    // The previous turn: everything but the newest tool result.
    let mut previous = body.clone();
    previous.messages.pop();

    let cold: Vec<Duration> = (0..7)
        .map(|_| {
            let cache = RenderCache::default();
            let t = Instant::now();
            render_request(&enc, &cache, &body, Effort::Medium, "2026-11-22").unwrap();
            t.elapsed()
        })
        .collect();
    let warm: Vec<Duration> = (0..15)
        .map(|_| {
            let cache = RenderCache::default();
            render_request(&enc, &cache, &previous, Effort::Medium, "2026-11-22").unwrap();
            let t = Instant::now();
            render_request(&enc, &cache, &body, Effort::Medium, "2026-11-22").unwrap();
            t.elapsed()
        })
        .collect();
    println!("render: {tokens} prompt tokens ({} messages)", chat["messages"].as_array().unwrap().len());
    println!("  cold (nothing cached):        {:>8.2} ms   (target <= 60 ms)", median(cold).as_secs_f64() * 1e3);
    println!("  only the newest turn is new:  {:>8.2} ms   (target <= 5 ms)", median(warm).as_secs_f64() * 1e3);
}
