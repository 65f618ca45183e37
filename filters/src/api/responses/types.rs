//! Wire types of OpenAI's Responses API requests, as Codex CLI, the Agents SDK and the SDKs
//! send them (../shared/CLIENTS.md). Fields the proxy maps are typed; fields it accepts and
//! ignores are listed so that nothing is dropped by accident; fields it cannot honour are
//! typed too, so the decoder can refuse them by name.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub model: Option<String>,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Vec<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub reasoning: Option<ReasoningParam>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub text: Option<TextParam>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub store: Option<bool>,
    #[serde(default)]
    pub include: Option<Vec<String>>,
    pub previous_response_id: Option<String>,
    // Refused: the proxy cannot honour them.
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
    // Accepted and ignored (echoed in the response where the API does).
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub prompt_cache_key: Option<Value>,
    pub user: Option<Value>,
    pub service_tier: Option<Value>,
    pub client_metadata: Option<Value>,
    pub truncation: Option<Value>,
    pub stream_options: Option<Value>,
    pub safety_identifier: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub max_tool_calls: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Deserialize, Default)]
pub struct ReasoningParam {
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<Value>,
    #[serde(default)]
    pub generate_summary: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
pub struct TextParam {
    pub format: Option<TextFormat>,
    #[serde(default)]
    pub verbosity: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    Text,
    JsonObject,
    JsonSchema { name: Option<String>, schema: Option<Value>, strict: Option<bool>, description: Option<String> },
}

/// `{"type": "message"}` (or no type with a role): a turn of the conversation.
#[derive(Debug, Deserialize)]
pub struct MessageItem {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

/// `{"type": "reasoning"}`: the model's reasoning of an earlier turn, sent back.
#[derive(Debug, Deserialize)]
pub struct ReasoningItem {
    #[serde(default)]
    pub content: Option<Vec<Value>>,
    #[serde(default)]
    pub encrypted_content: Option<String>,
}

/// `{"type": "function_call"}`: a call the model made.
#[derive(Debug, Deserialize)]
pub struct FunctionCallItem {
    pub call_id: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// `{"type": "custom_tool_call"}`: a call of a freeform tool.
#[derive(Debug, Deserialize)]
pub struct CustomToolCallItem {
    pub call_id: String,
    pub name: String,
    #[serde(default)]
    pub input: String,
}

/// `{"type": "function_call_output"}` / `custom_tool_call_output`: a tool's result.
#[derive(Debug, Deserialize)]
pub struct CallOutputItem {
    pub call_id: String,
    pub output: Content,
}

/// A tool as the client declares it (`tools[i]`).
#[derive(Debug, Deserialize)]
pub struct FunctionTool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `{"type": "namespace"}` (Codex's MCP tools): functions grouped under a name.
#[derive(Debug, Deserialize)]
pub struct NamespaceTool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tools: Vec<Value>,
}

/// `{"type": "custom"}`: a freeform tool whose input is one string.
#[derive(Debug, Deserialize)]
pub struct CustomTool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub format: Option<Value>,
}
