//! `stop-injection` (request phase): make sure generation stops at `<|return|>` and
//! `<|call|>` (and any `extra` sequences), keeping the client's own stops, without duplicates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::stage::{RequestMeta, Stage, StageFactory};
use crate::values::{Flag, StringList};

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

impl StageFactory for StopInjectionFactory {
    fn new_stage(&self, _req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(StopInjection { stops: self.stops.clone() })
    }
}

pub struct StopInjection {
    stops: std::sync::Arc<[String]>,
}

/// Adds `stops` to the request's `stop`, keeping what the client sent (string or list).
pub fn inject(req: &mut Value, stops: &[String]) {
    let Some(obj) = req.as_object_mut() else { return };
    if stops.is_empty() {
        return;
    }
    let mut list: Vec<Value> = match obj.remove("stop") {
        Some(Value::String(s)) => vec![Value::String(s)],
        Some(Value::Array(a)) => a.into_iter().filter(|v| v.is_string()).collect(),
        _ => Vec::new(),
    };
    for s in stops {
        if !list.iter().any(|v| v.as_str() == Some(s)) {
            list.push(Value::String(s.clone()));
        }
    }
    obj.insert("stop".into(), Value::Array(list));
}

impl Stage for StopInjection {
    fn on_request(&mut self, up: &mut crate::stage::UpstreamRequest) -> Result<(), crate::event::ApiError> {
        inject(&mut up.body, &self.stops);
        Ok(())
    }
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        out.push(ev);
    }
}

impl crate::pipeline::StageConfig for StopInjectionConfig {
    fn build(&self, b: &mut crate::pipeline::Builder<'_>) {
        b.push(StopInjectionFactory::new(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_client_stops_without_duplicates() {
        let stops = ["<|return|>".to_owned(), "<|call|>".to_owned(), "END".to_owned()];
        let mut r = json!({"stop": "END"});
        inject(&mut r, &stops);
        assert_eq!(r["stop"], json!(["END", "<|return|>", "<|call|>"]));
        let mut r = json!({"stop": ["<|call|>", "x"]});
        inject(&mut r, &stops);
        assert_eq!(r["stop"], json!(["<|call|>", "x", "<|return|>", "END"]));
        let mut r = json!({});
        inject(&mut r, &stops[..2]);
        assert_eq!(r["stop"], json!(["<|return|>", "<|call|>"]));
    }
}
