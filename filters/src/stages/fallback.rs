//! `fallback`: recover an answer from what `harmony-parse` could not frame.
//!
//! `harmony-parse` passes on as [`Event::Unparsed`] a header that never reached
//! `<|message|>` (`<|channel|>final {"answer": 42}`, vLLM) and, with
//! `prepend_missing_start = false`, raw output before the first `<|start|>`. This stage reads
//! such blocks by their words: the last `final` block with its tags stripped is the answer,
//! a block addressed `to=…` is a tool call, an `analysis` block stays reasoning.
//! It never turns `analysis` text into the answer. Without this stage such blocks are dropped.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Channel, Event};
use crate::markup::{self, Piece, Special};
use crate::stage::{RequestMeta, Stage, StageFactory, Stats};
use crate::stages::harmony_parse::{is_junk, HeaderInfo};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {}

pub struct FallbackFactory;

impl StageFactory for FallbackFactory {
    fn new_stage(&self, _req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(Fallback::default())
    }
}

#[derive(Default)]
pub struct Fallback {
    recovered: u64,
}

impl Stage for Fallback {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        match ev {
            Event::Unparsed(raw) => {
                let before = out.len();
                recover(&raw, out);
                if out.len() > before {
                    self.recovered += 1;
                }
            }
            other => out.push(other),
        }
    }
    fn stats(&self, st: &mut Stats) {
        st.fallback += self.recovered;
    }
}

/// Events recovered from one unframed block.
pub fn recover(raw: &str, out: &mut Vec<Event>) {
    if raw.contains("<|message|>") {
        // Several messages without their `<|start|>`: keep the last final block.
        if let Some(answer) = last_final_block(raw) {
            out.push(Event::Text(Channel::Final, answer));
        }
        return;
    }
    // One header that never reached `<|message|>`: channel word, then the content.
    let h = HeaderInfo::parse(raw);
    let body = if raw.contains("<|channel|>") { h.rest } else { raw };
    let body = strip_header_words(body);
    if let Some(name) = h.recipient {
        out.push(Event::ToolCallStart { name, id: None });
        if !body.is_empty() {
            out.push(Event::ToolCallArgs(body));
        }
        out.push(Event::ToolCallEnd);
        return;
    }
    if body.is_empty() {
        return;
    }
    let channel = match h.channel {
        Some("analysis") => Channel::Analysis,
        Some("commentary") => Channel::Preamble,
        _ => Channel::Final,
    };
    out.push(Event::Text(channel, body));
}

/// Drops `to=…`, `<|constrain|>json` / `json` words and markup from the start of a header's rest.
fn strip_header_words(s: &str) -> String {
    let text = markup::strip(s);
    let mut rest = text.trim_start_matches(is_junk);
    loop {
        let word_end = rest.find(is_junk).unwrap_or(rest.len());
        let word = &rest[..word_end];
        let is_meta = word.starts_with("to=") || word.eq_ignore_ascii_case("json") || word == "code";
        if !is_meta || word.is_empty() {
            break;
        }
        rest = rest[word_end..].trim_start_matches(is_junk);
    }
    rest.trim_end_matches(is_junk).to_owned()
}

/// The content of the last block whose channel is `final`, markup stripped.
fn last_final_block(raw: &str) -> Option<String> {
    let mut blocks: Vec<(Option<&'static str>, String)> = Vec::new();
    let mut header = String::new();
    let mut in_content = false;
    markup::split(raw, true, |p| match p {
        Piece::Special(Special::Message) => {
            blocks.push((HeaderInfo::parse(&header).channel, String::new()));
            header.clear();
            in_content = true;
        }
        Piece::Special(Special::Channel) if !in_content => header.push_str("<|channel|>"),
        Piece::Special(Special::Start | Special::End | Special::Return | Special::Call | Special::Channel) => {
            in_content = false;
            header.clear();
        }
        Piece::Special(_) => {}
        Piece::Text(t) if in_content => {
            if let Some(b) = blocks.last_mut() {
                b.1.push_str(t)
            }
        }
        Piece::Text(t) => header.push_str(t),
    });
    blocks.into_iter().rev().find(|(ch, _)| matches!(ch, Some("final") | None)).map(|(_, text)| text).filter(|t| !t.trim().is_empty())
}

impl crate::stage::StageConfig for FallbackConfig {
    /// Between the parser and the bridge: it recovers what the parser could not frame.
    fn place() -> crate::stage::config::Place {
        use crate::stage::config::{Order, Other::*, Place};
        Place {
            rules: &[Order {
                after: &[Required("harmony-parse")],
                before: &[IfPresent("tool-bridge")],
                message: "`fallback` must come after `harmony-parse` and before `tool-bridge`",
            }],
            ..Place::ONCE
        }
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.push(FallbackFactory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(raw: &str) -> Vec<Event> {
        let mut out = Vec::new();
        recover(raw, &mut out);
        out
    }

    #[test]
    fn header_without_message() {
        assert_eq!(rec("<|channel|>final {\"answer\": 42}"), [Event::Text(Channel::Final, "{\"answer\": 42}".into())]);
        assert_eq!(rec("assistant<|channel|>analysis thinking"), [Event::Text(Channel::Analysis, "thinking".into())]);
        assert_eq!(
            rec("<|channel|>commentary to=functions.f <|constrain|>json {\"a\":1}"),
            [Event::ToolCallStart { name: "functions.f".into(), id: None }, Event::ToolCallArgs("{\"a\":1}".into()), Event::ToolCallEnd]
        );
    }

    #[test]
    fn last_final_block_wins_and_analysis_never_does() {
        let raw = "<|channel|>analysis<|message|>secret<|end|><|channel|>final<|message|>one<|end|><|channel|>final<|message|>two";
        assert_eq!(rec(raw), [Event::Text(Channel::Final, "two".into())]);
        assert_eq!(rec("<|channel|>analysis<|message|>secret<|end|>"), []);
    }
}
