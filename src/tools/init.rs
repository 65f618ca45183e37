//! `harmony-proxy init`: a commented `proxy.toml` for one upstream and one kind of client,
//! so an operator's first config is a working one (it passes `check`; a test proves it).
//!
//! It asks the model server what it serves first ([`discover`]): the model's name (`GET
//! /models`) and its context size (llama-server's `GET /props`, vLLM's `max_model_len` in
//! `/models`), so that the agents' settings say the server's window rather than a constant
//! (Codex's model catalog and compaction limit, Claude Code's context), and Claude Code's own
//! model names are served by the model the server has. An upstream that does not answer
//! gets gpt-oss's defaults, and `init` says so.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use serde_json::{json, Value};

use crate::upstream::{full, Upstream};

/// gpt-oss's context size, when the server does not say its own.
pub const DEFAULT_CONTEXT: u64 = 131_072;
/// The model name, when the server does not list one.
pub const DEFAULT_MODEL: &str = "gpt-oss-20b";

/// What the model server said of itself (`None`: it did not say, or did not answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub model: Option<String>,
    pub context: Option<u64>,
    /// The server lists exactly one model: it is what every route sends (vLLM and mlx-lm
    /// answer only to the name they serve, mlx-lm's being the model's path).
    pub only_one: bool,
}

impl Discovered {
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_MODEL)
    }
    pub fn context(&self) -> u64 {
        self.context.unwrap_or(DEFAULT_CONTEXT)
    }
    /// Where an agent compacts its history: 90% of the window, room left for the answer.
    pub fn compact_at(&self) -> u64 {
        self.context() / 10 * 9
    }
    /// One line saying what was learned, for the operator.
    pub fn summary(&self) -> String {
        match (&self.model, self.context) {
            (Some(m), Some(c)) => format!("the server serves {m} with a context of {c} tokens"),
            (Some(m), None) => format!("the server serves {m} and did not say its context size: {DEFAULT_CONTEXT} tokens assumed"),
            (None, Some(c)) => format!("the server's context is {c} tokens; it lists no model: {DEFAULT_MODEL} assumed"),
            (None, None) => format!("the server did not answer: {DEFAULT_MODEL} with {DEFAULT_CONTEXT} tokens of context assumed"),
        }
    }
}

/// Asks the first server of `up` what it serves (each question answered within 3 s or not).
pub async fn discover(up: &Upstream) -> Discovered {
    let Some(server) = up.pool.servers.first() else { return Discovered::default() };
    let base = server.url.trim_end_matches('/').to_owned();
    let get = |url: String| async move {
        let req = Request::get(url).body(full(Bytes::new())).ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(3), up.send(req)).await.ok()?.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let text = super::doctor::body_text(resp, 1 << 20, Duration::from_secs(3)).await.ok()?;
        serde_json::from_str::<Value>(&text).ok()
    };
    let mut d = Discovered::default();
    if let Some(list) = get(format!("{base}/models")).await {
        let first = list.pointer("/data/0");
        d.model = first.and_then(|m| m.get("id")).and_then(Value::as_str).map(str::to_owned);
        d.only_one = d.model.is_some() && list.get("data").and_then(Value::as_array).is_some_and(|a| a.len() == 1);
        d.context = first.and_then(|m| m.get("max_model_len")).and_then(Value::as_u64);
        // vLLM
    }
    if d.model.is_none() {
        // `transformers serve` with a pinned model lists none, and names it when refusing another.
        let ask = json!({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1});
        let mut req = Request::post(format!("{base}/chat/completions")).body(full(Bytes::from(ask.to_string()))).expect("static request");
        req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(3), up.send(req)).await {
            if resp.status().is_client_error() {
                let text = super::doctor::body_text(resp, 4096, Duration::from_secs(3)).await.unwrap_or_default();
                d.model = super::doctor::pinned_model(&text);
                d.only_one = d.model.is_some();
            }
        }
    }
    if d.context.is_none() {
        let root = base.strip_suffix("/v1").unwrap_or(&base);
        if let Some(props) = get(format!("{root}/props")).await {
            d.context = props.pointer("/default_generation_settings/n_ctx").and_then(Value::as_u64);
            // llama-server
        }
    }
    d
}

/// Codex's model catalog (`model_catalog_json`) for the served model: without an entry,
/// Codex warns that it does not know the model and gives it a fallback tool set with no
/// `apply_patch`; with this one it sends its freeform `apply_patch` (the proxy answers the
/// call as a `custom_tool_call`), the server's window and where to compact.
pub fn codex_catalog(d: &Discovered) -> String {
    let levels: Vec<Value> = ["low", "medium", "high"].iter().map(|e| json!({"effort": e, "description": format!("{e} reasoning")})).collect();
    let entry = json!({
        "slug": d.model(),
        "display_name": d.model(),
        "description": "gpt-oss through harmony-proxy",
        "base_instructions": "You are a coding agent working in the user's workspace through Codex CLI. Run commands with the shell tool, edit files with apply_patch, and answer concisely.",
        "default_reasoning_level": "medium",
        "supported_reasoning_levels": levels,
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": true,
        "priority": 1,
        "apply_patch_tool_type": "freeform",
        "context_window": d.context(),
        "max_context_window": d.context(),
        "auto_compact_token_limit": d.compact_at(),
        "truncation_policy": {"mode": "tokens", "limit": 10000},
        "supports_parallel_tool_calls": false,
        "support_verbosity": false,
        "experimental_supported_tools": [],
        "input_modalities": ["text"],
    });
    let mut text = serde_json::to_string_pretty(&json!({"models": [entry]})).unwrap_or_default();
    text.push('\n');
    text
}

/// `s` as a TOML string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `s` as one shell word (quoted only when it must be).
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@+=".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The file name `init` writes Codex's catalog to, beside the proxy's config.
pub const CODEX_CATALOG: &str = "codex-models.json";

/// The clients `init` knows, and the pipeline each gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// Roo Code (and Kilo Code): OpenAI tool calls, reasoning shown, preambles as content.
    Roo,
    /// Cline: the same; a call runs once id, name and arguments are all non-empty.
    Cline,
    /// Continue: the same; content and tool calls never share a chunk.
    Continue,
    /// Applications on the OpenAI SDKs: answers and tool calls, no reasoning.
    Sdk,
    /// Codex CLI (Responses API only): reasoning items, function calls, preambles as
    /// messages; prints the `~/.codex/config.toml` provider block.
    Codex,
    /// Claude Code (Anthropic Messages): thinking blocks, tool_use, preambles as text
    /// blocks; prints the environment to set.
    ClaudeCode,
    /// OpenCode: `ide-tools`; prints its `opencode.json`.
    Opencode,
    /// Kilo Code CLI: `ide-tools`; prints its `~/.config/kilo/kilo.json`.
    Kilo,
    /// Qwen Code: `ide-tools`; prints its `~/.qwen/settings.json`.
    Qwen,
    /// aider (declares no tools: calls are shown as text); prints its command line.
    Aider,
}

impl ClientKind {
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Roo => ("Roo Code / Kilo Code", "ide-tools"),
            Self::Cline => ("Cline", "ide-tools"),
            Self::Continue => ("Continue", "ide-tools"),
            Self::Sdk => ("OpenAI SDK applications", "app"),
            Self::Codex => ("Codex CLI", "ide-tools"),
            Self::ClaudeCode => ("Claude Code", "ide-tools"),
            Self::Opencode => ("OpenCode", "ide-tools"),
            Self::Kilo => ("Kilo Code CLI", "ide-tools"),
            Self::Qwen => ("Qwen Code", "ide-tools"),
            Self::Aider => ("aider", "text-tools"),
        }
    }

    /// What the client itself needs, printed beside the proxy's config (`None`: nothing
    /// beyond pointing it at http://LISTEN/v1).
    /// `catalog`: where Codex's model catalog was written; `d`: what the server said.
    pub fn client_config(self, listen: &str, d: &Discovered, catalog: &str) -> Option<String> {
        let (model, context, compact) = (d.model(), d.context(), d.compact_at());
        // As TOML strings and a shell word: a server's model id may be a file path.
        let (model_toml, catalog_toml, model_sh) = (toml_str(model), toml_str(catalog), shell_word(model));
        match self {
            Self::Codex => Some(format!(
                r#"# ~/.codex/config.toml (or $CODEX_HOME/config.toml): Codex CLI through harmony-proxy
model = {model_toml}
model_provider = "harmony"
model_catalog_json = {catalog_toml}   # its apply_patch, window and reasoning levels for {model}
model_context_window = {context}
model_auto_compact_token_limit = {compact}

[model_providers.harmony]
name = "harmony-proxy"
base_url = "http://{listen}/v1"
wire_api = "responses"
# env_key = "PROXY_API_KEY"        # with server.api_keys: the variable holding the key
# Run: codex exec --skip-git-repo-check "…"   (or plain `codex` for the TUI)
"#
            )),
            Self::ClaudeCode => Some(format!(
                r#"# Claude Code through harmony-proxy: set these, then run `claude` (or `claude -p "…"`)
export ANTHROPIC_BASE_URL=http://{listen}
export ANTHROPIC_API_KEY=unused                     # or a key of server.api_keys (sent as x-api-key)
export ANTHROPIC_MODEL={model_sh}
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1   # no telemetry, update or other calls out
export CLAUDE_CODE_MAX_CONTEXT_TOKENS={context}        # the server's context (it cannot know it)
# Its own model names for background work (claude-haiku-…) are served by {model}: the
# proxy.toml's `claude-*` route says so (`upstream_model`).
"#
            )),
            Self::Opencode | Self::Kilo => {
                let (file, schema, extra) = match self {
                    Self::Opencode => ("opencode.json (in the project directory)", "https://opencode.ai/config.json", r#"  "share": "disabled""#),
                    _ => (
                        "~/.config/kilo/kilo.json (the user's: a project kilo.json may not read the environment)",
                        "https://app.kilo.ai/config.json",
                        r#"  "enabled_providers": ["harmony"]"#,
                    ),
                };
                let run = if self == Self::Opencode { "opencode" } else { "kilo" };
                Some(format!(
                    r#"# {file}: {run} through harmony-proxy; run `{run} run -m harmony/gpt-oss-20b "…"`
{{
  "$schema": "{schema}",
  "provider": {{
    "harmony": {{
      "npm": "@ai-sdk/openai-compatible",
      "name": "harmony-proxy",
      "options": {{ "baseURL": "http://{listen}/v1", "apiKey": "{{env:HARMONY_PROXY_API_KEY}}" }},
      "models": {{
        "gpt-oss-20b": {{ "name": "gpt-oss-20b", "tool_call": true, "reasoning": true, "limit": {{ "context": {context}, "output": 32000 }} }}
      }}
    }}
  }},
  "model": "harmony/gpt-oss-20b",
  "autoupdate": false,
{extra}
}}
# `reasoning: true` keeps the reasoning in the history it sends back; set HARMONY_PROXY_API_KEY (any value without server.api_keys)
"#
                ))
            }
            Self::Qwen => Some(format!(
                r#"# ~/.qwen/settings.json: Qwen Code through harmony-proxy; run `qwen --yolo "…"` (HARMONY_PROXY_API_KEY set: any value without server.api_keys)
{{
  "$version": 4,
  "modelProviders": {{ "openai": [ {{ "id": "gpt-oss-20b", "name": "gpt-oss-20b", "baseUrl": "http://{listen}/v1",
    "envKey": "HARMONY_PROXY_API_KEY", "generationConfig": {{ "contextWindowSize": {context} }} }} ] }},
  "security": {{ "auth": {{ "selectedType": "openai" }} }},
  "model": {{ "name": "gpt-oss-20b" }}
}}
"#
            )),
            Self::Aider => Some(format!(
                r#"# aider through harmony-proxy (it declares no tools: the `text-tools` pipeline shows calls as text)
OPENAI_API_KEY=unused aider --openai-api-base http://{listen}/v1 --model openai/gpt-oss-20b
# a --model-metadata-file with an "openai/gpt-oss-20b" entry (context {context}, zero prices) keeps it from fetching a price list
"#
            )),
            _ => None,
        }
    }
}

/// The config text.
pub fn config(upstream: &str, kind: ClientKind, d: &Discovered) -> String {
    let (who, pipeline) = kind.describe();
    let url = upstream.trim_end_matches('/');
    let mut s = format!(
        r#"# harmony-proxy for {who}, in front of {url}
# Written by `harmony-proxy init`. Check it with `harmony-proxy check`; see what the upstream
# sends with `harmony-proxy doctor`. Edits apply live (file watch or SIGHUP).
# Every value can come from the environment: "${{VAR}}" or "${{VAR:-default}}" (a .env file
# in the working directory is read too).

[server]
listen = "${{LISTEN:-127.0.0.1:8001}}"   # point the client at http://THIS/v1
log_format = "text"                     # "json" for a log shipper: every line is JSON
# api_keys = ["${{PROXY_API_KEY}}"]       # require Authorization: Bearer <key> from clients

[upstreams.default]
url = "${{UPSTREAM_BASE_URL:-{url}}}"
read_timeout = "120s"                   # longest silence between upstream bytes
# api_key = "${{UPSTREAM_API_KEY}}"       # if the model server wants a key
# ca_file = "server.pem"                # https upstream with a private CA or a self-signed cert
# tls_insecure = true                   # lab only: do not verify the upstream's certificate

# Chat completions go through the pipeline below; every other /v1/* path is forwarded
# to the upstream untouched.
[[routes]]
path = "/v1/chat/completions"
models = ["*"]
upstream = "default"
pipeline = "{pipeline}"

# OpenAI Responses (Codex CLI, the Agents SDK): reasoning items, function calls, preambles
# as messages; responses are kept for previous_response_id (store) in the reasoning memory.
[[routes]]
path = "/v1/responses"
models = ["*"]
upstream = "default"
pipeline = "ide-tools"

# Anthropic Messages (Claude Code): thinking blocks (their signature brings the reasoning
# back), tool_use blocks, preambles as text blocks.
[[routes]]
path = "/v1/messages"
models = ["*"]
upstream = "default"
pipeline = "ide-tools"
"#
    );
    if d.only_one {
        // The one model the server serves is what every route sends, whatever the client names.
        let line = format!(
            "models = [\"*\"]\nupstream = \"default\"\npipeline = \"{pipeline}\"\nupstream_model = {}   # the one model the server serves",
            toml_str(d.model())
        );
        s = s.replace(&format!("models = [\"*\"]\nupstream = \"default\"\npipeline = \"{pipeline}\""), &line);
        if pipeline != "ide-tools" {
            let ide = format!(
                "models = [\"*\"]\nupstream = \"default\"\npipeline = \"ide-tools\"\nupstream_model = {}   # the one model the server serves",
                toml_str(d.model())
            );
            s = s.replace("models = [\"*\"]\nupstream = \"default\"\npipeline = \"ide-tools\"\n", &format!("{ide}\n"));
        }
    }
    if kind == ClientKind::ClaudeCode {
        // First match wins: before the catch-all route above in effect, so it goes first.
        let claude = format!(
            r#"
# Claude Code asks for its own model names for background work (claude-haiku-…, titles,
# summaries) and its model picker offers them: the server has {model}, so that is what
# they are sent as. The client's answer still names the model it asked for.
[[routes]]
path = "/v1/messages"
models = ["claude-*"]
upstream = "default"
pipeline = "ide-tools"
upstream_model = {model_toml}
"#,
            model = d.model(),
            model_toml = toml_str(d.model())
        );
        let at = s.find("\n# Anthropic Messages (Claude Code)").unwrap_or(s.len());
        s.insert_str(at, &claude);
    }
    match kind {
        ClientKind::Sdk => s.push_str(
            r#"
# Answers and OpenAI tool_calls; reasoning and preambles stay out of the reply.
# The built-in pipelines (harmony, ide-tools, text-tools, passthrough) are always there too.
[pipelines.app]
stages = [
  { type = "stop-injection", harmony_stops = true },
  { type = "history-clean" },
  { type = "retry", max_retries = 3, backoff = "500ms" },
  { type = "harmony-parse" },
  { type = "fallback" },
  { type = "tool-bridge", mode = "openai_tool_calls", reasoning = "drop", preambles = "drop" },
  { type = "watchdog", no_final_timeout = "90s" },
  { type = "sse-encode" },
]
"#,
        ),
        _ => s.push_str(
            r#"
# `ide-tools` is built in: OpenAI tool_calls, reasoning in `reasoning_content`, preambles
# ("I'll check the weather.") as content, history repaired for llama.cpp's template.
# To change it, copy it here as [pipelines.ide-tools] (see pipelines/ide-tools.toml).
"#,
        ),
    }
    s
}
