//! The configuration: the typed model of `proxy.toml` (this file), loading with located
//! errors ([`load`]), and `${VAR}` interpolation ([`env`]).
//!
//! Every section is deserialized on its own, so one bad stage does not hide the errors of
//! the others: `check` reports them all at once, each with its place.

pub mod dotenv;
pub mod env;
pub mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;

use harmony_filters::stages::harmony_render::RenderEndpoint;
use harmony_filters::values::{Dur, Flag};
use harmony_filters::StageSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use load::{load, load_str, resolve_path, ConfigErrors};

/// The whole file, as documented by `harmony-proxy schema`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerConfig,
    /// Model servers by name; `default` (or the first) also receives forwarded `/v1/*` requests.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Matched in order; the first whose `path` and `models` match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Pipelines defined inline; they override `pipelines/NAME.toml` and the built-in ones.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineDef>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `--host`/`--port` override it. Changing it needs a restart.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Larger request bodies are refused with 413 (at once when `Content-Length` says so).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// How long a client may take to send a request body, from the end of its head: a body
    /// still unfinished then is a 408 and its slot of `max_concurrent_requests` is free again.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Dur,
    /// Serve Prometheus metrics on `/metrics` (false: 404).
    #[serde(default = "yes")]
    pub metrics: Flag,
    /// trace | debug | info | warn | error.
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
    #[serde(default)]
    pub log_format: LogFormat,
    /// How long in-flight streams may go on after SIGTERM/SIGINT.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Beyond this many requests in flight the proxy answers 503 with Retry-After.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Record each request's raw upstream stream into this directory (for `replay`).
    #[serde(default)]
    pub trace_dir: Option<PathBuf>,
    /// When non-empty, `/v1/*` needs `Authorization: Bearer <one of these>`. Empty strings are ignored.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// The secret that seals reasoning handed to clients (Responses `encrypted_content`,
    /// Messages thinking `signature`): replicas with the same secret open each other's.
    /// Unset or empty: a random key per process (sealed reasoning then opens only there).
    #[serde(default)]
    pub reasoning_key: Option<String>,
    /// Serve HTTPS. Changing it needs a restart.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            body_read_timeout: default_body_read_timeout(),
            metrics: yes(),
            log_level: default_log_level(),
            log_format: LogFormat::Text,
            shutdown_grace: default_grace(),
            max_concurrent_requests: None,
            trace_dir: None,
            api_keys: Vec::new(),
            reasoning_key: None,
            tls: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8001".into()
}
fn default_max_body() -> u64 {
    8 << 20
}
fn default_body_read_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn yes() -> Flag {
    Flag(true)
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_grace() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl<'de> Deserialize<'de> for LogLevel {
    // Case-insensitive: the Python proxy's LOG_LEVEL was usually written `INFO`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" | "warning" => Self::Warn,
            "error" | "critical" => Self::Error,
            _ => return Err(serde::de::Error::custom(format!("invalid log level {s:?} (trace|debug|info|warn|error)"))),
        })
    }
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Instead of `url`: a pool of servers that serve the same models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// How a pool picks a server for each request; a retry goes to another healthy server.
    #[serde(default)]
    pub balance: Balance,
    /// Requests in flight per server at most (its `--parallel` slots); beyond it a request
    /// waits for a free slot up to `connect_timeout`, then gets 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_outstanding: Option<usize>,
    /// Probe `GET {url}/models` of every server this often; a server failing 3 times in a row
    /// (probes or requests) sits out 30 s. Without it, only requests count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<Dur>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// The longest silence between upstream bytes.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// Sent as `Authorization: Bearer` to this upstream (empty: none).
    #[serde(default)]
    pub api_key: Option<String>,
    /// PEM certificates for an https upstream: extra roots (a private CA), or the server's own
    /// self-signed certificate, which is then trusted exactly (pinned).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the upstream's certificate at all (a lab only; logged as a warning).
    #[serde(default)]
    pub tls_insecure: Flag,
}

impl UpstreamConfig {
    /// The servers of this upstream: `urls`, or the one `url`.
    pub fn server_urls(&self) -> Vec<&str> {
        self.url.as_deref().into_iter().chain(self.urls.iter().map(String::as_str)).collect()
    }
}

/// How a pool of servers shares the requests.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The healthy server with the fewest requests in flight (ties at random).
    #[default]
    LeastOutstanding,
    /// Healthy servers in turn.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastOutstanding => "least_outstanding",
            Balance::RoundRobin => "round_robin",
        }
    }
}

fn default_connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_read_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(120))
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Globs on the request's `model` (`gpt-oss-*`); default `["*"]`.
    #[serde(default = "any_model")]
    pub models: Vec<String>,
    pub upstream: String,
    pub pipeline: String,
    /// The model name sent upstream instead of the client's (the client's answer still names
    /// its own): serves other names, such as Claude Code's own, with the model the server has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// Reasoning effort (`low`, `medium`, `high`) when the request does not say one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
}

/// The reasoning efforts gpt-oss knows.
pub const EFFORTS: [&str; 3] = ["low", "medium", "high"];

pub(crate) fn any_model() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    /// Ordered stages; `sse-encode` must be last.
    pub stages: Vec<StageSpec>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Every pipeline that can be referenced, with where it came from.
    pub pipelines: BTreeMap<String, (PipelineDef, String)>,
    /// The file it came from (`None`: the embedded default).
    pub source: Option<PathBuf>,
    /// Indexes in `routes` of routes the config did not write (the chat path's default).
    pub implied_routes: Vec<usize>,
}

impl Config {
    /// What runs but is probably a mistake, one line each (`check` prints them; exit 0).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for &i in &self.implied_routes {
            let r = &self.routes[i];
            w.push(format!(
                "routes: no route for {} in the config: implied routes[{i}] models [\"*\"] -> upstream `{}`, pipeline `{}` (write a route with pipeline `passthrough` for raw forwarding)",
                r.path, r.upstream, r.pipeline
            ));
        }
        // Stops that end the answer early: llama.cpp renders these tokens into the text its
        // stop matcher sees, so `<|end|>` ends the reply right after the reasoning.
        for (name, (def, place)) in &self.pipelines {
            for (i, st) in def.stages.iter().enumerate() {
                if let StageSpec::StopInjection(c) = st {
                    for stop in c.extra.0.iter().filter(|s| ["<|end|>", "<|start|>", "<|channel|>", "<|message|>"].contains(&s.trim())) {
                        let at = if place == "built-in" { format!("built-in pipeline {name}") } else { place.clone() };
                        w.push(format!("{at}.stages[{i}] (stop-injection): extra names {stop}: it ends answers early (llama.cpp stops right after the reasoning); remove it"));
                    }
                }
            }
        }
        // Options a stage reads only on another endpoint.
        for (name, (def, place)) in &self.pipelines {
            for (i, st) in def.stages.iter().enumerate() {
                if let StageSpec::HarmonyRender(c) = st {
                    if c.structured_outputs && c.endpoint == RenderEndpoint::Llama {
                        let at = if place == "built-in" { format!("built-in pipeline {name}") } else { place.clone() };
                        w.push(format!("{at}.stages[{i}] (harmony-render): structured_outputs is read on endpoint \"completions\" only (vLLM's structured outputs); endpoint \"llama\" already sends llama.cpp a grammar for tool_choice \"required\"; remove it"));
                    }
                }
            }
        }
        for (name, (_, place)) in &self.pipelines {
            if place != "built-in" && !self.routes.iter().any(|r| &r.pipeline == name) && !BUILTIN_PIPELINES.iter().any(|(b, _)| b == name) {
                w.push(format!("{place}: pipeline `{name}` is defined but no route uses it"));
            }
        }
        for (j, later) in self.routes.iter().enumerate() {
            if self.implied_routes.contains(&j) {
                continue;
            }
            let shadow = self.routes[..j]
                .iter()
                .enumerate()
                .find(|(_, earlier)| earlier.path == later.path && later.models.iter().all(|m| globs_cover(&earlier.models, m)));
            if let Some((i, earlier)) = shadow {
                w.push(format!("routes[{j}]: never matches: routes[{i}] (models {:?}) comes first and takes every model it names", earlier.models));
            }
        }
        w
    }

    /// The upstream that receives forwarded `/v1/*` requests.
    pub fn default_upstream(&self) -> Option<&str> {
        if self.upstreams.contains_key("default") {
            Some("default")
        } else {
            self.upstreams.keys().next().map(String::as_str)
        }
    }
}

/// Whether some glob of `earlier` matches every model `later` can match: exactly when one
/// of them matches everything, or matches the later glob's own text and the later glob has
/// no wildcard (a literal model name).
fn globs_cover(earlier: &[String], later: &str) -> bool {
    earlier.iter().any(|g| {
        g == "*"
            || g == "**"
            || (!later.contains(['*', '?', '[', '{']) && globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(later)))
            || g == later
    })
}

/// The shipped `proxy.toml`, used when no file exists.
pub const EMBEDDED_CONFIG: &str = include_str!("../../proxy.toml");

/// The shipped `pipelines/*.toml`, always available by name.
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("harmony", include_str!("../../pipelines/harmony.toml")),
    ("ide-tools", include_str!("../../pipelines/ide-tools.toml")),
    ("text-tools", include_str!("../../pipelines/text-tools.toml")),
    ("passthrough", include_str!("../../pipelines/passthrough.toml")),
    ("native", include_str!("../../pipelines/native.toml")),
];
