//! Operating the proxy: traces and `replay`, HTTPS, metrics.

use std::process::Command;

use harmony_filters::testing::assemble_sse;

use crate::common::*;

#[test]
fn traces_record_the_raw_upstream_and_replay_reproduces_the_answer() {
    let env = Env::start("trace_dir = \"traces\"");
    let r =
        send(client().post(env.url("/v1/chat/completions")).header("x-request-id", "../escape/attempt").json(&chat_body("gpt-oss", true, "scenario:weather")));
    assert_eq!(r.status, 200);
    let trace = env.dir.path().join("traces/___escape_attempt.sse");
    assert!(eventually(5, || trace.exists()), "no trace written");
    let raw = std::fs::read_to_string(&trace).unwrap();
    assert!(raw.contains("<|channel|>") && raw.contains("[DONE]"), "the raw upstream stream, markup and all");
    let out = Command::new(BIN)
        .args(["replay", trace.to_str().unwrap(), "--config", "proxy.toml", "--pipeline", "ide-tools"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = assemble_sse(&out.stdout).unwrap();
    assert_eq!(a.tool_calls[0].1, "get_weather");
    assert_eq!(a.content, "I'll check the weather.");
}

#[test]
fn serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let mock = mock(dir.path());
    let cfg = config(&mock.url, "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"");
    std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
    let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    assert!(proxy.url.starts_with("https://"), "{}", proxy.url);
    let tls = reqwest::blocking::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()).build().unwrap();
    let r = send(tls.post(format!("{}/v1/chat/completions", proxy.url)).json(&chat_body("gpt-oss", true, "hi")));
    assert_eq!(r.assemble(true).content, "Hello! How can I help you today?");
}

#[test]
fn https_upstreams_trust_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.path().join("up.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("up.key"), cert.key_pair.serialize_pem()).unwrap();
    let mock = spawn(&["mock-upstream", "--port", "0", "--tls-cert", "up.pem", "--tls-key", "up.key"], dir.path(), &[]);
    assert!(mock.url.starts_with("https://"));
    for (ca, ok) in [("ca_file = \"up.pem\"", true), ("", false)] {
        std::fs::write(
            dir.path().join("proxy.toml"),
            one_pipeline(
                &mock.url,
                &format!("{ca}\nconnect_timeout = \"2s\""),
                r#"{ type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }"#,
            ),
        )
        .unwrap();
        let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
        let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("m", true, "hi"));
        if ok {
            assert_eq!(r.assemble(true).content, "Hello! How can I help you today?");
        } else {
            assert_eq!(r.status, 502, "an unknown issuer must not be trusted: {}", r.text());
        }
    }
}

#[test]
fn metrics_count_what_happened() {
    let env = Env::start("");
    chat(&env, "ide-x", true, "scenario:weather");
    chat(
        &env,
        "gpt-oss",
        false,
        &raw_script(&std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/header_without_message.sse")).unwrap()),
    );
    let m = send(client().get(env.url("/metrics"))).text();
    for name in [
        "harmony_proxy_requests_total{",
        "harmony_proxy_final_chunks_total",
        "harmony_proxy_tool_chunks_total",
        "harmony_proxy_parser_fallback_total 1",
        "harmony_proxy_time_to_first_token_seconds_bucket",
        "harmony_proxy_request_duration_seconds_bucket",
        "harmony_proxy_active_streams 0",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    let off = Env::start("metrics = false");
    assert_eq!(send(client().get(off.url("/metrics"))).status, 404);
}
