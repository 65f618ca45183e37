//! Issue: tool calls and reasoning that IDE agents accept. (Every header variant in every
//! mode, streamed and not, is `core::every_fixture_in_every_mode_through_the_server`.)

use serde_json::{json, Value};

use crate::common::*;

fn env_with_bridge(bridge: &str) -> Env {
    Env::with_config(|mock| {
        one_pipeline(
            mock,
            "",
            &format!(r#"{{ type = "history-clean" }}, {{ type = "harmony-parse" }}, {{ type = "tool-bridge", {bridge} }}, {{ type = "sse-encode" }}"#),
        )
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

/// History llama.cpp's template answers 500 to (the mock refuses it the same way): a tool
/// turn with content beside reasoning, arguments that are empty or not JSON, a tool result
/// whose call is not in the conversation. Through `ide-tools` it is repaired and answered.
#[test]
fn histories_llama_cpp_refuses_are_repaired_before_they_go_upstream() {
    let env = Env::start(""); // its own mock: last_request must be this test's
    let call = |id: &str, args: &str| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": args}});
    let body = json!({"model": "ide-gpt-oss", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "tool", "tool_call_id": "call_lost", "content": "from an earlier session"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.", "tool_calls": [call("call_a", ""), call("call_b", "{\"city\":\"Oslo\"}commentary<|message|>x")]},
        {"role": "tool", "tool_call_id": "call_a", "content": "7 C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "8 C"},
        {"role": "user", "content": "hi"}
    ]});
    // Straight to the mock: the 500 a user of llama.cpp gets.
    assert_eq!(post(&format!("{}/v1/chat/completions", env.mock.url), &body).status, 500);
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = env.mock_stats()["last_request"]["messages"].clone();
    assert_eq!(sent[1]["role"], "user", "the orphan tool result: {}", sent[1]);
    assert_eq!(sent[2]["reasoning_content"], "Need the tool.\n\nChecking.");
    assert!(sent[2]["content"].is_null());
    assert_eq!(sent[2]["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(sent[2]["tool_calls"][1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
}

/// With `server.api_keys`, reasoning memory is scoped by key: a turn sent back under another
/// key gets nothing, under its own key it gets its reasoning back.
#[test]
fn reasoning_memory_gives_a_key_only_its_own_reasoning_back() {
    let env = Env::start("api_keys = [\"alice-key\", \"bob-key\"]");
    let ask = |key: &str, body: &Value| send(client().post(env.url("/v1/chat/completions")).bearer_auth(key).json(body));
    let first = ask("alice-key", &chat_body("ide-gpt-oss", false, "scenario:weather"));
    let msg = first.json()["choices"][0]["message"].clone();
    let id = msg["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    // The agent drops the reasoning, as most do.
    let turn = json!({"model": "ide-gpt-oss", "messages": [
        {"role": "user", "content": "scenario:weather"},
        {"role": "assistant", "content": null, "tool_calls": msg["tool_calls"]},
        {"role": "tool", "tool_call_id": id, "content": "7 C"}
    ]});
    assert_eq!(ask("bob-key", &turn).status, 200);
    assert!(env.mock_stats()["last_request"]["messages"][1].get("reasoning_content").is_none(), "bob got alice's reasoning");
    assert_eq!(ask("alice-key", &turn).status, 200);
    assert_eq!(env.mock_stats()["last_request"]["messages"][1]["reasoning_content"], "Need the weather tool for Paris.");
}

/// Issue 21: `tool-bridge` held a call's arguments until their JSON value was complete, so a
/// call written for longer than `no_final_timeout` showed the watchdog no output: the client
/// got the tool's name, no arguments, and `length`. Arguments now stream as the model writes
/// them (and count as output): a call that takes twice the timeout arrives whole, in pieces.
#[test]
fn a_tool_call_written_for_twice_the_watchdog_timeout_reaches_the_client_whole_in_pieces() {
    let env = Env::with_config(|mock| {
        one_pipeline(
            mock,
            "read_timeout = \"5s\"",
            r#"{ type = "harmony-parse" }, { type = "tool-bridge", mode = "openai_tool_calls" }, { type = "watchdog", no_final_timeout = "1s" }, { type = "sse-encode" }"#,
        )
    });
    let content: String = (0..20).map(|i| format!("line {i} of the file ")).collect();
    let args = json!({"path": "long.txt", "content": content}).to_string();
    // 2.5 s of arguments at 100 ms per piece (the mock sends one word per delta).
    let mut deltas = vec![json!("<|channel|>commentary to=functions.write_file <|constrain|>json<|message|>")];
    let pieces: Vec<String> = args.split_inclusive(' ').map(str::to_owned).collect();
    assert!(pieces.len() >= 25, "{}", pieces.len());
    deltas.extend(pieces.iter().map(|p| json!(p)));
    deltas.push(json!("<|call|>"));
    let body = chat_body("m", true, &script(json!({"deltas": deltas, "delay_ms": 100})));
    let r = post(&env.url("/v1/chat/completions"), &body);
    let a = r.assemble(true);
    assert_eq!(a.finish, "tool_calls", "{}", r.text());
    assert_eq!(a.tool_calls.len(), 1);
    assert_eq!(a.tool_calls[0].2, args);
    let arg_chunks = r.text().matches("\"function\":{\"arguments\":").count();
    assert!(arg_chunks >= 20, "arguments came in {arg_chunks} pieces: {}", r.text());
}
