//! The stage model: factories built once per config generation ([`config`]: what a stage's
//! config builds), and per request the stages of each phase: [`RequestStage`]s edit the
//! conversation and say what goes upstream ([`request_phase`]); response [`Stage`]s turn the
//! upstream's events into the client's, pushed through them in order by the [`chain`].

pub mod chain;
pub mod config;

use std::time::Instant;

pub use chain::Chain;
pub use config::{Builder, RetryPolicy, StageConfig};

use crate::conversation::{Conversation, Limit, LimitName};
use crate::event::{ApiError, Event};
use crate::upstream::completion_request::Completion;
use crate::work::{BoxFuture, CpuPool};

/// What a stage may know about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub created: u64,
    pub model: String,
    /// The client asked for SSE.
    pub stream: bool,
    /// Who the request is from, when the server checks API keys (a digest of the key):
    /// state kept between requests (`reasoning-memory`) is never shared across scopes.
    pub auth_scope: Option<String>,
    /// The length of the prompt the proxy rendered (`harmony-render`), known once the request
    /// phase is done: the usage the client sees says exactly this, retries included.
    pub prompt_tokens: Option<u64>,
    /// What the proxy wrote of the model's answer at the end of the prompt (`harmony-render`:
    /// the call header a named `tool_choice` forces), known once the request phase is done.
    pub prefill: Option<std::sync::Arc<Prefill>>,
}

/// The start of the model's answer, written by the proxy at the end of the prompt: the model
/// goes on from it, and the response stages see it first, as if the model had said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefill {
    pub ids: Vec<u32>,
    pub text: String,
}

impl RequestMeta {
    /// A meta with fresh ids, for tools and tests.
    pub fn new(model: &str, stream: bool) -> Self {
        Self { request_id: random_id("req_", 16), created: unix_now(), model: model.to_owned(), stream, auth_scope: None, prompt_tokens: None, prefill: None }
    }
}

/// `prefix` followed by `len` random alphanumerics from the operating system's
/// cryptographic generator: ids such as a stored response's are what guards it when the
/// proxy checks no keys, so they must not be predictable from ids seen before.
pub fn random_id(prefix: &str, len: usize) -> String {
    use ring::rand::SecureRandom as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // 62 * 4 = 248: bytes from 248 up are drawn again, so every letter is equally likely.
    const ZONE: u8 = 248;
    static RNG: std::sync::OnceLock<ring::rand::SystemRandom> = std::sync::OnceLock::new();
    let rng = RNG.get_or_init(ring::rand::SystemRandom::new);
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    let mut buf = [0u8; 64];
    while s.len() < prefix.len() + len {
        if rng.fill(&mut buf).is_err() {
            // The OS generator does not fail on supported systems; if it ever does, an id
            // must still be made (from fastrand, as before).
            buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
        }
        for &b in buf.iter().filter(|&&b| b < ZONE) {
            if s.len() == prefix.len() + len {
                break;
            }
            s.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    s
}

/// The scope of state kept for a client API key (`RequestMeta::auth_scope`): a digest that is
/// the same in every replica and every version, and does not reveal the key.
pub fn key_scope(api_key: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(api_key.as_bytes());
    let mut s = String::with_capacity(33);
    s.push('k');
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Built once per config generation from the stage's TOML table; shared by all requests:
/// makes a response stage per request.
pub trait StageFactory: Send + Sync + 'static {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage>;
}

/// The same, for a request stage (of the kind it is).
pub trait RequestStageFactory: Send + Sync + 'static {
    fn new_request_stage(&self, req: &RequestMeta) -> PhaseStage;
}

/// Which upstream endpoint a request goes to, and how its answer is read. The request phase
/// chooses (`harmony-render`); the server obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endpoint {
    /// `POST {url}/chat/completions`: the server renders the prompt with its chat template.
    #[default]
    Chat,
    /// `POST {url}/completions` (OpenAI legacy): a prompt the proxy rendered; raw text back
    /// in `choices[0].text`, special tokens kept.
    Completions,
    /// llama.cpp's native `POST {url without /v1}/completion` with `return_tokens`: token
    /// ids back, fed to the official parser as they come.
    LlamaCompletion,
}

/// What goes upstream: the conversation as the request stages left it, and the form the
/// upstream edge says it in. The body is written from them when it is sent
/// ([`body`](Self::body)): the chat endpoint's request ([`crate::upstream::chat_request`]),
/// or, when a stage rendered the prompt itself (`harmony-render`), a completion endpoint's
/// ([`crate::upstream::completion_request`]). Nothing between the edges reads a wire field: a
/// re-send that asks for fewer output tokens lowers the conversation's limit and converts
/// again ([`with_output_limit`](Self::with_output_limit)).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub conversation: Conversation,
    pub form: UpstreamForm,
    /// The rendered prompt's length, when the proxy rendered it.
    pub prompt_tokens: Option<u64>,
    /// The start of the answer the prompt ends with, when the proxy wrote one.
    pub prefill: Option<std::sync::Arc<Prefill>>,
}

/// How the conversation is said upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamForm {
    /// The chat endpoint's request: the server renders the prompt with its own template.
    Chat,
    /// A prompt the proxy rendered, for a completion endpoint.
    Completion(Completion),
}

/// What a stage that renders the prompt itself made of the conversation (`harmony-render`).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub completion: Completion,
    pub prompt_tokens: u64,
    pub prefill: Option<std::sync::Arc<Prefill>>,
}

impl UpstreamRequest {
    /// The chat endpoint's request for `conv`.
    pub fn chat(conv: Conversation) -> Self {
        Self { conversation: conv, form: UpstreamForm::Chat, prompt_tokens: None, prefill: None }
    }

    /// `conv`, as a stage rendered it.
    pub fn rendered(conv: Conversation, r: Rendered) -> Self {
        Self { conversation: conv, form: UpstreamForm::Completion(r.completion), prompt_tokens: Some(r.prompt_tokens), prefill: r.prefill }
    }

    /// The endpoint the body goes to.
    pub fn endpoint(&self) -> Endpoint {
        match &self.form {
            UpstreamForm::Chat => Endpoint::Chat,
            UpstreamForm::Completion(Completion::Completions { .. }) => Endpoint::Completions,
            UpstreamForm::Completion(Completion::Llama { .. }) => Endpoint::LlamaCompletion,
        }
    }

    /// The body the upstream edge writes (always a stream, with usage).
    pub fn body(&self) -> serde_json::Value {
        match &self.form {
            UpstreamForm::Chat => crate::upstream::chat_request::request(self.conversation.clone()),
            UpstreamForm::Completion(c) => crate::upstream::completion_request::request(&self.conversation, c),
        }
    }

    /// The most output tokens the body asks for, when it says a count.
    pub fn output_limit(&self) -> Option<u64> {
        match &self.form {
            UpstreamForm::Chat => self.conversation.controls.max_output_tokens.as_ref().and_then(Limit::count),
            UpstreamForm::Completion(c) => crate::upstream::completion_request::output_limit(&self.conversation, c),
        }
    }

    /// The same request asking for at most `limit` output tokens, if it asks for more (a
    /// server that refuses a limit past its context says the most it takes).
    pub fn with_output_limit(self, limit: u64) -> Option<Self> {
        if self.output_limit().is_none_or(|n| n <= limit) {
            return None;
        }
        let mut again = self;
        let said_as = again.conversation.controls.max_output_tokens.as_ref().map_or(LimitName::MaxTokens, |l| l.said_as);
        again.conversation.controls.max_output_tokens = Some(Limit { tokens: limit.into(), said_as });
        Some(again)
    }
}

/// A stage of the request phase that computes on the conversation: it runs once per
/// request, before the upstream is called, and never sees a token. Nothing here awaits: the
/// request phase moves the conversation and the stages next to each other to a blocking
/// thread ([`CpuPool`]), so a stage may walk a long history or render a long prompt.
///
/// - [`on_request`](RequestStage::on_request) runs in pipeline order on the client's
///   conversation: it may edit it (stops, history repair) or refuse it with an error the
///   client gets as is (a 400 that names what is wrong); a refusal stops the request phase
///   and nothing goes upstream.
/// - [`on_upstream_request`](RequestStage::on_upstream_request) then runs in pipeline order,
///   when every `on_request` is done (awaited ones included), until one stage answers: that
///   stage writes what goes upstream from the finished conversation (`harmony-render`
///   renders the prompt and chooses the endpoint). When none does, the chat endpoint gets
///   the conversation. A retry re-sends the same upstream request: the request phase does
///   not run again.
pub trait RequestStage: Send {
    /// Edit the client's conversation, or refuse it.
    fn on_request(&mut self, _conv: &mut Conversation) -> Result<(), ApiError> {
        Ok(())
    }
    /// After every `on_request`: the prompt, if this stage renders it (`None`: it does not,
    /// the next stage does or the chat endpoint gets the conversation).
    fn on_upstream_request(&mut self, _conv: &Conversation) -> Result<Option<Rendered>, ApiError> {
        Ok(None)
    }
}

/// A stage of the request phase that waits on something (a store read, Redis included):
/// its [`on_request`](AsyncRequestStage::on_request) is awaited on the runtime's workers,
/// which drive other streams meanwhile, in pipeline order among the other stages' (the
/// conversation is back from the stages before it). What it computes must be small (one walk
/// of the conversation); it never writes what goes upstream.
pub trait AsyncRequestStage: Send {
    /// Edit the client's conversation, or refuse it, as [`RequestStage::on_request`].
    fn on_request<'a>(&'a mut self, conv: &'a mut Conversation) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// A request stage, by the kind of work it does: a stage implements only what it is, and
/// the request phase runs each where that work belongs.
pub enum PhaseStage {
    /// Computes ([`RequestStage`]): off the workers.
    Compute(Box<dyn RequestStage>),
    /// Waits ([`AsyncRequestStage`]): awaited on the workers.
    Wait(Box<dyn AsyncRequestStage>),
}

/// Runs a request phase: every stage's `on_request` in pipeline order, then
/// `on_upstream_request` until one answers, else the chat endpoint's request; the first
/// refusal ends it. `then` is what the caller makes of the finished request in the same job
/// (the server: the bytes of its body). The computing stages before a waiting one run as one
/// job of `cpu`, the conversation moved to it and back (never copied); the rest, the
/// `on_upstream_request`s and `then` are the last job. A phase with no waiting stage is one
/// job.
pub async fn request_phase<T: Send + 'static>(
    stages: Vec<PhaseStage>,
    mut conv: Conversation,
    cpu: &CpuPool,
    then: impl FnOnce(&UpstreamRequest) -> T + Send + 'static,
) -> Result<(UpstreamRequest, T), ApiError> {
    // The computing stages in order, and how many of them have had their `on_request`.
    let mut compute: Vec<Box<dyn RequestStage>> = Vec::new();
    let mut ran = 0;
    for stage in stages {
        match stage {
            PhaseStage::Compute(s) => compute.push(s),
            PhaseStage::Wait(mut s) => {
                if ran < compute.len() {
                    let job = move || {
                        let r = edit(&mut compute[ran..], &mut conv);
                        (compute, conv, r)
                    };
                    let r;
                    (compute, conv, r) = cpu.run(job).await;
                    r?;
                    ran = compute.len();
                }
                s.on_request(&mut conv).await?;
            }
        }
    }
    cpu.run(move || {
        let up = finish(&mut compute, ran, conv)?;
        let made = then(&up);
        Ok((up, made))
    })
    .await
}

/// The `on_request` of each of `stages`, in order, until one refuses.
fn edit(stages: &mut [Box<dyn RequestStage>], conv: &mut Conversation) -> Result<(), ApiError> {
    stages.iter_mut().try_for_each(|s| s.on_request(conv))
}

/// The rest of a request phase, on one thread: the `on_request` of `stages[ran..]`, then
/// every stage's `on_upstream_request` until one answers.
fn finish(stages: &mut [Box<dyn RequestStage>], ran: usize, mut conv: Conversation) -> Result<UpstreamRequest, ApiError> {
    edit(&mut stages[ran..], &mut conv)?;
    for s in stages.iter_mut() {
        if let Some(r) = s.on_upstream_request(&conv)? {
            return Ok(UpstreamRequest::rendered(conv, r));
        }
    }
    Ok(UpstreamRequest::chat(conv))
}

/// A stage of the response phase: a per-request state machine over the response's events.
/// Nothing here awaits: the chain runs inline in the response body. What the request phase
/// learnt reaches it through the [`RequestMeta`] it is made with (`prompt_tokens`).
///
/// The calls, in the order they come for one response:
/// - [`on_event`](Stage::on_event) runs for each event, inline in the response body. A stage
///   that holds state flushes what it held *before* pushing on a terminal event (`Finish`,
///   `Error`, `Abort`), so nothing is emitted after the response's end. A retry before any
///   client-visible byte rebuilds the response stages from their factories (fresh state,
///   the same meta).
/// - [`on_end`](Stage::on_end) runs once when the upstream is done (cleanly or not): flush.
/// - [`deadline`](Stage::deadline) / [`on_deadline`](Stage::on_deadline): a timer the body
///   polls (watchdog); `on_deadline` may end the response with `Abort`.
/// - [`stats`](Stage::stats) is read once, when the response body is dropped.
pub trait Stage: Send {
    /// Push zero or more events for one input event.
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>);
    /// The upstream is done: flush held state.
    fn on_end(&mut self, _out: &mut Vec<Event>) {}
    /// When this stage wants `on_deadline` called, if nothing else happens first.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn on_deadline(&mut self, _out: &mut Vec<Event>) {}
    /// Counters for the request's summary line and metrics, read once at the end.
    fn stats(&self, _stats: &mut Stats) {}
}

/// What happened in one request, summed over its stages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// When the first answer text or tool call reached the encoder (time to first token).
    pub first_output: Option<Instant>,
    pub final_chunks: u64,
    pub tool_chunks: u64,
    pub tool_calls: u64,
    pub fallback: u64,
    pub parser_errors: u64,
    pub watchdog_aborts: u64,
}

/// Seconds since the Unix epoch (0 if the clock says otherwise).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::completion_request::Prompt;
    use serde_json::json;

    fn chat(body: serde_json::Value) -> UpstreamRequest {
        UpstreamRequest::chat(crate::api::chat::decode::conversation(body))
    }

    fn rendered(completion: Completion, body: serde_json::Value) -> UpstreamRequest {
        let conv = crate::api::chat::decode::conversation(body);
        UpstreamRequest::rendered(conv, Rendered { completion, prompt_tokens: 3, prefill: None })
    }

    #[test]
    fn a_lower_output_limit_is_the_conversations_said_again_under_the_name_the_client_used() {
        let hi = json!([{"role": "user", "content": "Hi"}]);
        let again = chat(json!({"max_completion_tokens": 9000, "messages": hi})).with_output_limit(4000).expect("9000 is more than 4000");
        let body = again.body();
        assert_eq!((body["max_completion_tokens"].clone(), body.get("max_tokens")), (json!(4000), None));
        assert_eq!(again.endpoint(), Endpoint::Chat);
        assert!(chat(json!({"max_tokens": 3000, "messages": hi})).with_output_limit(4000).is_none(), "already within the server's");
        assert!(chat(json!({"messages": hi})).with_output_limit(4000).is_none(), "no limit asked: the server's own");
        assert!(chat(json!({"max_tokens": -1, "messages": hi})).with_output_limit(4000).is_none(), "not a count: as sent");
    }

    #[test]
    fn a_rendered_request_without_a_limit_is_lowered_from_the_whole_context_it_asked_for() {
        let hi = json!({"messages": [{"role": "user", "content": "Hi"}]});
        let tokens = rendered(Completion::Completions { prompt: Prompt::Tokens(vec![1, 2, 3]), grammar: None }, hi.clone());
        assert_eq!(tokens.body()["max_tokens"], crate::upstream::completion_request::GPT_OSS_CONTEXT);
        let again = tokens.with_output_limit(4000).expect("the whole context is more than 4000");
        assert_eq!(
            (again.body()["max_tokens"].clone(), again.body()["prompt"].clone(), again.endpoint()),
            (json!(4000), json!([1, 2, 3]), Endpoint::Completions)
        );
        let text = rendered(Completion::Completions { prompt: Prompt::Text("p".into()), grammar: None }, hi.clone());
        assert!(text.with_output_limit(4000).is_none(), "a text prompt asks for no limit");
        let llama = rendered(Completion::Llama { prompt: vec![1], grammar: None }, hi);
        assert!(llama.with_output_limit(4000).is_none(), "llama.cpp's n_predict is never refused");
    }

    /// Appends its letter to the instructions, on the thread it notes.
    struct Edit(&'static str, std::sync::Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>);
    impl RequestStage for Edit {
        fn on_request(&mut self, conv: &mut Conversation) -> Result<(), ApiError> {
            self.1.lock().unwrap().push(std::thread::current().id());
            conv.instructions.get_or_insert_with(String::new).push_str(self.0);
            Ok(())
        }
    }

    /// Appends its letter after a wait, or refuses.
    struct Wait(Option<&'static str>);
    impl AsyncRequestStage for Wait {
        fn on_request<'a>(&'a mut self, conv: &'a mut Conversation) -> BoxFuture<'a, Result<(), ApiError>> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                match self.0 {
                    Some(letter) => {
                        conv.instructions.get_or_insert_with(String::new).push_str(letter);
                        Ok(())
                    }
                    None => Err(ApiError::invalid("messages", "refused")),
                }
            })
        }
    }

    #[test]
    fn the_request_phase_runs_every_stage_in_order_computing_off_the_thread_that_awaits() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stages = vec![
            PhaseStage::Compute(Box::new(Edit("a", threads.clone()))),
            PhaseStage::Compute(Box::new(Edit("b", threads.clone()))),
            PhaseStage::Wait(Box::new(Wait(Some("c")))),
            PhaseStage::Compute(Box::new(Edit("d", threads.clone()))),
        ];
        let pool = CpuPool::new(std::sync::Arc::new(tokio::sync::Semaphore::new(1)));
        let (awaited_on, up) = rt.block_on(async {
            let here = std::thread::current().id();
            let then_on = |_: &UpstreamRequest| std::thread::current().id();
            (here, request_phase(stages, Conversation::default(), &pool, then_on).await)
        });
        let (up, then_on) = up.expect("no stage refuses");
        assert_ne!(then_on, awaited_on, "what the caller makes of it is made in the last job");
        assert_eq!(up.conversation.instructions.as_deref(), Some("abcd"), "in pipeline order, each seeing the one before");
        assert_eq!(up.endpoint(), Endpoint::Chat, "no stage rendered");
        let threads = threads.lock().unwrap();
        assert_eq!(threads.len(), 3);
        assert!(threads.iter().all(|t| *t != awaited_on), "the computing stages ran on the pool");
    }

    #[test]
    fn a_waiting_stage_that_refuses_ends_the_request_phase() {
        let threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stages = vec![PhaseStage::Wait(Box::new(Wait(None))), PhaseStage::Compute(Box::new(Edit("never", threads.clone())))];
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(request_phase(stages, Conversation::default(), &CpuPool::inline(), |_| ())).expect_err("refused");
        assert_eq!(e.status, 400);
        assert!(threads.lock().unwrap().is_empty(), "nothing after the refusal ran");
    }
}
