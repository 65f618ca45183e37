//! Issue: the core proxy. Every upstream shape through the real server in each mode,
//! streamed and not; true streaming; the HTTP surface and its errors; forwarding; config
//! from the environment alone; the demo.

use std::io::Read;
use std::path::PathBuf;

use harmony_filters::testing::check_fixture;
use serde_json::{json, Value};

use crate::common::*;

fn fixtures() -> Vec<(String, String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    expected
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, exp)| (name.clone(), std::fs::read_to_string(dir.join(format!("{name}.sse"))).unwrap(), exp.clone()))
        .collect()
}

#[test]
fn every_fixture_in_every_mode_through_the_server() {
    let env = shared();
    let mut failures = Vec::new();
    for (name, raw, exp) in fixtures() {
        for (model, mode) in [("gpt-oss-20b", "final_only"), ("text-gpt-oss", "final_plus_tools_text"), ("ide-gpt-oss", "openai_tool_calls")] {
            for stream in [true, false] {
                let a = chat(env, model, stream, &raw_script(&raw));
                if let Err(e) = check_fixture(mode, stream, &exp, &a) {
                    failures.push(format!("{name} {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn answer_streams_token_by_token_before_the_upstream_finishes() {
    let env = Env::start("");
    let s = script(
        json!({"text": "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>One two three four five", "delay_ms": 300}),
    );
    let mut resp = client().post(env.url("/v1/chat/completions")).json(&chat_body("gpt-oss", true, &s)).send().unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("\"content\":\"One\"") {
        let n = resp.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended before the first word: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The first word is here while the upstream is still generating the rest.
    assert_eq!(env.mock_stats()["completed"], 0, "the proxy buffered the answer");
    let mut rest = Vec::new();
    resp.read_to_end(&mut rest).unwrap();
    got.push_str(&String::from_utf8_lossy(&rest));
    let a = harmony_filters::testing::assemble_sse(got.as_bytes()).unwrap();
    assert_eq!(a.content, "One two three four five");
    // One chunk per upstream token: the answer was not batched.
    assert_eq!(got.matches("\"content\":\"").count(), 1 + 5, "{got}");
}

#[test]
fn usage_chunk_only_when_asked() {
    let env = shared();
    let mut body = chat_body("gpt-oss", true, "scenario:hello");
    let a = post(&env.url("/v1/chat/completions"), &body).assemble(true);
    assert_eq!((a.content.as_str(), a.usage.is_none()), ("Hello! How can I help you today?", true));
    body["stream_options"] = json!({"include_usage": true});
    let a = post(&env.url("/v1/chat/completions"), &body).assemble(true);
    assert!(a.usage.unwrap().contains("total_tokens"));
    let a = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", false, "hi")).assemble(false);
    assert!(a.usage.unwrap().contains("total_tokens"), "non-streamed answers carry usage");
}

#[test]
fn request_errors_are_openai_shaped() {
    let env = shared();
    let url = env.url("/v1/chat/completions");
    let check = |r: Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(v["error"].get("param").is_some() && v["error"].get("type").is_some());
        assert!(r.headers.contains_key("x-request-id"));
    };
    check(send(client().post(&url).body("{not json")), 400, "invalid_json");
    check(send(client().post(&url).body("[1,2]")), 400, "invalid_json");
    check(send(client().get(&url)), 405, "method_not_allowed");
    check(send(client().post(&url).body(vec![b' '; 70_000])), 413, "request_too_large");
    check(send(client().get(env.url("/nope"))), 404, "not_found");
}

#[test]
fn no_route_is_404_and_unreachable_upstream_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstreams.default]
url = "http://127.0.0.1:{port}/v1"
connect_timeout = "1s"
[[routes]]
path = "/v1/chat/completions"
models = ["gpt-oss-*"]
upstream = "default"
pipeline = "p"
[pipelines.p]
stages = [{{ type = "retry", max_retries = 1, backoff = "10ms" }}, {{ type = "harmony-parse" }}, {{ type = "tool-bridge" }}, {{ type = "sse-encode" }}]
"#
    );
    std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
    let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let url = format!("{}/v1/chat/completions", proxy.url);
    let r = post(&url, &chat_body("llama-3", true, "hi"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    for stream in [true, false] {
        let r = post(&url, &chat_body("gpt-oss-20b", stream, "hi"));
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    }
}

#[test]
fn request_ids_are_kept_or_made() {
    let env = shared();
    let r = send(client().get(env.url("/healthz")).header("x-request-id", "abc-123"));
    assert_eq!(r.headers["x-request-id"], "abc-123");
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = send(client().post(env.url("/v1/chat/completions")).json(&chat_body("gpt-oss", true, "hi")));
    assert!(r.headers["x-request-id"].to_str().unwrap().starts_with("req_"));
    let r = send(client().get(env.url("/v1/models")));
    assert!(r.headers.contains_key("x-request-id"));
}

#[test]
fn other_v1_paths_are_forwarded_untouched() {
    let env = shared();
    let r = send(client().get(env.url("/v1/models")));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], "gpt-oss-20b");
    // A streamed request body goes through and comes back (the mock echoes).
    let big: String = "x".repeat(50_000);
    let r = send(client().post(env.url("/v1/embeddings?dims=8")).header("content-type", "application/json").body(format!("{{\"input\":\"{big}\"}}")));
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-mock-echo"], "1");
    let text = r.text();
    let (head, body) = text.split_once('\n').unwrap();
    let head: Value = serde_json::from_str(head).unwrap();
    assert_eq!((head["method"].as_str(), head["path"].as_str(), head["query"].as_str()), (Some("POST"), Some("/v1/embeddings"), Some("dims=8")));
    assert_eq!(body.len(), big.len() + 12);
}

#[test]
fn stop_sequences_are_injected_keeping_the_clients() {
    let env = Env::start("");
    let mut body = chat_body("gpt-oss", false, "hi");
    body["stop"] = json!("END");
    assert_eq!(post(&env.url("/v1/chat/completions"), &body).status, 200);
    let sent = &env.mock_stats()["last_request"];
    assert_eq!(sent["stop"], json!(["END", "<|return|>", "<|call|>"]));
    assert_eq!(sent["stream"], true, "the upstream is always asked to stream");
}

#[test]
fn runs_from_environment_variables_alone() {
    let dir = tempfile::tempdir().unwrap(); // no proxy.toml here: the embedded one runs
    let mock = mock(dir.path());
    let upstream = format!("{}/v1", mock.url);
    let proxy = spawn(
        &["--port", "0", "--host", "127.0.0.1"],
        dir.path(),
        &[
            ("UPSTREAM_BASE_URL", &upstream),
            ("PROXY_MODE", "openai_tool_calls"),
            ("READ_TIMEOUT", "30"),
            ("HARMONY_STOPS_ENABLED", "0"),
            ("EXTRA_STOP_SEQUENCES", "STOP1, STOP2"),
            ("RETRY_BACKOFF_SECONDS", "0.2"),
            ("METRICS_ENABLED", "1"),
            ("LOG_LEVEL", "INFO"),
        ],
    );
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", true, "scenario:weather"));
    let a = r.assemble(true);
    assert_eq!(a.tool_calls.len(), 1, "PROXY_MODE applies: {a:?}");
    assert_eq!((a.tool_calls[0].1.as_str(), a.finish.as_str()), ("get_weather", "tool_calls"));
    let sent: Value = client().get(format!("{}/mock/stats", mock.url)).send().unwrap().json().unwrap();
    assert_eq!(sent["last_request"]["stop"], json!(["STOP1", "STOP2"]));
}

#[test]
fn demo_shows_a_clean_stream() {
    let dir = tempfile::tempdir().unwrap();
    let demo = spawn(&["demo", "--port", "0"], dir.path(), &[]);
    let r = post(&format!("{}/v1/chat/completions", demo.url), &chat_body("gpt-oss-20b", true, "hi"));
    let a = r.assemble(true);
    assert_eq!(a.content, "Hello! How can I help you today?");
    assert!(!r.text().contains("analysis"));
}

#[test]
fn answers_in_a_row_share_one_upstream_connection() {
    let env = Env::start("");
    for stream in [true, false, true] {
        let a = post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", stream, "scenario:hello")).assemble(stream);
        assert_eq!(a.content, "Hello! How can I help you today?");
        // The connection goes back to the idle list just after the answer's end.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let stats = env.mock_stats();
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["chat_connections"], 1, "each answer opened a connection of its own: {stats}");
}

#[test]
fn an_upstream_that_closed_an_idle_connection_costs_nothing() {
    let env = Env::with_mock(&["--idle-close-ms", "300"], |mock_url| config(mock_url, ""));
    let hello = || post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", true, "scenario:hello")).assemble(true).content;
    assert_eq!(hello(), "Hello! How can I help you today?");
    // The server has closed the connection the proxy keeps: the next answer takes a new one,
    // without an error and without counting a failure against the server.
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(hello(), "Hello! How can I help you today?");
    let stats = env.mock_stats();
    assert_eq!((stats["requests"].as_u64(), stats["chat_connections"].as_u64()), (Some(2), Some(2)), "{stats}");
    let metrics = send(client().get(env.url("/metrics"))).text();
    assert!(!metrics.lines().any(|l| l.starts_with("harmony_proxy_upstream_errors_total")), "{metrics}");
}
