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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::upstream::BoxError;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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
    /// After this many deltas: end the body cleanly with no finish and no `[DONE]`.
    pub truncate_after: Option<usize>,
    /// After this many deltas: send a chunk that is not JSON.
    pub invalid_after: Option<usize>,
    /// After the last frame: keep the connection open (without `[DONE]`) until the client goes.
    #[serde(default)]
    pub linger: bool,
}

/// A scripted answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Deltas: a string is `{"content": s}`; an object is sent as the delta itself.
    #[serde(default)]
    pub deltas: Vec<Value>,
    /// Raw model output, split the way llama.cpp streams it (one token-ish piece per delta).
    pub text: Option<String>,
    /// `null`: no finish chunk.
    #[serde(default = "stop")]
    pub finish: Option<String>,
    #[serde(default = "yes")]
    pub done: bool,
    #[serde(default)]
    pub delay_ms: u64,
    /// Counts attempts across requests, for `faults`.
    pub key: Option<String>,
    /// `faults[n]` applies to attempt n of this key.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Answer one non-streamed `chat.completion` JSON even when asked to stream.
    #[serde(default)]
    pub json: bool,
    /// A recorded upstream SSE body, sent verbatim one event per write (faults count events).
    pub raw: Option<String>,
    /// Answers for the turns of an agent's tool loop: when not empty, the answer is
    /// `steps[n]` (the last step when n is past the end), n being the number of `tool`
    /// messages after the last user message. The step is the whole script: its own `text`,
    /// `deltas`, `finish`, `delay_ms`, `key`, `faults`… count, this script's others do not.
    #[serde(default)]
    pub steps: Vec<Script>,
}

fn stop() -> Option<String> {
    Some("stop".into())
}
fn yes() -> bool {
    true
}

impl Script {
    fn from_text(text: &str) -> Self {
        Script {
            deltas: Vec::new(),
            text: Some(text.into()),
            finish: stop(),
            done: true,
            delay_ms: 0,
            key: None,
            faults: Vec::new(),
            json: false,
            raw: None,
            steps: Vec::new(),
        }
    }
}

/// A built-in scenario, as answered to a request that tells it nothing more (`agent-shell`
/// then sees no shell tool; requests get theirs through the turn, see `named_scenario`).
pub fn scenario(name: &str) -> Option<Script> {
    Some(match name {
        "hello" => Script::from_text(
            "<|channel|>analysis<|message|>The user says hello. Reply briefly and warmly.<|end|><|start|>assistant<|channel|>final<|message|>Hello! How can I help you today?",
        ),
        "weather" => Script::from_text(
            "<|channel|>analysis<|message|>Need the weather tool for Paris.<|end|><|start|>assistant<|channel|>commentary<|message|>I'll check the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\",\"unit\":\"celsius\"}",
        ),
        "two-tools" => Script::from_text(
            "<|channel|>analysis<|message|>Read both files.<|end|><|start|>assistant<|channel|>commentary to=functions.read_file <|constrain|>json<|message|>{\"path\":\"a.txt\"}<|call|><|start|>assistant to=functions.read_file<|channel|>commentary json<|message|>{\"path\":\"b.txt\"}",
        ),
        "slow" => {
            let mut s = scenario("hello")?;
            s.delay_ms = 100;
            s
        }
        "agent-shell" => agent_shell(&Turn::default()),
        _ => return None,
    })
}

/// Splits model output like llama.cpp streams it: every special token alone, words with
/// their leading space.
pub fn llama_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    harmony_filters::markup::split(text, true, |p| match p {
        harmony_filters::markup::Piece::Special(s) => out.push(s.literal().to_owned()),
        harmony_filters::markup::Piece::Text(t) => {
            let mut cur = String::new();
            for c in t.chars() {
                if (c == ' ' || c == '\n') && !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(c);
            }
            if !cur.is_empty() {
                out.push(cur);
            }
        }
    });
    out
}

/// What a script may look at in a request, read alike from chat messages
/// ([`turn_from_chat`]) and from a rendered Harmony prompt ([`turn_from_prompt`]).
#[derive(Debug, Default)]
struct Turn {
    /// The last user message's text (its text parts joined by newlines).
    user: String,
    /// Tool results after the last user message: the step of the tool loop.
    tool_results: usize,
    /// The text of the last tool result.
    last_tool_output: String,
    /// Whether a tool-call turn came back with reasoning holding [`REASONING_MARK`].
    reasoning_back: bool,
    /// The declared tools.
    tools: Vec<ToolDecl>,
}

/// A declared tool: its name and its top-level parameters.
#[derive(Debug, Clone)]
struct ToolDecl {
    name: String,
    props: Vec<Prop>,
}

impl ToolDecl {
    fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name)
    }
}

/// One top-level parameter of a tool.
#[derive(Debug, Clone)]
struct Prop {
    name: String,
    required: bool,
    kind: Kind,
}

/// The type of a parameter, as far as the shell arguments care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Array,
    Boolean,
    Other,
}

/// Shell tool names, in the order `agent-shell` looks for them.
const SHELL_TOOLS: [&str; 8] = ["exec_command", "shell", "Bash", "bash", "run_shell_command", "run_commands", "execute_command", "shell_command"];
/// What `agent-shell` reasons before its tool call.
const AGENT_SHELL_REASONING: &str = "I will run the shell tool to write the marker file.";
/// What marks that reasoning when it comes back in the history.
const REASONING_MARK: &str = "I will run the shell tool";

/// The text of a message's `content`: a string, or the text parts of an array joined by
/// newlines.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str))).collect::<Vec<&str>>().join("\n")
        }
        _ => String::new(),
    }
}

fn role_of(m: &Value) -> &str {
    m.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The turn of a chat request (`messages`, `tools` as `{type, function: {name, parameters}}`).
fn turn_from_chat(req: &Value) -> Turn {
    let empty: Vec<Value> = Vec::new();
    let messages = req.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    let last_user = messages.iter().rposition(|m| role_of(m) == "user");
    let after = last_user.map_or(0, |i| i + 1);
    Turn {
        user: last_user.map(|i| text_of(messages[i].get("content"))).unwrap_or_default(),
        tool_results: messages[after..].iter().filter(|m| role_of(m) == "tool").count(),
        last_tool_output: messages.iter().rev().find(|m| role_of(m) == "tool").map(|m| text_of(m.get("content"))).unwrap_or_default(),
        reasoning_back: messages.iter().any(|m| {
            role_of(m) == "assistant"
                && m.get("tool_calls").and_then(Value::as_array).is_some_and(|c| !c.is_empty())
                && ["reasoning_content", "reasoning", "thinking"].iter().any(|f| m.get(*f).and_then(Value::as_str).is_some_and(|r| r.contains(REASONING_MARK)))
        }),
        tools: tools_of_request(req),
    }
}

/// The declared tools of a chat request (a flat `{name, parameters}` or Anthropic's
/// `input_schema` is read too).
fn tools_of_request(req: &Value) -> Vec<ToolDecl> {
    let Some(tools) = req.get("tools").and_then(Value::as_array) else { return Vec::new() };
    tools
        .iter()
        .filter_map(|t| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name").and_then(Value::as_str)?.to_owned();
            let params = f.get("parameters").or_else(|| f.get("input_schema"));
            let required: Vec<&str> =
                params.and_then(|p| p.get("required")).and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let props: Vec<Prop> = params
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object)
                .map(|ps| ps.iter().map(|(k, v)| Prop { name: k.clone(), required: required.contains(&k.as_str()), kind: kind_of_schema(v) }).collect())
                .unwrap_or_default();
            Some(ToolDecl { name, props })
        })
        .collect()
}

/// A JSON schema's type (`["string", "null"]` counts as its first non-null type).
fn kind_of_schema(schema: &Value) -> Kind {
    let ty = match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    };
    match ty {
        Some("string") => Kind::String,
        Some("array") => Kind::Array,
        Some("boolean") => Kind::Boolean,
        _ => Kind::Other,
    }
}

/// The turn of a rendered Harmony prompt: the last `<|start|>user` message, the
/// `<|start|>functions.…` tool results after it, the analysis messages, and the tools the
/// developer message declares.
fn turn_from_prompt(prompt: &str) -> Turn {
    let tail = prompt.rfind("<|start|>user").map_or(prompt, |i| &prompt[i..]);
    let user = prompt.rsplit_once("<|start|>user<|message|>").map(|(_, rest)| rest.split("<|end|>").next().unwrap_or("").to_owned()).unwrap_or_default();
    let last_tool_output = prompt
        .rfind("<|start|>functions.")
        .and_then(|i| prompt[i..].split_once("<|message|>"))
        .map(|(_, body)| body.split("<|end|>").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let reasoning_back = prompt.split("<|channel|>analysis<|message|>").skip(1).any(|m| m.split("<|end|>").next().unwrap_or("").contains(REASONING_MARK));
    Turn { user, tool_results: tail.matches("<|start|>functions.").count(), last_tool_output, reasoning_back, tools: tools_of_prompt(prompt) }
}

/// The tools of a rendered prompt's `namespace functions { … }`, each declared as
/// `type NAME = (_: {\nPROP: TYPE,\nPROP?: TYPE,\n}) => any;` (openai-harmony's rendering).
fn tools_of_prompt(prompt: &str) -> Vec<ToolDecl> {
    let Some(start) = prompt.find("namespace functions {") else { return Vec::new() };
    let ns = &prompt[start..];
    let ns = &ns[..ns.find("} // namespace functions").unwrap_or(ns.len())];
    let mut out = Vec::new();
    let mut rest = ns;
    while let Some(at) = rest.find("\ntype ") {
        let decl_start = &rest[at + 1..];
        let end = decl_start.find(") => any;").map_or(decl_start.len(), |e| e + ") => any;".len());
        let decl = &decl_start[..end];
        rest = &decl_start[end..];
        let Some((head, _)) = decl.split_once(" = (") else { continue };
        let name = head.trim_start_matches("type ").trim().to_owned();
        let props: Vec<Prop> = decl.lines().skip(1).filter_map(ts_prop).collect();
        out.push(ToolDecl { name, props });
    }
    out
}

/// One top-level parameter line of a rendered declaration: `name: type,` or
/// `name?: type,` (nested members are indented; comments start with `//`).
fn ts_prop(line: &str) -> Option<Prop> {
    if line.starts_with(char::is_whitespace) || line.starts_with("//") {
        return None;
    }
    let (name, ty) = line.split_once(':')?;
    let (name, required) = match name.strip_suffix('?') {
        Some(n) => (n, false),
        None => (name, true),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    let ty = ty.split(" //").next().unwrap_or("").trim().trim_end_matches(',');
    let first = ty.split('|').next().unwrap_or("").trim();
    let kind = if first.ends_with("[]") || first.starts_with("Array<") {
        Kind::Array
    } else if first == "string" || first.starts_with('"') {
        Kind::String
    } else if first == "boolean" {
        Kind::Boolean
    } else {
        Kind::Other
    };
    Some(Prop { name: name.to_owned(), required, kind })
}

/// The first declared shell tool, by [`SHELL_TOOLS`] order.
fn shell_tool(tools: &[ToolDecl]) -> Option<&ToolDecl> {
    SHELL_TOOLS.iter().find_map(|n| tools.iter().find(|t| t.name == *n))
}

/// The arguments that run `cmd` with `tool`, shaped by its parameters:
/// - `cmd` → `{"cmd": cmd}` (Codex's `exec_command`);
/// - else `commands` → `{"commands": [cmd]}` (Cline's `run_commands`);
/// - else `command` typed array → `{"command": ["bash", "-lc", cmd]}` (Codex's `shell`);
/// - else `{"command": cmd}` (Claude Code, OpenCode, Qwen Code, Continue…).
///
/// Then every other required parameter gets a value: `description` "write the marker file"
/// (OpenCode), a boolean `false` (Qwen Code's `is_background`), a string `""`; required
/// parameters of other types are left out.
fn shell_args(tool: &ToolDecl, cmd: &str) -> Value {
    let mut args = serde_json::Map::new();
    if tool.prop("cmd").is_some() {
        args.insert("cmd".into(), json!(cmd));
    } else if tool.prop("commands").is_some() {
        args.insert("commands".into(), json!([cmd]));
    } else if tool.prop("command").is_some_and(|p| p.kind == Kind::Array) {
        args.insert("command".into(), json!(["bash", "-lc", cmd]));
    } else {
        args.insert("command".into(), json!(cmd));
    }
    for p in tool.props.iter().filter(|p| p.required) {
        if args.contains_key(p.name.as_str()) {
            continue;
        }
        let v = match (p.name.as_str(), p.kind) {
            ("description", _) => json!("write the marker file"),
            (_, Kind::Boolean) => json!(false),
            (_, Kind::String) => json!(""),
            _ => continue,
        };
        args.insert(p.name.clone(), v);
    }
    Value::Object(args)
}

/// The file `agent-shell` writes: NAME of the first `file:NAME` in the user's text (NAME of
/// `[A-Za-z0-9._-]`, trailing dots dropped), else `proxied.txt`.
fn marker_file(user: &str) -> String {
    for (at, _) in user.match_indices("file:") {
        if user[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = user[at + "file:".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
        let name = name.trim_end_matches('.');
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    "proxied.txt".into()
}

/// `agent-shell`: the tool call with no tool result yet, the answer after one.
fn agent_shell(turn: &Turn) -> Script {
    if turn.tool_results > 0 {
        // Codex heads a command's output with its own lines (`Chunk ID: …`, …, `Output:`);
        // Qwen Code frames it as `Command: …`, `Directory: …`, `Output: OUT`, `Error: …`, ….
        let all = turn.last_tool_output.as_str();
        // Cline's `run_commands` answers a JSON list of `{query, result, success}`, one a command.
        let listed = serde_json::from_str::<Value>(all)
            .ok()
            .and_then(|v| v.as_array().and_then(|rs| rs.iter().find_map(|r| r.get("result").and_then(Value::as_str).map(str::to_owned))));
        let all = listed.as_deref().unwrap_or(all);
        let output = all
            .split_once("\nOutput:\n")
            .map(|(_, o)| o)
            .or_else(|| all.lines().find_map(|l| l.strip_prefix("Output: ")).filter(|_| all.starts_with("Command: ")))
            .unwrap_or(all);
        let out: String = output.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(80).collect();
        let back = if turn.reasoning_back { "yes" } else { "no" };
        return Script::from_text(&format!(
            "<|channel|>analysis<|message|>The command ran. Report what it printed.<|end|><|start|>assistant<|channel|>final<|message|>Done. The command printed: {out}. Turn-1 reasoning came back: {back}."
        ));
    }
    let Some(tool) = shell_tool(&turn.tools) else {
        return Script::from_text("<|channel|>analysis<|message|>No shell tool among the declared tools.<|end|><|start|>assistant<|channel|>final<|message|>No shell tool was declared.");
    };
    let cmd = format!("echo harmony-proxy-was-here > {} && echo marker-written", marker_file(&turn.user));
    let args = shell_args(tool, &cmd);
    // Like the other scenarios, no closing <|call|>: llama.cpp does not stream the stop token
    // it ends on (the raw completion endpoints add it).
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>{AGENT_SHELL_REASONING}<|end|><|start|>assistant<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{args}",
        tool.name
    ))
}

/// A built-in scenario for this turn (`agent-shell` reads the request).
fn named_scenario(name: &str, turn: &Turn) -> Option<Script> {
    if name == "agent-shell" {
        Some(agent_shell(turn))
    } else {
        scenario(name)
    }
}

/// The first `scenario:NAME` in `text` naming a known scenario: where it stands, and NAME.
fn find_scenario(text: &str) -> Option<(usize, &str)> {
    text.match_indices("scenario:").find_map(move |(at, _)| {
        let rest = &text[at + "scenario:".len()..];
        let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
        let name = &rest[..end];
        scenario(name).map(|_| (at, name))
    })
}

/// The first `{"mock": …}` JSON value in `text`: where it stands, and its `mock` member.
fn find_mock(text: &str) -> Option<(usize, Value)> {
    text.match_indices("{\"mock\"").find_map(move |(at, _)| {
        // Reads one value and ignores what follows it.
        let v = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>().next()?.ok()?;
        v.get("mock").cloned().map(|m| (at, m))
    })
}

fn mock_script(m: &Value) -> Script {
    serde_json::from_value::<Script>(m.clone()).unwrap_or_else(|e| Script::from_text(&format!("<|channel|>final<|message|>mock script error: {e}")))
}

/// The step of `script` for a turn with `tool_results` tool results (see [`Script::steps`]).
fn step(mut script: Script, tool_results: usize) -> Script {
    if script.steps.is_empty() {
        return script;
    }
    let i = tool_results.min(script.steps.len() - 1);
    script.steps.swap_remove(i)
}

/// The script the user's text asks for, if it asks for one.
fn requested(turn: &Turn) -> Option<Script> {
    let text = turn.user.as_str();
    // The exact forms, read as they always were.
    if let Some(name) = text.trim().strip_prefix("scenario:") {
        if let Some(s) = named_scenario(name.trim(), turn) {
            return Some(s);
        }
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if let Some(m) = v.get("mock") {
            return Some(mock_script(m));
        }
    }
    // Anywhere in the text: whichever comes first.
    match (find_scenario(text), find_mock(text)) {
        (Some((s_at, _)), Some((m_at, m))) if m_at < s_at => Some(mock_script(&m)),
        (Some((_, name)), _) => named_scenario(name, turn),
        (None, Some((_, m))) => Some(mock_script(&m)),
        (None, None) => None,
    }
}

fn script_for_turn(turn: &Turn) -> Script {
    let script = requested(turn).unwrap_or_else(|| scenario("hello").unwrap_or_else(|| Script::from_text("Hello")));
    step(script, turn.tool_results)
}

fn script_for(req: &Value) -> Script {
    script_for_turn(&turn_from_chat(req))
}

fn chunk(delta: &Value, finish: Option<&str>) -> Bytes {
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

fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
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
}

async fn handle(state: Arc<MockState>, conn: u64, req: Request<Incoming>) -> Result<Response<Body>, CloseConnection> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/v1/models") => Ok(json_resp(200, &json!({"object": "list", "data": [{"id": "gpt-oss-20b", "object": "model", "owned_by": "mock"}]}))),
        ("GET", "/mock/stats") => Ok(json_resp(
            200,
            &json!({
                "requests": state.requests.load(Ordering::SeqCst),
                "completed": state.completed.load(Ordering::SeqCst),
                "cancelled": state.cancelled.load(Ordering::SeqCst),
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

async fn chat(state: Arc<MockState>, req: Value) -> Result<Response<Body>, CloseConnection> {
    if let Some(msg) = template_error(&req) {
        return Ok(json_resp(500, &json!({"error": {"code": 500, "message": msg, "type": "server_error"}})));
    }
    let script = script_for(&req);
    let attempt = match &script.key {
        Some(k) => {
            let mut a = state.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = a.entry(k.clone()).or_insert(0);
            *n += 1;
            *n - 1
        }
        None => 0,
    };
    let fault = script.faults.get(attempt as usize).cloned().unwrap_or_default();
    if let Some(ms) = fault.head_delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fault.close {
        return Err(CloseConnection);
    }
    if let Some(status) = fault.status {
        let mut r = json_resp(status, &json!({"error": {"message": format!("mock failure {status}"), "type": "server_error", "code": status}}));
        if let Some(ra) = fault.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, ra.into());
        }
        return Ok(r);
    }
    let mut deltas: Vec<Value> = script.deltas.iter().map(|d| if d.is_string() { json!({"content": d}) } else { d.clone() }).collect();
    if let Some(t) = &script.text {
        deltas.extend(llama_pieces(t).into_iter().map(|p| json!({"content": p})));
    }
    let mut finish = script.finish.clone();
    if let Some(enc) = state.enc.as_ref().filter(|_| state.parsed) {
        let (parsed, calls) = parse_like_llama(enc, &deltas);
        deltas = parsed;
        if calls && finish.as_deref() == Some("stop") {
            finish = Some("tool_calls".into());
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage = json!({"prompt_tokens": 12, "completion_tokens": deltas.len(), "total_tokens": 12 + deltas.len()});
    if script.json || !stream {
        let content: String = deltas.iter().filter_map(|d| d.get("content").and_then(Value::as_str)).collect();
        state.completed.fetch_add(1, Ordering::SeqCst);
        return Ok(json_resp(
            200,
            &json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-oss-20b",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": usage}),
        ));
    }
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    // Every frame to send, in order; faults count these (after the role chunk).
    let frames: Vec<Bytes> = match &script.raw {
        Some(raw) => raw.split_inclusive("\n\n").map(|e| Bytes::from(e.to_owned())).collect(),
        None => deltas.iter().map(|d| chunk(d, None)).collect(),
    };
    let raw = script.raw.is_some();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        let delay = Duration::from_millis(script.delay_ms);
        // Sends one frame; false when the client has gone (the stream was cancelled).
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        let cancelled = || {
            state.cancelled.fetch_add(1, Ordering::SeqCst);
        };
        if !raw && !send(chunk(&json!({"role": "assistant", "content": null}), None)).await {
            return cancelled();
        }
        for (i, frame) in frames.into_iter().enumerate() {
            if fault.cut_after == Some(i) {
                // Let what was sent reach the wire first: a cut drops unflushed bytes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(Box::new(CloseConnection))).await;
                return;
            }
            if fault.stall_after == Some(i) {
                tx.closed().await;
                return cancelled();
            }
            if fault.error_after == Some(i) {
                let _ = send(Bytes::from("data: {\"error\":{\"code\":500,\"message\":\"mock in-band failure\",\"type\":\"server_error\"}}\n\n")).await;
                return;
            }
            if fault.truncate_after == Some(i) {
                return;
            }
            if fault.invalid_after == Some(i) {
                let _ = send(Bytes::from("data: {\"choices\": [{\"delta\": \n\n")).await;
                continue;
            }
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return cancelled(),
                }
            }
            if !send(frame).await {
                return cancelled();
            }
        }
        if raw {
            state.completed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Some(f) = &finish {
            if !send(chunk(&json!({}), Some(f))).await {
                return cancelled();
            }
        }
        if include_usage {
            let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-oss-20b", "choices": [], "usage": usage});
            let _ = send(Bytes::from(format!("data: {u}\n\n"))).await;
        }
        if script.done && !fault.linger {
            let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
        state.completed.fetch_add(1, Ordering::SeqCst);
        if fault.linger {
            tx.closed().await;
        }
    });
    let body = StreamBody::new(ReceiverStream(rx)).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("static"));
    Ok(r)
}

/// A raw completion, as llama.cpp answers a prompt the client rendered: `/v1/completions`
/// streams `choices[0].text` with special tokens as text; the native `/completion` streams
/// each token id (`return_tokens`) and ends with `stop: true` and no `[DONE]`. The script is
/// picked from the prompt's last user message, its step by the tool results after it (see
/// [`turn_from_prompt`]); the decoded prompt is kept in `last_request`
/// (`prompt_text`) so tests can assert what the proxy rendered.
async fn completion(state: Arc<MockState>, req: Value, native: bool) -> Result<Response<Body>, CloseConnection> {
    let Some(enc) = state.enc.clone() else {
        return Ok(json_resp(501, &json!({"error": {"message": "this mock has no vocabulary", "type": "server_error"}})));
    };
    let prompt_ids: Vec<u32> = match req.get("prompt") {
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_u64().map(|t| t as u32)).collect(),
        Some(Value::String(s)) => enc.tokenizer().encode_with_special_tokens(s),
        _ => return Ok(json_resp(400, &json!({"error": {"message": "prompt is required", "type": "invalid_request_error"}}))),
    };
    let prompt_text = enc.tokenizer().decode_utf8(&prompt_ids).unwrap_or_default();
    let mut recorded = req.clone();
    recorded["prompt_text"] = Value::String(prompt_text.clone());
    *state.last_request.lock().unwrap_or_else(|e| e.into_inner()) = recorded;
    let script = script_for_turn(&turn_from_prompt(&prompt_text));
    let text = script.text.clone().unwrap_or_default();
    // The model's own stop token ends the turn: <|call|> after a tool call, else <|return|>
    // (unless the script wrote it).
    let ends_in_call = text.rsplit("<|start|>").next().is_some_and(|m| m.contains(" to="));
    let full = if text.ends_with("<|call|>") || text.ends_with("<|return|>") {
        text
    } else {
        format!("{text}{}", if ends_in_call { "<|call|>" } else { "<|return|>" })
    };
    let mut ids = enc.tokenizer().encode_with_special_tokens(&full);
    let limit = req.get(if native { "n_predict" } else { "max_tokens" }).and_then(Value::as_i64).filter(|n| *n >= 0).map(|n| n as usize);
    let cut = limit.is_some_and(|n| n < ids.len());
    if let Some(n) = limit {
        ids.truncate(n);
    }
    let created = 1_700_000_000;
    let model = req.get("model").cloned().unwrap_or(json!("gpt-oss-20b"));
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let mut frames: Vec<Bytes> = Vec::new();
    let (stop_a, stop_b) = (enc.tokenizer().encode_with_special_tokens("<|return|>"), enc.tokenizer().encode_with_special_tokens("<|call|>"));
    for id in &ids {
        // llama.cpp renders its end-of-generation tokens as empty text.
        let piece = if stop_a.contains(id) || stop_b.contains(id) { String::new() } else { enc.tokenizer().decode_utf8([*id]).unwrap_or_default() };
        let v = if native {
            json!({"content": piece, "tokens": [id], "stop": false})
        } else {
            json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}]})
        };
        frames.push(Bytes::from(format!("data: {v}\n\n")));
    }
    let (n_prompt, n_out) = (prompt_ids.len(), ids.len());
    if native {
        let v = json!({"content": "", "tokens": [], "stop": true, "stop_type": if cut { "limit" } else { "eos" }, "tokens_predicted": n_out, "tokens_evaluated": n_prompt});
        frames.push(Bytes::from(format!("data: {v}\n\n")));
    } else {
        let v = json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": if cut { "length" } else { "stop" }}]});
        frames.push(Bytes::from(format!("data: {v}\n\n")));
        if include_usage {
            let u = json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}});
            frames.push(Bytes::from(format!("data: {u}\n\n")));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    state.completed.fetch_add(1, Ordering::SeqCst);
    let body = StreamBody::new(futures_stream(frames)).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("static"));
    Ok(r)
}

/// A body of ready frames.
fn futures_stream(frames: Vec<Bytes>) -> ReadyFrames {
    ReadyFrames(frames.into_iter())
}

struct ReadyFrames(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for ReadyFrames {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

/// Raw-Harmony content deltas → the deltas llama-server sends with its parser on, made with
/// our own parser (harmony-parse, then tool-bridge as `ide-tools` has it). Whether any tool
/// call was made comes back too (the finish reason becomes `tool_calls`).
fn parse_like_llama(enc: &openai_harmony::HarmonyEncoding, deltas: &[Value]) -> (Vec<Value>, bool) {
    use harmony_filters::stages::harmony_parse::{HarmonyParseConfig, HarmonyParseFactory};
    use harmony_filters::stages::tool_bridge::{Mode, Preambles, Reasoning, ToolBridgeConfig, ToolBridgeFactory};
    use harmony_filters::{Chain, Event, RequestMeta, StageFactory};
    let meta = RequestMeta::new("mock", true, false);
    let bridge = ToolBridgeConfig { mode: Mode::OpenaiToolCalls, reasoning: Reasoning::ReasoningContent, preambles: Preambles::Content };
    let mut chain =
        Chain::new(vec![HarmonyParseFactory::new(&HarmonyParseConfig::default(), enc.clone()).new_stage(&meta), ToolBridgeFactory(bridge).new_stage(&meta)]);
    let mut input: Vec<Event> = deltas.iter().filter_map(|d| d.get("content").and_then(Value::as_str)).map(|t| Event::Upstream(t.to_owned())).collect();
    let mut events = Vec::new();
    chain.push_all(&mut input, &mut events);
    chain.end(&mut events);
    let mut calls = false;
    let out = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Content(t) => Some(json!({"content": t})),
            Event::Reasoning(_, t) => Some(json!({"reasoning_content": t})),
            Event::ClientToolCall { index, name, .. } => {
                calls = true;
                let id = harmony_filters::stage::random_id("", 32);
                Some(json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
            }
            Event::ClientToolArgs { index, args } => Some(json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]})),
            _ => None,
        })
        .collect();
    (out, calls)
}

struct ReceiverStream(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
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
