//! The Chat Completions encoder: client events → `chat.completion.chunk` SSE or one
//! `chat.completion` JSON. `sse-encode` makes one for requests on a chat route.
//!
//! Streaming (`stream: true`): `chat.completion.chunk` SSE. The role chunk goes out right
//! before the first delta (so nothing reaches the client until there is something to show,
//! which keeps a retry possible until then); content, reasoning and tool calls each in chunks
//! of their own; one finish chunk (`length` if the upstream said so, else `tool_calls` if a
//! call went out, else `stop`); the usage chunk when asked; exactly one `data: [DONE]`.
//! An error ends the stream with `data: {"error":…}` and `[DONE]`.
//!
//! Non-streaming: one `chat.completion` JSON at the end.

use std::io::Write as _;

use bytes::{BufMut as _, BytesMut};
use serde_json::Value;

use crate::api::{Encoder, Ending, Output};
use crate::event::{Event, FinishReason, ReasoningField, Usage};
use crate::stage::{RequestMeta, Stats};

struct ToolCall {
    id: String,
    name: String,
    args: String,
}

pub struct ChatEncoder {
    stream: bool,
    include_usage: bool,
    completion_id: String,
    /// `data: {"id":…,"choices":[{"index":0,"delta":` — the same for every chunk.
    prefix: Vec<u8>,
    meta: RequestMeta,
    buf: BytesMut,
    role_sent: bool,
    /// How it ended, its usage, its first error, when output began.
    ending: Ending,
    done: bool,
    // Non-streaming accumulators.
    content: String,
    reasoning: Option<(ReasoningField, String)>,
    calls: Vec<ToolCall>,
    saw_tool_call: bool,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl ChatEncoder {
    pub fn new(meta: &RequestMeta, ctx: &super::Context) -> Self {
        let prefix = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"delta\":",
            json_str(&ctx.completion_id),
            meta.created,
            json_str(&meta.model)
        )
        .into_bytes();
        Self {
            stream: meta.stream,
            include_usage: ctx.include_usage,
            completion_id: ctx.completion_id.clone(),
            prefix,
            meta: meta.clone(),
            buf: BytesMut::with_capacity(512),
            role_sent: false,
            ending: Ending::default(),
            done: false,
            content: String::new(),
            reasoning: None,
            calls: Vec::new(),
            saw_tool_call: false,
        }
    }

    fn begin_chunk(&mut self) {
        self.buf.extend_from_slice(&self.prefix);
    }

    fn end_chunk(&mut self, finish: Option<FinishReason>, out: &mut Vec<Output>) {
        self.buf.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                self.buf.put_u8(b'"');
                self.buf.extend_from_slice(f.as_str().as_bytes());
                self.buf.put_u8(b'"');
            }
            None => self.buf.extend_from_slice(b"null"),
        }
        self.buf.extend_from_slice(b"}]}\n\n");
        self.emit(out);
    }

    /// Hands the buffered bytes on. A burst can grow the buffer while earlier frames are
    /// still unsent; don't keep a large one for the rest of the stream.
    fn emit(&mut self, out: &mut Vec<Output>) {
        out.push(Output::Bytes(self.buf.split().freeze()));
        if self.buf.capacity() > 16 << 10 {
            self.buf = BytesMut::with_capacity(512);
        }
    }

    fn write_str(&mut self, s: &str) {
        let _ = serde_json::to_writer((&mut self.buf).writer(), s);
    }

    fn ensure_role(&mut self, out: &mut Vec<Output>) {
        if !self.role_sent {
            self.role_sent = true;
            self.begin_chunk();
            self.buf.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
            self.end_chunk(None, out);
        }
    }

    /// A chunk whose delta is `{"<field>": <text>}`.
    fn text_chunk(&mut self, field: &str, text: &str, out: &mut Vec<Output>) {
        self.ensure_role(out);
        self.begin_chunk();
        self.buf.extend_from_slice(b"{\"");
        self.buf.extend_from_slice(field.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.write_str(text);
        self.buf.put_u8(b'}');
        self.end_chunk(None, out);
    }

    fn finish_reason(&self) -> FinishReason {
        match self.ending.finish {
            Some(FinishReason::Length) => FinishReason::Length,
            Some(FinishReason::ContentFilter) => FinishReason::ContentFilter,
            _ if self.saw_tool_call => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        }
    }

    fn finish_stream(&mut self, out: &mut Vec<Output>) {
        if let Some(err) = &self.ending.error {
            let body = err.to_json();
            self.buf.extend_from_slice(b"data: ");
            let _ = serde_json::to_writer((&mut self.buf).writer(), &body);
            self.buf.extend_from_slice(b"\n\n");
        } else {
            self.ensure_role(out);
            self.begin_chunk();
            self.buf.extend_from_slice(b"{}");
            let reason = self.finish_reason();
            self.end_chunk(Some(reason), out);
            if self.include_usage {
                if let Some(usage) = self.ending.usage.take().map(usage_json) {
                    let _ = write!(
                        (&mut self.buf).writer(),
                        "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
                        json_str(&self.completion_id),
                        self.meta.created,
                        json_str(&self.meta.model),
                        usage
                    );
                }
            }
        }
        self.buf.extend_from_slice(b"data: [DONE]\n\n");
        self.emit(out);
    }

    fn finish_json(&mut self, out: &mut Vec<Output>) {
        let body = if let Some(err) = &self.ending.error {
            err.to_json()
        } else {
            let mut message = serde_json::Map::new();
            message.insert("role".into(), "assistant".into());
            // OpenAI's schema requires it (null: no refusal).
            message.insert("refusal".into(), Value::Null);
            let content = std::mem::take(&mut self.content);
            // Beside tool_calls, no content is null; a preamble the bridge kept (`preambles =
            // "content"`) is the content.
            message.insert("content".into(), if content.is_empty() && !self.calls.is_empty() { Value::Null } else { Value::String(content) });
            if let Some((field, text)) = self.reasoning.take() {
                message.insert(field.as_str().into(), Value::String(text));
            }
            if !self.calls.is_empty() {
                let calls: Vec<Value> = self
                    .calls
                    .drain(..)
                    .map(|c| serde_json::json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.args}}))
                    .collect();
                message.insert("tool_calls".into(), Value::Array(calls));
            }
            let mut body = serde_json::json!({
                "id": self.completion_id,
                "object": "chat.completion",
                "created": self.meta.created,
                "model": self.meta.model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason().as_str()}],
            });
            if let Some(u) = self.ending.usage.take() {
                body["usage"] = usage_json(u);
            }
            body
        };
        let _ = serde_json::to_writer((&mut self.buf).writer(), &body);
        self.emit(out);
    }
}

impl Encoder for ChatEncoder {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        let Some(ev) = self.ending.note(ev, out) else { return };
        match ev {
            // Only tool-bridge's client events are shown: it is where markup is removed.
            Event::Content(t) => {
                if self.stream {
                    self.text_chunk("content", &t, out)
                } else {
                    self.content.push_str(&t)
                }
            }
            Event::Reasoning(field, t) => {
                if self.stream {
                    self.text_chunk(field.as_str(), &t, out)
                } else {
                    self.reasoning.get_or_insert_with(|| (field, String::new())).1.push_str(&t)
                }
            }
            Event::ClientToolCall { index, id, name } => {
                self.saw_tool_call = true;
                if self.stream {
                    self.ensure_role(out);
                    self.begin_chunk();
                    let _ = write!(
                        (&mut self.buf).writer(),
                        "{{\"tool_calls\":[{{\"index\":{index},\"id\":{},\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":\"\"}}}}]}}",
                        json_str(&id),
                        json_str(&name)
                    );
                    self.end_chunk(None, out);
                } else {
                    self.calls.push(ToolCall { id, name, args: String::new() });
                }
            }
            Event::ClientToolArgs { index, args } => {
                if self.stream {
                    self.ensure_role(out);
                    self.begin_chunk();
                    let _ = write!((&mut self.buf).writer(), "{{\"tool_calls\":[{{\"index\":{index},\"function\":{{\"arguments\":");
                    self.write_str(&args);
                    self.buf.extend_from_slice(b"}}]}");
                    self.end_chunk(None, out);
                } else if let Some(c) = self.calls.get_mut(index as usize) {
                    c.args.push_str(&args);
                }
            }
            _ => {}
        }
    }

    fn stats(&self, st: &mut Stats) {
        st.first_output = st.first_output.or(self.ending.first_output);
    }

    fn on_end(&mut self, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        self.done = true;
        if self.stream {
            self.finish_stream(out)
        } else {
            self.finish_json(out)
        }
    }
}

/// The usage as OpenAI's schema has it: the three counts, and a details object for each
/// detail the server counted. Once per answer.
fn usage_json(u: Usage) -> Value {
    let mut v = serde_json::json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total()});
    if let Some(n) = u.cached_tokens {
        v["prompt_tokens_details"] = serde_json::json!({ "cached_tokens": n });
    }
    if let Some(n) = u.reasoning_tokens {
        v["completion_tokens_details"] = serde_json::json!({ "reasoning_tokens": n });
    }
    v
}
