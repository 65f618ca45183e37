//! The logic of the fuzz targets in `fuzz/` (each target is a one-line call into here). The
//! regular test suite runs these on the committed seed corpus too, so every input in it —
//! crashes found included — stays a regression test.
//!
//! Each function asserts properties (it panics when one fails), not merely "no panic".

use std::sync::OnceLock;

use crate::event::Event;
use crate::pipeline::Compiled;
use crate::stage::RequestMeta;
use crate::testing::{assemble_json, assemble_sse, llama_sse, pipeline, run_sse};
use crate::upstream::SseDecoder;

fn pipelines() -> &'static [Compiled; 3] {
    static P: OnceLock<[Compiled; 3]> = OnceLock::new();
    P.get_or_init(|| {
        let chain = |bridge: &str| {
            pipeline(&format!(r#"[{{ type = "harmony-parse" }}, {{ type = "fallback" }}, {{ type = "tool-bridge", {bridge} }}, {{ type = "sse-encode" }}]"#))
        };
        [
            chain(r#"mode = "final_only""#),
            chain(r#"mode = "final_plus_tools_text", preambles = "content""#),
            chain(r#"mode = "openai_tool_calls", reasoning = "reasoning_content", preambles = "content""#),
        ]
    })
}

/// `harmony_stream`: bytes cut into deltas at every 0x00 (lossy UTF-8) go through
/// harmony-parse → fallback → tool-bridge → sse-encode in each mode, streamed and not; the
/// client gets well-formed output with no markup and exactly one `[DONE]`.
pub fn harmony_stream(data: &[u8]) {
    let deltas: Vec<String> = data.split(|&b| b == 0).map(|d| String::from_utf8_lossy(d).into_owned()).collect();
    let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let finish = if data.first().is_some_and(|b| b % 4 == 0) { "length" } else { "stop" };
    let body = llama_sse(&refs, finish);
    for p in pipelines() {
        for stream in [true, false] {
            let meta = RequestMeta::new("fuzz", stream);
            // Cut the body at a data-dependent byte too: chunking must not matter.
            let cut = data.len() * 7 % body.len().max(1);
            let out = run_sse(p, &meta, &[&body[..cut], &body[cut..]]);
            let r = if stream { assemble_sse(&out) } else { assemble_json(&out) };
            if let Err(e) = r {
                panic!("contract broken ({e}) for deltas {deltas:?}:\n{}", String::from_utf8_lossy(&out));
            }
        }
    }
}

/// `sse_decode`: arbitrary upstream bodies (broken framing, huge lines, invalid UTF-8,
/// partial events). Decoding never panics, and cutting the body anywhere yields the same
/// events as feeding it whole.
pub fn sse_decode(data: &[u8]) {
    let whole = {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        d.push(data, &mut out);
        d.finish(&mut out);
        out
    };
    for cut in [1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let cut = cut.min(data.len());
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        d.push(&data[..cut], &mut out);
        d.push(&data[cut..], &mut out);
        d.finish(&mut out);
        assert_eq!(whole, out, "cutting at {cut} changed the events");
    }
    // A stream ends at its first error: nothing follows it.
    if let Some(i) = whole.iter().position(|e| matches!(e, Event::Error(_))) {
        assert_eq!(i, whole.len() - 1, "events after an error: {whole:?}");
    }
}

/// `request`: arbitrary JSON bodies through the request stages. The stops afterwards hold
/// the client's string stops and the Harmony ones; no assistant message carries markup.
pub fn request(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let client_stops: Vec<String> = match v.get("stop") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let p = pipeline(r#"[{ type = "stop-injection", extra = ["X"] }, { type = "history-clean" }, { type = "sse-encode" }]"#);
    let (meta, cpu) = (RequestMeta::new("fuzz", true), crate::work::CpuPool::inline());
    let (up, ()) = crate::work::now(p.request_phase(&meta, crate::api::chat::decode::conversation(v), &cpu, |_| ())).expect("these stages never refuse");
    let v = up.body();
    if !v.is_object() {
        return;
    }
    let stops: Vec<&str> = v["stop"].as_array().expect("stop is a list").iter().filter_map(|s| s.as_str()).collect();
    for s in client_stops.iter().map(String::as_str).chain(["<|return|>", "<|call|>", "X"]) {
        assert!(stops.contains(&s), "stop {s:?} missing from {stops:?}");
    }
    let mut dedup = stops.clone();
    dedup.sort();
    dedup.dedup();
    assert!(
        dedup.len() == stops.len() || client_stops.len() != client_stops.iter().collect::<std::collections::HashSet<_>>().len(),
        "stops duplicated: {stops:?}"
    );
    for m in v.get("messages").and_then(|m| m.as_array()).into_iter().flatten() {
        if m.get("role").and_then(|r| r.as_str()) == Some("assistant") {
            if let Some(c) = m.get("content").and_then(|c| c.as_str()) {
                assert!(!crate::markup::has_markup(c), "markup left in history: {c:?}");
            }
        }
    }
}

/// `responses_request`: arbitrary JSON as a Responses request. Decoding never panics; a
/// refusal is a 400 or 404 that names a field; what is accepted is a chat request the stages
/// can work on (a model, a list of messages with known roles, string arguments and tool
/// results, function tools only) and its stream is rendered well formed, ending
/// in exactly one terminal event.
pub fn responses_request(data: &[u8]) {
    use serde_json::Value;
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    match crate::work::now(crate::api::ClientApi::Responses.decode(v, &crate::api::EdgeEnv::standalone())) {
        Err(e) => {
            assert!(matches!(e.status, 400 | 404), "status {} for {}", e.status, e.message);
            assert!(!e.message.is_empty());
        }
        Ok(d) => {
            assert!(!d.model.is_empty());
            let chat = d.chat();
            let msgs = chat["messages"].as_array().expect("messages is a list");
            let mut calls = std::collections::HashSet::new();
            for m in msgs {
                let role = m["role"].as_str().expect("a role");
                assert!(["system", "user", "assistant", "tool"].contains(&role), "role {role}");
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    calls.insert(c["id"].as_str().expect("call id").to_owned());
                    assert!(c["function"]["arguments"].is_string());
                }
                if role == "tool" {
                    assert!(m["tool_call_id"].is_string() && m["content"].is_string());
                }
            }
            for t in chat["tools"].as_array().into_iter().flatten() {
                assert_eq!(t["type"], "function");
                assert!(t["function"]["name"].is_string() && t["function"]["parameters"].is_object());
            }
            let meta = crate::api::ClientRequest { meta: RequestMeta::new(&d.model, true), api: d.ctx };
            let p = &pipelines()[2];
            let out = run_sse(p, &meta, &[&llama_sse(&["<|channel|>final<|message|>ok"], "stop")]);
            crate::testing::assemble_responses(&out).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// `messages_request`: arbitrary JSON objects as a Messages request (the server refuses
/// anything else before decoding). Decoding never panics; a refusal is a 400 that names a
/// field; what is accepted is a chat request the stages can work on
/// (a model, `max_tokens`, messages with known roles, string arguments, function tools only),
/// and its stream is rendered well formed, ending in `message_stop`.
pub fn messages_request(data: &[u8]) {
    use serde_json::Value;
    // Found by the fuzzer: `-2` is refused with no field to name; the server answers a body
    // that is not an object before any decoder sees it.
    let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) else { return };
    match crate::work::now(crate::api::ClientApi::Messages.decode(v, &crate::api::EdgeEnv::standalone())) {
        Err(e) => {
            assert_eq!(e.status, 400, "{}", e.message);
            assert!(e.param.is_some(), "a refusal names its field: {}", e.message);
        }
        Ok(d) => {
            let chat = d.chat();
            assert!(!d.model.is_empty() && chat["max_tokens"].is_u64());
            for m in chat["messages"].as_array().expect("messages is a list") {
                let role = m["role"].as_str().expect("a role");
                assert!(["system", "user", "assistant", "tool"].contains(&role), "role {role}");
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    assert!(c["id"].is_string() && c["function"]["arguments"].is_string());
                }
            }
            for t in chat["tools"].as_array().into_iter().flatten() {
                assert!(t["function"]["name"].is_string() && t["function"]["parameters"].is_object());
            }
            let meta = crate::api::ClientRequest { meta: RequestMeta::new(&d.model, true), api: d.ctx };
            let out = run_sse(&pipelines()[2], &meta, &[&llama_sse(&["<|channel|>final<|message|>ok"], "stop")]);
            crate::testing::assemble_messages(&out).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
