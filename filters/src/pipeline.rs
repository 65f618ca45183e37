//! Stage specs (the `stages = [...]` tables of the config) and their compilation into
//! factories, once per config generation.
//!
//! One list registers every stage ([`stages!`] below): its `type` name, its config type and
//! its variant. The config type lives in the stage's own file and says, through
//! [`StageConfig`], how its options are checked and what it adds to a pipeline. Everything
//! else — the [`StageSpec`] enum, [`STAGE_TYPES`], [`StageSpec::type_name`], parsing one stage
//! table ([`StageSpec::from_options`]) and [`compile`] — derives from that list, so adding a
//! stage is one file and one line here.

use std::sync::Arc;

use openai_harmony::HarmonyEncoding;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conversation::Conversation;
use crate::event::ApiError;
pub use crate::stage::config::{Builder, Order, Other, Place, StageConfig};
use crate::stage::{Chain, RequestMeta, RequestStageFactory, RetryPolicy, StageFactory, UpstreamRequest};
use crate::stages::fallback::FallbackConfig;
use crate::stages::harmony_parse::HarmonyParseConfig;
use crate::stages::harmony_render::HarmonyRenderConfig;
use crate::stages::history_clean::HistoryCleanConfig;
use crate::stages::reasoning_memory::ReasoningMemoryConfig;
use crate::stages::retry::RetryConfig;
use crate::stages::sse_encode::SseEncodeConfig;
use crate::stages::stop_injection::StopInjectionConfig;
use crate::stages::tool_bridge::{Mode, ToolBridgeConfig};
use crate::stages::watchdog::WatchdogConfig;
use crate::store::{StateStore, Stores};
use crate::work::CpuPool;

/// Where a stage's options failed to deserialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError {
    /// The option's path inside the stage table (`.` for the table itself).
    pub path: String,
    pub message: String,
}

fn options<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T, OptionsError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| OptionsError { path: e.path().to_string(), message: e.into_inner().to_string() })
}

/// The one list of stages. For each: the doc shown in the JSON Schema, the `type` name, the
/// variant and its config type.
macro_rules! stages {
    ($( $(#[$doc:meta])* $name:literal => $variant:ident($config:ty), )*) => {
        /// One stage of a pipeline, as written in the config (`{ type = "retry", max_retries = 3 }`).
        #[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
        #[serde(tag = "type")]
        pub enum StageSpec {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($config), )*
        }

        /// Every stage `type`, in the order a pipeline usually lists them.
        pub const STAGE_TYPES: &[&str] = &[$($name),*];

        impl StageSpec {
            pub fn type_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $name,)* }
            }
            fn config(&self) -> &dyn StageConfig {
                match self { $(Self::$variant(c) => c,)* }
            }
            /// Where a stage of type `kind` may stand (see [`Place`]).
            pub fn place_of(kind: &str) -> Place {
                match kind {
                    $($name => <$config as StageConfig>::place(),)*
                    _ => Place::ANYWHERE,
                }
            }
            /// The stage of type `kind` with the options `v` (the table without `type`);
            /// `None` when no stage has that type. Each stage is read straight into its typed
            /// options so that errors keep the option's path (a tagged enum would lose it).
            pub fn from_options(kind: &str, v: toml::Value) -> Option<Result<StageSpec, OptionsError>> {
                match kind {
                    $($name => Some(options::<$config>(v).map(Self::$variant)),)*
                    _ => None,
                }
            }
        }
    };
}

stages! {
    /// Request: add `<|return|>`, `<|call|>` and `extra` to `stop`.
    "stop-injection" => StopInjection(StopInjectionConfig),
    /// Request: repair the history (echoed Harmony, content beside reasoning, bad arguments).
    "history-clean" => HistoryClean(HistoryCleanConfig),
    /// Request: render the prompt with openai-harmony and call the raw completion endpoint.
    "harmony-render" => HarmonyRender(HarmonyRenderConfig),
    /// Upstream call: retry failures that happen before the client saw anything.
    "retry" => Retry(RetryConfig),
    /// Response: Harmony text → channels and tool calls (official openai-harmony parser).
    "harmony-parse" => HarmonyParse(HarmonyParseConfig),
    /// Response: recover the answer from blocks harmony-parse could not frame.
    "fallback" => Fallback(FallbackConfig),
    /// Both: remember each tool-call turn's reasoning and give it back on the next request.
    "reasoning-memory" => ReasoningMemory(ReasoningMemoryConfig),
    /// Response: channels and tool calls → what the client sees.
    "tool-bridge" => ToolBridge(ToolBridgeConfig),
    /// Response: end the response when no answer came for `no_final_timeout`.
    "watchdog" => Watchdog(WatchdogConfig),
    /// Response (a marker): the body's encoder turns events into the client API's wire format. Must be last.
    "sse-encode" => SseEncode(SseEncodeConfig),
}

/// A pipeline ready to serve: factories built once, shared by every request.
pub struct Compiled {
    pub specs: Vec<StageSpec>,
    /// The response stages' factories.
    pub factories: Vec<Arc<dyn StageFactory>>,
    /// The request stages' factories.
    pub request_factories: Vec<Arc<dyn RequestStageFactory>>,
    pub retry: RetryPolicy,
    /// The tool-bridge mode, for the `mode` metric label (`passthrough` without one).
    pub mode: &'static str,
    /// The store of its `reasoning-memory`, if it has one: client APIs that keep state
    /// between requests (stored responses) keep it there too.
    pub store: Option<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("specs", &self.specs).field("retry", &self.retry).finish()
    }
}

/// Checks every stage's [`Place`] (errors are messages without the location, which the
/// caller adds): what must be last, what may appear once, what is required, then each
/// stage's order rules, in the registry's order; then each stage's options.
pub fn validate(specs: &[StageSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    let pos = |kind: &str| specs.iter().position(|s| s.type_name() == kind);
    for kind in STAGE_TYPES.iter().filter(|k| StageSpec::place_of(k).last) {
        if specs.last().is_none_or(|s| s.type_name() != *kind) {
            errors.push(format!("the last stage must be `{kind}`"));
        }
    }
    for kind in STAGE_TYPES.iter().filter(|k| StageSpec::place_of(k).once) {
        if specs.iter().filter(|s| s.type_name() == *kind).count() > 1 {
            errors.push(format!("`{kind}` may appear only once"));
        }
    }
    for kind in STAGE_TYPES {
        let place = StageSpec::place_of(kind);
        match pos(kind) {
            None => errors.extend(place.required.map(str::to_owned)),
            Some(at) => errors.extend(place.rules.iter().filter(|r| !r.holds(at, pos)).map(|r| r.message.to_owned())),
        }
    }
    for s in specs {
        errors.extend(s.config().validate().into_iter().map(|e| format!("{}: {e}", s.type_name())));
    }
    errors
}

/// Builds the factories, with stores of their own (tools, tests: a pipeline alone).
/// `specs` must have passed [`validate`].
pub fn compile(specs: &[StageSpec], enc: &HarmonyEncoding) -> Compiled {
    compile_with(specs, enc, &Stores::default())
}

/// Builds the factories; stages that keep state get it from `stores` (the server's).
pub fn compile_with(specs: &[StageSpec], enc: &HarmonyEncoding, stores: &Stores) -> Compiled {
    let mut b = Builder::new(enc, stores);
    for spec in specs {
        spec.config().build(&mut b);
    }
    let parses = specs.iter().any(|s| matches!(s, StageSpec::HarmonyParse(_)));
    let mode = b.mode.unwrap_or(if parses { Mode::FinalOnly.as_str() } else { "passthrough" });
    Compiled { specs: specs.to_vec(), factories: b.factories, request_factories: b.request_factories, retry: b.retry, mode, store: b.store }
}

impl Compiled {
    /// The per-request response stages.
    pub fn new_chain(&self, meta: &RequestMeta) -> Chain {
        Chain::new(self.factories.iter().map(|f| f.new_stage(meta)).collect())
    }

    /// Runs the request phase for `meta`'s request, its computing on `cpu`: what goes
    /// upstream and what `then` made of it in the phase's last job, or the refusal (see
    /// [`crate::stage::request_phase`]).
    pub async fn request_phase<T: Send + 'static>(
        &self,
        meta: &RequestMeta,
        conv: Conversation,
        cpu: &CpuPool,
        then: impl FnOnce(&UpstreamRequest) -> T + Send + 'static,
    ) -> Result<(UpstreamRequest, T), ApiError> {
        let stages = self.request_factories.iter().map(|f| f.new_request_stage(meta)).collect();
        crate::stage::request_phase(stages, conv, cpu, then).await
    }
}
