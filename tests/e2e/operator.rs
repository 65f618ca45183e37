//! An operator's first hour: configs that would silently misbehave, logs a machine can read,
//! a summary line for every request, self-signed upstreams, `.env`, `init` and `doctor`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::*;

/// Regression: a config with an upstream and no `[[routes]]` passed `check` and then forwarded
/// chat completions untouched, raw `<|channel|>analysis…` markup and all.
#[test]
fn a_config_without_routes_still_serves_clean_answers() {
    let env = Env::with_config(|mock| format!("[upstreams.default]\nurl = \"{mock}/v1\"\n"));
    for stream in [true, false] {
        let a = chat(&env, "gpt-oss-20b", stream, "hi");
        assert_eq!(a.content, "Hello! How can I help you today?");
        assert!(a.reasoning.is_empty());
    }
    let (ok, out) = check(&["--config", "proxy.toml"], env.dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("implied routes[0]") && out.contains("pipeline `harmony`"), "{out}");
}

#[test]
fn check_warns_about_configs_that_run_but_are_probably_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        r#"
[upstreams.default]
url = "http://127.0.0.1:1/v1"

[[routes]]
path = "/v1/chat/completions"
models = ["*"]
upstream = "default"
pipeline = "main"

[[routes]]
path = "/v1/chat/completions"
models = ["gpt-oss-120b"]
upstream = "default"
pipeline = "ide-tools"

[pipelines.main]
stages = [
  { type = "stop-injection", extra = ["<|end|>", "STOP"] },
  { type = "harmony-parse" },
  { type = "tool-bridge" },
  { type = "sse-encode" },
]

[pipelines.forgotten]
stages = [{ type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }]

[pipelines.forgotten-llama]
stages = [
  { type = "harmony-render", endpoint = "llama", structured_outputs = true },
  { type = "harmony-parse" },
  { type = "tool-bridge" },
  { type = "sse-encode" },
]
"#,
    )
    .unwrap();
    let (ok, out) = check(&["--config", "proxy.toml"], dir.path());
    assert!(ok, "warnings do not fail check: {out}");
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true}, {
        insta::assert_snapshot!("check_warnings", out);
    });
    // A clean config has no warning at all.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = check(&["--config", "proxy.toml"], shipped);
    assert!(ok && !out.contains("warning"), "{out}");
}

fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a {what} line is not JSON ({e}): {l:?}")))
        .collect()
}

/// Regression: with `log_format = "json"` the banner was a plain text line, and text logs
/// carried ANSI colour codes into files and pipes.
#[test]
fn json_logs_are_json_on_every_line_and_piped_logs_have_no_colour() {
    let env = Env::with_config(|mock| config(mock, "log_format = \"json\""));
    chat(&env, "gpt-oss-20b", true, "hi");
    send(client().get(env.url("/v1/models")));
    let out = json_lines(&env.proxy.out(), "stdout");
    assert!(out[0]["url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{out:?}");
    assert!(eventually(5, || env.proxy.log().lines().count() >= 3));
    let logs = json_lines(&env.proxy.log(), "log");
    assert!(logs.iter().any(|l| l["message"] == "request" && l["route"] == "forward"), "{logs:?}");

    let text = Env::start("");
    chat(&text, "gpt-oss-20b", false, "hi");
    assert!(eventually(5, || text.proxy.log().contains("request")));
    assert!(!text.proxy.log().contains('\u{1b}'), "escape codes in a piped log: {:?}", text.proxy.log());
}

fn summary_lines(log: &str) -> Vec<Value> {
    json_lines(log, "log").into_iter().filter(|l| l["message"] == "request").collect()
}

/// Regression: a request that failed before streaming, or a forwarded one, left no summary
/// line, so an operator could not see it had failed.
#[test]
fn every_request_gets_one_summary_line_whatever_its_fate() {
    // Unreachable upstream: a 502 after the retries.
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    std::fs::write(dir.path().join("proxy.toml"), config(&dead, "log_format = \"json\"")).unwrap();
    let proxy = spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", false, "hi"));
    assert_eq!(r.status, 502, "{}", r.text());
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(eventually(5, || summary_lines(&proxy.log()).iter().any(|l| l["request_id"] == rid.as_str())), "{}", proxy.log());
    let line = summary_lines(&proxy.log()).into_iter().find(|l| l["request_id"] == rid.as_str()).unwrap();
    assert_eq!(line["status"], 502);
    assert_eq!(line["route"], "routes[3]:harmony");
    assert_eq!(line["attempts"], 4, "3 retries: {line}");
    assert!(line["duration_ms"].is_u64());

    // A forwarded request and a client that goes away mid-stream.
    let env = Env::with_config(|mock| config(mock, "log_format = \"json\""));
    let r = send(client().get(env.url("/v1/models")).header("x-request-id", "fwd-1"));
    assert_eq!(r.status, 200);
    let slow = script(serde_json::json!({"text": "<|channel|>final<|message|>one two three four five six seven eight nine ten", "delay_ms": 200}));
    let mut resp = client().post(env.url("/v1/chat/completions")).header("x-request-id", "gone-1").json(&chat_body("gpt-oss", true, &slow)).send().unwrap();
    let mut buf = [0u8; 64];
    use std::io::Read as _;
    let n = resp.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(resp);
    assert!(
        eventually(10, || {
            let lines = summary_lines(&env.proxy.log());
            lines.iter().any(|l| l["request_id"] == "fwd-1") && lines.iter().any(|l| l["request_id"] == "gone-1")
        }),
        "{}",
        env.proxy.log()
    );
    let lines = summary_lines(&env.proxy.log());
    let fwd = lines.iter().find(|l| l["request_id"] == "fwd-1").unwrap();
    assert_eq!((fwd["route"].as_str(), fwd["status"].as_u64(), fwd["path"].as_str()), (Some("forward"), Some(200), Some("/v1/models")));
    let gone = lines.iter().find(|l| l["request_id"] == "gone-1").unwrap();
    assert_eq!(gone["status"], 499, "{gone}");
    assert!(gone["bytes_sent"].as_u64().unwrap() > 0, "{gone}");
    assert_eq!(lines.iter().filter(|l| l["request_id"] == "gone-1").count(), 1, "exactly one line");
}

/// Regression: a self-signed server certificate made the way `openssl req -x509` makes it
/// (marked as a CA) was refused as `ca_file` with `CaUsedAsEndEntity`, though curl and the
/// OpenAI SDKs accept it.
#[test]
fn a_self_signed_ca_marked_certificate_works_as_ca_file_and_tls_insecure_skips_checks() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("up.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("up.key"), key.serialize_pem()).unwrap();
    let mock = spawn(&["mock-upstream", "--port", "0", "--tls-cert", "up.pem", "--tls-key", "up.key"], dir.path(), &[]);
    let stages = r#"{ type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }"#;
    for (extra, works) in [("ca_file = \"up.pem\"", true), ("tls_insecure = true", true), ("", false)] {
        std::fs::write(dir.path().join("proxy.toml"), one_pipeline(&mock.url, &format!("{extra}\nconnect_timeout = \"2s\""), stages)).unwrap();
        let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
        let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("m", false, "hi"));
        if works {
            assert_eq!(r.status, 200, "{extra}: {}", r.text());
            assert_eq!(r.assemble(false).content, "Hello! How can I help you today?");
        } else {
            assert_eq!(r.status, 502, "{}", r.text());
            assert!(r.text().contains("certificate"), "the error names the reason: {}", r.text());
        }
        if extra.starts_with("tls_insecure") {
            assert!(proxy.log().contains("tls_insecure = true"), "a warning at start: {}", proxy.log());
        }
    }
}

#[test]
fn a_dotenv_file_configures_the_proxy_like_the_python_one_did() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path());
    // The seed's variables, no proxy.toml: the embedded config reads them.
    std::fs::write(
        dir.path().join(".env"),
        format!("# migrated from the Python proxy\nUPSTREAM_BASE_URL={}/v1\nexport PROXY_MODE=openai_tool_calls\nREAD_TIMEOUT=30\nMAX_RETRIES='1'\n", mock.url),
    )
    .unwrap();
    let proxy = spawn(&["--port", "0"], dir.path(), &[]);
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", true, "scenario:weather"));
    assert_eq!(r.assemble(true).tool_calls[0].1, "get_weather", "{}", r.text());

    // The real environment wins over the file.
    let proxy = spawn(&["--port", "0"], dir.path(), &[("PROXY_MODE", "final_only")]);
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", true, "scenario:weather"));
    assert!(r.assemble(true).tool_calls.is_empty());

    // --env-file names another file; a malformed line is an error naming the line.
    std::fs::write(dir.path().join("bad.env"), "UPSTREAM_BASE_URL=http://x/v1\nnot a setting\n").unwrap();
    let out = Command::new(BIN).args(["--env-file", "bad.env", "check"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.env:2: expected KEY=value"), "{err}");
    let out = Command::new(BIN).args(["check", "--env-file", "missing.env"]).current_dir(dir.path()).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("missing.env"));
}

#[test]
fn init_writes_a_config_that_passes_check_for_every_client_kind() {
    for kind in ["roo", "cline", "continue", "sdk", "codex", "claude-code", "opencode", "kilo", "qwen", "aider"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN).args(["init", "--upstream", "http://127.0.0.1:8080/v1", "--for", kind]).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        if ["opencode", "kilo", "qwen", "aider"].contains(&kind) {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("http://127.0.0.1:8001/v1"), "{kind}: {said}");
            if kind != "aider" {
                // The agent's own config is JSON that parses.
                let json: String = said.lines().skip_while(|l| !l.starts_with('{')).take_while(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
                serde_json::from_str::<serde_json::Value>(&json).unwrap_or_else(|e| panic!("{kind}: {e}\n{json}"));
            }
        }
        if kind == "claude-code" {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:8001\n"), "{said}");
        }
        if kind == "codex" {
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains("wire_api = \"responses\"") && said.contains("base_url = \"http://127.0.0.1:8001/v1\""), "{said}");
        }
        let text = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
        assert!(text.contains("http://127.0.0.1:8080/v1") && text.lines().filter(|l| l.starts_with('#')).count() > 3, "{text}");
        let (ok, out) = check(&["--config", "proxy.toml"], dir.path());
        assert!(ok && !out.contains("warning"), "{kind}: {out}");
        // It never overwrites without --force.
        let again = Command::new(BIN).args(["init", "--upstream", "http://h:1/v1", "--for", kind]).current_dir(dir.path()).output().unwrap();
        assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    }
}

#[test]
fn doctor_tells_a_raw_harmony_upstream_from_a_parsing_one() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expect, advice) in [
        (vec!["mock-upstream", "--port", "0"], "raw Harmony", "never `passthrough`"),
        (vec!["mock-upstream", "--port", "0", "--parsed"], "parses Harmony itself", "`passthrough` is enough"),
    ] {
        let mock = spawn(&args, dir.path(), &[]);
        let out = Command::new(BIN).args(["doctor", "--upstream", &format!("{}/v1", mock.url)]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let responses = "ok    /v1/responses: the answer round-trips as a well-formed event stream (reasoning and an answer, ends completed)";
        let messages = "ok    /v1/messages: the answer round-trips as a well-formed event stream (reasoning and an answer, ends end_turn)";
        for needle in ["reachable: GET /models answered 200", "models: gpt-oss-20b", "one-token request", expect, advice, responses, messages] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
    }
    let dead = format!("http://127.0.0.1:{}/v1", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let out = Command::new(BIN).args(["doctor", "--upstream", &dead]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  reachable"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The parsed mock streams what llama-server's parser sends, so pipelines meet that shape
/// end to end too: reasoning in its own field, tool calls with ids that lack `call_`.
#[test]
fn the_parsed_mock_reads_like_llama_server_and_the_proxy_reshapes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = spawn(&["mock-upstream", "--port", "0", "--parsed"], dir.path(), &[]);
    let raw = post(&format!("{}/v1/chat/completions", mock.url), &chat_body("m", true, "scenario:weather")).text();
    assert!(raw.contains("\"reasoning_content\"") && raw.contains("\"tool_calls\"") && !raw.contains("<|"), "{raw}");
    std::fs::write(dir.path().join("proxy.toml"), config(&mock.url, "")).unwrap();
    let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("ide-gpt-oss", true, "scenario:weather"));
    let a = r.assemble(true);
    assert_eq!(a.reasoning, "Need the weather tool for Paris.");
    assert_eq!(a.tool_calls[0].1, "get_weather");
    assert!(a.tool_calls[0].0.starts_with("call_"));
}

fn soft_fd_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_owned(), v[4].to_owned())
}

/// Started as most services start (`ulimit -n` 1024, or lower), the proxy held only a few
/// hundred streams: it now raises its soft limit to the hard one.
#[test]
fn the_soft_file_limit_is_raised_to_the_hard_limit() {
    let env = Env::start("");
    std::fs::copy(env.config_path(), env.dir.path().join("low.toml")).unwrap();
    let proxy = spawn_shell("ulimit -Sn 256 && exec \"$BIN\" serve --config low.toml --port 0", env.dir.path());
    let (soft, hard) = soft_fd_limit(proxy.child.id());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    assert!(proxy.log().contains("soft_limit_before=256"), "{}", proxy.log());
}

/// Out of descriptors, accept fails over and over while the listener stays readable: the
/// proxy backs off instead of spinning, says so at most once a second, and serves again
/// once connections close.
#[test]
fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let env = Env::start("");
    std::fs::copy(env.config_path(), env.dir.path().join("tight.toml")).unwrap();
    let proxy = spawn_shell("ulimit -n 48 && exec \"$BIN\" serve --config tight.toml --port 0", env.dir.path());
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    let held: Vec<std::net::TcpStream> = (0..120).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(!held.is_empty());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    drop(held);
    let a = post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", false, "hi"));
    assert_eq!(a.status, 200, "serves again: {}", a.text());
    let log = proxy.log();
    let lines = log.lines().filter(|l| l.contains("accept failed; backing off")).count();
    assert!(lines >= 1, "the failure is said: {log}");
    assert!(lines <= 4, "at most once a second ({lines} lines in ~2.5 s): {log}");
    assert!(log.contains("out_of_file_descriptors=true"), "{log}");
}

#[test]
fn init_sets_the_agents_context_from_what_the_server_says_and_maps_claude_codes_names() {
    // llama-server says its context in /props; vLLM in /models (max_model_len) beside the
    // one name it serves.
    for (mock_args, model) in
        [(vec!["--n-ctx", "8192"], "gpt-oss-20b"), (vec!["--n-ctx", "8192", "--served-model", "openai/gpt-oss-120b"], "openai/gpt-oss-120b")]
    {
        let dir = tempfile::tempdir().unwrap();
        let mock = spawn(&[&["mock-upstream", "--port", "0"], &mock_args[..]].concat(), dir.path(), &[]);
        let upstream = format!("{}/v1", mock.url);
        let out = Command::new(BIN).args(["init", "--upstream", &upstream, "--for", "codex"]).current_dir(dir.path()).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains(&format!("the server serves {model} with a context of 8192 tokens")), "{said}");
        assert!(said.contains("model_context_window = 8192\n") && said.contains("model_auto_compact_token_limit = 7371\n"), "{said}");
        let catalog: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("codex-models.json")).unwrap()).unwrap();
        let entry = &catalog["models"][0];
        assert_eq!(
            (entry["slug"].as_str(), entry["context_window"].as_u64(), entry["apply_patch_tool_type"].as_str()),
            (Some(model), Some(8192), Some("freeform"))
        );
        let catalog_path = std::fs::canonicalize(dir.path().join("codex-models.json")).unwrap();
        assert!(said.contains(&format!("model_catalog_json = \"{}\"", catalog_path.display())), "{said}");

        std::fs::remove_file(dir.path().join("proxy.toml")).unwrap();
        let out = Command::new(BIN).args(["init", "--upstream", &upstream, "--for", "claude-code"]).current_dir(dir.path()).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("export CLAUDE_CODE_MAX_CONTEXT_TOKENS=8192 ") && said.contains(&format!("export ANTHROPIC_MODEL={model}\n")), "{said}");
        let text = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
        let claude_route = text.find("models = [\"claude-*\"]").expect("a route for Claude Code's names");
        assert!(claude_route < text.rfind("models = [\"*\"]").unwrap(), "before the catch-all: {text}");
        // The server serves one model: every route sends it (Claude Code's names included).
        assert_eq!(text.matches(&format!("upstream_model = \"{model}\"")).count(), 4, "{text}");
        let (ok, out) = check(&["--config", "proxy.toml"], dir.path());
        assert!(ok && !out.contains("warning"), "{out}");
    }
}
