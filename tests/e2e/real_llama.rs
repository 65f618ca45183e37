//! The real-server suite: the real proxy binary in front of a real llama.cpp `llama-server`
//! serving tiny gpt-oss "script player" models, read by the official OpenAI Python SDK.
//!
//! ```text
//! tests/real_llama/prepare.sh ─► llama-server + models + manifest (cached outside the checkout)
//! this file: for each scenario × server mode: llama-server ─► harmony-proxy ─► client.py (SDK)
//!            and the raw bytes once more through the contract-checking assembler
//! ```
//! Each scenario's model always emits one Harmony text (tests/real_llama/scenarios.json), so
//! what a client must get is known exactly. Where llama-server itself destroys information
//! (a tool call dropped because the request declared no `tools`), the test asserts that
//! documented behaviour and says so.
//!
//! Without `prepare.sh` these tests print one line saying how to prepare and pass; under CI
//! (`CI` set) or `HARMONY_PROXY_REAL_LLAMA=required` they fail instead.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub struct Harness {
    pub server: PathBuf,
    pub random_model: PathBuf,
    pub models: BTreeMap<String, PathBuf>,
    pub scenarios: Value,
}

/// Where the real-server harnesses keep what they build (`$HARMONY_PROXY_TEST_CACHE`).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HARMONY_PROXY_TEST_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/harmony-proxy"),
    }
}

fn load_harness() -> Result<Harness, String> {
    let manifest_path = cache_dir().join("real-llama/manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| format!("no {} ({e})", manifest_path.display()))?;
    let m: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let scenarios_text = std::fs::read_to_string(Path::new(ROOT).join("tests/real_llama/scenarios.json")).map_err(|e| e.to_string())?;
    let scenarios: Value = serde_json::from_str(&scenarios_text).map_err(|e| e.to_string())?;
    if m.get("scenarios") != Some(&scenarios) {
        return Err("the models were made for another scenarios.json".into());
    }
    let path = |v: &Value| -> Result<PathBuf, String> {
        let p = PathBuf::from(v.as_str().ok_or("manifest: a path is missing")?);
        if p.exists() {
            Ok(p)
        } else {
            Err(format!("{} is missing", p.display()))
        }
    };
    let mut models = BTreeMap::new();
    for (k, v) in m["models"].as_object().ok_or("manifest: no models")? {
        models.insert(k.clone(), path(v)?);
    }
    python_sdk()?;
    Ok(Harness { server: path(&m["server"])?, random_model: path(&m["random_model"])?, models, scenarios })
}

fn python_sdk() -> Result<(), String> {
    let ok = Command::new("python3").args(["-c", "import openai"]).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err("python3 cannot import openai (pip install -r tests/conformance/requirements.txt)".into())
    }
}

/// Under CI (`CI` set) or `HARMONY_PROXY_REAL_LLAMA=required`, a missing prerequisite fails.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") || std::env::var("HARMONY_PROXY_REAL_LLAMA").is_ok_and(|v| v == "required")
}

/// The prepared harness, or `None` after saying once how to prepare it.
pub fn harness() -> Option<&'static Harness> {
    static H: OnceLock<Option<Harness>> = OnceLock::new();
    H.get_or_init(|| match load_harness() {
        Ok(h) => Some(h),
        Err(why) => {
            if required() {
                panic!("the real-llama-server suite is not prepared: {why}. Run `bash tests/real_llama/prepare.sh`.");
            }
            // Straight to the stream: libtest would swallow an eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "real-llama-server tests skipped ({why}); prepare them with `bash tests/real_llama/prepare.sh`");
            None
        }
    })
    .as_ref()
}

/// A running llama-server, stopped when dropped (and killed with the test process).
pub struct Llama {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Llama {
    pub fn start(h: &Harness, model: &Path, mode: ServerMode, dir: &Path) -> Llama {
        Self::start_with_context(h, model, mode, dir, 4096)
    }

    /// With a context of `n_ctx` tokens (Codex's prompt alone is ~7.5k).
    pub fn start_with_context(h: &Harness, model: &Path, mode: ServerMode, dir: &Path, n_ctx: u64) -> Llama {
        let port = free_port();
        let log = dir.join(format!("llama-{port}.log"));
        let mut cmd = Command::new(&h.server);
        cmd.args(["-m", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &n_ctx.to_string(), "-np", "1", "-t", "2", "--jinja", "--alias", "gpt-oss-tiny", "--no-webui"])
            .args(mode.args())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("llama-{port}.err"))).unwrap());
        let child = spawn_child(cmd).expect("start llama-server");
        let mut l = Llama { child, url: format!("http://127.0.0.1:{port}"), log };
        l.wait_healthy();
        l
    }

    fn wait_healthy(&mut self) {
        let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("llama-server exited ({status}): {}", self.logs());
            }
            if c.get(format!("{}/health", self.url)).send().is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("llama-server not healthy within 120 s: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        let err = self.log.with_extension("err");
        let s = std::fs::read_to_string(&self.log).unwrap_or_default() + &std::fs::read_to_string(err).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// llama-server's default (`--reasoning-format auto`): it parses Harmony itself.
    Default,
    /// `--reasoning-format none`: the analysis channel stays in `content`, markup and all.
    None,
}

impl ServerMode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[],
            Self::None => &["--reasoning-format", "none"],
        }
    }
}

/// The shipped pipelines, chosen by model name (see `common::config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    Harmony,
    IdeTools,
    TextTools,
    Passthrough,
    /// `native`: harmony-render on `/v1/completions`.
    Native,
    /// `native` with `endpoint = "llama"`: llama.cpp's `/completion`, token ids both ways.
    NativeLlama,
}

impl Pipeline {
    pub const ALL: [Pipeline; 6] = [Self::Harmony, Self::IdeTools, Self::TextTools, Self::Passthrough, Self::Native, Self::NativeLlama];
    pub fn model(self) -> &'static str {
        match self {
            Self::Harmony => "gpt-oss-tiny",
            Self::IdeTools => "ide-gpt-oss-tiny",
            Self::TextTools => "text-gpt-oss-tiny",
            Self::Passthrough => "pass-gpt-oss-tiny",
            Self::Native => "native-gpt-oss-tiny",
            Self::NativeLlama => "nllama-gpt-oss-tiny",
        }
    }
    fn renders(self) -> bool {
        matches!(self, Self::Native | Self::NativeLlama)
    }
}

/// The stages of the `native-llama` pipeline (harmony-render on llama.cpp's `/completion`).
/// A tiny model on a loaded 2-core machine (other suites run beside it, and grammar sampling
/// checks every candidate token) can pause for seconds between tokens.
const NATIVE_LLAMA_STAGES: &str = r#"
  { type = "history-clean" },
  { type = "harmony-render", endpoint = "llama" },
  { type = "retry", max_retries = 3, backoff = "500ms" },
  { type = "harmony-parse" },
  { type = "fallback" },
  { type = "reasoning-memory" },
  { type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content", preambles = "content" },
  { type = "watchdog", no_final_timeout = "120s" },
  { type = "sse-encode" },
"#;

/// A proxy in front of `llama`, with the shared test config's routes.
pub fn proxy_for(llama: &Llama, dir: &Path) -> Proc {
    let native_routes = native_routes(NATIVE_LLAMA_STAGES);
    // First match wins: the native routes go before the shared config's catch-all.
    let cfg =
        config(&llama.url, "").replace("read_timeout = \"5s\"", "read_timeout = \"60s\"").replacen("[[routes]]", &format!("{native_routes}\n[[routes]]"), 1);
    std::fs::write(dir.join("proxy.toml"), cfg).unwrap();
    spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir, &[])
}

/// Runs `job` through tests/real_llama/client.py; results by name.
pub fn sdk(job: &Value) -> BTreeMap<String, Value> {
    let mut child = Command::new("python3")
        .arg(Path::new(ROOT).join("tests/real_llama/client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client.py failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("client.py printed {l:?}: {e}"));
            (v["name"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

/// What a client got, in a form one `assert_eq!` can compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub content: String,
    pub reasoning: String,
    /// (name, arguments) of each call.
    pub tools: Vec<(String, String)>,
    pub finish: String,
}

impl Got {
    /// From one SDK result, checking what every answer must satisfy on the way.
    pub fn from_sdk(r: &Value, ctx: &str) -> Got {
        assert_eq!(r["ok"], true, "{ctx}: {r}");
        let calls = r["tool_calls"].as_array().cloned().unwrap_or_default();
        for c in &calls {
            let id = c["id"].as_str().unwrap_or("");
            assert!(id.starts_with("call_") && id.len() > 5, "{ctx}: tool call id {id:?}");
        }
        assert_ne!(r["mixed_chunk"], true, "{ctx}: a chunk carried content and tool_calls together");
        if r.get("ids").is_some() {
            assert_eq!(r["ids"], 1, "{ctx}: one id for the whole stream");
        }
        let reasoning = r["reasoning"].as_str().unwrap_or("").to_owned();
        if !reasoning.is_empty() {
            assert_eq!(r["reasoning_field"], "reasoning_content", "{ctx}");
        }
        Got {
            content: r["content"].as_str().unwrap_or("").to_owned(),
            reasoning,
            tools: calls.iter().map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c["arguments"].as_str().unwrap_or("").to_owned())).collect(),
            finish: r["finish_reason"].as_str().unwrap_or("").to_owned(),
        }
    }
}

/// One scenario of scenarios.json.
pub struct Scenario<'a> {
    pub reasoning: &'a str,
    pub preamble: &'a str,
    pub final_text: &'a str,
    pub tool: Option<(&'a str, &'a str)>,
}

impl<'a> Scenario<'a> {
    pub fn from(v: &'a Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
        Scenario {
            reasoning: s("reasoning"),
            preamble: s("preamble"),
            final_text: s("final"),
            tool: v.get("tool").map(|t| (t["name"].as_str().unwrap(), t["arguments"].as_str().unwrap())),
        }
    }
}

/// What a client must receive for `sc` through `pipeline` from a llama-server in `mode`,
/// with or without `tools` declared in the request.
pub fn expected(sc: &Scenario, mode: ServerMode, pipeline: Pipeline, tools: bool, stream: bool) -> Got {
    let _ = mode;
    if pipeline.renders() {
        // The proxy rendered the prompt and read the raw completion: exactly what the model
        // said, in any server mode, the tool call too when no `tools` were declared, and a
        // preamble known as one (shown as content: `preambles = "content"`).
        let tools_out: Vec<(String, String)> = sc.tool.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
        let finish = if tools_out.is_empty() { "stop" } else { "tool_calls" };
        return Got { content: format!("{}{}", sc.preamble, sc.final_text), reasoning: sc.reasoning.to_owned(), tools: tools_out, finish: finish.to_owned() };
    }
    // llama-server drops a tool call when the request declared no `tools`, in every mode:
    // the call never reaches the proxy, so no pipeline can give it back (only harmony-render,
    // which reads the raw completion, can).
    let tool = if tools { sc.tool } else { None };
    let show_reasoning = matches!(pipeline, Pipeline::IdeTools | Pipeline::Passthrough);
    let shows_preambles = matches!(pipeline, Pipeline::IdeTools | Pipeline::Passthrough);
    // llama-server swallows a preamble's header in every mode: the preamble reaches the proxy
    // as plain answer text. Streamed, it cannot be told from an answer until the call comes
    // (the proxy never holds answer text to find out); non-streamed, text followed by a call
    // is a preamble and follows the pipeline's `preambles`. With the call dropped, it is the
    // answer.
    let mut content = String::new();
    if tool.is_none() || stream || shows_preambles {
        content.push_str(sc.preamble);
    }
    content.push_str(sc.final_text);
    let mut tools_out = Vec::new();
    if let Some((name, args)) = tool {
        match pipeline {
            Pipeline::Harmony => {}
            Pipeline::TextTools => content.push_str(&format!("\n[tool:{name}] {args}\n")),
            Pipeline::IdeTools | Pipeline::Passthrough | Pipeline::Native | Pipeline::NativeLlama => tools_out.push((name.to_owned(), args.to_owned())),
        }
    }
    let finish = if tools_out.is_empty() { "stop" } else { "tool_calls" };
    Got { content, reasoning: if show_reasoning { sc.reasoning.to_owned() } else { String::new() }, tools: tools_out, finish: finish.to_owned() }
}

fn chat_request(model: &str, user: &str, tools: Option<&Value>, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": user}], "stream": stream, "temperature": 0, "max_tokens": 200});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(t) = tools {
        body["tools"] = t.clone();
    }
    body
}

/// One chat request of a matrix and what its client must get.
pub struct Case {
    pub name: String,
    pub want: Got,
    pub stream: bool,
}

/// Sends `requests` (`{name, body}`, one per case) through the SDK to the proxy at `url`, and
/// says each case whose answer differs from its `want`, or whose stream's raw bytes break the
/// client contract.
pub fn run_cases(url: &str, requests: Vec<Value>, cases: &[Case]) -> Vec<String> {
    let results = sdk(&json!({"base_url": format!("{url}/v1"), "requests": requests}));
    let mut failures = Vec::new();
    for c in cases {
        let r = &results[&c.name];
        if r["ok"] != true {
            failures.push(format!("{}: {r}", c.name));
            continue;
        }
        let got = Got::from_sdk(r, &c.name);
        if got != c.want {
            failures.push(format!("{}:\n    got  {got:?}\n    want {:?}", c.name, c.want));
        }
        if c.stream {
            // The bytes the SDK read (client.py keeps them: one Latin-1 character a byte).
            let raw: Vec<u8> = r["raw"].as_str().unwrap_or_else(|| panic!("{}: client.py kept no raw stream", c.name)).chars().map(|ch| ch as u8).collect();
            if let Err(e) = harmony_filters::testing::assemble_sse(&raw) {
                failures.push(format!("{}: raw stream breaks the contract: {e}\n{}", c.name, String::from_utf8_lossy(&raw)));
            }
        }
    }
    failures
}

/// Every scenario in `mode`: each through every shipped pipeline (the rendering ones on the
/// default server only), with and without tools, streamed and not; the SDK's view compared exactly, and every streamed answer's raw bytes
/// checked against the client contract.
fn all_scenarios(mode: ServerMode) {
    let Some(h) = harness() else { return };
    let user = h.scenarios["user"].as_str().unwrap();
    let tools_decl = &h.scenarios["tools"];
    let mut failures = Vec::new();
    for (name, v) in h.scenarios["scenarios"].as_object().unwrap() {
        let sc = Scenario::from(v);
        let dir = tempfile::tempdir().unwrap();
        let llama = Llama::start(h, &h.models[name], mode, dir.path());
        let proxy = proxy_for(&llama, dir.path());
        let mut requests = Vec::new();
        let mut cases = Vec::new();
        for pipeline in Pipeline::ALL {
            // `passthrough` parses no Harmony: in front of a server that sends it raw it is a
            // misconfiguration (`doctor` says so); see passthrough_on_a_raw_server_… below.
            if pipeline == Pipeline::Passthrough && mode == ServerMode::None {
                continue;
            }
            // The proxy renders and reads the raw completion, which `--reasoning-format` does
            // not touch: the default server's run says all there is (the matrix is trimmed to
            // what each server's shape can break).
            if pipeline.renders() && mode == ServerMode::None {
                continue;
            }
            for tools in [true, false] {
                for stream in [true, false] {
                    let case = format!("{name} {mode:?} {pipeline:?} tools={tools} stream={stream}");
                    let body = chat_request(pipeline.model(), user, tools.then_some(tools_decl), stream);
                    requests.push(json!({"name": case, "body": body}));
                    cases.push((case, pipeline, tools, stream));
                }
            }
        }
        let cases: Vec<Case> =
            cases.into_iter().map(|(name, pipeline, tools, stream)| Case { want: expected(&sc, mode, pipeline, tools, stream), name, stream }).collect();
        failures.extend(run_cases(&proxy.url, requests, &cases));
        if !failures.is_empty() {
            failures.push(format!("llama-server log tail ({name}):\n{}\nproxy log:\n{}", llama.logs(), proxy.log()));
            break;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_scenario_through_every_pipeline_on_a_default_llama_server() {
    all_scenarios(ServerMode::Default);
}

#[test]
fn every_scenario_through_every_pipeline_on_a_reasoning_format_none_llama_server() {
    all_scenarios(ServerMode::None);
}

/// An IDE agent's loop through the real chat template: turn 1 ends in a tool call (after
/// reasoning and a preamble); the SDK's own message object goes back with the tool result;
/// turn 2 must answer. llama.cpp's template answers 500 to an assistant turn carrying both
/// content and reasoning beside tool calls (issues #17040, #19701): the proxy repairs that.
fn agent_session(mode: ServerMode) {
    let Some(h) = harness() else { return };
    let a = &h.scenarios["agent"];
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.models["agent"], mode, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    let mut agents = Vec::new();
    for pipeline in [Pipeline::IdeTools, Pipeline::Passthrough, Pipeline::Native, Pipeline::NativeLlama] {
        for stream in [false, true] {
            agents.push(json!({
                "name": format!("agent {mode:?} {pipeline:?} stream={stream}"),
                "model": pipeline.model(), "stream": stream, "user": h.scenarios["user"],
                "tools": h.scenarios["tools"], "tool_result": a["tool_result"],
            }));
        }
    }
    let results = sdk(&json!({"base_url": format!("{}/v1", proxy.url), "agents": agents}));
    let mut failures = Vec::new();
    for (name, r) in &results {
        if r["ok"] != true {
            failures.push(format!("{name}: {r}"));
            continue;
        }
        let t1 = Got::from_sdk(&r["turn1"], name);
        assert_eq!(t1.tools, [(a["tool"]["name"].as_str().unwrap().to_owned(), a["tool"]["arguments"].as_str().unwrap().to_owned())], "{name}");
        let t2 = Got::from_sdk(&r["turn2"], name);
        if t2.content != a["final"].as_str().unwrap() || t2.finish != "stop" || !t2.tools.is_empty() {
            failures.push(format!("{name}: turn 2 got {t2:?}; turn 1 sent back {}", r["sent"]));
        }
    }
    assert!(failures.is_empty(), "{}\nllama-server:\n{}\nproxy:\n{}", failures.join("\n"), llama.logs(), proxy.log());
}

#[test]
fn a_two_turn_agent_session_succeeds_on_a_default_llama_server() {
    agent_session(ServerMode::Default);
}

#[test]
fn a_two_turn_agent_session_succeeds_on_a_reasoning_format_none_llama_server() {
    agent_session(ServerMode::None);
}

/// Output the server cannot parse as Harmony (a random model, no grammar) makes llama-server
/// send the role chunk, an in-band `{"error":…}` frame and no `[DONE]`: the client still gets
/// an error event and exactly one `[DONE]` when streaming, and an HTTP error otherwise.
#[test]
fn an_in_band_error_without_done_still_ends_the_stream_properly() {
    let Some(h) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.random_model, ServerMode::Default, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    let url = format!("{}/v1/chat/completions", proxy.url);
    let body = |stream| json!({"model": "gpt-oss-tiny", "stream": stream, "max_tokens": 8, "temperature": 0, "seed": 1, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&url, &body(true));
    assert_eq!(r.status, 200);
    let a = r.assemble(true); // checks the single [DONE]
    assert!(a.error.as_deref().is_some_and(|e| e.contains("does not match")), "{}", r.text());
    let r = post(&url, &body(false));
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("does not match"), "{}", r.text());
}

/// A prompt longer than llama-server's context (`-c 512`): llama-server answers 400
/// `exceed_context_size_error`, and each API's client gets the error its agents act on, on
/// the chat endpoint and on `/completion` (harmony-render) alike.
#[test]
fn a_prompt_longer_than_the_real_servers_context_is_each_apis_context_error() {
    let Some(h) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start_with_context(h, &h.random_model, ServerMode::Default, dir.path(), 512);
    let proxy = proxy_for(&llama, dir.path());
    let long = "word ".repeat(1500);
    for model in ["gpt-oss-tiny", "nllama-gpt-oss-tiny"] {
        let r = post(&format!("{}/v1/chat/completions", proxy.url), &json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": long}]}));
        assert_eq!(r.status, 400, "{model}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "context_length_exceeded", "{model}: {}", r.text());
        assert!(e["message"].as_str().unwrap().contains("maximum context length is 512 tokens"), "{model}: {}", r.text());
    }
    let r = post(&format!("{}/v1/messages", proxy.url), &json!({"model": "gpt-oss-tiny", "max_tokens": 8, "messages": [{"role": "user", "content": long}]}));
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("prompt is too long: ") && msg.ends_with(" tokens > 512 maximum"), "{msg}");
    let r = post(&format!("{}/v1/responses", proxy.url), &json!({"model": "gpt-oss-tiny", "stream": true, "input": long}));
    let text = r.text();
    assert!(text.contains("\"type\":\"response.failed\"") && text.contains("\"code\":\"context_length_exceeded\""), "{text}");
}

/// The effort player answers "Thought hard." only when the prompt says `Reasoning: high`:
/// every way a client asks for an effort reaches the model, on every way to the model (the
/// chat endpoint's template, and the prompt harmony-render writes for `/v1/completions` and
/// `/completion`), and a route's default applies when the request says none.
#[test]
fn every_way_of_asking_for_high_effort_reaches_the_real_model() {
    let Some(h) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.models["effort"], ServerMode::Default, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    // A route whose default effort is high, first in the config.
    let cfg = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap().replacen(
        "[[routes]]",
        "[[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"deep-*\"]\nupstream = \"default\"\npipeline = \"harmony\"\nupstream_model = \"gpt-oss-tiny\"\nreasoning_effort = \"high\"\n\n[[routes]]",
        1,
    );
    std::fs::write(dir.path().join("routed.toml"), cfg).unwrap();
    let routed = spawn(&["serve", "--config", "routed.toml", "--port", "0"], dir.path(), &[]);
    let e = &h.scenarios["effort"];
    let (hard, brief) = (e["high"]["final"].as_str().unwrap(), e["other"]["final"].as_str().unwrap());
    let user = h.scenarios["user"].as_str().unwrap();
    let chat = |url: &str, model: &str, effort: Option<&str>| {
        let mut body = json!({"model": model, "max_tokens": 100, "temperature": 0, "messages": [{"role": "user", "content": user}]});
        if let Some(e) = effort {
            body["reasoning_effort"] = json!(e);
        }
        let r = post(&format!("{url}/v1/chat/completions"), &body);
        assert_eq!(r.status, 200, "{model} {effort:?}: {}", r.text());
        r.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
    };
    for model in ["gpt-oss-tiny", "native-gpt-oss-tiny", "nllama-gpt-oss-tiny"] {
        assert_eq!(chat(&proxy.url, model, Some("high")), hard, "{model}: reasoning_effort high");
        assert_eq!(chat(&proxy.url, model, Some("low")), brief, "{model}: reasoning_effort low");
        assert_eq!(chat(&proxy.url, model, None), brief, "{model}: no effort");
    }
    assert_eq!(chat(&routed.url, "deep-think", None), hard, "the route's default");
    assert_eq!(chat(&routed.url, "deep-think", Some("low")), brief, "the request's own effort wins over the route's");
    let r = post(
        &format!("{}/v1/responses", proxy.url),
        &json!({"model": "gpt-oss-tiny", "input": user, "reasoning": {"effort": "high"}, "max_output_tokens": 100}),
    );
    let text: String = r.json()["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .map(|i| i["content"][0]["text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(text, hard, "Responses reasoning.effort: {}", r.text());
    let r = post(
        &format!("{}/v1/messages", proxy.url),
        &json!({"model": "gpt-oss-tiny", "max_tokens": 100, "output_config": {"effort": "high"}, "messages": [{"role": "user", "content": user}]}),
    );
    let text: String =
        r.json()["content"].as_array().unwrap().iter().filter(|b| b["type"] == "text").map(|b| b["text"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(text, hard, "Messages output_config.effort: {}", r.text());
    // Messages' thinking budget: 16384 tokens and more is high.
    let r = post(
        &format!("{}/v1/messages", proxy.url),
        &json!({"model": "gpt-oss-tiny", "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 16384}, "messages": [{"role": "user", "content": user}]}),
    );
    let text: String =
        r.json()["content"].as_array().unwrap().iter().filter(|b| b["type"] == "text").map(|b| b["text"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(text, hard, "Messages thinking.budget_tokens: {}", r.text());
}

/// `tool_choice: "required"` on llama.cpp's `/completion` is a grammar (reasoning allowed,
/// then only a call): llama-server takes it, and a model that reasons and calls still does
/// exactly that. (That it forbids a prose answer is llama.cpp's grammar at work; a script
/// player pushed off its script only babbles, so that half is shown against the mock.)
#[test]
fn a_required_tool_choice_on_the_real_llama_endpoint_is_a_grammar_that_leaves_the_reasoning() {
    let Some(h) = harness() else { return };
    let user = h.scenarios["user"].as_str().unwrap();
    let tools = &h.scenarios["tools"];
    let sc = &h.scenarios["scenarios"]["reasoning_tool"];
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.models["reasoning_tool"], ServerMode::Default, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    let body = json!({"model": "nllama-gpt-oss-tiny", "max_tokens": 200, "temperature": 0, "tools": tools, "tool_choice": "required",
                      "messages": [{"role": "user", "content": user}]});
    let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let m = &r.json()["choices"][0];
    assert_eq!(m["message"]["reasoning_content"], sc["reasoning"], "{}", r.text());
    assert_eq!(m["message"]["tool_calls"][0]["function"]["name"], sc["tool"]["name"], "{}", r.text());
    assert_eq!(
        (m["message"]["tool_calls"][0]["function"]["arguments"].clone(), m["finish_reason"].as_str()),
        (sc["tool"]["arguments"].clone(), Some("tool_calls"))
    );
    // `doctor` names the server and what it does with tools.
    let out = Command::new(BIN).args(["doctor", "--upstream", &format!("{}/v1", llama.url)]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    for needle in ["server: llama.cpp (llama-server)", "parses Harmony itself", "llama-server drops tool calls"] {
        assert!(said.contains(needle), "{needle:?} missing:\n{said}");
    }
}

/// A call that `tool_choice` forces where no grammar does is a prefill: harmony-render writes
/// the start of the call into the prompt (a named function's whole header on llama.cpp's
/// `/completion` and on `/v1/completions`; `required`'s header up to the function's name on
/// `/v1/completions`), and the real model continues it. The player answers in prose unless
/// its prompt ends in such a header, so every call here proves the prefill reached the model,
/// and the client gets the call (the prefilled header included), streamed or not.
#[test]
fn a_forced_tool_choice_is_a_prefill_the_real_model_continues() {
    let Some(h) = harness() else { return };
    let user = h.scenarios["user"].as_str().unwrap();
    let tools = &h.scenarios["tools"];
    let f = &h.scenarios["forced"];
    let call = vec![(f["tool"]["name"].as_str().unwrap().to_owned(), f["tool"]["arguments"].as_str().unwrap().to_owned())];
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.models["forced"], ServerMode::Default, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let called = Got { content: String::new(), reasoning: String::new(), tools: call, finish: "tool_calls".into() };
    let prose = Got { content: f["unforced"]["final"].as_str().unwrap().to_owned(), reasoning: String::new(), tools: vec![], finish: "stop".into() };
    let choices = [
        (Pipeline::NativeLlama, named.clone(), &called),
        (Pipeline::Native, named, &called),
        (Pipeline::Native, json!("required"), &called),
        (Pipeline::Native, json!("auto"), &prose),
        (Pipeline::NativeLlama, json!("auto"), &prose),
    ];
    let (mut requests, mut cases) = (Vec::new(), Vec::new());
    for (pipeline, choice, want) in &choices {
        for stream in [false, true] {
            let name = format!("{pipeline:?} tool_choice={choice} stream={stream}");
            let mut body = chat_request(pipeline.model(), user, Some(tools), stream);
            body["tool_choice"] = choice.clone();
            requests.push(json!({"name": name, "body": body}));
            cases.push(Case { name, want: (*want).clone(), stream });
        }
    }
    let failures = run_cases(&proxy.url, requests, &cases);
    assert!(failures.is_empty(), "{}\nllama-server log:\n{}", failures.join("\n"), llama.logs());
}

/// A grammar-forced random model: tokens are arbitrary sub-word pieces (`"T"`, `"h"`, …), a
/// different chunking from the script players; the answer must come out the same.
#[test]
fn grammar_forced_output_in_small_pieces_comes_out_clean() {
    let Some(h) = harness() else { return };
    let dir = tempfile::tempdir().unwrap();
    let grammar =
        r#"root ::= <|channel|> "analysis" <|message|> "Think a bit." <|end|> <|start|> "assistant" <|channel|> "final" <|message|> "Fine: 東京 ok.""#;
    for mode in [ServerMode::Default, ServerMode::None] {
        let llama = Llama::start(h, &h.random_model, mode, dir.path());
        let proxy = proxy_for(&llama, dir.path());
        for stream in [true, false] {
            for pipeline in [Pipeline::Harmony, Pipeline::IdeTools] {
                let body = json!({"model": pipeline.model(), "stream": stream, "max_tokens": 120, "temperature": 0, "grammar": grammar,
                    "logit_bias": {"200002": 100}, "messages": [{"role": "user", "content": "hi"}]});
                let r = post(&format!("{}/v1/chat/completions", proxy.url), &body);
                assert_eq!(r.status, 200, "{mode:?} {pipeline:?} {}", r.text());
                let a = r.assemble(stream);
                assert_eq!(a.error, None, "{mode:?} {pipeline:?} stream={stream}");
                assert_eq!(a.content, "Fine: 東京 ok.", "{mode:?} {pipeline:?} stream={stream}: {}\n{}", r.text(), llama.logs());
                let want_reasoning = if pipeline == Pipeline::IdeTools { "Think a bit." } else { "" };
                assert_eq!(a.reasoning, want_reasoning, "{mode:?} {pipeline:?} stream={stream}");
            }
        }
    }
}

/// What `passthrough` does in front of a server that sends raw Harmony (`--reasoning-format
/// none`): it parses nothing, so only the special tokens are removed (no markup ever reaches
/// a client) and the channel words and the reasoning stay in the answer. That is why `doctor`
/// says "never `passthrough`" for such a server, and why the default pipeline parses.
#[test]
fn passthrough_on_a_raw_server_removes_markup_but_cannot_separate_reasoning() {
    let Some(h) = harness() else { return };
    let sc = &h.scenarios["scenarios"]["reasoning_final"];
    let dir = tempfile::tempdir().unwrap();
    let llama = Llama::start(h, &h.models["reasoning_final"], ServerMode::None, dir.path());
    let proxy = proxy_for(&llama, dir.path());
    let body = chat_request(Pipeline::Passthrough.model(), h.scenarios["user"].as_str().unwrap(), None, true);
    let a = post(&format!("{}/v1/chat/completions", proxy.url), &body).assemble(true);
    let (r, f) = (sc["reasoning"].as_str().unwrap(), sc["final"].as_str().unwrap());
    assert_eq!(a.content, format!("analysis{r}{f}"));
    let harmony = post(&format!("{}/v1/chat/completions", proxy.url), &chat_request(Pipeline::Harmony.model(), "hi", None, true)).assemble(true);
    assert_eq!(harmony.content, f, "the default pipeline gets it right");
}

/// A real coding agent's CLI, run headless against the proxy by its script in tests/agents/
/// (`bash SCRIPT BASE_URL WORKDIR`: the script installs the pinned version with npm the first
/// time, runs the agent's shell-tool loop and checks the result).
pub struct AgentCli {
    /// What the reports call it (the script's own PASS/FAIL prefix).
    name: &'static str,
    /// The npm package the script installs.
    package: &'static str,
    /// The script, in tests/agents/.
    script: &'static str,
    /// The route the proxy serves the agent on.
    pub route: &'static str,
    /// What the script's BASE_URL adds to the proxy's address: Codex and Qwen Code take the
    /// `/v1` base, Claude Code the bare address (it appends `/v1/messages` itself).
    base_path: &'static str,
    /// The script's timeout variable (seconds).
    timeout_env: &'static str,
    /// The agent's script player: its key in scenarios.json and in the manifest's models.
    pub model: &'static str,
    /// The ways it is tried (see [`agent_cli_loop`]).
    ways: &'static [(ServerMode, &'static str)],
}

/// The two ways that differ on llama-server: the chat endpoint on a default server (its
/// template and parser) and `native` on llama.cpp's own `/completion` (token ids both ways).
/// The others are covered elsewhere: `native` on `/v1/completions` and the chat endpoint's
/// own parsers in front of vLLM (tests/e2e/real_servers.rs), the proxy parsing raw Harmony
/// from a chat endpoint in the pipeline matrices (`--reasoning-format none`, mlx-lm).
const TWO_WAYS: &[(ServerMode, &str)] = &[(ServerMode::Default, "ide-tools"), (ServerMode::Default, "native-llama")];

pub const CODEX: AgentCli = AgentCli {
    name: "codex",
    package: "@openai/codex",
    script: "codex.sh",
    route: "/v1/responses",
    base_path: "/v1",
    timeout_env: "CODEX_TIMEOUT",
    model: "codex_agent",
    ways: TWO_WAYS,
};

pub const CLAUDE_CODE: AgentCli = AgentCli {
    name: "claude",
    package: "@anthropic-ai/claude-code",
    script: "claude.sh",
    route: "/v1/messages",
    base_path: "",
    timeout_env: "CLAUDE_TIMEOUT",
    model: "claude_agent",
    ways: TWO_WAYS,
};

/// Qwen Code's prompt is ~16k tokens (a minute a way on a loaded CI machine): the chat
/// endpoint here; `native` in front of vLLM.
pub const QWEN: AgentCli = AgentCli {
    name: "qwen",
    package: "@qwen-code/qwen-code",
    script: "qwen.sh",
    route: "/v1/chat/completions",
    base_path: "/v1",
    timeout_env: "QWEN_TIMEOUT",
    model: "qwen_agent",
    ways: &[(ServerMode::Default, "ide-tools")],
};

/// node and npm, which the agent scripts need (they install the agent with npm the first
/// time), or `None` after saying why `agent`'s test is skipped (a failure under CI).
pub fn node_and_npm(agent: &AgentCli) -> Option<()> {
    let ok = |bin: &str| Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok("node") && ok("npm") {
        return Some(());
    }
    if required() {
        panic!("the {} test needs node and npm on PATH (tests/agents/{} installs {} with npm)", agent.name, agent.script, agent.package);
    }
    let _ = writeln!(std::io::stderr(), "{} test skipped: node and npm are not on PATH", agent.name);
    None
}

/// A proxy serving `route` (all models) through `pipeline` (a shipped one or `native-llama`),
/// in front of the server at `upstream`, sending `upstream_model` as the model's name if given
/// (vLLM answers only to the name it serves). No `max_body_bytes`: agents' requests are
/// ~50 kB (instructions and tools), the shared test config's 64 kB limit is too close.
pub fn agent_proxy(upstream: &str, route: &str, pipeline: &str, dir: &Path, upstream_model: Option<&str>) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let native_llama = if pipeline == "native-llama" { format!("[pipelines.native-llama]\nstages = [{NATIVE_LLAMA_STAGES}]\n") } else { String::new() };
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.default]
url = "{url}/v1"
read_timeout = "60s"
connect_timeout = "2s"

[[routes]]
path = "{route}"
upstream = "default"
pipeline = "{pipeline}"
{rename}
{native_llama}"#,
        url = upstream,
        rename = upstream_model.map(|m| format!("upstream_model = \"{m}\"\n")).unwrap_or_default()
    );
    std::fs::write(dir.join("proxy.toml"), cfg).unwrap();
    spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir, &[])
}

/// `agent` runs its two-turn tool loop through the proxy (on `agent.route`) in front of
/// llama-server playing `agent.model` on the agent's real prompt, once per way in
/// `agent.ways` ([`TWO_WAYS`] for Codex and Claude Code). The agent's script checks the
/// outcome; every way is tried, the failures reported together.
fn agent_cli_loop(agent: &AgentCli) {
    let Some(h) = harness() else { return };
    let Some(()) = node_and_npm(agent) else { return };
    let n_ctx = h.scenarios[agent.model]["n_ctx"].as_u64().unwrap();
    let model = &h.models[agent.model];
    let dir = tempfile::tempdir().unwrap();
    let default = Llama::start_with_context(h, model, ServerMode::Default, dir.path(), n_ctx);
    let mut failures = Vec::new();
    for &(mode, pipeline) in agent.ways {
        let own;
        let llama = if mode == ServerMode::Default {
            &default
        } else {
            own = Llama::start_with_context(h, model, mode, dir.path(), n_ctx);
            &own
        };
        let case = format!("{pipeline} on a {mode:?} llama-server");
        let sub = dir.path().join(format!("{pipeline}-{mode:?}"));
        let proxy = agent_proxy(&llama.url, agent.route, pipeline, &sub, None);
        if let Some(report) = run_agent_cli(agent, &proxy, &sub, &case) {
            failures.push(format!("{report}\n--- llama-server log tail:\n{}", llama.logs()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `agent`'s script against `proxy` (work files under `sub`): `None` if it passed, else
/// what it and the proxy said.
pub fn run_agent_cli(agent: &AgentCli, proxy: &Proc, sub: &Path, case: &str) -> Option<String> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("tests/agents").join(agent.script))
        .arg(format!("{}{}", proxy.url, agent.base_path))
        .arg(sub.join("work"))
        .env(agent.timeout_env, "240")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("bash tests/agents/{}: {e}", agent.script));
    let passed = out.status.success();
    let _ = writeln!(std::io::stderr(), "{} via {case}: {:.1} s, {}", agent.name, started.elapsed().as_secs_f64(), if passed { "passed" } else { "FAILED" });
    if passed {
        return None;
    }
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(format!("--- {} via {case} ({}):\n{report}\n--- proxy log:\n{}", agent.name, out.status, proxy.log()))
}

/// The real Codex CLI (tests/agents/codex.sh: `codex exec`, headless) runs its two-turn tool
/// loop through the proxy's `POST /v1/responses` in front of llama-server playing
/// `codex_agent` on Codex's real prompt: turn 1 reasons and calls `exec_command`, Codex runs
/// the command (it writes the marker file), turn 2 answers with what the command printed and
/// whether the turn-1 reasoning came back. The model itself tells the last one (its answer
/// says `yes` only when the reasoning reached llama-server in the second prompt), so codex.sh's
/// checks cover the whole round trip: Responses decoding of Codex's request, the upstream
/// request, the parsed output as Responses items, Codex running the call and sending the
/// call, its reasoning and its output back. The ways: see [`agent_cli_loop`].
#[test]
fn codex_cli_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_llama_server() {
    agent_cli_loop(&CODEX);
}

/// The real Claude Code (tests/agents/claude.sh: `claude -p`, headless) runs its two-turn
/// tool loop through the proxy's `POST /v1/messages` in front of llama-server playing
/// `claude_agent` on Claude Code's real prompt: turn 1 reasons (a `thinking` block) and calls
/// `Bash`, Claude Code runs the command (it writes the marker file), turn 2 answers with what
/// the command printed and whether the turn-1 reasoning came back, which the model itself
/// tells (`yes` only when the reasoning reached llama-server in the second prompt: Claude Code
/// sends the thinking block back, the proxy opens its signature). So claude.sh's checks cover
/// the whole round trip: Messages decoding of Claude Code's request, the upstream request,
/// the parsed output as Messages blocks, Claude Code running the call and sending the call,
/// its thinking and the `tool_result` back. The ways: see [`agent_cli_loop`].
#[test]
fn claude_code_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_llama_server() {
    agent_cli_loop(&CLAUDE_CODE);
}

/// The real Qwen Code (tests/agents/qwen.sh: `qwen --yolo -o json`, headless) runs its
/// two-turn tool loop through the proxy's `POST /v1/chat/completions` in front of
/// llama-server playing `qwen_agent` on Qwen Code's real prompt: turn 1 reasons and calls
/// `run_shell_command`, Qwen Code runs the command (it writes the marker file), turn 2
/// answers with what the command printed and whether the turn-1 reasoning came back, which
/// the model itself tells (`yes` only when the reasoning reached llama-server in the second
/// prompt: Qwen Code sends it back as the tool-call turn's `reasoning_content`). So qwen.sh's
/// checks cover the whole round trip for a Chat Completions agent: its request, the upstream
/// request, the parsed output as `reasoning_content` and `tool_calls`, Qwen Code running the
/// call and sending the call, its reasoning and the framed tool result back. The ways:
/// see [`agent_cli_loop`].
#[test]
fn qwen_code_runs_a_two_turn_tool_loop_through_the_proxy_on_a_real_llama_server() {
    agent_cli_loop(&QWEN);
}
