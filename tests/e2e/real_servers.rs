//! The real-servers suite: the real proxy binary in front of real model servers beside
//! llama.cpp, serving the same script players in their own checkpoint formats (built by
//! tests/real_servers/make_hf.py from the GGUF models' state tables), read by the official
//! OpenAI Python SDK and as raw bytes.
//!
//! ```text
//! tests/real_servers/prepare.sh ─► mlx-lm venv + Hugging Face-format models + manifest
//! this file: for each scenario: mlx_lm.server ─► harmony-proxy ─► client.py / raw reads
//! ```
//! Today: mlx-lm (`mlx[cpu]`). It sends the model's Harmony raw in `content` (no reasoning
//! field, no tool parsing), so what the proxy gives each client is exactly what the model
//! said: the expectations are the scenario's own texts. mlx-lm answers only to the model's
//! path as its name: the routes say so with `upstream_model`.
//!
//! Without `prepare.sh` these tests print one line saying how to prepare and pass; under CI
//! (`CI` set) or `HARMONY_PROXY_REAL_LLAMA=required` they fail instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::real_llama::{cache_dir, free_port, required, run_cases, Case, Got, Scenario};

struct Mlx {
    python: PathBuf,
    hub_cache: PathBuf,
    models: serde_json::Map<String, Value>,
}

fn load() -> Result<Mlx, String> {
    let path = cache_dir().join("real-servers/manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("no {} ({e})", path.display()))?;
    let m: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mlx = &m["mlx"];
    let python = PathBuf::from(mlx["python"].as_str().ok_or("manifest: no mlx python")?);
    if !python.exists() {
        return Err(format!("{} is missing", python.display()));
    }
    let models = mlx["models"].as_object().cloned().ok_or("manifest: no mlx models")?;
    Ok(Mlx { python, hub_cache: PathBuf::from(mlx["hub_cache"].as_str().unwrap_or("/tmp")), models })
}

fn mlx() -> Option<&'static Mlx> {
    static M: OnceLock<Option<Mlx>> = OnceLock::new();
    M.get_or_init(|| match load() {
        Ok(m) => Some(m),
        Err(why) => {
            if required() {
                panic!("the real-servers suite is not prepared: {why}. Run `bash tests/real_servers/prepare.sh`.");
            }
            let _ = writeln!(std::io::stderr(), "real-servers tests skipped ({why}); prepare them with `bash tests/real_servers/prepare.sh`");
            None
        }
    })
    .as_ref()
}

/// A running `mlx_lm.server`, stopped when dropped (and killed with the test process).
struct MlxServer {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for MlxServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MlxServer {
    fn start(m: &Mlx, model: &Path, dir: &Path) -> MlxServer {
        let port = free_port();
        let log = dir.join(format!("mlx-{port}.log"));
        let mut cmd = Command::new(&m.python);
        cmd.args(["-m", "mlx_lm.server", "--model", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
            // Offline; and an existing hub cache, without which `/v1/models` crashes.
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &m.hub_cache)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("mlx-{port}.err"))).unwrap());
        let child = spawn_child(cmd).expect("start mlx_lm.server");
        let mut s = MlxServer { child, url: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("mlx_lm.server exited ({status}): {}", s.logs());
            }
            if client().get(format!("{}/v1/models", s.url)).send().is_ok_and(|r| r.status().is_success()) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("mlx_lm.server not ready within 120 s: {}", s.logs());
    }

    fn logs(&self) -> String {
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail = |s: &str| s.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("{}\n{}", tail(&out), tail(&err))
    }
}

/// A proxy in front of `server`, every route sending the model's path as its name: `native-*`
/// chat models through harmony-render on `/v1/completions` with the prompt as text (mlx-lm
/// takes no token ids), `ide-*` through `ide-tools`, the rest through `harmony`; Responses
/// and Messages through their built-in pipelines.
fn proxy_for(server: &MlxServer, model: &Path, dir: &Path) -> Proc {
    let m = toml::Value::String(model.display().to_string());
    let route = |path: &str, models: &str, pipeline: &str| {
        format!("[[routes]]\npath = \"{path}\"\nmodels = [\"{models}\"]\nupstream = \"default\"\npipeline = \"{pipeline}\"\nupstream_model = {m}\n\n")
    };
    let native = "[pipelines.native-text]\nstages = [{ type = \"history-clean\" }, { type = \"harmony-render\", prompt = \"text\" }, { type = \"harmony-parse\" }, { type = \"fallback\" }, { type = \"reasoning-memory\" }, { type = \"tool-bridge\", mode = \"openai_tool_calls\", reasoning = \"reasoning_content\", preambles = \"content\" }, { type = \"sse-encode\" }]\n\n";
    let cfg = format!(
        "[upstreams.default]\nurl = \"{}/v1\"\nread_timeout = \"60s\"\n\n{native}{}{}{}{}{}",
        server.url,
        route("/v1/chat/completions", "native-*", "native-text"),
        route("/v1/chat/completions", "ide-*", "ide-tools"),
        route("/v1/chat/completions", "*", "harmony"),
        route("/v1/responses", "*", "ide-tools"),
        route("/v1/messages", "*", "ide-tools"),
    );
    std::fs::write(dir.join("proxy.toml"), cfg).unwrap();
    spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir, &[])
}

/// What a chat client gets from a server that leaves the model's Harmony intact: through
/// `ide-tools` all of it (the preamble as content), through `harmony` the answer alone.
fn expected(sc: &Scenario, ide: bool) -> Got {
    if !ide {
        return Got { content: sc.final_text.to_owned(), reasoning: String::new(), tools: Vec::new(), finish: "stop".into() };
    }
    let tools: Vec<(String, String)> = sc.tool.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
    let finish = if tools.is_empty() { "stop" } else { "tool_calls" };
    Got { content: format!("{}{}", sc.preamble, sc.final_text), reasoning: sc.reasoning.to_owned(), tools, finish: finish.into() }
}

/// Every scenario on a real mlx-lm: chat through `ide-tools` (with and without tools),
/// `harmony` and `native` with a text prompt, streamed and not (the SDK's view compared
/// exactly, every stream's raw bytes checked against the client contract), and the
/// Responses and Messages answers.
#[test]
fn every_scenario_on_a_real_mlx_lm_server_comes_out_exact_on_every_api() {
    let Some(h) = crate::real_llama::harness() else { return };
    let Some(m) = mlx() else { return };
    let user = h.scenarios["user"].as_str().unwrap();
    let tools_decl = &h.scenarios["tools"];
    let mut failures = Vec::new();
    for (name, v) in h.scenarios["scenarios"].as_object().unwrap() {
        let sc = Scenario::from(v);
        let model = PathBuf::from(m.models[name].as_str().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let server = MlxServer::start(m, &model, dir.path());
        let proxy = proxy_for(&server, &model, dir.path());
        let mut requests = Vec::new();
        let mut cases = Vec::new();
        // What mlx-lm's shape can break: `ide-tools` every way; `harmony` and `native` (its
        // prompt is the proxy's, so `tools` changes only the prompt) with tools, both ways.
        let matrix: [(&str, &str, bool, &[bool]); 3] = [
            ("ide-tools", "ide-gpt-oss", true, &[true, false]),
            ("harmony", "gpt-oss", false, &[true]),
            ("native (text prompt)", "native-gpt-oss", true, &[true]),
        ];
        for (pipeline, model, ide, tool_cases) in matrix {
            for &tools in tool_cases {
                for stream in [true, false] {
                    let case = format!("{name} mlx-lm {pipeline} tools={tools} stream={stream}");
                    let mut body = json!({"model": model, "stream": stream, "temperature": 0, "max_tokens": 200,
                                          "messages": [{"role": "user", "content": user}]});
                    if tools {
                        body["tools"] = tools_decl.clone();
                    }
                    requests.push(json!({"name": case, "body": body}));
                    cases.push((case, ide, stream, body));
                }
            }
        }
        let cases: Vec<Case> = cases.into_iter().map(|(name, ide, stream, body)| Case { name, want: expected(&sc, ide), stream, body }).collect();
        failures.extend(run_cases(&proxy.url, requests, &cases));
        // Responses: reasoning, the answer (a preamble is a message of its own), the call.
        let r = post(
            &format!("{}/v1/responses", proxy.url),
            &json!({"model": "gpt-oss", "input": user, "tools": [{"type": "function", "name": "get_weather", "parameters": tools_decl[0]["function"]["parameters"]}], "max_output_tokens": 200}),
        );
        let out = r.json()["output"].as_array().cloned().unwrap_or_default();
        let text = |t: &str| -> String { out.iter().filter(|i| i["type"] == t).map(|i| i["content"][0]["text"].as_str().unwrap_or("").to_owned()).collect() };
        let call = out
            .iter()
            .find(|i| i["type"] == "function_call")
            .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c["arguments"].as_str().unwrap_or("").to_owned()));
        let want_call = sc.tool.map(|(n, a)| (n.to_owned(), a.to_owned()));
        if (text("reasoning"), text("message"), call.clone()) != (sc.reasoning.to_owned(), format!("{}{}", sc.preamble, sc.final_text), want_call.clone()) {
            failures.push(format!("{name} mlx-lm responses: {}", r.text()));
        }
        // Messages: thinking, text blocks, tool_use.
        let r = post(
            &format!("{}/v1/messages", proxy.url),
            &json!({"model": "claude-x", "max_tokens": 200, "tools": [{"name": "get_weather", "input_schema": tools_decl[0]["function"]["parameters"]}], "messages": [{"role": "user", "content": user}]}),
        );
        let blocks = r.json()["content"].as_array().cloned().unwrap_or_default();
        let of = |t: &str, k: &str| -> String { blocks.iter().filter(|b| b["type"] == t).map(|b| b[k].as_str().unwrap_or("").to_owned()).collect() };
        let tool_use = blocks.iter().find(|b| b["type"] == "tool_use").map(|b| (b["name"].as_str().unwrap_or("").to_owned(), b["input"].to_string()));
        let want_use = sc.tool.map(|(n, a)| (n.to_owned(), serde_json::from_str::<Value>(a).unwrap().to_string()));
        if (of("thinking", "thinking"), of("text", "text"), tool_use) != (sc.reasoning.to_owned(), format!("{}{}", sc.preamble, sc.final_text), want_use) {
            failures.push(format!("{name} mlx-lm messages: {}", r.text()));
        }
        if !failures.is_empty() {
            failures.push(format!("mlx_lm.server log tail ({name}):\n{}\nproxy log:\n{}", server.logs(), proxy.log()));
            break;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The effort player on mlx-lm: the effort reaches its chat template (mlx-lm renders
/// `chat_template_kwargs`, which the proxy fills from every API's effort).
#[test]
fn high_effort_reaches_a_real_mlx_lm_servers_template() {
    let Some(h) = crate::real_llama::harness() else { return };
    let Some(m) = mlx() else { return };
    let model = PathBuf::from(m.models["effort"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = MlxServer::start(m, &model, dir.path());
    let proxy = proxy_for(&server, &model, dir.path());
    let e = &h.scenarios["effort"];
    let user = h.scenarios["user"].as_str().unwrap();
    for (effort, want) in [(Some("high"), &e["high"]["final"]), (None, &e["other"]["final"])] {
        let mut body = json!({"model": "gpt-oss", "max_tokens": 100, "temperature": 0, "messages": [{"role": "user", "content": user}]});
        if let Some(x) = effort {
            body["reasoning_effort"] = json!(x);
        }
        let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
        assert_eq!(&r.json()["choices"][0]["message"]["content"], want, "effort {effort:?}: {}\n{}", r.text(), server.logs());
    }
}
