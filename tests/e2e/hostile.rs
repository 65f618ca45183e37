//! Issue 24: one client cannot stall the proxy, read another's secrets, or make it forget its
//! limits. Each finding of the hostile-client review is a test here, and a normal client's
//! request alongside an attack is asserted to complete (never timed against a threshold).
//! `a_mixed_flood_leaves_every_well_formed_stream_whole` is the hostile-client suite's flood.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harmony_filters::testing::{assemble_messages, assemble_responses, assemble_sse};
use serde_json::{json, Value};

use crate::common::*;

fn agent_stages(ttl: &str) -> String {
    format!(
        r#"{{ type = "stop-injection", harmony_stops = true }}, {{ type = "history-clean" }}, {{ type = "harmony-parse" }}, {{ type = "fallback" }},
    {{ type = "reasoning-memory", ttl = "{ttl}", max_bytes = 400000 }}, {{ type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content", preambles = "content" }}, {{ type = "sse-encode" }}"#
    )
}

/// A proxy whose `/v1/responses` and `/v1/messages` routes run a pipeline with its own store
/// limits (`ttl`, 400 kB), beside the shared test config's chat routes.
/// The shared test config with `max_body_bytes` (65536 there) set to `n`.
fn with_body_limit(cfg: String, n: u64) -> String {
    cfg.replace("max_body_bytes = 65536", &format!("max_body_bytes = {n}"))
}

fn agents_env(server_extra: &str, body_limit: u64, ttl: &str) -> Env {
    Env::with_config(|mock| {
        let base = with_body_limit(config(mock, server_extra), body_limit);
        format!(
            "{base}\n[[routes]]\npath = \"/v1/responses\"\nupstream = \"default\"\npipeline = \"agents\"\n\n[[routes]]\npath = \"/v1/messages\"\nupstream = \"default\"\npipeline = \"agents\"\n\n[pipelines.agents]\nstages = [{}]\n", agent_stages(ttl)
        )
    })
}

fn addr(env: &Env) -> String {
    env.proxy.url.trim_start_matches("http://").to_owned()
}

/// Sends `raw` on a new connection and reads what comes back until the proxy closes it or
/// `secs` pass.
fn raw_exchange(env: &Env, raw: &[u8], secs: u64) -> String {
    let mut s = TcpStream::connect(addr(env)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && String::from_utf8_lossy(&out).contains("\"error\"") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A shared proxy that takes bodies of up to 2 MB (the attacks are large).
fn big() -> &'static Env {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(|| Env::with_config(|mock| with_body_limit(config(mock, ""), 2_000_000)))
}

fn healthz(env: &Env) -> u16 {
    send(client().get(env.url("/healthz"))).status
}

fn messages_body(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-oss-20b", "max_tokens": 1000, "stream": stream, "messages": [{"role": "user", "content": user}]})
}

#[test]
fn a_count_tokens_request_with_one_long_word_is_counted_and_other_clients_are_served_meanwhile() {
    let env = big();
    // 300 kB of one word (base64, a minified file): quadratic before, seconds per request.
    let word = "QUJDRA".repeat(50_000);
    let url = env.url("/v1/messages/count_tokens");
    let long = std::thread::spawn(move || post(&url, &json!({"model": "m", "messages": [{"role": "user", "content": word}]})));
    assert_eq!(healthz(env), 200);
    let small = post(&env.url("/v1/messages/count_tokens"), &json!({"model": "m", "messages": [{"role": "user", "content": "QUJDRA"}]}));
    let r = long.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (n, base) = (r.json()["input_tokens"].as_u64().unwrap(), small.json()["input_tokens"].as_u64().unwrap());
    assert!(n > base + 10_000, "{n} tokens for 300 kB against {base} for 6 bytes");
}

#[test]
fn a_long_word_rendered_by_harmony_render_is_answered() {
    let env = Env::with_config(|mock| {
        format!(
            "{}{}",
            native_routes(
                r#"{ type = "harmony-render", endpoint = "llama" }, { type = "harmony-parse" }, { type = "tool-bridge", mode = "openai_tool_calls" }, { type = "sse-encode" }"#
            ),
            with_body_limit(config(mock, ""), 1_000_000)
        )
    });
    let word = "x".repeat(200_000);
    let r = post(&env.url("/v1/chat/completions"), &chat_body("native-m", true, &format!("scenario:hello {word}")));
    assert_eq!(r.status, 200, "{}", r.text());
    assemble_sse(&r.body).unwrap();
}

#[test]
fn stop_sequences_beyond_the_limits_are_a_400_and_the_most_allowed_stream_whole() {
    let env = big();
    let url = env.url("/v1/messages");
    let mut body = messages_body("scenario:hello", true);
    body["stop_sequences"] = json!((0..100).map(|i| format!("{}{i}", "z".repeat(9000))).collect::<Vec<_>>());
    let r = post(&url, &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert!(r.json()["error"]["message"].as_str().unwrap().starts_with("stop_sequences"), "{}", r.text());
    for (stops, place) in
        [(vec!["z".repeat(1025)], "stop_sequences[0]"), ((0..17).map(|i| format!("{}{i:03}", "z".repeat(1000))).collect::<Vec<_>>(), "stop_sequences")]
    {
        body["stop_sequences"] = json!(stops);
        let r = post(&url, &body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.json()["error"]["message"].as_str().unwrap().starts_with(place), "{}", r.text());
    }
    // The most allowed: 64 sequences, 16 KiB in all.
    body["stop_sequences"] = json!((0..64).map(|i| format!("{}{i:02}", "z".repeat(254))).collect::<Vec<_>>());
    let r = post(&url, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let a = assemble_messages(&r.body).unwrap();
    assert!(!a.content.is_empty());
}

#[test]
fn a_stalled_body_is_a_408_and_its_slot_is_given_back() {
    let env = Env::start("body_read_timeout = \"1s\"\nmax_concurrent_requests = 2");
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let a = addr(&env);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"mo").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
        })
        .collect();
    for t in stalled {
        let out = t.join().unwrap();
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("body_read_timeout"), "{out}");
    }
    let r = chat(&env, "gpt-oss", true, "scenario:hello");
    assert!(!r.content.is_empty());
}

#[test]
fn a_content_length_above_max_body_bytes_is_a_413_before_the_body() {
    let env = shared();
    let out = raw_exchange(env, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{", 10);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("request_too_large"), "{out}");
}

#[test]
fn client_credentials_of_any_header_are_not_forwarded_when_keys_are_checked() {
    let env = Env::start("api_keys = [\"sk-proxy-secret\"]");
    let r = send(
        client()
            .post(env.url("/v1/embeddings"))
            .header("x-api-key", "sk-proxy-secret")
            .header("api-key", "sk-proxy-secret")
            .header("x-custom-auth", "token sk-proxy-secret")
            .header("x-kept", "yes")
            .json(&json!({"input": "x"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let head: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(!text.contains("sk-proxy-secret"), "{text}");
    assert_eq!(head["headers"]["x-kept"], "yes");
}

#[test]
fn an_upstream_password_is_never_shown() {
    let env = Env::with_config(|mock| config(&mock.replace("http://", "http://admin:hunter2@"), ""));
    let ready = send(client().get(env.url("/readyz"))).text();
    assert!(ready.contains("***@") && !ready.contains("hunter2"), "{ready}");
    let metrics = send(client().get(env.url("/metrics"))).text();
    assert!(metrics.contains("harmony_proxy_upstream") && !metrics.contains("hunter2"));
    let r = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", false, &script(json!({"text": "x", "faults": [{"status": 500}]}))));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains("hunter2"), "{}", r.text());
    assert!(!env.proxy.log().contains("hunter2"));
}

#[test]
fn dot_segments_are_refused_not_forwarded() {
    let env = shared();
    for path in [
        "/v1/../mock/stats",
        "/v1/%2e%2e/mock/stats",
        "/v1/./models",
        "/v1/%2E/models",
        "/v1/..%2fmock/stats",
        "/v1/..%5cmock",
        "/v1/..;/mock/stats",
        "/v1/models%2F..%2F..%2Fmock",
    ] {
        let out = raw_exchange(env, format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(), 10);
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.contains("invalid_path"), "{path}: {out}");
    }
}

#[test]
fn chat_requests_of_the_wrong_shape_are_the_clients_400_naming_the_field() {
    let env = shared();
    let url = env.url("/v1/chat/completions");
    for (body, place) in [
        (json!({"model": "gpt-oss", "messages": "x"}), "messages"),
        (json!({"model": 1, "messages": []}), "model"),
        (json!({"model": "gpt-oss", "messages": [{"role": "assistant", "tool_calls": [{"id": 1, "function": 5}]}]}), "messages[0].tool_calls[0].id"),
        (json!({"model": "gpt-oss", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}), "stream"),
        (
            json!({"model": "gpt-oss", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": 3}}]}),
            "tools[0].function.name",
        ),
    ] {
        let r = post(&url, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.starts_with(place), "{body}: {msg}");
    }
}

#[test]
fn responses_and_messages_fields_of_the_wrong_type_are_refused() {
    let env = shared();
    for body in [
        json!({"model": "m", "input": "x", "text": 5}),
        json!({"model": "m", "input": "x", "tool_choice": 5}),
        json!({"model": "m", "input": "x", "metadata": 5}),
    ] {
        let r = post(&env.url("/v1/responses"), &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    for extra in [json!({"thinking": 5}), json!({"metadata": 5}), json!({"messages": []}), json!({"tool_choice": 5})] {
        let mut body = messages_body("x", false);
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = post(&env.url("/v1/messages"), &body);
        assert_eq!((r.status, r.json()["type"].clone()), (400, json!("error")), "{extra}: {}", r.text());
    }
}

#[test]
fn an_upstream_200_that_is_not_a_chat_completion_is_a_502_that_says_so() {
    let env = shared();
    for stream in [false, true] {
        let r = post(
            &env.url("/v1/chat/completions"),
            &chat_body("gpt-oss", stream, &raw_script("data: {\"object\": \"list\", \"data\": []}\n\ndata: [DONE]\n\n")),
        );
        let text = r.text();
        assert!(text.contains("not with a chat completion"), "{text}");
        if !stream {
            assert_eq!(r.status, 502, "{text}");
        }
    }
}

#[test]
fn a_routes_store_ttl_holds_though_the_built_in_pipelines_share_the_process() {
    let env = agents_env("", 65536, "1s");
    let r = post(&env.url("/v1/responses"), &json!({"model": "m", "input": "scenario:hello"}));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(send(client().get(env.url(&format!("/v1/responses/{id}")))).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(send(client().get(env.url(&format!("/v1/responses/{id}")))).status, 404, "ttl = 1s");
    let (ok, out) = check(&["--config", "proxy.toml"], env.dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("state:") && out.contains("ttl 1s"), "{out}");
}

#[test]
fn one_key_cannot_evict_another_keys_stored_responses() {
    let env = agents_env("api_keys = [\"key-a\", \"key-b\"]", 1_000_000, "1h");
    let ask = |key: &str, input: &str| send(client().post(env.url("/v1/responses")).bearer_auth(key).json(&json!({"model": "m", "input": input})));
    let b = ask("key-b", "scenario:hello").json()["id"].as_str().unwrap().to_owned();
    // Key A stores 40 responses of 30 kB: three times the 400 kB store.
    for i in 0..40 {
        let r = ask("key-a", &format!("scenario:hello {i} {}", "pad ".repeat(7500)));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let got = send(client().get(env.url(&format!("/v1/responses/{b}"))).bearer_auth("key-b"));
    assert_eq!(got.status, 200, "key B's only response was evicted by key A: {}", got.text());
}

#[test]
fn previous_response_id_chains_cannot_grow_past_max_body_bytes() {
    let env = agents_env("", 65536, "1h");
    // The shared config's max_body_bytes is 65536: each turn is 40 kB, the second continuation
    // would make the conversation 80 kB.
    let pad = "pad ".repeat(10_000);
    let first = post(&env.url("/v1/responses"), &json!({"model": "m", "input": format!("scenario:hello {pad}")}));
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let r = post(&env.url("/v1/responses"), &json!({"model": "m", "previous_response_id": id, "input": format!("again {pad}")}));
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("conversation_too_large"), Some("previous_response_id")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("65536"), "{e}");
}

#[test]
fn stored_response_ids_are_not_predictable() {
    let env = shared();
    let ids: Vec<String> =
        (0..3).map(|_| post(&env.url("/v1/responses"), &json!({"model": "m", "input": "scenario:hello"})).json()["id"].as_str().unwrap().to_owned()).collect();
    // From the OS generator: 32 letters and digits after `resp_`, all different.
    assert!(ids.iter().all(|id| id.len() == 37 && id[5..].bytes().all(|b| b.is_ascii_alphanumeric())), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
}

/// The hostile-client suite's flood: malformed bodies, stalled bodies, huge words and many
/// stops, all at once, beside well-formed streams on the three APIs; every well-formed stream
/// ends with its terminal event, and the proxy neither panics nor stops answering.
#[test]
fn a_mixed_flood_leaves_every_well_formed_stream_whole() {
    let env = Env::with_config(|mock| with_body_limit(config(mock, "body_read_timeout = \"2s\""), 1_000_000));
    let a = addr(&env);
    let mut attackers = Vec::new();
    for i in 0..24 {
        let (a, chat_url, tok_url, msg_url) = (a.clone(), env.url("/v1/chat/completions"), env.url("/v1/messages/count_tokens"), env.url("/v1/messages"));
        attackers.push(std::thread::spawn(move || match i % 4 {
            0 => {
                // A stalled body.
                let mut s = TcpStream::connect(&a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = s.write_all(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"mo");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                assert!(out.starts_with("HTTP/1.1 408"), "{out}");
            }
            1 => {
                // Malformed bodies.
                for body in ["{", "[1,2]", "{\"messages\": 7}", "\u{0}\u{1}"] {
                    let r = send(client().post(&chat_url).header("content-type", "application/json").body(body));
                    assert_eq!(r.status, 400, "{body}: {}", r.text());
                }
            }
            2 => {
                // A huge word to count.
                let r = post(&tok_url, &json!({"model": "m", "messages": [{"role": "user", "content": "y".repeat(200_000)}]}));
                assert_eq!(r.status, 200, "{}", r.text());
            }
            _ => {
                // The most stop sequences allowed.
                let mut body = messages_body("scenario:hello", true);
                body["stop_sequences"] = json!((0..64).map(|k| format!("{}{k:02}", "q".repeat(254))).collect::<Vec<_>>());
                let r = post(&msg_url, &body);
                assert_eq!(r.status, 200, "{}", r.text());
                assemble_messages(&r.body).unwrap();
            }
        }));
    }
    for _ in 0..3 {
        let r = post(&env.url("/v1/chat/completions"), &chat_body("ide-m", true, "scenario:weather"));
        assert_eq!(r.status, 200, "{}", r.text());
        assemble_sse(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
        let r = post(&env.url("/v1/responses"), &json!({"model": "m", "input": "scenario:weather", "stream": true}));
        assert_eq!(r.status, 200, "{}", r.text());
        assemble_responses(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
        let r = post(&env.url("/v1/messages"), &messages_body("scenario:weather", true));
        assert_eq!(r.status, 200, "{}", r.text());
        assemble_messages(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
        assert_eq!(healthz(&env), 200);
    }
    for t in attackers {
        t.join().unwrap();
    }
    assert!(!env.proxy.log().contains("panicked"), "{}", env.proxy.log());
}

#[test]
fn errors_hyper_raises_before_the_proxy_sees_a_request_carry_the_apis_error_shape() {
    let env = shared();
    let body_of = |out: &str| -> Value { serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {out}")) };
    let out = raw_exchange(env, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}", 10);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(body_of(&out)["error"]["code"], "bad_request");
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = raw_exchange(env, format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(), 10);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(body_of(&out)["type"], "error", "Anthropic's shape on /v1/messages: {out}");
    let long = "a".repeat(70_000);
    let out = raw_exchange(env, format!("GET /v1/models?q={long} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(), 10);
    assert!(out.starts_with("HTTP/1.1 414"), "{out}");
    assert_eq!(body_of(&out)["error"]["code"], "uri_too_long");
    assert_eq!(healthz(env), 200);
}

/// A Redis store that accepts connections and never answers: the request that waits for it
/// awaits it (at most `store_timeout`), and the workers go on serving others meanwhile.
#[test]
fn a_redis_store_that_never_answers_stalls_no_one_else() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        // Keep what connects open and silent for a while, then let go.
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < end {
            if let Ok((c, _)) = silent.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let env = Env::with_config(|mock| {
        // The slow-store route goes first (first match wins); its pipeline at the end.
        let route = "[[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"slowstore-*\"]\nupstream = \"default\"\npipeline = \"slowstore\"\n\n[[routes]]";
        let pipeline = format!("\n[pipelines.slowstore]\nstages = [{{ type = \"harmony-parse\" }}, {{ type = \"reasoning-memory\", store = \"redis://127.0.0.1:{port}\", store_timeout = \"2s\" }}, {{ type = \"tool-bridge\", mode = \"openai_tool_calls\" }}, {{ type = \"sse-encode\" }}]\n");
        config(mock, "").replacen("[[routes]]", route, 1) + &pipeline
    });
    // An assistant turn with a call and no reasoning: the stage looks its reasoning up.
    let lookups: Vec<_> = (0..4)
        .map(|i| {
            let url = env.url("/v1/chat/completions");
            std::thread::spawn(move || {
                post(&url, &json!({"model": "slowstore-m", "stream": true, "messages": [
                    {"role": "user", "content": "scenario:hello"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{i}"), "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": format!("call_{i}"), "content": "ok"}]}))
            })
        })
        .collect();
    for _ in 0..3 {
        assert_eq!(healthz(&env), 200);
        let r = chat(&env, "gpt-oss", true, "scenario:hello");
        assert!(!r.content.is_empty());
    }
    for t in lookups {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assemble_sse(&r.body).unwrap();
    }
    held.join().unwrap();
}

#[test]
fn a_stalled_body_holds_no_slot_while_it_stalls() {
    let env = Env::start("body_read_timeout = \"10s\"\nmax_concurrent_requests = 2");
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&env)).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"mo").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Three bodies are stalling and the limit is two: a whole request is still served.
    let r = chat(&env, "gpt-oss", true, "scenario:hello");
    assert!(!r.content.is_empty());
    drop(stalled);
}

#[test]
fn requests_agents_really_send_are_not_refused_by_the_type_check() {
    let env = shared();
    let body = json!({"model": "ide-m", "stream": true, "n": 1, "max_tokens": -1, "max_completion_tokens": 4096.0, "stop": null, "logit_bias": {"50256": -100},
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": true, "seed": 7, "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": null}}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "scenario:hello"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": [], "refusal": null, "audio": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"},
            {"role": "user", "name": "me", "content": "scenario:hello"}]});
    let r = post(&env.url("/v1/chat/completions"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assemble_sse(&r.body).unwrap();
}

#[test]
fn a_forwarded_refusal_with_no_body_is_passed_on_as_it_is() {
    let env = shared();
    let r = send(client().get(env.url("/v1/mock/empty-400")));
    assert_eq!((r.status, r.body.len()), (400, 0), "{}", r.text());
}

#[test]
fn count_tokens_of_a_long_word_is_exact() {
    let env = big();
    let enc = harmony_filters::vocab::encoding().unwrap();
    let count = |content: &str| {
        post(&env.url("/v1/messages/count_tokens"), &json!({"model": "m", "messages": [{"role": "user", "content": content}]})).json()["input_tokens"]
            .as_u64()
            .unwrap() as usize
    };
    // 8 kB: long enough for the linear encoder, short enough for the official one here.
    let word = "QUJDRA+/".repeat(1000);
    let (short, long) = (count("QUJD"), count(&word));
    let official = |t: &str| enc.tokenizer().encode_ordinary(t).len();
    assert_eq!(long - short, official(&word) - official("QUJD"));
}

#[test]
fn a_tool_schema_cannot_hide_a_long_word_behind_json_escapes() {
    let env = big();
    let tools = json!([{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "string", "description": "\n".repeat(100_000)}}}}]);
    let r = post(&env.url("/v1/messages/count_tokens"), &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("function.parameters"), "{}", r.text());
}
