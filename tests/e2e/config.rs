//! Issue: declarative pipelines per route and model, validated, hot-reloaded without
//! dropping a request.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::common::*;

fn write_atomically(path: &Path, text: &str) {
    // What editors do: write a temp file, then rename it over the original.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config_with_mode(mock: &str, mode: &str) -> String {
    one_pipeline(mock, "", &format!(r#"{{ type = "harmony-parse" }}, {{ type = "tool-bridge", mode = "{mode}" }}, {{ type = "sse-encode" }}"#))
}

fn tool_calls_now(env: &Env) -> usize {
    chat(env, "m", true, "scenario:weather").tool_calls.len()
}

fn metric(env: &Env, line_start: &str) -> f64 {
    let text = send(client().get(env.url("/metrics"))).text();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[test]
fn routes_pick_pipelines_by_model_glob() {
    let env = shared();
    assert_eq!(chat(env, "gpt-oss-20b", true, "scenario:weather").tool_calls.len(), 0);
    assert_eq!(chat(env, "ide-gpt-oss-20b", true, "scenario:weather").tool_calls.len(), 1);
    assert!(chat(env, "text-gpt-oss-20b", true, "scenario:weather").content.contains("[tool:get_weather]"));
    let m = send(client().get(env.url("/metrics"))).text();
    assert!(m.contains("harmony_proxy_requests_total{route=\"routes[1]:ide-tools\",mode=\"openai_tool_calls\",stream=\"true\",api=\"chat\"}"), "{m}");
}

#[test]
fn an_edit_applies_to_the_next_request_and_streams_in_flight_keep_their_config() {
    let env = Env::with_config(|mock| config_with_mode(mock, "final_only"));
    let pid = env.proxy.child.id();
    assert_eq!(tool_calls_now(&env), 0);

    // A slow stream starts on the old config…
    let slow = script(
        json!({"text": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\", \"unit\": \"celsius\"}", "delay_ms": 150}),
    );
    let mut inflight = client().post(env.url("/v1/chat/completions")).json(&chat_body("m", true, &slow)).send().unwrap();

    // …the file is replaced by rename…
    write_atomically(&env.config_path(), &config_with_mode(&env.mock.url, "openai_tool_calls"));
    assert!(eventually(5, || tool_calls_now(&env) == 1), "the new mode never applied: {}", env.proxy.log());

    // …and the stream in flight finishes on the old pipeline, unharmed.
    let mut body = Vec::new();
    inflight.read_to_end(&mut body).unwrap();
    let a = harmony_filters::testing::assemble_sse(&body).unwrap();
    assert_eq!((a.tool_calls.len(), a.finish.as_str(), a.error), (0, "stop", None));
    assert_eq!(env.proxy.child.id(), pid, "same process");
    assert!(metric(&env, "harmony_proxy_config_reloads_total{result=\"ok\"}") >= 1.0);
}

#[test]
fn an_invalid_edit_is_rejected_and_the_old_config_keeps_serving() {
    let env = Env::with_config(|mock| config_with_mode(mock, "openai_tool_calls"));
    write_atomically(&env.config_path(), &format!("bogus = 1\n{}", config_with_mode(&env.mock.url, "no_such_mode")));
    assert!(eventually(5, || metric(&env, "harmony_proxy_config_reloads_total{result=\"error\"}") >= 1.0), "{}", env.proxy.log());
    assert_eq!(tool_calls_now(&env), 1, "still the old pipeline");
    let log = env.proxy.log();
    assert!(log.contains("unknown top-level key `bogus`") && log.contains("unknown variant `no_such_mode`"), "{log}");
}

#[test]
fn pipeline_files_symlink_swaps_and_sighup_reload() {
    // A Kubernetes-style layout: proxy.toml -> ..data/proxy.toml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path());
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    let mock_url = mock.url.clone();
    let cfg = |pipeline: &str| config_with_mode(&mock_url, "final_only").replace("pipeline = \"main\"", &format!("pipeline = \"{pipeline}\""));
    std::fs::write(v1.join("proxy.toml"), cfg("main")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/proxy.toml", dir.path().join("proxy.toml")).unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    let proxy = spawn(&["--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let env = Env { dir, mock, proxy };
    assert_eq!(tool_calls_now(&env), 0);

    // Swap the data directory: the route now names a pipeline from pipelines/.
    let pipeline = "stages = [{ type = \"harmony-parse\" }, { type = \"tool-bridge\", mode = \"openai_tool_calls\" }, { type = \"sse-encode\" }]\n";
    std::fs::write(env.dir.path().join("pipelines/agents.toml"), pipeline).unwrap();
    let v2 = env.dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("proxy.toml"), cfg("agents")).unwrap();
    std::os::unix::fs::symlink("..v2", env.dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(env.dir.path().join("..data_tmp"), env.dir.path().join("..data")).unwrap();
    assert!(eventually(5, || tool_calls_now(&env) == 1), "{}", env.proxy.log());

    // Editing the pipeline file alone reloads too.
    write_atomically(&env.dir.path().join("pipelines/agents.toml"), &pipeline.replace("openai_tool_calls", "final_only"));
    assert!(eventually(5, || tool_calls_now(&env) == 0), "{}", env.proxy.log());

    // SIGHUP reloads on demand.
    let before = metric(&env, "harmony_proxy_config_reloads_total{result=\"ok\"}");
    assert!(Command::new("kill").args(["-HUP", &env.proxy.child.id().to_string()]).status().unwrap().success());
    assert!(eventually(5, || metric(&env, "harmony_proxy_config_reloads_total{result=\"ok\"}") > before));
}

#[test]
fn listen_changes_need_a_restart() {
    let env = Env::with_config(|mock| config_with_mode(mock, "final_only"));
    write_atomically(&env.config_path(), &format!("[server]\nlisten = \"127.0.0.1:1\"\n{}", config_with_mode(&env.mock.url, "openai_tool_calls")));
    assert!(eventually(5, || env.proxy.log().contains("takes effect after a restart")), "{}", env.proxy.log());
    assert_eq!(tool_calls_now(&env), 1, "the rest of the edit applied");
}

#[test]
fn check_lists_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        r#"
[server]
listen = "not an address"
[upstreams.default]
url = "http://127.0.0.1:8080/v1"
read_timeout = "forever"
[[routes]]
path = "/v1/chat/completions"
upstream = "elsewhere"
pipeline = "main"
[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "ghost"
[pipelines.main]
stages = [
  { type = "stop-injection", harmony_stops = "maybe" },
  { type = "harmony-parse" },
  { type = "retry", backoff = "5x" },
  { type = "teleport" },
  { type = "sse-encode" },
  { type = "tool-bridge" },
]
"#,
    )
    .unwrap();
    let (ok, out) = check(&["--config", "bad.toml"], dir.path());
    assert!(!ok);
    for expected in [
        "server: listen: invalid address \"not an address\"",
        "upstreams.default: read_timeout: invalid duration \"forever\"",
        "routes[0]: upstream: unknown upstream `elsewhere`",
        "routes[1]: pipeline: unknown pipeline `ghost`",
        "pipelines.main.stages[0] (stop-injection): harmony_stops: invalid boolean \"maybe\"",
        "pipelines.main.stages[2] (retry): backoff: invalid duration \"5x\"",
        "pipelines.main.stages[3] (teleport): unknown stage type `teleport`",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (ok, out) = check(&["--config", "missing.toml"], dir.path());
    assert!(!ok && out.contains("cannot read"), "{out}");
}

#[test]
fn the_shipped_config_and_pipelines_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = check(&["--config", "proxy.toml"], root);
    assert!(ok, "{out}");
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = check(&[], empty.path());
    assert!(ok && out.contains("embedded proxy.toml: ok"), "{out}");
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let cfg = format!(
            "[upstreams.default]\nurl = \"http://127.0.0.1:1/v1\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"{name}\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        std::fs::copy(&path, dir.path().join("pipelines").join(path.file_name().unwrap())).unwrap();
        std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
        let (ok, out) = check(&[], dir.path());
        assert!(ok, "pipelines/{name}.toml: {out}");
    }
}

#[test]
fn schema_describes_the_config() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = schema.to_string();
    for needle in ["\"server\"", "\"upstreams\"", "\"routes\"", "\"pipelines\"", "harmony-parse", "no_final_timeout", "openai_tool_calls"] {
        assert!(text.contains(needle), "{needle} missing from the schema");
    }
}
