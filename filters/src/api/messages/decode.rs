//! A Messages request → the conversation the stages work on.
//!
//! - `system` (a string or text blocks) and `system` messages inside `messages` (Claude Code
//!   sends one) become one system message first. Claude Code's billing header block
//!   (`x-anthropic-billing-header: …`) is not an instruction and is left out.
//! - User blocks: `text` joins into the user turn; each `tool_result` becomes the `tool`
//!   message for its `tool_use_id` (`is_error` said in it), before the turn's text.
//! - Assistant blocks: `thinking` is that turn's reasoning (its text, else the reasoning
//!   sealed in its `signature`; one that does not open is ignored, counted and logged);
//!   `redacted_thinking` is ignored; `text` is the answer, or the preamble of the turn's
//!   `tool_use` blocks, which are its `tool_calls` (`input` as JSON arguments).
//! - Tool ids: the bridge's `call_X` goes to the client as `toolu_X` and comes back as
//!   `call_X`, so reasoning memory finds its turn; other ids keep a consistent mapping.
//! - Tools: client tools → functions; server tools (a `type` such as `web_search_…`,
//!   `bash_…`, `text_editor_…`) and deferred ones (`defer_loading`) are left out, noted.
//! - `max_tokens` (required), `temperature`, `top_p`, `top_k` map to their chat names;
//!   `stop_sequences` go to the encoder, which applies them; `thinking` (`enabled` with `budget_tokens`, `adaptive`, `disabled`)
//!   and `output_config.effort` (which wins) → `reasoning_effort` low / medium / high.
//! - Refused with a 400 naming the field: no `model`, no `max_tokens`, images and documents
//!   (gpt-oss reads text only), unknown block types, unknown roles.

use std::sync::Arc;

use serde_json::{json, Value};

use super::types::{Content, MessageParam, Request, Thinking, Tool, ToolChoice};
use super::Context;
use crate::api::{typed, ApiContext, Decoded, EdgeEnv};
use crate::conversation::{
    self, Content as MessageContent, Conversation, FunctionTool, Limit, Message, Reasoning, ReasoningField, Role, ToolCall, ToolChoice as Choice,
};
use crate::event::ApiError;
use crate::stage::random_id;

fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(param, message)
}

/// A client's tool id as the chat conversation knows it (`toolu_X` → `call_X`).
pub fn call_id(tool_use_id: &str) -> String {
    match tool_use_id.strip_prefix("toolu_") {
        Some(rest) => format!("call_{rest}"),
        None => tool_use_id.to_owned(),
    }
}

/// The bridge's call id as the client gets it (`call_X` → `toolu_X`).
pub fn tool_use_id(call_id: &str) -> String {
    match call_id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => call_id.to_owned(),
    }
}

const BILLING_HEADER: &str = "x-anthropic-billing-header:";

/// The text of `text` blocks (others refused or, with `skip_other`, passed over).
fn text_blocks(content: Content, at: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(s) => Ok(s),
        Content::Blocks(blocks) => {
            let mut parts: Vec<String> = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text" => parts.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_owned()),
                    t @ ("image" | "document" | "search_result") => {
                        return Err(invalid(format!("{at}.content[{j}]"), format!("gpt-oss reads text only; a `{t}` block cannot be sent to it")))
                    }
                    other => return Err(invalid(format!("{at}.content[{j}].type"), format!("unknown block type {other:?} here"))),
                }
            }
            Ok(parts.join("\n"))
        }
    }
}

/// Builds the conversation's messages, one message at a time.
#[derive(Default)]
struct Turns {
    instructions: Vec<String>,
    messages: Vec<Message>,
    unopened: u64,
}

impl Turns {
    fn user(&mut self, m: MessageParam, at: &str) -> Result<(), ApiError> {
        let blocks = match m.content {
            Content::Text(s) => {
                self.messages.push(Message::text(Role::User, s));
                return Ok(());
            }
            Content::Blocks(b) => b,
        };
        let mut text: Vec<String> = Vec::new();
        for (j, b) in blocks.into_iter().enumerate() {
            let at = format!("{at}.content[{j}]");
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                "text" => text.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_owned()),
                "tool_result" => {
                    let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(invalid(format!("{at}.tool_use_id"), "is required"));
                    };
                    let mut out = match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => text_blocks(Content::Blocks(parts.clone()), &at)?,
                        Some(other) => return Err(invalid(format!("{at}.content"), format!("expected a string or text blocks, got {other}"))),
                    };
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        out = format!("The tool reported an error:\n{out}");
                    }
                    self.messages.push(Message::tool_result(call_id(id), out));
                }
                t @ ("image" | "document" | "search_result") => {
                    return Err(invalid(at, format!("gpt-oss reads text only; a `{t}` block cannot be sent to it")))
                }
                other => return Err(invalid(format!("{at}.type"), format!("unknown block type {other:?} in a user message"))),
            }
        }
        if !text.is_empty() {
            self.messages.push(Message::text(Role::User, text.join("\n")));
        }
        Ok(())
    }

    fn assistant(&mut self, m: MessageParam, at: &str, env: &EdgeEnv) -> Result<(), ApiError> {
        let blocks = match m.content {
            Content::Text(s) => {
                self.messages.push(Message::text(Role::Assistant, s));
                return Ok(());
            }
            Content::Blocks(b) => b,
        };
        let (mut reasoning, mut text, mut calls) = (String::new(), String::new(), Vec::new());
        for (j, b) in blocks.into_iter().enumerate() {
            let at = format!("{at}.content[{j}]");
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                "thinking" => {
                    let mut t = b.get("thinking").and_then(Value::as_str).unwrap_or("").to_owned();
                    if t.trim().is_empty() {
                        if let Some(sig) = b.get("signature").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                            match env.sealer.open(&env.scope, sig) {
                                Some(open) => t = open,
                                None => self.unopened += 1,
                            }
                        }
                    }
                    if !t.trim().is_empty() {
                        if !reasoning.is_empty() {
                            reasoning.push_str("\n\n");
                        }
                        reasoning.push_str(&t);
                    }
                }
                "redacted_thinking" => {}
                "text" => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                "tool_use" => {
                    let (Some(id), Some(name)) = (b.get("id").and_then(Value::as_str), b.get("name").and_then(Value::as_str)) else {
                        return Err(invalid(at, "a tool_use block needs id and name"));
                    };
                    let input = b.get("input").cloned().filter(|i| !i.is_null()).unwrap_or_else(|| json!({}));
                    calls.push(ToolCall::function(call_id(id), name, input.to_string()));
                }
                t @ ("image" | "document") => return Err(invalid(at, format!("gpt-oss reads text only; a `{t}` block cannot be sent to it"))),
                other => return Err(invalid(format!("{at}.type"), format!("unknown block type {other:?} in an assistant message"))),
            }
        }
        let content = if text.is_empty() && !calls.is_empty() { MessageContent::Null } else { MessageContent::Text(text) };
        self.messages.push(Message {
            content,
            reasoning: (!reasoning.trim().is_empty()).then_some(Reasoning { text: reasoning, field: ReasoningField::ReasoningContent }),
            tool_calls: (!calls.is_empty()).then_some(calls),
            ..Message::text(Role::Assistant, "")
        });
        Ok(())
    }
}

fn effort_of(word: &str, at: &str) -> Result<&'static str, ApiError> {
    match word {
        "low" | "minimal" | "none" => Ok("low"),
        "medium" => Ok("medium"),
        "high" | "max" | "xhigh" => Ok("high"),
        other => Err(invalid(at, format!("{other:?} is not low, medium or high"))),
    }
}

/// At most this many `stop_sequences`…
pub const MAX_STOP_SEQUENCES: usize = 64;
/// …each at most this long (bytes)…
pub const MAX_STOP_SEQUENCE_BYTES: usize = 1024;
/// …and all of them at most this (the encoder's automaton is about 40 bytes per byte here).
pub const MAX_STOP_BYTES_TOTAL: usize = 16 << 10;

fn check_stop_sequences(stops: &[String]) -> Result<(), ApiError> {
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(invalid("stop_sequences", format!("{} sequences; at most {MAX_STOP_SEQUENCES} are accepted", stops.len())));
    }
    if let Some((i, s)) = stops.iter().enumerate().find(|(_, s)| s.len() > MAX_STOP_SEQUENCE_BYTES) {
        return Err(invalid(format!("stop_sequences[{i}]"), format!("is {} bytes; at most {MAX_STOP_SEQUENCE_BYTES} are accepted", s.len())));
    }
    let total: usize = stops.iter().map(String::len).sum();
    if total > MAX_STOP_BYTES_TOTAL {
        return Err(invalid("stop_sequences", format!("{total} bytes in all; at most {MAX_STOP_BYTES_TOTAL} are accepted")));
    }
    Ok(())
}

pub fn decode(body: Value, env: &EdgeEnv) -> Result<Decoded, ApiError> {
    let req: Request = typed(body, "")?;
    let model = match req.model.as_deref() {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => return Err(invalid("model", "is required")),
    };
    let Some(max_tokens) = req.max_tokens else {
        return Err(invalid("max_tokens", "is required"));
    };
    if req.messages.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    check_stop_sequences(&req.stop_sequences)?;
    let mut conv = Turns::default();
    match req.system {
        None => {}
        Some(Content::Text(s)) => conv.instructions.push(s),
        Some(Content::Blocks(blocks)) => {
            for (j, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text" => {
                        let t = b.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.starts_with(BILLING_HEADER) && !t.trim().is_empty() {
                            conv.instructions.push(t.to_owned());
                        }
                    }
                    other => return Err(invalid(format!("system[{j}].type"), format!("unknown block type {other:?} (text only)"))),
                }
            }
        }
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.role.as_str() {
            "user" => conv.user(m, &at)?,
            "assistant" => conv.assistant(m, &at, env)?,
            "system" | "developer" => {
                let t = text_blocks(m.content, &at)?;
                if !t.trim().is_empty() {
                    conv.instructions.push(t);
                }
            }
            other => return Err(invalid(format!("{at}.role"), format!("{other:?} is not user or assistant"))),
        }
    }
    let mut notes = Vec::new();
    if conv.unopened > 0 {
        metrics::counter!("harmony_proxy_sealed_reasoning_rejected_total").increment(conv.unopened);
        tracing::info!(
            blocks = conv.unopened,
            "thinking signatures that do not open with this proxy's key were ignored (another key, another process without server.reasoning_key, or not ours)"
        );
        notes.push(format!("{} thinking signature(s) did not open", conv.unopened));
    }

    let instructions = (!conv.instructions.is_empty()).then(|| conv.instructions.join("\n\n"));
    let messages = std::mem::take(&mut conv.messages);
    let mut conversation = Conversation { model: model.clone(), instructions, messages, ..Conversation::default() };
    let c = &mut conversation.controls;

    let mut functions = Vec::new();
    let mut left_out = Vec::new();
    for (j, t) in req.tools.into_iter().enumerate() {
        let at = format!("tools[{j}]");
        if let Some(kind) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
            left_out.push(kind.to_owned());
            continue;
        }
        let tool: Tool = typed(t, &at)?;
        if tool.defer_loading == Some(true) {
            left_out.push(tool.name);
            continue;
        }
        let parameters = tool.input_schema.filter(Value::is_object).unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        functions.push(conversation::Tool::Function(FunctionTool::new(tool.name, tool.description.filter(|d| !d.is_empty()), parameters)));
    }
    if !left_out.is_empty() {
        notes.push(format!("tools the proxy cannot run left out of the prompt: {}", left_out.join(", ")));
    }
    if !functions.is_empty() {
        conversation.tools = Some(functions);
        if let Some(tc) = &req.tool_choice {
            let (choice, no_parallel) = match tc {
                ToolChoice::Auto { disable_parallel_tool_use } => (Choice::Auto, *disable_parallel_tool_use),
                ToolChoice::Any { disable_parallel_tool_use } => (Choice::Required, *disable_parallel_tool_use),
                ToolChoice::Tool { name, disable_parallel_tool_use } => (Choice::Function(name.clone()), *disable_parallel_tool_use),
                ToolChoice::None => (Choice::None, None),
            };
            c.tool_choice = Some(choice);
            c.parallel_tool_calls = no_parallel.map(|d| !d);
        }
    }
    let mut effort = match &req.thinking {
        None => None,
        Some(Thinking::Enabled { budget_tokens, .. }) => Some(match budget_tokens.unwrap_or(0) {
            0..4096 => "low",
            4096..16384 => "medium",
            _ => "high",
        }),
        Some(Thinking::Adaptive { .. }) => None,
        Some(Thinking::Disabled) => Some("low"),
    };
    if let Some(e) = req.output_config.as_ref().and_then(|o| o.effort.as_deref()) {
        effort = Some(effort_of(e, "output_config.effort")?);
    }
    c.reasoning_effort = effort.map(str::to_owned);
    c.max_output_tokens = Some(Limit::tokens(max_tokens));
    c.sampling.temperature = req.temperature.and_then(serde_json::Number::from_f64);
    c.sampling.top_p = req.top_p.and_then(serde_json::Number::from_f64);
    if let Some(k) = req.top_k {
        // A server's own option (llama.cpp, vLLM): the chat endpoint gets it as is.
        conversation.extra.insert("top_k".into(), k.into());
    }
    // `stop_sequences` are the encoder's to apply: it alone can say which one ended the
    // answer (`stop_reason: "stop_sequence"`); the upstream cannot.
    let stream = req.stream.unwrap_or(false);
    c.stream = stream;
    let ctx = Context { message_id: random_id("msg_", 24), sealer: env.sealer.clone(), scope: env.scope.clone(), stop_sequences: req.stop_sequences };
    Ok(Decoded { conversation, model, stream, ctx: ApiContext::Messages(Arc::new(ctx)), notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: Value) -> Value {
        decode(v, &EdgeEnv::standalone()).unwrap_or_else(|e| panic!("{}", e.message)).chat()
    }

    fn err(v: Value) -> ApiError {
        decode(v, &EdgeEnv::standalone()).expect_err("refused")
    }

    #[test]
    fn a_claude_code_turn_two_becomes_one_conversation() {
        let c = chat(json!({
            "model": "gpt-oss-20b", "max_tokens": 32000, "stream": true,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2"}, {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<system-reminder>r</system-reminder>"}, {"type": "text", "text": "run it"}]},
                {"role": "system", "content": "# Environment"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "I will run it.", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_abc", "name": "Bash", "input": {"command": "ls"}}
                ]},
                {"role": "user", "content": [{"tool_use_id": "toolu_abc", "type": "tool_result", "content": "a.txt", "is_error": false}]}
            ],
            "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object"}},
                      {"name": "DeferredToolPlaceholder", "input_schema": {}, "defer_loading": true},
                      {"type": "web_search_20250305", "name": "web_search"}],
            "thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "high"},
            "metadata": {"user_id": "u"}, "context_management": {"edits": []}
        }));
        let m = &c["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "You are an agent.\n\n# Environment"}));
        assert_eq!(m[1], json!({"role": "user", "content": "<system-reminder>r</system-reminder>\nrun it"}));
        assert_eq!(m[2]["reasoning_content"], "I will run it.");
        assert_eq!(m[2]["tool_calls"][0], json!({"id": "call_abc", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}));
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "call_abc", "content": "a.txt"}));
        assert_eq!(c["tools"].as_array().map(Vec::len), Some(1));
        assert_eq!((c["reasoning_effort"].as_str(), c["max_tokens"].as_u64()), (Some("high"), Some(32000)));
    }

    #[test]
    fn a_thinking_block_without_text_gives_its_sealed_reasoning_and_a_foreign_one_nothing() {
        let env = EdgeEnv::standalone();
        let sig = env.sealer.seal("", "Sealed thought.");
        let body = |sig: &str| {
            json!({"model": "m", "max_tokens": 9, "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "", "signature": sig}, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "boom"}], "is_error": true}]}
            ]})
        };
        let d = decode(body(&sig), &env).unwrap();
        assert_eq!(d.chat()["messages"][1]["reasoning_content"], "Sealed thought.");
        assert_eq!(d.chat()["messages"][2]["content"], "The tool reported an error:\nboom");
        let d = decode(body("EqQBCkgIBxABGAIqQPmKf"), &env).unwrap();
        assert!(d.chat()["messages"][1].get("reasoning_content").is_none());
        assert_eq!(d.notes.len(), 1);
    }

    #[test]
    fn settings_map_to_their_chat_names() {
        let c = chat(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "top_p": 0.9, "top_k": 40,
            "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 2000},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any", "disable_parallel_tool_use": true}}));
        assert_eq!((c["temperature"].as_f64(), c["top_p"].as_f64(), c["top_k"].as_u64()), (Some(0.2), Some(0.9), Some(40)));
        assert_eq!((c.get("stop"), c["reasoning_effort"].clone()), (None, json!("low")));
        assert_eq!((c["tool_choice"].clone(), c["parallel_tool_calls"].clone()), (json!("required"), json!(false)));
    }

    #[test]
    fn bad_requests_are_refused_naming_the_place() {
        assert_eq!(err(json!({"max_tokens": 5, "messages": []})).param.as_deref(), Some("model"));
        assert_eq!(err(json!({"model": "m", "messages": []})).param.as_deref(), Some("max_tokens"));
        let e = err(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        assert!(e.message.contains("gpt-oss reads text only"));
        let e =
            err(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "hologram"}]}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[1].type"));
        assert_eq!(err(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]})).param.as_deref(), Some("messages[0].role"));
        assert_eq!(err(json!({"model": "m", "max_tokens": "many", "messages": []})).param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn tool_ids_map_both_ways() {
        assert_eq!(call_id(&tool_use_id("call_x1")), "call_x1");
        assert_eq!(tool_use_id("call_x1"), "toolu_x1");
        assert_eq!(call_id("other-7"), "other-7");
    }
}
