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
//! a client's wire format: the request stages see the [`Conversation`] whatever the client
//! sent, and the response stages emit [`Event`](crate::Event)s that each encoder renders.
//!
//! Each API owns its whole surface: its route's path, the requests it answers itself
//! ([`Own`]: stored responses, `count_tokens`), the shape of its errors (every path under its
//! own, see [`ClientApi::for_errors`]), how an upstream's refusal is said to its clients
//! ([`ClientApi::refusal`]), and its encoder. The server asks; it never names an API.
//!
//! Adding an API: one folder (its `mod.rs` implements [`Api`]) and one line in
//! [`client_apis!`]; [`ClientApi`] and [`ApiContext`] derive from that list. Nothing else
//! dispatches on the API.

use std::sync::Arc;

use serde_json::Value;

use crate::conversation::Conversation;
use crate::event::{ApiError, Event, FinishReason};
use crate::seal::Sealer;
use crate::stage::{Chain, RequestMeta, Stats};
use crate::store::{MemoryStore, StateStore};
use crate::work::{BoxFuture, CpuPool};

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
    /// Where the edge's computing runs (decoding, counting a prompt's tokens): off the
    /// runtime's workers in the server, inline in tests and tools.
    pub cpu: CpuPool,
}

impl EdgeEnv {
    /// An environment of its own (tests, tools): a small memory store, a random key.
    pub fn standalone() -> Self {
        Self {
            store: Arc::new(MemoryStore::new(16 << 20, std::time::Duration::from_secs(3600))),
            scope: String::new(),
            sealer: Arc::new(Sealer::random()),
            max_conversation_bytes: 8 << 20,
            cpu: CpuPool::inline(),
        }
    }
}

/// One client API: everything the server and the pipeline need of it. Implemented by a unit
/// type in the API's own folder (`api/chat/mod.rs`, …); [`client_apis!`] below lists them,
/// and [`ClientApi`] and [`ApiContext`] are generated from that list.
pub trait Api: 'static {
    /// What its encoder needs to know about one request, made by its decoder.
    type Context: std::fmt::Debug + Send + Sync + 'static;
    /// The path a route serves it on.
    const PATH: &'static str;
    /// The `api` metric label and the summary line's name.
    const NAME: &'static str;
    /// The built-in pipeline a config without a route for its path gets.
    const BUILTIN_PIPELINE: &'static str;
    /// Whether an upstream's refusal (a 4xx before the stream) is said again in its shape
    /// ([`Api::refusal`]); else it is passed on as the server said it (servers speak OpenAI's
    /// shape).
    const RESHAPES_REFUSALS: bool = false;
    /// The request field that holds the conversation (what an error about its length names).
    const CONVERSATION_FIELD: &'static str = "messages";
    /// Whether a streamed request's failure before any output is said in the stream (its
    /// clients read it there: Responses' `response.failed`), rather than as an HTTP status.
    const FAILS_IN_STREAM: bool = false;
    /// Whether its edge keeps state between requests in the route's store whatever the
    /// pipeline (Responses: stored responses); `check` lists such routes with the store.
    const KEEPS_STATE: bool = false;

    /// The client's request (a JSON object) into the conversation the stages work on:
    /// awaited (it may read the store, as Responses' `previous_response_id` does), its
    /// computing run on `env.cpu`.
    fn decode(body: Value, env: &EdgeEnv) -> BoxFuture<'_, Result<Decoded, ApiError>>;
    /// The encoder of one response: the chain's events into its wire format.
    fn encoder(meta: &RequestMeta, ctx: &Arc<Self::Context>) -> Box<dyn Encoder>;
    /// The smallest streamed request of its kind asking `prompt` (what `doctor` sends
    /// through its edge).
    fn probe(prompt: &str) -> Value;
    /// A streamed answer read as its clients read it, its contract checked on the way
    /// (see [`crate::client_view`]).
    fn read_stream(body: &[u8]) -> Result<crate::client_view::Assembled, String>;
    /// An error as its clients read it (OpenAI's `{"error":{…}}` unless it says otherwise).
    fn error_json(e: &ApiError) -> Value {
        e.to_json()
    }
    /// An upstream's refusal said in its shape (`body`: its first MiB).
    fn refusal(status: u16, body: &[u8]) -> ApiError {
        ApiError::new(status, "upstream_error", None, String::from_utf8_lossy(body).chars().take(2000).collect::<String>())
    }
    /// The request on `path` (under its own) that it answers itself, if it is one.
    fn own(_path: &str) -> Option<Own> {
        None
    }
    /// Answers a request of its own (`body`: the JSON object of a `POST`): awaited, as
    /// [`Api::decode`] (a store read; its computing on `env.cpu`).
    fn answer<'a>(
        own: &'a Own,
        _method: &'a str,
        _body: Option<Value>,
        _env: &'a EdgeEnv,
        _enc: &'a openai_harmony::HarmonyEncoding,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(std::future::ready(Err(ApiError::new(404, "invalid_request_error", Some("not_found"), format!("no such endpoint: {}", own.path)))))
    }
}

/// The one list of client APIs: for each, its folder (the module is declared here), its
/// variant and the type implementing [`Api`]. Everything that dispatches on the API derives
/// from it: adding an API is its folder and one line here. (`rustfmt` does not follow a
/// module declared in a macro: the format gate checks `api/*/mod.rs` by name.)
macro_rules! client_apis {
    ($( $(#[$doc:meta])* $module:ident: $variant:ident => $api:ty, )*) => {
        $( pub mod $module; )*

        /// A client API, picked by the route's path.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ClientApi {
            $( $(#[$doc])* $variant, )*
        }

        impl ClientApi {
            /// Every API, in the order of the list (the first is the default).
            pub const ALL: &'static [ClientApi] = &[$(ClientApi::$variant),*];

            /// The path a route serves this API on.
            pub fn path(self) -> &'static str {
                match self { $(Self::$variant => <$api as Api>::PATH,)* }
            }
            /// The `api` metric label and the summary line's name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => <$api as Api>::NAME,)* }
            }
            /// The built-in pipeline a config without a route for this API's path gets.
            pub fn builtin_pipeline(self) -> &'static str {
                match self { $(Self::$variant => <$api as Api>::BUILTIN_PIPELINE,)* }
            }
            /// See [`Api::RESHAPES_REFUSALS`].
            pub fn reshapes_refusals(self) -> bool {
                match self { $(Self::$variant => <$api as Api>::RESHAPES_REFUSALS,)* }
            }
            /// See [`Api::CONVERSATION_FIELD`].
            pub fn conversation_field(self) -> &'static str {
                match self { $(Self::$variant => <$api as Api>::CONVERSATION_FIELD,)* }
            }
            /// See [`Api::FAILS_IN_STREAM`].
            pub fn fails_in_stream(self) -> bool {
                match self { $(Self::$variant => <$api as Api>::FAILS_IN_STREAM,)* }
            }
            /// See [`Api::KEEPS_STATE`].
            pub fn keeps_state(self) -> bool {
                match self { $(Self::$variant => <$api as Api>::KEEPS_STATE,)* }
            }
            /// An upstream's refusal said in this API's shape (`body`: its first MiB).
            pub fn refusal(self, status: u16, body: &[u8]) -> ApiError {
                match self { $(Self::$variant => <$api as Api>::refusal(status, body),)* }
            }
            /// The client's request (a JSON object) into the conversation the stages work on
            /// (see [`Api::decode`]).
            pub async fn decode(self, body: Value, env: &EdgeEnv) -> Result<Decoded, ApiError> {
                match self { $(Self::$variant => <$api as Api>::decode(body, env).await,)* }
            }
            /// See [`Api::probe`].
            pub fn probe(self, prompt: &str) -> Value {
                match self { $(Self::$variant => <$api as Api>::probe(prompt),)* }
            }
            /// See [`Api::read_stream`].
            pub fn read_stream(self, body: &[u8]) -> Result<crate::client_view::Assembled, String> {
                match self { $(Self::$variant => <$api as Api>::read_stream(body),)* }
            }
            /// An error as this API's clients read it.
            pub fn error_json(self, e: &ApiError) -> Value {
                match self { $(Self::$variant => <$api as Api>::error_json(e),)* }
            }
            /// The request on `path` that an API answers itself, if it is one.
            pub fn own(path: &str) -> Option<(Self, Own)> {
                $( if let Some(own) = <$api as Api>::own(path) { return Some((Self::$variant, own)); } )*
                None
            }
            /// Answers a request of its own (`body`: the JSON object of a `POST`; see
            /// [`Api::answer`]).
            pub async fn answer(self, own: &Own, method: &str, body: Option<Value>, env: &EdgeEnv, enc: &openai_harmony::HarmonyEncoding) -> Result<Value, ApiError> {
                match self { $(Self::$variant => <$api as Api>::answer(own, method, body, env, enc).await,)* }
            }
        }

        /// What an API's encoder needs to know about its request: its decoder makes it.
        #[derive(Debug, Clone)]
        pub enum ApiContext {
            $( $variant(Arc<<$api as Api>::Context>), )*
        }

        impl ApiContext {
            pub fn api(&self) -> ClientApi {
                match self { $(Self::$variant(_) => ClientApi::$variant,)* }
            }
            /// The encoder for this request (the [`Responder`] makes it).
            pub fn encoder(&self, meta: &RequestMeta) -> Box<dyn Encoder> {
                match self { $(Self::$variant(ctx) => <$api as Api>::encoder(meta, ctx),)* }
            }
        }
    };
}

client_apis! {
    /// OpenAI Chat Completions: IDE agents, the SDKs' `chat.completions`.
    chat: Chat => chat::Chat,
    /// OpenAI Responses: Codex CLI, the Agents SDK.
    responses: Responses => responses::Responses,
    /// Anthropic Messages: Claude Code, the Anthropic SDKs.
    messages: Messages => messages::Messages,
}

impl Default for ClientApi {
    fn default() -> Self {
        Self::ALL[0]
    }
}

impl ClientApi {
    /// The API a route's path serves; a path that is none of them (a custom route) is chat.
    pub fn for_path(path: &str) -> Self {
        Self::ALL.iter().copied().find(|a| a.path() == path).unwrap_or_default()
    }

    /// The API whose error shape answers on `path` take: every path at or under an API's
    /// own (`/v1/messages/count_tokens` is Anthropic's); any other, OpenAI's.
    pub fn for_errors(path: &str) -> Self {
        Self::ALL.iter().copied().find(|a| path.strip_prefix(a.path()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))).unwrap_or_default()
    }
}

/// How a failure before any output is said to a client.
#[derive(Debug)]
pub enum Failure {
    /// As an HTTP error in the API's shape.
    Status(ApiError),
    /// In the stream the client asked for (Responses' `response.created`, then
    /// `response.failed`): its clients read it there.
    InStream(ApiError),
}

impl ClientApi {
    /// A failure before any output, said as this API's clients read it: in the stream for
    /// a streamed request where they read it there ([`Api::FAILS_IN_STREAM`]), else as an
    /// HTTP error. A prompt too long names the API's conversation field.
    pub fn failure(self, mut e: ApiError, stream: bool) -> Failure {
        if e.overflow.is_some() {
            e.param = Some(self.conversation_field().to_owned());
            if stream && self.fails_in_stream() {
                return Failure::InStream(e);
            }
        }
        Failure::Status(e)
    }

    /// An upstream's refusal (a 4xx before the stream; `body`: its first MiB, `whole` when
    /// nothing was cut), said to this API's clients: a prompt that does not fit in the API's
    /// words; any other refusal again in its shape where its clients read no other
    /// ([`Api::RESHAPES_REFUSALS`]); `None`: pass it on as the server sent it (not when it
    /// was cut).
    pub fn upstream_refusal(self, status: u16, body: &[u8], whole: bool, stream: bool) -> Option<Failure> {
        if let Some(o) = crate::upstream::overflow::in_body(body) {
            return Some(self.failure(ApiError::context_overflow(o, self.conversation_field()), stream));
        }
        if self.reshapes_refusals() {
            return Some(Failure::Status(self.refusal(status, body)));
        }
        if !whole {
            // Cut (past 1 MiB, or too slow): never passed on as if it were whole.
            let msg = format!("the model server refused the request (HTTP {status}); its answer was cut off");
            return Some(Failure::Status(ApiError::new(status, "upstream_error", Some("upstream_error"), msg)));
        }
        None
    }

    /// An upstream's refusal of a retry, after the response began: said in the stream's
    /// error event (a prompt that does not fit in the API's words).
    pub fn refusal_in_stream(self, status: u16, body: &[u8]) -> ApiError {
        match crate::upstream::overflow::in_body(body) {
            Some(o) => ApiError::context_overflow(o, self.conversation_field()),
            None => ApiError::new(status, "upstream_error", Some("upstream_error"), format!("upstream answered HTTP {status} when retried")),
        }
    }
}

/// A request an API answers itself, with no pipeline and no upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// The request's path (the API reads what it names from it).
    pub path: String,
    /// The methods it takes (the first is what a 405 names).
    pub methods: &'static [&'static str],
}

impl Own {
    pub fn methods(&self) -> &'static [&'static str] {
        self.methods
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
    /// A chat client's request that asks for everything, the usage chunk included (replay,
    /// `doctor`, tests).
    fn from(meta: RequestMeta) -> Self {
        Self { meta, api: ApiContext::Chat(Arc::new(chat::Context::new(true))) }
    }
}

/// A response being made: the pipeline's response stages, then the encoder of the client's
/// API. The response body owns one (and makes a fresh one for a retry).
///
/// ```text
/// upstream events ─► Chain (the pipeline's stages: typed events in, typed events out)
///                 ─► Encoder (the client API's) ─► Output: bytes, an error, the end
/// ```
/// Invariant: the encoder sees every event the chain lets out, in order, and its `on_end`
/// runs once, after every stage flushed; nothing is accepted after `end`.
pub struct Responder {
    chain: Chain,
    encoder: Box<dyn Encoder>,
    between: Vec<Event>,
    ended: bool,
}

impl Responder {
    pub fn new(chain: Chain, req: &ClientRequest) -> Self {
        Self { chain, encoder: req.api.encoder(&req.meta), between: Vec::with_capacity(8), ended: false }
    }

    fn encode(&mut self, out: &mut Vec<Output>) {
        for ev in self.between.drain(..) {
            self.encoder.on_event(ev, out);
        }
    }

    /// Push several events (drained from `input`).
    pub fn push_all(&mut self, input: &mut Vec<Event>, out: &mut Vec<Output>) {
        if self.ended {
            input.clear();
            return;
        }
        self.chain.push_all(input, &mut self.between);
        self.encode(out);
    }

    /// The upstream is done: flush every stage, then the encoder.
    pub fn end(&mut self, out: &mut Vec<Output>) {
        if self.ended {
            return;
        }
        self.chain.end(&mut self.between);
        self.encode(out);
        self.encoder.on_end(out);
        self.ended = true;
    }

    /// The earliest deadline a stage or the encoder asked for.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        match (self.chain.deadline(), self.encoder.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire every stage, then the encoder, whose deadline has passed.
    pub fn fire_deadlines(&mut self, now: std::time::Instant, out: &mut Vec<Output>) {
        if self.ended {
            return;
        }
        self.chain.fire_deadlines(now, &mut self.between);
        self.encode(out);
        if self.encoder.deadline().is_some_and(|d| d <= now) {
            self.encoder.on_deadline(out);
        }
    }

    pub fn stats(&self) -> Stats {
        let mut st = self.chain.stats();
        self.encoder.stats(&mut st);
        st
    }
}

/// What an encoder hands the response body: bytes for the client, and the two facts the
/// body acts on (the response failed: its status, metrics and retry; it is over: read no
/// more of the upstream).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Bytes(bytes::Bytes),
    Error(ApiError),
    Abort,
}

/// A client API's encoder: the chain's typed events into its wire format, for one response.
/// Its calls come in the order of the response stages' ([`crate::stage::Stage`]), which it ends.
pub trait Encoder: Send {
    /// Encode one event.
    fn on_event(&mut self, ev: Event, out: &mut Vec<Output>);
    /// The upstream is done and every stage flushed: end the answer.
    fn on_end(&mut self, out: &mut Vec<Output>);
    /// When it wants `on_deadline` called (a keep-alive ping), if nothing else happens first.
    fn deadline(&self) -> Option<std::time::Instant> {
        None
    }
    fn on_deadline(&mut self, _out: &mut Vec<Output>) {}
    /// What it adds to the request's counters (time to first output).
    fn stats(&self, _stats: &mut Stats) {}
}

/// What every encoder notes about a response besides its content, the same way: how the
/// upstream said it ended, its usage, the first error, when output began.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    pub finish: Option<FinishReason>,
    pub usage: Option<crate::event::Usage>,
    pub error: Option<ApiError>,
    /// When the first answer text or tool call reached the encoder (time to first token).
    pub first_output: Option<std::time::Instant>,
}

impl Ending {
    /// Notes the events every encoder treats alike (an error is also passed on: the body
    /// watches errors for the status, metrics and retry; `Abort` passes through); gives back
    /// the others for the encoder's own wire format.
    pub fn note(&mut self, ev: Event, out: &mut Vec<Output>) -> Option<Event> {
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
                out.push(Output::Error(e));
            }
            Event::Abort => out.push(Output::Abort),
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

#[cfg(test)]
mod regressions {
    use super::*;

    /// Found when the encoder left the chain: its keep-alive (Messages' `ping`, Responses'
    /// `response.in_progress`) is a deadline of the whole response, or a long think sends
    /// nothing for minutes and proxies in between cut the stream.
    #[test]
    fn a_streamed_answer_still_pings_while_the_model_thinks() {
        let p = crate::testing::pipeline(r#"[{ type = "harmony-parse" }, { type = "tool-bridge", mode = "final_only" }, { type = "sse-encode" }]"#);
        for (req, says) in [(crate::testing::messages_meta(true), "event: ping"), (crate::testing::responses_meta(true), "event: response.in_progress")] {
            let mut r = Responder::new(p.new_chain(&req), &req);
            let due = r.deadline().expect("a streamed answer keeps itself alive");
            let mut out = Vec::new();
            r.fire_deadlines(due, &mut out);
            let wire: Vec<u8> = out.iter().flat_map(|o| if let Output::Bytes(b) = o { b.to_vec() } else { Vec::new() }).collect();
            assert!(String::from_utf8_lossy(&wire).contains(says), "{says}: {}", String::from_utf8_lossy(&wire));
        }
    }
}

#[cfg(test)]
mod failures {
    use super::*;

    const TOO_LONG: &[u8] = br#"{"error":{"code":400,"message":"request (9000 tokens) exceeds the available context size (4096 tokens)","type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":4096}}"#;

    #[test]
    fn a_prompt_too_long_is_said_in_the_stream_only_where_the_apis_clients_read_it_there() {
        for (api, stream, in_stream, field) in [
            (ClientApi::Responses, true, true, "input"),
            (ClientApi::Responses, false, false, "input"),
            (ClientApi::Chat, true, false, "messages"),
            (ClientApi::Messages, true, false, "messages"),
        ] {
            let (said, e) = match api.upstream_refusal(400, TOO_LONG, true, stream) {
                Some(Failure::InStream(e)) => (true, e),
                Some(Failure::Status(e)) => (false, e),
                None => panic!("{api:?}: an overflow is always said in the API's words"),
            };
            assert_eq!((said, e.param.as_deref(), e.overflow.and_then(|o| o.context_tokens)), (in_stream, Some(field), Some(4096)), "{api:?} stream={stream}");
        }
    }

    #[test]
    fn other_refusals_pass_on_as_sent_unless_the_api_reshapes_them_or_they_were_cut() {
        let body = br#"{"error":{"message":"bad temperature","type":"invalid_request_error"}}"#;
        assert!(ClientApi::Chat.upstream_refusal(400, body, true, true).is_none(), "OpenAI's shape, as the server said it");
        let Some(Failure::Status(e)) = ClientApi::Messages.upstream_refusal(400, body, true, true) else { panic!("Anthropic's clients read only its shape") };
        assert!(e.message.contains("bad temperature"), "{}", e.message);
        let Some(Failure::Status(e)) = ClientApi::Chat.upstream_refusal(400, body, false, false) else { panic!("a cut answer is never passed on as whole") };
        assert!(e.message.contains("cut off"), "{}", e.message);
    }
}
