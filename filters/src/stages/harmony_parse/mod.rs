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
//!
//! Files: this one holds the stage, its config and its states; `feed.rs` moves the state
//! machine piece by piece (its transitions are listed there); `header.rs` reads headers and
//! builds the canonical frame; `glued.rs` frames output by its stripped words;
//! `token_ids.rs` is the token-id road; `tests.rs` the unit tests.

use std::collections::HashMap;
use std::sync::Arc;

use openai_harmony::{HarmonyEncoding, ParseOptions, StreamableParser};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Channel, Event};
use crate::json_end::JsonEnd;
use crate::markup::{Scanner, Special};

mod feed;
mod glued;
mod header;
mod token_ids;

use crate::stage::{RequestMeta, Stage, StageFactory, Stats};
use crate::values::Flag;
pub use header::{clean_name, is_junk, HeaderInfo};
use token_ids::TokenPath;

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

/// Text a step of the state machine hands back, to be read next in the state it left.
type Again = Option<String>;

/// Where the stream is; each state holds what only it needs.
#[derive(Debug)]
enum State {
    /// Between messages. `hold`: text held while it may still be a header (`assistant`,
    /// a channel word whose special tokens were stripped); else it becomes the answer.
    Between { hold: String },
    /// Reading a header, up to its `<|message|>` (at most [`MAX_HEADER`] bytes kept).
    Header { header: String },
    /// Inside a message's content.
    Content(Open),
    /// `prepend_missing_start = false` and the output began without `<|start|>`: the raw
    /// text up to the next `<|start|>`, for `fallback`.
    Unframed { raw: String },
    /// A channel word was read with its special tokens stripped (`…assistantcommentary`);
    /// the text after it (`hold`) decides whether a tool recipient follows
    /// (` to=functions.x json{…}`) before the message opens.
    GluedHeader { channel: &'static str, hold: String },
}

impl State {
    fn between() -> Self {
        State::Between { hold: String::new() }
    }
}

/// The open message.
#[derive(Debug)]
struct Open {
    target: Target,
    /// Its canonical header as token ids (its frame, judged with the stop token at `close`).
    frame: Vec<Rank>,
    /// Where a tool call's JSON arguments end.
    args_end: JsonEnd,
    /// `Some` when the message was framed by words, not tokens (`…assistantfinal…`): the text
    /// held back because it may be the start of the next such word.
    glued: Option<String>,
}

impl Open {
    fn new(target: Target, frame: Vec<Rank>, glued: bool) -> Self {
        Self { target, frame, args_end: JsonEnd::default(), glued: glued.then(String::new) }
    }
}

/// Longest header kept; what a header holds beyond it is dropped (memory stays bounded, and
/// none of it can become answer text).
const MAX_HEADER: usize = 64 << 10;
/// Longest text handed to the tokenizer at once: openai-harmony's tokenizer panics on
/// runs of about a megabyte of one character (its regex gives up and it unwraps).
const MAX_ENCODE: usize = 16 << 10;
/// Longest text held between messages while deciding whether it starts a header.
const MAX_HOLD: usize = 64;
/// Longest piece of upstream text read at once (see `push_text`).
const MAX_PIECE: usize = 1024;

pub struct HarmonyParse {
    sh: Arc<Shared>,
    /// Set once the upstream sends token ids.
    token_path: Option<TokenPath>,
    scanner: Scanner,
    state: State,
    /// Nothing but whitespace has arrived yet.
    at_start: bool,
    /// A message has been opened.
    seen_message: bool,
    /// A message was framed by words (the stream's special tokens were stripped): an answer
    /// with no header is watched for such words too.
    glued_stream: bool,
    parser_errors: u64,
}

impl HarmonyParse {
    fn new(sh: Arc<Shared>) -> Self {
        Self {
            sh,
            token_path: None,
            scanner: Scanner::default(),
            state: State::between(),
            at_start: true,
            seen_message: false,
            glued_stream: false,
            parser_errors: 0,
        }
    }

    /// Upstream text, read in pieces of at most [`MAX_PIECE`] bytes: a step of the state
    /// machine may copy what is left of its piece (text held between messages, text read
    /// again after a tool call's arguments), so one huge chunk with thousands of messages
    /// (a non-streamed answer) costs linear time, not quadratic. Any cut is fine: upstreams
    /// cut text anywhere already.
    fn push_text(&mut self, mut text: &str, out: &mut Vec<Event>) {
        let mut scanner = std::mem::take(&mut self.scanner);
        while !text.is_empty() {
            let cut = match floor_char_boundary(text, MAX_PIECE) {
                0 => text.len(),
                n => n,
            };
            scanner.push(&text[..cut], |p| self.on_piece(p, out));
            text = &text[cut..];
        }
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
        // Each round ends the state; text a round hands back is read, then the state ended again.
        loop {
            let again = match &mut self.state {
                State::Between { hold } => {
                    let again = if hold.trim().is_empty() { None } else { self.hold_to_answer(out) };
                    let _ = self.close(None, out);
                    self.state = State::between();
                    again
                }
                State::Header { .. } => {
                    self.headerless(out);
                    None
                }
                State::Content(_) => self.close(None, out),
                State::Unframed { raw } => {
                    out.push(Event::Unparsed(std::mem::take(raw)));
                    self.state = State::between();
                    None
                }
                State::GluedHeader { .. } => self.decide_glued_header(true, out),
            };
            match again {
                Some(t) => self.text(&t, out),
                None if matches!(self.state, State::Between { .. } | State::Header { .. } | State::Unframed { .. }) => break,
                None => {}
            }
        }
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
    StreamableParser::new_with_options(enc.clone(), None, ParseOptions { strict: false }).expect("the Harmony encoding has its stop tokens")
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

impl crate::stage::StageConfig for HarmonyParseConfig {
    fn place() -> crate::stage::config::Place {
        crate::stage::config::Place::ONCE
    }
    fn validate(&self) -> Vec<String> {
        crate::vocab::check_encoding_name(&self.encoding).err().map(|e| format!("encoding: {e}")).into_iter().collect()
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        let f = HarmonyParseFactory::new(self, b.enc.clone());
        b.push(f);
    }
}

#[cfg(test)]
mod tests;
