//! Issue: the controls agents send that gpt-oss servers do not honour, and the errors agents
//! act on. Each test drives the real binary against the mock and asserts what the client of
//! each API receives.

use serde_json::{json, Value};

use crate::common::*;

const LLAMA_OVERFLOW: &str = "the request exceeds the available context size, try increasing it";

/// llama-server's refusal of a prompt longer than its context (`-c 4096`, 5000 tokens).
fn llama_overflow() -> Value {
    json!({"error": {"code": 400, "message": LLAMA_OVERFLOW, "type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}})
}

/// The user text that makes the mock refuse with `body` (HTTP 400) before any byte.
fn refused_with(body: Value) -> String {
    script(json!({"text": "unused", "faults": [{"status": 400, "body": body}]}))
}

/// The user text that makes the mock break off after two pieces with the in-band `error`.
fn broken_with(error: Value) -> String {
    script(json!({"text": "<|channel|>final<|message|>Partial answer here.", "faults": [{"error_after": 2, "error": error}]}))
}

fn responses_body(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-oss", "stream": stream, "input": user})
}

fn messages_body(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-oss", "stream": stream, "max_tokens": 512, "messages": [{"role": "user", "content": user}]})
}

/// The `data:` JSON of every SSE event in `body`.
fn events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect()
}

#[test]
fn a_prompt_too_long_for_llama_server_is_context_length_exceeded_on_chat_streamed_or_not() {
    let env = shared();
    for stream in [false, true] {
        let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", stream, &refused_with(llama_overflow())));
        assert_eq!(r.status, 400, "stream={stream}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["param"].as_str()),
            (Some("invalid_request_error"), Some("context_length_exceeded"), Some("messages"))
        );
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("maximum context length is 4096 tokens") && msg.contains("5000 tokens"), "{msg}");
    }
}

#[test]
fn a_prompt_too_long_is_prompt_is_too_long_on_messages_streamed_or_not() {
    let env = shared();
    for stream in [false, true] {
        let r = post(&env.url("/v1/messages"), &messages_body(&refused_with(llama_overflow()), stream));
        assert_eq!(r.status, 400, "stream={stream}: {}", r.text());
        assert_eq!(r.json(), json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 5000 tokens > 4096 maximum"}}));
    }
}

#[test]
fn a_prompt_too_long_is_response_failed_with_context_length_exceeded_when_streamed_and_a_400_when_not() {
    let env = shared();
    let r = post(&env.url("/v1/responses"), &responses_body(&refused_with(llama_overflow()), true));
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r.body);
    let types: Vec<&str> = evs.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["response.created", "response.in_progress", "response.failed"], "{}", r.text());
    let failed = &evs[2]["response"];
    assert_eq!((failed["status"].as_str(), failed["error"]["code"].as_str()), (Some("failed"), Some("context_length_exceeded")));

    let r = post(&env.url("/v1/responses"), &responses_body(&refused_with(llama_overflow()), false));
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("context_length_exceeded"), Some("input")));
}

#[test]
fn vllms_maximum_context_length_refusal_is_recognised_with_its_numbers() {
    let env = shared();
    let vllm = json!({"error": {"message": "This model's maximum context length is 2048 tokens. However, your request has 3012 input tokens. Please reduce the length of the input messages.", "type": "BadRequestError", "param": null, "code": 400}});
    let r = post(&env.url("/v1/messages"), &messages_body(&refused_with(vllm.clone()), false));
    assert_eq!(r.json()["error"]["message"], "prompt is too long: 3012 tokens > 2048 maximum");
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", false, &refused_with(vllm)));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
}

#[test]
fn other_refusals_still_pass_through_as_the_server_said_them() {
    let env = shared();
    let other = json!({"error": {"message": "The model `claude-x` does not exist.", "type": "NotFoundError", "param": null, "code": 404}});
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", false, &script(json!({"text": "x", "faults": [{"status": 404, "body": other}]}))));
    assert_eq!((r.status, r.json()), (404, other));
}

#[test]
fn an_overflow_the_server_says_after_the_stream_began_is_each_apis_error_event() {
    let env = shared();
    let overflow = llama_overflow()["error"].clone();
    // Chat: an error chunk with the canonical code, then [DONE].
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", true, &broken_with(overflow.clone())));
    let text = r.text();
    let err = events(&r.body).into_iter().find(|e| e.get("error").is_some()).unwrap_or_else(|| panic!("no error event: {text}"));
    assert_eq!(err["error"]["code"], "context_length_exceeded", "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // Responses: response.failed with the code Codex stops on.
    let r = post(&env.url("/v1/responses"), &responses_body(&broken_with(overflow.clone()), true));
    let last = events(&r.body).pop().unwrap();
    assert_eq!((last["type"].as_str(), last["response"]["error"]["code"].as_str()), (Some("response.failed"), Some("context_length_exceeded")), "{}", r.text());
    // Messages: an `error` event in Anthropic's words.
    let r = post(&env.url("/v1/messages"), &messages_body(&broken_with(overflow), true));
    let last = events(&r.body).pop().unwrap();
    assert_eq!(
        last,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 5000 tokens > 4096 maximum"}}),
        "{}",
        r.text()
    );
}

/// A proxy whose routes rename Claude Code's model names and set a default effort.
fn renaming() -> Env {
    Env::with_config(|mock| {
        format!(
            r#"
[upstreams.default]
url = "{mock}/v1"
[[routes]]
path = "/v1/messages"
models = ["claude-*", "sonnet"]
upstream = "default"
pipeline = "ide-tools"
upstream_model = "gpt-oss-20b"
reasoning_effort = "low"
[[routes]]
path = "/v1/chat/completions"
models = ["gpt-oss-high"]
upstream = "default"
pipeline = "ide-tools"
upstream_model = "gpt-oss-20b"
reasoning_effort = "high"
[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "harmony"
"#
        )
    })
}

#[test]
fn a_route_sends_its_upstream_model_and_the_client_still_sees_its_own_name() {
    let env = renaming();
    let r = post(&env.url("/v1/messages"), &json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "claude-sonnet-4-5-20250929");
    let sent = &env.mock_stats()["last_request"];
    assert_eq!(sent["model"], "gpt-oss-20b");
}

#[test]
fn a_routes_reasoning_effort_reaches_the_server_in_both_fields_unless_the_request_says_one() {
    let env = renaming();
    post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss-high", false, "hi"));
    let sent = env.mock_stats()["last_request"].clone();
    assert_eq!((sent["reasoning_effort"].as_str(), sent["chat_template_kwargs"]["reasoning_effort"].as_str()), (Some("high"), Some("high")));
    // The request's effort wins; a client's own template argument is kept as it sent it.
    let mut body = chat_body("gpt-oss-high", false, "hi");
    body["reasoning_effort"] = json!("low");
    body["chat_template_kwargs"] = json!({"reasoning_effort": "medium", "x": 1});
    post(&env.url("/v1/chat/completions"), &body);
    let sent = env.mock_stats()["last_request"].clone();
    assert_eq!(sent["reasoning_effort"], "low");
    assert_eq!(sent["chat_template_kwargs"], json!({"reasoning_effort": "medium", "x": 1}));
    // The route's default fills in when a Messages request says no effort.
    post(&env.url("/v1/messages"), &json!({"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(env.mock_stats()["last_request"]["reasoning_effort"], "low");
    // Messages' thinking budget maps to an effort (under 4096 low, under 16384 medium, else
    // high), which wins over the route's; `output_config.effort` wins over the budget. The
    // exact alias `sonnet` is renamed like the glob.
    for (thinking, effort, want) in [
        (json!({"type": "enabled", "budget_tokens": 1024}), None, "low"),
        (json!({"type": "enabled", "budget_tokens": 8000}), None, "medium"),
        (json!({"type": "enabled", "budget_tokens": 20000}), None, "high"),
        (json!({"type": "enabled", "budget_tokens": 20000}), Some("medium"), "medium"),
    ] {
        let mut body = json!({"model": "sonnet", "max_tokens": 30000, "thinking": thinking, "messages": [{"role": "user", "content": "hi"}]});
        if let Some(e) = effort {
            body["output_config"] = json!({ "effort": e });
        }
        let r = post(&env.url("/v1/messages"), &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = env.mock_stats()["last_request"].clone();
        assert_eq!(
            (sent["reasoning_effort"].as_str(), sent["chat_template_kwargs"]["reasoning_effort"].as_str(), sent["model"].as_str()),
            (Some(want), Some(want), Some("gpt-oss-20b")),
            "{thinking} {effort:?}: {sent}"
        );
    }
    // A route without one sends none.
    post(&env.url("/v1/chat/completions"), &chat_body("other", false, "hi"));
    let sent = env.mock_stats()["last_request"].clone();
    assert!(sent.get("reasoning_effort").is_none() && sent.get("chat_template_kwargs").is_none(), "{sent}");
}

#[test]
fn models_lists_the_upstreams_models_and_the_names_routes_serve_in_either_apis_shape() {
    let env = renaming();
    let r = send(client().get(env.url("/v1/models")));
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<String> = r.json()["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["gpt-oss-20b", "sonnet", "gpt-oss-high"], "globs are not names");
    assert_eq!(r.json()["object"], "list");
    let r = send(client().get(env.url("/v1/models")).header("anthropic-version", "2023-06-01"));
    let v = r.json();
    assert_eq!((v["has_more"].as_bool(), v["first_id"].as_str(), v["last_id"].as_str()), (Some(false), Some("gpt-oss-20b"), Some("gpt-oss-high")));
    assert_eq!(v["data"][1], json!({"type": "model", "id": "sonnet", "display_name": "sonnet", "created_at": "1970-01-01T00:00:00Z"}));
}

#[test]
fn models_still_lists_the_routes_names_when_the_upstream_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!("[upstreams.default]\nurl = \"http://127.0.0.1:{port}/v1\"\nconnect_timeout = \"1s\"\n[[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"mine\"]\nupstream = \"default\"\npipeline = \"harmony\"\n");
    std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
    let proxy = spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let r = send(client().get(format!("{}/v1/models", proxy.url)));
    assert_eq!((r.status, r.json()["data"][0]["id"].as_str()), (200, Some("mine")), "{}", r.text());
}

#[test]
fn a_routes_reasoning_effort_must_be_one_gpt_oss_knows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[upstreams.default]\nurl = \"http://127.0.0.1:9/v1\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"harmony\"\nreasoning_effort = \"max\"\nupstream_model = \" \"\n";
    std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
    let (ok, out) = check(&["--config", "proxy.toml"], dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("routes[0]: reasoning_effort: \"max\" is not low, medium or high"), "{out}");
    assert!(out.contains("routes[0]: upstream_model: must not be empty"), "{out}");
}

/// vLLM with `tool_choice` required or named: raw Harmony leaks into `content` (random
/// weights), or a parsed call ends `finish_reason: stop`. Through `ide-tools` either is a
/// call, and the answer ends `tool_calls`.
#[test]
fn a_call_a_server_leaks_or_ends_with_stop_is_still_a_call_with_finish_tool_calls() {
    let env = shared();
    let tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let leaked = json!({"text": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}", "finish": "stop"});
    let parsed = json!({"deltas": [{"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}], "finish": "stop"});
    for (what, s) in [("leaked as content", leaked), ("parsed, ending stop", parsed)] {
        for (choice, stream) in [(json!("required"), true), (json!({"type": "function", "function": {"name": "get_weather"}}), false)] {
            let mut body = chat_body("ide-gpt-oss", stream, &script(s.clone()));
            body["tools"] = tools.clone();
            body["tool_choice"] = choice;
            let r = post(&env.url("/v1/chat/completions"), &body);
            let a = r.assemble(stream);
            assert_eq!((a.tool_calls.len(), a.finish.as_str(), a.content.as_str()), (1, "tool_calls", ""), "{what}, stream={stream}: {}", r.text());
            assert_eq!((a.tool_calls[0].1.as_str(), a.tool_calls[0].2.as_str()), ("get_weather", "{\"city\":\"Paris\"}"), "{what}");
        }
    }
}

/// An upstream that broke before anything reached the client is retried; a retry the server
/// refuses for the prompt's length is still said as each API says an overflow.
#[test]
fn an_overflow_on_a_retry_after_the_stream_began_is_still_the_apis_context_error() {
    let env = shared();
    let s =
        |k: &str| script(json!({"text": "<|channel|>final<|message|>Hi.", "key": k, "faults": [{"cut_after": 0}, {"status": 400, "body": llama_overflow()}]}));
    let k = format!("k{}", fastrand::u64(..));
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", true, &s(&k)));
    let err = events(&r.body).into_iter().find(|e| e.get("error").is_some()).unwrap_or_else(|| panic!("{}", r.text()));
    assert_eq!(err["error"]["code"], "context_length_exceeded", "{}", r.text());
    let k = format!("k{}", fastrand::u64(..));
    let r = post(&env.url("/v1/messages"), &messages_body(&s(&k), true));
    assert_eq!(events(&r.body).pop().unwrap()["error"]["message"], "prompt is too long: 5000 tokens > 4096 maximum", "{}", r.text());
}

/// Older llama.cpp builds refuse a prompt too long for the context with a 500: still the
/// client's to shorten, said as its API says it.
#[test]
fn an_overflow_said_with_a_500_is_still_each_apis_context_error() {
    let env = shared();
    let body = json!({"error": {"code": 500, "message": "the request exceeds the available context size. try increasing the context size or enable context shift", "type": "server_error"}});
    let s = || {
        script(
            json!({"text": "x", "faults": [{"status": 500, "body": body.clone()}, {"status": 500, "body": body.clone()}, {"status": 500, "body": body.clone()}, {"status": 500, "body": body.clone()}]}),
        )
    };
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", false, &s()));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{}", r.text());
    let r = post(&env.url("/v1/messages"), &messages_body(&s(), true));
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{}", r.text());
    let r = post(&env.url("/v1/responses"), &responses_body(&s(), true));
    assert_eq!(events(&r.body).pop().unwrap()["response"]["error"]["code"], "context_length_exceeded", "{}", r.text());
}
