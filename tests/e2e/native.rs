//! Issue: harmony-render, the proxy speaks Harmony both ways. The mock answers the raw
//! completion endpoints (`/v1/completions`: text with special tokens; `/completion`: token
//! ids) and keeps the prompt the proxy rendered, decoded, in `last_request.prompt_text`.

use serde_json::{json, Value};

use crate::common::*;

/// `native` (endpoint `completions`) for `native-*` models; the same with endpoint `llama`
/// for `nllama-*`.
fn native_env() -> Env {
    let stages = r#"
  { type = "history-clean" },
  { type = "harmony-render", endpoint = "llama", reasoning_effort = "low" },
  { type = "harmony-parse" },
  { type = "reasoning-memory" },
  { type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content", preambles = "content" },
  { type = "sse-encode" },
"#;
    Env::with_config(|mock| format!("[upstreams.default]\nurl = \"{mock}/v1\"\nread_timeout = \"5s\"\n{}", native_routes(stages)))
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

#[test]
fn both_endpoints_give_the_exact_answer_streamed_and_not() {
    let env = native_env();
    for model in ["native-gpt-oss", "nllama-gpt-oss"] {
        for stream in [true, false] {
            let mut body = chat_body(model, stream, "scenario:weather");
            body["tools"] = tools();
            let r = post(&env.url("/v1/chat/completions"), &body);
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            let a = r.assemble(stream);
            assert_eq!(a.reasoning, "Need the weather tool for Paris.", "{model} stream={stream}");
            assert_eq!(a.content, "I'll check the weather.", "{model} stream={stream}: the preamble, known as one");
            assert_eq!(a.tool_calls.len(), 1);
            assert_eq!((a.tool_calls[0].1.as_str(), a.tool_calls[0].2.as_str()), ("get_weather", "{\"city\":\"Paris\",\"unit\":\"celsius\"}"));
            assert_eq!(a.finish, "tool_calls");
            let sent = env.mock_stats()["last_request"].clone();
            let prompt = sent["prompt_text"].as_str().unwrap();
            assert!(prompt.starts_with("<|start|>system<|message|>") && prompt.ends_with("<|start|>assistant"), "{prompt}");
            assert!(prompt.contains("type get_weather = "), "tools rendered: {prompt}");
            if model.starts_with("nllama") {
                assert_eq!(sent["return_tokens"], true);
                assert!(prompt.contains("Reasoning: low"), "{prompt}");
            } else {
                assert_eq!(sent["skip_special_tokens"], false, "vLLM keeps special tokens only when asked");
            }
            let hello = post(&env.url("/v1/chat/completions"), &chat_body(model, stream, "hi")).assemble(stream);
            assert_eq!((hello.content.as_str(), hello.finish.as_str()), ("Hello! How can I help you today?", "stop"));
        }
    }
}

/// The chat endpoint of llama.cpp drops a tool call when the request declares no `tools`;
/// rendered by the proxy, the call the model makes arrives all the same.
#[test]
fn a_tool_call_arrives_without_tools_declared() {
    let env = native_env();
    let a = post(&env.url("/v1/chat/completions"), &chat_body("native-x", true, "scenario:weather")).assemble(true);
    assert_eq!(a.tool_calls[0].1, "get_weather");
    assert!(!env.mock_stats()["last_request"]["prompt_text"].as_str().unwrap().contains("namespace functions"));
}

#[test]
fn usage_counts_the_rendered_prompt_exactly() {
    let env = native_env();
    for model in ["native-x", "nllama-x"] {
        let mut body = chat_body(model, true, "hi");
        body["stream_options"] = json!({"include_usage": true});
        let r = post(&env.url("/v1/chat/completions"), &body);
        let usage: Value = serde_json::from_str(r.assemble(true).usage.as_deref().expect("usage")).unwrap();
        let sent = env.mock_stats()["last_request"]["prompt"].as_array().unwrap().len();
        assert_eq!(usage["prompt_tokens"].as_u64(), Some(sent as u64), "{model}: {usage}");
    }
}

#[test]
fn requests_the_renderer_cannot_express_get_a_400_naming_the_place() {
    let env = native_env();
    let image = json!({"model": "native-x", "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]});
    let r = post(&env.url("/v1/chat/completions"), &image);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "messages[0].content[1]: gpt-oss reads text only; a `image_url` part cannot be rendered");
    let mut two = chat_body("native-x", false, "hi");
    two["n"] = json!(2);
    assert_eq!(post(&env.url("/v1/chat/completions"), &two).status, 400);
    assert_eq!(env.mock_stats()["requests"], 0, "nothing went upstream");
}

/// A tool loop through `native`: the client drops the reasoning; reasoning memory puts it
/// back, and the renderer makes it the turn's analysis message.
#[test]
fn remembered_reasoning_becomes_the_analysis_message() {
    let env = native_env();
    let first = post(&env.url("/v1/chat/completions"), &chat_body("native-x", false, "scenario:weather")).json();
    let calls = first["choices"][0]["message"]["tool_calls"].clone();
    let id = calls[0]["id"].as_str().unwrap();
    let body = json!({"model": "native-x", "messages": [
        {"role": "user", "content": "scenario:weather"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": id, "content": "7 C"},
    ]});
    assert_eq!(post(&env.url("/v1/chat/completions"), &body).status, 200);
    let prompt = env.mock_stats()["last_request"]["prompt_text"].as_str().unwrap().to_owned();
    assert!(prompt.contains("<|start|>assistant<|channel|>analysis<|message|>Need the weather tool for Paris.<|end|>"), "{prompt}");
    assert!(prompt.contains("<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>7 C<|end|>"), "{prompt}");
}

/// `tool_choice` naming a function: the proxy writes the call's header at the end of the
/// prompt, so the model can only write its arguments; the client gets the call whole.
#[test]
fn a_named_tool_choice_makes_the_model_call_that_function_on_both_endpoints() {
    let env = native_env();
    for model in ["native-gpt-oss", "nllama-gpt-oss"] {
        for stream in [true, false] {
            // What the model writes after the header: only the arguments.
            let mut body = chat_body(model, stream, &script(json!({"text": "{\"city\":\"Paris\"}"})));
            body["tools"] = tools();
            body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
            let r = post(&env.url("/v1/chat/completions"), &body);
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            let a = r.assemble(stream);
            assert_eq!(a.tool_calls.len(), 1, "{model} stream={stream}: {}", r.text());
            assert_eq!((a.tool_calls[0].1.as_str(), a.tool_calls[0].2.as_str(), a.finish.as_str()), ("get_weather", "{\"city\":\"Paris\"}", "tool_calls"));
            let prompt = env.mock_stats()["last_request"]["prompt_text"].as_str().unwrap().to_owned();
            assert!(prompt.ends_with("<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"), "{prompt}");
        }
    }
}

/// `required` on `/v1/completions`: the header up to the function's name is written, the
/// model names one. On llama.cpp's `/completion`: a grammar that allows reasoning first and
/// then only a call to a declared function.
#[test]
fn a_required_tool_choice_is_a_prefill_on_completions_and_a_grammar_on_llamas_endpoint() {
    let env = native_env();
    let mut body = chat_body("native-gpt-oss", true, &script(json!({"text": "get_weather <|constrain|>json<|message|>{\"city\":\"Oslo\"}"})));
    body["tools"] = tools();
    body["tool_choice"] = json!("required");
    let a = post(&env.url("/v1/chat/completions"), &body).assemble(true);
    assert_eq!((a.tool_calls.len(), a.finish.as_str()), (1, "tool_calls"));
    assert_eq!(a.tool_calls[0].2, "{\"city\":\"Oslo\"}");
    let sent = env.mock_stats()["last_request"].clone();
    assert!(sent["prompt_text"].as_str().unwrap().ends_with("<|start|>assistant<|channel|>commentary to=functions."), "{sent}");
    assert!(sent.get("grammar").is_none());

    let text = "<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Oslo\"}";
    // The script's markup escaped (`\u003c`), so that the rendered prompt holds it as text.
    let mut body = chat_body("nllama-gpt-oss", true, &script(json!({ "text": text })).replace('<', "\\u003c"));
    body["tools"] = tools();
    body["tool_choice"] = json!("required");
    let a = post(&env.url("/v1/chat/completions"), &body).assemble(true);
    assert_eq!((a.reasoning.as_str(), a.tool_calls.len(), a.finish.as_str()), ("Use the tool.", 1, "tool_calls"));
    let sent = env.mock_stats()["last_request"].clone();
    assert!(sent["prompt_text"].as_str().unwrap().ends_with("<|start|>assistant"), "no prefill: {sent}");
    let grammar = sent["grammar"].as_str().unwrap_or_else(|| panic!("a grammar: {sent}"));
    assert!(grammar.starts_with("root ::= analysis? preamble? call\n") && grammar.contains("name ::= \"get_weather\"\n"), "{grammar}");
}

#[test]
fn a_tool_choice_naming_no_declared_function_is_a_400_naming_it() {
    let env = native_env();
    let mut body = chat_body("native-gpt-oss", false, "hi");
    body["tools"] = tools();
    body["tool_choice"] = json!({"type": "function", "function": {"name": "nope"}});
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("tool_choice")), "{}", r.text());
    body["tool_choice"] = json!("required");
    body.as_object_mut().unwrap().remove("tools");
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("tool_choice")), "{}", r.text());
}

/// `prompt = "text"`: the rendered prompt is sent as a string, special tokens written as text
/// (for servers that take no token ids, as mlx-lm); the answer is the same.
#[test]
fn a_text_prompt_is_the_rendered_prompt_as_a_string_and_answers_the_same() {
    let env = Env::with_config(|mock| {
        format!(
            "[upstreams.default]\nurl = \"{mock}/v1\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"t\"\n\
             [pipelines.t]\nstages = [{{ type = \"harmony-render\", prompt = \"text\" }}, {{ type = \"harmony-parse\" }}, {{ type = \"tool-bridge\", mode = \"openai_tool_calls\", reasoning = \"reasoning_content\" }}, {{ type = \"sse-encode\" }}]\n"
        )
    });
    let mut body = chat_body("gpt-oss", false, "scenario:weather");
    body["tools"] = tools();
    let a = post(&env.url("/v1/chat/completions"), &body).assemble(false);
    assert_eq!((a.reasoning.as_str(), a.tool_calls.len()), ("Need the weather tool for Paris.", 1));
    let sent = env.mock_stats()["last_request"].clone();
    let prompt = sent["prompt"].as_str().unwrap_or_else(|| panic!("a string prompt: {sent}"));
    assert!(prompt.starts_with("<|start|>system<|message|>") && prompt.ends_with("<|start|>assistant"), "{prompt}");
    assert_eq!(sent["prompt_text"].as_str(), Some(prompt), "the server's tokenizer reads it back as the same prompt");
}

/// vLLM's completions stop at 16 tokens when `max_tokens` is left out or `null`, and refuse
/// more than their context (found in front of a real vLLM 0.32; the mock says it in vLLM's
/// words when it serves one name with `--n-ctx`). A client that sets no limit gets the whole
/// answer: the proxy asks for gpt-oss's context, then, refused, for what the server takes. A
/// client's own limit past the context (Claude Code asks for 32k of any server) is a most,
/// which the server's limit keeps: asked again the same way.
#[test]
fn a_limit_past_the_servers_context_is_asked_again_with_the_limit_the_server_says() {
    let env = Env::with_mock(&["--served-model", "gpt-oss-tiny", "--n-ctx", "8192"], |mock| {
        format!("[upstreams.default]\nurl = \"{mock}/v1\"\nread_timeout = \"5s\"\n\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"native\"\nupstream_model = \"gpt-oss-tiny\"\n")
    });
    let mut body = chat_body("gpt-oss", false, "scenario:weather");
    body["tools"] = tools();
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.assemble(false);
    assert_eq!((a.tool_calls.len(), a.finish.as_str()), (1, "tool_calls"), "{}", r.text());
    assert_eq!(env.mock_stats()["last_request"]["max_tokens"], 8192, "asked again with the server's limit");
    body["max_tokens"] = json!(100_000);
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!((r.status, r.assemble(false).tool_calls.len()), (200, 1), "{}", r.text());
    assert_eq!(env.mock_stats()["last_request"]["max_tokens"], 8192);
}
