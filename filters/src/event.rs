//! The typed events that flow through a pipeline.
//!
//! The upstream decoder produces `Upstream*`, `Finish`, `Usage` and `Error`;
//! `harmony-parse` turns upstream text into `Text` and `ToolCall*`;
//! `tool-bridge` turns those into what the client sees (`Content`, `Reasoning`,
//! `ClientToolCall`, `ClientToolArgs`); the client API's encoder (`api::Encoder`) turns them
//! into the client's bytes.

/// Which Harmony channel a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The answer (`final`, or text with no channel at all).
    Final,
    /// Chain of thought (`analysis`).
    Analysis,
    /// A `commentary` message without a recipient: a preamble such as "I'll check the weather."
    Preamble,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn parse(s: &str) -> Self {
        match s {
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }
}

/// The field reasoning is streamed in: the same fields the conversation reads it from.
pub use crate::conversation::ReasoningField;

/// An OpenAI-shaped error (`{"error":{"message","type","param","code"}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status this error maps to when it can still be sent as one.
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    /// The request field the error is about (`input[2].type`), when it is about one.
    pub param: Option<String>,
    /// The prompt did not fit in the model's context (`code` is `context_length_exceeded`):
    /// what the server said of it, for the APIs that word it with numbers.
    pub overflow: Option<ContextOverflow>,
}

/// A prompt that does not fit in the model's context: what the server said of it, as far as
/// it said (see `upstream::overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContextOverflow {
    /// The prompt's length in tokens.
    pub prompt_tokens: Option<u64>,
    /// The server's context size in tokens.
    pub context_tokens: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code, param: None, overflow: None }
    }
    /// The prompt does not fit in the model's context: a 400 `context_length_exceeded`, worded
    /// as OpenAI words it (`param`: the request field holding the conversation). Messages
    /// words it as Anthropic does, from the numbers.
    pub fn context_overflow(o: ContextOverflow, param: &str) -> Self {
        let message = match (o.context_tokens, o.prompt_tokens) {
            (Some(ctx), Some(n)) => format!(
                "This model's maximum context length is {ctx} tokens. However, your messages resulted in {n} tokens. Please reduce the length of the messages."
            ),
            (Some(ctx), None) => {
                format!("This model's maximum context length is {ctx} tokens, and your messages exceed it. Please reduce the length of the messages.")
            }
            (None, Some(n)) => {
                format!("Your messages resulted in {n} tokens, more than this model's context length. Please reduce the length of the messages.")
            }
            (None, None) => "Your messages exceed this model's context length. Please reduce the length of the messages.".to_owned(),
        };
        Self { param: Some(param.to_owned()), overflow: Some(o), ..Self::new(400, "invalid_request_error", Some("context_length_exceeded"), message) }
    }
    /// A 400 about request field `param`; the message names it too.
    pub fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let param = param.into();
        let message = if param.is_empty() { message.to_string() } else { format!("{param}: {message}") };
        Self { param: (!param.is_empty()).then_some(param), ..Self::new(400, "invalid_request_error", Some("invalid_request"), message) }
    }
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(502, "upstream_error", Some("upstream_error"), message)
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// A tool-call fragment an upstream already parsed (`delta.tool_calls[i]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamToolCall {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    /// The id the client will see, when a stage before `tool-bridge` chose it
    /// (`reasoning-memory` keys its store by it); else the bridge makes one.
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text from the upstream's `content`, Harmony markup possibly included.
    Upstream(String),
    /// Reasoning the upstream already separated (`reasoning_content` / `reasoning`).
    UpstreamReasoning(String),
    /// A tool-call fragment the upstream already parsed.
    UpstreamToolCall(UpstreamToolCall),
    /// Token ids of raw model output (llama.cpp's `/completion` with `return_tokens`), with
    /// the text the upstream decoded them to: llama.cpp holds back a token that ends inside a
    /// UTF-8 character and then sends the whole text with only the last id, so the ids are
    /// the authority on special tokens and headers, the text on content.
    UpstreamTokens { ids: Vec<u32>, text: String },

    /// Parsed text of one channel.
    Text(Channel, String),
    /// A Harmony message addressed to a tool began; `name` is the raw recipient. `id` is the
    /// id the client will see, when a stage before `tool-bridge` chose it (`reasoning-memory`);
    /// else the bridge makes one.
    ToolCallStart { name: String, id: Option<String> },
    /// More argument text of the open tool call.
    ToolCallArgs(String),
    /// The open tool call is complete.
    ToolCallEnd,
    /// Raw text `harmony-parse` could not frame (a header that never reached `<|message|>`).
    /// Never shown as is: `fallback` may recover an answer from it.
    Unparsed(String),

    /// Client-visible answer text.
    Content(String),
    /// Client-visible reasoning.
    Reasoning(ReasoningField, String),
    /// Client-visible start of a tool call.
    ClientToolCall { index: u32, id: String, name: String },
    /// Client-visible argument text of tool call `index`.
    ClientToolArgs { index: u32, args: String },

    /// The upstream said why it stopped.
    Finish(FinishReason),
    /// What the answer cost in tokens (the upstream edge reads the server's counts).
    Usage(Usage),
    /// Something failed; the stream ends with this error.
    Error(ApiError),
    /// A stage decided the response is over (watchdog): stop reading the upstream.
    Abort,
}

/// What one answer cost in tokens, as the upstream counted it (`harmony-render` puts in its
/// own count of the prompt it rendered). Each encoder says it in its API's words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// As the server said it, if it did (else [`Usage::total`] is the sum).
    pub total_tokens: Option<u64>,
    /// Prompt tokens the server had cached, if it said.
    pub cached_tokens: Option<u64>,
    /// Completion tokens spent reasoning, if the server said.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// The total the server said, else prompt and completion together.
    pub fn total(&self) -> u64 {
        self.total_tokens.unwrap_or(self.prompt_tokens + self.completion_tokens)
    }
}
