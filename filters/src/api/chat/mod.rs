//! OpenAI Chat Completions: `decode` reads the request into the conversation (everything
//! the proxy does not model kept as sent), `encode` renders the events.

pub mod decode;
pub mod encode;
pub mod types;

use std::sync::Arc;

use serde_json::Value;

pub use decode::decode;

use crate::api::{Api, Decoded, EdgeEnv, Encoder};
use crate::event::ApiError;
use crate::stage::RequestMeta;
use crate::work::BoxFuture;

/// The Chat Completions API.
pub struct Chat;

/// What the chat encoder needs beyond the request's meta: the completion's id and whether
/// the client asked for the usage chunk.
#[derive(Debug, Clone)]
pub struct Context {
    /// The id of the completion (`chatcmpl-…`), one for the whole response, retries included.
    pub completion_id: String,
    /// The client asked for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl Context {
    /// A fresh completion id.
    pub fn new(include_usage: bool) -> Self {
        Self { completion_id: crate::stage::random_id("chatcmpl-", 24), include_usage }
    }
}

impl Api for Chat {
    type Context = Context;
    const PATH: &'static str = "/v1/chat/completions";
    const NAME: &'static str = "chat";
    /// `PROXY_MODE`'s answer-only default.
    const BUILTIN_PIPELINE: &'static str = "harmony";

    fn decode(body: Value, env: &EdgeEnv) -> BoxFuture<'_, Result<Decoded, ApiError>> {
        Box::pin(env.cpu.run(move || decode::decode(body)))
    }
    fn encoder(meta: &RequestMeta, ctx: &Arc<Context>) -> Box<dyn Encoder> {
        Box::new(encode::ChatEncoder::new(meta, ctx))
    }
    fn probe(prompt: &str) -> Value {
        serde_json::json!({"model": "doctor", "messages": [{"role": "user", "content": prompt}], "stream": true})
    }
    fn read_stream(body: &[u8]) -> Result<crate::client_view::Assembled, String> {
        crate::client_view::assemble_sse(body)
    }
}
