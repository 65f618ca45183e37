//! The raw completion endpoints' request: a rendered Harmony prompt and the conversation's
//! controls into the body of `POST {url}/completions` (the OpenAI legacy API: llama.cpp,
//! vLLM, LM Studio, mlx-lm, `transformers serve`) or of llama.cpp's `POST /completion`.
//!
//! ```text
//! Conversation ─► harmony-render (the prompt, a grammar or a forced call's start)
//!              ─► request(conv, Completion) ─► the endpoint's JSON body
//! ```
//! The sibling of [`chat_request`](super::chat_request): what differs by server is in
//! [`Completion`] (the prompt's form, the grammar's field), said by the route's config.

use serde_json::{json, Map, Value};

use crate::conversation::{Conversation, Limit, Stop};

/// gpt-oss's context, in tokens: the output limit asked for when the client sets none.
pub const GPT_OSS_CONTEXT: u64 = 131_072;

/// The prompt as the endpoint takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Token ids (llama.cpp, vLLM, LM Studio).
    Tokens(Vec<u32>),
    /// Text with the special tokens written out, which the server's tokenizer reads back
    /// (mlx-lm and servers that take only a string).
    Text(String),
}

/// Which endpoint, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// `POST {url}/completions`; `grammar` (if any) as vLLM's `structured_outputs.grammar`.
    Completions { prompt: Prompt, grammar: Option<String> },
    /// llama.cpp's `POST /completion`, token ids both ways; `grammar` (if any) as its GBNF
    /// `grammar`.
    Llama { prompt: Vec<u32>, grammar: Option<String> },
}

/// The stops a client set that are plain text (markup stops are the parser's business).
pub fn client_stops(conv: &Conversation) -> Vec<String> {
    let c = &conv.controls;
    c.stop.as_ref().map(Stop::as_slice).unwrap_or_default().iter().filter(|s| !s.is_empty() && !crate::markup::has_markup(s)).cloned().collect()
}

/// The most output tokens the body for `conv` asks for, when it says a count: the client's
/// limit, else on `/v1/completions` with token ids gpt-oss's whole context (see [`request`]).
/// llama.cpp's `/completion` says its limit as `n_predict`, which no server refuses: `None`.
pub fn output_limit(conv: &Conversation, completion: &Completion) -> Option<u64> {
    match completion {
        Completion::Completions { prompt, .. } => {
            conv.controls.max_output_tokens.as_ref().and_then(Limit::count).or(matches!(prompt, Prompt::Tokens(_)).then_some(GPT_OSS_CONTEXT))
        }
        Completion::Llama { .. } => None,
    }
}

/// The endpoint's request body for `conv` (always streamed).
pub fn request(conv: &Conversation, completion: &Completion) -> Value {
    let c = &conv.controls;
    let mut out = Map::new();
    out.insert("model".into(), if conv.model.is_empty() { Value::Null } else { conv.model.clone().into() });
    match completion {
        Completion::Completions { prompt: Prompt::Text(text), .. } => out.insert("prompt".into(), Value::String(text.clone())),
        Completion::Completions { prompt: Prompt::Tokens(ids), .. } | Completion::Llama { prompt: ids, .. } => out.insert("prompt".into(), json!(ids)),
    };
    out.insert("stream".into(), Value::Bool(true));
    let max = c.max_output_tokens.as_ref().and_then(Limit::count).map(Value::from);
    let s = &c.sampling;
    for (k, v) in [
        ("temperature", &s.temperature),
        ("top_p", &s.top_p),
        ("seed", &s.seed),
        ("presence_penalty", &s.presence_penalty),
        ("frequency_penalty", &s.frequency_penalty),
    ] {
        if let Some(v) = v {
            out.insert(k.into(), Value::Number(v.clone()));
        }
    }
    if let Some(v) = &s.logit_bias {
        out.insert("logit_bias".into(), v.clone());
    }
    let stops = client_stops(conv);
    if !stops.is_empty() {
        out.insert("stop".into(), json!(stops));
    }
    match completion {
        Completion::Completions { prompt, grammar } => {
            let tokens = matches!(prompt, Prompt::Tokens(_));
            // No limit from the client: with token ids, gpt-oss's whole context. vLLM's
            // completions stop at 16 tokens when it is left out or `null` (the legacy API's
            // default), and refuse more than their `--max-model-len`, saying it: the server
            // asks again with that (`upstream::overflow::output_limit`). llama.cpp stops at
            // its context either way. Left out with a text prompt (mlx-lm refuses `null` and
            // applies its `--max-tokens`).
            if let Some(m) = output_limit(conv, completion) {
                out.insert("max_tokens".into(), m.into());
            }
            // vLLM strips special tokens from completion text unless told otherwise; the
            // servers that take only text prompts know no such field (`transformers serve`
            // refuses it with a 422).
            if tokens {
                out.insert("skip_special_tokens".into(), Value::Bool(false));
            }
            if let Some(g) = grammar {
                out.insert("structured_outputs".into(), json!({ "grammar": g }));
            }
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Completion::Llama { grammar, .. } => {
            out.insert("n_predict".into(), max.unwrap_or(json!(-1)));
            if let Some(g) = grammar {
                out.insert("grammar".into(), g.clone().into());
            }
            out.insert("return_tokens".into(), Value::Bool(true));
            out.insert("cache_prompt".into(), Value::Bool(true));
        }
    }
    Value::Object(out)
}
