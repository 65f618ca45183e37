//! Issue: tool calls and reasoning that IDE agents accept. (Every header variant in every
//! mode, streamed and not, is `core::every_fixture_in_every_mode_through_the_server`.)

use serde_json::{json, Value};

use crate::common::*;

fn env_with_bridge(bridge: &str) -> Env {
    Env::with_config(|mock| {
        one_pipeline(mock, "", &format!(r#"{{ type = "history-clean" }}, {{ type = "harmony-parse" }}, {{ type = "tool-bridge", {bridge} }}, {{ type = "sse-encode" }}"#))
    })
}

#[test]
fn reasoning_in_the_field_the_client_reads() {
    for (field, other) in [("reasoning", "reasoning_content"), ("reasoning_content", "reasoning")] {
        let env = env_with_bridge(&format!("mode = \"openai_tool_calls\", reasoning = \"{field}\""));
        let r = post(&env.url("/v1/chat/completions"), &chat_body("m", true, "scenario:hello"));
        let text = r.text();
        assert!(text.contains(&format!("\"{field}\":\"The\"")), "{text}");
        assert!(!text.contains(&format!("\"{other}\"")), "{text}");
        assert_eq!(r.assemble(true).content, "Hello! How can I help you today?");
        let r = post(&env.url("/v1/chat/completions"), &chat_body("m", false, "scenario:hello"));
        let m = &r.json()["choices"][0]["message"];
        assert_eq!(m[field], "The user says hello. Reply briefly and warmly.", "{m}");
        assert!(m.get(other).is_none());
    }
}

#[test]
fn preambles_dropped_or_shown() {
    let env = env_with_bridge("mode = \"openai_tool_calls\", preambles = \"drop\"");
    let a = chat(&env, "m", true, "scenario:weather");
    assert_eq!((a.content.as_str(), a.tool_calls.len()), ("", 1));
    let env = env_with_bridge("mode = \"openai_tool_calls\", preambles = \"content\"");
    let a = chat(&env, "m", true, "scenario:weather");
    assert_eq!((a.content.as_str(), a.tool_calls.len()), ("I'll check the weather.", 1));
}

#[test]
fn echoed_harmony_in_history_is_reduced_to_the_answer() {
    let env = env_with_bridge("mode = \"openai_tool_calls\"");
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "<|channel|>analysis<|message|>Greet back.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!"},
            {"role": "assistant", "content": [{"type": "text", "text": "analysisThinking.assistantfinalSecond answer."}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "<|channel|> stays: tool output is data"},
            {"role": "assistant", "content": "A plain earlier answer."},
            {"role": "user", "content": "and now?"}
        ]
    });
    assert_eq!(post(&env.url("/v1/chat/completions"), &body).status, 200);
    let sent: Value = env.mock_stats()["last_request"]["messages"].clone();
    assert_eq!(sent[1]["content"], "Hello there!");
    // Stripped special tokens with their words kept (MLX-family servers): the answer only.
    assert_eq!(sent[2]["content"][0]["text"], "Second answer.");
    assert_eq!(sent[3]["tool_calls"][0]["id"], "call_1");
    assert_eq!(sent[4]["content"], "<|channel|> stays: tool output is data");
    assert_eq!(sent[5]["content"], "A plain earlier answer.");
}
