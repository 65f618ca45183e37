//! OpenAI Responses (`POST /v1/responses`): Codex CLI, the Agents SDK, the SDKs'
//! `responses.create`.
//!
//! - `types`: the request's wire types.
//! - `decode`: the request into the chat request the stages work on (input items into
//!   messages, reasoning items into the assistant turn's `reasoning_content`, tools flattened
//!   to functions), and the [`Context`] the encoder needs.
//! - `encode`: the events into Responses SSE events (`response.created` … `response.completed`)
//!   or one Response object.
//! - `stored`: `GET` / `DELETE /v1/responses/{id}`.

pub mod decode;
pub mod encode;
pub mod stored;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::api::{Api, Decoded, EdgeEnv, Encoder, Own};
use crate::event::ApiError;
use crate::seal::Sealer;
use crate::stage::RequestMeta;
use crate::store::StateStore;
use crate::work::BoxFuture;

/// The Responses API.
pub struct Responses;

const STORED: &str = "/v1/responses/";

impl Api for Responses {
    type Context = Context;
    const PATH: &'static str = "/v1/responses";
    const NAME: &'static str = "responses";
    /// Its clients declare tools and run the calls: reasoning, calls and preambles as items.
    const BUILTIN_PIPELINE: &'static str = "ide-tools";
    const CONVERSATION_FIELD: &'static str = "input";
    const FAILS_IN_STREAM: bool = true;
    const KEEPS_STATE: bool = true;

    /// Checked and decoded on `env.cpu`; a request that continues a stored response is two
    /// jobs, the stored response read (awaited) between them.
    fn decode(body: Value, env: &EdgeEnv) -> BoxFuture<'_, Result<Decoded, ApiError>> {
        Box::pin(async move {
            let edge = env.clone();
            let checked = env
                .cpu
                .run(move || {
                    let req = decode::request(body)?;
                    match req.previous_response_id {
                        Some(_) => Ok(Err(Box::new(req))),
                        None => decode::decode(req, None, &edge).map(Ok),
                    }
                })
                .await?;
            let req = match checked {
                Ok(done) => return Ok(done),
                Err(req) => *req,
            };
            let recalled = env.store.get(&env.scope, req.previous_response_id.as_deref().unwrap_or_default()).await;
            let edge = env.clone();
            env.cpu.run(move || decode::decode(req, recalled, &edge)).await
        })
    }
    fn encoder(meta: &RequestMeta, ctx: &Arc<Context>) -> Box<dyn Encoder> {
        Box::new(encode::ResponsesEncoder::new(meta, ctx.clone()))
    }
    fn probe(prompt: &str) -> Value {
        serde_json::json!({"model": "doctor", "input": prompt, "stream": true, "store": false})
    }
    fn read_stream(body: &[u8]) -> Result<crate::client_view::Assembled, String> {
        crate::client_view::assemble_responses(body)
    }
    /// `GET` / `DELETE /v1/responses/{id}`.
    fn own(path: &str) -> Option<Own> {
        path.strip_prefix(STORED).filter(|id| !id.is_empty() && !id.contains('/'))?;
        Some(Own { path: path.to_owned(), methods: &["GET", "DELETE"] })
    }
    fn answer<'a>(
        own: &'a Own,
        method: &'a str,
        _body: Option<Value>,
        env: &'a EdgeEnv,
        _enc: &'a openai_harmony::HarmonyEncoding,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(stored::answer(method, own.path.strip_prefix(STORED).unwrap_or_default(), env))
    }
}

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

/// Where a stored response goes, and what is kept with it.
pub struct Storing {
    pub store: Arc<dyn StateStore>,
    /// Every input item of the conversation so far (earlier stored turns included), kept
    /// with the response so that `previous_response_id` can continue it.
    pub input: Vec<Value>,
}

impl std::fmt::Debug for Storing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storing({} items)", self.input.len())
    }
}

/// What a stored response holds (JSON in the store, under the response id).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub input: Vec<Value>,
    pub response: Value,
}

/// What the encoder needs to know about one request.
#[derive(Debug, Default)]
pub struct Context {
    /// `resp_…`: the response's id.
    pub response_id: String,
    /// Function names the model sees that go back in another shape.
    pub tools: HashMap<String, ToolOrigin>,
    /// `include: ["reasoning.encrypted_content"]`: reasoning items carry it, sealed by this.
    pub seal: Option<Arc<Sealer>>,
    /// The client's key scope (sealed reasoning and stored responses are bound to it).
    pub scope: String,
    /// `store` (the default): the response is kept, with its conversation.
    pub storing: Option<Storing>,
    /// The request's settings the Response object echoes (`instructions`, `tools`,
    /// `tool_choice`, `temperature`, …), built once at decode.
    pub echo: Map<String, Value>,
}
