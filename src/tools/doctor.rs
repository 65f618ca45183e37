//! `harmony-proxy doctor`: checks a running upstream the way the proxy will use it and says
//! what it found: reachable, which models, whether a chat answers, and whether the server
//! already parses Harmony (which decides the pipeline that fits).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::upstream::{full, Upstream};

/// How the upstream hands over gpt-oss output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Special tokens in `content` (`<|channel|>analysis<|message|>…`): llama.cpp with
    /// `--reasoning-format none`, LM Studio, raw servers.
    RawHarmony,
    /// Special tokens stripped but their words kept (`analysis…assistantfinal…`): MLX family.
    StrippedTokens,
    /// Reasoning in its own field: the server parses Harmony itself (llama.cpp's default, vLLM, Ollama).
    PreParsed,
    /// Plain text only: nothing tells (a short answer with no reasoning, or not gpt-oss).
    Plain,
}

/// One finding: whether it is fine, and what to say.
pub struct Report {
    pub lines: Vec<String>,
    pub ok: bool,
}

impl Report {
    fn say(&mut self, ok: bool, what: impl Into<String>) {
        self.ok &= ok;
        self.lines.push(format!("  {}  {}", if ok { "ok  " } else { "FAIL" }, what.into()));
    }
    fn advise(&mut self, what: impl Into<String>) {
        self.lines.push(format!("  =>    {}", what.into()));
    }
}

pub(crate) async fn body_text(resp: http::Response<hyper::body::Incoming>, limit: usize, wait: Duration) -> Result<String, String> {
    match tokio::time::timeout(wait, http_body_util::Limited::new(resp.into_body(), limit).collect()).await {
        Ok(Ok(b)) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Ok(Err(e)) => Err(format!("reading the body failed: {e}")),
        Err(_) => Err(format!("the body did not end within {wait:?}")),
    }
}

fn post(base: &str, body: &Value) -> Request<crate::upstream::ReqBody> {
    let mut req = Request::post(format!("{base}/chat/completions")).body(full(Bytes::from(body.to_string()))).expect("static request");
    req.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    req
}

/// Classifies a streamed answer by what its deltas carry.
pub fn classify(sse: &str) -> Shape {
    let (mut content, mut reasoning) = (String::new(), false);
    for line in sse.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
        let Some(d) = v.pointer("/choices/0/delta").or_else(|| v.pointer("/choices/0/message")) else { continue };
        if let Some(c) = d.get("content").and_then(Value::as_str) {
            content.push_str(c);
        }
        for k in ["reasoning_content", "reasoning", "thinking"] {
            reasoning |= d.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        }
    }
    if ["<|channel|>", "<|message|>", "<|start|>", "<|end|>"].iter().any(|t| content.contains(t)) {
        Shape::RawHarmony
    } else if reasoning {
        Shape::PreParsed
    } else if content.starts_with("analysis") || content.contains("assistantfinal") || content.contains("assistantcommentary") {
        Shape::StrippedTokens
    } else {
        Shape::Plain
    }
}

/// Checks every server of `up`'s pool in turn.
pub async fn run(up: &Upstream, model: Option<&str>) -> Report {
    let mut all = Report { lines: Vec::new(), ok: true };
    for server in &up.pool.servers {
        let r = run_one(up, &server.url, model).await;
        all.ok &= r.ok;
        all.lines.extend(r.lines);
    }
    all
}

async fn run_one(up: &Upstream, base: &str, model: Option<&str>) -> Report {
    let mut r = Report { lines: vec![format!("doctor: upstream {}", crate::upstream::pool::redact_url(base))], ok: true };

    // 1. Reachable, and which models.
    let started = Instant::now();
    let req = Request::get(format!("{base}/models")).body(full(Bytes::new())).expect("static request");
    let resp = match up.send(req).await {
        Ok(resp) => resp,
        Err(e) => {
            r.say(false, format!("reachable: {}", e.error.message));
            r.advise("start the model server, or fix `url` (it ends in /v1, e.g. http://127.0.0.1:8080/v1)");
            return r;
        }
    };
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis();
    let listed: Vec<String> = match status {
        200..=299 => {
            r.say(true, format!("reachable: GET /models answered {status} in {ms} ms"));
            let text = body_text(resp, 1 << 20, Duration::from_secs(5)).await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let ids: Vec<String> = v["data"].as_array().map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
            r.say(!ids.is_empty(), format!("models: {}", if ids.is_empty() { "none listed".into() } else { ids.join(", ") }));
            ids
        }
        401 | 403 => {
            r.say(false, format!("reachable, but GET /models answered {status}: it wants an API key (`api_key` of the upstream)"));
            return r;
        }
        s => {
            r.say(false, format!("reachable, but GET /models answered {s}"));
            Vec::new()
        }
    };
    let model = model.map(str::to_owned).or_else(|| listed.first().cloned()).unwrap_or_else(|| "gpt-oss".into());

    // 2. A one-token chat.
    let started = Instant::now();
    let one = json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "stream": false});
    match up.send(post(base, &one)).await {
        Ok(resp) if resp.status().is_success() => {
            let _ = body_text(resp, 1 << 20, Duration::from_secs(30)).await;
            r.say(true, format!("chat: model {model:?} answered a one-token request in {} ms", started.elapsed().as_millis()));
        }
        Ok(resp) => {
            let s = resp.status().as_u16();
            let text = body_text(resp, 4096, Duration::from_secs(5)).await.unwrap_or_default();
            r.say(false, format!("chat: POST /chat/completions answered {s}: {}", text.chars().take(200).collect::<String>()));
            return r;
        }
        Err(e) => {
            r.say(false, format!("chat: {}", e.error.message));
            return r;
        }
    }

    // 3. What a streamed answer looks like.
    let probe = json!({"model": model, "messages": [{"role": "user", "content": "Say hello in a few words."}], "max_tokens": 64, "stream": true});
    let streamed = match up.send(post(base, &probe)).await {
        Ok(resp) if resp.status().is_success() => match body_text(resp, 1 << 20, Duration::from_secs(60)).await {
            Ok(text) => text,
            Err(e) => {
                r.say(false, format!("streaming: {e}"));
                return r;
            }
        },
        Ok(resp) => {
            r.say(false, format!("streaming: answered {}", resp.status().as_u16()));
            return r;
        }
        Err(e) => {
            r.say(false, format!("streaming: {}", e.error.message));
            return r;
        }
    };
    match classify(&streamed) {
        Shape::RawHarmony => {
            r.say(true, "harmony: the upstream sends raw Harmony (<|channel|> markup in content): it needs harmony-parse");
            r.advise("pipeline `harmony` (answers only), `ide-tools` (IDE agents) or `text-tools`; never `passthrough`, which would show the markup");
        }
        Shape::StrippedTokens => {
            r.say(true, "harmony: the upstream strips special tokens but keeps their words (analysis…assistantfinal…)");
            r.advise("pipeline `harmony` or `ide-tools` (harmony-parse and fallback recover the answer); never `passthrough`");
        }
        Shape::PreParsed => {
            r.say(true, "harmony: the upstream parses Harmony itself (reasoning in its own field)");
            r.advise("`passthrough` is enough; `ide-tools` and `harmony` work too and repair what it misses (preambles, agent histories)");
            r.advise("llama-server drops tool calls of requests that declare no `tools` (see README, Tested against)");
        }
        Shape::Plain => {
            r.say(true, "harmony: plain text, no markup and no reasoning field (too short to tell, or not a gpt-oss model)");
            r.advise("pipeline `harmony` is safe for every shape");
        }
    }

    // 4. The same answer as the agent APIs' clients get it (the built-in `ide-tools`, which a
    // config without routes for them gets).
    for (api, line) in agent_apis(&streamed) {
        r.say(line.is_ok(), format!("{}: {}", api.path(), line.unwrap_or_else(|e| e)));
    }
    r
}

/// A streamed upstream answer through each agent API's edge: what its client would get.
fn agent_apis(streamed: &str) -> Vec<(harmony_filters::ClientApi, Result<String, String>)> {
    use harmony_filters::client_view::{assemble_messages, assemble_responses};
    use harmony_filters::replay::run as run_sse;
    use harmony_filters::ClientApi;
    let Ok(enc) = harmony_filters::vocab::encoding() else { return Vec::new() };
    let Some((_, text)) = crate::config::BUILTIN_PIPELINES.iter().find(|(n, _)| *n == "ide-tools") else { return Vec::new() };
    let Ok(def) = toml::from_str::<crate::config::PipelineDef>(text) else { return Vec::new() };
    let compiled = harmony_filters::compile(&def.stages, &enc);
    let env = harmony_filters::api::EdgeEnv::standalone();
    let prompt = "Say hello in a few words.";
    let apis = [
        (ClientApi::Responses, json!({"model": "doctor", "input": prompt, "stream": true, "store": false})),
        (ClientApi::Messages, json!({"model": "doctor", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}], "stream": true})),
    ];
    apis.into_iter()
        .map(|(api, request)| {
            let result = api.decode(request, &env).map_err(|e| e.message).and_then(|d| {
                let meta = harmony_filters::ClientRequest { meta: harmony_filters::RequestMeta::new("doctor", true, true), api: d.ctx };
                let wire = run_sse(&compiled, &meta, &[streamed.as_bytes()]);
                let a = if api == ClientApi::Messages { assemble_messages(&wire)? } else { assemble_responses(&wire)? };
                let kinds = [(!a.reasoning.is_empty()).then_some("reasoning"), (!a.content.is_empty()).then_some("an answer")];
                let kinds: Vec<&str> = kinds.into_iter().flatten().collect();
                Ok(format!(
                    "the answer round-trips as a well-formed event stream ({}, ends {})",
                    if kinds.is_empty() { "nothing shown".into() } else { kinds.join(" and ") },
                    a.finish
                ))
            });
            (api, result)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_told_apart() {
        let raw = "data: {\"choices\":[{\"delta\":{\"content\":\"<|channel|>\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"analysis\"}}]}\n\n";
        assert_eq!(classify(raw), Shape::RawHarmony);
        let parsed = "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"Hm\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        assert_eq!(classify(parsed), Shape::PreParsed);
        let stripped = "data: {\"choices\":[{\"delta\":{\"content\":\"analysisHm.assistantfinalHi\"}}]}\n\n";
        assert_eq!(classify(stripped), Shape::StrippedTokens);
        assert_eq!(classify("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"), Shape::Plain);
    }
}
