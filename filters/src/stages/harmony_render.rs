//! `harmony-render` (request phase): the proxy renders the chat request into a Harmony prompt
//! with the official `openai-harmony` renderer and calls the upstream's raw completion
//! endpoint, so no server-side chat template or output parser stands between the model and
//! the proxy (they drop tool calls, 500 on agent histories, turn preambles into answers).
//!
//! ```text
//! chat request ─► conversation (system, developer, user, assistant: analysis / preamble /
//!                 final / calls, tool results) ─► token ids (each message's tokens cached)
//!              ─► POST {url}/completions {prompt: ids}            (endpoint = "completions")
//!                 POST {url without /v1}/completion {prompt: ids,  (endpoint = "llama")
//!                      return_tokens: true}
//! ```
//! Every field a client sends is mapped or refused with a 400 that names it: a message the
//! renderer cannot express is never silently turned into a different prompt. The answer is
//! read by `harmony-parse` (text with special tokens, or token ids), which must follow.
//!
//! Cost: rendering tokenizes the conversation, and an agent resends a long one every turn.
//! Each message's tokens are cached by its content (bounded in bytes), so only the newest
//! turn is tokenized; the system and developer messages (tools) are cached as one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use openai_harmony::chat::{
    Author, Conversation as HarmonyConversation, DeveloperContent, Message, ReasoningEffort, Role as HarmonyRole, SystemContent, ToolDescription,
};
use openai_harmony::HarmonyEncoding;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::{Content, Conversation, ResponseFormat, Role, Tool, ToolChoice};
use crate::event::{ApiError, Event};
use crate::stage::{PhaseStage, Prefill, Rendered, RequestMeta, RequestStage, RequestStageFactory, Stage, StageFactory};
use crate::upstream::completion_request::{Completion, Prompt};

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    Low,
    #[default]
    Medium,
    High,
}

impl Effort {
    fn harmony(self) -> ReasoningEffort {
        match self {
            Self::Low => ReasoningEffort::Low,
            Self::Medium => ReasoningEffort::Medium,
            Self::High => ReasoningEffort::High,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RenderEndpoint {
    /// `POST {url}/completions`, the OpenAI legacy API (llama.cpp, vLLM, LM Studio).
    #[default]
    Completions,
    /// llama.cpp's native `POST /completion` with token ids both ways.
    Llama,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HarmonyRenderConfig {
    /// Reasoning effort when the request does not say (`reasoning_effort`).
    #[serde(default)]
    pub reasoning_effort: Effort,
    /// Which raw completion endpoint the upstream is called on.
    #[serde(default)]
    pub endpoint: RenderEndpoint,
    /// How the prompt is sent on `/v1/completions`: `tokens` (token ids: llama.cpp, vLLM,
    /// LM Studio) or `text` (special tokens written as text, which the server's tokenizer
    /// reads back: mlx-lm and servers that take only a string).
    #[serde(default)]
    pub prompt: PromptForm,
    /// `tool_choice: "required"` on `/v1/completions` as vLLM's structured outputs (a
    /// `structured_outputs.grammar`): the model may reason first, then only a call to a
    /// declared function. Off (the default, for every server): the call's header is written
    /// for the model, which then calls but cannot reason first.
    #[serde(default)]
    pub structured_outputs: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PromptForm {
    #[default]
    Tokens,
    Text,
}

/// gpt-oss's context, in tokens: the output limit asked for when the client sets none.
pub use crate::upstream::completion_request::GPT_OSS_CONTEXT;

/// Most bytes of cached message tokens (with their keys); past it the cache starts afresh.
const CACHE_BYTES: usize = 64 << 20;

/// Tokens by their message's JSON, and the bytes they hold.
type CacheMap = (HashMap<String, Arc<[u32]>>, usize);

/// Rendered tokens by message content, shared by every request of the process.
#[derive(Default)]
pub struct RenderCache {
    inner: Mutex<CacheMap>,
}

impl RenderCache {
    fn get_or_render(&self, key: String, render: impl FnOnce() -> Result<Vec<u32>, String>) -> Result<Arc<[u32]>, String> {
        if let Some(t) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.get(&key) {
            return Ok(t.clone());
        }
        let tokens: Arc<[u32]> = render()?.into();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let cost = key.len() + tokens.len() * 4;
        if g.1 + cost > CACHE_BYTES {
            g.0.clear();
            g.1 = 0;
        }
        g.1 += cost;
        g.0.insert(key, tokens.clone());
        Ok(tokens)
    }
}

fn process_cache() -> Arc<RenderCache> {
    static CACHE: OnceLock<Arc<RenderCache>> = OnceLock::new();
    CACHE.get_or_init(Default::default).clone()
}

pub struct HarmonyRenderFactory {
    cfg: HarmonyRenderConfig,
    enc: HarmonyEncoding,
    cache: Arc<RenderCache>,
}

impl HarmonyRenderFactory {
    pub fn new(cfg: &HarmonyRenderConfig, enc: HarmonyEncoding) -> Self {
        Self { cfg: cfg.clone(), enc, cache: process_cache() }
    }
}

impl RequestStageFactory for HarmonyRenderFactory {
    fn new_request_stage(&self, _req: &RequestMeta) -> PhaseStage {
        PhaseStage::Compute(Box::new(HarmonyRender { cfg: self.cfg.clone(), enc: self.enc.clone(), cache: self.cache.clone() }))
    }
}

/// The response side of `harmony-render`: the client's usage counts the prompt the proxy
/// rendered, exactly (the request phase put its length in the meta).
/// And the start of the answer the prompt ends with (a forced call's header), said first, as
/// the endpoint says model output: token ids from llama.cpp's `/completion`, text otherwise.
pub struct PromptUsageFactory {
    endpoint: RenderEndpoint,
}

impl StageFactory for PromptUsageFactory {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(PromptUsage { prompt_tokens: req.prompt_tokens.unwrap_or(0), prefill: req.prefill.clone(), endpoint: self.endpoint })
    }
}

pub struct PromptUsage {
    prompt_tokens: u64,
    /// Said before the first event, then `None`.
    prefill: Option<Arc<Prefill>>,
    endpoint: RenderEndpoint,
}

impl Stage for PromptUsage {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        if let Some(p) = self.prefill.take() {
            out.push(match self.endpoint {
                RenderEndpoint::Llama => Event::UpstreamTokens { ids: p.ids.clone(), text: p.text.clone() },
                RenderEndpoint::Completions => Event::Upstream(p.text.clone()),
            });
        }
        match ev {
            Event::Usage(mut u) if self.prompt_tokens > 0 => {
                u.prompt_tokens = self.prompt_tokens;
                u.total_tokens = Some(self.prompt_tokens + u.completion_tokens);
                out.push(Event::Usage(u));
            }
            other => out.push(other),
        }
    }
}

impl crate::stage::StageConfig for HarmonyRenderConfig {
    /// The raw completion it asks for is Harmony: a parser must read it.
    fn place() -> crate::stage::config::Place {
        use crate::stage::config::{Order, Other::*, Place};
        Place {
            rules: &[Order {
                after: &[],
                before: &[Required("harmony-parse")],
                message: "`harmony-render` needs a `harmony-parse` after it: the raw completion it asks for is Harmony text or token ids",
            }],
            ..Place::ONCE
        }
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.push_request(HarmonyRenderFactory::new(self, b.enc.clone()));
        b.push(PromptUsageFactory { endpoint: self.endpoint });
    }
}

pub struct HarmonyRender {
    cfg: HarmonyRenderConfig,
    enc: HarmonyEncoding,
    cache: Arc<RenderCache>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(400, "invalid_request_error", Some("unsupported_by_harmony_render"), message);
    e.message = format!("{param}: {}", e.message);
    e
}

/// The text of a message's content: a string, or text parts (an image part is refused).
fn text_of(content: &Content, at: &str) -> Result<String, ApiError> {
    match content {
        Content::Absent | Content::Null => Ok(String::new()),
        Content::Text(s) => Ok(s.clone()),
        Content::Parts(parts) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), p.text.as_deref()) {
                    ("text", Some(t)) => s.push_str(t),
                    (t @ ("image_url" | "input_image" | "image" | "input_audio" | "file"), _) => {
                        return Err(bad(&format!("{at}.content[{j}]"), format!("gpt-oss reads text only; a `{t}` part cannot be rendered")));
                    }
                    (other, _) => return Err(bad(&format!("{at}.content[{j}]"), format!("unsupported content part {:?}", Some(other)))),
                }
            }
            Ok(s)
        }
    }
}

/// Today's date as `YYYY-MM-DD` (UTC), as the official renderer puts it in the system message.
fn today() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The request's conversation as Harmony messages: (system + developer, the rest).
pub fn conversation(conv: &Conversation, default_effort: Effort, date: &str) -> Result<(Vec<Message>, Vec<Message>), ApiError> {
    let c = &conv.controls;
    if c.n.as_ref().and_then(|n| n.as_u64()).is_some_and(|n| n > 1) {
        return Err(bad("n", "only one choice can be generated (n = 1)"));
    }
    if conv.extra.contains_key("functions") || conv.extra.contains_key("function_call") {
        return Err(bad("functions", "the legacy `functions` API is not supported; send `tools`"));
    }
    if c.logprobs == Some(true) {
        return Err(bad("logprobs", "log probabilities are not available through harmony-render"));
    }
    let effort = match c.reasoning_effort.as_deref() {
        None => default_effort,
        Some("low" | "minimal") => Effort::Low,
        Some("medium") => Effort::Medium,
        Some("high") => Effort::High,
        Some(other) => return Err(bad("reasoning_effort", format!("{other:?} is not low, medium or high"))),
    };

    // The conversation's instructions, then what chat's system and developer messages say.
    let mut instructions: Vec<String> = conv.instructions.iter().filter(|i| !i.trim().is_empty()).cloned().collect();
    let mut rest = Vec::new();
    // Tool call id → function name, for the tool results that follow.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in conv.messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match &m.role {
            Role::System | Role::Developer => {
                let t = text_of(&m.content, &at)?;
                if !t.trim().is_empty() {
                    instructions.push(t);
                }
            }
            Role::User => rest.push(Message::from_role_and_content(HarmonyRole::User, text_of(&m.content, &at)?)),
            Role::Assistant => {
                if let Some(r) = m.reasoning_text() {
                    rest.push(Message::from_role_and_content(HarmonyRole::Assistant, r).with_channel("analysis"));
                }
                let calls = m.tool_calls.as_ref().filter(|c| !c.is_empty());
                let content = text_of(&m.content, &at)?;
                if !content.trim().is_empty() {
                    // Beside calls, text is a preamble: commentary the model said before calling.
                    let channel = if calls.is_some() { "commentary" } else { "final" };
                    rest.push(Message::from_role_and_content(HarmonyRole::Assistant, content).with_channel(channel));
                }
                for (j, c) in calls.into_iter().flatten().enumerate() {
                    let Some(name) = c.name.as_deref().filter(|n| !n.is_empty()) else {
                        return Err(bad(&format!("{at}.tool_calls[{j}]"), "a tool call needs function.name"));
                    };
                    let args = match &c.arguments {
                        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                        Some(Value::String(_)) | None | Some(Value::Null) => "{}".to_owned(),
                        Some(other) => other.to_string(),
                    };
                    if let Some(id) = &c.id {
                        call_names.insert(id.clone(), name.to_owned());
                    }
                    rest.push(
                        Message::from_role_and_content(HarmonyRole::Assistant, args)
                            .with_channel("commentary")
                            .with_recipient(format!("functions.{name}"))
                            .with_content_type("<|constrain|>json"),
                    );
                }
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let Some(name) = call_names.get(id).cloned().or_else(|| m.name.clone()) else {
                    return Err(bad(&at, format!("tool result for call {id:?}, which no earlier assistant message made")));
                };
                let content = text_of(&m.content, &at)?;
                rest.push(
                    Message::from_author_and_content(Author::new(HarmonyRole::Tool, format!("functions.{name}")), content)
                        .with_channel("commentary")
                        .with_recipient("assistant"),
                );
            }
            Role::Other(other) => return Err(bad(&format!("{at}.role"), format!("{other:?} cannot be rendered (system, developer, user, assistant, tool)"))),
        }
    }

    // Harmony's rule: the analysis of turns before the last final answer is dropped.
    let last_assistant_final = rest.iter().rev().find(|m| m.author.role == HarmonyRole::Assistant).is_some_and(|m| m.channel.as_deref() == Some("final"));
    if last_assistant_final {
        if let Some(last_final) = rest.iter().rposition(|m| m.author.role == HarmonyRole::Assistant && m.channel.as_deref() == Some("final")) {
            let mut i = 0;
            rest.retain(|m| {
                let keep = !(i < last_final && m.channel.as_deref() == Some("analysis"));
                i += 1;
                keep
            });
        }
    }

    let mut developer = DeveloperContent::new();
    let tool_choice_none = matches!(c.tool_choice, Some(ToolChoice::None));
    if let Some(tools) = conv.tools.as_ref().filter(|t| !t.is_empty() && !tool_choice_none) {
        let mut descs = Vec::new();
        for (j, t) in tools.iter().enumerate() {
            let (name, desc, parameters) = match t {
                Tool::Function(f) => (Some(f.name.as_str()), f.description.as_deref(), f.parameters.as_ref()),
                // A function tool of another shape is read as it stands.
                Tool::Other(v) if v.get("type").and_then(Value::as_str).unwrap_or("function") == "function" => {
                    let f = &v["function"];
                    (f.get("name").and_then(Value::as_str), f.get("description").and_then(Value::as_str), f.get("parameters"))
                }
                Tool::Other(_) => return Err(bad(&format!("tools[{j}].type"), "only function tools can be rendered")),
            };
            let Some(name) = name else {
                return Err(bad(&format!("tools[{j}].function.name"), "a tool needs a name"));
            };
            let desc = desc.unwrap_or("");
            // The official renderer reshapes tool text into TypeScript and tokenizes it as it
            // is: a word in it is bounded, so that rendering stays linear (crate::tokens).
            let params = parameters.map(crate::tokens::longest_piece_in).unwrap_or(0);
            for (what, n) in [
                ("function.name", crate::tokens::longest_piece(name)),
                ("function.description", crate::tokens::longest_piece(desc)),
                ("function.parameters", params),
            ] {
                if n > crate::tokens::MAX_TOOL_PIECE {
                    return Err(bad(
                        &format!("tools[{j}].{what}"),
                        format!("holds a word of {n} bytes; at most {} can be rendered", crate::tokens::MAX_TOOL_PIECE),
                    ));
                }
            }
            descs.push(ToolDescription::new(name, desc, parameters.cloned()));
        }
        developer = developer.with_function_tools(descs);
    }
    match &c.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => instructions.push("# Response Formats\n\nRespond with a single JSON object.".to_owned()),
        Some(ResponseFormat::JsonSchema(js)) => {
            let name = js.name.as_deref().unwrap_or("response");
            let mut section = format!("# Response Formats\n\n## {name}\n\n");
            if let Some(d) = &js.description {
                section.push_str(&format!("// {d}\n"));
            }
            match &js.schema {
                Some(schema) => section.push_str(&schema.to_string()),
                None => section.push_str("{}"),
            }
            instructions.push(section);
        }
        Some(ResponseFormat::Other(v)) => {
            let other = v.get("type").and_then(Value::as_str);
            return Err(bad("response_format.type", format!("{other:?} is not text, json_object or json_schema")));
        }
    }
    if !instructions.is_empty() {
        developer = developer.with_instructions(instructions.join("\n\n"));
    }

    let system = SystemContent::new().with_reasoning_effort(effort.harmony()).with_conversation_start_date(date);
    let mut head = vec![Message::from_role_and_content(HarmonyRole::System, system)];
    if developer.instructions.is_some() || developer.tools.is_some() {
        head.push(Message::from_role_and_content(HarmonyRole::Developer, developer));
    }
    Ok((head, rest))
}

/// How many tokens the prompt of a chat request is, rendered as this stage renders it (the
/// request's `reasoning_effort`, else medium; today's date). For `count_tokens`.
pub fn prompt_tokens(enc: &HarmonyEncoding, conv: &Conversation) -> Result<usize, ApiError> {
    Ok(render_request(enc, &process_cache(), conv, Effort::default(), &today())?.len())
}

/// The prompt a chat request renders to, as token ids (what the stage sends; public for the
/// benchmark and tests). `date` is the conversation's date (`YYYY-MM-DD`).
pub fn render_request(enc: &HarmonyEncoding, cache: &RenderCache, conv: &Conversation, default_effort: Effort, date: &str) -> Result<Vec<u32>, ApiError> {
    let (head, rest) = conversation(conv, default_effort, date)?;
    render_messages(enc, cache, &head, &rest)
}

/// The prompt's token ids: head and each message from the cache when seen before.
fn render_messages(enc: &HarmonyEncoding, cache: &RenderCache, head: &[Message], rest: &[Message]) -> Result<Vec<u32>, ApiError> {
    let r = Renderer { enc, cache };
    r.render(head, rest)
}

struct Renderer<'a> {
    enc: &'a HarmonyEncoding,
    cache: &'a RenderCache,
}

impl Renderer<'_> {
    fn render(&self, head: &[Message], rest: &[Message]) -> Result<Vec<u32>, ApiError> {
        let failed = |e: String| ApiError::new(400, "invalid_request_error", Some("unsupported_by_harmony_render"), format!("messages: cannot render: {e}"));
        crate::tokens::check_headers(head).and_then(|()| crate::tokens::check_headers(rest)).map_err(failed)?;
        let mut tokens = Vec::new();
        let key = serde_json::to_string(head).unwrap_or_default();
        let head_tokens = self.cache.get_or_render(key, || {
            // As a conversation: the system message says the tools' channel when there are tools.
            let conv = HarmonyConversation::from_messages(head.to_vec());
            crate::tokens::render_linear(self.enc, &conv.messages, |msgs| {
                let mut t = Vec::new();
                self.enc.render_conversation_into(msgs, &mut t, None).map_err(|e| e.to_string())?;
                Ok(t)
            })
        });
        tokens.extend_from_slice(&head_tokens.map_err(failed)?);
        for m in rest {
            let key = serde_json::to_string(m).unwrap_or_default();
            let render = || crate::tokens::render_linear(self.enc, std::slice::from_ref(m), |msgs| self.enc.render(&msgs[0], None).map_err(|e| e.to_string()));
            let t = self.cache.get_or_render(key, render).map_err(failed)?;
            tokens.extend_from_slice(&t);
        }
        // The next turn is the assistant's.
        let start = self.enc.tokenizer().encode_with_special_tokens("<|start|>assistant");
        tokens.extend(start);
        Ok(tokens)
    }
}

/// The call `tool_choice` forces, written as the start of the answer: a named function's
/// whole header (the model writes its arguments), or for `required` the header up to the
/// function's name (the model names one of the declared functions). The model then cannot
/// answer without calling; with `required` it also does not reason first (a prefill cannot
/// leave it the choice: a grammar could, where the endpoint takes one). `auto`, `none`
/// (the tools are left out of the prompt) and no tools: nothing.
fn forced_call(enc: &HarmonyEncoding, conv: &Conversation) -> Result<Option<Prefill>, ApiError> {
    let functions: Vec<&str> = conv.tools.iter().flatten().filter_map(|t| if let Tool::Function(f) = t { Some(f.name.as_str()) } else { None }).collect();
    // The name is the client's text: ordinary tokens, never markup (as the renderer writes it).
    let tok = enc.tokenizer();
    let (ids, text) = match &conv.controls.tool_choice {
        Some(ToolChoice::Function(name)) => {
            if !functions.contains(&name.as_str()) {
                return Err(ApiError::invalid("tool_choice", format!("names {name:?}, which is not one of the request's function tools")));
            }
            let mut ids = tok.encode_with_special_tokens("<|channel|>");
            ids.extend(tok.encode_ordinary(&format!("commentary to=functions.{name} ")));
            ids.extend(tok.encode_with_special_tokens("<|constrain|>json<|message|>"));
            (ids, format!("<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"))
        }
        Some(ToolChoice::Required) if !functions.is_empty() => {
            let header = "<|channel|>commentary to=functions.";
            (tok.encode_with_special_tokens(header), header.to_owned())
        }
        Some(ToolChoice::Required) => return Err(ApiError::invalid("tool_choice", "is \"required\", but the request declares no function tools")),
        _ => return Ok(None),
    };
    Ok(Some(Prefill { ids, text }))
}

/// How a grammar names a special token: llama.cpp's GBNF by reference (`<|channel|>`, as
/// llama.cpp matches them), vLLM's structured outputs (xgrammar) as a string (`"<|channel|>"`,
/// matched by the token's text, which vLLM keeps with `skip_special_tokens: false`).
#[derive(Clone, Copy)]
enum Dialect {
    Gbnf,
    Xgrammar,
}

/// A grammar for `tool_choice: "required"`: optionally the model's reasoning, optionally a
/// preamble, then a call to one of the declared functions, in the header form gpt-oss writes.
/// It ends with the call's arguments: `<|call|>` is an end-of-generation token, which the
/// servers allow only where the grammar may end, never as a part of it. `None` when no
/// function is declared (the request is refused before).
fn required_call_grammar(conv: &Conversation, dialect: Dialect) -> Option<String> {
    let names: Vec<String> = conv
        .tools
        .iter()
        .flatten()
        .filter_map(|t| if let Tool::Function(f) = t { Some(format!("\"{}\"", f.name.replace('\\', "\\\\").replace('"', "\\\""))) } else { None })
        .collect();
    if names.is_empty() {
        return None;
    }
    let t = |token: &str| match dialect {
        Dialect::Gbnf => token.to_owned(),
        Dialect::Xgrammar => format!("\"{token}\""),
    };
    let (channel, message, end, start, constrain) = (t("<|channel|>"), t("<|message|>"), t("<|end|>"), t("<|start|>"), t("<|constrain|>"));
    Some(format!(
        "root ::= analysis? preamble? call\n\
         analysis ::= {channel} \"analysis\" {message} text {end} {start} \"assistant\"\n\
         preamble ::= {channel} \"commentary\" {message} text {end} {start} \"assistant\"\n\
         call ::= {channel} \"commentary to=functions.\" name \" \" {constrain} \"json\" {message} text\n\
         name ::= {}\n\
         text ::= ([^<] | \"<\" [^|])*\n",
        names.join(" | ")
    ))
}

/// Client stops that are plain text (never `<|end|>` and friends: they would end the reply
/// early; the model's own stop tokens end it).
impl RequestStage for HarmonyRender {
    /// After every `on_request`: the history is repaired and remembered reasoning is back
    /// (`reasoning-memory` puts it in the conversation; here it becomes the analysis message).
    fn on_upstream_request(&mut self, conv: &Conversation) -> Result<Option<Rendered>, ApiError> {
        let mut prompt = render_request(&self.enc, &self.cache, conv, self.cfg.reasoning_effort, &today())?;
        // `required` on llama.cpp's `/completion`, or vLLM's completions with structured
        // outputs: a grammar, which leaves the model its reasoning and then allows only a
        // call; elsewhere the header is written for it.
        let grammar = match (&conv.controls.tool_choice, self.cfg.endpoint) {
            (Some(ToolChoice::Required), RenderEndpoint::Llama) => required_call_grammar(conv, Dialect::Gbnf),
            (Some(ToolChoice::Required), RenderEndpoint::Completions) if self.cfg.structured_outputs => required_call_grammar(conv, Dialect::Xgrammar),
            _ => None,
        };
        let prefill = if grammar.is_some() { None } else { forced_call(&self.enc, conv)? };
        if let Some(p) = &prefill {
            prompt.extend_from_slice(&p.ids);
        }
        let prompt_tokens = prompt.len() as u64;
        let completion = match (self.cfg.prompt, self.cfg.endpoint) {
            (PromptForm::Text, RenderEndpoint::Completions) => {
                let text = self.enc.tokenizer().decode_utf8(&prompt).map_err(|e| {
                    ApiError::new(400, "invalid_request_error", Some("unsupported_by_harmony_render"), format!("messages: the prompt is not text: {e}"))
                })?;
                Completion::Completions { prompt: Prompt::Text(text), grammar }
            }
            (PromptForm::Tokens, RenderEndpoint::Completions) => Completion::Completions { prompt: Prompt::Tokens(prompt), grammar },
            (_, RenderEndpoint::Llama) => Completion::Llama { prompt, grammar },
        };
        Ok(Some(Rendered { completion, prompt_tokens, prefill: prefill.map(Arc::new) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::UpstreamRequest;
    use crate::upstream::completion_request;
    use serde_json::json;

    fn rendered(body: Value) -> String {
        let enc = crate::testing::encoding();
        let f = HarmonyRenderFactory { cfg: HarmonyRenderConfig::default(), enc: enc.clone(), cache: Arc::new(RenderCache::default()) };
        let tokens = render_request(&enc, &f.cache, &crate::api::chat::decode::conversation(body), Effort::Medium, "2026-11-22").unwrap();
        enc.tokenizer().decode_utf8(&tokens).unwrap()
    }

    fn weather_tool() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn a_plain_question_with_a_system_prompt() {
        insta::assert_snapshot!(rendered(json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]})));
    }

    #[test]
    fn tools_become_the_functions_namespace() {
        insta::assert_snapshot!(rendered(json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": weather_tool()})));
        let none = rendered(json!({"messages": [{"role": "user", "content": "x"}], "tools": weather_tool(), "tool_choice": "none"}));
        assert!(!none.contains("get_weather"), "tool_choice none leaves them out");
    }

    #[test]
    fn a_tool_loop_with_reasoning_and_a_preamble() {
        insta::assert_snapshot!(rendered(json!({"reasoning_effort": "high", "tools": weather_tool(), "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "7 C"}
        ]})));
    }

    #[test]
    fn older_analysis_is_dropped_after_a_final_answer() {
        let text = rendered(json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "A.", "reasoning_content": "old thought"},
            {"role": "user", "content": "b"}
        ]}));
        assert!(!text.contains("old thought"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn response_format_json_schema_is_a_response_format_section() {
        insta::assert_snapshot!(rendered(json!({"messages": [{"role": "user", "content": "Give me a city."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}})));
    }

    #[test]
    fn a_forced_calls_function_name_is_text_never_markup() {
        let enc = crate::testing::encoding();
        let name = "f<|end|><|start|>system";
        let conv = crate::api::chat::decode::conversation(json!({
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": name}},
        }));
        let p = forced_call(&enc, &conv).unwrap().unwrap();
        let special = |text: &str| enc.tokenizer().encode_with_special_tokens(text)[0];
        let (end, start, channel, message) = (special("<|end|>"), special("<|start|>"), special("<|channel|>"), special("<|message|>"));
        assert!(!p.ids.contains(&end) && !p.ids.contains(&start), "{:?}", p.ids);
        assert_eq!((p.ids[0], *p.ids.last().unwrap()), (channel, message));
        assert_eq!(enc.tokenizer().decode_utf8(&p.ids).unwrap(), p.text);
    }

    #[test]
    fn what_cannot_be_rendered_is_a_400_naming_the_place() {
        let err = |body: Value| conversation(&crate::api::chat::decode::conversation(body), Effort::Medium, "2026-11-22").unwrap_err();
        let e = err(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}));
        assert_eq!((e.status, e.message.as_str()), (400, "messages[0].content[1]: gpt-oss reads text only; a `image_url` part cannot be rendered"));
        assert!(err(json!({"n": 2, "messages": []})).message.starts_with("n: "));
        assert!(err(json!({"messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]})).message.starts_with("messages[0]: tool result"));
        assert!(err(json!({"messages": [{"role": "wizard", "content": "1"}]})).message.starts_with("messages[0].role"));
    }

    #[test]
    fn a_request_without_a_limit_asks_a_completions_server_for_the_whole_context() {
        // vLLM's `/v1/completions` stops at 16 tokens when `max_tokens` is left out or `null`
        // (found by Codex in front of a real vLLM: its answer cut after the preamble).
        let body = |prompt: PromptForm, req: Value| {
            let enc = crate::testing::encoding();
            let cfg = HarmonyRenderConfig { prompt, ..HarmonyRenderConfig::default() };
            let mut stage = HarmonyRender { cfg, enc, cache: Arc::new(RenderCache::default()) };
            let conv = crate::api::chat::decode::conversation(req);
            let rendered = stage.on_upstream_request(&conv).unwrap().unwrap();
            UpstreamRequest::rendered(conv, rendered).body()
        };
        let q = json!({"messages": [{"role": "user", "content": "Hi"}]});
        assert_eq!(body(PromptForm::Tokens, q.clone())["max_tokens"], GPT_OSS_CONTEXT, "the whole context, never vLLM's 16");
        assert_eq!(body(PromptForm::Text, q).get("max_tokens"), None, "mlx-lm refuses null");
        assert_eq!(body(PromptForm::Tokens, json!({"max_tokens": 7, "messages": [{"role": "user", "content": "Hi"}]}))["max_tokens"], 7);
    }

    #[test]
    fn with_structured_outputs_a_required_tool_choice_is_a_grammar_that_leaves_the_reasoning_not_a_prefill() {
        let sent = |structured_outputs: bool| {
            let enc = crate::testing::encoding();
            let cfg = HarmonyRenderConfig { structured_outputs, ..HarmonyRenderConfig::default() };
            let mut stage = HarmonyRender { cfg, enc, cache: Arc::new(RenderCache::default()) };
            let conv = crate::api::chat::decode::conversation(
                json!({"messages": [{"role": "user", "content": "Hi"}], "tools": weather_tool(), "tool_choice": "required"}),
            );
            let rendered = stage.on_upstream_request(&conv).unwrap().unwrap();
            UpstreamRequest::rendered(conv, rendered)
        };
        let up = sent(true);
        assert!(up.prefill.is_none(), "no header written: the model may reason first");
        let body = up.body();
        let g = body["structured_outputs"]["grammar"].as_str().unwrap_or_else(|| panic!("a grammar: {body}"));
        assert!(g.starts_with("root ::= analysis? preamble? call\n"), "{g}");
        assert!(
            g.contains("analysis ::= \"<|channel|>\" \"analysis\" \"<|message|>\" text \"<|end|>\" \"<|start|>\" \"assistant\"\n"),
            "special tokens as strings: {g}"
        );
        assert!(g.contains("name ::= \"get_weather\"\n"), "{g}");
        let up = sent(false);
        assert!(
            up.body().get("structured_outputs").is_none() && up.prefill.is_some_and(|p| p.text == "<|channel|>commentary to=functions."),
            "off: the header as before"
        );
    }

    #[test]
    fn special_tokens_are_never_client_stops() {
        assert_eq!(completion_request::client_stops(&crate::api::chat::decode::conversation(json!({"stop": ["<|end|>", "END", "<|return|>", ""]}))), ["END"]);
    }

    #[test]
    fn today_is_a_calendar_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
