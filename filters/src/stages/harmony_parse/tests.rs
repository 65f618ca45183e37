//! Unit tests of `harmony-parse`: each upstream shape, cut every way.

use super::*;
use crate::testing::{encoding, parse_chunks};

fn factory() -> HarmonyParseFactory {
    HarmonyParseFactory::new(&HarmonyParseConfig::default(), encoding())
}

/// Runs `chunks` and renders the events compactly.
fn run(chunks: &[&str]) -> Vec<String> {
    parse_chunks(&factory(), chunks)
}

#[test]
fn llama_cpp_output_starts_at_channel() {
    let ev = run(&["<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi!"]);
    assert_eq!(ev, ["analysis:Think.", "final:Hi!"]);
}

#[test]
fn one_token_per_delta() {
    let ev = run(&[
        "<|channel|>",
        "analysis",
        "<|message|>",
        "We",
        " think",
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|channel|>",
        "final",
        "<|message|>",
        "Hel",
        "lo",
    ]);
    assert_eq!(ev, ["analysis:We", "analysis: think", "final:Hel", "final:lo"]);
}

#[test]
fn missing_end() {
    let ev = run(&["<|channel|>analysis<|message|>Maybe just say hi<|start|>assistant<|channel|>final<|message|>Hello!"]);
    assert_eq!(ev, ["analysis:Maybe just say hi", "final:Hello!"]);
}

#[test]
fn reasoning_format_none() {
    let ev = run(&["<|channel|>analysis<|message|>I'm\nthinking<|end|>Hello, world!\nWhat's up?"]);
    assert_eq!(ev, ["analysis:I'm\nthinking", "final:Hello, world!\nWhat's up?"]);
}

#[test]
fn plain_content_passes() {
    assert_eq!(run(&["Just ", "text."]), ["final:Just ", "final:text."]);
    assert_eq!(run(&["as", "k me"]), ["final:ask me"]);
    assert_eq!(run(&["analysis of the code"]), ["final:analysis of the code"]);
}

#[test]
fn glued_words() {
    let ev = run(&["analysisUser says hi. Probably greet.assistantfinalHello! How can I help?"]);
    assert_eq!(ev, ["analysis:User says hi. Probably greet.", "final:Hello! How can I help?"]);
    let ev = run(&["analysis", "User says hi.", "assistant", "final", "Hello!"]);
    assert_eq!(ev.concat(), "analysis:User says hi.final:Hello!");
}

/// Found in front of a real `transformers serve` (special tokens stripped): an answer with
/// no reasoning opens with `final`, a preamble with `commentary`, glued to their text.
#[test]
fn a_stripped_answer_or_preamble_opening_the_output_is_framed_by_its_word() {
    assert_eq!(run(&["finalPlain answer, no thinking."]), ["final:Plain answer, no thinking."]);
    assert_eq!(run(&["final", "Plain answer."]).concat(), "final:Plain answer.");
    let ev = run(&["commentaryLet me look that up.assistantcommentary to=functions.get_weather json{\"city\":\"Oslo\"}"]);
    assert_eq!(ev, ["preamble:Let me look that up.", "tool:functions.get_weather", "args:{\"city\":\"Oslo\"}", "end"]);
    for prose in ["finally, yes.", "finals are near", "final answer: 4", "commentary on it", "commentary: none", "commentary's tone"] {
        assert_eq!(run(&[prose]).concat(), format!("final:{prose}"), "an answer, not a header");
    }
}

#[test]
fn tool_call_headers() {
    let ev = run(&["<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>"]);
    assert_eq!(ev, ["tool:functions.get_weather", "args:{\"city\":\"Paris\"}", "end"]);
    let ev = run(&["<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{}<|call|>"]);
    assert_eq!(ev, ["tool:functions.lookup", "args:{}", "end"]);
    let ev = run(&["<|channel|>analysis to=functions.search\u{a0}\u{200b}\n<|constrain|>JSON<|message|>{}"]);
    assert_eq!(ev, ["tool:functions.search", "args:{}", "end"]);
    let ev = run(&["<|start|>assistant to=functions.query_dataset<|channel|>commentary<|constrain|>json<|message|>{}"]);
    assert_eq!(ev, ["tool:functions.query_dataset", "args:{}", "end"]);
}

/// Found by the real-llama suite: an emoji split across tokens came out as U+FFFD
/// through the parser's per-token delta on the token-id road.
#[test]
fn token_ids_split_inside_a_character_come_out_whole() {
    let f = factory();
    let enc = encoding();
    let mut ids = enc.tokenizer().encode_with_special_tokens("<|channel|>final<|message|>Ok 🦀🌦️ 東京<|return|>");
    // The ids of the multi-byte characters, one event each, as llama.cpp streams them.
    let mut stage = f.stage();
    let mut out = Vec::new();
    for id in ids.drain(..) {
        // No text: the ids alone must do (another server's shape).
        stage.on_event(Event::UpstreamTokens { ids: vec![id], text: String::new() }, &mut out);
    }
    stage.on_end(&mut out);
    let text: String = out.iter().map(|e| if let Event::Text(Channel::Final, t) = e { t.as_str() } else { "" }).collect();
    assert_eq!(text, "Ok 🦀🌦️ 東京");
    assert!(out.iter().all(|e| !matches!(e, Event::Text(_, t) if t.contains('\u{FFFD}'))), "{out:?}");
}

/// llama.cpp's native stream: a chunk that completes a held-back character carries the
/// whole text but only the last id.
#[test]
fn token_chunks_with_fewer_ids_than_their_text_keep_the_text() {
    let f = factory();
    let enc = encoding();
    let tok = |s: &str| enc.tokenizer().encode_with_special_tokens(s);
    let mut stage = f.stage();
    let mut out = Vec::new();
    for piece in ["<|channel|>", "final", "<|message|>", "Hi"] {
        stage.on_event(Event::UpstreamTokens { ids: tok(piece), text: piece.to_owned() }, &mut out);
    }
    let crab = tok(" 🦀");
    stage.on_event(Event::UpstreamTokens { ids: vec![*crab.last().unwrap()], text: " 🦀".to_owned() }, &mut out);
    stage.on_event(Event::UpstreamTokens { ids: tok("<|return|>"), text: String::new() }, &mut out);
    stage.on_end(&mut out);
    let text: String = out.iter().map(|e| if let Event::Text(Channel::Final, t) = e { t.as_str() } else { "" }).collect();
    assert_eq!(text, "Hi 🦀");
}

#[test]
fn token_ids_make_tool_calls_and_channels() {
    let f = factory();
    let enc = encoding();
    let ids = enc.tokenizer().encode_with_special_tokens("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Oslo\"}<|call|>");
    let mut stage = f.stage();
    let mut out = Vec::new();
    stage.on_event(Event::UpstreamTokens { ids, text: String::new() }, &mut out);
    stage.on_end(&mut out);
    let ev: Vec<String> = out.iter().map(crate::testing::event_string).collect();
    // Merge runs of the same kind (one event per token).
    let mut merged: Vec<String> = Vec::new();
    for e in ev {
        match (merged.last_mut(), e.split_once(':')) {
            (Some(last), Some((kind, text))) if last.starts_with(&format!("{kind}:")) && kind != "tool" => last.push_str(text),
            _ => merged.push(e),
        }
    }
    assert_eq!(merged, ["analysis:Think.", "tool:functions.get_weather", "args:{\"city\":\"Oslo\"}", "end"]);
}

#[test]
fn malformed_headers() {
    assert_eq!(run(&["<|channel|>commentary 2?<|message|>I'll check."]), ["preamble:I'll check."]);
    assert_eq!(run(&["<|channel|>––final<|message|>A"]), ["final:A"]);
    // An empty channel is not the answer (issue: agent sessions, every wild shape).
    assert_eq!(run(&["<|channel|><|message|>A"]), ["analysis:A"]);
    assert_eq!(run(&["<|start|><|start|>assistant<|channel|>final<|message|>A"]), ["final:A"]);
    assert_eq!(run(&["<|channel|>analysis<|message|>x<|end|><|return|>assistant<|channel|>final<|message|>A"]), ["analysis:x", "final:A"]);
    assert_eq!(run(&["<|channel|>final {\"answer\": 42}"]), ["unparsed:<|channel|>final {\"answer\": 42}"]);
}

#[test]
fn markup_split_and_multibyte() {
    let ev = run(&["<|chan", "nel|>final<|mess", "age|>h\u{e9}", "\u{1f600}\u{4e2d}"]);
    assert_eq!(ev.concat(), "final:h\u{e9}final:\u{1f600}\u{4e2d}");
}

#[test]
fn without_prepend_an_unframed_start_goes_to_fallback() {
    let f = HarmonyParseFactory::new(&HarmonyParseConfig { prepend_missing_start: Flag(false), ..Default::default() }, encoding());
    let ev = parse_chunks(&f, &["<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>y"]);
    assert_eq!(ev, ["unparsed:<|channel|>analysis<|message|>x<|end|>", "final:y"]);
    // A stream that starts with <|start|> is framed as usual.
    assert_eq!(parse_chunks(&f, &["<|start|>assistant<|channel|>final<|message|>z"]), ["final:z"]);
}

/// Found in review: a ~1 MB run of one character made openai-harmony's tokenizer panic
/// (reachable from a client through history-clean, and from an upstream delta).
#[test]
fn a_huge_run_of_one_character_does_not_panic() {
    let long = "a".repeat(1_300_000);
    let ev = run(&["<|channel|>final<|message|>", &long]);
    let text: String = ev.iter().map(|e| e.strip_prefix("final:").expect("all of it is the answer")).collect();
    assert_eq!(text, long);
}

/// Found in review: reasoning in a header that never reached `<|message|>` became answer
/// text once the header passed its size limit.
#[test]
fn an_endless_header_never_becomes_the_answer() {
    let long = "thinking ".repeat(300);
    let mut chunks = vec!["<|channel|>analysis "];
    chunks.extend(long.split_inclusive(' '));
    let ev = run(&chunks);
    assert!(ev.iter().all(|e| e.starts_with("unparsed:")), "{:?}", &ev[..ev.len().min(3)]);
    assert_eq!(run(&["analysisuser wants x.assistantfinalOk"]), ["analysis:user wants x.", "final:Ok"]);
}

#[test]
fn names_are_cleaned() {
    assert_eq!(clean_name("functions.get_weather\u{a0}\u{200b}"), "functions.get_weather");
    assert_eq!(clean_name("read_file json"), "read_file");
    assert_eq!(clean_name("browser.search<|channel|>x"), "browser.search");
}

#[test]
fn thousands_of_glued_tool_calls_in_one_chunk_do_not_overflow_the_stack() {
    // One chunk (a non-streamed answer): no recursion per message, and linear time.
    let many = "commentary to=functions.f json{}".repeat(20_000) + "assistantfinal".repeat(20_000).as_str();
    let ev = run(&[&many]);
    assert_eq!(ev.iter().filter(|e| e.starts_with("tool:")).count(), 20_000, "{:?}", &ev[..4]);
    assert_eq!(ev.iter().filter(|e| e.starts_with("args:")).count(), 20_000);
}

/// Found in review: in a stripped-token stream, text after a tool call's arguments opened an
/// answer that no longer watched for `assistant<channel>` words, so reasoning after it leaked
/// into the answer.
#[test]
fn after_a_glued_tool_call_the_next_glued_words_still_frame_messages() {
    let whole = r#"commentary to=functions.f json{"a":1}Checking.assistantanalysisthink more.assistantfinalDone"#;
    let want = ["tool:functions.f", "args:{\"a\":1}", "end", "final:Checking.", "analysis:think more.", "final:Done"];
    assert_eq!(run(&[whole]), want);
    let (a, b) = whole.split_at(whole.find("Checking").unwrap() + 9);
    assert_eq!(run(&[a, b]), want);
}

/// Found in review: a long run of blanks between messages was scanned whole at every piece.
#[test]
fn megabytes_of_blank_lines_between_messages_cost_linear_time() {
    let blanks = "\n".repeat(4 << 20);
    let text = format!("<|channel|>final<|message|>Hi<|end|>{blanks}<|start|>assistant<|channel|>final<|message|>there");
    assert_eq!(run(&[&text]), ["final:Hi", "final:there"]);
}
