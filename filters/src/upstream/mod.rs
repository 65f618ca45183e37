//! Decoding what an upstream sends — an SSE stream of `chat.completion.chunk`s (or of legacy
//! `text_completion` chunks, or llama.cpp's native `/completion` chunks), or one
//! `chat.completion` JSON — into [`Event`]s.
//!
//! Tolerant by design: unknown fields are ignored, comment lines and other event types are
//! skipped, an undecodable chunk becomes an error event, and a stream that ends without a
//! finish reason or `[DONE]` ends with an error event, never silently.

pub mod chat_request;
pub mod completion_request;
pub mod overflow;

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{ApiError, Event, FinishReason, UpstreamToolCall, Usage};

/// A line longer than this is cut off and reported: it bounds memory per stream.
pub const MAX_LINE: usize = 4 << 20;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    // llama.cpp's native `/completion` stream: token ids with their text, and `stop` on the
    // last chunk.
    #[serde(default)]
    tokens: Option<Vec<u32>>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    stop: Option<bool>,
    #[serde(default, borrow)]
    stop_type: Option<Cow<'a, str>>,
    #[serde(default)]
    tokens_predicted: Option<u64>,
    #[serde(default)]
    tokens_evaluated: Option<u64>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    message: Option<Delta<'a>>,
    /// Legacy completions: the raw text (special tokens kept when the proxy rendered).
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallChunk>>,
}

#[derive(Deserialize)]
struct ToolCallChunk {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionChunk>,
}

#[derive(Deserialize)]
struct FunctionChunk {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

/// Turns one decoded chunk (or whole completion) into events.
fn chunk_events(chunk: Chunk<'_>, out: &mut Vec<Event>, saw_finish: &mut bool) {
    if let Some(err) = chunk.error {
        // A prompt that does not fit is the client's to shorten: said as each API says it.
        if let Some(o) = overflow::in_error(&err) {
            out.push(Event::Error(ApiError::context_overflow(o, "messages")));
            return;
        }
        let msg = err.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| err.to_string());
        out.push(Event::Error(ApiError::upstream(format!("upstream error: {msg}"))));
        return;
    }
    // llama.cpp's native stream: ids straight to the parser; the last chunk says why it stopped.
    if let Some(ids) = chunk.tokens.filter(|t| !t.is_empty()) {
        out.push(Event::UpstreamTokens { ids, text: chunk.content.map(Cow::into_owned).unwrap_or_default() });
    }
    if chunk.stop == Some(true) {
        *saw_finish = true;
        out.push(Event::Finish(if chunk.stop_type.as_deref() == Some("limit") { FinishReason::Length } else { FinishReason::Stop }));
        if let (Some(p), Some(c)) = (chunk.tokens_evaluated, chunk.tokens_predicted) {
            out.push(Event::Usage(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: Some(p + c), ..Usage::default() }));
        }
    }
    // Only the first choice: the proxy asks for n=1 semantics.
    if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
        if let Some(t) = choice.text.filter(|t| !t.is_empty()) {
            out.push(Event::Upstream(t.into_owned()));
        }
        if let Some(d) = choice.delta.or(choice.message) {
            if let Some(r) = d.reasoning_content.or(d.reasoning).filter(|r| !r.is_empty()) {
                out.push(Event::UpstreamReasoning(r.into_owned()));
            }
            if let Some(c) = d.content.filter(|c| !c.is_empty()) {
                out.push(Event::Upstream(c.into_owned()));
            }
            for (i, tc) in d.tool_calls.into_iter().flatten().enumerate() {
                let (name, arguments) = match tc.function {
                    Some(f) => (
                        f.name,
                        f.arguments.map(|a| match a {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(), // Ollama sends an object
                        }),
                    ),
                    None => (None, None),
                };
                out.push(Event::UpstreamToolCall(UpstreamToolCall { index: tc.index.unwrap_or(i as u32), id: tc.id, name, arguments, client_id: None }));
            }
        }
        if let Some(f) = choice.finish_reason {
            *saw_finish = true;
            out.push(Event::Finish(FinishReason::parse(&f)));
        }
    }
    if let Some(u) = chunk.usage.filter(|u| u.is_object()) {
        out.push(Event::Usage(usage_of(&u)));
    }
}

/// An OpenAI-shaped `usage` object's counts (a count that is not a whole number is none:
/// servers send `null` details).
fn usage_of(u: &serde_json::Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(serde_json::Value::as_u64);
    Usage {
        prompt_tokens: n("/prompt_tokens").unwrap_or(0),
        completion_tokens: n("/completion_tokens").unwrap_or(0),
        total_tokens: n("/total_tokens"),
        cached_tokens: n("/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    }
}

/// Incremental SSE decoder for an upstream `text/event-stream` body.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// `data:` lines of the event being read, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    skipping_long_line: bool,
    saw_done: bool,
    saw_finish: bool,
    saw_error: bool,
    /// A chunk of a completion was seen (one with choices, tokens, usage or an error).
    saw_chunk: bool,
}

/// Whether a chunk is one of a completion at all (else the upstream is not what the
/// endpoint promises: a 200 of something else).
fn is_completion(chunk: &Chunk<'_>) -> bool {
    chunk.choices.is_some() || chunk.tokens.is_some() || chunk.content.is_some() || chunk.stop.is_some() || chunk.error.is_some() || chunk.usage.is_some()
}

const NOT_A_COMPLETION: &str = "the upstream answered 200, but not with a chat completion (no choices): is `url` the model server's /v1?";

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed body bytes; complete events are decoded into `out`.
    ///
    /// A line that lies whole in `bytes` is read in place, and a `data:` value that is a
    /// complete chunk is parsed where it lies: the usual event (one line, one JSON) is never
    /// copied. Only a line split across reads goes through `line`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) {
        // Nothing after `[DONE]` or the first error counts: the stream is over.
        while !bytes.is_empty() && !self.saw_done && !self.saw_error {
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    let whole = self.line.is_empty() && !self.skipping_long_line;
                    if whole {
                        if nl > MAX_LINE {
                            self.error(out, "upstream sent an SSE line longer than 4 MiB");
                            return;
                        }
                        let line = &bytes[..nl];
                        self.on_line(line.strip_suffix(b"\r").unwrap_or(line), out);
                    } else {
                        self.take_line_part(&bytes[..nl], out);
                        if self.skipping_long_line {
                            self.skipping_long_line = false;
                        } else {
                            let mut line = std::mem::take(&mut self.line);
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            self.on_line(&line, out);
                            line.clear();
                            self.line = line;
                        }
                    }
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    self.take_line_part(bytes, out);
                    bytes = &[];
                }
            }
        }
    }

    fn take_line_part(&mut self, part: &[u8], out: &mut Vec<Event>) {
        if self.skipping_long_line {
            return;
        }
        if self.line.len() + part.len() > MAX_LINE {
            self.line.clear();
            self.skipping_long_line = true;
            self.error(out, "upstream sent an SSE line longer than 4 MiB");
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            // The usual event: one data line holding one whole chunk, parsed where it lies.
            if !self.has_data && value.first() == Some(&b'{') {
                if let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(value) {
                    self.take_chunk(chunk, out);
                    return;
                }
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() > MAX_LINE {
                self.data.clear();
                self.has_data = false;
                self.error(out, "upstream sent an SSE event larger than 4 MiB");
                return;
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
            // Servers that forget the blank line between events still put one JSON per line:
            // take the event as soon as it is a complete chunk (parsed once) or [DONE].
            if self.data.trim_ascii() == b"[DONE]" {
                self.dispatch(out);
            } else {
                let data = std::mem::take(&mut self.data);
                if let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(&data) {
                    self.take_chunk(chunk, out);
                    self.has_data = false;
                    self.data = data;
                    self.data.clear();
                } else {
                    self.data = data; // not complete yet: wait for more lines or the blank line
                }
            }
        }
        // event:, id:, retry: carry nothing we use.
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            if !self.saw_chunk && !self.saw_error {
                self.error(out, NOT_A_COMPLETION);
            }
            self.saw_done = true;
        } else if !trimmed.is_empty() {
            match serde_json::from_slice::<Chunk<'_>>(trimmed) {
                Ok(chunk) => self.take_chunk(chunk, out),
                Err(e) => self.error(out, &format!("upstream sent an invalid chunk: {e}")),
            }
        }
        self.data = data;
        self.data.clear();
    }

    fn take_chunk(&mut self, chunk: Chunk<'_>, out: &mut Vec<Event>) {
        self.saw_chunk |= is_completion(&chunk);
        let before = out.len();
        chunk_events(chunk, out, &mut self.saw_finish);
        if out[before..].iter().any(|e| matches!(e, Event::Error(_))) {
            self.saw_error = true;
        }
    }

    fn error(&mut self, out: &mut Vec<Event>, msg: &str) {
        self.saw_error = true;
        out.push(Event::Error(ApiError::upstream(msg)));
    }

    /// Has the upstream said it is done (`[DONE]`)?
    pub fn is_done(&self) -> bool {
        self.saw_done
    }

    /// Has the upstream given a finish reason (its answer is complete)?
    pub fn saw_finish(&self) -> bool {
        self.saw_finish
    }

    /// Has anything gone wrong that ends the stream?
    pub fn saw_error(&self) -> bool {
        self.saw_error
    }

    /// The body ended. A stream that stopped without a finish reason or `[DONE]` was cut.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if self.saw_done || self.saw_error {
            return;
        }
        if !self.line.is_empty() && !self.skipping_long_line {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, out);
        }
        if !self.saw_error {
            self.dispatch(out);
        }
        if !self.saw_done && !self.saw_finish && !self.saw_error {
            self.error(out, "upstream closed the stream before it finished");
        }
    }
}

/// Decodes a whole non-streamed `chat.completion` body.
pub fn decode_completion(body: &[u8], out: &mut Vec<Event>) {
    match serde_json::from_slice::<Chunk<'_>>(body) {
        Ok(chunk) if !is_completion(&chunk) => out.push(Event::Error(ApiError::upstream(NOT_A_COMPLETION))),
        Ok(chunk) => {
            let mut saw_finish = false;
            chunk_events(chunk, out, &mut saw_finish);
            if !saw_finish && !out.iter().any(|e| matches!(e, Event::Error(_))) {
                out.push(Event::Finish(FinishReason::Stop));
            }
        }
        Err(e) => out.push(Event::Error(ApiError::upstream(format!("upstream sent invalid JSON: {e}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parts: &[&[u8]]) -> Vec<Event> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for p in parts {
            d.push(p, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn llama_cpp_framing() {
        let ev = decode(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"<|chan\"}}]}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"nel|>\"},\"finish_reason\":null}],\"timings\":{}}\n",
            b"\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            ev,
            vec![
                Event::Upstream("<|chan".into()),
                Event::Upstream("nel|>".into()),
                Event::Finish(FinishReason::Length),
                Event::Usage(Usage { total_tokens: Some(3), ..Usage::default() }),
            ]
        );
    }

    #[test]
    fn split_anywhere_and_crlf() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"h\xc3\xa9\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        for cut in 0..body.len() {
            let ev = decode(&[&body[..cut], &body[cut..]]);
            assert_eq!(ev, vec![Event::Upstream("hé".into())], "cut at {cut}");
        }
    }

    #[test]
    fn a_200_that_is_not_a_completion_is_an_error() {
        let mut out = Vec::new();
        decode_completion(br#"{"object": "list", "data": []}"#, &mut out);
        assert!(matches!(&out[..], [Event::Error(e)] if e.message.contains("not with a chat completion")), "{out:?}");
        let ev = decode(&[b"data: {\"hello\": 1}\n\ndata: [DONE]\n\n"]);
        assert!(matches!(&ev[..], [Event::Error(e)] if e.message.contains("not with a chat completion")), "{ev:?}");
    }

    #[test]
    fn in_band_error_and_truncation() {
        let ev = decode(&[b"data: {\"error\":{\"message\":\"boom\"}}\n\n"]);
        assert!(matches!(&ev[..], [Event::Error(e)] if e.message.contains("boom")));
        let ev = decode(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"]);
        assert!(matches!(ev.last(), Some(Event::Error(e)) if e.message.contains("before it finished")));
        let ev = decode(&[b"data: {not json}\n\n"]);
        assert!(matches!(&ev[0], Event::Error(e) if e.message.contains("invalid chunk")));
    }
}

#[cfg(test)]
mod regressions {
    use super::*;

    /// Found by the `sse_decode` fuzz target: after an invalid chunk the decoder went on
    /// decoding, so one stream produced several error events and text after its error.
    #[test]
    fn the_first_error_ends_the_stream() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        d.push(b"data: {bad\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\ndata: {worse\n\n", &mut out);
        d.finish(&mut out);
        assert!(matches!(&out[..], [Event::Error(_)]), "{out:?}");
    }
}
