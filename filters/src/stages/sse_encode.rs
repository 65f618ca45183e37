//! `sse-encode`: where a pipeline's events become the client's wire format. A marker: the
//! pipeline ends here, at typed events, and the response body hands them to the encoder of
//! the request's client API ([`crate::api::Responder`]): Chat Completions chunks, Responses
//! events or Messages events. It stays in configs (the config file is a contract) and must
//! be last.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SseEncodeConfig {}

impl crate::stage::StageConfig for SseEncodeConfig {
    /// Where the pipeline's events become the client's: last.
    fn place() -> crate::stage::config::Place {
        crate::stage::config::Place { last: true, ..crate::stage::config::Place::ONCE }
    }
    /// Nothing to build: the encoder is the client API's, made per request.
    fn build(&self, _b: &mut crate::stage::Builder<'_>) {}
}
