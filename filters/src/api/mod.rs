//! The client APIs: the wire formats agents speak, each an edge around the one pipeline.
//!
//! ```text
//! client request ─► ClientApi::decode ─► Conversation (what the request stages work on)
//!                                        + ApiContext (what the encoder must know)
//! events ─► Chain (response stages) ─► Responder: ApiContext::encoder ─► the API's SSE
//!                                      events or JSON object
//! ```
//! Each API is a folder: `types` (its wire types, serde), `decode` (its request into the
//! conversation), `encode` (the typed events into its wire format). No stage reads or writes
//! a wire format: the request stages see a chat request whatever the client sent, and the
//! response stages emit [`Event`](crate::Event)s that each encoder renders.
//!
//! Each API owns its whole surface: its route's path, the requests it answers itself
//! ([`Own`]: stored responses, `count_tokens`), the shape of its errors (every path under its
//! own, see [`ClientApi::for_errors`]), how an upstream's refusal is said to its clients
//! ([`ClientApi::refusal`]), and its encoder. The server asks; it never names an API.
//!
//! Adding an API: one folder, one variant in [`ClientApi`] (its path and name below) and in
//! [`ApiContext`]. Nothing else dispatches on the API.

pub mod chat;
pub mod messages;
pub mod responses;

use std::sync::Arc;

use serde_json::Value;

use crate::conversation::Conversation;
use crate::event::{ApiError, Event, FinishReason};
use crate::seal::Sealer;
use crate::stage::{Chain, RequestMeta, Stage, Stats};
use crate::store::{MemoryStore, StateStore};

/// What an edge may use beyond the request itself, the same for every API.
#[derive(Clone)]
pub struct EdgeEnv {
    /// Where state between requests is kept (stored responses): the route's
    /// `reasoning-memory` store (this process's memory, or the Redis replicas share).
    pub store: Arc<dyn StateStore>,
    /// The client's key scope: state and sealed reasoning never cross it.
    pub scope: String,
    /// Seals reasoning for clients that keep it (`encrypted_content`, `signature`).
    pub sealer: Arc<Sealer>,
    /// The most a conversation may be, in bytes of JSON, once a stored one is expanded
    /// (`previous_response_id`): the server's `max_body_bytes`, so that chains of small
    /// requests cannot build what one request may not send.
    pub max_conversation_bytes: u64,
}

impl EdgeEnv {
    /// An environment of its own (tests, tools): a small memory store, a random key.
    pub fn standalone() -> Self {
        Self {
            store: Arc::new(MemoryStore::new(16 << 20, std::time::Duration::from_secs(3600))),
            scope: String::new(),
            sealer: Arc::new(Sealer::random()),
            max_conversation_bytes: 8 << 20,
        }
    }
}

/// A client API, picked by the route's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientApi {
    /// OpenAI Chat Completions: IDE agents, the SDKs' `chat.completions`.
    #[default]
    Chat,
    /// OpenAI Responses: Codex CLI, the Agents SDK.
    Responses,
    /// Anthropic Messages: Claude Code, the Anthropic SDKs.
    Messages,
}

impl ClientApi {
    /// Every API, the one list: path, name, decoder and encoder hang off these.
    pub const ALL: [ClientApi; 3] = [ClientApi::Chat, ClientApi::Responses, ClientApi::Messages];

    /// The path a route serves this API on.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
        }
    }

    /// The `api` metric label and the summary line's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    /// The built-in pipeline a config without a route for this API's path gets: the chat
    /// path keeps `PROXY_MODE`'s answer-only default; Responses and Messages clients all declare tools
    /// and run the calls, so they get reasoning, calls and preambles as items.
    pub fn builtin_pipeline(self) -> &'static str {
        match self {
            Self::Chat => "harmony",
            Self::Responses | Self::Messages => "ide-tools",
        }
    }

    /// The API a route's path serves; a path that is none of them (a custom route) is chat.
    pub fn for_path(path: &str) -> Self {
        Self::ALL.into_iter().find(|a| a.path() == path).unwrap_or(Self::Chat)
    }

    /// The API whose error shape answers on `path` take: every path at or under an API's
    /// own (`/v1/messages/count_tokens` is Anthropic's); any other, OpenAI's.
    pub fn for_errors(path: &str) -> Self {
        Self::ALL.into_iter().find(|a| path.strip_prefix(a.path()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))).unwrap_or(Self::Chat)
    }

    /// The request on `path` that an API answers itself, if it is one.
    pub fn own(path: &str) -> Option<(Self, Own)> {
        if let Some(id) = path.strip_prefix("/v1/responses/").filter(|id| !id.is_empty() && !id.contains('/')) {
            return Some((Self::Responses, Own::StoredResponse { id: id.to_owned() }));
        }
        (path == "/v1/messages/count_tokens").then_some((Self::Messages, Own::CountTokens))
    }

    /// Answers a request of its own (`body`: the JSON object of a `POST`).
    pub fn answer(self, own: &Own, method: &str, body: Option<Value>, env: &EdgeEnv, enc: &openai_harmony::HarmonyEncoding) -> Result<Value, ApiError> {
        match own {
            Own::StoredResponse { id } => responses::stored::answer(method, id, env),
            Own::CountTokens => messages::count_tokens::answer(body.unwrap_or_else(|| Value::Object(Default::default())), env, enc),
        }
    }

    /// Whether an upstream's refusal (a 4xx before the stream) is said again in this API's
    /// shape ([`ClientApi::refusal`]); else it is passed on as the server said it (the
    /// servers speak OpenAI's shape, as Chat and Responses clients do).
    pub fn reshapes_refusals(self) -> bool {
        matches!(self, Self::Messages)
    }

    /// An upstream's refusal said in this API's shape (`body`: its first MiB).
    pub fn refusal(self, status: u16, body: &[u8]) -> ApiError {
        match self {
            Self::Messages => messages::refusal(status, body),
            Self::Chat | Self::Responses => ApiError::new(status, "upstream_error", None, String::from_utf8_lossy(body).chars().take(2000).collect::<String>()),
        }
    }

    /// The client's request (a JSON object) into the conversation the stages work on.
    pub fn decode(self, body: Value, env: &EdgeEnv) -> Result<Decoded, ApiError> {
        match self {
            Self::Chat => chat::decode(body),
            Self::Responses => responses::decode::decode(body, env),
            Self::Messages => messages::decode::decode(body, env),
        }
    }

    /// An error as this API's clients read it: OpenAI's `{"error":{…}}` or Anthropic's
    /// `{"type":"error","error":{…}}`.
    pub fn error_json(self, e: &ApiError) -> Value {
        match self {
            Self::Chat | Self::Responses => e.to_json(),
            Self::Messages => messages::error_json(e),
        }
    }
}

/// A request an API answers itself, with no pipeline and no upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Own {
    /// `GET` / `DELETE /v1/responses/{id}`.
    StoredResponse { id: String },
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
}

impl Own {
    /// The methods it takes (the first is what a 405 names).
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Self::StoredResponse { .. } => &["GET", "DELETE"],
            Self::CountTokens => &["POST"],
        }
    }

    /// Whether it tokenizes (CPU in proportion to the request) rather than waits on a store.
    pub fn is_cpu_work(&self) -> bool {
        matches!(self, Self::CountTokens)
    }
}

/// A request decoded for the pipeline.
#[derive(Debug)]
pub struct Decoded {
    /// The conversation the request stages work on and the upstream edge sends.
    pub conversation: Conversation,
    pub model: String,
    pub stream: bool,
    pub ctx: ApiContext,
    /// What the decoder left out and the operator may want to know (debug log).
    pub notes: Vec<String>,
}

impl Decoded {
    /// The conversation as a chat request (what a chat client would have sent): for tests,
    /// the fuzz targets and tools.
    pub fn chat(&self) -> Value {
        crate::upstream::chat_request::as_a_client_sends_it(self.conversation.clone())
    }
}

/// What an API's encoder needs to know about its request; rides in [`RequestMeta`].
#[derive(Debug, Clone, Default)]
pub enum ApiContext {
    #[default]
    Chat,
    Responses(Arc<responses::Context>),
    Messages(Arc<messages::Context>),
}

impl ApiContext {
    pub fn api(&self) -> ClientApi {
        match self {
            Self::Chat => ClientApi::Chat,
            Self::Responses(_) => ClientApi::Responses,
            Self::Messages(_) => ClientApi::Messages,
        }
    }

    /// The encoder for this request (the [`Responder`] makes it).
    pub fn encoder(&self, meta: &RequestMeta) -> Box<dyn Stage> {
        match self {
            Self::Chat => Box::new(chat::encode::ChatEncoder::new(meta)),
            Self::Responses(ctx) => Box::new(responses::encode::ResponsesEncoder::new(meta, ctx.clone())),
            Self::Messages(ctx) => Box::new(messages::encode::MessagesEncoder::new(meta, ctx.clone())),
        }
    }
}

/// What answering a request needs to know: the meta every stage gets, and the context of
/// its client API, which only the encoder reads.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub meta: RequestMeta,
    pub api: ApiContext,
}

impl std::ops::Deref for ClientRequest {
    type Target = RequestMeta;
    fn deref(&self) -> &RequestMeta {
        &self.meta
    }
}

impl std::ops::DerefMut for ClientRequest {
    fn deref_mut(&mut self) -> &mut RequestMeta {
        &mut self.meta
    }
}

impl From<RequestMeta> for ClientRequest {
    /// A chat client's request.
    fn from(meta: RequestMeta) -> Self {
        Self { meta, api: ApiContext::Chat }
    }
}

/// A response being made: the pipeline's response stages, then the encoder of the client's
/// API. The response body owns one (and makes a fresh one for a retry).
///
/// ```text
/// events ─► Chain (the pipeline's stages, typed events out) ─► encoder ─► Event::Wire bytes
/// ```
/// Invariant: the encoder sees every event the chain lets out, in order, and its `on_end`
/// runs once, after every stage flushed; nothing is accepted after `end`.
pub struct Responder {
    chain: Chain,
    encoder: Box<dyn Stage>,
    between: Vec<Event>,
    ended: bool,
}

impl Responder {
    pub fn new(chain: Chain, req: &ClientRequest) -> Self {
        Self { chain, encoder: req.api.encoder(&req.meta), between: Vec::with_capacity(8), ended: false }
    }

    fn encode(&mut self, out: &mut Vec<Event>) {
        for ev in self.between.drain(..) {
            self.encoder.on_event(ev, out);
        }
    }

    /// Push several events (drained from `input`).
    pub fn push_all(&mut self, input: &mut Vec<Event>, out: &mut Vec<Event>) {
        if self.ended {
            input.clear();
            return;
        }
        self.chain.push_all(input, &mut self.between);
        self.encode(out);
    }

    /// The upstream is done: flush every stage, then the encoder.
    pub fn end(&mut self, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        self.chain.end(&mut self.between);
        self.encode(out);
        self.encoder.on_end(out);
        self.ended = true;
    }

    /// The earliest deadline any stage asked for.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.chain.deadline()
    }

    /// Fire every stage whose deadline has passed.
    pub fn fire_deadlines(&mut self, now: std::time::Instant, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        self.chain.fire_deadlines(now, &mut self.between);
        self.encode(out);
    }

    pub fn stats(&self) -> Stats {
        let mut st = self.chain.stats();
        self.encoder.stats(&mut st);
        st
    }
}

/// What every encoder notes about a response besides its content, the same way: how the
/// upstream said it ended, its usage, the first error, when output began.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    pub finish: Option<FinishReason>,
    pub usage: Option<Value>,
    pub error: Option<ApiError>,
    /// When the first answer text or tool call reached the encoder (time to first token).
    pub first_output: Option<std::time::Instant>,
}

impl Ending {
    /// Notes the events every encoder treats alike (an error is also passed on: the body
    /// watches errors for the status, metrics and retry; `Abort` and `Wire` pass through);
    /// gives back the others for the encoder's own wire format.
    pub fn note(&mut self, ev: Event, out: &mut Vec<Event>) -> Option<Event> {
        if self.first_output.is_none() && matches!(ev, Event::Content(_) | Event::ClientToolCall { .. }) {
            self.first_output = Some(std::time::Instant::now());
        }
        match ev {
            Event::Finish(f) => self.finish = Some(f),
            Event::Usage(u) => self.usage = Some(u),
            Event::Error(e) => {
                if self.error.is_none() {
                    self.error = Some(e.clone());
                }
                out.push(Event::Error(e));
            }
            ev @ (Event::Abort | Event::Wire(_)) => out.push(ev),
            ev => return Some(ev),
        }
        None
    }
}

/// Reads one typed value out of `v`; an error names `at` and the path inside it
/// (`input[3].call_id: missing field`).
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: Value, at: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| located(e, at))
}

/// [`typed`] without taking the value: reads it where it lies (shape checks).
pub(crate) fn typed_ref<'a, T: serde::Deserialize<'a>>(v: &'a Value, at: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| located(e, at))
}

fn located(e: serde_path_to_error::Error<serde_json::Error>, at: &str) -> ApiError {
    {
        let inner = e.path().to_string();
        let place = if inner == "." || inner.is_empty() {
            at.to_owned()
        } else if at.is_empty() {
            inner
        } else {
            format!("{at}.{inner}")
        };
        ApiError::invalid(place, e.inner())
    }
}
