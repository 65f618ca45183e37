//! A Responses request → the conversation the stages work on.
//!
//! - `instructions`, and `system` / `developer` messages wherever they stand, become one
//!   system message first (servers' gpt-oss templates read one; `harmony-render` joins them
//!   into the developer instructions either way).
//! - `message` items are turns; `reasoning` items are the reasoning of the assistant turn
//!   that follows them (`reasoning_content`, which `history-clean` and `harmony-render` read);
//!   `function_call` / `custom_tool_call` items are that turn's `tool_calls` (calls in a row
//!   share one assistant message); `*_output` items are `tool` messages.
//! - Tools: `function` as is; `namespace` functions flattened to `NAMESPACE__NAME`; `custom`
//!   as a function with one string `input`; hosted tools (web search, …) left out, noted.
//! - State: `previous_response_id` continues a stored response (its input items and output
//!   come first); `store` (default true) keeps this one. A `reasoning` item without text
//!   gives the model its `encrypted_content` opened; one that does not open is ignored,
//!   counted and logged.
//! - Refused with a 400 naming the field: images and files (gpt-oss reads text only), item
//!   types the API does not have, `background`, `conversation`, `prompt`; an unknown or
//!   expired `previous_response_id` is a 404 naming it.
//!
//! Invariant: the decoder never panics on any JSON; every refusal names its place.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::types::{
    CallOutputItem, Content, CustomTool, CustomToolCallItem, FunctionCallItem, FunctionTool as FunctionTool_, Input, MessageItem, NamespaceTool, ReasoningItem,
    Request, TextFormat,
};
use super::{Context, Stored, Storing, ToolOrigin, NAMESPACE_SEPARATOR};
use crate::api::{typed, ApiContext, Decoded, EdgeEnv};
use crate::conversation::{
    Conversation, FunctionTool, JsonSchemaFormat, Limit, Message, Reasoning, ReasoningField, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
};
use crate::event::ApiError;
use crate::stage::random_id;

fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(param, message)
}

/// The text of content parts (`input_text`, `output_text`, `text`, `refusal`); images,
/// files and audio are refused: gpt-oss reads text only.
fn text_of(content: Content, at: &str) -> Result<String, ApiError> {
    match content {
        Content::Text(s) => Ok(s),
        Content::Parts(parts) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" | "reasoning_text" | "summary_text" => {
                        s.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    "refusal" => s.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or("")),
                    "input_image" | "input_file" | "input_audio" | "image_url" | "image" => {
                        return Err(invalid(format!("{at}.content[{j}]"), format!("gpt-oss reads text only; a `{kind}` part cannot be sent to it")));
                    }
                    other => return Err(invalid(format!("{at}.content[{j}].type"), format!("unknown content part type {other:?}"))),
                }
            }
            Ok(s)
        }
    }
}

/// Builds the conversation's messages, one input item at a time.
#[derive(Default)]
struct Turns {
    instructions: Vec<String>,
    messages: Vec<Message>,
    /// Reasoning items waiting for the assistant turn they belong to.
    reasoning: String,
}

impl Turns {
    fn take_reasoning(&mut self) -> Option<Reasoning> {
        let r = std::mem::take(&mut self.reasoning);
        (!r.trim().is_empty()).then_some(Reasoning { text: r, field: ReasoningField::ReasoningContent })
    }

    fn user(&mut self, text: String) {
        self.reasoning.clear(); // reasoning of no assistant turn: nothing to give back
        self.messages.push(Message::text(Role::User, text));
    }

    fn assistant_text(&mut self, text: String) {
        let reasoning = self.take_reasoning();
        self.messages.push(Message { reasoning, ..Message::text(Role::Assistant, text) });
    }

    /// A call joins the assistant message just before it (a preamble, or the calls before it
    /// in the same turn); after a tool result or a user turn it opens a new one.
    fn call(&mut self, call_id: String, name: String, arguments: String) {
        let call = ToolCall::function(call_id, name, arguments);
        if let Some(last) = self.messages.last_mut().filter(|m| m.role == Role::Assistant) {
            if self.reasoning.trim().is_empty() {
                last.tool_calls.get_or_insert_with(Vec::new).push(call);
                return;
            }
        }
        let reasoning = self.take_reasoning();
        self.messages.push(Message { reasoning, ..Message::calls(vec![call]) });
    }

    fn tool_result(&mut self, call_id: String, text: String) {
        self.messages.push(Message::tool_result(call_id, text));
    }
}

/// The tools as functions, what goes back in another shape, and what was left out.
fn tools(tools: &[Value], origins: &mut HashMap<String, ToolOrigin>, notes: &mut Vec<String>) -> Result<Vec<Tool>, ApiError> {
    let function = |name: &str, description: Option<&str>, parameters: Option<Value>| {
        let parameters = parameters.filter(|p| p.is_object()).unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        Tool::Function(FunctionTool::new(name, description.filter(|d| !d.is_empty()).map(str::to_owned), parameters))
    };
    let mut out = Vec::new();
    let mut left_out = Vec::new();
    for (j, t) in tools.iter().enumerate() {
        let at = format!("tools[{j}]");
        match t.get("type").and_then(Value::as_str).unwrap_or("function") {
            "function" => {
                let f: FunctionTool_ = typed(t.clone(), &at)?;
                out.push(function(&f.name, f.description.as_deref(), f.parameters));
            }
            "namespace" => {
                let ns: NamespaceTool = typed(t.clone(), &at)?;
                for (k, inner) in ns.tools.iter().enumerate() {
                    let at = format!("{at}.tools[{k}]");
                    if inner.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
                        left_out.push(format!("{}.{}", ns.name, inner.get("name").and_then(Value::as_str).unwrap_or("?")));
                        continue;
                    }
                    let f: FunctionTool_ = typed(inner.clone(), &at)?;
                    let flat = format!("{}{NAMESPACE_SEPARATOR}{}", ns.name, f.name);
                    let description = match (ns.description.as_deref().filter(|d| !d.is_empty()), f.description.as_deref()) {
                        (Some(n), Some(d)) => Some(format!("{n}\n\n{d}")),
                        (Some(n), None) => Some(n.to_owned()),
                        (None, d) => d.map(str::to_owned),
                    };
                    out.push(function(&flat, description.as_deref(), f.parameters));
                    origins.insert(flat, ToolOrigin::Namespaced { namespace: ns.name.clone(), name: f.name });
                }
            }
            "custom" => {
                let c: CustomTool = typed(t.clone(), &at)?;
                let mut description = c.description.unwrap_or_default();
                if let Some(fmt) = c.format.as_ref().filter(|f| f.get("type").and_then(Value::as_str) == Some("grammar")) {
                    let syntax = fmt.get("syntax").and_then(Value::as_str).unwrap_or("grammar");
                    let definition = fmt.get("definition").and_then(Value::as_str).unwrap_or("");
                    description.push_str(&format!("\n\nThe input follows this {syntax} grammar:\n{definition}"));
                }
                let params = json!({"type": "object", "properties": {"input": {"type": "string", "description": "The tool's input, as free text."}}, "required": ["input"]});
                out.push(function(&c.name, Some(description.trim()), Some(params)));
                origins.insert(c.name, ToolOrigin::Custom);
            }
            other => left_out.push(other.to_owned()),
        }
    }
    if !left_out.is_empty() {
        notes.push(format!("tools the proxy cannot run left out of the prompt: {}", left_out.join(", ")));
    }
    Ok(out)
}

/// `tool_choice` as the conversation's.
fn tool_choice(v: &Value) -> Result<ToolChoice, ApiError> {
    Ok(match v {
        Value::String(s) if s == "auto" => ToolChoice::Auto,
        Value::String(s) if s == "none" => ToolChoice::None,
        Value::String(s) if s == "required" => ToolChoice::Required,
        Value::String(s) => return Err(invalid("tool_choice", format!("{s:?} is not auto, none or required"))),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => match o.get("name").and_then(Value::as_str) {
                Some(name) => ToolChoice::Function(name.to_owned()),
                None => return Err(invalid("tool_choice.name", "a function choice needs a name")),
            },
            Some("allowed_tools") if o.get("mode").is_some_and(|m| m == "required") => ToolChoice::Required,
            _ => ToolChoice::Auto, // a hosted tool, or allowed_tools without a requirement: none of those is run here
        },
        Value::Null => ToolChoice::Auto,
        other => return Err(invalid("tool_choice", format!("expected a string or an object, got {other}"))),
    })
}

/// The request, typed, and checked before anything is read for it: a refused request reads
/// no stored response.
pub fn request(body: Value) -> Result<Request, ApiError> {
    let req: Request = typed(body, "")?;
    if req.model.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("model", "is required"));
    }
    if req.background == Some(true) {
        return Err(invalid("background", "background responses are not supported: stream instead"));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(invalid("conversation", "conversations are not stored by this proxy: send the whole input"));
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(invalid("prompt", "prompt templates are not supported: send input"));
    }
    Ok(req)
}

/// A checked [`request`] into the conversation; `recalled` is what the store holds under its
/// `previous_response_id` (read between the two by [`super::Responses`]' edge).
pub fn decode(req: Request, recalled: Option<Arc<str>>, env: &EdgeEnv) -> Result<Decoded, ApiError> {
    let model = req.model.clone().unwrap_or_default();
    // The conversation's items: a stored response's first, then this request's.
    let mut items: Vec<Value> = Vec::new();
    if let Some(id) = &req.previous_response_id {
        let stored = recalled.and_then(|v| serde_json::from_str::<Stored>(&v).ok());
        let Some(stored) = stored else {
            let mut e = ApiError::new(
                404,
                "invalid_request_error",
                Some("previous_response_not_found"),
                format!("previous_response_id: no stored response {id:?} (unknown, expired, deleted, or stored with another key)"),
            );
            e.param = Some("previous_response_id".into());
            return Err(e);
        };
        items = stored.input;
        items.extend(stored.response.get("output").and_then(Value::as_array).into_iter().flatten().cloned());
    }
    let new_len = match &req.input {
        Some(Input::Items(new)) => new.len(),
        Some(Input::Text(_)) => 1,
        None => 0,
    };
    match req.input {
        None if req.previous_response_id.is_none() => return Err(invalid("input", "is required")),
        None => {}
        Some(Input::Text(t)) => items.push(json!({"type": "message", "role": "user", "content": t})),
        Some(Input::Items(new)) => items.extend(new),
    }
    let first_new = items.len() - new_len;
    if req.previous_response_id.is_some() {
        let bytes = serde_json::to_vec(&items).map(|v| v.len() as u64).unwrap_or(0);
        if bytes > env.max_conversation_bytes {
            let mut e = ApiError::new(
                400,
                "invalid_request_error",
                Some("conversation_too_large"),
                format!("previous_response_id: the conversation it continues is {bytes} bytes with this input, above the {} this server accepts (max_body_bytes); start a new conversation, or compact this one", env.max_conversation_bytes),
            );
            e.param = Some("previous_response_id".into());
            return Err(e);
        }
    }

    let mut conv = Turns::default();
    if let Some(i) = req.instructions.as_ref().filter(|i| !i.trim().is_empty()) {
        conv.instructions.push(i.clone());
    }
    let mut unopened = 0u64;
    for (i, item) in items.iter().enumerate() {
        // Places name this request's input; a stored item that fails is named by its place
        // in the stored conversation.
        let at = if i >= first_new { format!("input[{}]", i - first_new) } else { format!("previous_response_id.input[{i}]") };
        let item = item.clone();
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(k) => k.to_owned(),
            None if item.get("role").is_some() => "message".to_owned(),
            None => return Err(invalid(format!("{at}.type"), "is required")),
        };
        match kind.as_str() {
            "message" => {
                let m: MessageItem = typed(item, &at)?;
                let text = text_of(m.content, &at)?;
                match m.role.as_str() {
                    "user" => conv.user(text),
                    "assistant" => conv.assistant_text(text),
                    "system" | "developer" => {
                        if !text.trim().is_empty() {
                            conv.instructions.push(text);
                        }
                    }
                    other => return Err(invalid(format!("{at}.role"), format!("{other:?} is not user, assistant, system or developer"))),
                }
            }
            "reasoning" => {
                let r: ReasoningItem = typed(item, &at)?;
                let mut text = match r.content {
                    Some(parts) if !parts.is_empty() => text_of(Content::Parts(parts), &at)?,
                    _ => String::new(),
                };
                // Without its text, the reasoning sealed in `encrypted_content`.
                if text.trim().is_empty() {
                    if let Some(blob) = r.encrypted_content.filter(|b| !b.is_empty()) {
                        match env.sealer.open(&env.scope, &blob) {
                            Some(t) => text = t,
                            None => unopened += 1,
                        }
                    }
                }
                if !text.trim().is_empty() {
                    if !conv.reasoning.is_empty() {
                        conv.reasoning.push_str("\n\n");
                    }
                    conv.reasoning.push_str(&text);
                }
            }
            "function_call" => {
                let c: FunctionCallItem = typed(item, &at)?;
                let name = match c.namespace.filter(|n| !n.is_empty()) {
                    Some(ns) => format!("{ns}{NAMESPACE_SEPARATOR}{}", c.name),
                    None => c.name,
                };
                let args = c.arguments.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "{}".into());
                conv.call(c.call_id, name, args);
            }
            "custom_tool_call" => {
                let c: CustomToolCallItem = typed(item, &at)?;
                conv.call(c.call_id, c.name, json!({"input": c.input}).to_string());
            }
            "function_call_output" | "custom_tool_call_output" => {
                let o: CallOutputItem = typed(item, &at)?;
                let text = text_of(o.output, &format!("{at}.output"))?;
                conv.tool_result(o.call_id, text);
            }
            "item_reference" => return Err(invalid(format!("{at}.type"), "item references are not supported: send the items, or previous_response_id")),
            other => return Err(invalid(format!("{at}.type"), format!("unknown input item type {other:?}"))),
        }
    }
    let mut notes = Vec::new();
    if unopened > 0 {
        metrics::counter!("harmony_proxy_sealed_reasoning_rejected_total").increment(unopened);
        tracing::info!(
            items = unopened,
            "encrypted reasoning that does not open with this proxy's key was ignored (another key, another process without server.reasoning_key, or not ours)"
        );
        notes.push(format!("{unopened} encrypted reasoning item(s) did not open"));
    }

    let instructions = (!conv.instructions.is_empty()).then(|| conv.instructions.join("\n\n"));
    let messages = std::mem::take(&mut conv.messages);
    let mut conversation = Conversation { model: model.clone(), instructions, messages, ..Conversation::default() };
    let c = &mut conversation.controls;

    // Checked even with no tools to choose from: a malformed choice is the client's mistake.
    let choice = req.tool_choice.as_ref().map(tool_choice).transpose()?;
    let mut origins = HashMap::new();
    let functions = tools(&req.tools, &mut origins, &mut notes)?;
    if !functions.is_empty() {
        conversation.tools = Some(functions);
        c.tool_choice = choice;
        c.parallel_tool_calls = req.parallel_tool_calls;
    }
    let effort = match req.reasoning.as_ref().and_then(|r| r.effort.as_deref()) {
        None => None,
        Some("minimal" | "none" | "low") => Some("low"),
        Some("medium") => Some("medium"),
        Some("high" | "xhigh") => Some("high"),
        Some(other) => return Err(invalid("reasoning.effort", format!("{other:?} is not low, medium or high"))),
    };
    c.reasoning_effort = effort.map(str::to_owned);
    c.max_output_tokens = req.max_output_tokens.map(Limit::tokens);
    c.sampling.temperature = req.temperature.and_then(serde_json::Number::from_f64);
    c.sampling.top_p = req.top_p.and_then(serde_json::Number::from_f64);
    let text_echo = match req.text.as_ref().and_then(|t| t.format.as_ref()) {
        None | Some(TextFormat::Text) => json!({"format": {"type": "text"}}),
        Some(TextFormat::JsonObject) => {
            c.response_format = Some(ResponseFormat::JsonObject);
            json!({"format": {"type": "json_object"}})
        }
        Some(TextFormat::JsonSchema { name, schema, strict, description }) => {
            let name = name.clone().unwrap_or_else(|| "response".into());
            let schema = schema.clone().unwrap_or_else(|| json!({}));
            let mut echo = json!({"type": "json_schema", "name": name, "schema": schema, "strict": strict.unwrap_or(false)});
            if let Some(d) = description {
                echo["description"] = d.clone().into();
            }
            c.response_format = Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
                name: Some(name),
                description: description.clone(),
                schema: Some(schema),
                strict: Some(strict.unwrap_or(false)),
                extra: Map::new(),
            }));
            json!({"format": echo})
        }
    };
    let stream = req.stream.unwrap_or(false);
    c.stream = stream;

    let include_encrypted = req.include.iter().flatten().any(|i| i == "reasoning.encrypted_content");
    let store = req.store.unwrap_or(true);
    let mut echo = Map::new();
    echo.insert("instructions".into(), req.instructions.map(Value::String).unwrap_or(Value::Null));
    echo.insert("max_output_tokens".into(), req.max_output_tokens.map(Value::from).unwrap_or(Value::Null));
    echo.insert("parallel_tool_calls".into(), req.parallel_tool_calls.unwrap_or(true).into());
    echo.insert("previous_response_id".into(), req.previous_response_id.map(Value::String).unwrap_or(Value::Null));
    echo.insert("reasoning".into(), json!({"effort": effort, "summary": null}));
    echo.insert("store".into(), store.into());
    echo.insert("temperature".into(), req.temperature.unwrap_or(1.0).into());
    echo.insert("text".into(), text_echo);
    echo.insert("tool_choice".into(), req.tool_choice.unwrap_or_else(|| "auto".into()));
    echo.insert("tools".into(), Value::Array(req.tools.into_iter().map(tool_echo).collect()));
    echo.insert("top_p".into(), req.top_p.unwrap_or(1.0).into());
    echo.insert("truncation".into(), "disabled".into());
    // `user` is a string when said: left out, not null (OpenAI's schema has no null for it).
    if let Some(user) = req.user.filter(Value::is_string) {
        echo.insert("user".into(), user);
    }
    echo.insert("metadata".into(), req.metadata.map(Value::Object).unwrap_or_else(|| json!({})));
    // What the Open Responses schema requires of every response, said as the proxy serves it:
    // no sampling penalties, no logprobs, no background mode, the default tier.
    echo.insert("presence_penalty".into(), 0.0.into());
    echo.insert("frequency_penalty".into(), 0.0.into());
    echo.insert("top_logprobs".into(), 0.into());
    echo.insert("max_tool_calls".into(), req.max_tool_calls.filter(Value::is_u64).unwrap_or(Value::Null));
    echo.insert("background".into(), false.into());
    echo.insert("service_tier".into(), "default".into());
    echo.insert("safety_identifier".into(), req.safety_identifier.filter(Value::is_string).unwrap_or(Value::Null));
    echo.insert("prompt_cache_key".into(), req.prompt_cache_key.filter(Value::is_string).unwrap_or(Value::Null));
    let ctx = Context {
        response_id: random_id("resp_", 32),
        tools: origins,
        seal: include_encrypted.then(|| env.sealer.clone()),
        scope: env.scope.clone(),
        storing: store.then(|| Storing { store: env.store.clone(), input: items }),
        echo,
    };
    Ok(Decoded { conversation, model, stream, ctx: ApiContext::Responses(Arc::new(ctx)), notes })
}

/// A tool as the response echoes it: a function tool with every field the schemas require
/// (`description`, `parameters` and `strict` null when the request left them out); any other
/// tool as sent.
fn tool_echo(mut tool: Value) -> Value {
    if let Some(o) = tool.as_object_mut().filter(|o| o.get("type").and_then(Value::as_str) == Some("function")) {
        for k in ["description", "parameters", "strict"] {
            o.entry(k).or_insert(Value::Null);
        }
    }
    tool
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the edge decodes (checked, the stored response read, then decoded), over an inline
    /// pool and a memory store.
    fn decode(v: Value, env: &EdgeEnv) -> Result<Decoded, ApiError> {
        crate::work::now(<super::super::Responses as crate::api::Api>::decode(v, env))
    }

    fn chat(v: Value) -> Value {
        decode(v, &EdgeEnv::standalone()).unwrap_or_else(|e| panic!("{}", e.message)).chat()
    }

    fn err(v: Value) -> ApiError {
        decode(v, &EdgeEnv::standalone()).expect_err("refused")
    }

    #[test]
    fn a_codex_turn_two_becomes_one_conversation_with_its_reasoning_on_the_call() {
        let c = chat(json!({
            "model": "gpt-oss-20b", "stream": true,
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Run ls."}], "encrypted_content": null},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}", "status": "completed"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"}
            ],
            "instructions": "You are Codex.",
            "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
                      {"type": "web_search"}],
            "tool_choice": "auto", "parallel_tool_calls": true, "reasoning": null, "store": false,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k", "client_metadata": {}
        }));
        let m = &c["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "You are Codex.\n\nBe brief."}));
        assert_eq!(m[1], json!({"role": "user", "content": "list files"}));
        assert_eq!(m[2]["reasoning_content"], "Run ls.");
        assert_eq!(m[2]["tool_calls"][0], json!({"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}));
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}));
        assert_eq!(c["tools"].as_array().map(Vec::len), Some(1), "web_search left out");
        assert!(c.get("reasoning_effort").is_none(), "reasoning: null leaves the stage's effort");
    }

    #[test]
    fn a_preamble_message_and_the_calls_after_it_are_one_assistant_turn() {
        let c = chat(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "Need the tool."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "7 C"}]},
        ]}));
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[1]["content"].as_str(), m[1]["reasoning_content"].as_str()), (Some("Checking."), Some("Need the tool.")));
        assert_eq!(m[1]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(m[1]["tool_calls"][1]["function"]["arguments"], "{}");
        assert_eq!(m[2]["content"], "7 C");
    }

    #[test]
    fn namespace_and_custom_tools_are_functions_that_remember_where_they_came_from() {
        let d = decode(json!({"model": "m", "input": "hi", "tools": [
            {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.", "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
            {"type": "custom", "name": "apply_patch", "description": "Patch files.", "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}}
        ]}), &EdgeEnv::standalone())
        .unwrap();
        let c = d.chat();
        let names: Vec<&str> = c["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["multi_agent_v1__spawn", "apply_patch"]);
        assert_eq!(c["tools"][1]["function"]["parameters"]["required"], json!(["input"]));
        let ApiContext::Responses(ctx) = &d.ctx else { panic!() };
        assert_eq!(ctx.tools["multi_agent_v1__spawn"], ToolOrigin::Namespaced { namespace: "multi_agent_v1".into(), name: "spawn".into() });
        assert_eq!(ctx.tools["apply_patch"], ToolOrigin::Custom);
        // Their calls come back in the same shapes.
        let c = chat(json!({"model": "m", "input": [
            {"type": "function_call", "call_id": "a", "name": "spawn", "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "custom_tool_call", "call_id": "b", "name": "apply_patch", "input": "*** Begin Patch"},
        ]}));
        assert_eq!(c["messages"][0]["tool_calls"][0]["function"]["name"], "multi_agent_v1__spawn");
        assert_eq!(c["messages"][0]["tool_calls"][1]["function"]["arguments"], "{\"input\":\"*** Begin Patch\"}");
    }

    #[test]
    fn the_settings_map_to_their_chat_names() {
        let c = chat(json!({"model": "m", "input": "hi", "reasoning": {"effort": "high"}, "max_output_tokens": 77, "temperature": 0.5, "top_p": 0.9,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}}}));
        assert_eq!((c["reasoning_effort"].as_str(), c["max_tokens"].as_u64()), (Some("high"), Some(77)));
        assert_eq!((c["temperature"].as_f64(), c["top_p"].as_f64()), (Some(0.5), Some(0.9)));
        assert_eq!(c["response_format"], json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}}));
    }

    #[test]
    fn bad_input_is_refused_naming_its_place() {
        assert_eq!(err(json!({"input": "hi"})).param.as_deref(), Some("model"));
        let e = err(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "x"}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("input[0].content[1]"));
        assert!(e.message.contains("gpt-oss reads text only"), "{}", e.message);
        assert_eq!(err(json!({"model": "m", "input": [{"type": "teleport"}]})).param.as_deref(), Some("input[0].type"));
        assert_eq!(err(json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]})).status, 400);
        assert_eq!(err(json!({"model": "m", "input": "x", "reasoning": {"effort": "max"}})).param.as_deref(), Some("reasoning.effort"));
        assert_eq!(err(json!({"model": 7, "input": "x"})).status, 400);
        assert_eq!(err(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})).status, 404);
    }
}
