//! The conversation: the one typed request between the client edges and the upstream edges.
//!
//! ```text
//! client edges (api::{chat, responses, messages}::decode)
//!     ─► Conversation ─► request stages edit it (RequestStage::on_request)
//!     ─► upstream edges: upstream::chat_request::request (a chat endpoint's body)
//!                        or harmony-render's prompt (a completion endpoint's)
//! ```
//! Each fact is said once: a turn's reasoning is [`Message::reasoning`] whatever field the
//! client said it in, the request's controls are [`Controls`], a tool is a [`Tool`]. No stage
//! reads a wire format.
//!
//! What the proxy does not model rides in the `extra` maps (of the request, a message, a
//! part, a call, a tool): a server's own options (`top_k`, `chat_template_kwargs`,
//! `grammar`), fields a client adds to a message. A chat upstream gets them as the client
//! sent them; the proxy must not drop what it does not know. An upstream that renders the
//! prompt itself reads only the typed fields.
//!
//! Invariant: for every chat request the chat client edge accepts, the chat upstream edge
//! writes back the same JSON, but for the fields a stage changed and what every upstream
//! request says (`stream: true`, usage asked for). A property test holds the two to it.

use serde_json::{Map, Number, Value};

/// A client's request, whatever API it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// The model the client asked for (empty when it named none).
    pub model: String,
    /// What the client tells the model apart from the turns, said before every message:
    /// Responses' `instructions` and its `system`/`developer` items, Messages' `system`,
    /// joined by blank lines. A chat client's system and developer messages stay messages,
    /// where it put them (the chat edges round-trip). The upstream edges say it first: a
    /// leading `system` message to a chat server, the developer instructions in a prompt
    /// `harmony-render` writes.
    pub instructions: Option<String>,
    pub messages: Vec<Message>,
    /// The tools the model may call; `None` when the client declared none (not even `[]`).
    pub tools: Option<Vec<Tool>>,
    pub controls: Controls,
    /// Request fields the proxy does not model, as the client sent them.
    pub extra: Map<String, Value>,
}

/// What the request asks of the generation, besides the conversation itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    /// The client wants SSE (upstreams are always streamed; the encoder answers as asked).
    pub stream: bool,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    /// The client's word for the effort (`low`, `medium`, `high`, or a server's own, such
    /// as `minimal`): a chat upstream gets it as said; the renderer reads the three it knows.
    pub reasoning_effort: Option<String>,
    /// The most tokens the answer may have.
    pub max_output_tokens: Option<Limit>,
    /// Text the generation stops at.
    pub stop: Option<Stop>,
    pub response_format: Option<ResponseFormat>,
    pub sampling: Sampling,
    /// How many choices (only one can be rendered).
    pub n: Option<Number>,
    pub logprobs: Option<bool>,
}

/// The answer's token limit, and the name the client gave it (chat has two).
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// Any JSON number: clients send `-1` for "no limit" and `4096.0`.
    pub tokens: Number,
    pub said_as: LimitName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitName {
    MaxTokens,
    MaxCompletionTokens,
}

impl LimitName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

impl Limit {
    /// A `max_tokens` limit of `n`.
    pub fn tokens(n: u64) -> Self {
        Self { tokens: n.into(), said_as: LimitName::MaxTokens }
    }
    /// The limit when it is a count (not `-1` or `4096.0`).
    pub fn count(&self) -> Option<u64> {
        self.tokens.as_u64()
    }
}

/// Stop sequences: one, or a list (kept as the client said it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// Sampling options, as the client's numbers (a chat upstream gets them as sent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<Number>,
    pub top_p: Option<Number>,
    pub presence_penalty: Option<Number>,
    pub frequency_penalty: Option<Number>,
    pub seed: Option<Number>,
    pub logit_bias: Option<Value>,
}

/// Which tool the model must call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// This function.
    Function(String),
    /// A choice of another shape (a server's own), passed on as sent; the renderer reads it as `auto`.
    Other(Value),
}

/// The answer's format.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema(JsonSchemaFormat),
    /// Another `type`: a chat upstream gets it as sent; the renderer refuses it.
    Other(Value),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub strict: Option<bool>,
    /// Other fields of the format, as sent.
    pub extra: Map<String, Value>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub enum Tool {
    Function(FunctionTool),
    /// A tool of another kind (a server's own): passed on as sent; the renderer refuses it.
    Other(Value),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON Schema.
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
    /// Other fields of the function, as sent.
    pub extra: Map<String, Value>,
}

impl FunctionTool {
    pub fn new(name: impl Into<String>, description: Option<String>, parameters: Value) -> Self {
        Self { name: name.into(), description, parameters: Some(parameters), ..Self::default() }
    }
}

/// Who says a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    /// A tool's result.
    Tool,
    /// A role no API defines, kept as sent (a chat upstream may know it; the renderer refuses it).
    Other(String),
}

impl Role {
    pub fn parse(s: &str) -> Self {
        match s {
            "system" => Self::System,
            "developer" => Self::Developer,
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "tool" => Self::Tool,
            other => Self::Other(other.to_owned()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
            Self::Other(s) => s,
        }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Content,
    /// The reasoning of an assistant turn (its analysis).
    pub reasoning: Option<Reasoning>,
    /// The calls of an assistant turn; `None` when it made none (the field was absent).
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a tool result answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// Other fields of the message, as sent.
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message of `role` saying `text`.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self { role, content: Content::Text(text.into()), reasoning: None, tool_calls: None, tool_call_id: None, name: None, extra: Map::new() }
    }
    /// An assistant turn of calls (no text).
    pub fn calls(calls: Vec<ToolCall>) -> Self {
        Self { content: Content::Null, tool_calls: Some(calls), ..Self::text(Role::Assistant, "") }
    }
    /// The result of call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self { tool_call_id: Some(call_id.into()), ..Self::text(Role::Tool, text) }
    }
    /// Whether this is an assistant turn that called tools.
    pub fn is_tool_turn(&self) -> bool {
        self.role == Role::Assistant && self.tool_calls.as_ref().is_some_and(|c| !c.is_empty())
    }
    /// The reasoning's text when there is some (not only spaces).
    pub fn reasoning_text(&self) -> Option<&str> {
        self.reasoning.as_ref().map(|r| r.text.as_str()).filter(|r| !r.trim().is_empty())
    }
}

/// A message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// No `content` at all.
    Absent,
    /// `content: null` (an assistant turn of calls).
    Null,
    Text(String),
    Parts(Vec<Part>),
}

impl Content {
    /// The text of the content: a string, or its parts' texts joined.
    pub fn text(&self) -> String {
        match self {
            Self::Absent | Self::Null => String::new(),
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// `text`, `image_url`, …
    pub kind: String,
    pub text: Option<String>,
    /// Other fields of the part (an image's URL), as sent.
    pub extra: Map<String, Value>,
}

/// A turn's reasoning, and the field the client said it in (a chat upstream gets it there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reasoning {
    pub text: String,
    pub field: ReasoningField,
}

/// The fields clients and servers carry reasoning in, in the order they are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningField {
    /// llama.cpp, LM Studio, most agents.
    ReasoningContent,
    /// vLLM, Ollama.
    Reasoning,
    /// Some agents' own.
    Thinking,
}

impl ReasoningField {
    pub const ALL: [ReasoningField; 3] = [Self::ReasoningContent, Self::Reasoning, Self::Thinking];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReasoningContent => "reasoning_content",
            Self::Reasoning => "reasoning",
            Self::Thinking => "thinking",
        }
    }
}

/// A call an assistant turn made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: Option<String>,
    /// The arguments: a JSON string in the OpenAI shape; some agents send the object itself
    /// (`history-clean` makes it a string).
    pub arguments: Option<Value>,
    /// Other fields of the call (`type`), as sent.
    pub extra: Map<String, Value>,
    /// Other fields of its `function`, as sent.
    pub function_extra: Map<String, Value>,
}

impl ToolCall {
    /// A function call with JSON `arguments`.
    pub fn function(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        let mut extra = Map::new();
        extra.insert("type".into(), "function".into());
        Self { id: Some(id.into()), name: Some(name.into()), arguments: Some(Value::String(arguments.into())), extra, function_extra: Map::new() }
    }
}
