//! `history-clean` (request phase): assistant messages that echo Harmony markup are reduced
//! to their final text before going upstream — llama.cpp's template rejects echoed markup
//! (HTTP 500 on the next turn), so a multi-turn agent session would otherwise break.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::markup;
use crate::stage::{RequestMeta, Stage, StageFactory};
use crate::stages::harmony_parse::{final_text, HarmonyParseFactory};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryCleanConfig {}

pub struct HistoryCleanFactory {
    parse: Arc<HarmonyParseFactory>,
}

impl HistoryCleanFactory {
    pub fn new(parse: Arc<HarmonyParseFactory>) -> Self {
        Self { parse }
    }
}

impl StageFactory for HistoryCleanFactory {
    fn name(&self) -> &'static str {
        "history-clean"
    }
    fn new_stage(&self, _req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(HistoryClean { parse: self.parse.clone() })
    }
}

pub struct HistoryClean {
    parse: Arc<HarmonyParseFactory>,
}

/// Cleans every assistant message of `req` in place.
pub fn clean(parse: &HarmonyParseFactory, req: &mut Value) {
    let Some(messages) = req.get_mut("messages").and_then(Value::as_array_mut) else { return };
    for m in messages {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        match m.get_mut("content") {
            Some(Value::String(s)) if markup::has_markup(s) => *s = final_text(parse, s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(s)) = p.get_mut("text") {
                        if markup::has_markup(s) {
                            *s = final_text(parse, s);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl Stage for HistoryClean {
    fn on_request(&mut self, req: &mut Value) {
        clean(&self.parse, req);
    }
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        out.push(ev);
    }
}

#[cfg(test)]
mod regressions {
    use super::*;
    use crate::stages::harmony_parse::HarmonyParseConfig;

    /// Found by the `request` fuzz target: `x<|end<|reserved_200898|>|>y` came back as
    /// `x<|end|>y`, markup formed by removing the token in the middle.
    #[test]
    fn cleaned_history_has_no_markup_even_when_removal_forms_it() {
        let parse = HarmonyParseFactory::new(&HarmonyParseConfig::default(), crate::testing::encoding());
        let mut req = serde_json::json!({"messages": [{"role": "assistant", "content": "<|channe:|>analysis<|message|>x<|end<|reserved_200898|>|><|se|>y"}]});
        clean(&parse, &mut req);
        let c = req["messages"][0]["content"].as_str().unwrap();
        assert!(!crate::markup::has_markup(c), "{c:?}");
    }
}
