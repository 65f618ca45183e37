//! OpenAI Chat Completions: the conversation the stages work on *is* a chat request, so
//! decoding only reads what the server needs to know; `encode` renders the events.

pub mod encode;

use serde_json::Value;

use super::{ApiContext, Decoded};

pub fn decode(body: Value) -> Decoded {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    Decoded { chat: body, model, stream, include_usage, ctx: ApiContext::Chat, notes: Vec::new() }
}
