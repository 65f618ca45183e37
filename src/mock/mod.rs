//! The built-in simulated gpt-oss server, speaking llama.cpp's framing (raw Harmony in
//! `delta.content`, one SSE event per delta, `timings`, a finish chunk, a usage chunk,
//! `[DONE]`). Used by `demo`, the end-to-end tests and the SDK conformance suite.
//!
//! What it answers is scripted by the last user message (all its text parts, joined):
//! - `scenario:NAME` picks a built-in script (`hello`, `weather`, `two-tools`, `slow`,
//!   `agent-shell`);
//! - a JSON object `{"mock": {…}}` is a script of its own (see [`Script`]);
//! - anything else gets `hello`.
//!
//! Both may stand anywhere in the text, as real agents wrap the user's prompt in their own
//! (`<environment_context>`, `<user_query>`…): the first known `scenario:NAME` (NAME of
//! `[a-z0-9-]`) or the first `{"mock"` that starts a JSON value counts, whichever comes first.
//! A text that is exactly `scenario:NAME` or exactly the JSON is read as it always was.
//!
//! Agents run a tool loop: after a tool call they send the whole history again, ending with
//! the tool's result, under the same user prompt. A script with `steps` answers `steps[n]`,
//! n being the number of `tool` messages after the last user message (the last step when n
//! is past the end), so each turn of the loop gets its own answer.
//!
//! `agent-shell` drives any agent that declares a shell tool (`exec_command`, `shell`,
//! `Bash`, `bash`, `run_shell_command`, `run_commands`, `execute_command`, `shell_command`,
//! first found in that order): with no tool result yet it reasons and calls that tool with
//! arguments shaped by its parameters (see `shell_args`) to run
//! `echo harmony-proxy-was-here > FILE && echo marker-written` (FILE is `proxied.txt`, or the
//! NAME of a `file:NAME` in the user's text); after the result it answers
//! `Done. The command printed: OUT. Turn-1 reasoning came back: yes|no.` (OUT is the first
//! non-empty line of the last tool result; `yes` when the tool-call turn came back with its
//! reasoning). With no shell tool it answers "No shell tool was declared.".
//!
//! The raw completion endpoints read the same from the rendered Harmony prompt: the last
//! `user` message, the `functions.*` tool results after it, the `analysis` messages, and the
//! tool declarations of the developer message.
//!
//! Like llama.cpp's gpt-oss chat template, it answers HTTP 500 to histories the template
//! refuses: an assistant tool-call turn with both content and reasoning, tool-call arguments
//! that are not JSON, a tool result with no earlier tool call.
//!
//! Scripts can fail on purpose (per attempt, counted by `key`): answer a status, close before
//! answering, cut or stall the stream, send an in-band error, end without `[DONE]`.
//! `GET /mock/stats` tells how many requests came and how many streams the client cancelled.

mod answer;
mod script;
mod turn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::upstream::BoxError;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

use answer::*;

#[derive(Default)]
pub struct MockState {
    /// The vocabulary: the raw completion endpoints read prompts as token ids and answer ids.
    pub enc: Option<openai_harmony::HarmonyEncoding>,
    /// Parse Harmony as llama-server does by default (`mock-upstream --parsed`): reasoning in
    /// `reasoning_content`, tool calls in `tool_calls` (ids without `call_`), the rest in
    /// `content`. Off: raw Harmony in `content`.
    pub parsed: bool,
    /// Close connections idle this long (`mock-upstream --idle-close-ms`).
    pub idle_close: Option<std::time::Duration>,
    /// The context size `GET /props` says, as llama-server does (`mock-upstream --n-ctx`;
    /// 0: 131072, gpt-oss's).
    pub n_ctx: u64,
    /// The only model name it answers to, as vLLM serves one (`mock-upstream --served-model`):
    /// any other is a 404 in vLLM's words. `None`: any name.
    pub served_model: Option<String>,
    /// Requests refused for their model name (see `served_model`).
    pub refused_models: AtomicU64,
    /// Requests refused as longer than the context (see `n_ctx`).
    pub overflows: AtomicU64,
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Connections accepted, and those that carried a chat completion.
    connections: AtomicU64,
    chat_connections: Mutex<std::collections::HashSet<u64>>,
    attempts: Mutex<HashMap<String, u32>>,
    last_request: Mutex<Value>,
}

/// One failure, for one attempt.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer this HTTP status with an error body.
    pub status: Option<u16>,
    /// The error body `status` is answered with (default: a mock failure, OpenAI-shaped).
    pub body: Option<Value>,
    pub retry_after: Option<u64>,
    /// Close the connection without answering.
    #[serde(default)]
    pub close: bool,
    /// Wait this long before sending the response head.
    pub head_delay_ms: Option<u64>,
    /// After this many deltas: drop the connection mid-body.
    pub cut_after: Option<usize>,
    /// After this many deltas: send nothing more, keep the connection open.
    pub stall_after: Option<usize>,
    /// After this many deltas: send an in-band `data: {"error":…}` and close, no `[DONE]`.
    pub error_after: Option<usize>,
    /// The in-band error object `error_after` sends (default: a mock server error).
    pub error: Option<Value>,
    /// After this many deltas: end the body cleanly with no finish and no `[DONE]`.
    pub truncate_after: Option<usize>,
    /// After this many deltas: send a chunk that is not JSON.
    pub invalid_after: Option<usize>,
    /// After the last frame: keep the connection open (without `[DONE]`) until the client goes.
    #[serde(default)]
    pub linger: bool,
}

pub(super) fn chunk(delta: &Value, finish: Option<&str>) -> Bytes {
    let c = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-oss-20b",
        "system_fingerprint": "b6000-mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "timings": {"predicted_n": 1, "predicted_ms": 1.0},
    });
    Bytes::from(format!("data: {c}\n\n"))
}

pub(super) fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub(super) fn json_resp(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full_body(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
    r
}

/// Serves the mock on `listener` (over TLS with `tls`) until the process ends.
pub async fn run(listener: TcpListener, state: Arc<MockState>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let tls = tls.clone();
        let conn = state.connections.fetch_add(1, Ordering::SeqCst);
        let idle_close = state.idle_close;
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), conn, req));
            let mut http = hyper::server::conn::http1::Builder::new();
            if let Some(d) = idle_close {
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(d);
            }
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            }
        });
    }
}

#[derive(Debug)]
struct CloseConnection;
impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock closes the connection")
    }
}
impl std::error::Error for CloseConnection {}

impl MockState {
    /// A mock with the vocabulary (for the raw completion endpoints), parsing Harmony as
    /// llama-server does by default when `parsed` (see [`MockState::parsed`]).
    pub fn with_vocabulary(enc: openai_harmony::HarmonyEncoding, parsed: bool) -> Self {
        Self { enc: Some(enc), parsed, ..Self::default() }
    }

    /// Closes connections idle for `after` (see [`MockState::idle_close`]).
    pub fn idle_close(self, after: Option<std::time::Duration>) -> Self {
        Self { idle_close: after, ..self }
    }

    /// Answers only to `name` (see [`MockState::served_model`]).
    pub fn served_model(self, name: Option<String>) -> Self {
        Self { served_model: name, ..self }
    }

    /// Says `n_ctx` as its context size (see [`MockState::n_ctx`]).
    pub fn n_ctx(self, n_ctx: Option<u64>) -> Self {
        Self { n_ctx: n_ctx.unwrap_or(0), ..self }
    }
}

async fn handle(state: Arc<MockState>, conn: u64, req: Request<Incoming>) -> Result<Response<Body>, CloseConnection> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/v1/models") => {
            // Serving one name is vLLM's way: its list says the context size too.
            let n_ctx = if state.n_ctx == 0 { 131_072 } else { state.n_ctx };
            let model = match state.served_model.as_deref() {
                Some(id) => json!({"id": id, "object": "model", "owned_by": "vllm", "max_model_len": n_ctx}),
                None => json!({"id": "gpt-oss-20b", "object": "model", "owned_by": "mock"}),
            };
            Ok(json_resp(200, &json!({"object": "list", "data": [model]})))
        }
        // llama-server's: the context size each slot has.
        ("GET", "/props") => {
            let n_ctx = if state.n_ctx == 0 { 131_072 } else { state.n_ctx };
            Ok(json_resp(200, &json!({"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": 1, "model_path": "gpt-oss-20b.gguf"})))
        }
        ("GET", "/mock/stats") => Ok(json_resp(
            200,
            &json!({
                "requests": state.requests.load(Ordering::SeqCst),
                "completed": state.completed.load(Ordering::SeqCst),
                "cancelled": state.cancelled.load(Ordering::SeqCst),
                "refused_models": state.refused_models.load(Ordering::SeqCst),
                "overflows": state.overflows.load(Ordering::SeqCst),
                "connections": state.connections.load(Ordering::SeqCst),
                "chat_connections": state.chat_connections.lock().unwrap_or_else(|e| e.into_inner()).len(),
                "attempts": *state.attempts.lock().unwrap_or_else(|e| e.into_inner()),
                "last_request": *state.last_request.lock().unwrap_or_else(|e| e.into_inner()),
            }),
        )),
        // A refusal with no body at all (some servers answer so): the proxy must pass it on as is.
        ("GET", "/v1/mock/empty-400") => {
            let mut r = Response::new(full_body(Bytes::new()));
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            Ok(r)
        }
        ("POST", "/v1/chat/completions") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return Ok(json_resp(400, &json!({"error": {"message": "invalid JSON", "type": "invalid_request_error"}})));
            };
            state.requests.fetch_add(1, Ordering::SeqCst);
            state.chat_connections.lock().unwrap_or_else(|e| e.into_inner()).insert(conn);
            *state.last_request.lock().unwrap_or_else(|e| e.into_inner()) = v.clone();
            chat(state, v).await
        }
        ("POST", p @ ("/v1/completions" | "/completion")) => {
            let native = p == "/completion";
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return Ok(json_resp(400, &json!({"error": {"message": "invalid JSON", "type": "invalid_request_error"}})));
            };
            state.requests.fetch_add(1, Ordering::SeqCst);
            completion(state, v, native).await
        }
        (_, p) if p.starts_with("/v1/") => {
            // Echo: the method, path, query, headers and body, streamed back as they arrive.
            let headers: serde_json::Map<String, Value> =
                req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or("")))).collect();
            let head = json!({"method": req.method().as_str(), "path": p, "query": req.uri().query(), "headers": headers}).to_string();
            let ct = req.headers().get(header::CONTENT_TYPE).cloned();
            let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            let mut r = Response::new(ChainBody { first: Some(full_body(head + "\n")), second: body }.boxed_unsync());
            if let Some(ct) = ct {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r.headers_mut().insert("x-mock-echo", "1".parse().expect("static"));
            Ok(r)
        }
        _ => Ok(json_resp(404, &json!({"error": {"message": "not found", "type": "invalid_request_error"}}))),
    }
}

/// Two bodies, one after the other.
struct ChainBody {
    first: Option<Body>,
    second: Body,
}

impl http_body::Body for ChainBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.first.as_mut() {
            match std::pin::Pin::new(f).poll_frame(cx) {
                std::task::Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        std::pin::Pin::new(&mut self.second).poll_frame(cx)
    }
}

/// What llama.cpp's gpt-oss chat template refuses in a history (it answers HTTP 500).
fn template_error(req: &Value) -> Option<&'static str> {
    let messages = req.get("messages").and_then(Value::as_array)?;
    let mut seen_call = false;
    for m in messages {
        let calls = m.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty());
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") if calls.is_some() => {
                seen_call = true;
                let content = m.get("content").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
                let thinking = ["reasoning_content", "reasoning", "thinking"].iter().any(|f| m.get(*f).and_then(Value::as_str).is_some_and(|r| !r.is_empty()));
                if content && thinking {
                    return Some("Cannot pass both content and thinking in an assistant message with tool calls! Put the analysis message in one or the other, but not both.");
                }
                for c in calls.into_iter().flatten() {
                    let args = c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("");
                    if serde_json::from_str::<Value>(args).is_err() {
                        return Some("Failed to parse tool call arguments as JSON");
                    }
                }
            }
            Some("tool") if !seen_call => return Some("Message has tool role, but there was no previous assistant message with a tool call!"),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::script::*;
    use super::turn::*;
    use super::*;

    const MARKER_CMD: &str = "echo harmony-proxy-was-here > proxied.txt && echo marker-written";

    fn user(content: Value) -> Value {
        json!({"role": "user", "content": content})
    }

    fn tool(name: &str, parameters: Value) -> Value {
        json!({"type": "function", "function": {"name": name, "description": "a tool", "parameters": parameters}})
    }

    fn exec_command() -> Value {
        tool(
            "exec_command",
            json!({"type": "object", "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}, "yield_time_ms": {"type": "number"}}, "required": ["cmd"]}),
        )
    }

    fn tool_call(name: &str, args: &Value) -> Value {
        json!({"id": "call_1", "type": "function", "function": {"name": name, "arguments": args.to_string()}})
    }

    /// A request as an agent sends it: the user's prompt wrapped in the agent's own text.
    fn agent_request(tools: Vec<Value>, prompt: &str, rest: Vec<Value>) -> Value {
        let mut messages = vec![
            json!({"role": "system", "content": "You are a coding agent."}),
            user(json!(format!("<user_instructions>Be brief.</user_instructions>\n{prompt}"))),
        ];
        messages.extend(rest);
        json!({"messages": messages, "tools": tools, "stream": true})
    }

    /// The function a script's text calls, and its arguments.
    fn call_of(s: &Script) -> (String, Value) {
        let text = s.text.as_deref().unwrap_or("");
        let name = text.split("to=functions.").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("").to_owned();
        let args = text.rsplit("<|message|>").next().unwrap_or("");
        (name, serde_json::from_str(args).unwrap_or(Value::Null))
    }

    /// The final answer of a script's text.
    fn final_of(s: &Script) -> String {
        let text = s.text.as_deref().unwrap_or("");
        text.split_once("<|channel|>final<|message|>").map(|(_, f)| f.to_owned()).unwrap_or_default()
    }

    #[test]
    fn a_scenario_anywhere_in_the_wrapped_user_text_is_found() {
        let parts = json!([{"type": "text", "text": "<environment_context>cwd=/tmp</environment_context>"}, {"type": "text", "text": "<user_query>Please follow scenario:weather, thanks.</user_query>"}]);
        let req = json!({"messages": [user(parts)]});
        assert_eq!(script_for(&req).text, scenario("weather").and_then(|s| s.text));
    }

    #[test]
    fn a_mock_script_anywhere_in_the_wrapped_user_text_is_found() {
        let script = json!({"mock": {"text": "<|channel|>final<|message|>scripted", "finish": "length"}});
        let req = json!({"messages": [user(json!(format!("<user_query>\nRun {script} now.\n</user_query>")))]});
        let s = script_for(&req);
        assert_eq!(s.text.as_deref(), Some("<|channel|>final<|message|>scripted"));
        assert_eq!(s.finish.as_deref(), Some("length"));
    }

    #[test]
    fn texts_that_are_exactly_a_scenario_or_a_script_are_read_as_before() {
        let ask = |text: &str| script_for(&json!({"messages": [user(json!(text))]})).text;
        assert_eq!(ask("scenario: two-tools\n"), scenario("two-tools").and_then(|s| s.text));
        assert_eq!(ask(json!({"mock": {"text": "x"}}).to_string().as_str()), Some("x".to_owned()));
        assert_eq!(ask("scenario:nonsense"), scenario("hello").and_then(|s| s.text));
        assert_eq!(ask("just a question about scenario: planning"), scenario("hello").and_then(|s| s.text));
    }

    #[test]
    fn the_first_of_a_scenario_and_a_script_wins() {
        let script = json!({"mock": {"text": "from the script"}});
        let ask = |text: String| script_for(&json!({"messages": [user(json!(text))]})).text;
        assert_eq!(ask(format!("scenario:weather then {script}")), scenario("weather").and_then(|s| s.text));
        assert_eq!(ask(format!("{script} then scenario:weather")), Some("from the script".to_owned()));
    }

    #[test]
    fn steps_are_chosen_by_the_tool_results_after_the_last_user_message() {
        let script = json!({"mock": {"steps": [{"text": "zero"}, {"text": "one", "finish": "length"}]}}).to_string();
        let call = json!({"role": "assistant", "content": "", "tool_calls": [tool_call("f", &json!({}))]});
        let result = json!({"role": "tool", "tool_call_id": "call_1", "content": "ok"});
        let at = |history: Vec<Value>| {
            let mut messages = vec![user(json!(format!("wrapped {script}")))];
            messages.extend(history);
            script_for(&json!({"messages": messages}))
        };
        let first = at(vec![]);
        assert_eq!(first.text.as_deref(), Some("zero"));
        assert_eq!(first.finish.as_deref(), Some("stop"));
        let second = at(vec![call.clone(), result.clone()]);
        assert_eq!(second.text.as_deref(), Some("one"));
        assert_eq!(second.finish.as_deref(), Some("length"));
        assert_eq!(at(vec![call.clone(), result.clone(), call.clone(), result.clone()]).text.as_deref(), Some("one"), "past the end: the last step");
        // Tool results before the last user message belong to an earlier prompt.
        let earlier = json!({"messages": [user(json!("before")), call, result, user(json!(script))]});
        assert_eq!(script_for(&earlier).text.as_deref(), Some("zero"));
    }

    #[test]
    fn agent_shell_reasons_then_calls_a_codex_like_exec_command_with_cmd() {
        let write_stdin = tool("write_stdin", json!({"type": "object", "properties": {"session_id": {"type": "number"}}, "required": ["session_id"]}));
        let bash = tool("bash", json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}));
        let s = script_for(&agent_request(vec![write_stdin, bash, exec_command()], "scenario:agent-shell", vec![]));
        let text = s.text.clone().unwrap_or_default();
        assert!(text.starts_with("<|channel|>analysis<|message|>I will run the shell tool to write the marker file.<|end|><|start|>assistant<|channel|>commentary to=functions.exec_command <|constrain|>json<|message|>"), "{text}");
        assert_eq!(call_of(&s), ("exec_command".to_owned(), json!({"cmd": MARKER_CMD})));
    }

    #[test]
    fn agent_overflow_prints_more_each_turn_and_after_a_compaction_plays_on_from_the_summary() {
        let prompt = "scenario:agent-overflow file:big.txt";
        let call = |n: usize| json!({"role": "assistant", "content": "", "tool_calls": [tool_call("exec_command", &json!({"cmd": n.to_string()}))]});
        let result = json!({"role": "tool", "tool_call_id": "call_1", "content": "100000"});
        let first = script_for(&agent_request(vec![exec_command()], prompt, vec![]));
        assert_eq!(call_of(&first).1, json!({"cmd": "echo harmony-proxy-was-here > big.txt && seq 100000 100599"}));
        let second = script_for(&agent_request(vec![exec_command()], prompt, vec![call(1), result.clone()]));
        assert_eq!(call_of(&second).1, json!({"cmd": "seq 100600 101199"}), "the next lines, without the marker");
        // Claude Code's compaction asks for a summary: it carries the scenario and the file.
        let ask = user(json!("Your task is to create a detailed summary of the conversation so far."));
        let summary = final_of(&script_for(&agent_request(vec![exec_command()], prompt, vec![call(1), result.clone(), ask])));
        assert!(summary.starts_with("<summary>COMPACTED-SUMMARY") && summary.ends_with("scenario:agent-overflow file:big.txt</summary>"), "{summary}");
        // The history after it: the summary, the rounds kept, and a last user message of the
        // agent's own that names no scenario.
        let req = json!({"messages": [
            user(json!(format!("This session is being continued from a previous conversation. Summary:\n{summary}"))),
            call(2), result,
            user(json!("<system-reminder>Attribution for commits.</system-reminder>")),
        ], "tools": [exec_command()]});
        assert_eq!(final_of(&script_for(&req)), "Done after compaction. The summary came back: yes (big.txt).");
    }

    #[test]
    fn agent_subagent_hands_the_shell_task_to_a_haiku_subagent_then_reports() {
        let task = tool("Task", json!({"type": "object", "properties": {"prompt": {"type": "string"}, "model": {"type": "string"}}}));
        let first = script_for(&agent_request(vec![task.clone()], "scenario:agent-subagent file:sub.txt", vec![]));
        let (name, args) = call_of(&first);
        assert_eq!((name.as_str(), &args["model"], &args["run_in_background"]), ("Task", &json!("haiku"), &json!(false)));
        assert_eq!(args["prompt"], "Please use the shell. scenario:agent-shell file:sub.txt", "the subagent plays agent-shell on the same file");
        let call = json!({"role": "assistant", "content": "", "tool_calls": [tool_call("Task", &args)]});
        let report = |text: &str| json!({"role": "tool", "tool_call_id": "call_1", "content": text});
        let back =
            |text: &str| final_of(&script_for(&agent_request(vec![task.clone()], "scenario:agent-subagent file:sub.txt", vec![call.clone(), report(text)])));
        assert_eq!(back("Done. The command printed: marker-written. Turn-1 reasoning came back: yes."), "Done. The subagent's report came back: yes.");
        assert_eq!(back("I could not."), "Done. The subagent's report came back: no.");
    }

    #[test]
    fn agent_shell_calls_a_cline_like_run_commands_with_a_list() {
        let run_commands = tool(
            "run_commands",
            json!({"type": "object", "properties": {"commands": {"type": "array", "items": {"type": "string"}}}, "required": ["commands"]}),
        );
        let s = script_for(&agent_request(vec![run_commands], "Do it. scenario:agent-shell", vec![]));
        assert_eq!(call_of(&s), ("run_commands".to_owned(), json!({"commands": [MARKER_CMD]})));
    }

    #[test]
    fn agent_shell_calls_a_shell_tool_with_an_argv_array() {
        let shell = tool(
            "shell",
            json!({"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}, "timeout_ms": {"type": "number"}}, "required": ["command"]}),
        );
        let s = script_for(&agent_request(vec![shell], "scenario:agent-shell", vec![]));
        assert_eq!(call_of(&s), ("shell".to_owned(), json!({"command": ["bash", "-lc", MARKER_CMD]})));
    }

    #[test]
    fn agent_shell_fills_required_description_and_flags_and_writes_the_named_file() {
        let opencode_bash = tool(
            "bash",
            json!({"type": "object", "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}, "description": {"type": "string"}}, "required": ["command", "description"]}),
        );
        let s = script_for(&agent_request(vec![opencode_bash], "scenario:agent-shell file:out-1.txt.", vec![]));
        let cmd = "echo harmony-proxy-was-here > out-1.txt && echo marker-written";
        assert_eq!(call_of(&s), ("bash".to_owned(), json!({"command": cmd, "description": "write the marker file"})));
        let qwen = tool(
            "run_shell_command",
            json!({"type": "object", "properties": {"command": {"type": "string"}, "is_background": {"type": "boolean"}, "description": {"type": "string"}, "directory": {"type": "string"}}, "required": ["command", "is_background"]}),
        );
        let s = script_for(&agent_request(vec![qwen], "scenario:agent-shell", vec![]));
        assert_eq!(call_of(&s), ("run_shell_command".to_owned(), json!({"command": MARKER_CMD, "is_background": false})));
    }

    #[test]
    fn agent_modify_reads_the_file_then_edits_its_placeholder_then_reports_the_edit() {
        let read = tool("Read", json!({"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}));
        let edit = tool(
            "Edit",
            json!({"type": "object", "properties": {"file_path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}}, "required": ["file_path", "old_string", "new_string"]}),
        );
        let user = "scenario:agent-modify file:m.txt dir:/w/";
        let tools = || vec![read.clone(), edit.clone()];
        let s = script_for(&agent_request(tools(), user, vec![]));
        assert_eq!(call_of(&s), ("Read".to_owned(), json!({"file_path": "/w/m.txt"})));
        let read_call = json!({"role": "assistant", "content": "", "reasoning_content": AGENT_EDIT_REASONING, "tool_calls": [tool_call("Read", &json!({"file_path": "/w/m.txt"}))]});
        let read_out = json!({"role": "tool", "tool_call_id": "call_1", "content": "1\tharmony-proxy-placeholder"});
        let s = script_for(&agent_request(tools(), user, vec![read_call.clone(), read_out.clone()]));
        let change = json!({"file_path": "/w/m.txt", "old_string": MODIFY_PLACEHOLDER, "new_string": "harmony-proxy-was-here"});
        assert_eq!(call_of(&s), ("Edit".to_owned(), change.clone()));
        let edit_call = json!({"role": "assistant", "content": "", "tool_calls": [tool_call("Edit", &change)]});
        let edit_out = json!({"role": "tool", "tool_call_id": "call_2", "content": "The file /w/m.txt has been updated."});
        let s = script_for(&agent_request(tools(), user, vec![read_call, read_out, edit_call, edit_out]));
        assert_eq!(final_of(&s), "Done. The edit tool answered: The file /w/m.txt has been updated.. Turn-1 reasoning came back: yes.");
        let s = script_for(&agent_request(vec![read], user, vec![]));
        assert_eq!(final_of(&s), "No Read and Edit tools were declared.");
    }

    #[test]
    fn agent_shell_without_a_shell_tool_says_so() {
        let read_file = tool("read_file", json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}));
        let s = script_for(&agent_request(vec![read_file], "scenario:agent-shell", vec![]));
        assert_eq!(final_of(&s), "No shell tool was declared.");
        assert!(!s.text.unwrap_or_default().contains("to=functions."));
    }

    #[test]
    fn agent_shell_after_the_tool_result_names_the_output_and_whether_reasoning_came_back() {
        let args = json!({"cmd": MARKER_CMD});
        let output = json!({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "\n   marker-written  \nsecond line"}]});
        let with_reasoning =
            json!({"role": "assistant", "content": null, "reasoning_content": AGENT_SHELL_REASONING, "tool_calls": [tool_call("exec_command", &args)]});
        let s = script_for(&agent_request(vec![exec_command()], "scenario:agent-shell", vec![with_reasoning, output.clone()]));
        assert_eq!(final_of(&s), "Done. The command printed: marker-written. Turn-1 reasoning came back: yes.");
        let without = json!({"role": "assistant", "content": "", "tool_calls": [tool_call("exec_command", &args)]});
        let s = script_for(&agent_request(vec![exec_command()], "scenario:agent-shell", vec![without, output]));
        assert_eq!(final_of(&s), "Done. The command printed: marker-written. Turn-1 reasoning came back: no.");
    }

    #[test]
    fn agent_shell_reads_the_output_out_of_qwen_codes_frame() {
        let call = json!({"role": "assistant", "content": "", "reasoning_content": AGENT_SHELL_REASONING, "tool_calls": [tool_call("run_shell_command", &json!({"command": MARKER_CMD}))]});
        let framed =
            format!("Command: {MARKER_CMD}\nDirectory: (root)\nOutput: marker-written\nError: (none)\nExit Code: 0\nSignal: 0\nProcess Group PGID: 1552");
        let output = json!({"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": framed}]});
        let qwen = tool("run_shell_command", json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}));
        let s = script_for(&agent_request(vec![qwen], "scenario:agent-shell", vec![call, output]));
        assert_eq!(final_of(&s), "Done. The command printed: marker-written. Turn-1 reasoning came back: yes.");
    }

    #[test]
    fn agent_shell_reads_the_result_out_of_clines_json_command_list() {
        let call = json!({"role": "assistant", "content": null, "reasoning_content": AGENT_SHELL_REASONING, "tool_calls": [tool_call("run_commands", &json!({"commands": [MARKER_CMD]}))]});
        let listed = json!([{"query": MARKER_CMD, "result": "marker-written\n", "success": true}]).to_string();
        let output = json!({"role": "tool", "tool_call_id": "call_1", "content": listed});
        let cline = tool(
            "run_commands",
            json!({"type": "object", "properties": {"commands": {"type": "array", "items": {"type": "string"}}}, "required": ["commands"]}),
        );
        let s = script_for(&agent_request(vec![cline], "scenario:agent-shell", vec![call, output]));
        assert_eq!(final_of(&s), "Done. The command printed: marker-written. Turn-1 reasoning came back: yes.");
    }

    #[test]
    fn agent_shell_quotes_at_most_80_characters_of_the_output() {
        let call = json!({"role": "assistant", "content": "", "tool_calls": [tool_call("exec_command", &json!({"cmd": "x"}))]});
        let output = json!({"role": "tool", "tool_call_id": "call_1", "content": "y".repeat(200)});
        let s = script_for(&agent_request(vec![exec_command()], "scenario:agent-shell", vec![call, output]));
        assert_eq!(final_of(&s), format!("Done. The command printed: {}. Turn-1 reasoning came back: no.", "y".repeat(80)));
    }

    /// A prompt as openai-harmony renders it, with `tools` declared and `after` following the
    /// user's message.
    fn rendered_prompt(tools: &str, user: &str, after: &str) -> String {
        format!(
            "<|start|>system<|message|>You are ChatGPT.\n\n# Valid channels: analysis, commentary, final.<|end|><|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {{\n\n{tools}\n}} // namespace functions<|end|><|start|>user<|message|>{user}<|end|>{after}<|start|>assistant"
        )
    }

    const TS_EXEC_COMMAND: &str = "// Runs a command\ntype exec_command = (_: {\n// The command: a shell line\ncmd: string,\nworkdir?: string,\n}) => any;\n\n// Reads a file\ntype read_file = (_: {\npath: string,\n}) => any;\n";

    #[test]
    fn a_rendered_prompt_drives_agent_shell_through_both_steps() {
        let first = script_for_turn(&turn_from_prompt(&rendered_prompt(TS_EXEC_COMMAND, "<user_query>scenario:agent-shell file:p.txt</user_query>", "")));
        let cmd = "echo harmony-proxy-was-here > p.txt && echo marker-written";
        assert_eq!(call_of(&first), ("exec_command".to_owned(), json!({"cmd": cmd})));
        let after = format!(
            "<|start|>assistant<|channel|>analysis<|message|>{AGENT_SHELL_REASONING}<|end|><|start|>assistant to=functions.exec_command<|channel|>commentary <|constrain|>json<|message|>{}<|call|><|start|>functions.exec_command to=assistant<|channel|>commentary<|message|>marker-written\n<|end|>",
            json!({"cmd": cmd})
        );
        let second = script_for_turn(&turn_from_prompt(&rendered_prompt(TS_EXEC_COMMAND, "<user_query>scenario:agent-shell file:p.txt</user_query>", &after)));
        assert_eq!(final_of(&second), "Done. The command printed: marker-written. Turn-1 reasoning came back: yes.");
    }

    #[test]
    fn a_rendered_prompt_gives_the_shell_arguments_their_shape() {
        let shell = "type shell = (_: {\n// argv\ncommand: string[],\ntimeout_ms?: number,\n}) => any;\n";
        let s = script_for_turn(&turn_from_prompt(&rendered_prompt(shell, "scenario:agent-shell", "")));
        assert_eq!(call_of(&s), ("shell".to_owned(), json!({"command": ["bash", "-lc", MARKER_CMD]})));
        let cline = "type run_commands = (_: {\ncommands: string[],\n}) => any;\n";
        let s = script_for_turn(&turn_from_prompt(&rendered_prompt(cline, "scenario:agent-shell", "")));
        assert_eq!(call_of(&s), ("run_commands".to_owned(), json!({"commands": [MARKER_CMD]})));
        let opencode = "type bash = (_: {\ncommand: string,\ntimeout?: number,\ndescription: string,\n}) => any;\n";
        let s = script_for_turn(&turn_from_prompt(&rendered_prompt(opencode, "scenario:agent-shell", "")));
        assert_eq!(call_of(&s), ("bash".to_owned(), json!({"command": MARKER_CMD, "description": "write the marker file"})));
    }

    #[test]
    fn a_rendered_prompt_counts_its_tool_results_as_steps() {
        let script = json!({"mock": {"steps": [{"text": "zero"}, {"text": "one"}]}});
        let result = "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|><|start|>functions.f to=assistant<|channel|>commentary<|message|>ok<|end|>";
        let user = format!("wrapped {script}");
        assert_eq!(script_for_turn(&turn_from_prompt(&rendered_prompt("", &user, ""))).text.as_deref(), Some("zero"));
        assert_eq!(script_for_turn(&turn_from_prompt(&rendered_prompt("", &user, result))).text.as_deref(), Some("one"));
    }
}
