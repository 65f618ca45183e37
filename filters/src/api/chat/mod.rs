//! OpenAI Chat Completions: the conversation the stages work on *is* a chat request, so
//! decoding only reads what the server needs to know; `encode` renders the events.

pub mod encode;
pub mod types;

use serde_json::Value;

use super::{typed_ref, ApiContext, Decoded};
use crate::event::ApiError;

/// The request's shape is checked against [`types::Request`] (a 400 naming the field); the
/// request itself goes on as the client sent it.
pub fn decode(body: Value) -> Result<Decoded, ApiError> {
    let _checked: types::Request = typed_ref(&body, "")?;
    let model = body.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    Ok(Decoded { chat: body, model, stream, include_usage, ctx: ApiContext::Chat, notes: Vec::new() })
}
