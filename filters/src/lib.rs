//! # harmony-filters
//!
//! The Harmony-processing half of harmony-proxy, free of any server machinery so that fuzz
//! targets, property tests and `replay` link against it alone.
//!
//! Data flow for one response:
//! ```text
//! upstream bytes ─► upstream::SseDecoder ─► Event::Upstream* / Finish / Usage / Error
//!                ─► Chain (stages in config order) ─► the client API's encoder ─► bytes for the client
//! ```
//! Stages are built by a [`StageFactory`](stage::StageFactory) once per config generation
//! ([`pipeline::compile`]) and instantiated per request; they run synchronously, inline in
//! the response body, with no task or channel between them.

pub mod api;
pub mod client_view;
pub mod conversation;
pub mod event;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_targets;
pub mod json_end;
pub mod markup;
pub mod pipeline;
pub mod replay;
pub mod seal;
pub mod stage;
pub mod stages;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokens;
pub mod upstream;
pub mod values;
pub mod vocab;
pub mod work;

pub use api::{ApiContext, ClientApi, ClientRequest, Decoded, Encoder, Output, Responder};
pub use conversation::Conversation;
pub use event::{ApiError, Channel, Event, FinishReason, Usage};
pub use pipeline::{compile, compile_with, validate, Compiled, StageSpec};
pub use stage::{Chain, Endpoint, RequestMeta, Stage, StageFactory, Stats, UpstreamRequest};
