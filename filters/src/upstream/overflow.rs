//! Recognising a model server's "the prompt does not fit in the context" answer, whatever
//! server said it, so that each client API can say it the way its agents recognise (Codex
//! gives up on `context_length_exceeded`, Claude Code compacts on "prompt is too long").
//!
//! What servers send (see UPSTREAMS.md and `../shared/real-servers/`):
//! - llama.cpp `llama-server`: HTTP 400 `{"error":{"code":400,"type":"exceed_context_size_error",
//!   "n_prompt_tokens":N,"n_ctx":M,"message":"the request exceeds the available context size…"}}`
//!   (older builds: the message alone, sometimes in-band in the stream);
//! - vLLM: HTTP 400 `{"error":{"message":"This model's maximum context length is M tokens.
//!   However, your request has N input tokens…","type":"BadRequestError",…}}` (older: "you
//!   requested N tokens", "your messages resulted in N tokens");
//! - OpenAI-shaped servers: `code: "context_length_exceeded"`;
//! - LM Studio: "…the model is loaded with context length of only M tokens…".
//!
//! Only the error's own object is read, never the prompt: this runs once per refusal.

use serde_json::Value;

pub use crate::event::ContextOverflow;

/// The most output tokens a server takes, from its refusal of more, where the prompt fits:
/// vLLM 0.32's HTTP 400 "max_tokens=X cannot be greater than max_model_len=N. Please request
/// fewer output tokens." (`N`), and earlier vLLMs' "This model's maximum context length is M
/// tokens. However, you requested X tokens (P in the messages, C in the completion)" and
/// "'max_tokens' or 'max_completion_tokens' is too large: X. This model's maximum context
/// length is M tokens and your request has P input tokens" (`M - P`). The proxy asks again
/// with it (a limit is a most, which the server's keeps).
pub fn output_limit(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error").unwrap_or(&v);
    let m = err.get("message").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    if m.contains("cannot be greater than") {
        return number_after(&m, "max_model_len=").filter(|n| *n > 0);
    }
    let context = number_after(&m, "maximum context length is ")?;
    let prompt = if m.contains(" in the messages") && m.contains(" in the completion") {
        number_after(&m, "(")?
    } else if m.contains("is too large") {
        number_after(&m, "your request has ")?
    } else {
        return None;
    };
    context.checked_sub(prompt).filter(|n| *n > 0)
}

/// The overflow an upstream's error body says, if it says one (`body`: an HTTP error's body,
/// or an in-band `{"error":…}` chunk).
pub fn in_body(body: &[u8]) -> Option<ContextOverflow> {
    let v: Value = serde_json::from_slice(body).ok()?;
    in_error(v.get("error").unwrap_or(&v))
}

/// The overflow an upstream's error object (the value of `"error"`, or a bare message) says.
pub fn in_error(err: &Value) -> Option<ContextOverflow> {
    let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or_default();
    let count = |k: &str| err.get(k).and_then(Value::as_u64);
    let message = match err {
        Value::String(s) => s.as_str(),
        _ => text("message"),
    };
    let by_type = text("type") == "exceed_context_size_error" || text("code") == "context_length_exceeded";
    let said = in_message(message);
    if !by_type && said.is_none() {
        return None;
    }
    let said = said.unwrap_or_default();
    Some(ContextOverflow { prompt_tokens: count("n_prompt_tokens").or(said.prompt_tokens), context_tokens: count("n_ctx").or(said.context_tokens) })
}

/// The overflow a message says in words, with the numbers it gives.
pub fn in_message(message: &str) -> Option<ContextOverflow> {
    let m = message.to_ascii_lowercase();
    let context_tokens = number_after(&m, "maximum context length is ")
        .or_else(|| number_after(&m, "context length of only "))
        .or_else(|| number_after(&m, "context window of "))
        .or_else(|| number_after(&m, "n_ctx = "));
    let said = context_tokens.is_some()
        || m.contains("exceeds the available context size")
        || m.contains("exceed_context_size")
        || m.contains("context_length_exceeded")
        || m.contains("context length exceeded")
        || m.contains("exceeds the context window")
        || m.contains("prompt is too long");
    if !said {
        return None;
    }
    // vLLM refuses a `max_tokens` the context cannot hold with the same words: the prompt
    // is then the messages' part of what was asked, and when that fits, it is not the
    // prompt that is too long (the client's limit is; its refusal passes on as said).
    if m.contains("in the completion") || m.contains("max_tokens") || m.contains("max_completion_tokens") {
        let prompt = number_after(&m, "(").filter(|_| m.contains(" in the messages")).or_else(|| number_after(&m, "your request has "));
        return match (prompt, context_tokens) {
            (Some(n), Some(ctx)) if n > ctx => Some(ContextOverflow { prompt_tokens: Some(n), context_tokens: Some(ctx) }),
            _ => None,
        };
    }
    let prompt_tokens = number_after(&m, "your request has ")
        .or_else(|| number_after(&m, "your messages resulted in "))
        .or_else(|| number_after(&m, "you requested "))
        .or_else(|| number_after(&m, "n_prompt_tokens = "))
        .or_else(|| number_after(&m, "prompt is too long: "));
    Some(ContextOverflow { prompt_tokens, context_tokens })
}

/// The number that starts right after `prefix`'s first occurrence in `s`.
fn number_after(s: &str, prefix: &str) -> Option<u64> {
    let at = s.find(prefix)? + prefix.len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).take(19).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn vllms_refusal_of_an_output_limit_past_its_context_says_the_limit_it_takes() {
        let body = br#"{"error":{"message":"max_tokens=131072 cannot be greater than max_model_len=8192. Please request fewer output tokens. (parameter=max_tokens, value=131072)","type":"BadRequestError","param":"max_tokens","code":400}}"#;
        assert_eq!(super::output_limit(body), Some(8192));
        assert_eq!(super::in_body(body), None, "not a prompt that does not fit");
        assert_eq!(super::output_limit(br#"{"error":{"message":"This model's maximum context length is 8192 tokens."}}"#), None);
        let older = br#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, you requested 131122 tokens (50 in the messages, 131072 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError"}}"#;
        assert_eq!(super::output_limit(older), Some(8142));
        let other = br#"{"error":{"message":"'max_tokens' or 'max_completion_tokens' is too large: 131072. This model's maximum context length is 8192 tokens and your request has 50 input tokens (131072 > 8192 - 50).","type":"BadRequestError"}}"#;
        assert_eq!(super::output_limit(other), Some(8142));
        let prompt_too_long = br#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (9000 in the messages, 0 in the completion).","type":"BadRequestError"}}"#;
        assert_eq!(super::output_limit(prompt_too_long), None, "the prompt itself does not fit: an overflow, not a limit");
    }

    use super::*;

    fn of(body: &str) -> Option<ContextOverflow> {
        in_body(body.as_bytes())
    }

    #[test]
    fn llama_servers_refusal_gives_both_numbers() {
        let body = r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#;
        assert_eq!(of(body), Some(ContextOverflow { prompt_tokens: Some(5000), context_tokens: Some(4096) }));
    }

    #[test]
    fn an_older_llama_server_says_it_in_words_only() {
        let body = r#"{"error":{"code":500,"message":"the request exceeds the available context size. try increasing the context size or enable context shift","type":"server_error"}}"#;
        assert_eq!(of(body), Some(ContextOverflow::default()));
    }

    #[test]
    fn vllms_refusal_gives_the_numbers_in_its_message() {
        let body = r#"{"error":{"message":"This model's maximum context length is 2048 tokens. However, your request has 3012 input tokens. Please reduce the length of the input messages.","type":"BadRequestError","param":null,"code":400}}"#;
        assert_eq!(of(body), Some(ContextOverflow { prompt_tokens: Some(3012), context_tokens: Some(2048) }));
        let older = r#"{"object":"error","message":"This model's maximum context length is 1024 tokens. However, you requested 1500 tokens (1400 in the messages, 100 in the completion).","type":"BadRequestError","code":400}"#;
        assert_eq!(of(older), Some(ContextOverflow { prompt_tokens: Some(1400), context_tokens: Some(1024) }));
    }

    #[test]
    fn a_max_tokens_too_large_for_the_context_is_not_a_prompt_too_long() {
        // The prompt fits; the client's max_tokens does not: its own mistake, said by vLLM.
        let older = r#"{"object":"error","message":"This model's maximum context length is 32768 tokens. However, you requested 37000 tokens (5000 in the messages, 32000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","code":400}"#;
        assert_eq!(of(older), None);
        let newer = r#"{"error":{"message":"'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum context length is 32768 tokens and your request has 5000 input tokens (32000 > 32768 - 5000).","type":"BadRequestError","param":null,"code":400}}"#;
        assert_eq!(of(newer), None);
    }

    #[test]
    fn an_openai_shaped_code_is_an_overflow_whatever_the_words() {
        let body = r#"{"error":{"message":"too much","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(of(body), Some(ContextOverflow::default()));
    }

    #[test]
    fn lm_studios_words_give_the_context_size() {
        let body = r#"{"error":"Trying to keep the first 9000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens, which is not enough."}"#;
        assert_eq!(of(body).and_then(|o| o.context_tokens), Some(4096));
    }

    #[test]
    fn other_refusals_are_not_overflows() {
        for body in [
            r#"{"error":{"message":"The model `claude-x` does not exist.","type":"NotFoundError","code":404}}"#,
            r#"{"error":{"message":"'messages' is a required property","type":"invalid_request_error"}}"#,
            "not json",
            r#"{"error":{"message":"max_tokens must be at most 4096 for this context length","type":"invalid_request_error"}}"#,
        ] {
            assert_eq!(of(body), None, "{body}");
        }
    }
}
