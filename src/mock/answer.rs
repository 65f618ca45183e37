//! Answers: the chat endpoint (raw Harmony, or parsed like llama-server with `--parsed`) and the raw completion endpoints, with the scripted faults.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::upstream::BoxError;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

use super::script::*;
use super::turn::*;
use super::*;

/// A chat request's prompt length as a server would count it, roughly: a token per four bytes
/// of its messages and tools.
fn estimated_tokens(req: &Value) -> u64 {
    let bytes = |k: &str| req.get(k).map(|v| v.to_string().len()).unwrap_or(0);
    ((bytes("messages") + bytes("tools")) / 4) as u64
}

/// vLLM's 404 for a model name it does not serve, when the mock serves only one.
pub(super) fn not_served(state: &MockState, req: &Value) -> Option<Response<Body>> {
    let served = state.served_model.as_deref()?;
    let asked = req.get("model").and_then(Value::as_str).unwrap_or("");
    (asked != served).then(|| {
        state.refused_models.fetch_add(1, Ordering::SeqCst);
        json_resp(404, &json!({"error": {"message": format!("The model `{asked}` does not exist."), "type": "NotFoundError", "param": "model", "code": 404}}))
    })
}

pub(super) async fn chat(state: Arc<MockState>, req: Value) -> Result<Response<Body>, CloseConnection> {
    if let Some(r) = not_served(&state, &req) {
        return Ok(r);
    }
    // With `--n-ctx`, a prompt longer than the context is refused as llama-server refuses it,
    // and the usage says the prompt's (estimated) length: what agents compact by.
    let prompt_tokens = if state.n_ctx > 0 { estimated_tokens(&req) } else { 12 };
    if state.n_ctx > 0 && prompt_tokens > state.n_ctx {
        let n_ctx = state.n_ctx;
        state.overflows.fetch_add(1, Ordering::SeqCst);
        let msg = format!("request ({prompt_tokens} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it");
        return Ok(json_resp(
            400,
            &json!({"error": {"code": 400, "message": msg, "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens, "n_ctx": n_ctx}}),
        ));
    }
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
        let body =
            fault.body.clone().unwrap_or_else(|| json!({"error": {"message": format!("mock failure {status}"), "type": "server_error", "code": status}}));
        let mut r = json_resp(status, &body);
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
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": deltas.len(), "total_tokens": prompt_tokens + deltas.len() as u64});
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
                let error = fault.error.clone().unwrap_or_else(|| json!({"code": 500, "message": "mock in-band failure", "type": "server_error"}));
                let _ = send(Bytes::from(format!("data: {}\n\n", json!({ "error": error })))).await;
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
/// picked from the prompt's last user message, its step by the tool results after it (see
/// [`turn_from_prompt`]); the decoded prompt is kept in `last_request`
/// (`prompt_text`) so tests can assert what the proxy rendered.
pub(super) async fn completion(state: Arc<MockState>, req: Value, native: bool) -> Result<Response<Body>, CloseConnection> {
    let Some(enc) = state.enc.clone() else {
        return Ok(json_resp(501, &json!({"error": {"message": "this mock has no vocabulary", "type": "server_error"}})));
    };
    // Serving one name (vLLM's way) with `--n-ctx`: an output limit past the context is
    // refused in vLLM's words (0.32, recorded from the real server; its completions default
    // to 16 tokens, so the proxy asks for the whole context when the client sets no limit).
    if !native && state.served_model.is_some() && state.n_ctx > 0 {
        if let Some(asked) = req.get("max_tokens").and_then(Value::as_u64).filter(|n| *n > state.n_ctx) {
            let message = format!(
                "max_tokens={asked} cannot be greater than max_model_len={}. Please request fewer output tokens. (parameter=max_tokens, value={asked})",
                state.n_ctx
            );
            return Ok(json_resp(400, &json!({"error": {"message": message, "type": "BadRequestError", "param": "max_tokens", "code": 400}})));
        }
    }
    let prompt_ids: Vec<u32> = match req.get("prompt") {
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_u64().map(|t| t as u32)).collect(),
        Some(Value::String(s)) => enc.tokenizer().encode_with_special_tokens(s),
        _ => return Ok(json_resp(400, &json!({"error": {"message": "prompt is required", "type": "invalid_request_error"}}))),
    };
    let prompt_text = enc.tokenizer().decode_utf8(&prompt_ids).unwrap_or_default();
    let mut recorded = req.clone();
    recorded["prompt_text"] = Value::String(prompt_text.clone());
    *state.last_request.lock().unwrap_or_else(|e| e.into_inner()) = recorded;
    let script = script_for_turn(&turn_from_prompt(&prompt_text));
    let text = script.text.clone().unwrap_or_default();
    // The model's own stop token ends the turn: <|call|> after a tool call, else <|return|>
    // (unless the script wrote it).
    let ends_in_call = text.rsplit("<|start|>").next().is_some_and(|m| m.contains(" to="));
    let full = if text.ends_with("<|call|>") || text.ends_with("<|return|>") {
        text
    } else {
        format!("{text}{}", if ends_in_call { "<|call|>" } else { "<|return|>" })
    };
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
pub(super) fn futures_stream(frames: Vec<Bytes>) -> ReadyFrames {
    ReadyFrames(frames.into_iter())
}

pub(super) struct ReadyFrames(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for ReadyFrames {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(Frame::data(b))))
    }
}

/// Raw-Harmony content deltas → the deltas llama-server sends with its parser on, made with
/// our own parser (harmony-parse, then tool-bridge as `ide-tools` has it). Whether any tool
/// call was made comes back too (the finish reason becomes `tool_calls`).
pub(super) fn parse_like_llama(enc: &openai_harmony::HarmonyEncoding, deltas: &[Value]) -> (Vec<Value>, bool) {
    use harmony_filters::stages::harmony_parse::{HarmonyParseConfig, HarmonyParseFactory};
    use harmony_filters::stages::tool_bridge::{Mode, Preambles, Reasoning, ToolBridgeConfig, ToolBridgeFactory};
    use harmony_filters::{Chain, Event, RequestMeta, StageFactory};
    let meta = RequestMeta::new("mock", true);
    let bridge = ToolBridgeConfig { mode: Mode::OpenaiToolCalls, reasoning: Reasoning::ReasoningContent, preambles: Preambles::Content };
    let mut chain =
        Chain::new(vec![HarmonyParseFactory::new(&HarmonyParseConfig::default(), enc.clone()).new_stage(&meta), ToolBridgeFactory(bridge).new_stage(&meta)]);
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

pub(super) struct ReceiverStream(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, BoxError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
