//! Tokenizing what clients send in time linear in its length.
//!
//! openai-harmony's renderer tokenizes each text with its own copy of tiktoken, whose merge
//! is quadratic in the length of one pre-tokenized piece, and o200k's pre-tokenizer lets a
//! piece (a word, a run of punctuation or of blanks) be any length: one 64 KB word took 5 s.
//! Agents paste minified files and base64, so long pieces are normal input, never a 400.
//!
//! [`render_linear`] keeps the official renderer for the prompt's structure and has the texts
//! that hold a long piece tokenized by `bpe-openai` instead (a backtracking BPE, linear, whose
//! tokens are tiktoken's: checked against tiktoken-rs in the tests):
//! 1. each such text (a message's content, the developer instructions) is replaced by a
//!    marker, eight private-use characters drawn at random that appear nowhere in the
//!    conversation (checked; drawn again if they do), and an index;
//! 2. the official renderer renders that conversation;
//! 3. every run of ordinary tokens between two special tokens is one text the renderer
//!    tokenized on its own (content sits between `<|message|>` and `<|end|>`): a run that
//!    holds a marker is decoded, the originals are put back, and it is tokenized again, whole.
//!
//! Exact by construction: tokenizing is per piece, and step 3 tokenizes the same text the
//! renderer would have, as one text. This rests on each message having one content (what
//! `harmony-render` builds): the renderer tokenizes each content on its own, and two contents
//! of a message would form one run. Tool definitions are rendered by the official renderer
//! as they are (their text is reshaped, line by line, into TypeScript), so their pieces are
//! bounded instead ([`MAX_TOOL_PIECE`], a 400 naming the tool).

use openai_harmony::chat::{Content, Message};
use openai_harmony::HarmonyEncoding;

/// Pieces longer than this (bytes) are tokenized by the linear encoder.
pub const LONG_PIECE: usize = 64;
/// The longest piece a tool's description or parameters may hold (bytes).
pub const MAX_TOOL_PIECE: usize = 256;

/// The o200k tokens of `text` (no special tokens), in linear time.
pub fn encode_ordinary(text: &str) -> Vec<u32> {
    bpe_openai::o200k_base().encode(text)
}

/// The longest pre-tokenized piece of `text`, in bytes.
pub fn longest_piece(text: &str) -> usize {
    bpe_openai::o200k_base().split(text).map(str::len).max().unwrap_or(0)
}

fn has_long_piece(text: &str) -> bool {
    text.len() > LONG_PIECE && longest_piece(text) > LONG_PIECE
}

/// `render(messages)`, with the texts that hold a long piece tokenized in linear time (see
/// the module header). The same tokens as `render(messages)`.
pub fn render_linear<E>(enc: &HarmonyEncoding, messages: &[Message], render: impl FnOnce(&[Message]) -> Result<Vec<u32>, E>) -> Result<Vec<u32>, E> {
    let mut originals: Vec<String> = Vec::new();
    let mut marked: Option<Vec<Message>> = None;
    let mut marker = None;
    for (i, m) in messages.iter().enumerate() {
        for (j, c) in m.content.iter().enumerate() {
            let text = match c {
                Content::Text(t) => &t.text,
                Content::DeveloperContent(d) => match &d.instructions {
                    Some(t) => t,
                    None => continue,
                },
                _ => continue,
            };
            if !has_long_piece(text) {
                continue;
            }
            let mark = marker.get_or_insert_with(|| free_marker(messages)).clone();
            let copy = marked.get_or_insert_with(|| messages.to_vec());
            let placeholder = format!("{mark}{}{mark}", originals.len());
            match &mut copy[i].content[j] {
                Content::Text(t) => originals.push(std::mem::replace(&mut t.text, placeholder)),
                Content::DeveloperContent(d) => originals.push(d.instructions.replace(placeholder).unwrap_or_default()),
                _ => {}
            }
        }
    }
    let (Some(marked), Some(mark)) = (marked, marker) else { return render(messages) };
    let tokens = render(&marked)?;
    Ok(restore(enc, &tokens, &mark, &originals))
}

/// The longest piece among the strings of `v` (keys included), as the renderer writes them
/// out (raw, not JSON-escaped: a `\n` in a description is one byte of a blank run).
pub fn longest_piece_in(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => longest_piece(s),
        serde_json::Value::Array(a) => a.iter().map(longest_piece_in).max().unwrap_or(0),
        serde_json::Value::Object(o) => o.iter().map(|(k, v)| longest_piece(k).max(longest_piece_in(v))).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks what the official renderer tokenizes as it is (headers: names, recipients,
/// channels, content types): no piece longer than [`MAX_TOOL_PIECE`].
pub fn check_headers(messages: &[Message]) -> Result<(), String> {
    for m in messages {
        let fields = [m.author.name.as_deref(), m.recipient.as_deref(), m.channel.as_deref(), m.content_type.as_deref()];
        if let Some(f) = fields.into_iter().flatten().find(|f| f.len() > MAX_TOOL_PIECE && longest_piece(f) > MAX_TOOL_PIECE) {
            return Err(format!("a name of {} bytes ({}…); at most {MAX_TOOL_PIECE} can be rendered", f.len(), f.chars().take(40).collect::<String>()));
        }
    }
    Ok(())
}

/// Eight private-use characters drawn at random that the conversation does not hold: no
/// client can know them in advance, and one look (linear) proves them absent.
fn free_marker(messages: &[Message]) -> String {
    let all = serde_json::to_string(messages).unwrap_or_default();
    loop {
        let id = crate::stage::random_id("", 8);
        // Each letter or digit to a private-use character of its own.
        let mark: String = id.bytes().map(|b| char::from_u32(0xE000 + u32::from(b)).unwrap_or('\u{E000}')).collect();
        if !all.contains(&mark) {
            return mark;
        }
    }
}

/// The rendered tokens with each run that holds a marker tokenized again, originals put back.
fn restore(enc: &HarmonyEncoding, tokens: &[u32], mark: &str, originals: &[String]) -> Vec<u32> {
    let bpe = enc.tokenizer();
    let mut out = Vec::with_capacity(tokens.len());
    let mut run_start = 0;
    for i in 0..=tokens.len() {
        let at_special = i < tokens.len() && bpe.is_special_token(tokens[i]);
        if i < tokens.len() && !at_special {
            continue;
        }
        let run = &tokens[run_start..i];
        match bpe.decode_utf8(run.iter().copied()).ok().filter(|t| t.contains(mark)) {
            Some(text) => out.extend(encode_ordinary(&put_back(&text, mark, originals))),
            None => out.extend_from_slice(run),
        }
        if i < tokens.len() {
            out.push(tokens[i]);
        }
        run_start = i + 1;
    }
    out
}

/// `text` with every `{mark}{k}{mark}` replaced by `originals[k]`.
fn put_back(text: &str, mark: &str, originals: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + originals.iter().map(String::len).sum::<usize>());
    let mut rest = text;
    while let Some(a) = rest.find(mark) {
        out.push_str(&rest[..a]);
        let after = &rest[a + mark.len()..];
        let Some(b) = after.find(mark) else {
            out.push_str(&rest[a..]);
            return out;
        };
        match after[..b].parse::<usize>().ok().and_then(|k| originals.get(k)) {
            Some(orig) => out.push_str(orig),
            None => out.push_str(&rest[a..a + mark.len() + b + mark.len()]),
        }
        rest = &after[b + mark.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openai_harmony::chat::{Conversation, DeveloperContent, Role, SystemContent};
    use proptest::prelude::*;

    fn enc() -> HarmonyEncoding {
        crate::vocab::encoding().unwrap()
    }

    #[test]
    fn the_linear_encoder_gives_tiktokens_tokens() {
        let tk = tiktoken_rs::o200k_base_singleton();
        let texts = [
            "Hello, world! It's 2026-12-01.\n\n  indented\tcode();\r\n",
            "   \n\n\n   x  ",
            "don't WON'T they'LL I'm",
            "ünïcödé 漢字かな 🙂👍🏽 ",
            "a".repeat(3000).as_str(),
            &"QUJD".repeat(700),
            &"}}});".repeat(300),
            &" ".repeat(2000),
            &"\n".repeat(500),
        ]
        .map(|s| s.to_owned());
        for t in texts {
            assert_eq!(encode_ordinary(&t), tk.encode_ordinary(&t), "{:?}", &t[..t.len().min(40)]);
        }
    }

    proptest! {
        #[test]
        fn the_linear_encoder_agrees_with_tiktoken_on_any_text(t in "(?s)[a-zA-Z0-9 \\t\\n\\r.,;:'\"!?(){}/\\\\=+_-]{0,200}|\\PC{0,60}") {
            let tk = tiktoken_rs::o200k_base_singleton();
            prop_assert_eq!(encode_ordinary(&t), tk.encode_ordinary(&t));
        }
    }

    fn conversation(user: &str, instructions: &str) -> Vec<Message> {
        Conversation::from_messages([
            Message::from_role_and_content(Role::System, SystemContent::new()),
            Message::from_role_and_content(Role::Developer, DeveloperContent::new().with_instructions(instructions)),
            Message::from_role_and_content(Role::User, user),
            Message::from_role_and_content(Role::Assistant, format!("Seen: {user}")).with_channel("final"),
        ])
        .messages
    }

    #[test]
    fn a_conversation_with_long_words_renders_to_the_official_tokens() {
        let enc = enc();
        let long = format!("see {} and {}\n{}", "x".repeat(5000), "QUJD+/".repeat(400), "  ".repeat(300));
        let every_private_use: String = ('\u{E000}'..='\u{E0FF}').collect();
        let crowded = format!("{every_private_use} {long}");
        for (user, instr) in [
            (long.as_str(), "Be brief."),
            ("short", long.as_str()),
            (long.as_str(), long.as_str()),
            ("a\u{E000}0\u{E000}b", long.as_str()),
            (crowded.as_str(), "x"),
        ] {
            let msgs = conversation(user, instr);
            let official = enc.render_conversation(&msgs, None).unwrap();
            let linear = render_linear(&enc, &msgs, |m| enc.render_conversation(m, None)).unwrap();
            assert_eq!(linear, official);
        }
    }
}
