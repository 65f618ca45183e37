//! `sse-encode`: client events → the client's wire format, by the request's client API
//! (the route's path): Chat Completions chunks, Responses events, or Messages events. The
//! encoders themselves live with their API in [`crate::api`]; this stage only picks one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::{RequestMeta, Stage, StageFactory};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SseEncodeConfig {}

pub struct SseEncodeFactory;

impl StageFactory for SseEncodeFactory {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage> {
        req.api.encoder(req)
    }
}

impl crate::pipeline::StageConfig for SseEncodeConfig {
    fn build(&self, b: &mut crate::pipeline::Builder<'_>) {
        b.push(SseEncodeFactory);
    }
}
