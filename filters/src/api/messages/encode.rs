//! Client events → Messages events (`stream: true`) or one `message` object.
//!
//! Streamed: `message_start` (right before the first block, so nothing reaches the client
//! until there is something to show and a retry stays possible until then); per content
//! block `content_block_start` → deltas → `content_block_stop`; then `message_delta` (the
//! `stop_reason` and usage) and `message_stop`. A failure ends the stream with an `error`
//! event instead. While nothing is written for [`PING`], a `ping` goes out.
//!
//! Blocks: reasoning → a `thinking` block (`thinking_delta`s, then one `signature_delta`
//! carrying the reasoning sealed, which brings it back when the client sends the block
//! back); answer text → a `text` block, a preamble being the text block before a call; each
//! call → a `tool_use` block (`toolu_` id, the arguments as `input_json_delta`s that join to
//! the model's JSON object; arguments that are not an object are not streamed: `{}`).
//!
//! `stop_sequences` are the encoder's to apply (the upstream cannot say which one stopped
//! it): answer text that could be the start of one is held back until it is not; on a
//! match the text before it goes out, the answer ends with `stop_reason: "stop_sequence"`
//! naming it, and the upstream is no longer read ([`Event::Abort`]).
//!
//! The block lifecycle is the [`Block`] state: the open block carries what it needs at its
//! stop; a different kind of event stops it and starts the next. Invariants: block indexes
//! count from 0, each started once and stopped once, one at a time; exactly one terminal
//! (`message_stop` or `error`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use serde_json::{json, Value};

use super::decode::tool_use_id;
use super::input_json::InputJson;
use super::stops::StopScan;
use super::{error_json, Context};
use crate::api::{Encoder, Ending, Output};
use crate::event::{Event, FinishReason};
use crate::stage::{RequestMeta, Stats};

/// Longest silence on a stream before a `ping`.
pub const PING: Duration = Duration::from_secs(15);

/// The open content block.
enum Block {
    Thinking {
        text: String,
    },
    Text {
        text: String,
    },
    /// `json`: the input as sent, checked by `check` (see [`InputJson`]).
    ToolUse {
        id: String,
        name: String,
        json: String,
        check: InputJson,
    },
}

pub struct MessagesEncoder {
    ctx: Arc<Context>,
    stream: bool,
    model: String,
    buf: BytesMut,
    started: bool,
    open: Option<Block>,
    /// The stopped blocks, in order (the message's `content`).
    content: Vec<Value>,
    saw_tool_use: bool,
    /// The client's stop sequences being watched for in answer text (see the module header).
    stops: StopScan,
    /// The stop sequence that ended the answer.
    stopped_by: Option<String>,
    /// How it ended, its usage, its first error, when output began.
    ending: Ending,
    done: bool,
    last_write: Instant,
}

impl MessagesEncoder {
    pub fn new(meta: &RequestMeta, ctx: Arc<Context>) -> Self {
        Self {
            ctx: ctx.clone(),
            stream: meta.stream,
            model: meta.model.clone(),
            buf: BytesMut::with_capacity(512),
            started: false,
            open: None,
            content: Vec::new(),
            saw_tool_use: false,
            stops: StopScan::new(&ctx.stop_sequences),
            stopped_by: None,
            ending: Ending::default(),
            done: false,
            last_write: Instant::now(),
        }
    }

    /// `event: NAME` and `data: {"type":"NAME"`; the caller writes the rest and calls
    /// [`end_event`].
    fn begin_event(&mut self, name: &str) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\ndata: {\"type\":\"");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.put_u8(b'"');
    }

    fn end_event(&mut self, out: &mut Vec<Output>) {
        self.buf.extend_from_slice(b"}\n\n");
        out.push(Output::Bytes(self.buf.split().freeze()));
        if self.buf.capacity() > 16 << 10 {
            self.buf = BytesMut::with_capacity(512);
        }
        self.last_write = Instant::now();
    }

    /// An event with one more field, `key: value`.
    fn event(&mut self, name: &str, key: &str, value: &Value, out: &mut Vec<Output>) {
        self.begin_event(name);
        let _ = write!((&mut self.buf).writer(), ",\"{key}\":");
        let _ = serde_json::to_writer((&mut self.buf).writer(), value);
        self.end_event(out);
    }

    fn ensure_started(&mut self, out: &mut Vec<Output>) {
        if self.started || !self.stream {
            return;
        }
        self.started = true;
        let m = json!({"id": self.ctx.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                       "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}});
        self.event("message_start", "message", &m, out);
    }

    fn index(&self) -> usize {
        self.content.len()
    }

    fn start(&mut self, block: Block, out: &mut Vec<Output>) {
        self.stop(out);
        if self.stream {
            self.ensure_started(out);
            let cb = match &block {
                Block::Thinking { .. } => json!({"type": "thinking", "thinking": "", "signature": ""}),
                Block::Text { .. } => json!({"type": "text", "text": ""}),
                Block::ToolUse { id, name, .. } => json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            };
            self.begin_event("content_block_start");
            let index = self.index();
            let _ = write!((&mut self.buf).writer(), ",\"index\":{index},\"content_block\":");
            let _ = serde_json::to_writer((&mut self.buf).writer(), &cb);
            self.end_event(out);
        }
        self.open = Some(block);
    }

    /// A `content_block_delta` of the open block: `{"type": kind, field: text}`.
    fn delta(&mut self, kind: &str, field: &str, text: &str, out: &mut Vec<Output>) {
        self.begin_event("content_block_delta");
        let index = self.index();
        let _ = write!((&mut self.buf).writer(), ",\"index\":{index},\"delta\":{{\"type\":\"{kind}\",\"{field}\":");
        let _ = serde_json::to_writer((&mut self.buf).writer(), text);
        self.buf.put_u8(b'}');
        self.end_event(out);
    }

    /// Stops the open block: a thinking block gets its signature first.
    fn stop(&mut self, out: &mut Vec<Output>) {
        let Some(block) = self.open.take() else { return };
        let value = match block {
            Block::Thinking { text } => {
                let signature = self.ctx.sealer.seal(&self.ctx.scope, &text);
                if self.stream {
                    self.delta("signature_delta", "signature", &signature, out);
                }
                json!({"type": "thinking", "thinking": text, "signature": signature})
            }
            Block::Text { text } => json!({"type": "text", "text": text}),
            Block::ToolUse { id, name, json, .. } => {
                let input = serde_json::from_str::<Value>(&json).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        };
        if self.stream {
            self.begin_event("content_block_stop");
            let index = self.index();
            let _ = write!((&mut self.buf).writer(), ",\"index\":{index}");
            self.end_event(out);
        }
        self.content.push(value);
    }

    fn stop_reason(&self) -> &'static str {
        if self.stopped_by.is_some() {
            return "stop_sequence";
        }
        match self.ending.finish {
            Some(FinishReason::Length) => "max_tokens",
            _ if self.saw_tool_use => "tool_use",
            _ => "end_turn",
        }
    }

    fn usage(&self) -> Value {
        let u = self.ending.usage.unwrap_or_default();
        json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached_tokens.unwrap_or(0)})
    }

    fn finish(&mut self, out: &mut Vec<Output>) {
        // Text held back as a possible stop sequence's start was answer after all.
        let held = self.stops.take_held();
        if !held.is_empty() && self.stopped_by.is_none() {
            self.text(held, out);
        }
        self.stop(out);
        if let Some(e) = self.ending.error.clone() {
            let body = error_json(&e);
            if self.stream {
                self.begin_event("error");
                self.buf.extend_from_slice(b",\"error\":");
                let _ = serde_json::to_writer((&mut self.buf).writer(), &body["error"]);
                self.end_event(out);
            } else {
                let _ = serde_json::to_writer((&mut self.buf).writer(), &body);
                out.push(Output::Bytes(self.buf.split().freeze()));
            }
            return;
        }
        let reason = self.stop_reason();
        if self.stream {
            self.ensure_started(out);
            self.begin_event("message_delta");
            let _ = write!((&mut self.buf).writer(), ",\"delta\":{{\"stop_reason\":\"{reason}\",\"stop_sequence\":");
            let _ = serde_json::to_writer((&mut self.buf).writer(), &self.stopped_by);
            self.buf.extend_from_slice(b"},\"usage\":");
            let usage = self.usage();
            let _ = serde_json::to_writer((&mut self.buf).writer(), &usage);
            self.end_event(out);
            self.begin_event("message_stop");
            self.end_event(out);
        } else {
            let m = json!({"id": self.ctx.message_id, "type": "message", "role": "assistant", "model": self.model,
                           "content": std::mem::take(&mut self.content), "stop_reason": reason, "stop_sequence": self.stopped_by, "usage": self.usage()});
            let _ = serde_json::to_writer((&mut self.buf).writer(), &m);
            out.push(Output::Bytes(self.buf.split().freeze()));
        }
    }
}

impl MessagesEncoder {
    /// Answer text: into the open text block, or a new one.
    fn text(&mut self, t: String, out: &mut Vec<Output>) {
        match &mut self.open {
            Some(Block::Text { text }) => text.push_str(&t),
            _ => self.start(Block::Text { text: t.clone() }, out),
        }
        if self.stream {
            self.delta("text_delta", "text", &t, out);
        }
    }
}

impl Encoder for MessagesEncoder {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        let Some(ev) = self.ending.note(ev, out) else { return };
        if self.stopped_by.is_some() {
            return; // after a stop sequence nothing more is the answer
        }
        match ev {
            Event::Reasoning(_, t) => {
                match &mut self.open {
                    Some(Block::Thinking { text }) => text.push_str(&t),
                    _ => self.start(Block::Thinking { text: t.clone() }, out),
                }
                if self.stream {
                    self.delta("thinking_delta", "thinking", &t, out);
                }
            }
            Event::Content(t) if self.stops.is_empty() => self.text(t, out),
            Event::Content(t) => match self.stops.push(&t) {
                (pass, None) => {
                    if !pass.is_empty() {
                        self.text(pass, out);
                    }
                }
                (pass, Some(stop)) => {
                    if !pass.is_empty() {
                        self.text(pass, out);
                    }
                    self.stopped_by = Some(stop);
                    out.push(Output::Abort); // read no more of the upstream: the answer is over
                }
            },
            Event::ClientToolCall { id, name, .. } => {
                self.saw_tool_use = true;
                self.start(Block::ToolUse { id: tool_use_id(&id), name, json: String::new(), check: InputJson::default() }, out);
            }
            Event::ClientToolArgs { args, .. } => {
                let Some(Block::ToolUse { json, check, .. }) = &mut self.open else { return };
                // `input` is an object, and clients parse what they join: the arguments as
                // the model wrote them while they are the start of one, then closed where
                // they stopped being one (another JSON value, the bridge streams any, is `{}`).
                let (ok, closing) = check.feed(&args);
                json.push_str(&args[..ok]);
                if let Some(c) = &closing {
                    json.push_str(c);
                }
                if self.stream {
                    if ok > 0 {
                        self.delta("input_json_delta", "partial_json", &args[..ok], out);
                    }
                    if let Some(c) = closing {
                        self.delta("input_json_delta", "partial_json", &c, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_end(&mut self, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        self.done = true;
        self.finish(out);
    }

    fn deadline(&self) -> Option<Instant> {
        (self.stream && !self.done).then(|| self.last_write + PING)
    }

    fn on_deadline(&mut self, out: &mut Vec<Output>) {
        self.ensure_started(out);
        self.begin_event("ping");
        self.end_event(out);
    }

    fn stats(&self, st: &mut Stats) {
        st.first_output = st.first_output.or(self.ending.first_output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ApiError;
    use crate::testing::{assemble_messages, messages_meta};

    fn encoder(stream: bool) -> MessagesEncoder {
        let meta = messages_meta(stream);
        let crate::api::ApiContext::Messages(ctx) = meta.api.clone() else { panic!() };
        MessagesEncoder::new(&meta, ctx)
    }

    fn wire(out: &[Output]) -> Vec<u8> {
        out.iter().flat_map(|e| if let Output::Bytes(b) = e { b.to_vec() } else { Vec::new() }).collect()
    }

    #[test]
    fn thinking_then_a_preamble_then_a_call_are_three_blocks_and_the_signature_opens() {
        let mut enc = encoder(true);
        let ctx = enc.ctx.clone();
        let mut out = Vec::new();
        for ev in [
            Event::Reasoning(crate::event::ReasoningField::ReasoningContent, "Need ".into()),
            Event::Reasoning(crate::event::ReasoningField::ReasoningContent, "the tool.".into()),
            Event::Content("Checking.".into()),
            Event::ClientToolCall { index: 0, id: "call_abc".into(), name: "Bash".into() },
            Event::ClientToolArgs { index: 0, args: "{\"command\":".into() },
            Event::ClientToolArgs { index: 0, args: "\"ls\"}".into() },
            Event::Finish(FinishReason::ToolCalls),
        ] {
            enc.on_event(ev, &mut out);
        }
        enc.on_deadline(&mut out); // a ping in between is fine
        enc.on_end(&mut out);
        let body = wire(&out);
        let a = assemble_messages(&body).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&body)));
        assert_eq!((a.reasoning.as_str(), a.content.as_str(), a.finish.as_str()), ("Need the tool.", "Checking.", "tool_use"));
        assert_eq!(a.tool_calls, [("toolu_abc".to_string(), "Bash".to_string(), "{\"command\":\"ls\"}".to_string())]);
        let text = String::from_utf8_lossy(&body);
        let sig_line = text.lines().find(|l| l.contains("signature_delta")).unwrap();
        let v: Value = serde_json::from_str(sig_line.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(ctx.sealer.open(&ctx.scope, v["delta"]["signature"].as_str().unwrap()).as_deref(), Some("Need the tool."));
    }

    #[test]
    fn a_failure_is_an_error_event_streamed_and_an_anthropic_error_not() {
        let mut enc = encoder(true);
        let mut out = Vec::new();
        enc.on_event(Event::Content("Hi".into()), &mut out);
        enc.on_event(Event::Error(ApiError::upstream("upstream broke")), &mut out);
        enc.on_end(&mut out);
        let text = String::from_utf8_lossy(&wire(&out)).into_owned();
        assert!(text.ends_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream broke\"}}\n\n"), "{text}");
        assert!(!text.contains("message_stop"));
        let mut enc = encoder(false);
        let mut out = Vec::new();
        enc.on_event(Event::Error(ApiError::new(503, "server_error", None, "busy")), &mut out);
        enc.on_end(&mut out);
        let v: Value = serde_json::from_slice(&wire(&out)).unwrap();
        assert_eq!(v, json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}));
    }

    /// Found by the Messages property test: arguments the model wrote as no JSON (`{é}`)
    /// were streamed as written, and the client could not parse the input it joined.
    #[test]
    fn a_tool_input_that_is_not_json_reaches_the_client_closed_where_it_broke() {
        for stream in [true, false] {
            let mut enc = encoder(stream);
            let mut out = Vec::new();
            for ev in [
                Event::ClientToolCall { index: 0, id: "call_abc".into(), name: "f".into() },
                Event::ClientToolArgs { index: 0, args: "{\"a\":1 ".into() },
                Event::ClientToolArgs { index: 0, args: "é, \"b\": 2}".into() },
                Event::Finish(FinishReason::ToolCalls),
            ] {
                enc.on_event(ev, &mut out);
            }
            enc.on_end(&mut out);
            let body = wire(&out);
            let input = if stream {
                let a = assemble_messages(&body).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&body)));
                serde_json::from_str::<Value>(&a.tool_calls[0].2).unwrap()
            } else {
                serde_json::from_slice::<Value>(&body).unwrap()["content"][0]["input"].clone()
            };
            assert_eq!(input, json!({"a": 1}), "stream: {stream}");
        }
    }

    #[test]
    fn a_stop_sequence_ends_the_answer_before_it_names_it_and_stops_reading_the_upstream() {
        let env = crate::api::EdgeEnv::standalone();
        let d = crate::work::now(crate::api::ClientApi::Messages.decode(
            json!({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}], "stream": true, "stop_sequences": ["END", "\n\nHuman:"]}),
            &env,
        ))
        .unwrap();
        assert!(d.chat().get("stop").is_none(), "the encoder applies them, so it knows which one");
        let meta = RequestMeta::new("m", true);
        let crate::api::ApiContext::Messages(ctx) = d.ctx else { panic!() };
        let mut enc = MessagesEncoder::new(&meta, ctx);
        let mut out = Vec::new();
        for t in ["Hello E", "N", "ding soon. E", "ND and more", " ignored"] {
            enc.on_event(Event::Content(t.into()), &mut out);
        }
        assert!(out.iter().any(|e| matches!(e, Output::Abort)));
        enc.on_end(&mut out);
        let body = wire(&out);
        let a = assemble_messages(&body).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&body)));
        assert_eq!((a.content.as_str(), a.finish.as_str()), ("Hello ENding soon. ", "stop_sequence"));
        assert!(String::from_utf8_lossy(&body).contains("\"stop_sequence\":\"END\""));
    }

    #[test]
    fn an_answer_cut_by_length_stops_with_max_tokens_and_not_streamed_is_one_message() {
        let mut enc = encoder(false);
        let mut out = Vec::new();
        enc.on_event(Event::Content("Hel".into()), &mut out);
        enc.on_event(Event::Finish(FinishReason::Length), &mut out);
        enc.on_event(Event::Usage(crate::Usage { prompt_tokens: 7, completion_tokens: 2, ..Default::default() }), &mut out);
        enc.on_end(&mut out);
        let v: Value = serde_json::from_slice(&wire(&out)).unwrap();
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["content"], json!([{"type": "text", "text": "Hel"}]));
        assert_eq!((v["usage"]["input_tokens"].as_u64(), v["usage"]["output_tokens"].as_u64()), (Some(7), Some(2)));
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    }
}
