//! `harmony-proxy init`: a commented `proxy.toml` for one upstream and one kind of client,
//! so an operator's first config is a working one (it passes `check`; a test proves it).

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
    pub fn client_config(self, listen: &str) -> Option<String> {
        match self {
            Self::Codex => Some(format!(
                r#"# ~/.codex/config.toml (or $CODEX_HOME/config.toml): Codex CLI through harmony-proxy
model = "gpt-oss-20b"              # the model name your server answers to
model_provider = "harmony"

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
export ANTHROPIC_MODEL=gpt-oss-20b                  # the model name your server answers to
export ANTHROPIC_SMALL_FAST_MODEL=gpt-oss-20b
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1   # no telemetry, update or other calls out
export CLAUDE_CODE_MAX_CONTEXT_TOKENS=131072        # gpt-oss's context (it cannot know it)
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
        "gpt-oss-20b": {{ "name": "gpt-oss-20b", "tool_call": true, "reasoning": true, "limit": {{ "context": 131072, "output": 32000 }} }}
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
    "envKey": "HARMONY_PROXY_API_KEY", "generationConfig": {{ "contextWindowSize": 131072 }} }} ] }},
  "security": {{ "auth": {{ "selectedType": "openai" }} }},
  "model": {{ "name": "gpt-oss-20b" }}
}}
"#
            )),
            Self::Aider => Some(format!(
                r#"# aider through harmony-proxy (it declares no tools: the `text-tools` pipeline shows calls as text)
OPENAI_API_KEY=unused aider --openai-api-base http://{listen}/v1 --model openai/gpt-oss-20b
# a --model-metadata-file with an "openai/gpt-oss-20b" entry (context 131072, zero prices) keeps it from fetching a price list
"#
            )),
            _ => None,
        }
    }
}

/// The config text.
pub fn config(upstream: &str, kind: ClientKind) -> String {
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
