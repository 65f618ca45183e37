//! Scripts: what the mock answers, chosen by the user's text (`scenario:NAME`, a `{"mock": …}` script), one step per tool result.

use serde::Deserialize;
use serde_json::Value;

use super::turn::*;
use super::*;

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

pub(super) fn stop() -> Option<String> {
    Some("stop".into())
}
pub(super) fn yes() -> bool {
    true
}

impl Script {
    pub(super) fn from_text(text: &str) -> Self {
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
        "agent-edit" => agent_edit(&Turn::default()),
        "agent-modify" => agent_modify(&Turn::default()),
        "agent-compact" => agent_compact(&Turn::default()),
        "agent-overflow" => agent_overflow(&Turn::default()),
        "agent-subagent" => agent_subagent(&Turn::default()),
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

/// `agent-shell`: the tool call with no tool result yet, the answer after one.
pub(super) fn agent_shell(turn: &Turn) -> Script {
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

/// `agent-edit`: the agent's own edit tool writes the marker file (Codex's freeform
/// `apply_patch` adds it as a patch, Claude Code's `Write` with its absolute path, from
/// `dir:` in the prompt); after the tool's result, the answer says what the tool answered.
pub(super) fn agent_edit(turn: &Turn) -> Script {
    if turn.tool_results > 0 {
        let out: String = turn.last_tool_output.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(80).collect();
        let back = if turn.reasoning_back { "yes" } else { "no" };
        return Script::from_text(&format!(
            "<|channel|>analysis<|message|>The edit tool answered. Report it.<|end|><|start|>assistant<|channel|>final<|message|>Done. The edit tool answered: {out}. Turn-1 reasoning came back: {back}."
        ));
    }
    let Some(tool) = EDIT_TOOLS.iter().find_map(|n| turn.tools.iter().find(|t| t.name == *n)) else {
        return Script::from_text("<|channel|>analysis<|message|>No edit tool among the declared tools.<|end|><|start|>assistant<|channel|>final<|message|>No edit tool was declared.");
    };
    let name = marker_file(&turn.user);
    let args = if tool.name == "apply_patch" {
        json!({"input": format!("*** Begin Patch\n*** Add File: {name}\n+harmony-proxy-was-here\n*** End Patch\n")})
    } else {
        json!({"file_path": marker_path(&turn.user), "content": "harmony-proxy-was-here\n"})
    };
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>{AGENT_EDIT_REASONING}<|end|><|start|>assistant<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{args}",
        tool.name
    ))
}

/// `agent-modify`: an edit of a file that exists, the way Claude Code's `Edit` takes one (it
/// refuses to edit a file the session has not read): turn 1 reads the marker file (`Read`,
/// its absolute path from `dir:`), turn 2 replaces its placeholder line ([`MODIFY_PLACEHOLDER`])
/// with the marker (`Edit`), and after the edit's result the answer says what the tool
/// answered.
pub(super) fn agent_modify(turn: &Turn) -> Script {
    if turn.tool_results >= 2 {
        return agent_edit(turn);
    }
    let (Some(read), Some(edit)) = (turn.tools.iter().find(|t| t.name == "Read"), turn.tools.iter().find(|t| t.name == "Edit")) else {
        return Script::from_text("<|channel|>analysis<|message|>No Read and Edit tools among the declared tools.<|end|><|start|>assistant<|channel|>final<|message|>No Read and Edit tools were declared.");
    };
    let path = marker_path(&turn.user);
    let (reasoning, tool, args) = if turn.tool_results == 0 {
        (AGENT_EDIT_REASONING, &read.name, json!({"file_path": path}))
    } else {
        (
            "The file was read. Replace its placeholder.",
            &edit.name,
            json!({"file_path": path, "old_string": MODIFY_PLACEHOLDER, "new_string": "harmony-proxy-was-here"}),
        )
    };
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant<|channel|>commentary to=functions.{tool} <|constrain|>json<|message|>{args}"
    ))
}

/// What agents ask when they compact their history (Codex's words, Claude Code's).
const COMPACTION_ASKS: [&str; 2] = ["CONTEXT CHECKPOINT COMPACTION", "summary of the conversation so far"];
/// What the mock's summaries start with, so that the turn after a compaction knows it is one.
const SUMMARY_MARK: &str = "COMPACTED-SUMMARY";

/// A compaction request's answer: a summary that carries the scenario and marker file of the
/// conversation it summarizes, so the agent's next request (the summary in its history)
/// plays the same scenario on. It is inside `<summary>` tags, which Claude Code requires of
/// a summary (it asks again without them); Codex keeps the text as it is.
fn compaction_summary(turn: &Turn) -> Script {
    let name = marker_file(&turn.users);
    let scenario = find_scenario(&turn.users).map_or("agent-compact", |(_, s)| s);
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>Summarize for the next model.<|end|><|start|>assistant<|channel|>final<|message|><summary>{SUMMARY_MARK}: the shell tool was run to write the marker file. Next: scenario:{scenario} file:{name}</summary>"
    ))
}

/// The answer once a compaction's summary is in the history.
fn after_compaction(turn: &Turn) -> Script {
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>The history was compacted.<|end|><|start|>assistant<|channel|>final<|message|>Done after compaction. The summary came back: yes ({}).",
        marker_file(&turn.users)
    ))
}

/// `agent-compact`: `agent-shell`, for an agent whose window is small enough that it
/// compacts its history after the tool call (the mock, started with `--n-ctx`, says each
/// prompt's length in the usage and refuses one longer than its context); once the summary
/// is in the history, the answer says so.
pub(super) fn agent_compact(turn: &Turn) -> Script {
    if turn.users.contains(SUMMARY_MARK) {
        return after_compaction(turn);
    }
    agent_shell(turn)
}

/// How many lines each `agent-overflow` command prints (about 1,200 tokens of tool result,
/// as the mock counts them), and how many commands it runs before it answers.
pub const OVERFLOW_LINES: u32 = 600;
pub const OVERFLOW_ROUNDS: usize = 8;

/// `agent-overflow`: an agent that does not see its window fill (it thinks the window is
/// large) and learns it from the server. Each turn runs a shell command that prints
/// [`OVERFLOW_LINES`] lines (the first also writes the marker file), until a request that
/// carries their output is longer than the mock's context (`--n-ctx`) and is refused as
/// llama-server refuses it; the agent compacts on the error the proxy says in its API's
/// words (Claude Code on Anthropic's "prompt is too long", dropping old rounds until its
/// summary request fits), and once the summary is in the history, the answer says so. After
/// [`OVERFLOW_ROUNDS`] commands with no refusal, the answer says that instead.
pub(super) fn agent_overflow(turn: &Turn) -> Script {
    if turn.users.contains(SUMMARY_MARK) {
        return after_compaction(turn);
    }
    if turn.tool_results >= OVERFLOW_ROUNDS {
        return Script::from_text(
            "<|channel|>analysis<|message|>It fit.<|end|><|start|>assistant<|channel|>final<|message|>The output fit in the context: nothing overflowed.",
        );
    }
    let Some(tool) = shell_tool(&turn.tools) else {
        return Script::from_text("<|channel|>analysis<|message|>No shell tool among the declared tools.<|end|><|start|>assistant<|channel|>final<|message|>No shell tool was declared.");
    };
    let first = 100_000 + turn.tool_results as u32 * OVERFLOW_LINES;
    let seq = format!("seq {first} {}", first + OVERFLOW_LINES - 1);
    let cmd = if turn.tool_results == 0 { format!("echo harmony-proxy-was-here > {} && {seq}", marker_file(&turn.user)) } else { seq };
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>{AGENT_SHELL_REASONING}<|end|><|start|>assistant<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{}",
        tool.name,
        shell_args(tool, &cmd)
    ))
}

/// `agent-subagent`: the agent hands the shell task to a subagent on a model of its own
/// naming: turn 1 calls Claude Code's `Task` tool (`Agent` in other versions) with `model:
/// "haiku"` and, as the subagent's prompt, scenario `agent-shell` with the same marker file,
/// which the subagent's own requests then play (its shell tool writes the file); once its
/// report is back, the answer says whether the report holds the command's output.
pub(super) fn agent_subagent(turn: &Turn) -> Script {
    if turn.tool_results > 0 {
        let back = if turn.last_tool_output.contains("The command printed: marker-written") { "yes" } else { "no" };
        return Script::from_text(&format!(
            "<|channel|>analysis<|message|>The subagent reported.<|end|><|start|>assistant<|channel|>final<|message|>Done. The subagent's report came back: {back}."
        ));
    }
    let Some(tool) = turn.tools.iter().find(|t| t.name == "Task" || t.name == "Agent") else {
        return Script::from_text("<|channel|>analysis<|message|>No subagent tool among the declared tools.<|end|><|start|>assistant<|channel|>final<|message|>No subagent tool was declared.");
    };
    let args = json!({
        "description": "write the marker file",
        "prompt": format!("Please use the shell. scenario:agent-shell file:{}", marker_file(&turn.user)),
        "subagent_type": "general-purpose",
        "model": "haiku",
        "run_in_background": false,
    });
    Script::from_text(&format!(
        "<|channel|>analysis<|message|>Hand the shell task to a subagent.<|end|><|start|>assistant<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{args}",
        tool.name
    ))
}

/// A built-in scenario for this turn (`agent-shell`, `agent-edit`, `agent-modify`,
/// `agent-compact`, `agent-overflow` and `agent-subagent` read the request).
pub(super) fn named_scenario(name: &str, turn: &Turn) -> Option<Script> {
    match name {
        "agent-shell" => Some(agent_shell(turn)),
        "agent-edit" => Some(agent_edit(turn)),
        "agent-modify" => Some(agent_modify(turn)),
        "agent-compact" => Some(agent_compact(turn)),
        "agent-overflow" => Some(agent_overflow(turn)),
        "agent-subagent" => Some(agent_subagent(turn)),
        _ => scenario(name),
    }
}

/// The first `scenario:NAME` in `text` naming a known scenario: where it stands, and NAME.
pub(super) fn find_scenario(text: &str) -> Option<(usize, &str)> {
    text.match_indices("scenario:").find_map(move |(at, _)| {
        let rest = &text[at + "scenario:".len()..];
        let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
        let name = &rest[..end];
        scenario(name).map(|_| (at, name))
    })
}

/// The first `{"mock": …}` JSON value in `text`: where it stands, and its `mock` member.
pub(super) fn find_mock(text: &str) -> Option<(usize, Value)> {
    text.match_indices("{\"mock\"").find_map(move |(at, _)| {
        // Reads one value and ignores what follows it.
        let v = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>().next()?.ok()?;
        v.get("mock").cloned().map(|m| (at, m))
    })
}

pub(super) fn mock_script(m: &Value) -> Script {
    serde_json::from_value::<Script>(m.clone()).unwrap_or_else(|e| Script::from_text(&format!("<|channel|>final<|message|>mock script error: {e}")))
}

/// The step of `script` for a turn with `tool_results` tool results (see [`Script::steps`]).
pub(super) fn step(mut script: Script, tool_results: usize) -> Script {
    if script.steps.is_empty() {
        return script;
    }
    let i = tool_results.min(script.steps.len() - 1);
    script.steps.swap_remove(i)
}

/// The script the user's text asks for, if it asks for one.
pub(super) fn requested(turn: &Turn) -> Option<Script> {
    let text = turn.user.as_str();
    if COMPACTION_ASKS.iter().any(|a| text.contains(a)) {
        return Some(compaction_summary(turn));
    }
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
        // A compacted history whose last user message is the agent's own (Claude Code ends
        // it with a reminder): the scenario the mock's summary names plays on.
        (None, None) => {
            let summary = &turn.users[turn.users.find(SUMMARY_MARK)?..];
            find_scenario(summary).and_then(|(_, name)| named_scenario(name, turn))
        }
    }
}

pub(super) fn script_for_turn(turn: &Turn) -> Script {
    let script = requested(turn).unwrap_or_else(|| scenario("hello").unwrap_or_else(|| Script::from_text("Hello")));
    step(script, turn.tool_results)
}

pub(super) fn script_for(req: &Value) -> Script {
    script_for_turn(&turn_from_chat(req))
}
