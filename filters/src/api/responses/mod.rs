//! OpenAI Responses (`POST /v1/responses`): Codex CLI, the Agents SDK, the SDKs'
//! `responses.create`.
//!
//! - `types`: the request's wire types.
//! - `decode`: the request into the chat request the stages work on (input items into
//!   messages, reasoning items into the assistant turn's `reasoning_content`, tools flattened
//!   to functions), and the [`Context`] the encoder needs.
//! - `encode`: the events into Responses SSE events (`response.created` … `response.completed`)
//!   or one Response object.

pub mod decode;
pub mod encode;
pub mod types;

use std::collections::HashMap;

use serde_json::{Map, Value};

/// How a function the model sees goes back to the client, when not as a plain function call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOrigin {
    /// A function of a `namespace` tool (Codex's MCP tools), flattened to `NAMESPACE__NAME`.
    Namespaced { namespace: String, name: String },
    /// A freeform `custom` tool: declared as a function with one string `input`, answered as
    /// a `custom_tool_call` whose `input` is that string.
    Custom,
}

/// The separator of a flattened namespace tool's name (`multi_agent_v1__spawn_agent`).
pub const NAMESPACE_SEPARATOR: &str = "__";

/// What the encoder needs to know about one request.
#[derive(Debug, Default)]
pub struct Context {
    /// `resp_…`: the response's id.
    pub response_id: String,
    /// Function names the model sees that go back in another shape.
    pub tools: HashMap<String, ToolOrigin>,
    /// `include: ["reasoning.encrypted_content"]`.
    pub include_encrypted: bool,
    /// The request's settings the Response object echoes (`instructions`, `tools`,
    /// `tool_choice`, `temperature`, …), built once at decode.
    pub echo: Map<String, Value>,
}
