//! Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`): Claude Code
//! and the Anthropic SDKs.
//!
//! - `types`: the request's wire types.
//! - `decode`: the request into the chat request the stages work on (system blocks and
//!   system messages into the instructions, thinking blocks into the turn's reasoning,
//!   `tool_use` / `tool_result` blocks into calls and tool messages), and the [`Context`].
//! - `encode`: the events into Messages SSE events (`message_start` … `message_stop`) or one
//!   `message` object; errors in Anthropic's shape ([`error_json`]).

pub mod decode;
pub mod encode;
pub mod stops;
pub mod types;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::event::ApiError;
use crate::seal::Sealer;

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
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The error as Anthropic shapes it: `{"type":"error","error":{"type","message"}}`.
pub fn error_json(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e), "message": e.message}})
}
