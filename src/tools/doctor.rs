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

/// Which model server answers, told by what it says of itself (`GET /models`, its
/// `Server` header, `GET /props`, how it refuses a model name it does not serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// llama.cpp's `llama-server` (`owned_by: "llamacpp"`, or `GET /props`).
    LlamaCpp,
    /// vLLM (`owned_by: "vllm"`, `max_model_len`).
    Vllm,
    /// mlx-lm's `mlx_lm.server` (Python's `http.server`; models without `owned_by`).
    MlxLm,
    /// `transformers serve` (uvicorn; a pinned model it lists nowhere and names when refusing
    /// another).
    TransformersServe,
    /// LM Studio (`owned_by: "organization_owner"`).
    LmStudio,
    /// Ollama (`owned_by: "library"`).
    Ollama,
    Unknown,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::LlamaCpp => "llama.cpp (llama-server)",
            Self::Vllm => "vLLM",
            Self::MlxLm => "mlx-lm (mlx_lm.server)",
            Self::TransformersServe => "transformers serve",
            Self::LmStudio => "LM Studio",
            Self::Ollama => "Ollama",
            Self::Unknown => "not recognised (an OpenAI-compatible server)",
        }
    }

    /// From `GET /models`'s answer: its `Server` header and body.
    pub fn from_models(server_header: &str, list: &Value) -> Self {
        let owners: Vec<&str> = list["data"].as_array().map(|a| a.iter().filter_map(|m| m["owned_by"].as_str()).collect()).unwrap_or_default();
        match owners.first().copied() {
            Some("llamacpp") => Self::LlamaCpp,
            Some("vllm") => Self::Vllm,
            Some("organization_owner") => Self::LmStudio,
            Some("library") => Self::Ollama,
            None if server_header.starts_with("BaseHTTP") => Self::MlxLm,
            None if server_header == "uvicorn" && list["data"].as_array().is_some_and(Vec::is_empty) => Self::TransformersServe,
            _ => Self::Unknown,
        }
    }
}

/// The model a server is pinned to, from how it refuses another name (`transformers serve`:
/// `Server is pinned to 'X'; requested 'Y'.`).
pub fn pinned_model(refusal: &str) -> Option<String> {
    let v: Value = serde_json::from_str(refusal).ok()?;
    let detail = v["detail"].as_str()?;
    let rest = detail.strip_prefix("Server is pinned to '")?;
    Some(rest[..rest.find("';")?].to_owned())
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
    } else if content.starts_with("analysis")
        || content.contains("assistantfinal")
        || content.contains("assistantcommentary")
        || ["final", "commentary"].iter().any(|w| content.strip_prefix(w).and_then(|r| r.chars().next()).is_some_and(char::is_uppercase))
    {
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
    let server_header = resp.headers().get(header::SERVER).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let mut kind = ServerKind::Unknown;
    let listed: Vec<String> = match status {
        200..=299 => {
            r.say(true, format!("reachable: GET /models answered {status} in {ms} ms"));
            let text = body_text(resp, 1 << 20, Duration::from_secs(5)).await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            kind = ServerKind::from_models(&server_header, &v);
            let ids: Vec<String> = v["data"].as_array().map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect()).unwrap_or_default();
            // A pinned `transformers serve` lists nothing and names its model when refusing another.
            r.say(
                !ids.is_empty() || kind == ServerKind::TransformersServe,
                format!("models: {}", if ids.is_empty() { "none listed".into() } else { ids.join(", ") }),
            );
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
    let mut model = model.map(str::to_owned).or_else(|| listed.first().cloned()).unwrap_or_else(|| "gpt-oss".into());
    if kind == ServerKind::Unknown {
        let root = base.trim_end_matches('/').strip_suffix("/v1").unwrap_or(base);
        let props = Request::get(format!("{root}/props")).body(full(Bytes::new())).expect("static request");
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(3), up.send(props)).await {
            let text = if resp.status().is_success() { body_text(resp, 1 << 20, Duration::from_secs(3)).await.unwrap_or_default() } else { String::new() };
            if serde_json::from_str::<Value>(&text).is_ok_and(|v| v.get("default_generation_settings").is_some()) {
                kind = ServerKind::LlamaCpp;
            }
        }
    }

    // 2. A one-token chat (a pinned server that refuses the name says which it serves).
    let started = Instant::now();
    let one = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "stream": false});
    let answer = match up.send(post(base, &one(&model))).await {
        Ok(resp) if resp.status().is_client_error() => {
            let s = resp.status().as_u16();
            let text = body_text(resp, 4096, Duration::from_secs(5)).await.unwrap_or_default();
            let Some(pinned) = pinned_model(&text) else {
                r.say(false, format!("chat: POST /chat/completions answered {s}: {}", text.chars().take(200).collect::<String>()));
                return r;
            };
            kind = ServerKind::TransformersServe;
            r.say(true, format!("models: pinned to {pinned}, the only name it answers to (routes send it as `upstream_model`; `init` writes it)"));
            model = pinned;
            up.send(post(base, &one(&model))).await
        }
        other => other,
    };
    r.say(true, format!("server: {}", kind.name()));
    match answer {
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
            if matches!(kind, ServerKind::LlamaCpp | ServerKind::Unknown) {
                r.advise("llama-server drops tool calls of requests that declare no `tools` (see README, Tested against)");
            }
        }
        Shape::Plain => {
            r.say(true, "harmony: plain text, no markup and no reasoning field (too short to tell, or not a gpt-oss model)");
            r.advise("pipeline `harmony` is safe for every shape");
        }
    }

    // 3b. What this server needs besides.
    match kind {
        ServerKind::Vllm => {
            // vLLM (0.32) takes `tool_choice: "auto"` for gpt-oss either way: only a call the
            // model makes would tell, so say what each way does.
            r.advise("vLLM passes tool calls on only when started with `--tool-call-parser openai --enable-auto-tool-choice`; without, it drops every call, tools declared or not");
            r.advise("with its parser: pipeline `ide-tools` (what the parser cannot place reaches the proxy raw and still becomes a call); either way: `native` (the proxy renders the prompt and finds the calls itself, token ids on /v1/completions)");
            r.advise("vLLM answers only to the name it serves (`--served-model-name`): routes send it as `upstream_model` (`init --upstream` writes it)");
        }
        ServerKind::MlxLm => {
            r.advise("mlx-lm answers only to the model's path: routes send it as `upstream_model` (`init --upstream` writes it)");
            r.advise("`native` on mlx-lm needs `prompt = \"text\"` in `harmony-render` (its /v1/completions takes no token ids)");
        }
        ServerKind::TransformersServe => {
            r.advise("transformers serve strips the special tokens (no gpt-oss response template): channel words run into the text; pipeline `harmony` or `ide-tools` (harmony-parse reads the words), never `passthrough`");
            r.advise("`native` on transformers serve needs `prompt = \"text\"` in `harmony-render` (its /v1/completions takes only strings)");
            r.advise("it ends chat streams without [DONE] and parses no tool calls: the proxy completes the stream and finds the calls in the text");
        }
        ServerKind::LlamaCpp | ServerKind::LmStudio | ServerKind::Ollama | ServerKind::Unknown => {}
    }

    // 4. The same answer as each client API's clients get it, through the pipeline a config
    // without a route for the API gets (its built-in one).
    for (api, line) in through_each_api(&streamed) {
        r.say(line.is_ok(), format!("{}: {}", api.path(), line.unwrap_or_else(|e| e)));
    }
    r
}

/// A streamed upstream answer through each client API's edge: what its client would get.
/// Each API says its own request (`probe`) and how its clients read the stream.
fn through_each_api(streamed: &str) -> Vec<(harmony_filters::ClientApi, Result<String, String>)> {
    use harmony_filters::replay::run as run_sse;
    use harmony_filters::ClientApi;
    let Ok(enc) = harmony_filters::vocab::encoding() else { return Vec::new() };
    let env = harmony_filters::api::EdgeEnv::standalone();
    ClientApi::ALL
        .iter()
        .map(|&api| {
            let compiled = crate::config::BUILTIN_PIPELINES
                .iter()
                .find(|(n, _)| *n == api.builtin_pipeline())
                .and_then(|(_, text)| toml::from_str::<crate::config::PipelineDef>(text).ok())
                .map(|def| harmony_filters::compile(&def.stages, &enc));
            let result = compiled.ok_or_else(|| format!("no built-in pipeline {:?}", api.builtin_pipeline())).and_then(|compiled| {
                // A standalone edge (inline, a memory store): decoded at once.
                let d = harmony_filters::work::now(api.decode(api.probe("Say hello in a few words."), &env)).map_err(|e| e.message)?;
                let meta = harmony_filters::ClientRequest { meta: harmony_filters::RequestMeta::new("doctor", true), api: d.ctx };
                let a = api.read_stream(&run_sse(&compiled, &meta, &[streamed.as_bytes()]))?;
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

    /// What each server's `GET /v1/models` said here (vLLM 0.32, mlx-lm 0.32.2, transformers
    /// 5.19 with a pinned model; llama-server, LM Studio and Ollama from their documents).
    #[test]
    fn servers_are_told_apart_by_their_model_lists() {
        let list = |owner: Option<&str>| match owner {
            Some(o) => json!({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": o}]}),
            None => json!({"object": "list", "data": [{"id": "/models/m", "object": "model", "created": 1}]}),
        };
        assert_eq!(ServerKind::from_models("uvicorn", &list(Some("vllm"))), ServerKind::Vllm);
        assert_eq!(ServerKind::from_models("llama.cpp", &list(Some("llamacpp"))), ServerKind::LlamaCpp);
        assert_eq!(ServerKind::from_models("", &list(Some("organization_owner"))), ServerKind::LmStudio);
        assert_eq!(ServerKind::from_models("", &list(Some("library"))), ServerKind::Ollama);
        assert_eq!(ServerKind::from_models("BaseHTTP/0.6 Python/3.11.7", &list(None)), ServerKind::MlxLm);
        assert_eq!(ServerKind::from_models("uvicorn", &json!({"object": "list", "data": []})), ServerKind::TransformersServe);
        assert_eq!(ServerKind::from_models("", &list(Some("mock"))), ServerKind::Unknown);
    }

    #[test]
    fn a_pinned_transformers_serve_names_its_model_when_refusing_another() {
        let said = r#"{"detail":"Server is pinned to '/models/combined'; requested 'gpt-oss'."}"#;
        assert_eq!(pinned_model(said).as_deref(), Some("/models/combined"));
        assert_eq!(pinned_model(r#"{"detail":"Not found"}"#), None);
        assert_eq!(pinned_model("not json"), None);
    }

    #[test]
    fn shapes_are_told_apart() {
        let raw = "data: {\"choices\":[{\"delta\":{\"content\":\"<|channel|>\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"analysis\"}}]}\n\n";
        assert_eq!(classify(raw), Shape::RawHarmony);
        let parsed = "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"Hm\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        assert_eq!(classify(parsed), Shape::PreParsed);
        let stripped = "data: {\"choices\":[{\"delta\":{\"content\":\"analysisHm.assistantfinalHi\"}}]}\n\n";
        assert_eq!(classify(stripped), Shape::StrippedTokens);
        let stripped_answer = "data: {\"choices\":[{\"delta\":{\"content\":\"finalPlain answer.\"}}]}\n\n";
        assert_eq!(classify(stripped_answer), Shape::StrippedTokens, "transformers serve, no reasoning");
        assert_eq!(classify("data: {\"choices\":[{\"delta\":{\"content\":\"finally\"}}]}\n\n"), Shape::Plain);
        assert_eq!(classify("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"), Shape::Plain);
    }
}
