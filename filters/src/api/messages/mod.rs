//! Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`): Claude Code
//! and the Anthropic SDKs.
//!
//! - `types`: the request's wire types.
//! - `decode`: the request into the chat request the stages work on (system blocks and
//!   system messages into the instructions, thinking blocks into the turn's reasoning,
//!   `tool_use` / `tool_result` blocks into calls and tool messages), and the [`Context`].
//! - `encode`: the events into Messages SSE events (`message_start` … `message_stop`) or one
//!   `message` object; errors in Anthropic's shape ([`error_json`]), an upstream's refusal
//!   said again in it ([`refusal`]).
//! - `stops`: the stop-sequence automaton; `input_json`: a `tool_use` input kept a JSON
//!   object as it streams; `count_tokens`: `POST /v1/messages/count_tokens`.

pub mod count_tokens;
pub mod decode;
pub mod encode;
pub mod input_json;
pub mod stops;
pub mod types;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::{Api, Decoded, EdgeEnv, Encoder, Own};
use crate::event::ApiError;
use crate::seal::Sealer;
use crate::stage::RequestMeta;
use crate::work::BoxFuture;

/// The Anthropic Messages API.
pub struct Messages;

impl Api for Messages {
    type Context = Context;
    const PATH: &'static str = "/v1/messages";
    const NAME: &'static str = "messages";
    /// Its clients declare tools and run the calls: reasoning, calls and preambles as blocks.
    const BUILTIN_PIPELINE: &'static str = "ide-tools";
    /// Anthropic's clients read only Anthropic's error shape.
    const RESHAPES_REFUSALS: bool = true;

    fn decode(body: Value, env: &EdgeEnv) -> BoxFuture<'_, Result<Decoded, ApiError>> {
        let edge = env.clone();
        Box::pin(env.cpu.run(move || decode::decode(body, &edge)))
    }
    fn encoder(meta: &RequestMeta, ctx: &Arc<Context>) -> Box<dyn Encoder> {
        Box::new(encode::MessagesEncoder::new(meta, ctx.clone()))
    }
    fn probe(prompt: &str) -> Value {
        serde_json::json!({"model": "doctor", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}], "stream": true})
    }
    fn read_stream(body: &[u8]) -> Result<crate::client_view::Assembled, String> {
        crate::client_view::assemble_messages(body)
    }
    fn error_json(e: &ApiError) -> Value {
        error_json(e)
    }
    fn refusal(status: u16, body: &[u8]) -> ApiError {
        refusal(status, body)
    }
    /// `POST /v1/messages/count_tokens`.
    fn own(path: &str) -> Option<Own> {
        (path == "/v1/messages/count_tokens").then(|| Own { path: path.to_owned(), methods: &["POST"] })
    }
    /// Counting tokens computes: on `env.cpu`.
    fn answer<'a>(
        _own: &'a Own,
        _method: &'a str,
        body: Option<Value>,
        env: &'a EdgeEnv,
        enc: &'a openai_harmony::HarmonyEncoding,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        let (edge, enc) = (env.clone(), enc.clone());
        Box::pin(env.cpu.run(move || count_tokens::answer(body.unwrap_or_else(|| Value::Object(Default::default())), &edge, &enc)))
    }
}

/// What the encoder needs to know about one request.
#[derive(Debug)]
pub struct Context {
    /// `msg_…`: the message's id.
    pub message_id: String,
    /// Seals each thinking block's reasoning into its `signature`.
    pub sealer: Arc<Sealer>,
    /// The client's key scope (signatures are bound to it).
    pub scope: String,
    /// The client's stop sequences (`stop_reason: "stop_sequence"` names the one that ended
    /// the answer, when the upstream says which).
    pub stop_sequences: Vec<String>,
}

/// Anthropic's error type for an error's status.
pub fn error_type(e: &ApiError) -> &'static str {
    match e.status {
        // The error types of the Anthropic SDK's `ErrorObject` (2.14): a 413 is an invalid
        // request there (the API's docs name a `request_too_large` the SDK types do not have).
        400 | 405 | 408 | 413 | 414 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An upstream's refusal (a 4xx before the stream; `body` its first MiB), as an error of
/// this API's: Anthropic clients read only Anthropic's shape.
pub fn refusal(status: u16, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let msg =
        v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(2000).collect());
    ApiError::new(status, "upstream_error", None, format!("the model server answered {status}: {msg}"))
}

/// The error as Anthropic shapes it: `{"type":"error","error":{"type","message"}}`.
/// A prompt that does not fit is said as Anthropic says it ("prompt is too long: N tokens > M
/// maximum"), the words Claude Code compacts on.
pub fn error_json(e: &ApiError) -> Value {
    let message = match e.overflow {
        Some(o) => too_long(o),
        None => e.message.clone(),
    };
    json!({"type": "error", "error": {"type": error_type(e), "message": message}})
}

/// Anthropic's words for a prompt that does not fit, with the numbers the server gave.
fn too_long(o: crate::event::ContextOverflow) -> String {
    match (o.prompt_tokens, o.context_tokens) {
        (Some(n), Some(max)) => format!("prompt is too long: {n} tokens > {max} maximum"),
        (Some(n), None) => format!("prompt is too long: {n} tokens"),
        (None, Some(max)) => format!("prompt is too long: more than {max} maximum"),
        (None, None) => "prompt is too long for the model's context".to_owned(),
    }
}
