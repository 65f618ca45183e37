//! Wire types of OpenAI Chat Completions requests: what the proxy reads, typed, so that a
//! request of the wrong shape is the client's 400 naming the field (`messages[2].tool_calls[0].id:
//! invalid type: integer, expected a string`), never an upstream's 500 said as a 502.
//!
//! Only the shapes are checked here; the request goes on as sent. Fields the proxy does not
//! read (a server's own extras: `top_k`, `min_p`, `chat_template_kwargs`, `grammar`, …) are
//! not listed and pass through untouched. Where clients are known to send more than the
//! OpenAI schema allows (arguments as an object, `content: null`, `max_tokens: -1` for "no
//! limit" from llama.cpp and LM Studio clients, `4096.0`), the type allows it too.

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
pub struct Request {
    pub model: Option<Str>,
    pub messages: Vec<Message>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<serde_json::Number>,
    pub max_completion_tokens: Option<serde_json::Number>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub n: Option<serde_json::Number>,
    pub seed: Option<serde_json::Number>,
    pub stop: Option<Stop>,
    pub reasoning_effort: Option<Str>,
    pub response_format: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<serde_json::Number>,
    pub user: Option<Str>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<Str>,
    pub tool_calls: Option<Vec<ToolCall>>,
    pub tool_call_id: Option<Str>,
    pub reasoning_content: Option<Str>,
    pub reasoning: Option<Str>,
    pub thinking: Option<Str>,
}

/// A string, or parts (each an object with a `type`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(Str),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<Str>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCall {
    pub id: Option<Str>,
    #[serde(rename = "type")]
    pub kind: Option<Str>,
    pub function: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCall {
    pub name: Option<Str>,
    /// A JSON string in the OpenAI schema; some agents send the object itself (repaired by
    /// `history-clean`).
    pub arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<FunctionDef>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<Str>,
    pub parameters: Option<Map<String, Value>>,
    pub strict: Option<bool>,
}

/// `"none"` / `"auto"` / `"required"`, or `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(Map<String, Value>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(Str),
    Many(Vec<Str>),
}

/// A JSON string, checked but not copied (a request's texts can be megabytes).
#[derive(Debug)]
pub struct Str;

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Str;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Str, E> {
                Ok(Str)
            }
        }
        d.deserialize_str(V)
    }
}
