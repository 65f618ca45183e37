//! Issue 19: `POST /v1/responses` served by the proxy (Codex CLI, the Agents SDK), through
//! the same pipelines as chat. What a Responses client receives, streamed and not.

use harmony_filters::testing::{assemble_responses, response_view, Assembled};
use serde_json::{json, Value};

use crate::common::*;

fn responses(env: &Env, body: &Value) -> Reply {
    post(&env.url("/v1/responses"), body)
}

/// Posts `body` streamed and not; both must be well formed and say the same.
fn both(env: &Env, body: Value) -> Assembled {
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let r = responses(env, &streamed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert!(!r.text().contains("[DONE]"), "Responses streams end with their terminal event: {}", r.text());
    let s = assemble_responses(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let r = responses(env, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = response_view(&r.json()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let ids = |a: &Assembled| Assembled {
        tool_calls: a.tool_calls.iter().map(|(_, n, args)| (String::new(), n.clone(), args.clone())).collect(),
        usage: None,
        ..a.clone()
    };
    assert_eq!(ids(&s), ids(&j), "streamed and whole differ");
    s
}

#[test]
fn a_config_without_a_responses_route_serves_it_with_reasoning_and_the_answer_as_items() {
    let env = shared(); // its config names only chat routes
    let a = both(env, json!({"model": "gpt-oss-20b", "input": "scenario:hello"}));
    assert_eq!(a.reasoning, "The user says hello. Reply briefly and warmly.");
    assert_eq!(a.content, "Hello! How can I help you today?");
    assert_eq!(a.finish, "completed");
    let (ok, out) = check(&["--config", "proxy.toml"], env.dir.path());
    assert!(ok && out.contains("no route for /v1/responses") && out.contains("ide-tools"), "{out}");
}

#[test]
fn a_tool_call_is_a_function_call_item_after_its_preamble_message() {
    let env = shared();
    let body = json!({"model": "gpt-oss-20b", "input": [{"role": "user", "content": [{"type": "input_text", "text": "scenario:weather"}]}],
                      "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]});
    let a = both(env, body.clone());
    assert_eq!(a.reasoning, "Need the weather tool for Paris.");
    assert_eq!(a.content, "I'll check the weather.");
    assert_eq!(a.tool_calls.len(), 1);
    assert_eq!((a.tool_calls[0].1.as_str(), a.tool_calls[0].2.as_str()), ("get_weather", "{\"city\":\"Paris\",\"unit\":\"celsius\"}"));
    // The order of the items: reasoning, the preamble message, the call.
    let r = responses(env, &body).json();
    let kinds: Vec<&str> = r["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(r["output"][0]["summary"], json!([]));
    assert_eq!(r["output"][0]["content"][0]["type"], "reasoning_text");
}

#[test]
fn the_second_turn_reaches_the_model_with_the_call_its_reasoning_and_the_tool_output() {
    let env = Env::start(""); // last_request must be this test's
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let first = responses(&env, &json!({"model": "gpt-oss-20b", "input": "scenario:weather", "tools": tools})).json();
    let call_id = first["output"][2]["call_id"].as_str().unwrap().to_owned();
    let mut input = vec![json!({"role": "user", "content": "scenario:weather"})];
    input.extend(first["output"].as_array().unwrap().iter().cloned()); // sent back as they came
    input.push(json!({"type": "function_call_output", "call_id": call_id, "output": "18C and sunny"}));
    let r = responses(&env, &json!({"model": "gpt-oss-20b", "input": input, "tools": tools, "instructions": "Be brief."}));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = env.mock_stats()["last_request"]["messages"].clone();
    assert_eq!(sent[0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(sent[2]["tool_calls"][0]["id"], call_id.as_str());
    assert_eq!(sent[2]["reasoning_content"], "Need the weather tool for Paris.\n\nI'll check the weather.", "history-clean folds the preamble in: {sent}");
    assert_eq!(sent[3], json!({"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"}));
}

#[test]
fn bad_requests_get_an_openai_error_naming_the_field() {
    let env = shared();
    for (body, param, status) in [
        (json!({"input": "hi"}), "model", 400),
        (json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}), "input[0].content[0]", 400),
        (json!({"model": "m", "input": [{"role": "user", "content": "x"}, {"type": "computer_call"}]}), "input[1].type", 400),
        (json!({"model": "m", "input": "x", "previous_response_id": "resp_nope"}), "previous_response_id", 404),
    ] {
        let r = responses(env, &body);
        assert_eq!(r.status, status, "{}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().starts_with(param), "{e}");
    }
    let r = responses(env, &json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}));
    assert!(r.text().contains("gpt-oss reads text only"), "{}", r.text());
}

#[test]
fn a_failure_after_the_stream_began_ends_it_with_response_failed() {
    let env = shared();
    let s = script(json!({"text": "<|channel|>final<|message|>Hello there friend", "faults": [{"error_after": 5}], "key": "responses-fail"}));
    let r = responses(env, &json!({"model": "m", "input": s, "stream": true}));
    let a = assemble_responses(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    assert_eq!(a.finish, "failed", "{}", r.text());
    assert!(a.error.is_some_and(|e| !e.is_empty()));
    assert!(r.text().contains("\"code\":\"server_error\""), "{}", r.text());
}

#[test]
fn an_answer_cut_by_max_tokens_is_response_incomplete() {
    let env = shared();
    let s = script(json!({"text": "<|channel|>final<|message|>Hello there", "finish": "length"}));
    let a = both(env, json!({"model": "m", "input": s, "max_output_tokens": 3}));
    assert_eq!(a.finish, "incomplete");
    let r = responses(env, &json!({"model": "m", "input": script(json!({"text": "<|channel|>final<|message|>Hi", "finish": "length"}))})).json();
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}

#[test]
fn requests_are_counted_with_the_api_label() {
    let env = Env::start("");
    responses(&env, &json!({"model": "m", "input": "scenario:hello"}));
    post(&env.url("/v1/chat/completions"), &chat_body("m", false, "scenario:hello"));
    let text = send(client().get(env.url("/metrics"))).text();
    let line = |api: &str| text.lines().any(|l| l.starts_with("harmony_proxy_requests_total{") && l.contains(&format!("api=\"{api}\"")));
    assert!(line("responses") && line("chat"), "{text}");
}

#[test]
fn a_stored_response_is_continued_by_previous_response_id_read_and_deleted() {
    let env = Env::start("");
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let first = responses(&env, &json!({"model": "gpt-oss-20b", "input": "scenario:weather", "tools": tools})).json();
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["store"], true, "store is on by default, as OpenAI's");
    let got = send(client().get(env.url(&format!("/v1/responses/{id}"))));
    assert_eq!((got.status, got.json()), (200, first.clone()));

    let call_id = first["output"][2]["call_id"].as_str().unwrap();
    let r = responses(
        &env,
        &json!({"model": "gpt-oss-20b", "previous_response_id": id, "tools": tools,
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "18C and sunny"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous_response_id"], id.as_str());
    let sent = env.mock_stats()["last_request"]["messages"].clone();
    assert_eq!(sent[0], json!({"role": "user", "content": "scenario:weather"}), "{sent}");
    assert_eq!(sent[1]["tool_calls"][0]["id"], call_id);
    assert!(sent[1]["reasoning_content"].as_str().unwrap().starts_with("Need the weather tool for Paris."), "{sent}");
    assert_eq!(sent[2]["content"], "18C and sunny");

    let del = send(client().delete(env.url(&format!("/v1/responses/{id}"))));
    assert_eq!((del.status, del.json()["deleted"].clone()), (200, json!(true)));
    assert_eq!(send(client().get(env.url(&format!("/v1/responses/{id}")))).status, 404);
    let r = responses(&env, &json!({"model": "gpt-oss-20b", "previous_response_id": id, "input": "again"}));
    assert_eq!((r.status, r.json()["error"]["param"].clone()), (404, json!("previous_response_id")));
}

#[test]
fn a_stored_response_is_only_seen_with_the_key_that_made_it() {
    let env = Env::start("api_keys = [\"alice-key\", \"bob-key\"]");
    let ask = |key: &str| send(client().post(env.url("/v1/responses")).bearer_auth(key).json(&json!({"model": "m", "input": "scenario:hello"})));
    let id = ask("alice-key").json()["id"].as_str().unwrap().to_owned();
    let get = |key: &str| send(client().get(env.url(&format!("/v1/responses/{id}"))).bearer_auth(key)).status;
    assert_eq!((get("alice-key"), get("bob-key")), (200, 404));
    assert_eq!(send(client().get(env.url(&format!("/v1/responses/{id}")))).status, 401);
}

/// A stateless client (`store: false`, `include: ["reasoning.encrypted_content"]`, as Codex
/// runs) gets its reasoning sealed; sent back without its text, to any replica with the same
/// `reasoning_key`, the model gets it; a replica without the key ignores it and counts it.
#[test]
fn sealed_reasoning_reaches_the_model_through_any_replica_with_the_key() {
    let a = Env::start("reasoning_key = \"team-secret\"");
    let b = Env::start("reasoning_key = \"team-secret\"");
    let c = Env::start("");
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let first =
        responses(&a, &json!({"model": "m", "input": "scenario:weather", "tools": tools, "store": false, "include": ["reasoning.encrypted_content"]})).json();
    let reasoning = first["output"][0].clone();
    let blob = reasoning["encrypted_content"].as_str().unwrap().to_owned();
    assert!(blob.starts_with("hp1.") && !blob.contains("Paris"), "{reasoning}");
    assert_eq!(send(client().get(a.url(&format!("/v1/responses/{}", first["id"].as_str().unwrap())))).status, 404, "store: false keeps nothing");
    let call = first["output"][2].clone();
    let turn2 = json!({"model": "m", "store": false, "tools": tools, "input": [
        {"role": "user", "content": "scenario:weather"},
        {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": blob},
        call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}
    ]});
    assert_eq!(responses(&b, &turn2).status, 200);
    assert_eq!(b.mock_stats()["last_request"]["messages"][1]["reasoning_content"], "Need the weather tool for Paris.");
    let r = responses(&c, &turn2);
    assert_eq!(r.status, 200, "a blob that does not open is never an error: {}", r.text());
    assert!(c.mock_stats()["last_request"]["messages"][1].get("reasoning_content").is_none());
    let metrics = send(client().get(c.url("/metrics"))).text();
    assert!(metrics.lines().any(|l| l.starts_with("harmony_proxy_sealed_reasoning_rejected_total") && !l.ends_with(" 0")), "{metrics}");
}
