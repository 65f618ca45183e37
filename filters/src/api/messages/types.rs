//! Wire types of Anthropic's Messages API requests, as Claude Code and the Anthropic SDKs
//! send them (../shared/CLIENTS.md). Content blocks stay JSON values: the decoder reads them
//! one by one so that every refusal names its block (`messages[2].content[1].type`).

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub messages: Vec<MessageParam>,
    pub system: Option<Content>,
    #[serde(default)]
    pub tools: Vec<Value>,
    pub tool_choice: Option<ToolChoice>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    pub thinking: Option<Thinking>,
    pub output_config: Option<OutputConfig>,
    #[serde(default)]
    pub stream: Option<bool>,
    // Accepted and ignored (their shape is checked).
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub context_management: Option<Value>,
    pub service_tier: Option<Value>,
    pub container: Option<Value>,
    pub mcp_servers: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct MessageParam {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        #[serde(default)]
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Thinking {
    Enabled {
        #[serde(default)]
        budget_tokens: Option<u64>,
        #[serde(default)]
        display: Option<Value>,
    },
    Adaptive {
        #[serde(default)]
        display: Option<Value>,
    },
    Disabled,
}

#[derive(Debug, Deserialize)]
pub struct OutputConfig {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub format: Option<Value>,
}

/// A client tool (`name`, `description`, `input_schema`); server tools carry a `type`.
#[derive(Debug, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub defer_loading: Option<bool>,
}
