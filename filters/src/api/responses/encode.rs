//! Client events → Responses events (`stream: true`) or one Response object.
//!
//! Streamed, in this order: `response.created`, `response.in_progress` (both right before
//! the first item, so nothing reaches the client until there is something to show and a
//! retry stays possible until then); per output item `response.output_item.added` → its
//! deltas → its `.done` events → `response.output_item.done`; then exactly one terminal
//! event: `response.completed`, `response.incomplete` (the answer was cut: `length`) or
//! `response.failed` (an error after the stream began). No `[DONE]`. While nothing is
//! written for [`HEARTBEAT`] (a long prefill), a `response.in_progress` goes out.
//!
//! Items: reasoning → a `reasoning` item (`reasoning_text` content, `summary: []`); answer
//! text → a `message` item with one `output_text` part; a preamble is answer text before a
//! call, so it is a message item of its own; each call → a `function_call` item (or a
//! `custom_tool_call`, or a namespaced `function_call`, per the request's tools).
//!
//! The item lifecycle is the [`Item`] state: the open item carries its id and what it has
//! accumulated; a different kind of event closes it (its `.done` events) and opens the next.
//! Invariants: `sequence_number` counts every event from 0; every item is added once and done
//! once, at `output_index` = its place in `response.output`; `response.completed` carries
//! exactly the items streamed.
//!
//! Per token: one event written into a reused buffer, the text appended to the open item;
//! no JSON tree, no lookup.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use serde_json::{json, Map, Value};

use super::{Context, ToolOrigin};
use crate::api::{Encoder, Ending, Output};
use crate::event::{ApiError, Event, FinishReason};
use crate::stage::{random_id, RequestMeta, Stats};

/// Longest silence on a started stream before a `response.in_progress` heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The open output item.
enum Item {
    Reasoning { id: String, text: String },
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, args: String },
}

pub struct ResponsesEncoder {
    ctx: Arc<Context>,
    stream: bool,
    created: u64,
    model: String,
    buf: BytesMut,
    seq: u64,
    /// `response.created` and `response.in_progress` went out.
    started: bool,
    open: Option<Item>,
    /// The finished items, in order: `response.output`.
    output: Vec<Value>,
    /// How it ended, its usage, its first error, when output began.
    ending: Ending,
    done: bool,
    last_write: Instant,
}

fn json_str(buf: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(buf.writer(), s);
}

impl ResponsesEncoder {
    pub fn new(meta: &RequestMeta, ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            stream: meta.stream,
            created: meta.created,
            model: meta.model.clone(),
            buf: BytesMut::with_capacity(512),
            seq: 0,
            started: false,
            open: None,
            output: Vec::new(),
            ending: Ending::default(),
            done: false,
            last_write: Instant::now(),
        }
    }

    /// Opens an event: `event: TYPE` and `data: {"type":TYPE,"sequence_number":N`; the caller
    /// writes the rest of its fields (each starting with a comma) and calls [`end_event`].
    fn begin_event(&mut self, ty: &str) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(ty.as_bytes());
        self.buf.extend_from_slice(b"\ndata: {\"type\":\"");
        self.buf.extend_from_slice(ty.as_bytes());
        let _ = write!((&mut self.buf).writer(), "\",\"sequence_number\":{}", self.seq);
        self.seq += 1;
    }

    fn end_event(&mut self, out: &mut Vec<Output>) {
        self.buf.extend_from_slice(b"}\n\n");
        out.push(Output::Bytes(self.buf.split().freeze()));
        if self.buf.capacity() > 16 << 10 {
            self.buf = BytesMut::with_capacity(512);
        }
        self.last_write = Instant::now();
    }

    /// An event whose other fields are `key: value` pairs.
    fn event(&mut self, ty: &str, fields: &[(&str, &Value)], out: &mut Vec<Output>) {
        self.begin_event(ty);
        for (k, v) in fields {
            self.buf.put_u8(b',');
            json_str(&mut self.buf, k);
            self.buf.put_u8(b':');
            let _ = serde_json::to_writer((&mut self.buf).writer(), v);
        }
        self.end_event(out);
    }

    /// The Response object with `status`, the items so far and the request's echo.
    fn response(&self, status: &str) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), self.ctx.response_id.clone().into());
        r.insert("object".into(), "response".into());
        r.insert("created_at".into(), self.created.into());
        r.insert("status".into(), status.into());
        r.insert("model".into(), self.model.clone().into());
        r.insert("output".into(), Value::Array(self.output.clone()));
        r.insert("error".into(), Value::Null);
        r.insert("incomplete_details".into(), Value::Null);
        for (k, v) in &self.ctx.echo {
            r.insert(k.clone(), v.clone());
        }
        r.insert("completed_at".into(), Value::Null);
        // Zeros until the answer ends: both schemas want a usage object (neither a null nor
        // its absence satisfies both).
        r.insert("usage".into(), usage_json(0, 0, 0, 0, 0));
        Value::Object(r)
    }

    fn ensure_started(&mut self, out: &mut Vec<Output>) {
        if self.started || !self.stream {
            return;
        }
        self.started = true;
        let r = self.response("in_progress");
        self.event("response.created", &[("response", &r)], out);
        self.event("response.in_progress", &[("response", &r)], out);
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    /// `"item_id":…,"output_index":…` (and `"content_index":0` for content events).
    fn item_ref(&mut self, id: &str, content: bool) {
        self.buf.extend_from_slice(b",\"item_id\":\"");
        self.buf.extend_from_slice(id.as_bytes());
        let _ = write!((&mut self.buf).writer(), "\",\"output_index\":{}", self.output.len());
        if content {
            self.buf.extend_from_slice(b",\"content_index\":0");
        }
    }

    fn open_item(&mut self, item: Item, out: &mut Vec<Output>) {
        self.close(out);
        if self.stream {
            self.ensure_started(out);
            let added = self.item_json(&item, "in_progress", false);
            let idx = Value::from(self.output_index());
            self.event("response.output_item.added", &[("output_index", &idx), ("item", &added)], out);
            let part = match &item {
                Item::Reasoning { .. } => Some(json!({"type": "reasoning_text", "text": ""})),
                Item::Message { .. } => Some(json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})),
                Item::Call { .. } => None,
            };
            if let (Some(part), Some(id)) = (part, item_id(&item)) {
                let id = Value::from(id);
                let zero = Value::from(0);
                self.event("response.content_part.added", &[("item_id", &id), ("output_index", &idx), ("content_index", &zero), ("part", &part)], out);
            }
        }
        self.open = Some(item);
    }

    /// The item as `response.output` holds it; `with_content` false for the `added` event
    /// (its content parts are announced after it).
    fn item_json(&self, item: &Item, status: &str, with_content: bool) -> Value {
        match item {
            Item::Reasoning { id, text } => {
                let content = if with_content { json!([{"type": "reasoning_text", "text": text}]) } else { json!([]) };
                let mut v = json!({"type": "reasoning", "id": id, "summary": [], "content": content});
                if let Some(sealer) = &self.ctx.seal {
                    // Sealed once, when the item is done; `added` says null, as OpenAI does.
                    // Open Responses has no null for it: left out until it is sealed.
                    if with_content && status == "completed" {
                        v["encrypted_content"] = sealer.seal(&self.ctx.scope, text).into();
                    }
                }
                v
            }
            Item::Message { id, text } => {
                let content = if with_content { json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]) } else { json!([]) };
                json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
            }
            Item::Call { id, call_id, name, args } => match self.ctx.tools.get(name) {
                Some(ToolOrigin::Custom) => {
                    let input =
                        serde_json::from_str::<Value>(args).ok().and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_owned)).unwrap_or_default();
                    json!({"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name, "input": input, "status": status})
                }
                Some(ToolOrigin::Namespaced { namespace, name }) => {
                    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "namespace": namespace, "arguments": args, "status": status})
                }
                None => json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": args, "status": status}),
            },
        }
    }

    /// Closes the open item: its `.done` events, and it joins `output`.
    fn close(&mut self, out: &mut Vec<Output>) {
        let Some(item) = self.open.take() else { return };
        let done = self.item_json(&item, "completed", true);
        if self.stream {
            let idx = Value::from(self.output_index());
            let zero = Value::from(0);
            match &item {
                Item::Reasoning { id, text } => {
                    let (id, text) = (Value::from(id.as_str()), Value::from(text.as_str()));
                    self.event("response.reasoning_text.done", &[("item_id", &id), ("output_index", &idx), ("content_index", &zero), ("text", &text)], out);
                    let part = json!({"type": "reasoning_text", "text": text});
                    self.event("response.content_part.done", &[("item_id", &id), ("output_index", &idx), ("content_index", &zero), ("part", &part)], out);
                }
                Item::Message { id, text } => {
                    let (id, text) = (Value::from(id.as_str()), Value::from(text.as_str()));
                    self.event(
                        "response.output_text.done",
                        &[("item_id", &id), ("output_index", &idx), ("content_index", &zero), ("text", &text), ("logprobs", &json!([]))],
                        out,
                    );
                    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                    self.event("response.content_part.done", &[("item_id", &id), ("output_index", &idx), ("content_index", &zero), ("part", &part)], out);
                }
                Item::Call { id, args, .. } => {
                    let id = Value::from(id.as_str());
                    if matches!(done["type"].as_str(), Some("custom_tool_call")) {
                        // Its input is whole only here (the model writes it as JSON): no deltas.
                        let input = done.get("input").cloned().unwrap_or_default();
                        self.event("response.custom_tool_call_input.done", &[("item_id", &id), ("output_index", &idx), ("input", &input)], out);
                    } else {
                        let (args, name) = (Value::from(args.as_str()), done.get("name").cloned().unwrap_or_default());
                        self.event(
                            "response.function_call_arguments.done",
                            &[("item_id", &id), ("output_index", &idx), ("name", &name), ("arguments", &args)],
                            out,
                        );
                    }
                }
            }
            self.event("response.output_item.done", &[("output_index", &idx), ("item", &done)], out);
        }
        self.output.push(done);
    }

    /// A text delta of the open reasoning or message item.
    fn delta(&mut self, ty: &str, t: &str, out: &mut Vec<Output>) {
        let id = match &self.open {
            Some(Item::Reasoning { id, .. } | Item::Message { id, .. }) => id.clone(),
            _ => return,
        };
        self.begin_event(ty);
        self.item_ref(&id, true);
        self.buf.extend_from_slice(b",\"delta\":");
        json_str(&mut self.buf, t);
        if ty == "response.output_text.delta" {
            self.buf.extend_from_slice(b",\"logprobs\":[]");
        }
        self.end_event(out);
    }

    fn usage(&self) -> Value {
        let u = self.ending.usage.unwrap_or_default();
        usage_json(u.prompt_tokens, u.cached_tokens.unwrap_or(0), u.completion_tokens, u.reasoning_tokens.unwrap_or(0), u.total())
    }

    fn finish(&mut self, out: &mut Vec<Output>) {
        self.close(out);
        if let Some(mut e) = self.ending.error.clone() {
            if e.overflow.is_some() {
                e.param = Some("input".into()); // Responses' conversation field
            }
            if !self.stream {
                let _ = serde_json::to_writer((&mut self.buf).writer(), &e.to_json());
                out.push(Output::Bytes(self.buf.split().freeze()));
                return;
            }
            self.ensure_started(out);
            let mut r = self.response("failed");
            r["error"] = json!({"code": error_code(&e), "message": e.message});
            r["usage"] = self.usage();
            self.event("response.failed", &[("response", &r)], out);
            return;
        }
        let cut = self.ending.finish == Some(FinishReason::Length);
        let mut r = self.response(if cut { "incomplete" } else { "completed" });
        if cut {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        } else {
            r["completed_at"] = crate::stage::unix_now().into();
        }
        r["usage"] = self.usage();
        self.store(&r);
        if self.stream {
            self.ensure_started(out);
            self.event(if cut { "response.incomplete" } else { "response.completed" }, &[("response", &r)], out);
        } else {
            let _ = serde_json::to_writer((&mut self.buf).writer(), &r);
            out.push(Output::Bytes(self.buf.split().freeze()));
        }
    }
}

impl ResponsesEncoder {
    /// Keeps the finished response with its conversation (`store`), for `GET
    /// /v1/responses/{id}` and `previous_response_id`. Once per response, never per token.
    fn store(&self, r: &Value) {
        let Some(storing) = &self.ctx.storing else { return };
        let stored = super::Stored { input: storing.input.clone(), response: r.clone() };
        if let Ok(v) = serde_json::to_string(&stored) {
            storing.store.put(&self.ctx.scope, std::slice::from_ref(&self.ctx.response_id), &v);
        }
    }
}

/// A Response's `usage`, with every field OpenAI's and Open Responses' schemas require.
fn usage_json(input: u64, cached: u64, output: u64, reasoning: u64, total: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    })
}

fn item_id(item: &Item) -> Option<&str> {
    match item {
        Item::Reasoning { id, .. } | Item::Message { id, .. } => Some(id),
        Item::Call { .. } => None,
    }
}

/// The Responses error code of a failure: Codex gives up on `context_length_exceeded` and
/// retries the others.
fn error_code(e: &ApiError) -> &'static str {
    if e.overflow.is_some() {
        return "context_length_exceeded";
    }
    let m = e.message.to_ascii_lowercase();
    if m.contains("context") && (m.contains("exceed") || m.contains("too long") || m.contains("length")) {
        "context_length_exceeded"
    } else if e.status == 429 || e.status == 503 {
        "rate_limit_exceeded"
    } else {
        "server_error"
    }
}

impl Encoder for ResponsesEncoder {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Output>) {
        if self.done {
            return;
        }
        let Some(ev) = self.ending.note(ev, out) else { return };
        match ev {
            Event::Reasoning(_, t) => {
                match &mut self.open {
                    Some(Item::Reasoning { text, .. }) => text.push_str(&t),
                    _ => self.open_item(Item::Reasoning { id: random_id("rs_", 24), text: t.clone() }, out),
                }
                if self.stream {
                    self.delta("response.reasoning_text.delta", &t, out);
                }
            }
            Event::Content(t) => {
                match &mut self.open {
                    Some(Item::Message { text, .. }) => text.push_str(&t),
                    _ => self.open_item(Item::Message { id: random_id("msg_", 24), text: t.clone() }, out),
                }
                if self.stream {
                    self.delta("response.output_text.delta", &t, out);
                }
            }
            Event::ClientToolCall { id, name, .. } => {
                self.open_item(Item::Call { id: random_id("fc_", 24), call_id: id, name, args: String::new() }, out);
            }
            Event::ClientToolArgs { args, .. } => {
                let Some(Item::Call { id, args: all, name, .. }) = &mut self.open else { return };
                all.push_str(&args);
                if self.stream && !matches!(self.ctx.tools.get(name.as_str()), Some(ToolOrigin::Custom)) {
                    let id = id.clone();
                    self.begin_event("response.function_call_arguments.delta");
                    self.item_ref(&id, false);
                    self.buf.extend_from_slice(b",\"delta\":");
                    json_str(&mut self.buf, &args);
                    self.end_event(out);
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
        (self.stream && !self.done).then(|| self.last_write + HEARTBEAT)
    }

    fn on_deadline(&mut self, out: &mut Vec<Output>) {
        if !self.started {
            self.ensure_started(out);
            return;
        }
        // A client that keeps the response as a snapshot (the Node SDK) replaces it with
        // this one: the open item is in it, with what it has so far.
        let mut r = self.response("in_progress");
        if let (Some(item), Some(output)) = (&self.open, r["output"].as_array_mut()) {
            output.push(self.item_json(item, "in_progress", true));
        }
        self.event("response.in_progress", &[("response", &r)], out);
    }

    fn stats(&self, st: &mut Stats) {
        st.first_output = st.first_output.or(self.ending.first_output);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assemble_responses, responses_meta};

    fn encoder(stream: bool) -> ResponsesEncoder {
        let meta = responses_meta(stream);
        let crate::api::ApiContext::Responses(ctx) = meta.api.clone() else { panic!() };
        ResponsesEncoder::new(&meta, ctx)
    }

    fn wire(out: &[Output]) -> Vec<u8> {
        out.iter().flat_map(|e| if let Output::Bytes(b) = e { b.to_vec() } else { Vec::new() }).collect()
    }

    #[test]
    fn a_silent_upstream_gets_in_progress_heartbeats_that_carry_the_open_item() {
        let mut enc = encoder(true);
        let mut out = Vec::new();
        assert!(enc.deadline().is_some_and(|d| d > Instant::now()), "a heartbeat is due later");
        enc.on_deadline(&mut out); // a long prefill: the stream starts
        enc.on_event(Event::Content("Hel".into()), &mut out);
        enc.on_deadline(&mut out); // silence in the middle of the answer
        enc.on_event(Event::Content("lo".into()), &mut out);
        enc.on_end(&mut out);
        let body = wire(&out);
        let text = String::from_utf8_lossy(&body).into_owned();
        let heartbeat = text.split("\n\n").filter(|e| e.starts_with("event: response.in_progress")).nth(1).expect("a second in_progress");
        assert!(heartbeat.contains("\"output\":[{\"type\":\"message\"") && heartbeat.contains("\"text\":\"Hel\""), "{heartbeat}");
        let a = assemble_responses(&body).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(a.content, "Hello");
        assert!(enc.deadline().is_none(), "no heartbeat after the end");
    }

    #[test]
    fn a_custom_tool_call_carries_its_input_string_and_a_namespaced_call_its_namespace() {
        let env = crate::api::EdgeEnv::standalone();
        let d = crate::work::now(crate::api::ClientApi::Responses.decode(
            serde_json::json!({"model": "m", "input": "x", "tools": [
                {"type": "custom", "name": "apply_patch"},
                {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn"}]}
            ]}),
            &env,
        ))
        .unwrap();
        let meta = RequestMeta::new("m", false);
        let crate::api::ApiContext::Responses(ctx) = d.ctx else { panic!() };
        let mut enc = ResponsesEncoder::new(&meta, ctx);
        let mut out = Vec::new();
        for ev in [
            Event::ClientToolCall { index: 0, id: "call_1".into(), name: "apply_patch".into() },
            Event::ClientToolArgs { index: 0, args: "{\"input\":\"*** Begin".into() },
            Event::ClientToolArgs { index: 0, args: " Patch\"}".into() },
            Event::ClientToolCall { index: 1, id: "call_2".into(), name: "agents__spawn".into() },
            Event::ClientToolArgs { index: 1, args: "{}".into() },
        ] {
            enc.on_event(ev, &mut out);
        }
        enc.on_end(&mut out);
        let r: Value = serde_json::from_slice(&wire(&out)).unwrap();
        assert_eq!(
            r["output"][0],
            json!({"type": "custom_tool_call", "id": r["output"][0]["id"], "call_id": "call_1", "name": "apply_patch", "input": "*** Begin Patch", "status": "completed"})
        );
        assert_eq!((r["output"][1]["name"].as_str(), r["output"][1]["namespace"].as_str()), (Some("spawn"), Some("agents")));
    }

    #[test]
    fn an_error_before_any_item_is_response_failed_after_created_and_an_http_error_when_not_streamed() {
        let mut enc = encoder(true);
        let mut out = Vec::new();
        enc.on_event(Event::Error(ApiError::upstream("the request exceeds the available context size")), &mut out);
        enc.on_end(&mut out);
        let body = wire(&out);
        let a = assemble_responses(&body).unwrap();
        assert_eq!(a.finish, "failed");
        assert!(String::from_utf8_lossy(&body).contains("\"code\":\"context_length_exceeded\""));
        let mut enc = encoder(false);
        let mut out = Vec::new();
        enc.on_event(Event::Error(ApiError::upstream("broken")), &mut out);
        enc.on_end(&mut out);
        let v: Value = serde_json::from_slice(&wire(&out)).unwrap();
        assert_eq!(v["error"]["message"], "broken");
    }
}
