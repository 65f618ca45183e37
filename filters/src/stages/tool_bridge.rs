//! `tool-bridge`: parsed channels and tool calls → what the client sees.
//!
//! - `mode`: `final_only` drops tool calls; `final_plus_tools_text` writes each call into the
//!   content as `\n[tool:NAME] ARGS\n`; `openai_tool_calls` emits OpenAI `tool_calls` with a
//!   stable `index`, a fresh `call_…` id and the name before any arguments, then the
//!   arguments as the model writes them (see [`OpenCall`]): an agent shows a long edit as it
//!   is written, and the watchdog sees a call that is still being written as output.
//! - `reasoning`: analysis text is dropped or streamed as `reasoning_content` / `reasoning`.
//! - `preambles`: commentary without a recipient is dropped or becomes content.
//!
//! Everything client-visible passes a [`Sanitizer`]: a token removed upstream can join the
//! text around it into something that looks like markup (`<|` + `<|end|>` + `x|>`), and the
//! contract is about what the client assembles, not each piece.
//!
//! A non-streamed answer is read to its end before the client sees it, so the bridge holds its
//! answer text there: text followed by a tool call in the same turn is a preamble (a parsing
//! upstream such as llama-server swallows the preamble's header and sends it as content) and
//! follows `preambles`. A streamed answer never waits to find out: its text goes on at once.
//!
//! Tool calls the upstream already parsed (`delta.tool_calls`) get the same treatment: they
//! are re-indexed from 0, given our ids, and a call is announced only once its name is known
//! (arguments that arrive earlier are held). A fragment on a new upstream index with neither
//! id nor name continues the open call (vLLM splits one call across indices).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Channel, Event, FinishReason, ReasoningField, UpstreamToolCall};
use crate::json_end::JsonEnd;
use crate::markup::Sanitizer;
use crate::stage::{random_id, RequestMeta, Stage, StageFactory, Stats};
use crate::stages::harmony_parse::clean_name;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    FinalOnly,
    FinalPlusToolsText,
    OpenaiToolCalls,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FinalOnly => "final_only",
            Self::FinalPlusToolsText => "final_plus_tools_text",
            Self::OpenaiToolCalls => "openai_tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reasoning {
    #[default]
    Drop,
    ReasoningContent,
    Reasoning,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preambles {
    #[default]
    Drop,
    Content,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolBridgeConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub reasoning: Reasoning,
    #[serde(default)]
    pub preambles: Preambles,
}

pub struct ToolBridgeFactory(pub ToolBridgeConfig);

impl StageFactory for ToolBridgeFactory {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage> {
        let mut b = ToolBridge::new(self.0.clone());
        b.hold_answer = !req.stream;
        Box::new(b)
    }
}

/// A call the client has been told about, whose arguments are still coming.
///
/// `openai_tool_calls` streams arguments as the model writes them: leading white space is
/// skipped, every fragment of the JSON value goes out when it arrives, and `end` stops the
/// call where the value ends (what is glued after it is the next message, never arguments).
/// What went out therefore always concatenates to the model's JSON. Only arguments that do
/// not begin like JSON are not streamed: nothing can be fixed once sent, so they are dropped
/// and the call gets `{}` (counted as a fallback).
struct OpenCall {
    index: u32,
    /// It has had arguments other than white space.
    has_args: bool,
    /// Some argument text went to the client.
    streamed: bool,
    end: JsonEnd,
}
/// An upstream-parsed call being assembled.
struct UpstreamCall {
    up_index: u32,
    id: Option<String>,
    /// The client id an earlier stage chose for it.
    client_id: Option<String>,
    started: bool,
    held_args: String,
}

pub struct ToolBridge {
    cfg: ToolBridgeConfig,
    reasoning: Option<ReasoningField>,
    /// The open call, if any.
    open: Option<OpenCall>,
    /// Calls whose arguments never became valid JSON (closed as `{}`).
    fallback: u64,
    next_index: u32,
    upstream: Option<UpstreamCall>,
    /// Non-streamed: answer text is held until a tool call (then it was a preamble) or the end.
    hold_answer: bool,
    held: String,
    content_guard: Sanitizer,
    reasoning_guard: Sanitizer,
    final_chunks: u64,
    tool_chunks: u64,
    /// A call's arguments went out but their value never ended: the answer ends `length`.
    truncated: bool,
}

/// The name a client sees: no `functions.` prefix, no junk.
pub fn display_name(raw: &str) -> String {
    let name = clean_name(raw);
    // Every `functions.`: a model that writes it twice means the same function.
    let mut n = name.as_str();
    while let Some(rest) = n.strip_prefix("functions.").filter(|r| !r.is_empty()) {
        n = rest;
    }
    n.to_owned()
}

/// Passes `t` through `sanitizer`; the common case (nothing held, no `<`) hands the string
/// on without copying.
fn guard(sanitizer: &mut Sanitizer, t: String) -> Option<String> {
    if sanitizer.is_idle() && !t.contains('<') {
        return (!t.is_empty()).then_some(t);
    }
    let mut clean = String::with_capacity(t.len());
    sanitizer.push(&t, &mut clean);
    (!clean.is_empty()).then_some(clean)
}

impl ToolBridge {
    pub fn new(cfg: ToolBridgeConfig) -> Self {
        let reasoning = match cfg.reasoning {
            Reasoning::Drop => None,
            Reasoning::ReasoningContent => Some(ReasoningField::ReasoningContent),
            Reasoning::Reasoning => Some(ReasoningField::Reasoning),
        };
        Self {
            cfg,
            reasoning,
            open: None,
            fallback: 0,
            next_index: 0,
            upstream: None,
            hold_answer: false,
            held: String::new(),
            content_guard: Sanitizer::default(),
            reasoning_guard: Sanitizer::default(),
            final_chunks: 0,
            tool_chunks: 0,
            truncated: false,
        }
    }

    fn content(&mut self, t: String, out: &mut Vec<Event>) {
        if let Some(t) = guard(&mut self.content_guard, t) {
            self.final_chunks += 1;
            out.push(Event::Content(t));
        }
    }

    /// Answer text: held in a non-streamed answer (see the module header), else content.
    fn answer(&mut self, t: String, out: &mut Vec<Event>) {
        if self.hold_answer {
            self.held.push_str(&t);
        } else {
            self.content(t, out);
        }
    }

    /// Held text is the answer after all.
    fn release_held(&mut self, out: &mut Vec<Event>) {
        if !self.held.is_empty() {
            let t = std::mem::take(&mut self.held);
            self.content(t, out);
        }
    }

    fn reasoning(&mut self, field: ReasoningField, t: String, out: &mut Vec<Event>) {
        if let Some(t) = guard(&mut self.reasoning_guard, t) {
            out.push(Event::Reasoning(field, t));
        }
    }

    /// The response is ending: release what the guards held.
    fn flush_guards(&mut self, out: &mut Vec<Event>) {
        let mut held = String::new();
        self.content_guard.finish(&mut held);
        if !held.is_empty() {
            self.final_chunks += 1;
            out.push(Event::Content(held));
        }
        if let Some(field) = self.reasoning {
            let mut held = String::new();
            self.reasoning_guard.finish(&mut held);
            if !held.is_empty() {
                out.push(Event::Reasoning(field, held));
            }
        }
    }

    /// Opens a call; `id` is the one an earlier stage chose for it, if any.
    fn start(&mut self, raw_name: &str, id: Option<String>, out: &mut Vec<Event>) {
        self.end(out);
        // Text before a tool call in the same turn was a preamble.
        if !self.held.is_empty() {
            let t = std::mem::take(&mut self.held);
            if self.cfg.preambles == Preambles::Content {
                self.content(t, out);
            }
        }
        let name = display_name(raw_name);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some(OpenCall { index, has_args: false, streamed: false, end: JsonEnd::default() });
        self.tool_chunks += 1;
        match self.cfg.mode {
            Mode::FinalOnly => {}
            Mode::FinalPlusToolsText => self.content(format!("\n[tool:{name}] "), out),
            Mode::OpenaiToolCalls => out.push(Event::ClientToolCall { index, id: id.unwrap_or_else(|| random_id("call_", 24)), name }),
        }
    }

    fn args(&mut self, args: String, out: &mut Vec<Event>) {
        let Some(call) = self.open.as_mut() else { return };
        if args.is_empty() {
            return;
        }
        call.has_args |= !args.trim().is_empty();
        self.tool_chunks += 1;
        match self.cfg.mode {
            Mode::FinalOnly => {}
            Mode::FinalPlusToolsText => self.content(args, out),
            Mode::OpenaiToolCalls => {
                if call.end.is_done() || !call.end.is_json_like() {
                    return; // after the value, or arguments nobody can stream: see OpenCall
                }
                let begun = call.end.has_begun();
                let stop = call.end.feed(&args).unwrap_or(args.len());
                if !call.end.is_json_like() {
                    return;
                }
                // White space before the value is not sent.
                let start = if begun { 0 } else { args.bytes().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')).unwrap_or(args.len()) };
                if start < stop {
                    call.streamed = true;
                    let index = call.index;
                    let piece = if start == 0 && stop == args.len() { args } else { args[start..stop].to_owned() };
                    out.push(Event::ClientToolArgs { index, args: piece });
                }
            }
        }
    }

    fn end(&mut self, out: &mut Vec<Event>) {
        let Some(call) = self.open.take() else { return };
        match self.cfg.mode {
            Mode::FinalPlusToolsText => self.content("\n".into(), out),
            Mode::OpenaiToolCalls if !call.streamed => {
                // Agents (Cline) run a call only once its arguments are non-empty: no
                // arguments are `{}`; arguments that did not begin like JSON are `{}` too,
                // counted.
                if call.has_args {
                    self.fallback += 1;
                }
                out.push(Event::ClientToolArgs { index: call.index, args: "{}".to_owned() });
            }
            // The value never ended: the model was cut off inside it (max_tokens, a stop),
            // and the client has part of it. As OpenAI's API does, the answer ends `length`.
            Mode::OpenaiToolCalls if !call.end.is_done() => self.truncated = true,
            _ => {}
        }
    }

    fn upstream_call(&mut self, u: UpstreamToolCall, out: &mut Vec<Event>) {
        let is_new = match &self.upstream {
            None => true,
            Some(c) => {
                let other_id = u.id.is_some() && c.id.is_some() && u.id != c.id;
                other_id || (u.index != c.up_index && (u.id.is_some() || u.name.is_some()))
            }
        };
        if is_new {
            self.finish_upstream_call(out);
            self.upstream = Some(UpstreamCall { up_index: u.index, id: u.id.clone(), client_id: None, started: false, held_args: String::new() });
        }
        let Some(call) = self.upstream.as_mut() else { return };
        if call.id.is_none() {
            call.id = u.id;
        }
        if call.client_id.is_none() {
            call.client_id = u.client_id;
        }
        if let Some(name) = u.name.filter(|n| !clean_name(n).is_empty()) {
            if !call.started {
                call.started = true;
                let held = std::mem::take(&mut call.held_args);
                let id = call.client_id.clone();
                self.start(&name, id, out);
                self.args(held, out);
            }
        }
        if let Some(a) = u.arguments {
            match self.upstream.as_mut() {
                Some(c) if !c.started => c.held_args.push_str(&a),
                _ => self.args(a, out),
            }
        }
    }

    /// Closes an upstream call; one whose name never came is announced with a placeholder.
    fn finish_upstream_call(&mut self, out: &mut Vec<Event>) {
        if let Some(c) = self.upstream.take() {
            if !c.started && !c.held_args.is_empty() {
                self.start("unknown_tool", c.client_id, out);
                self.args(c.held_args, out);
            }
            self.end(out);
        }
    }
}

impl Stage for ToolBridge {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        match ev {
            Event::Text(Channel::Final, t) | Event::Upstream(t) => self.answer(t, out),
            Event::Text(Channel::Analysis, t) | Event::UpstreamReasoning(t) => {
                if let Some(field) = self.reasoning {
                    self.reasoning(field, t, out);
                }
            }
            Event::Text(Channel::Preamble, t) => {
                self.release_held(out);
                if self.cfg.preambles == Preambles::Content {
                    self.content(t, out);
                }
            }
            Event::ToolCallStart { name, id } => {
                self.finish_upstream_call(out);
                self.start(&name, id, out)
            }
            Event::ToolCallArgs(a) => self.args(a, out),
            Event::ToolCallEnd => self.end(out),
            Event::UpstreamToolCall(u) => self.upstream_call(u, out),
            Event::Unparsed(_) => {}
            ev @ (Event::Finish(_) | Event::Error(_) | Event::Abort) => {
                self.finish_upstream_call(out);
                self.end(out);
                self.release_held(out);
                self.flush_guards(out);
                out.push(match ev {
                    Event::Finish(_) if self.truncated => Event::Finish(FinishReason::Length),
                    ev => ev,
                });
            }
            other => out.push(other),
        }
    }
    fn on_end(&mut self, out: &mut Vec<Event>) {
        let was_truncated = self.truncated;
        self.finish_upstream_call(out);
        self.end(out);
        self.release_held(out);
        self.flush_guards(out);
        if self.truncated && !was_truncated {
            out.push(Event::Finish(FinishReason::Length));
        }
    }
    fn stats(&self, st: &mut Stats) {
        st.final_chunks += self.final_chunks;
        st.tool_chunks += self.tool_chunks;
        st.tool_calls += u64::from(self.next_index);
        st.fallback += self.fallback;
    }
}

impl crate::stage::StageConfig for ToolBridgeConfig {
    /// Every pipeline decides what the client sees, from what the parser found.
    fn place() -> crate::stage::config::Place {
        use crate::stage::config::{Order, Other::*, Place};
        Place {
            required: Some("a pipeline needs a `tool-bridge` to decide what the client sees (e.g. { type = \"tool-bridge\", mode = \"final_only\" })"),
            rules: &[Order { after: &[IfPresent("harmony-parse")], before: &[], message: "`tool-bridge` must come after `harmony-parse`" }],
            ..Place::ONCE
        }
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.mode = Some(self.mode.as_str());
        b.push(ToolBridgeFactory(self.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(mode: Mode, evs: Vec<Event>) -> Vec<Event> {
        let mut tb = ToolBridge::new(ToolBridgeConfig { mode, ..Default::default() });
        let mut out = Vec::new();
        for e in evs {
            tb.on_event(e, &mut out);
        }
        tb.on_end(&mut out);
        out
    }

    /// Found by the fuzzer: `to=functions.functions.get_weather` showed the client
    /// `functions.get_weather`.
    #[test]
    fn a_doubled_functions_prefix_is_removed_whole() {
        assert_eq!(display_name("functions.functions.get_weather"), "get_weather");
        assert_eq!(display_name("functions.get_weather"), "get_weather");
        assert_eq!(display_name("get_weather"), "get_weather");
    }

    fn call(name: &str, args: &str) -> Vec<Event> {
        vec![Event::ToolCallStart { name: name.into(), id: None }, Event::ToolCallArgs(args.into()), Event::ToolCallEnd]
    }

    #[test]
    fn text_mode_renders_calls() {
        let out = bridge(Mode::FinalPlusToolsText, call("functions.get_weather", "{}"));
        let text: String = out.iter().map(|e| if let Event::Content(t) = e { t.as_str() } else { "" }).collect();
        assert_eq!(text, "\n[tool:get_weather] {}\n");
    }

    #[test]
    fn openai_mode_indexes_and_ids() {
        let mut evs = call("functions.a", "{\"x\":1}");
        evs.extend(call("b", "{}"));
        let out = bridge(Mode::OpenaiToolCalls, evs);
        match &out[..] {
            [Event::ClientToolCall { index: 0, id: id0, name: n0 }, Event::ClientToolArgs { index: 0, .. }, Event::ClientToolCall { index: 1, id: id1, name: n1 }, Event::ClientToolArgs { index: 1, .. }] =>
            {
                assert_eq!((n0.as_str(), n1.as_str()), ("a", "b"));
                assert!(id0.starts_with("call_") && id0 != id1);
            }
            other => panic!("{other:?}"),
        }
        assert!(bridge(Mode::FinalOnly, call("a", "{}")).is_empty());
    }

    #[test]
    fn a_call_without_arguments_gets_an_empty_object() {
        let out = bridge(Mode::OpenaiToolCalls, vec![Event::ToolCallStart { name: "functions.now".into(), id: None }, Event::ToolCallEnd]);
        assert!(matches!(&out[..], [Event::ClientToolCall { .. }, Event::ClientToolArgs { index: 0, args }] if args == "{}"), "{out:?}");
    }

    #[test]
    fn upstream_calls_reindexed_and_joined() {
        let up = |index, id: Option<&str>, name: Option<&str>, args: Option<&str>| {
            Event::UpstreamToolCall(UpstreamToolCall {
                index,
                id: id.map(Into::into),
                name: name.map(Into::into),
                arguments: args.map(Into::into),
                client_id: None,
            })
        };
        let out = bridge(
            Mode::OpenaiToolCalls,
            vec![
                up(3, Some("x1"), None, Some("")),
                up(3, None, Some("functions.f<|channel|>commentary"), None),
                up(3, None, None, Some("{\"a\"")),
                up(4, None, None, Some(":1}")), // split across indices
                up(5, Some("x2"), Some("g"), Some("{}")),
            ],
        );
        let names: Vec<_> =
            out.iter().filter_map(|e| if let Event::ClientToolCall { index, name, .. } = e { Some((*index, name.clone())) } else { None }).collect();
        assert_eq!(names, [(0, "f".to_string()), (1, "g".to_string())]);
        let args0: String = out.iter().filter_map(|e| if let Event::ClientToolArgs { index: 0, args } = e { Some(args.as_str()) } else { None }).collect();
        assert_eq!(args0, "{\"a\":1}");
    }
}

#[cfg(test)]
mod preambles_on_parsing_upstreams {
    use super::*;

    fn run(stream: bool, preambles: Preambles) -> Vec<Event> {
        let mut tb = ToolBridge::new(ToolBridgeConfig { mode: Mode::OpenaiToolCalls, preambles, ..Default::default() });
        tb.hold_answer = !stream;
        let mut out = Vec::new();
        for e in [
            Event::Upstream("Let me look ".into()),
            Event::Upstream("that up.".into()),
            Event::ToolCallStart { name: "functions.f".into(), id: None },
            Event::ToolCallArgs("{}".into()),
            Event::ToolCallEnd,
        ] {
            tb.on_event(e, &mut out);
        }
        tb.on_end(&mut out);
        out
    }

    fn content(out: &[Event]) -> String {
        out.iter().map(|e| if let Event::Content(t) = e { t.as_str() } else { "" }).collect()
    }

    /// llama-server swallows a preamble's header and sends it as content before the call.
    #[test]
    fn text_before_a_tool_call_in_a_non_streamed_answer_follows_the_preambles_option() {
        assert_eq!(content(&run(false, Preambles::Drop)), "");
        assert_eq!(content(&run(false, Preambles::Content)), "Let me look that up.");
        // Streamed, text is never held to find out.
        assert_eq!(content(&run(true, Preambles::Drop)), "Let me look that up.");
    }

    #[test]
    fn a_held_answer_with_no_call_after_it_is_the_answer() {
        let mut tb = ToolBridge::new(ToolBridgeConfig::default());
        tb.hold_answer = true;
        let mut out = Vec::new();
        tb.on_event(Event::Upstream("Hello".into()), &mut out);
        assert!(out.is_empty(), "held");
        tb.on_event(Event::Finish(crate::event::FinishReason::Stop), &mut out);
        assert_eq!(content(&out), "Hello");
        assert!(matches!(out.last(), Some(Event::Finish(_))), "content before the finish");
    }
}

#[cfg(test)]
mod regressions {
    use super::*;

    /// Found by the `no_markup_leaks` property: `<|channel|>v<>7.H8,<<|<|return|>…nel|>`.
    /// Removing `<|return|>` joined `<<|` and `nel|>` into `<|nel|>` in the assembled content,
    /// though no single chunk held markup.
    #[test]
    fn removed_tokens_cannot_join_text_into_markup() {
        let mut tb = ToolBridge::new(ToolBridgeConfig::default());
        let mut out = Vec::new();
        for t in ["a <", "<|", "nel|>", " b", "<|", "<|x|>", "y|>"] {
            tb.on_event(Event::Text(Channel::Final, t.into()), &mut out);
        }
        tb.on_end(&mut out);
        let text: String = out.iter().map(|e| if let Event::Content(t) = e { t.as_str() } else { "" }).collect();
        assert_eq!(text, "a < b");
    }
}

#[cfg(test)]
mod streamed_arguments {
    use super::*;

    fn run(pieces: &[&str], finish: Option<FinishReason>) -> (Vec<String>, Vec<Event>, u64) {
        let mut tb = ToolBridge::new(ToolBridgeConfig { mode: Mode::OpenaiToolCalls, ..Default::default() });
        let mut out = Vec::new();
        tb.on_event(Event::ToolCallStart { name: "functions.write".into(), id: None }, &mut out);
        for p in pieces {
            tb.on_event(Event::ToolCallArgs((*p).into()), &mut out);
        }
        if let Some(f) = finish {
            tb.on_event(Event::Finish(f), &mut out);
        }
        tb.on_end(&mut out);
        let args = out.iter().filter_map(|e| if let Event::ClientToolArgs { args, .. } = e { Some(args.clone()) } else { None }).collect();
        let mut st = Stats::default();
        tb.stats(&mut st);
        (args, out, st.fallback)
    }

    fn finishes(out: &[Event]) -> Vec<FinishReason> {
        out.iter().filter_map(|e| if let Event::Finish(f) = e { Some(*f) } else { None }).collect()
    }

    #[test]
    fn every_fragment_goes_out_when_it_arrives_and_glued_text_after_the_value_never_does() {
        let (args, out, fallback) = run(&[" \n", " {\"pa", "th\":\"a}\\\"", ".txt\"}", "}junk", "more"], Some(FinishReason::Stop));
        assert_eq!(args, ["{\"pa", "th\":\"a}\\\"", ".txt\"}"]);
        assert_eq!(args.concat(), r#"{"path":"a}\".txt"}"#);
        assert_eq!((finishes(&out), fallback), (vec![FinishReason::Stop], 0));
    }

    #[test]
    fn a_value_that_never_ends_is_the_models_truncation_and_the_answer_ends_with_length() {
        let (args, out, _) = run(&["{\"path\":", "\"a.t"], Some(FinishReason::Stop));
        assert_eq!(args.concat(), "{\"path\":\"a.t");
        assert_eq!(finishes(&out), [FinishReason::Length]);
        // No finish from the upstream at all: one `length` at the end.
        let (_, out, _) = run(&["[1,"], None);
        assert_eq!(finishes(&out), [FinishReason::Length]);
    }

    #[test]
    fn arguments_that_do_not_begin_like_json_are_never_sent_and_become_an_empty_object() {
        let (args, out, fallback) = run(&["print(", "1)"], Some(FinishReason::Stop));
        assert_eq!(args, ["{}"]);
        assert_eq!((finishes(&out), fallback), (vec![FinishReason::Stop], 1));
        let (args, _, fallback) = run(&[], None);
        assert_eq!((args, fallback), (vec!["{}".to_string()], 0), "no arguments: {{}}, not a fallback");
    }
}
