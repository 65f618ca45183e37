//! A Chat Completions request → the conversation.
//!
//! The request's shape is checked first against [`types::Request`](super::types::Request) (a
//! 400 naming the field); then each field the proxy models is read into the conversation,
//! and every other one is kept in an `extra` map, so that a chat upstream gets the request
//! as the client sent it (see [`crate::upstream::chat_request`], the way back).
//!
//! Reading is lenient: a value that is not of the modelled shape stays where it was, in
//! `extra`, and reaches a chat upstream untouched.

use serde_json::{Map, Value};

use super::types;
use crate::api::{typed_ref, ApiContext, Decoded};
use crate::conversation::{
    Content, Controls, Conversation, FunctionTool, JsonSchemaFormat, Limit, LimitName, Message, Part, Reasoning, ReasoningField, ResponseFormat, Role,
    Sampling, Stop, Tool, ToolCall, ToolChoice,
};
use crate::event::ApiError;

pub fn decode(body: Value) -> Result<Decoded, ApiError> {
    let _checked: types::Request = typed_ref(&body, "")?;
    // Chat's own option, for its encoder: every upstream request asks for usage itself.
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let conversation = conversation(body);
    Ok(Decoded {
        model: conversation.model.clone(),
        stream: conversation.controls.stream,
        conversation,
        ctx: ApiContext::Chat(std::sync::Arc::new(super::Context::new(include_usage))),
        notes: Vec::new(),
    })
}

/// Removes `key` from `o` when `f` takes its value; a value `f` gives back stays.
fn take<T>(o: &mut Map<String, Value>, key: &str, f: impl FnOnce(Value) -> Result<T, Value>) -> Option<T> {
    let v = o.remove(key)?;
    match f(v) {
        Ok(t) => Some(t),
        Err(v) => {
            o.insert(key.to_owned(), v);
            None
        }
    }
}

fn string(v: Value) -> Result<String, Value> {
    match v {
        Value::String(s) => Ok(s),
        v => Err(v),
    }
}

fn boolean(v: Value) -> Result<bool, Value> {
    v.as_bool().ok_or(v)
}

fn number(v: Value) -> Result<serde_json::Number, Value> {
    match v {
        Value::Number(n) => Ok(n),
        v => Err(v),
    }
}

fn not_null(v: Value) -> Result<Value, Value> {
    if v.is_null() {
        Err(v)
    } else {
        Ok(v)
    }
}

/// A chat request (any JSON) as the conversation.
pub fn conversation(body: Value) -> Conversation {
    let Value::Object(mut o) = body else { return Conversation::default() };
    // An empty name stays as sent: the conversation's empty model means "none named".
    let model = take(&mut o, "model", |v| string(v).and_then(|s| if s.is_empty() { Err(Value::String(s)) } else { Ok(s) })).unwrap_or_default();
    let stream = take(&mut o, "stream", boolean).unwrap_or(false);
    // Every upstream request asks for usage itself; the client's own options are Chat's
    // encoder's (read by `decode`).
    o.remove("stream_options");
    let messages = take(&mut o, "messages", |v| match v {
        Value::Array(a) => Ok(a.into_iter().map(message).collect()),
        v => Err(v),
    })
    .unwrap_or_default();
    let tools = take(&mut o, "tools", |v| match v {
        Value::Array(a) => Ok(a.into_iter().map(tool).collect()),
        v => Err(v),
    });
    let max_output_tokens = take(&mut o, "max_completion_tokens", number)
        .map(|tokens| Limit { tokens, said_as: LimitName::MaxCompletionTokens })
        .or_else(|| take(&mut o, "max_tokens", number).map(|tokens| Limit { tokens, said_as: LimitName::MaxTokens }));
    let controls = Controls {
        stream,
        tool_choice: take(&mut o, "tool_choice", |v| not_null(v).map(tool_choice)),
        parallel_tool_calls: take(&mut o, "parallel_tool_calls", boolean),
        reasoning_effort: take(&mut o, "reasoning_effort", string),
        max_output_tokens,
        stop: take(&mut o, "stop", stop),
        response_format: take(&mut o, "response_format", response_format),
        sampling: Sampling {
            temperature: take(&mut o, "temperature", number),
            top_p: take(&mut o, "top_p", number),
            presence_penalty: take(&mut o, "presence_penalty", number),
            frequency_penalty: take(&mut o, "frequency_penalty", number),
            seed: take(&mut o, "seed", number),
            logit_bias: take(&mut o, "logit_bias", not_null),
        },
        n: take(&mut o, "n", number),
        logprobs: take(&mut o, "logprobs", boolean),
    };
    Conversation { model, instructions: None, messages, tools, controls, extra: o }
}

/// One stop, or a list. A list's strings are its stops: the chat shape check refuses any
/// other item before this runs, and without it (the fuzz targets' requests) a stray item
/// must not cost the client its own stops.
fn stop(v: Value) -> Result<Stop, Value> {
    match v {
        Value::String(s) => Ok(Stop::One(s)),
        Value::Array(a) => Ok(Stop::Many(a.into_iter().filter_map(|s| string(s).ok()).collect())),
        v => Err(v),
    }
}

fn tool_choice(v: Value) -> ToolChoice {
    match v.as_str() {
        Some("auto") => return ToolChoice::Auto,
        Some("none") => return ToolChoice::None,
        Some("required") => return ToolChoice::Required,
        _ => {}
    }
    let named = v.as_object().filter(|o| o.len() == 2 && o.get("type").and_then(Value::as_str) == Some("function")).and_then(|o| o.get("function"));
    match named.and_then(Value::as_object).filter(|f| f.len() == 1).and_then(|f| f.get("name")).and_then(Value::as_str) {
        Some(name) => ToolChoice::Function(name.to_owned()),
        None => ToolChoice::Other(v),
    }
}

fn response_format(v: Value) -> Result<ResponseFormat, Value> {
    let Value::Object(mut o) = v else { return Err(v) };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let mut js = match o.remove("json_schema") {
                Some(Value::Object(js)) => js,
                _ => Map::new(),
            };
            Ok(ResponseFormat::JsonSchema(JsonSchemaFormat {
                name: take(&mut js, "name", string),
                description: take(&mut js, "description", string),
                schema: take(&mut js, "schema", not_null),
                strict: take(&mut js, "strict", boolean),
                extra: js,
            }))
        }
        _ => Ok(ResponseFormat::Other(Value::Object(o))),
    }
}

/// A function tool of the OpenAI shape; any other is kept as sent.
fn tool(v: Value) -> Tool {
    let function = v
        .as_object()
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("function") && o.keys().all(|k| k == "type" || k == "function"))
        .and_then(|o| o.get("function"))
        .and_then(Value::as_object)
        .filter(|f| {
            f.get("name").is_some_and(Value::is_string)
                && f.get("description").is_none_or(Value::is_string)
                && f.get("strict").is_none_or(|s| s.is_boolean() || s.is_null())
                && f.get("parameters").is_none_or(|p| !p.is_null())
        });
    let Some(f) = function else { return Tool::Other(v) };
    let mut f = f.clone();
    Tool::Function(FunctionTool {
        name: take(&mut f, "name", string).unwrap_or_default(),
        description: take(&mut f, "description", string),
        parameters: take(&mut f, "parameters", not_null),
        strict: take(&mut f, "strict", boolean),
        extra: f,
    })
}

fn message(v: Value) -> Message {
    let Value::Object(mut o) = v else { return Message { extra: Map::new(), ..Message::text(Role::Other(String::new()), "") } };
    let role = take(&mut o, "role", string).map(|r| Role::parse(&r)).unwrap_or(Role::Other(String::new()));
    let content = match o.remove("content") {
        None => Content::Absent,
        Some(Value::Null) => Content::Null,
        Some(Value::String(s)) => Content::Text(s),
        Some(Value::Array(parts)) if parts.iter().all(|p| p.get("type").is_some_and(Value::is_string) && p.get("text").is_none_or(Value::is_string)) => {
            Content::Parts(parts.into_iter().filter_map(part).collect())
        }
        Some(other) => {
            o.insert("content".into(), other);
            Content::Absent
        }
    };
    // The first field that holds reasoning is the turn's; an empty one stays as sent.
    let field = ReasoningField::ALL.into_iter().find(|f| o.get(f.as_str()).and_then(Value::as_str).is_some_and(|r| !r.trim().is_empty()));
    let reasoning = field.and_then(|f| take(&mut o, f.as_str(), string).map(|text| Reasoning { text, field: f }));
    let tool_calls = take(&mut o, "tool_calls", |v| match v {
        Value::Array(a) if a.iter().all(|c| c.is_object() && c.get("function").is_none_or(Value::is_object)) => Ok(a.into_iter().filter_map(call).collect()),
        v => Err(v),
    });
    let tool_call_id = take(&mut o, "tool_call_id", string);
    let name = take(&mut o, "name", string);
    Message { role, content, reasoning, tool_calls, tool_call_id, name, extra: o }
}

fn part(v: Value) -> Option<Part> {
    let Value::Object(mut o) = v else { return None };
    let kind = take(&mut o, "type", string)?;
    let text = take(&mut o, "text", string);
    Some(Part { kind, text, extra: o })
}

fn call(v: Value) -> Option<ToolCall> {
    let Value::Object(mut o) = v else { return None };
    let id = take(&mut o, "id", string);
    let mut function = match o.remove("function") {
        // `function: {}` stays as sent: the way back writes a function only when it holds something.
        Some(Value::Object(f)) if f.is_empty() => {
            o.insert("function".into(), Value::Object(f));
            Map::new()
        }
        Some(Value::Object(f)) => f,
        Some(other) => {
            o.insert("function".into(), other);
            Map::new()
        }
        None => Map::new(),
    };
    let name = take(&mut function, "name", string);
    let arguments = function.remove("arguments");
    Some(ToolCall { id, name, arguments, extra: o, function_extra: function })
}
