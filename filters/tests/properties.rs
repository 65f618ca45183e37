//! Properties of the Harmony stages (proptest), stated as invariants:
//! chunking never changes what the client gets; no markup leaks; well-formed conversations
//! come out byte for byte; the chain never panics and always ends with one finish and one
//! `[DONE]`.

use harmony_filters::testing::{
    assemble_json, assemble_messages, assemble_responses, assemble_sse, llama_sse, message_view, messages_meta, pipeline, response_view, responses_meta,
    run_sse, Assembled,
};
use harmony_filters::{Compiled, RequestMeta};
use proptest::prelude::*;
use std::sync::OnceLock;

/// harmony-parse → fallback → tool-bridge (openai_tool_calls, reasoning shown) → sse-encode.
fn ide() -> &'static Compiled {
    static P: OnceLock<Compiled> = OnceLock::new();
    P.get_or_init(|| {
        pipeline(r#"[{ type = "harmony-parse" }, { type = "fallback" }, { type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content", preambles = "content" }, { type = "sse-encode" }]"#)
    })
}

/// What a client keeps, without the random ids.
fn seen(a: &Assembled) -> (String, String, Vec<(String, String)>, String) {
    (a.content.clone(), a.reasoning.clone(), a.tool_calls.iter().map(|(_, n, args)| (n.clone(), args.clone())).collect(), a.finish.clone())
}

fn client_view(deltas: &[&str], byte_cuts: &[usize]) -> Assembled {
    let body = llama_sse(deltas, "stop");
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut last = 0;
    let mut cuts: Vec<usize> = byte_cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort();
    for c in cuts {
        parts.push(&body[last..c]);
        last = c;
    }
    parts.push(&body[last..]);
    let out = run_sse(ide(), &RequestMeta::new("m", true), &parts);
    assemble_sse(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
}

/// Cuts `text` into deltas at the given char positions (anywhere, including inside tokens).
fn cut_chars(text: &str, cuts: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (chars.len() + 1)).collect();
    at.sort();
    at.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for c in at.into_iter().chain([chars.len()]) {
        if c > last {
            out.push(chars[last..c].iter().collect());
            last = c;
        }
    }
    out
}

const SPECIALS: [&str; 9] =
    ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>", "<|endoftext|>", "<|reserved_200013|>"];

/// Arbitrary interleavings of Harmony pieces: tokens, channel words, recipients, junk, text.
fn harmony_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(SPECIALS.to_vec()).prop_map(str::to_owned),
        2 => prop::sample::select(vec!["assistant", "analysis", "final", "commentary", "assistantfinal", "analysisThe", " to=functions.f", " to=browser.search", "to=python", " json", "JSON", "\u{a0}", "\u{200b}", "\n", "<|", "|>", "<|chan", "nel|>", "–", "??"]).prop_map(str::to_owned),
        3 => "[a-zA-Z0-9 {}\":,.é中😀<|>]{0,12}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Text without markup or glued header words.
fn plain_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?'é中😀\n]{0,30}".prop_filter("no glued words", |s| !s.contains("assistant") && !s.contains("analysis"))
}

#[derive(Debug, Clone)]
enum Msg {
    Analysis(String),
    Final(String),
    Call(String, String),
}

fn conversation() -> impl Strategy<Value = Vec<Msg>> {
    let msg = prop_oneof![
        plain_text().prop_map(Msg::Analysis),
        plain_text().prop_map(Msg::Final),
        ("[a-z_]{1,12}", prop::collection::btree_map("[a-z]{1,6}", "[a-zA-Z0-9 ]{0,8}", 0..4))
            .prop_map(|(name, args)| Msg::Call(name, serde_json::to_string(&args).unwrap())),
    ];
    prop::collection::vec(msg, 1..6)
}

fn render(conv: &[Msg]) -> String {
    let mut s = String::new();
    for (i, m) in conv.iter().enumerate() {
        // llama.cpp's output starts at the channel; later messages get their <|start|>.
        if i > 0 {
            s.push_str("<|start|>assistant");
        }
        match m {
            Msg::Analysis(t) => s.push_str(&format!("<|channel|>analysis<|message|>{t}<|end|>")),
            Msg::Final(t) => s.push_str(&format!("<|channel|>final<|message|>{t}<|end|>")),
            Msg::Call(n, a) => s.push_str(&format!("<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>{a}<|call|>")),
        }
    }
    s
}

/// harmony-parse → fallback → tool-bridge (final_only: the default pipeline) → sse-encode.
fn final_only() -> &'static Compiled {
    static P: OnceLock<Compiled> = OnceLock::new();
    P.get_or_init(|| pipeline(r#"[{ type = "harmony-parse" }, { type = "fallback" }, { type = "tool-bridge" }, { type = "sse-encode" }]"#))
}

/// `render`, with the special tokens stripped and their words kept (MLX-family servers).
fn render_stripped(conv: &[Msg]) -> String {
    let mut s = render(conv);
    for t in SPECIALS {
        s = s.replace(t, "");
    }
    s
}

/// Runs `deltas` through `p`, streamed or not, and assembles what the client gets.
fn assembled(p: &Compiled, deltas: &[&str], stream: bool) -> Result<Assembled, TestCaseError> {
    let body = llama_sse(deltas, "stop");
    let out = run_sse(p, &RequestMeta::new("m", stream), &[&body]);
    let a = if stream { assemble_sse(&out) } else { assemble_json(&out) };
    a.map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Tool arguments stream as the model writes them, so what an `openai_tool_calls` client
    /// assembles is exactly one value the model wrote, whatever the upstream sent (cut bodies,
    /// glued headers after them, garbage) and however it was cut into deltas, streamed or not:
    /// it parses as JSON; or the answer ended `length` (the model was cut off inside it); or
    /// its brackets and quotes close exactly at its end (the model's own `{,}` is not
    /// repaired once sent). Arguments that did not begin like JSON are `{}`.
    #[test]
    fn tool_arguments_are_one_whole_value(text in harmony_soup(), cuts in prop::collection::vec(any::<usize>(), 0..10), stream in any::<bool>()) {
        let deltas = cut_chars(&text, &cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let a = assembled(ide(), &refs, stream)?;
        for (_, name, args) in &a.tool_calls {
            let parses = serde_json::from_str::<serde_json::Value>(args).is_ok();
            let closes = harmony_filters::json_end::JsonEnd::default().feed(args) == Some(args.len());
            prop_assert!(parses || closes || a.finish == "length", "{name}({args:?}) from {text:?}, finish {}", a.finish);
        }
    }

    /// Reasoning never reaches the answer: the analysis of a conversation (raw, or with its
    /// special tokens stripped) never shows up in `content`, in the default pipeline or the
    /// IDE one, whatever the chunking.
    #[test]
    fn reasoning_never_reaches_the_answer(conv in conversation(), stripped in any::<bool>(), cuts in prop::collection::vec(any::<usize>(), 0..12), stream in any::<bool>()) {
        const MARK: &str = "QZXSECRET";
        // The model writes no space right after `<|message|>`, so stripped reasoning is glued
        // to its word (`analysisWe…`); `analysis of…` is an answer by design.
        let conv: Vec<Msg> = conv.into_iter().map(|m| match m { Msg::Analysis(t) => Msg::Analysis(format!("{}{MARK}", t.trim_start())), other => other }).collect();
        // Stripped output is read by its words; it always opens with its reasoning.
        let stripped = stripped && matches!(conv.first(), Some(Msg::Analysis(_)));
        let text = if stripped { render_stripped(&conv) } else { render(&conv) };
        let deltas = cut_chars(&text, &cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        for p in [final_only(), ide()] {
            let a = assembled(p, &refs, stream)?;
            prop_assert!(!a.content.contains(MARK), "reasoning in the answer: {:?} from {:?}", a.content, text);
            for (_, _, args) in &a.tool_calls {
                prop_assert!(!args.contains(MARK), "reasoning in arguments: {args:?} from {text:?}");
            }
        }
    }

    /// Any partition into deltas (inside special tokens too) and any cut of the SSE bytes
    /// (inside multi-byte characters too) gives the client the same thing as the whole text.
    #[test]
    fn chunking_never_changes_the_output(text in harmony_soup(), delta_cuts in prop::collection::vec(any::<usize>(), 0..12), byte_cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let whole = client_view(&[&text], &[]);
        let deltas = cut_chars(&text, &delta_cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let cut = client_view(&refs, &byte_cuts);
        prop_assert_eq!(seen(&whole), seen(&cut), "deltas {:?}", deltas);
    }

    /// No `<|…|>` ever reaches content, reasoning or tool names, in any mode, streamed or not.
    #[test]
    fn no_markup_leaks(text in harmony_soup(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let deltas = cut_chars(&text, &cuts);
        let mut data = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            if i > 0 { data.push(0); }
            data.extend_from_slice(d.as_bytes());
        }
        // The fuzz target's property, which checks every mode, streamed and not.
        harmony_filters::fuzz_targets::harmony_stream(&data);
    }

    /// A well-formed conversation: the final text comes out byte for byte, tool arguments
    /// reassemble exactly, reasoning is the analysis text.
    #[test]
    fn well_formed_conversations_come_out_exactly(conv in conversation(), cuts in prop::collection::vec(any::<usize>(), 0..16)) {
        let text = render(&conv);
        let deltas = cut_chars(&text, &cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let a = client_view(&refs, &[]);
        let finals: String = conv.iter().filter_map(|m| if let Msg::Final(t) = m { Some(t.as_str()) } else { None }).collect();
        let analysis: String = conv.iter().filter_map(|m| if let Msg::Analysis(t) = m { Some(t.as_str()) } else { None }).collect();
        let calls: Vec<(String, String)> = conv.iter().filter_map(|m| if let Msg::Call(n, a) = m { Some((n.clone(), a.clone())) } else { None }).collect();
        prop_assert_eq!(&a.content, &finals);
        prop_assert_eq!(&a.reasoning, &analysis);
        prop_assert_eq!(seen(&a).2, calls.clone());
        prop_assert_eq!(a.finish.as_str(), if calls.is_empty() { "stop" } else { "tool_calls" });
    }

    /// The Responses encoder at any upstream chunking: the event stream is well formed
    /// (`assemble_responses`: sequence numbers, every item added once and done once, the
    /// terminal event's output equals the items streamed, no markup), the non-streamed object
    /// says the same, and cutting the deltas differently changes nothing a client keeps.
    #[test]
    fn responses_events_are_well_formed_at_any_chunking(text in harmony_soup(), cuts in prop::collection::vec(any::<usize>(), 0..10), length in any::<bool>()) {
        let finish = if length { "length" } else { "stop" };
        let view = |deltas: &[&str], stream: bool| -> Result<Assembled, TestCaseError> {
            let body = llama_sse(deltas, finish);
            let out = run_sse(ide(), &responses_meta(stream), &[&body]);
            let a = if stream {
                assemble_responses(&out)
            } else {
                serde_json::from_slice(&out).map_err(|e| e.to_string()).and_then(|v| response_view(&v))
            };
            let a = a.map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            Ok(Assembled { tool_calls: a.tool_calls.into_iter().map(|(_, n, args)| (String::new(), n, args)).collect(), ..a })
        };
        let deltas = cut_chars(&text, &cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let whole = view(&[&text], true)?;
        prop_assert_eq!(&whole, &view(&refs, true)?);
        let json = view(&refs, false)?;
        prop_assert_eq!(&Assembled { usage: None, ..whole }, &Assembled { usage: None, ..json });
    }

    /// The Messages encoder at any upstream chunking: the event stream is well formed
    /// (`assemble_messages`: message_start first, blocks started, delta'd and stopped in
    /// order, signed thinking, one message_delta and message_stop, no markup), the message
    /// object says the same, and cutting the deltas differently changes nothing a client keeps.
    #[test]
    fn messages_events_are_well_formed_at_any_chunking(text in harmony_soup(), cuts in prop::collection::vec(any::<usize>(), 0..10), length in any::<bool>()) {
        let finish = if length { "length" } else { "stop" };
        let view = |deltas: &[&str], stream: bool| -> Result<Assembled, TestCaseError> {
            let body = llama_sse(deltas, finish);
            let out = run_sse(ide(), &messages_meta(stream), &[&body]);
            let a = if stream {
                assemble_messages(&out)
            } else {
                serde_json::from_slice(&out).map_err(|e| e.to_string()).and_then(|v| message_view(&v))
            };
            let a = a.map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            // Ids are random; a streamed input is its pieces joined, a whole one re-serialized.
            let calls = a.tool_calls.into_iter().map(|(_, n, args)| (String::new(), n, serde_json::from_str::<serde_json::Value>(&args).map(|v| v.to_string()).unwrap_or(args))).collect();
            Ok(Assembled { tool_calls: calls, usage: None, ..a })
        };
        let deltas = cut_chars(&text, &cuts);
        let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let whole = view(&[&text], true)?;
        prop_assert_eq!(&whole, &view(&refs, true)?);
        let json = view(&refs, false)?;
        // A call cut off inside its arguments has partial input streamed, `{}` as a whole message.
        if whole.finish != "max_tokens" {
            prop_assert_eq!(&whole, &json);
        }
    }

    /// Arbitrary text and arbitrary finish: never a panic, always one finish and one [DONE]
    /// (assemble checks both), and the non-streamed form is a valid completion.
    #[test]
    fn always_one_finish_and_one_done(text in "\\PC{0,80}", length in any::<bool>()) {
        let finish = if length { "length" } else { "stop" };
        let body = llama_sse(&[&text], finish);
        for stream in [true, false] {
            let out = run_sse(ide(), &RequestMeta::new("m", stream), &[&body]);
            let a = if stream { assemble_sse(&out) } else { assemble_json(&out) };
            let a = a.map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
            if length { prop_assert_eq!(a.finish.as_str(), "length"); }
        }
    }
}
