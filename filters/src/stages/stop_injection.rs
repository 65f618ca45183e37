//! `stop-injection` (request phase): make sure generation stops at `<|return|>` and
//! `<|call|>` (and any `extra` sequences), keeping the client's own stops, without duplicates.

use crate::conversation::{Controls, Conversation, Stop};
use crate::stage::{PhaseStage, RequestMeta, RequestStage, RequestStageFactory};
use crate::values::{Flag, StringList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StopInjectionConfig {
    #[serde(default = "yes")]
    pub harmony_stops: Flag,
    #[serde(default)]
    pub extra: StringList,
}

fn yes() -> Flag {
    Flag(true)
}

pub struct StopInjectionFactory {
    stops: std::sync::Arc<[String]>,
}

impl StopInjectionFactory {
    pub fn new(cfg: &StopInjectionConfig) -> Self {
        let mut stops = Vec::new();
        if cfg.harmony_stops.0 {
            stops.extend(["<|return|>".to_owned(), "<|call|>".to_owned()]);
        }
        stops.extend(cfg.extra.0.iter().cloned());
        Self { stops: stops.into() }
    }
}

impl RequestStageFactory for StopInjectionFactory {
    fn new_request_stage(&self, _req: &RequestMeta) -> PhaseStage {
        PhaseStage::Compute(Box::new(StopInjection { stops: self.stops.clone() }))
    }
}

pub struct StopInjection {
    stops: std::sync::Arc<[String]>,
}

/// Adds `stops` to the request's stops, keeping the client's own (string or list) first.
pub fn inject(c: &mut Controls, stops: &[String]) {
    if stops.is_empty() {
        return;
    }
    let mut list = match c.stop.take() {
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
        None => Vec::new(),
    };
    for s in stops {
        if !list.contains(s) {
            list.push(s.clone());
        }
    }
    c.stop = Some(Stop::Many(list));
}

impl RequestStage for StopInjection {
    fn on_request(&mut self, conv: &mut Conversation) -> Result<(), crate::event::ApiError> {
        inject(&mut conv.controls, &self.stops);
        Ok(())
    }
}

impl crate::stage::StageConfig for StopInjectionConfig {
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.push_request(StopInjectionFactory::new(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn injected(r: Value, stops: &[String]) -> Value {
        let mut conv = crate::api::chat::decode::conversation(r);
        inject(&mut conv.controls, stops);
        crate::upstream::chat_request::request(conv)
    }

    #[test]
    fn keeps_client_stops_without_duplicates() {
        let stops = ["<|return|>".to_owned(), "<|call|>".to_owned(), "END".to_owned()];
        let r = injected(json!({"stop": "END"}), &stops);
        assert_eq!(r["stop"], json!(["END", "<|return|>", "<|call|>"]));
        let r = injected(json!({"stop": ["<|call|>", "x"]}), &stops);
        assert_eq!(r["stop"], json!(["<|call|>", "x", "<|return|>", "END"]));
        let r = injected(json!({}), &stops[..2]);
        assert_eq!(r["stop"], json!(["<|return|>", "<|call|>"]));
    }

    /// Found by the `request` fuzz target once stops were typed: a list with a number in it
    /// was left out of the conversation whole, and the client's string stops with it.
    #[test]
    fn a_list_of_stops_with_a_number_in_it_keeps_its_strings() {
        let stops = ["<|return|>".to_owned()];
        let r = injected(json!({"stop": ["<|c;all|>", 1]}), &stops);
        assert_eq!(r["stop"], json!(["<|c;all|>", "<|return|>"]));
    }
}
