//! `harmony-parse`: upstream text → channel text and tool calls.
//!
//! The text is cut into special tokens and plain text by [`Scanner`] (which holds back only
//! what could still become a special token). A message's text flows out as it comes, never
//! tokenized (DESIGN §1: the per-token path must not tokenize answer text): once the special
//! tokens are out, tokenizing it for the parser would only decode it back to itself.
//!
//! Upstreams send Harmony that is often not well formed (UPSTREAMS.md). This stage frames
//! each message itself into a canonical header (`<|start|>assistant[ to=R]<|channel|>C<|message|>`)
//! and a stop token, and the official `openai-harmony` [`StreamableParser`] (non-strict)
//! judges each distinct frame once per config generation (a rejected frame counts in
//! `parser_errors`; the text still flows):
//! - output that begins at `<|channel|>` (llama.cpp) gets its `<|start|>` back;
//! - a `<|start|>` or `<|channel|>` inside a message closes the message (missing `<|end|>`);
//! - text after `<|end|>` with no new header is the answer (`--reasoning-format none`);
//! - header junk (free text, en-dashes, nbsp, zero-width spaces, glued `<|channel|>`, any
//!   `<|constrain|>` form) is reduced to channel + recipient;
//! - stray `<|return|>`, `<|message|>`, double `<|start|>` and unknown `<|…|>` are dropped;
//! - a header that never reaches `<|message|>` is passed on as [`Event::Unparsed`] for
//!   `fallback`;
//! - output whose special tokens were stripped but whose words were kept
//!   (`analysisWe think…assistantfinalHello`) is framed by those words, tool headers too
//!   (`commentary to=functions.get_weather json{…}`, split anywhere, `comment` + `ary`);
//! - a tool call's JSON arguments end where the value ends: what follows (a header glued on
//!   with its tokens stripped, a preamble) is the next message;
//! - a message with an empty channel (`<|channel|><|message|>x`) is not the answer.
//!
//! Token ids (`Event::UpstreamTokens`: llama.cpp's `/completion` after `harmony-render`)
//! take another road: the prompt the proxy rendered ends with `<|start|>assistant`, so the
//! official parser reads the ids exactly as they come, with no framing and no re-tokenising
//! ([`TokenPath`]).
//!
//! Invariant: no text between `<|` and `|>` of a recognised token ever leaves this stage
//! as `Text` or `ToolCallArgs`.

use std::collections::HashMap;
use std::sync::Arc;

use openai_harmony::{HarmonyEncoding, ParseOptions, StreamableParser};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Channel, Event};
use crate::json_end::JsonEnd;
use crate::markup::{Piece, Scanner, Special};
use crate::stage::{RequestMeta, Stage, StageFactory, Stats};
use crate::values::Flag;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HarmonyParseConfig {
    /// Repair output that begins at `<|channel|>` (llama.cpp's template already sent
    /// `<|start|>assistant`). When false such a first message goes to `fallback` unparsed.
    #[serde(default = "yes")]
    pub prepend_missing_start: Flag,
    /// The Harmony encoding (only `HarmonyGptOss` exists).
    #[serde(default = "default_encoding")]
    pub encoding: String,
}

fn yes() -> Flag {
    Flag(true)
}
fn default_encoding() -> String {
    "HarmonyGptOss".into()
}

impl Default for HarmonyParseConfig {
    fn default() -> Self {
        Self { prepend_missing_start: yes(), encoding: default_encoding() }
    }
}

type Rank = u32;

/// Token ids and canned token runs, computed once per config generation.
struct Shared {
    enc: HarmonyEncoding,
    start: Rank,
    end: Rank,
    message: Rank,
    channel: Rank,
    ret: Rank,
    call: Rank,
    assistant: Vec<Rank>,
    prepend_missing_start: bool,
    /// Message frames (canonical header + stop token) the official parser has judged, with
    /// its verdict. Few distinct frames exist (a channel, or a tool name), and the parser
    /// costs milliseconds per header (it rebuilds its special-token set for each header
    /// token), so each frame is parsed once per config generation. Locked once per message.
    frames: std::sync::Mutex<HashMap<Vec<Rank>, bool>>,
}

/// Frames remembered at most (then forgotten all at once; they are cheap to learn again).
const MAX_FRAMES: usize = 4096;

impl Shared {
    /// Whether the official parser accepts the message frame `header` + `stop`.
    fn frame_ok(&self, header: &[Rank], stop: Rank) -> bool {
        let mut key = Vec::with_capacity(header.len() + 1);
        key.extend_from_slice(header);
        key.push(stop);
        let lock = || self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&ok) = lock().get(&key) {
            return ok;
        }
        let mut parser = new_parser(&self.enc);
        let ok = key.iter().all(|&t| parser.process(t).is_ok());
        let mut frames = lock();
        if frames.len() >= MAX_FRAMES {
            frames.clear();
        }
        frames.insert(key, ok);
        ok
    }

    fn special(enc: &HarmonyEncoding, s: Special) -> Rank {
        let toks = enc.tokenizer().encode_with_special_tokens(s.literal());
        debug_assert_eq!(toks.len(), 1, "{s:?} is one token");
        toks[0]
    }
}

pub struct HarmonyParseFactory {
    shared: Arc<Shared>,
}

impl HarmonyParseFactory {
    pub fn new(cfg: &HarmonyParseConfig, enc: HarmonyEncoding) -> Self {
        let shared = Shared {
            start: Shared::special(&enc, Special::Start),
            end: Shared::special(&enc, Special::End),
            message: Shared::special(&enc, Special::Message),
            channel: Shared::special(&enc, Special::Channel),
            ret: Shared::special(&enc, Special::Return),
            call: Shared::special(&enc, Special::Call),
            assistant: enc.tokenizer().encode_ordinary("assistant"),
            prepend_missing_start: cfg.prepend_missing_start.0,
            frames: Default::default(),
            enc,
        };
        Self { shared: Arc::new(shared) }
    }

    /// A stage outside any pipeline (history-clean, tests).
    pub fn stage(&self) -> HarmonyParse {
        HarmonyParse::new(self.shared.clone())
    }
}

impl StageFactory for HarmonyParseFactory {
    fn new_stage(&self, _req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(self.stage())
    }
}

/// Where the text of the open message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Text(Channel),
    Tool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    ExpectStart,
    /// Reading a header (in `self.header`).
    Header,
    /// Inside a message's content.
    Content(Target),
    /// `prepend_missing_start = false` and the output began without `<|start|>`:
    /// collect raw text (in `self.header`) until the next `<|start|>`.
    Unframed,
    /// A channel word was read with its special tokens stripped (`…assistantcommentary`);
    /// the text after it (in `self.hold`) decides whether a tool recipient follows
    /// (` to=functions.x json{…}`) before the message opens.
    GluedHeader(&'static str),
}

/// The most text held after a stripped channel word while deciding whether a recipient follows.
const MAX_GLUED_HEADER: usize = 512;

/// What follows a channel word whose special tokens were stripped.
#[derive(Debug, PartialEq, Eq)]
enum Glued {
    /// Cannot tell yet.
    NeedMore,
    /// Not a recipient: the text is the message's content.
    NotTool,
    /// A tool call to `name`; its arguments begin at byte `body_at`.
    Tool { name: String, body_at: usize },
}

/// Reads ` to=NAME [json|code|…]BODY` after a stripped channel word. `at_end`: no more text
/// will come before a special token or the end, so what is there must do.
fn glued_tool_header(text: &str, at_end: bool) -> Glued {
    let lead = text.len() - text.trim_start_matches(is_junk).len();
    let t = &text[lead..];
    if !t.starts_with("to=") {
        return if !at_end && "to=".starts_with(t) { Glued::NeedMore } else { Glued::NotTool };
    }
    let after = &t[3..];
    let name_end = match after.find(|c: char| is_junk(c) || matches!(c, '{' | '[' | '<' | '"')) {
        Some(i) => i,
        None if at_end => after.len(),
        None => return Glued::NeedMore,
    };
    let name = clean_name(&after[..name_end]);
    if name.is_empty() {
        return Glued::NotTool;
    }
    let rest_at = lead + 3 + name_end;
    let rest = &text[rest_at..];
    let skip = rest.len() - rest.trim_start_matches(is_junk).len();
    let r = &rest[skip..];
    // An optional constraint word glued before the body: `json`, `JSON`, `code`, `shelljson`.
    let word_end = r.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(r.len());
    if word_end == r.len() && !at_end {
        return Glued::NeedMore; // the word (or the body) may go on
    }
    let word = r[..word_end].to_ascii_lowercase();
    let constraint = word.ends_with("json") || word == "code";
    Glued::Tool { name, body_at: rest_at + skip + if constraint { word_end } else { 0 } }
}

/// Longest header kept; what a header holds beyond it is dropped (memory stays bounded, and
/// none of it can become answer text).
const MAX_HEADER: usize = 64 << 10;
/// Longest text handed to the tokenizer at once: openai-harmony's tokenizer panics on
/// runs of about a megabyte of one character (its regex gives up and it unwraps).
const MAX_ENCODE: usize = 16 << 10;
/// Longest text held between messages while deciding whether it starts a header.
const MAX_HOLD: usize = 64;
/// Words that stand for stripped headers: `assistantfinal`, …
const GLUED: [(&str, &str); 3] = [
    ("assistantfinal", "final"),
    ("assistantanalysis", "analysis"),
    ("assistantcommentary", "commentary"),
];

/// The token-id road: the official parser, started inside an assistant turn's header, reads
/// every id (it is the authority on headers: channel, recipient). Content bytes are decoded
/// here and released only as complete UTF-8: a character split across tokens (an emoji, CJK)
/// must not reach the client as a replacement character.
struct TokenPath {
    parser: StreamableParser,
    /// Between `<|message|>` and the message's stop token: where its text goes.
    open: Option<Target>,
    /// Content bytes of an incomplete UTF-8 sequence.
    pending: Vec<u8>,
}

impl TokenPath {
    fn new(enc: &HarmonyEncoding) -> Self {
        let parser = StreamableParser::new_with_options(enc.clone(), Some(openai_harmony::chat::Role::Assistant), ParseOptions { strict: false })
            .expect("the Harmony encoding has its stop tokens");
        Self { parser, open: None, pending: Vec::new() }
    }

    fn target(&self) -> Target {
        match (self.parser.current_recipient(), self.parser.current_channel().as_deref()) {
            (Some(_), _) => Target::Tool,
            (None, Some("analysis") | Some("")) => Target::Text(Channel::Analysis),
            (None, Some("commentary")) => Target::Text(Channel::Preamble),
            _ => Target::Text(Channel::Final),
        }
    }

    fn emit(target: Target, text: String, out: &mut Vec<Event>) {
        if text.is_empty() {
            return;
        }
        out.push(match target {
            Target::Text(ch) => Event::Text(ch, text),
            Target::Tool => Event::ToolCallArgs(text),
        });
    }

    /// Feeds one upstream chunk: its ids and the text the upstream decoded them to. Pushes
    /// what they say; returns how many ids the parser refused.
    fn feed(&mut self, sh: &Shared, ids: &[Rank], text: &str, out: &mut Vec<Event>) -> u64 {
        let is_special = |id: &Rank| [sh.message, sh.end, sh.ret, sh.call, sh.start, sh.channel].contains(id) || *id >= 199_998;
        // Plain content: the upstream's text is whole even when it sent fewer ids than tokens.
        if let Some(target) = self.open.filter(|_| !text.is_empty() && !ids.iter().any(is_special)) {
            let mut errors = 0;
            for &id in ids {
                errors += u64::from(self.parser.process(id).is_err());
            }
            self.pending.clear();
            Self::emit(target, text.to_owned(), out);
            return errors;
        }
        let mut errors = 0;
        for &id in ids {
            if self.parser.process(id).is_err() {
                errors += 1;
            }
            if id == sh.message {
                let t = self.target();
                if t == Target::Tool {
                    out.push(Event::ToolCallStart { name: self.parser.current_recipient().unwrap_or_default(), id: None });
                }
                self.open = Some(t);
            } else if [sh.end, sh.ret, sh.call, sh.start].contains(&id) {
                self.close_message(out);
            } else if let Some(target) = self.open {
                if let Ok(bytes) = sh.enc.tokenizer().decode_bytes([id]) {
                    self.pending.extend_from_slice(&bytes);
                    let valid = match std::str::from_utf8(&self.pending) {
                        Ok(_) => self.pending.len(),
                        // An error with no length is an incomplete sequence at the end: wait.
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(_) => self.pending.len(),
                    };
                    let rest = self.pending.split_off(valid);
                    let text = String::from_utf8_lossy(&std::mem::replace(&mut self.pending, rest)).into_owned();
                    Self::emit(target, text, out);
                }
            }
        }
        errors
    }

    /// The open message ended: what it held goes out; a tool call ends with it.
    fn close_message(&mut self, out: &mut Vec<Event>) {
        let Some(target) = self.open.take() else { return };
        let held = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
        Self::emit(target, held, out);
        if target == Target::Tool {
            out.push(Event::ToolCallEnd);
        }
    }
}

pub struct HarmonyParse {
    sh: Arc<Shared>,
    /// Set once the upstream sends token ids.
    token_path: Option<TokenPath>,
    scanner: Scanner,
    state: State,
    header: String,
    /// Text between messages, held while it may still be a header.
    hold: String,
    /// The open message was framed by words, not tokens (`…assistantfinal…`).
    glued: bool,
    glued_tail: String,
    /// Nothing but whitespace has arrived yet.
    at_start: bool,
    /// A message has been opened.
    seen_message: bool,
    /// Where the open tool call's JSON arguments end.
    args_end: JsonEnd,
    /// The open message's canonical header tokens (its frame, judged at `close`).
    tokens: Vec<Rank>,
    parser_errors: u64,
}

impl HarmonyParse {
    fn new(sh: Arc<Shared>) -> Self {
        Self {
            sh,
            token_path: None,
            scanner: Scanner::default(),
            state: State::ExpectStart,
            header: String::new(),
            hold: String::new(),
            glued: false,
            glued_tail: String::new(),
            at_start: true,
            seen_message: false,
            args_end: JsonEnd::default(),
            tokens: Vec::new(),
            parser_errors: 0,
        }
    }

    fn push_text(&mut self, text: &str, out: &mut Vec<Event>) {
        let mut scanner = std::mem::take(&mut self.scanner);
        scanner.push(text, |p| self.on_piece(p, out));
        self.scanner = scanner;
    }

    /// Release everything held and close the open message (end of the upstream's output).
    fn flush(&mut self, out: &mut Vec<Event>) {
        if let Some(tp) = &mut self.token_path {
            // Cut before its stop token (max_tokens): the open message ends here.
            tp.close_message(out);
            return;
        }
        let mut scanner = std::mem::take(&mut self.scanner);
        scanner.finish(|p| self.on_piece(p, out));
        self.scanner = scanner;
        match self.state {
            State::ExpectStart => {
                if !self.hold.trim().is_empty() {
                    self.hold_to_answer(out);
                    self.close(None, out);
                }
                self.hold.clear();
            }
            State::Header => self.headerless(out),
            State::Content(_) => self.close(None, out),
            State::Unframed => {
                out.push(Event::Unparsed(std::mem::take(&mut self.header)));
                self.state = State::ExpectStart;
            }
            State::GluedHeader(_) => {
                self.decide_glued_header(true, out);
                self.close(None, out);
            }
        }
    }

    fn on_piece(&mut self, p: Piece<'_>, out: &mut Vec<Event>) {
        let first = match p {
            Piece::Text(t) if t.trim().is_empty() => self.at_start,
            _ => std::mem::replace(&mut self.at_start, false),
        };
        match self.state {
            State::ExpectStart => match p {
                Piece::Text(t) => self.between_messages(t, out),
                Piece::Special(Special::Start) => {
                    self.hold_to_answer_if_text(out);
                    self.header.clear();
                    self.state = State::Header;
                }
                Piece::Special(s @ (Special::Channel | Special::Message | Special::Constrain)) => {
                    if first && s == Special::Channel && !self.sh.prepend_missing_start {
                        self.header.clear();
                        self.header.push_str(s.literal());
                        self.state = State::Unframed;
                        return;
                    }
                    // Held text such as "assistant" is this header's start; a bare channel word
                    // (`…}commentary<|message|>`, its `<|channel|>` stripped) is its channel.
                    self.header.clear();
                    let held = std::mem::take(&mut self.hold);
                    let h = held.trim();
                    if h.starts_with("assistant") {
                        self.header.push_str(h);
                    } else if ["commentary", "analysis", "final"].iter().any(|w| h.starts_with(w)) {
                        self.header.push_str("<|channel|>");
                        self.header.push_str(h);
                    }
                    self.state = State::Header;
                    self.in_header(s, out);
                }
                Piece::Special(Special::End | Special::Return | Special::Call) => {
                    self.hold_to_answer_if_text(out);
                }
                Piece::Special(Special::Other) => {}
            },
            State::Header => match p {
                Piece::Text(t) => {
                    let room = MAX_HEADER.saturating_sub(self.header.len());
                    self.header.push_str(&t[..floor_char_boundary(t, room)]);
                }
                Piece::Special(s) => self.in_header(s, out),
            },
            State::Content(_) => match p {
                Piece::Text(t) => {
                    if self.glued {
                        self.glued_text(t, out)
                    } else {
                        self.content(t, out)
                    }
                }
                Piece::Special(s @ (Special::End | Special::Return | Special::Call)) => {
                    self.close(Some(s), out);
                }
                Piece::Special(s @ (Special::Start | Special::Channel)) => {
                    // A new header inside a message: the upstream dropped `<|end|>`.
                    self.close(None, out);
                    self.header.clear();
                    if s == Special::Channel {
                        self.header.push_str(s.literal());
                    }
                    self.state = State::Header;
                }
                Piece::Special(_) => {}
            },
            State::GluedHeader(_) => match p {
                Piece::Text(t) => {
                    self.hold.push_str(t);
                    self.decide_glued_header(false, out);
                }
                Piece::Special(_) => {
                    self.decide_glued_header(true, out);
                    self.on_piece(p, out);
                }
            },
            State::Unframed => match p {
                Piece::Special(Special::Start) => {
                    out.push(Event::Unparsed(std::mem::take(&mut self.header)));
                    self.state = State::Header;
                }
                Piece::Text(t) => {
                    let room = MAX_HEADER.saturating_sub(self.header.len());
                    self.header.push_str(&t[..floor_char_boundary(t, room)]);
                }
                Piece::Special(s) => self.header.push_str(s.literal()),
            },
        }
    }

    fn in_header(&mut self, s: Special, out: &mut Vec<Event>) {
        match s {
            Special::Channel | Special::Constrain => {
                if s == Special::Constrain {
                    self.header.push(' ');
                }
                self.header.push_str(s.literal());
            }
            Special::Message => self.open(false, out),
            Special::Start => {
                // `<|start|><|start|>assistant`: an empty header restarts; a real one was cut.
                if !self.header.trim().is_empty() {
                    self.headerless(out);
                    self.state = State::Header;
                }
                self.header.clear();
            }
            Special::End | Special::Return | Special::Call => self.headerless(out),
            Special::Other => {}
        }
    }

    /// Text between messages: the answer (reasoning-format none, plain content), or the
    /// start of a header whose special tokens were lost.
    fn between_messages(&mut self, t: &str, out: &mut Vec<Event>) {
        self.hold.push_str(t);
        let s = self.hold.trim_start();
        // Stripped reasoning (`analysisWe…`) only opens a response.
        let first = !self.seen_message;
        if s.is_empty() {
            return;
        }
        if let Some(rest) = s.strip_prefix("assistant") {
            for (word, channel) in GLUED.iter().map(|(w, c)| (&w["assistant".len()..], *c)) {
                if let Some(content) = rest.strip_prefix(word) {
                    let content = content.to_owned();
                    self.hold.clear();
                    self.open_glued(channel, &content, out);
                    return;
                }
            }
            let undecided = GLUED.iter().any(|(w, _)| w["assistant".len()..].starts_with(rest));
            if undecided || (self.hold.len() < MAX_HOLD && !rest.contains('\n')) {
                return; // wait: a header's special token may follow
            }
        } else if let Some(rest) = s.strip_prefix("analysis").filter(|_| first) {
            // `analysisWe…`, `analysis, so…`: output that opens with the bare word glued to
            // what follows is stripped Harmony (the model writes no space after
            // `<|message|>`); `analysis of the code` is an answer. ` to=…` is a tool header.
            match rest.chars().next() {
                None => return,
                Some(c) if !c.is_whitespace() || rest.trim_start_matches(is_junk).starts_with("to=") => {
                    let content = rest.to_owned();
                    self.hold.clear();
                    self.open_glued("analysis", &content, out);
                    return;
                }
                Some(_) if "to=".starts_with(rest.trim_start_matches(is_junk)) && self.hold.len() < MAX_HOLD => return,
                Some(_) => {}
            }
        } else if let Some(rest) = s.strip_prefix("commentary") {
            // A tool header with its special tokens stripped (`commentary to=functions.x
            // json{…}`, MLX-family servers), or a bare channel word whose `<|message|>` follows.
            match glued_tool_header(rest, false) {
                Glued::Tool { name, body_at } => {
                    let body = rest[body_at..].to_owned();
                    self.hold.clear();
                    self.open_glued_tool("commentary", &name, &body, out);
                    return;
                }
                Glued::NeedMore if self.hold.len() < MAX_GLUED_HEADER => return,
                _ if rest.trim_matches(is_junk).is_empty() && self.hold.len() < MAX_HOLD => return,
                _ => {}
            }
        } else if !s.is_empty() && ("assistant".starts_with(s) || "commentary".starts_with(s) || (first && "analysis".starts_with(s))) {
            return;
        }
        self.hold_to_answer(out);
    }

    fn hold_to_answer_if_text(&mut self, out: &mut Vec<Event>) {
        if self.hold.trim().is_empty() {
            self.hold.clear();
        } else {
            self.hold_to_answer(out);
            self.close(None, out);
        }
    }

    /// Held text is the start of an answer with no header: open an implicit final message.
    fn hold_to_answer(&mut self, out: &mut Vec<Event>) {
        let held = std::mem::take(&mut self.hold);
        self.header.clear();
        self.header.push_str("<|channel|>final");
        self.open(false, out);
        self.content(&held, out);
        self.hold = held;
        self.hold.clear();
    }

    /// A message framed by a stripped channel word: `final` opens at once; after `analysis` or
    /// `commentary` a tool recipient may follow, so the text waits in `GluedHeader` until
    /// [`Self::decide_glued_header`] can tell.
    fn open_glued(&mut self, channel: &'static str, content: &str, out: &mut Vec<Event>) {
        if channel == "final" {
            self.header.clear();
            self.header.push_str("<|channel|>final");
            self.open(true, out);
            self.glued_text(content, out);
            return;
        }
        self.hold.clear();
        self.hold.push_str(content);
        self.state = State::GluedHeader(channel);
        self.decide_glued_header(false, out);
    }

    fn open_glued_tool(&mut self, channel: &str, name: &str, body: &str, out: &mut Vec<Event>) {
        self.header.clear();
        self.header.push_str("<|channel|>");
        self.header.push_str(channel);
        self.header.push_str(" to=");
        self.header.push_str(name);
        self.open(true, out);
        self.glued_text(body, out);
    }

    /// In `GluedHeader`: open the message once the held text shows whether a recipient
    /// follows the channel word (`force`: a special token or the end came, decide now).
    fn decide_glued_header(&mut self, force: bool, out: &mut Vec<Event>) {
        let State::GluedHeader(channel) = self.state else { return };
        match glued_tool_header(&self.hold, force) {
            Glued::NeedMore if self.hold.len() < MAX_GLUED_HEADER => {}
            Glued::Tool { name, body_at } => {
                let text = std::mem::take(&mut self.hold);
                self.open_glued_tool(channel, &name, &text[body_at..], out);
            }
            _ => {
                let text = std::mem::take(&mut self.hold);
                self.header.clear();
                self.header.push_str("<|channel|>");
                self.header.push_str(channel);
                self.open(true, out);
                self.glued_text(&text, out);
            }
        }
    }

    /// `<|message|>` ends the header in `self.header`: the message's text flows from here.
    fn open(&mut self, glued: bool, out: &mut Vec<Event>) {
        let header = std::mem::take(&mut self.header);
        let h = HeaderInfo::parse(&header);
        let (channel_word, recipient, empty_channel) = (h.channel, h.recipient, h.empty_channel);
        self.header = header;
        self.header.clear();
        self.glued = glued;
        self.seen_message = true;
        let target = match (&recipient, channel_word) {
            (Some(_), _) => Target::Tool,
            (None, Some("analysis")) => Target::Text(Channel::Analysis),
            (None, Some("commentary")) => Target::Text(Channel::Preamble),
            // `<|channel|><|message|>`: no channel at all is not the answer.
            (None, None) if empty_channel => Target::Text(Channel::Analysis),
            // `final`, no channel, or a channel we cannot read: the answer.
            (None, _) => Target::Text(Channel::Final),
        };
        let channel = match target {
            Target::Text(Channel::Analysis) => "analysis",
            Target::Text(Channel::Final) => "final",
            _ => "commentary",
        };
        // The canonical header the official parser understands.
        let sh = self.sh.clone();
        self.tokens.clear();
        self.tokens.push(sh.start);
        self.tokens.extend_from_slice(&sh.assistant);
        if let Some(r) = &recipient {
            encode(&sh.enc, &format!(" to={r}"), &mut self.tokens);
        }
        self.tokens.push(sh.channel);
        self.tokens.extend(sh.enc.tokenizer().encode_ordinary(channel));
        self.tokens.push(sh.message);
        if let Some(r) = recipient {
            out.push(Event::ToolCallStart { name: r, id: None });
        }
        self.args_end = JsonEnd::default();
        self.state = State::Content(target);
    }


    /// Message text, out as it arrives. It flows through untokenized (DESIGN §1): the
    /// scanner has already taken every special token out, so what is left is the message's
    /// content as is, and tokenizing it for the parser would only decode it back to itself.
    /// The parser keeps the frame: the header it was fed in `open`, the stop token in `close`.
    fn content(&mut self, t: &str, out: &mut Vec<Event>) {
        let State::Content(target) = self.state else { return };
        if t.is_empty() {
            return;
        }
        match target {
            Target::Text(ch) => out.push(Event::Text(ch, t.to_owned())),
            Target::Tool => self.tool_args(t.to_owned(), out),
        }
    }

    /// Tool-call arguments. A JSON value ends where it ends: text after it is the next message
    /// (a header glued on with its special tokens stripped, a preamble), never arguments.
    fn tool_args(&mut self, text: String, out: &mut Vec<Event>) {
        let rest_at = if self.args_end.is_done() {
            0
        } else {
            match self.args_end.feed(&text) {
                None => {
                    out.push(Event::ToolCallArgs(text));
                    return;
                }
                Some(i) => {
                    if i > 0 {
                        out.push(Event::ToolCallArgs(text[..i].to_owned()));
                    }
                    i
                }
            }
        };
        let rest = &text[rest_at..];
        if !rest.trim_matches(is_junk).is_empty() {
            self.close(None, out);
            self.between_messages(rest.trim_start_matches(is_junk), out);
        }
    }

    /// Text of a message framed by words: watch for the next `assistant<channel>` word.
    fn glued_text(&mut self, t: &str, out: &mut Vec<Event>) {
        self.glued_tail.push_str(t);
        loop {
            let found = GLUED
                .iter()
                .filter_map(|(w, c)| self.glued_tail.find(w).map(|i| (i, w.len(), *c)))
                .min_by_key(|f| f.0);
            match found {
                Some((i, len, channel)) => {
                    let tail = std::mem::take(&mut self.glued_tail);
                    self.content(&tail[..i], out);
                    self.close(None, out);
                    // Text a closed tool call left between messages is settled first.
                    self.hold_to_answer_if_text(out);
                    self.open_glued(channel, &tail[i + len..], out);
                    return;
                }
                None => {
                    // Keep back a suffix that may be the start of a word.
                    let keep = (1..=self.glued_tail.len().min(GLUED[2].0.len()))
                        .rev()
                        .filter(|&n| self.glued_tail.is_char_boundary(self.glued_tail.len() - n))
                        .find(|&n| {
                            let suffix = &self.glued_tail[self.glued_tail.len() - n..];
                            GLUED.iter().any(|(w, _)| w.starts_with(suffix))
                        })
                        .unwrap_or(0);
                    let cut = self.glued_tail.len() - keep;
                    let tail = std::mem::take(&mut self.glued_tail);
                    self.content(&tail[..cut], out);
                    if matches!(self.state, State::Content(_)) {
                        self.glued_tail.push_str(&tail[cut..]);
                    } else {
                        // The message closed (its JSON arguments ended): the rest is between messages.
                        self.between_messages(&tail[cut..], out);
                    }
                    return;
                }
            }
        }
    }

    /// Close the open message (with the upstream's stop token, or `<|end|>` when it had none).
    fn close(&mut self, stop: Option<Special>, out: &mut Vec<Event>) {
        if !matches!(self.state, State::Content(_)) {
            return;
        }
        if self.glued && !self.glued_tail.is_empty() {
            let tail = std::mem::take(&mut self.glued_tail);
            self.content(&tail, out);
        }
        // Flushing the tail may have closed the message (its JSON arguments ended).
        let State::Content(target) = self.state else { return };
        let rank = match stop {
            Some(Special::Return) => self.sh.ret,
            Some(Special::Call) => self.sh.call,
            _ => self.sh.end,
        };
        // The official parser judges the frame (header tokens of `open` + stop token).
        if !self.sh.frame_ok(&self.tokens, rank) {
            self.parser_errors += 1;
        }
        if target == Target::Tool {
            out.push(Event::ToolCallEnd);
        }
        self.glued = false;
        self.state = State::ExpectStart;
    }

    /// A header that ended without `<|message|>`: hand it to `fallback`.
    fn headerless(&mut self, out: &mut Vec<Event>) {
        let h = std::mem::take(&mut self.header);
        if !h.trim().is_empty() {
            out.push(Event::Unparsed(h));
        }
        self.state = State::ExpectStart;
    }
}

/// The largest index `<= i` on a char boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Tokenizes `text` in pieces of at most [`MAX_ENCODE`] bytes (the decoded text is the same).
fn encode(enc: &HarmonyEncoding, mut text: &str, out: &mut Vec<Rank>) {
    while !text.is_empty() {
        let cut = match floor_char_boundary(text, MAX_ENCODE) {
            0 => text.len(),
            n => n,
        };
        out.extend(enc.tokenizer().encode_ordinary(&text[..cut]));
        text = &text[cut..];
    }
}

fn new_parser(enc: &HarmonyEncoding) -> StreamableParser {
    StreamableParser::new_with_options(enc.clone(), None, ParseOptions { strict: false })
        .expect("the Harmony encoding has its stop tokens")
}

impl Stage for HarmonyParse {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        match ev {
            Event::Upstream(t) => self.push_text(&t, out),
            Event::UpstreamTokens { ids, text } => {
                let sh = self.sh.clone();
                let tp = self.token_path.get_or_insert_with(|| TokenPath::new(&sh.enc));
                self.parser_errors += tp.feed(&sh, &ids, &text, out);
            }
            ev @ (Event::Finish(_) | Event::Error(_) | Event::Abort) => {
                self.flush(out);
                out.push(ev);
            }
            other => out.push(other),
        }
    }
    fn on_end(&mut self, out: &mut Vec<Event>) {
        self.flush(out);
    }
    fn stats(&self, st: &mut Stats) {
        st.parser_errors += self.parser_errors;
    }
}

/// Channel and recipient read from a header as upstreams really write it.
#[derive(Debug, PartialEq, Eq)]
pub struct HeaderInfo<'a> {
    pub channel: Option<&'static str>,
    pub recipient: Option<String>,
    /// What follows the channel word, for headers that never reached `<|message|>`.
    pub rest: &'a str,
    /// `<|channel|>` with no word after it at all.
    pub empty_channel: bool,
}

/// Characters that are junk around names: whitespace, nbsp, zero-width spaces, BOM.
pub fn is_junk(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00A0}')
}

impl<'a> HeaderInfo<'a> {
    pub fn parse(h: &'a str) -> Self {
        let mut channel = None;
        let mut rest = "";
        let mut empty_channel = false;
        if let Some(i) = h.find("<|channel|>") {
            let after = &h[i + "<|channel|>".len()..];
            let word_end = after.find(|c: char| is_junk(c) || c == '<').unwrap_or(after.len());
            let word = &after[..word_end];
            channel = ["final", "analysis", "commentary"].into_iter().find(|c| word.contains(c));
            rest = &after[word_end..];
            empty_channel = after.trim_matches(is_junk).is_empty();
        }
        let recipient = h.find("to=").map(|i| clean_name(&h[i + 3..])).filter(|n| !n.is_empty());
        HeaderInfo { channel, recipient, rest, empty_channel }
    }
}

/// A recipient as written after `to=`, cut at the first junk or markup, with no trailing
/// punctuation. `functions.` is kept (tool-bridge strips it).
pub fn clean_name(s: &str) -> String {
    let s = s.trim_start_matches(is_junk);
    let end = s.find(|c: char| is_junk(c) || c == '<' || c == '"' || c == '{').unwrap_or(s.len());
    s[..end].trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')).to_owned()
}

/// The final text of a whole Harmony transcript (used by history-clean and tests).
pub fn final_text(factory: &HarmonyParseFactory, text: &str) -> String {
    let mut stage = factory.stage();
    let mut out = Vec::new();
    stage.push_text(text, &mut out);
    stage.flush(&mut out);
    let mut answer = String::new();
    for ev in out {
        if let Event::Text(Channel::Final, t) = ev {
            answer.push_str(&t);
        }
    }
    // Pieces of text around removed tokens may join into markup again.
    crate::markup::strip_all(&answer)
}

impl crate::pipeline::StageConfig for HarmonyParseConfig {
    fn validate(&self) -> Vec<String> {
        crate::vocab::check_encoding_name(&self.encoding).err().map(|e| format!("encoding: {e}")).into_iter().collect()
    }
    fn build(&self, b: &mut crate::pipeline::Builder<'_>) {
        let f = HarmonyParseFactory::new(self, b.enc.clone());
        b.push(f);
    }
}

#[cfg(test)]
mod tests {
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
        let ev = run(&["<|channel|>", "analysis", "<|message|>", "We", " think", "<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Hel", "lo"]);
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
        assert_eq!(
            run(&["<|channel|>analysis<|message|>x<|end|><|return|>assistant<|channel|>final<|message|>A"]),
            ["analysis:x", "final:A"]
        );
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
        assert_eq!(ev.concat().len(), "final:".len() + long.len());
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
}

