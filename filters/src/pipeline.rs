//! Stage specs (the `stages = [...]` tables of the config) and their compilation into
//! factories, once per config generation.

use std::sync::Arc;

use openai_harmony::HarmonyEncoding;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::{Chain, RequestMeta, StageFactory};
use crate::stages::fallback::{FallbackConfig, FallbackFactory};
use crate::stages::harmony_parse::{HarmonyParseConfig, HarmonyParseFactory};
use crate::stages::history_clean::{HistoryCleanConfig, HistoryCleanFactory};
use crate::stages::retry::{RetryConfig, RetryPolicy};
use crate::stages::sse_encode::{SseEncodeConfig, SseEncodeFactory};
use crate::stages::stop_injection::{StopInjectionConfig, StopInjectionFactory};
use crate::stages::tool_bridge::{Mode, ToolBridgeConfig, ToolBridgeFactory};
use crate::stages::watchdog::{WatchdogConfig, WatchdogFactory};

/// One stage of a pipeline, as written in the config (`{ type = "retry", max_retries = 3 }`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StageSpec {
    /// Request: add `<|return|>`, `<|call|>` and `extra` to `stop`.
    StopInjection(StopInjectionConfig),
    /// Request: reduce echoed Harmony in assistant messages to the final text.
    HistoryClean(HistoryCleanConfig),
    /// Upstream call: retry failures that happen before the client saw anything.
    Retry(RetryConfig),
    /// Response: Harmony text → channels and tool calls (official openai-harmony parser).
    HarmonyParse(HarmonyParseConfig),
    /// Response: recover the answer from blocks harmony-parse could not frame.
    Fallback(FallbackConfig),
    /// Response: channels and tool calls → what the client sees.
    ToolBridge(ToolBridgeConfig),
    /// Response: end the response when no answer came for `no_final_timeout`.
    Watchdog(WatchdogConfig),
    /// Response: client events → SSE chunks or one JSON completion. Must be last.
    SseEncode(SseEncodeConfig),
}

/// Every stage `type`, in the order a pipeline usually lists them.
pub const STAGE_TYPES: [&str; 8] = ["stop-injection", "history-clean", "retry", "harmony-parse", "fallback", "tool-bridge", "watchdog", "sse-encode"];

impl StageSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::StopInjection(_) => "stop-injection",
            Self::HistoryClean(_) => "history-clean",
            Self::Retry(_) => "retry",
            Self::HarmonyParse(_) => "harmony-parse",
            Self::Fallback(_) => "fallback",
            Self::ToolBridge(_) => "tool-bridge",
            Self::Watchdog(_) => "watchdog",
            Self::SseEncode(_) => "sse-encode",
        }
    }
}

/// A pipeline ready to serve: factories built once, shared by every request.
pub struct Compiled {
    pub specs: Vec<StageSpec>,
    pub factories: Vec<Arc<dyn StageFactory>>,
    pub retry: RetryPolicy,
    /// The tool-bridge mode, for the `mode` metric label (`passthrough` without one).
    pub mode: &'static str,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("specs", &self.specs).field("retry", &self.retry).finish()
    }
}

/// Checks the order rules (errors are messages without the location, which the caller adds).
pub fn validate(specs: &[StageSpec]) -> Vec<String> {
    let mut errors = Vec::new();
    match specs.last() {
        Some(StageSpec::SseEncode(_)) => {}
        _ => errors.push("the last stage must be `sse-encode`".to_owned()),
    }
    let encoders = specs.iter().filter(|s| matches!(s, StageSpec::SseEncode(_))).count();
    if encoders > 1 {
        errors.push("`sse-encode` may appear only once".to_owned());
    }
    for kind in ["retry", "harmony-parse", "fallback", "tool-bridge", "watchdog"] {
        if specs.iter().filter(|s| s.type_name() == kind).count() > 1 {
            errors.push(format!("`{kind}` may appear only once"));
        }
    }
    // The response stages only make sense in one order.
    let pos = |kind: &str| specs.iter().position(|s| s.type_name() == kind);
    let (parse, fallback, bridge, watchdog) = (pos("harmony-parse"), pos("fallback"), pos("tool-bridge"), pos("watchdog"));
    match (parse, bridge) {
        (_, None) => errors.push(
            "a pipeline needs a `tool-bridge` to decide what the client sees (e.g. { type = \"tool-bridge\", mode = \"final_only\" })".to_owned(),
        ),
        (Some(p), Some(b)) if b < p => errors.push("`tool-bridge` must come after `harmony-parse`".to_owned()),
        _ => {}
    }
    if let Some(f) = fallback {
        if parse.is_none_or(|p| f < p) || bridge.is_some_and(|b| b < f) {
            errors.push("`fallback` must come after `harmony-parse` and before `tool-bridge`".to_owned());
        }
    }
    if let (Some(w), Some(b)) = (watchdog, bridge) {
        if w < b {
            errors.push("`watchdog` must come after `tool-bridge` (it watches what the client gets)".to_owned());
        }
    }
    for s in specs {
        if let StageSpec::HarmonyParse(c) = s {
            if let Err(e) = crate::vocab::check_encoding_name(&c.encoding) {
                errors.push(format!("harmony-parse: encoding: {e}"));
            }
        }
    }
    errors
}

/// Builds the factories. `specs` must have passed [`validate`].
pub fn compile(specs: &[StageSpec], enc: &HarmonyEncoding) -> Compiled {
    let mut factories: Vec<Arc<dyn StageFactory>> = Vec::new();
    let mut retry = RetryPolicy::NONE;
    let mut mode = "passthrough";
    let mut parse_for_history: Option<Arc<HarmonyParseFactory>> = None;
    for spec in specs {
        match spec {
            StageSpec::StopInjection(c) => factories.push(Arc::new(StopInjectionFactory::new(c))),
            StageSpec::HistoryClean(_) => {
                let p = parse_for_history
                    .get_or_insert_with(|| Arc::new(HarmonyParseFactory::new(&HarmonyParseConfig::default(), enc.clone())))
                    .clone();
                factories.push(Arc::new(HistoryCleanFactory::new(p)));
            }
            StageSpec::Retry(c) => retry = RetryPolicy::from(c),
            StageSpec::HarmonyParse(c) => factories.push(Arc::new(HarmonyParseFactory::new(c, enc.clone()))),
            StageSpec::Fallback(_) => factories.push(Arc::new(FallbackFactory)),
            StageSpec::ToolBridge(c) => {
                mode = c.mode.as_str();
                factories.push(Arc::new(ToolBridgeFactory(c.clone())));
            }
            StageSpec::Watchdog(c) => factories.push(Arc::new(WatchdogFactory(c.no_final_timeout.0))),
            StageSpec::SseEncode(_) => factories.push(Arc::new(SseEncodeFactory)),
        }
    }
    if mode == "passthrough" && specs.iter().any(|s| matches!(s, StageSpec::HarmonyParse(_))) {
        mode = Mode::FinalOnly.as_str();
    }
    Compiled { specs: specs.to_vec(), factories, retry, mode }
}

impl Compiled {
    /// The per-request stages.
    pub fn new_chain(&self, meta: &RequestMeta) -> Chain {
        Chain::new(self.factories.iter().map(|f| f.new_stage(meta)).collect())
    }
}
