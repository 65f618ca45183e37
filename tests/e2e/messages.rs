//! Issue 20: `POST /v1/messages` (Anthropic Messages: Claude Code), through the same
//! pipelines as chat. What a Messages client receives, streamed and not.

use harmony_filters::testing::{assemble_messages, message_view, Assembled};
use serde_json::{json, Value};

use crate::common::*;

fn messages(env: &Env, body: &Value) -> Reply {
    send(
        client()
            .post(env.url("/v1/messages?beta=true"))
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "interleaved-thinking-2025-05-14")
            .json(body),
    )
}

fn ask(user: &str) -> Value {
    json!({"model": "gpt-oss-20b", "max_tokens": 1000, "messages": [{"role": "user", "content": user}],
           "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]})
}

/// Posts `body` streamed and not; both must be well formed and say the same.
fn both(env: &Env, body: Value) -> Assembled {
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let r = messages(env, &streamed);
    assert_eq!(r.status, 200, "{}", r.text());
    let s = assemble_messages(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let r = messages(env, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = message_view(&r.json()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let strip = |a: &Assembled| Assembled {
        tool_calls: a.tool_calls.iter().map(|(_, n, args)| (String::new(), n.clone(), serde_json::from_str::<Value>(args).unwrap().to_string())).collect(),
        usage: None,
        ..a.clone()
    };
    assert_eq!(strip(&s), strip(&j), "streamed and whole differ");
    s
}

#[test]
fn a_config_without_a_messages_route_serves_it_with_thinking_text_and_tool_use_blocks() {
    let env = shared();
    let a = both(env, ask("scenario:hello"));
    assert_eq!(
        (a.reasoning.as_str(), a.content.as_str(), a.finish.as_str()),
        ("The user says hello. Reply briefly and warmly.", "Hello! How can I help you today?", "end_turn")
    );
    let a = both(env, ask("scenario:weather"));
    assert_eq!((a.reasoning.as_str(), a.content.as_str(), a.finish.as_str()), ("Need the weather tool for Paris.", "I'll check the weather.", "tool_use"));
    assert_eq!(a.tool_calls[0].1, "get_weather");
    assert_eq!(serde_json::from_str::<Value>(&a.tool_calls[0].2).unwrap(), json!({"city": "Paris", "unit": "celsius"}));
    let kinds: Vec<String> =
        messages(env, &ask("scenario:weather")).json()["content"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["thinking", "text", "tool_use"]);
}

#[test]
fn the_second_turn_reaches_the_model_with_the_call_the_result_and_the_signed_thinking() {
    let a = Env::start("reasoning_key = \"shared\"");
    let b = Env::start("reasoning_key = \"shared\""); // another replica: no reasoning memory of its own
    let first = messages(&a, &ask("scenario:weather")).json();
    let content = first["content"].as_array().unwrap();
    let (thinking, tool_use) = (&content[0], &content[2]);
    assert!(tool_use["id"].as_str().unwrap().starts_with("toolu_"));
    // Claude Code sends the thinking block back; here without its text, only the signature.
    let mut turn2 = ask("scenario:weather");
    turn2["messages"] = json!([
        {"role": "user", "content": "scenario:weather"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "", "signature": thinking["signature"]}, tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": [{"type": "text", "text": "18C"}]}]}
    ]);
    assert_eq!(messages(&b, &turn2).status, 200);
    let sent = b.mock_stats()["last_request"]["messages"].clone();
    assert_eq!(sent[1]["reasoning_content"], "Need the weather tool for Paris.", "{sent}");
    assert_eq!(sent[1]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\",\"unit\":\"celsius\"}");
    assert_eq!(sent[2], json!({"role": "tool", "tool_call_id": sent[1]["tool_calls"][0]["id"], "content": "18C"}));
    let r = messages(shared(), &turn2);
    assert_eq!(r.status, 200, "a signature from another key is ignored, never an error: {}", r.text());
}

#[test]
fn errors_are_anthropic_shaped_before_the_stream_and_an_error_event_after() {
    let env = Env::start("api_keys = [\"k1\"]");
    let no_key = send(client().post(env.url("/v1/messages")).json(&ask("hi")));
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.json()["type"], "error");
    assert_eq!(no_key.json()["error"]["type"], "authentication_error");
    let with_key = |body: &Value| send(client().post(env.url("/v1/messages")).header("x-api-key", "k1").json(body));
    assert_eq!(with_key(&ask("scenario:hello")).status, 200, "x-api-key is accepted like a Bearer key");
    let r = with_key(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!((r.status, r.json()["error"]["type"].clone()), (400, json!("invalid_request_error")));
    assert!(r.json()["error"]["message"].as_str().unwrap().starts_with("max_tokens"), "{}", r.text());
    let r = with_key(
        &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": ""}}]}]}),
    );
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("gpt-oss reads text only"), "{}", r.text());
    let r = with_key(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "wormhole"}]}]}));
    assert!(r.json()["error"]["message"].as_str().unwrap().starts_with("messages[0].content[0].type"), "{}", r.text());

    let mut broken = ask(&script(json!({"text": "<|channel|>final<|message|>Hello there friend", "faults": [{"error_after": 5}], "key": "messages-fail"})));
    broken["stream"] = true.into();
    let r = with_key(&broken);
    let a = assemble_messages(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    assert_eq!(a.finish, "error", "{}", r.text());
}

#[test]
fn count_tokens_is_the_exact_length_of_the_rendered_prompt() {
    let env = shared();
    let body = json!({"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "What is the weather in Oslo?"}], "system": "Be brief."});
    let r = send(client().post(env.url("/v1/messages/count_tokens")).json(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let n = r.json()["input_tokens"].as_u64().unwrap();
    let enc = harmony_filters::testing::encoding();
    let chat = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Oslo?"}]});
    assert_eq!(n as usize, harmony_filters::stages::harmony_render::prompt_tokens(&enc, &harmony_filters::api::chat::decode::conversation(chat)).unwrap());
    assert!(n > 20, "{n}");
}

#[test]
fn requests_are_counted_with_the_messages_label() {
    let env = Env::start("");
    messages(&env, &ask("scenario:hello"));
    let text = send(client().get(env.url("/metrics"))).text();
    assert!(text.lines().any(|l| l.starts_with("harmony_proxy_requests_total{") && l.contains("api=\"messages\"")), "{text}");
}
