//! Issue: resilience. Retries, timeouts, watchdog, cancellation, broken upstream streams,
//! readiness, graceful shutdown, hostile bytes on the socket. Each test scripts the mock's
//! faults and asserts the attempts the mock saw, what the client got, and whether the
//! upstream connection was closed.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// A proxy whose single pipeline has fast retries, a short read timeout and a watchdog.
fn env() -> Env {
    Env::with_config(|mock| {
        one_pipeline(
            mock,
            "read_timeout = \"700ms\"\nconnect_timeout = \"1s\"",
            r#"{ type = "retry", max_retries = 2, backoff = "20ms" }, { type = "harmony-parse" }, { type = "fallback" },
               { type = "tool-bridge", mode = "openai_tool_calls" }, { type = "watchdog", no_final_timeout = "1500ms" }, { type = "sse-encode" }"#,
        )
    })
}

const ANSWER: &str = "<|channel|>analysis<|message|>Thinking it over.<|end|><|start|>assistant<|channel|>final<|message|>All good.";

fn key() -> String {
    format!("k{}", fastrand::u64(..))
}

fn ask(env: &Env, stream: bool, s: Value) -> Reply {
    post(&env.url("/v1/chat/completions"), &chat_body("gpt-oss", stream, &script(s)))
}

fn attempts(env: &Env, key: &str) -> u64 {
    env.mock_stats()["attempts"][key].as_u64().unwrap_or(0)
}

#[test]
fn retryable_statuses_are_retried_then_succeed() {
    let env = env();
    for (stream, status) in [(true, 503), (false, 429), (true, 502)] {
        let k = key();
        let r = ask(&env, stream, json!({"text": ANSWER, "key": k, "faults": [{"status": status, "retry_after": 0}, {"status": status}]}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.assemble(stream).content, "All good.");
        assert_eq!(attempts(&env, &k), 3);
    }
}

#[test]
fn retry_after_is_honoured() {
    let env = env();
    let k = key();
    let started = std::time::Instant::now();
    let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [{"status": 503, "retry_after": 1}]}));
    assert_eq!(r.assemble(true).content, "All good.");
    // The pipeline's own backoff is 20ms: only Retry-After explains a wait of a second.
    assert!(started.elapsed() >= Duration::from_millis(950), "waited only {:?}", started.elapsed());
    assert_eq!(attempts(&env, &k), 2);
}

#[test]
fn retries_run_out_into_502() {
    let env = env();
    let k = key();
    let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [{"status": 503}, {"status": 503}, {"status": 503}]}));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("503"));
    assert_eq!(attempts(&env, &k), 3, "max_retries = 2 means three attempts");
}

#[test]
fn other_4xx_pass_through_unretried() {
    let env = env();
    let k = key();
    let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [{"status": 400}]}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "mock failure 400", "the upstream's body, unchanged");
    assert_eq!(attempts(&env, &k), 1);
}

#[test]
fn a_passed_through_4xx_leaves_its_connection_for_the_next_request() {
    let env = env();
    for _ in 0..2 {
        let r = ask(&env, true, json!({"text": ANSWER, "key": key(), "faults": [{"status": 400}]}));
        assert_eq!(r.status, 400);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let stats = env.mock_stats();
    assert_eq!(stats["chat_connections"], 1, "a 4xx answer closed its connection: {stats}");
}

#[test]
fn connection_closed_before_answering_is_retried() {
    let env = env();
    let k = key();
    let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [{"close": true}]}));
    assert_eq!(r.assemble(true).content, "All good.");
    assert_eq!(attempts(&env, &k), 2);
}

#[test]
fn a_stream_cut_while_still_in_analysis_is_retried_transparently() {
    let env = env();
    for fault in [json!({"cut_after": 4}), json!({"truncate_after": 4}), json!({"stall_after": 4})] {
        let k = key();
        let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [fault]}));
        let a = r.assemble(true);
        assert_eq!((a.content.as_str(), a.error.is_none()), ("All good.", true), "{fault}: {}", r.text());
        assert_eq!(attempts(&env, &k), 2, "{fault}");
        assert_eq!(r.text().matches("\"role\"").count(), 1, "no trace of the first attempt");
    }
}

#[test]
fn once_output_reached_the_client_a_failure_ends_the_stream_with_an_error_and_done() {
    let env = env();
    // Faults after the answer began: cut, stall (read timeout), in-band error frame,
    // close without [DONE], a chunk that is not JSON.
    for fault in [json!({"cut_after": 13}), json!({"stall_after": 13}), json!({"error_after": 13}), json!({"truncate_after": 13}), json!({"invalid_after": 13})]
    {
        let k = key();
        let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [fault]}));
        assert_eq!(r.status, 200);
        let a = r.assemble(true); // checks the single [DONE] at the end
        assert_eq!(a.content, "All", "{fault}: {}", r.text());
        assert!(a.error.is_some(), "{fault}: {}", r.text());
        assert_eq!(attempts(&env, &k), 1, "{fault}: never retried once output went out");
    }
}

/// Found in review: a stream with a finish reason that closed without `[DONE]` counted as
/// broken, so a non-streamed answer was generated again (up to max_retries times).
#[test]
fn a_finished_stream_without_done_is_complete() {
    let env = env();
    for (stream, fault) in [(false, json!({})), (true, json!({})), (false, json!({"linger": true})), (true, json!({"linger": true}))] {
        let k = key();
        let r = ask(&env, stream, json!({"text": ANSWER, "key": k, "done": false, "faults": [fault]}));
        let a = r.assemble(stream);
        assert_eq!((a.content.as_str(), a.finish.as_str(), a.error.is_none()), ("All good.", "stop", true), "{fault}: {}", r.text());
        assert_eq!(attempts(&env, &k), 1, "{fault}: regenerated");
    }
}

#[test]
fn no_answer_before_the_read_timeout_is_504() {
    let env = env();
    let k = key();
    let r = ask(&env, true, json!({"text": ANSWER, "key": k, "faults": [{"head_delay_ms": 3000}, {"head_delay_ms": 3000}, {"head_delay_ms": 3000}]}));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert_eq!(attempts(&env, &k), 3);
}

#[test]
fn non_streamed_failures_become_statuses() {
    let env = env();
    let k = key();
    let r = ask(&env, false, json!({"text": ANSWER, "key": k, "faults": [{"error_after": 13}]}));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("mock in-band failure"));
}

#[test]
fn watchdog_ends_endless_reasoning_with_length_and_cancels_upstream() {
    let env = env();
    let endless = format!("<|channel|>analysis<|message|>{}", "hmm ".repeat(200));
    let r = ask(&env, true, json!({"text": endless, "delay_ms": 100}));
    let a = r.assemble(true);
    assert_eq!((a.content.as_str(), a.finish.as_str()), ("", "length"), "{}", r.text());
    assert!(eventually(5, || env.mock_stats()["cancelled"] == 1), "the upstream generation was not cancelled");
}

#[test]
fn a_client_that_leaves_cancels_the_upstream_at_once() {
    let env = env();
    let slow = format!("<|channel|>final<|message|>{}", "word ".repeat(100));
    let mut resp =
        client().post(env.url("/v1/chat/completions")).json(&chat_body("gpt-oss", true, &script(json!({"text": slow, "delay_ms": 100})))).send().unwrap();
    let mut buf = [0u8; 512];
    let n = resp.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(resp);
    assert!(eventually(5, || env.mock_stats()["cancelled"] == 1), "the mock never saw the connection close");
}

#[test]
fn readiness_follows_the_upstreams() {
    let env = env();
    let r = send(client().get(env.url("/readyz")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstreams"]["default"]["ready"], true);
    let Env { dir: _dir, mock, proxy } = env;
    let mock_url = mock.url.clone();
    drop(mock);
    let r = send(client().get(format!("{}/readyz", proxy.url)));
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["upstreams"]["default"]["ready"], false);
    let servers = r.json()["upstreams"]["default"]["servers"].clone();
    assert!(servers[format!("{mock_url}/v1")]["error"].is_string(), "{servers}");
}

#[test]
fn sigterm_lets_streams_finish_then_exits_zero() {
    let mut env = env();
    let slow = format!("<|channel|>final<|message|>{}", "tick ".repeat(10).trim_end());
    let url = env.url("/v1/chat/completions");
    let body = chat_body("gpt-oss", true, &script(json!({"text": slow, "delay_ms": 100})));
    let handle = std::thread::spawn(move || post(&url, &body));
    std::thread::sleep(Duration::from_millis(300));
    let pid = env.proxy.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let addr = env.proxy.url.trim_start_matches("http://").to_owned();
    assert!(eventually(2, || std::net::TcpStream::connect(&addr).is_err()), "still accepting after SIGTERM");
    let r = handle.join().unwrap();
    let a = r.assemble(true);
    assert_eq!(a.content, "tick ".repeat(10).trim_end(), "the in-flight stream finished");
    let status = env.proxy.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn hostile_bytes_on_the_socket_do_not_hurt_the_server() {
    let env = env();
    let addr = env.proxy.url.trim_start_matches("http://").to_owned();
    let raw: [&[u8]; 5] = [
        b"\x00\xff\xfe garbage \r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"a\":",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    ];
    for bytes in raw {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let head = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    }
    assert_eq!(send(client().get(env.url("/healthz"))).status, 200, "still serving");
    assert_eq!(chat(&env, "gpt-oss", true, "scenario:hello").content, "Hello! How can I help you today?");
}

#[test]
fn api_keys_and_the_concurrency_limit() {
    let env = Env::start("api_keys = [\"sk-one\", \"\"]\nmax_concurrent_requests = 1");
    let url = env.url("/v1/chat/completions");
    let r = post(&url, &chat_body("gpt-oss", true, "hi"));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let r = send(client().post(&url).bearer_auth("sk-two").json(&chat_body("gpt-oss", true, "hi")));
    assert_eq!(r.status, 401);
    let r = send(client().post(&url).bearer_auth("sk-one").json(&chat_body("gpt-oss", true, "hi")));
    assert_eq!(r.assemble(true).content, "Hello! How can I help you today?");
    assert_eq!(send(client().get(env.url("/healthz"))).status, 200, "health needs no key");
    // One slow stream in flight: the next request is turned away with Retry-After.
    let slow = script(json!({"text": "<|channel|>final<|message|>a b c d e f", "delay_ms": 200}));
    let mut first = client().post(&url).bearer_auth("sk-one").json(&chat_body("gpt-oss", true, &slow)).send().unwrap();
    let mut b = [0u8; 64];
    let _ = first.read(&mut b).unwrap();
    let r = send(client().post(&url).bearer_auth("sk-one").json(&chat_body("gpt-oss", true, "hi")));
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
}

#[test]
fn an_upstream_that_never_accepts_hits_the_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connecting
    // hangs rather than being refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (listener, addr, _fillers) = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = sock.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..8 {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
                fillers.push(s);
            }
        }
        (listener, addr, fillers)
    });
    let env = Env::with_config(|_| {
        one_pipeline(
            &format!("http://{addr}"),
            "connect_timeout = \"300ms\"",
            r#"{ type = "retry", max_retries = 1, backoff = "10ms" }, { type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }"#,
        )
    });
    let started = std::time::Instant::now();
    let r = post(&env.url("/v1/chat/completions"), &chat_body("m", true, "hi"));
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("deadline has elapsed") && started.elapsed() < Duration::from_secs(5), "{message} after {:?}", started.elapsed());
    drop(listener);
}
