//! The built-in simulated gpt-oss server, speaking llama.cpp's framing (raw Harmony in
//! `delta.content`, one SSE event per delta, `timings`, a finish chunk, a usage chunk,
//! `[DONE]`). Used by `demo`, the end-to-end tests and the SDK conformance suite.
//!
//! What it answers is scripted by the last user message:
//! - `scenario:NAME` picks a built-in script (`hello`, `weather`, `two-tools`, `slow`);
//! - a JSON object `{"mock": {…}}` is a script of its own (see [`Script`]);
//! - anything else gets `hello`.
//!
//! Like llama.cpp's gpt-oss chat template, it answers HTTP 500 to histories the template
//! refuses: an assistant tool-call turn with both content and reasoning, tool-call arguments
//! that are not JSON, a tool result with no earlier tool call.
//!
//! Scripts can fail on purpose (per attempt, counted by `key`): answer a status, close before
//! answering, cut or stall the stream, send an in-band error, end without `[DONE]`.
//! `GET /mock/stats` tells how many requests came and how many streams the client cancelled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::upstream::BoxError;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

#[derive(Default)]
pub struct MockState {
    /// The vocabulary: the raw completion endpoints read prompts as token ids and answer ids.
    pub enc: Option<openai_harmony::HarmonyEncoding>,
    /// Parse Harmony as llama-server does by default (`mock-upstream --parsed`): reasoning in
    /// `reasoning_content`, tool calls in `tool_calls` (ids without `call_`), the rest in
    /// `content`. Off: raw Harmony in `content`.
    pub parsed: bool,
    /// Close connections idle this long (`mock-upstream --idle-close-ms`).
    pub idle_close: Option<std::time::Duration>,
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Connections accepted, and those that carried a chat completion.
    connections: AtomicU64,
    chat_connections: Mutex<std::collections::HashSet<u64>>,
    attempts: Mutex<HashMap<String, u32>>,
    last_request: Mutex<Value>,
}

/// One failure, for one attempt.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer this HTTP status with an error body.
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    /// Close the connection without answering.
    #[serde(default)]
    pub close: bool,
    /// Wait this long before sending the response head.
    pub head_delay_ms: Option<u64>,
    /// After this many deltas: drop the connection mid-body.
    pub cut_after: Option<usize>,
    /// After this many deltas: send nothing more, keep the connection open.
    pub stall_after: Option<usize>,
    /// After this many deltas: send an in-band `data: {"error":…}` and close, no `[DONE]`.
    pub error_after: Option<usize>,
    /// After this many deltas: end the body cleanly with no finish and no `[DONE]`.
    pub truncate_after: Option<usize>,
    /// After this many deltas: send a chunk that is not JSON.
    pub invalid_after: Option<usize>,
    /// After the last frame: keep the connection open (without `[DONE]`) until the client goes.
    #[serde(default)]
    pub linger: bool,
}

/// A scripted answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Deltas: a string is `{"content": s}`; an object is sent as the delta itself.
    #[serde(default)]
    pub deltas: Vec<Value>,
    /// Raw model output, split the way llama.cpp streams it (one token-ish piece per delta).
    pub text: Option<String>,
    /// `null`: no finish chunk.
    #[serde(default = "stop")]
    pub finish: Option<String>,
    #[serde(default = "yes")]
    pub done: bool,
    #[serde(default)]
    pub delay_ms: u64,
    /// Counts attempts across requests, for `faults`.
    pub key: Option<String>,
    /// `faults[n]` applies to attempt n of this key.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Answer one non-streamed `chat.completion` JSON even when asked to stream.
    #[serde(default)]
    pub json: bool,
    /// A recorded upstream SSE body, sent verbatim one event per write (faults count events).
    pub raw: Option<String>,
}

fn stop() -> Option<String> {
    Some("stop".into())
}
fn yes() -> bool {
    true
}

impl Script {
    fn from_text(text: &str) -> Self {
        Script { deltas: Vec::new(), text: Some(text.into()), finish: stop(), done: true, delay_ms: 0, key: None, faults: Vec::new(), json: false, raw: None }
    }
}

/// A built-in scenario.
pub fn scenario(name: &str) -> Option<Script> {
    Some(match name {
        "hello" => Script::from_text(
            "<|channel|>analysis<|message|>The user says hello. Reply briefly and warmly.<|end|><|start|>assistant<|channel|>final<|message|>Hello! How can I help you today?",
        ),
        "weather" => Script::from_text(
            "<|channel|>analysis<|message|>Need the weather tool for Paris.<|end|><|start|>assistant<|channel|>commentary<|message|>I'll check the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\",\"unit\":\"celsius\"}",
        ),
        "two-tools" => Script::from_text(
            "<|channel|>analysis<|message|>Read both files.<|end|><|start|>assistant<|channel|>commentary to=functions.read_file <|constrain|>json<|message|>{\"path\":\"a.txt\"}<|call|><|start|>assistant to=functions.read_file<|channel|>commentary json<|message|>{\"path\":\"b.txt\"}",
        ),
        "slow" => {
            let mut s = scenario("hello")?;
            s.delay_ms = 100;
            s
        }
        _ => return None,
    })
}

/// Splits model output like llama.cpp streams it: every special token alone, words with
/// their leading space.
pub fn llama_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    harmony_filters::markup::split(text, true, |p| match p {
        harmony_filters::markup::Piece::Special(s) => out.push(s.literal().to_owned()),
        harmony_filters::markup::Piece::Text(t) => {
            let mut cur = String::new();
            for c in t.chars() {
                if (c == ' ' || c == '\n') && !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(c);
            }
            if !cur.is_empty() {
                out.push(cur);
            }
        }
    });
    out
}

fn script_for(req: &Value) -> Script {
    let last_user = req
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
        .and_then(|m| match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => parts.iter().find_map(|p| p.get("text").and_then(Value::as_str)).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    if let Some(name) = last_user.trim().strip_prefix("scenario:") {
        if let Some(s) = scenario(name.trim()) {
            return s;
        }
    }
    if let Ok(v) = serde_json::from_str::<Value>(&last_user) {
        if let Some(m) = v.get("mock") {
            match serde_json::from_value::<Script>(m.clone()) {
                Ok(s) => return s,
                Err(e) => return Script::from_text(&format!("<|channel|>final<|message|>mock script error: {e}")),
            }
        }
    }
    scenario("hello").unwrap_or_else(|| Script::from_text("Hello"))
}

fn chunk(delta: &Value, finish: Option<&str>) -> Bytes {
    let c = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-oss-20b",
        "system_fingerprint": "b6000-mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "timings": {"predicted_n": 1, "predicted_ms": 1.0},
    });
    Bytes::from(format!("data: {c}\n\n"))
}

fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full_body(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("static"));
    r
}

/// Serves the mock on `listener` (over TLS with `tls`) until the process ends.
pub async fn run(listener: TcpListener, state: Arc<MockState>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let tls = tls.clone();
        let conn = state.connections.fetch_add(1, Ordering::SeqCst);
        let idle_close = state.idle_close;
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), conn, req));
            let mut http = hyper::server::conn::http1::Builder::new();
            if let Some(d) = idle_close {
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(d);
            }
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            }
        });
    }
}

#[derive(Debug)]
struct CloseConnection;
impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock closes the connection")
    }
}
impl std::error::Error for CloseConnection {}

impl MockState {
    /// A mock with the vocabulary (for the raw completion endpoints), parsing Harmony as
    /// llama-server does by default when `parsed` (see [`MockState::parsed`]).
    pub fn with_vocabulary(enc: openai_harmony::HarmonyEncoding, parsed: bool) -> Self {
        Self { enc: Some(enc), parsed, ..Self::default() }
    }

    /// Closes connections idle for `after` (see [`MockState::idle_close`]).
    pub fn idle_close(self, after: Option<std::time::Duration>) -> Self {
        Self { idle_close: after, ..self }
    }
}

async fn handle(state: Arc<MockState>, conn: u64, req: Request<Incoming>) -> Result<Response<Body>, CloseConnection> {
    let path = req.uri().path().to_owned();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/v1/models") => Ok(json_resp(200, &json!({"object": "list", "data": [{"id": "gpt-oss-20b", "object": "model", "owned_by": "mock"}]}))),
        ("GET", "/mock/stats") => Ok(json_resp(
            200,
            &json!({
                "requests": state.requests.load(Ordering::SeqCst),
                "completed": state.completed.load(Ordering::SeqCst),
                "cancelled": state.cancelled.load(Ordering::SeqCst),
                "connections": state.connections.load(Ordering::SeqCst),
                "chat_connections": state.chat_connections.lock().unwrap_or_else(|e| e.into_inner()).len(),
                "attempts": *state.attempts.lock().unwrap_or_else(|e| e.into_inner()),
                "last_request": *state.last_request.lock().unwrap_or_else(|e| e.into_inner()),
            }),
        )),
        ("POST", "/v1/chat/completions") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return Ok(json_resp(400, &json!({"error": {"message": "invalid JSON", "type": "invalid_request_error"}})));
            };
            state.requests.fetch_add(1, Ordering::SeqCst);
            state.chat_connections.lock().unwrap_or_else(|e| e.into_inner()).insert(conn);
            *state.last_request.lock().unwrap_or_else(|e| e.into_inner()) = v.clone();
            chat(state, v).await
        }
        ("POST", p @ ("/v1/completions" | "/completion")) => {
            let native = p == "/completion";
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                return Ok(json_resp(400, &json!({"error": {"message": "invalid JSON", "type": "invalid_request_error"}})));
            };
            state.requests.fetch_add(1, Ordering::SeqCst);
            completion(state, v, native).await
        }
        (_, p) if p.starts_with("/v1/") => {
            // Echo: the method, path, query and body, streamed back as they arrive.
            let head = json!({"method": req.method().as_str(), "path": p, "query": req.uri().query()}).to_string();
            let ct = req.headers().get(header::CONTENT_TYPE).cloned();
            let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            let mut r = Response::new(ChainBody { first: Some(full_body(head + "\n")), second: body }.boxed_unsync());
            if let Some(ct) = ct {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r.headers_mut().insert("x-mock-echo", "1".parse().expect("static"));
            Ok(r)
        }
        _ => Ok(json_resp(404, &json!({"error": {"message": "not found", "type": "invalid_request_error"}}))),
    }
}

/// Two bodies, one after the other.
struct ChainBody {
    first: Option<Body>,
    second: Body,
}

impl http_body::Body for ChainBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.first.as_mut() {
            match std::pin::Pin::new(f).poll_frame(cx) {
                std::task::Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        std::pin::Pin::new(&mut self.second).poll_frame(cx)
    }
}

/// What llama.cpp's gpt-oss chat template refuses in a history (it answers HTTP 500).
fn template_error(req: &Value) -> Option<&'static str> {
    let messages = req.get("messages").and_then(Value::as_array)?;
    let mut seen_call = false;
    for m in messages {
        let calls = m.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty());
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") if calls.is_some() => {
                seen_call = true;
                let content = m.get("content").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
                let thinking = ["reasoning_content", "reasoning", "thinking"].iter().any(|f| m.get(*f).and_then(Value::as_str).is_some_and(|r| !r.is_empty()));
                if content && thinking {
                    return Some("Cannot pass both content and thinking in an assistant message with tool calls! Put the analysis message in one or the other, but not both.");
                }
                for c in calls.into_iter().flatten() {
                    let args = c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("");
                    if serde_json::from_str::<Value>(args).is_err() {
                        return Some("Failed to parse tool call arguments as JSON");
                    }
                }
            }
            Some("tool") if !seen_call => return Some("Message has tool role, but there was no previous assistant message with a tool call!"),
            _ => {}
        }
    }
    None
}

async fn chat(state: Arc<MockState>, req: Value) -> Result<Response<Body>, CloseConnection> {
    if let Some(msg) = template_error(&req) {
        return Ok(json_resp(500, &json!({"error": {"code": 500, "message": msg, "type": "server_error"}})));
    }
    let script = script_for(&req);
    let attempt = match &script.key {
        Some(k) => {
            let mut a = state.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let n = a.entry(k.clone()).or_insert(0);
            *n += 1;
            *n - 1
        }
        None => 0,
    };
    let fault = script.faults.get(attempt as usize).cloned().unwrap_or_default();
    if let Some(ms) = fault.head_delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fault.close {
        return Err(CloseConnection);
    }
    if let Some(status) = fault.status {
        let mut r = json_resp(status, &json!({"error": {"message": format!("mock failure {status}"), "type": "server_error", "code": status}}));
        if let Some(ra) = fault.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, ra.into());
        }
        return Ok(r);
    }
    let mut deltas: Vec<Value> = script.deltas.iter().map(|d| if d.is_string() { json!({"content": d}) } else { d.clone() }).collect();
    if let Some(t) = &script.text {
        deltas.extend(llama_pieces(t).into_iter().map(|p| json!({"content": p})));
    }
    let mut finish = script.finish.clone();
    if let Some(enc) = state.enc.as_ref().filter(|_| state.parsed) {
        let (parsed, calls) = parse_like_llama(enc, &deltas);
        deltas = parsed;
        if calls && finish.as_deref() == Some("stop") {
            finish = Some("tool_calls".into());
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let usage = json!({"prompt_tokens": 12, "completion_tokens": deltas.len(), "total_tokens": 12 + deltas.len()});
    if script.json || !stream {
        let content: String = deltas.iter().filter_map(|d| d.get("content").and_then(Value::as_str)).collect();
        state.completed.fetch_add(1, Ordering::SeqCst);
        return Ok(json_resp(
            200,
            &json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-oss-20b",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": usage}),
        ));
    }
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    // Every frame to send, in order; faults count these (after the role chunk).
    let frames: Vec<Bytes> = match &script.raw {
        Some(raw) => raw.split_inclusive("\n\n").map(|e| Bytes::from(e.to_owned())).collect(),
        None => deltas.iter().map(|d| chunk(d, None)).collect(),
    };
    let raw = script.raw.is_some();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        let delay = Duration::from_millis(script.delay_ms);
        // Sends one frame; false when the client has gone (the stream was cancelled).
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        let cancelled = || {
            state.cancelled.fetch_add(1, Ordering::SeqCst);
        };
        if !raw && !send(chunk(&json!({"role": "assistant", "content": null}), None)).await {
            return cancelled();
        }
        for (i, frame) in frames.into_iter().enumerate() {
            if fault.cut_after == Some(i) {
                // Let what was sent reach the wire first: a cut drops unflushed bytes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(Box::new(CloseConnection))).await;
                return;
            }
            if fault.stall_after == Some(i) {
                tx.closed().await;
                return cancelled();
            }
            if fault.error_after == Some(i) {
                let _ = send(Bytes::from("data: {\"error\":{\"code\":500,\"message\":\"mock in-band failure\",\"type\":\"server_error\"}}\n\n")).await;
                return;
            }
            if fault.truncate_after == Some(i) {
                return;
            }
            if fault.invalid_after == Some(i) {
                let _ = send(Bytes::from("data: {\"choices\": [{\"delta\": \n\n")).await;
                continue;
            }
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => return cancelled(),
                }
            }
            if !send(frame).await {
                return cancelled();
            }
        }
        if raw {
            state.completed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Some(f) = &finish {
            if !send(chunk(&json!({}), Some(f))).await {
                return cancelled();
            }
        }
        if include_usage {
            let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-oss-20b", "choices": [], "usage": usage});
            let _ = send(Bytes::from(format!("data: {u}\n\n"))).await;
        }
        if script.done && !fault.linger {
            let _ = send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        }
        state.completed.fetch_add(1, Ordering::SeqCst);
        if fault.linger {
            tx.closed().await;
        }
    });
    let body = StreamBody::new(ReceiverStream(rx)).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("static"));
    Ok(r)
}

/// A raw completion, as llama.cpp answers a prompt the client rendered: `/v1/completions`
/// streams `choices[0].text` with special tokens as text; the native `/completion` streams
/// each token id (`return_tokens`) and ends with `stop: true` and no `[DONE]`. The script is
/// picked from the prompt's last user message; the decoded prompt is kept in `last_request`
/// (`prompt_text`) so tests can assert what the proxy rendered.
async fn completion(state: Arc<MockState>, req: Value, native: bool) -> Result<Response<Body>, CloseConnection> {
    let Some(enc) = state.enc.clone() else {
        return Ok(json_resp(501, &json!({"error": {"message": "this mock has no vocabulary", "type": "server_error"}})));
    };
    let prompt_ids: Vec<u32> = match req.get("prompt") {
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_u64().map(|t| t as u32)).collect(),
        Some(Value::String(s)) => enc.tokenizer().encode_with_special_tokens(s),
        _ => return Ok(json_resp(400, &json!({"error": {"message": "prompt is required", "type": "invalid_request_error"}}))),
    };
    let prompt_text = enc.tokenizer().decode_utf8(&prompt_ids).unwrap_or_default();
    let mut recorded = req.clone();
    recorded["prompt_text"] = Value::String(prompt_text.clone());
    *state.last_request.lock().unwrap_or_else(|e| e.into_inner()) = recorded;
    let last_user = prompt_text
        .rsplit_once("<|start|>user<|message|>")
        .map(|(_, rest)| rest.split("<|end|>").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let chat_like = json!({"messages": [{"role": "user", "content": last_user}]});
    let script = script_for(&chat_like);
    let text = script.text.clone().unwrap_or_default();
    // The model's own stop token ends the turn: <|call|> after a tool call, else <|return|>.
    let ends_in_call = text.rsplit("<|start|>").next().is_some_and(|m| m.contains(" to="));
    let full = format!("{text}{}", if ends_in_call { "<|call|>" } else { "<|return|>" });
    let mut ids = enc.tokenizer().encode_with_special_tokens(&full);
    let limit = req.get(if native { "n_predict" } else { "max_tokens" }).and_then(Value::as_i64).filter(|n| *n >= 0).map(|n| n as usize);
    let cut = limit.is_some_and(|n| n < ids.len());
    if let Some(n) = limit {
        ids.truncate(n);
    }
    let created = 1_700_000_000;
    let model = req.get("model").cloned().unwrap_or(json!("gpt-oss-20b"));
    let include_usage = req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    let mut frames: Vec<Bytes> = Vec::new();
    let (stop_a, stop_b) = (enc.tokenizer().encode_with_special_tokens("<|return|>"), enc.tokenizer().encode_with_special_tokens("<|call|>"));
    for id in &ids {
        // llama.cpp renders its end-of-generation tokens as empty text.
        let piece = if stop_a.contains(id) || stop_b.contains(id) { String::new() } else { enc.tokenizer().decode_utf8([*id]).unwrap_or_default() };
        let v = if native {
            json!({"content": piece, "tokens": [id], "stop": false})
        } else {
            json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}]})
        };
        frames.push(Bytes::from(format!("data: {v}\n\n")));
    }
    let (n_prompt, n_out) = (prompt_ids.len(), ids.len());
    if native {
        let v = json!({"content": "", "tokens": [], "stop": true, "stop_type": if cut { "limit" } else { "eos" }, "tokens_predicted": n_out, "tokens_evaluated": n_prompt});
        frames.push(Bytes::from(format!("data: {v}\n\n")));
    } else {
        let v = json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": if cut { "length" } else { "stop" }}]});
        frames.push(Bytes::from(format!("data: {v}\n\n")));
        if include_usage {
            let u = json!({"id": "cmpl-mock", "object": "text_completion", "created": created, "model": model, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}});
            frames.push(Bytes::from(format!("data: {u}\n\n")));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    state.completed.fetch_add(1, Ordering::SeqCst);
    let body = StreamBody::new(futures_stream(frames)).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("static"));
    Ok(r)
}

/// A body of ready frames.
fn futures_stream(frames: Vec<Bytes>) -> ReadyFrames {
    ReadyFrames(frames.into_iter())
}

struct ReadyFrames(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for ReadyFrames {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

/// Raw-Harmony content deltas → the deltas llama-server sends with its parser on, made with
/// our own parser (harmony-parse, then tool-bridge as `ide-tools` has it). Whether any tool
/// call was made comes back too (the finish reason becomes `tool_calls`).
fn parse_like_llama(enc: &openai_harmony::HarmonyEncoding, deltas: &[Value]) -> (Vec<Value>, bool) {
    use harmony_filters::stages::harmony_parse::{HarmonyParseConfig, HarmonyParseFactory};
    use harmony_filters::stages::tool_bridge::{Mode, Preambles, Reasoning, ToolBridgeConfig, ToolBridgeFactory};
    use harmony_filters::{Chain, Event, RequestMeta, StageFactory};
    let meta = RequestMeta::new("mock", true, false);
    let bridge = ToolBridgeConfig { mode: Mode::OpenaiToolCalls, reasoning: Reasoning::ReasoningContent, preambles: Preambles::Content };
    let mut chain = Chain::new(vec![
        HarmonyParseFactory::new(&HarmonyParseConfig::default(), enc.clone()).new_stage(&meta),
        ToolBridgeFactory(bridge).new_stage(&meta),
    ]);
    let mut input: Vec<Event> = deltas.iter().filter_map(|d| d.get("content").and_then(Value::as_str)).map(|t| Event::Upstream(t.to_owned())).collect();
    let mut events = Vec::new();
    chain.push_all(&mut input, &mut events);
    chain.end(&mut events);
    let mut calls = false;
    let out = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Content(t) => Some(json!({"content": t})),
            Event::Reasoning(_, t) => Some(json!({"reasoning_content": t})),
            Event::ClientToolCall { index, name, .. } => {
                calls = true;
                let id = harmony_filters::stage::random_id("", 32);
                Some(json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
            }
            Event::ClientToolArgs { index, args } => Some(json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]})),
            _ => None,
        })
        .collect();
    (out, calls)
}

struct ReceiverStream(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

