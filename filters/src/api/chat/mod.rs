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

/// The Chat Completions API.
pub struct Chat;

/// What the chat encoder needs beyond the request's meta: nothing yet (its ids and usage
/// option ride in the meta).
#[derive(Debug, Default)]
pub struct Context;

impl Api for Chat {
    type Context = Context;
    const PATH: &'static str = "/v1/chat/completions";
    const NAME: &'static str = "chat";
    /// `PROXY_MODE`'s answer-only default.
    const BUILTIN_PIPELINE: &'static str = "harmony";

    fn decode(body: Value, _env: &EdgeEnv) -> Result<Decoded, ApiError> {
        decode::decode(body)
    }
    fn encoder(meta: &RequestMeta, _ctx: &Arc<Context>) -> Box<dyn Encoder> {
        Box::new(encode::ChatEncoder::new(meta))
    }
}
