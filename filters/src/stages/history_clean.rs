//! `history-clean` (request phase): the conversation an agent sends back is repaired so the
//! server's chat template renders it, instead of answering HTTP 500 on the next turn.
//!
//! For each message, in order:
//! - assistant content that echoes Harmony markup, or its stripped-token form
//!   (`analysisX…assistantfinalY`), is reduced to its final text (`Y`);
//! - an assistant turn with `tool_calls` never carries both content and reasoning: llama.cpp's
//!   gpt-oss template raises "Cannot pass both content and thinking in an assistant message
//!   with tool calls" (issues #17040, #19701), and the OpenAI SDK hands agents exactly that
//!   message (a preamble as content, the reasoning, the calls). The content is a preamble the
//!   model wrote after its reasoning, so it is appended to the reasoning, in that order;
//! - tool-call `arguments` that are empty become `{}`; arguments that are not JSON keep their
//!   leading JSON value if they have one (a glued header after it), else are wrapped as a
//!   JSON string under `"input"` — the template parses them as JSON;
//! - a `role: tool` message whose `tool_call_id` matches no earlier call (the template has no
//!   function to address it from) becomes a user message that says what it was.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::{Content, Conversation, Message, Role};
use crate::markup;
use crate::stage::{PhaseStage, RequestMeta, RequestStage, RequestStageFactory};
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

impl RequestStageFactory for HistoryCleanFactory {
    fn new_request_stage(&self, _req: &RequestMeta) -> PhaseStage {
        PhaseStage::Compute(Box::new(HistoryClean { parse: self.parse.clone() }))
    }
}

pub struct HistoryClean {
    parse: Arc<HarmonyParseFactory>,
}

/// Text whose special tokens were stripped but whose words were kept.
fn looks_glued(s: &str) -> bool {
    let t = s.trim_start();
    (t.starts_with("analysis") || t.starts_with("commentary")) && (t.contains("assistantfinal") || t.contains("assistantcommentary"))
}

fn needs_cleaning(s: &str) -> bool {
    markup::has_markup(s) || looks_glued(s)
}

/// Repairs every message of the conversation in place (see the module header for what and why).
pub fn clean(parse: &HarmonyParseFactory, conv: &mut Conversation) {
    let mut call_ids: Vec<String> = Vec::new();
    for m in &mut conv.messages {
        match m.role {
            Role::Assistant => {
                clean_content(parse, &mut m.content);
                repair_tool_turn(m, &mut call_ids);
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                if !call_ids.iter().any(|c| c == id) {
                    orphan_to_user(m);
                }
            }
            _ => {}
        }
    }
}

fn clean_content(parse: &HarmonyParseFactory, content: &mut Content) {
    match content {
        Content::Text(s) if needs_cleaning(s) => *s = final_text(parse, s),
        Content::Parts(parts) => {
            for s in parts.iter_mut().filter_map(|p| p.text.as_mut()) {
                if needs_cleaning(s) {
                    *s = final_text(parse, s);
                }
            }
        }
        _ => {}
    }
}

fn repair_tool_turn(m: &mut Message, call_ids: &mut Vec<String>) {
    let Some(calls) = m.tool_calls.as_mut().filter(|c| !c.is_empty()) else { return };
    for call in calls.iter_mut() {
        if let Some(id) = &call.id {
            call_ids.push(id.clone());
        }
        if let Some(args) = call.arguments.as_mut() {
            normalise_arguments(args);
        }
    }
    merge_content_into_reasoning(m);
}

/// An assistant tool-call turn carrying both content and reasoning: the content (a preamble
/// said after the reasoning) is appended to the reasoning and the content emptied.
pub fn merge_content_into_reasoning(m: &mut Message) {
    let content = m.content.text();
    if content.trim().is_empty() {
        return;
    }
    let Some(r) = m.reasoning.as_mut().filter(|r| !r.text.trim().is_empty()) else { return };
    r.text = format!("{}\n\n{}", r.text.trim_end(), content.trim());
    m.content = Content::Null;
}

/// Arguments the template can parse as JSON, as a JSON string (the OpenAI shape).
fn normalise_arguments(args: &mut Value) {
    let fixed = match &*args {
        Value::String(s) if s.trim().is_empty() => "{}".to_owned(),
        Value::String(s) => {
            if serde_json::from_str::<Value>(s).is_ok() {
                return;
            }
            // A JSON value followed by something else (a glued header): keep the value.
            let mut values = serde_json::Deserializer::from_str(s).into_iter::<Value>();
            match values.next() {
                Some(Ok(v @ Value::Object(_))) => v.to_string(),
                _ => serde_json::json!({"input": s}).to_string(),
            }
        }
        Value::Null => "{}".to_owned(),
        // An object given as such: the OpenAI shape is a JSON string.
        other => other.to_string(),
    };
    *args = Value::String(fixed);
}

fn orphan_to_user(m: &mut Message) {
    let id = m.tool_call_id.as_deref().unwrap_or("");
    let name = m.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
    let text = m.content.text();
    *m = Message::text(Role::User, format!("(result of tool call{name} {id}, whose call is not in this conversation)\n{text}"));
}

impl RequestStage for HistoryClean {
    fn on_request(&mut self, conv: &mut Conversation) -> Result<(), crate::event::ApiError> {
        clean(&self.parse, conv);
        Ok(())
    }
}

impl crate::stage::StageConfig for HistoryCleanConfig {
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        // One default parser for every request stage that reads Harmony in history.
        let parse = b.shared(|enc| HarmonyParseFactory::new(&crate::stages::harmony_parse::HarmonyParseConfig::default(), enc.clone()));
        b.push_request(HistoryCleanFactory::new(parse));
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
        let mut conv = crate::api::chat::decode::conversation(
            serde_json::json!({"messages": [{"role": "assistant", "content": "<|channe:|>analysis<|message|>x<|end<|reserved_200898|>|><|se|>y"}]}),
        );
        clean(&parse, &mut conv);
        let req = crate::upstream::chat_request::request(conv);
        let c = req["messages"][0]["content"].as_str().unwrap();
        assert!(!crate::markup::has_markup(c), "{c:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::harmony_parse::HarmonyParseConfig;
    use serde_json::json;

    fn cleaned(messages: Value) -> Value {
        let parse = HarmonyParseFactory::new(&HarmonyParseConfig::default(), crate::testing::encoding());
        let mut conv = crate::api::chat::decode::conversation(json!({ "messages": messages }));
        clean(&parse, &mut conv);
        crate::upstream::chat_request::request(conv)["messages"].clone()
    }

    fn call(id: &str, args: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": args}})
    }

    /// llama.cpp answers 500 to this turn, exactly as the OpenAI SDK hands it to an agent.
    #[test]
    fn a_tool_turn_with_content_and_reasoning_keeps_both_as_reasoning_in_order() {
        for field in crate::conversation::ReasoningField::ALL.map(|f| f.as_str()) {
            let m = cleaned(json!([{"role": "assistant", "content": "Checking now.", field: "Need the weather.", "tool_calls": [call("c1", "{}")]}]));
            assert_eq!(m[0][field], "Need the weather.\n\nChecking now.", "{field}");
            assert!(m[0]["content"].is_null());
        }
        // Without tool calls, or without reasoning, nothing to repair.
        let m = cleaned(json!([{"role": "assistant", "content": "Hi.", "reasoning_content": "greet"}]));
        assert_eq!(m[0]["content"], "Hi.");
        let m = cleaned(json!([{"role": "assistant", "content": "Checking.", "tool_calls": [call("c1", "{}")]}]));
        assert_eq!(m[0]["content"], "Checking.");
    }

    #[test]
    fn glued_stripped_token_history_is_reduced_to_the_answer() {
        let m = cleaned(json!([{"role": "assistant", "content": "analysisUser says hi. Greet.assistantfinalHello! How can I help?"}]));
        assert_eq!(m[0]["content"], "Hello! How can I help?");
        let m = cleaned(json!([{"role": "assistant", "content": "The analysis shows an assistantfinal result."}]));
        assert_eq!(m[0]["content"], "The analysis shows an assistantfinal result.", "ordinary prose stays");
    }

    #[test]
    fn tool_arguments_always_parse_as_json() {
        let m = cleaned(json!([{"role": "assistant", "content": null, "tool_calls": [
            call("a", ""), call("b", "{\"path\":\"/x\"}commentary<|message|>We need"), call("c", "not json"), call("d", "{\"ok\":1}")
        ]}]));
        let args: Vec<&str> = (0..4).map(|i| m[0]["tool_calls"][i]["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(args, ["{}", "{\"path\":\"/x\"}", "{\"input\":\"not json\"}", "{\"ok\":1}"]);
    }

    #[test]
    fn a_tool_result_without_its_call_becomes_a_user_message() {
        let m = cleaned(json!([
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "ghost", "content": "42"},
            {"role": "assistant", "content": null, "tool_calls": [call("real", "{}")]},
            {"role": "tool", "tool_call_id": "real", "content": "sunny"},
        ]));
        assert_eq!(m[1]["role"], "user");
        assert!(m[1]["content"].as_str().unwrap().contains("ghost") && m[1]["content"].as_str().unwrap().ends_with("42"));
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "real", "content": "sunny"}));
    }
}
