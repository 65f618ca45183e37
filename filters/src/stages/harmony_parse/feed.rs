//! Feeding: each piece the scanner cuts (plain text or one special token) moves the state
//! machine, by state. Text between messages is held while it may still be a header; message
//! text flows out as it comes; tool arguments end where their JSON value ends.
//!
//! Transitions (`State`):
//! - `Between` —`<|start|>`→ `Header`; —`<|channel|>`/`<|message|>`→ `Header` (its start
//!   lost); —a glued word→ `GluedHeader` or `Content`; —other text→ `Content` (the answer).
//! - `Header` —`<|message|>`→ `Content`; —a stop token→ `Between` (the header goes to
//!   `fallback`).
//! - `Content` —a stop token→ `Between`; —`<|start|>`/`<|channel|>`→ `Header` (`<|end|>`
//!   was lost); —the end of its JSON arguments, then text→ `Between`.
//! - `GluedHeader` —enough text, or any special token→ `Content`.
//! - `Unframed` —`<|start|>`→ `Header` (what it held goes to `fallback`).

use super::glued::{glued_tool_header, Glued, GLUED, MAX_GLUED_HEADER};
use super::header::{is_junk, push_bounded};
use super::{Again, HarmonyParse, Open, State, Target, MAX_HOLD};
use crate::event::Event;
use crate::markup::{Piece, Special};

impl HarmonyParse {
    pub(super) fn on_piece(&mut self, p: Piece<'_>, out: &mut Vec<Event>) {
        let first = match p {
            Piece::Text(t) if t.trim().is_empty() => self.at_start,
            _ => std::mem::replace(&mut self.at_start, false),
        };
        let s = match p {
            Piece::Text(t) => return self.text(t, out),
            Piece::Special(s) => s,
        };
        match &mut self.state {
            State::Between { hold } => match s {
                Special::Start => {
                    self.hold_to_answer_if_text(out);
                    self.state = State::Header { header: String::new() };
                }
                Special::Channel | Special::Message | Special::Constrain => {
                    if first && s == Special::Channel && !self.sh.prepend_missing_start {
                        self.state = State::Unframed { raw: s.literal().to_owned() };
                        return;
                    }
                    // Held text such as "assistant" is this header's start; a bare channel word
                    // (`…}commentary<|message|>`, its `<|channel|>` stripped) is its channel.
                    let h = hold.trim();
                    let header = if h.starts_with("assistant") {
                        h.to_owned()
                    } else if ["commentary", "analysis", "final"].iter().any(|w| h.starts_with(w)) {
                        format!("<|channel|>{h}")
                    } else {
                        String::new()
                    };
                    self.state = State::Header { header };
                    self.in_header(s, out);
                }
                Special::End | Special::Return | Special::Call => self.hold_to_answer_if_text(out),
                Special::Other => {}
            },
            State::Header { .. } => self.in_header(s, out),
            State::Content(_) => match s {
                Special::End | Special::Return | Special::Call => {
                    if let Some(rest) = self.close(Some(s), out) {
                        // The held text closed the message itself: read what it left, then
                        // the token again.
                        self.text(&rest, out);
                        self.on_piece(p, out);
                    }
                }
                Special::Start | Special::Channel => {
                    // A new header inside a message: the upstream dropped `<|end|>`.
                    if let Some(rest) = self.close(None, out) {
                        self.text(&rest, out);
                        return self.on_piece(p, out);
                    }
                    let header = if s == Special::Channel { s.literal().to_owned() } else { String::new() };
                    self.state = State::Header { header };
                }
                _ => {}
            },
            State::GluedHeader { .. } => {
                if let Some(rest) = self.decide_glued_header(true, out) {
                    self.text(&rest, out);
                }
                self.on_piece(p, out);
            }
            State::Unframed { raw } => match s {
                Special::Start => {
                    out.push(Event::Unparsed(std::mem::take(raw)));
                    self.state = State::Header { header: String::new() };
                }
                s => push_bounded(raw, s.literal()),
            },
        }
    }

    /// Plain text, in whatever state the stream is.
    ///
    /// Text a step hands back (what follows a tool call's JSON arguments, read again in the
    /// state that ended them) is read here in a loop, never by recursion: one upstream chunk
    /// may hold thousands of messages.
    pub(super) fn text(&mut self, t: &str, out: &mut Vec<Event>) {
        let mut again = self.text_step(t, out);
        while let Some(t) = again {
            again = self.text_step(&t, out);
        }
    }

    /// Reads `t` in the current state; returns text left to read in the state it moved to.
    fn text_step(&mut self, t: &str, out: &mut Vec<Event>) -> Again {
        match &mut self.state {
            State::Between { .. } => self.between_messages(t, out),
            State::Header { header } => {
                push_bounded(header, t);
                None
            }
            State::Content(Open { glued: Some(_), .. }) => self.glued_text(t, out),
            State::Content(_) => self.content(t, out),
            State::GluedHeader { hold, .. } => {
                hold.push_str(t);
                self.decide_glued_header(false, out)
            }
            State::Unframed { raw } => {
                push_bounded(raw, t);
                None
            }
        }
    }

    /// Text between messages: the answer (reasoning-format none, plain content), or the
    /// start of a header whose special tokens were lost.
    fn between_messages(&mut self, t: &str, out: &mut Vec<Event>) -> Again {
        let State::Between { hold } = &mut self.state else { return Some(t.to_owned()) };
        hold.push_str(t);
        let held = hold.len();
        // Stripped reasoning (`analysisWe…`) only opens a response.
        let first = !self.seen_message;
        if hold.trim_start().is_empty() {
            // Only blanks so far: keep the last few (an answer may start with them), so a long
            // run of them costs linear time.
            if held > MAX_HOLD {
                let cut = super::floor_char_boundary(hold, held - MAX_HOLD);
                hold.drain(..cut);
            }
            return None;
        }
        let s = hold.trim_start();
        if let Some(rest) = s.strip_prefix("assistant") {
            for (word, channel) in GLUED.iter().map(|(w, c)| (&w["assistant".len()..], *c)) {
                if let Some(content) = rest.strip_prefix(word) {
                    let content = content.to_owned();
                    self.state = State::between();
                    return self.open_glued(channel, &content, out);
                }
            }
            let undecided = GLUED.iter().any(|(w, _)| w["assistant".len()..].starts_with(rest));
            if undecided || (held < MAX_HOLD && !rest.contains('\n')) {
                return None; // wait: a header's special token may follow
            }
        } else if let Some(rest) = s.strip_prefix("analysis").filter(|_| first) {
            // `analysisWe…`, `analysis, so…`: output that opens with the bare word glued to
            // what follows is stripped Harmony (the model writes no space after
            // `<|message|>`); `analysis of the code` is an answer. ` to=…` is a tool header.
            match rest.chars().next() {
                None => return None,
                Some(c) if !c.is_whitespace() || rest.trim_start_matches(is_junk).starts_with("to=") => {
                    let content = rest.to_owned();
                    self.state = State::between();
                    return self.open_glued("analysis", &content, out);
                }
                Some(_) if "to=".starts_with(rest.trim_start_matches(is_junk)) && held < MAX_HOLD => return None,
                Some(_) => {}
            }
        } else if let Some(rest) = s.strip_prefix("commentary") {
            // A tool header with its special tokens stripped (`commentary to=functions.x
            // json{…}`, MLX-family servers), or a bare channel word whose `<|message|>` follows.
            match glued_tool_header(rest, false) {
                Glued::Tool { name, body_at } => {
                    let body = rest[body_at..].to_owned();
                    self.state = State::between();
                    return self.open_glued_tool("commentary", &name, &body, out);
                }
                Glued::NeedMore if held < MAX_GLUED_HEADER => return None,
                _ if rest.trim_matches(is_junk).is_empty() && held < MAX_HOLD => return None,
                // `commentaryLet me…` opening the output: a stripped preamble (found in front of
                // a real `transformers serve`), as `final` below: before a capital or a digit
                // only (`commentary:`, `commentary's` are answers).
                Glued::NotTool if first && rest.chars().next().is_some_and(|c| c.is_uppercase() || c.is_ascii_digit()) => {
                    let content = rest.to_owned();
                    self.state = State::between();
                    return self.open_glued("commentary", &content, out);
                }
                _ => {}
            }
        } else if let Some(rest) = s.strip_prefix("final").filter(|_| first) {
            // `finalPlain answer…` opening the output: a stripped answer with no reasoning
            // before it (found in front of a real `transformers serve`). Only before a capital,
            // a digit or an opening mark: `finally`, `finals` and `final answer` are answers.
            match rest.chars().next() {
                None => return None,
                Some(c) if c.is_uppercase() || c.is_ascii_digit() || matches!(c, '"' | '{' | '[' | '(' | '*' | '#' | '`') => {
                    let content = rest.to_owned();
                    self.state = State::between();
                    return self.open_glued("final", &content, out);
                }
                Some(_) => {}
            }
        } else if "assistant".starts_with(s) || "commentary".starts_with(s) || (first && ("analysis".starts_with(s) || "final".starts_with(s))) {
            return None;
        }
        self.hold_to_answer(out)
    }

    /// At a header or a stop token between messages: held text that is more than blanks was
    /// an answer with no header.
    pub(super) fn hold_to_answer_if_text(&mut self, out: &mut Vec<Event>) {
        let State::Between { hold } = &mut self.state else { return };
        if hold.trim().is_empty() {
            hold.clear();
        } else {
            // An answer's text never ends early (only tool arguments do): nothing comes back.
            let _ = self.hold_to_answer(out);
            let _ = self.close(None, out);
        }
    }

    /// Held text is the start of an answer with no header: open an implicit final message.
    ///
    /// In a stream whose headers lost their special tokens, that answer is framed by words
    /// too: its text is watched for the next `assistant<channel>` word.
    pub(super) fn hold_to_answer(&mut self, out: &mut Vec<Event>) -> Again {
        let State::Between { hold } = &mut self.state else { return None };
        let held = std::mem::take(hold);
        self.open("<|channel|>final", self.glued_stream, out);
        self.text_step(&held, out)
    }

    /// Message text, out as it arrives. It flows through untokenized (DESIGN §1): the
    /// scanner has already taken every special token out, so what is left is the message's
    /// content as is, and tokenizing it for the parser would only decode it back to itself.
    /// The parser keeps the frame: the header it was fed in `open`, the stop token in `close`.
    /// Returns what follows the end of a tool call's arguments, to read next.
    pub(super) fn content(&mut self, t: &str, out: &mut Vec<Event>) -> Again {
        let State::Content(open) = &self.state else { return None };
        if t.is_empty() {
            return None;
        }
        match open.target {
            Target::Text(ch) => {
                out.push(Event::Text(ch, t.to_owned()));
                None
            }
            Target::Tool => self.tool_args(t, out),
        }
    }

    /// Tool-call arguments. A JSON value ends where it ends: text after it is the next message
    /// (a header glued on with its special tokens stripped, a preamble), never arguments.
    fn tool_args(&mut self, text: &str, out: &mut Vec<Event>) -> Again {
        let State::Content(open) = &mut self.state else { return None };
        let rest_at = if open.args_end.is_done() {
            0
        } else {
            match open.args_end.feed(text) {
                None => {
                    out.push(Event::ToolCallArgs(text.to_owned()));
                    return None;
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
        if rest.trim_matches(is_junk).is_empty() {
            return None;
        }
        let left = self.close(None, out);
        Some(left.unwrap_or_default() + rest.trim_start_matches(is_junk))
    }

    /// Close the open message (with the upstream's stop token, or `<|end|>` when it had none).
    ///
    /// Returns the text the message's held tail left after its tool arguments ended (that
    /// end closed the message first; the caller reads the text, then the stop token again).
    pub(super) fn close(&mut self, stop: Option<Special>, out: &mut Vec<Event>) -> Again {
        let State::Content(open) = &mut self.state else { return None };
        if let Some(tail) = open.glued.as_mut().filter(|t| !t.is_empty()) {
            let tail = std::mem::take(tail);
            if let Some(left) = self.content(&tail, out) {
                return Some(left);
            }
        }
        let State::Content(open) = std::mem::replace(&mut self.state, State::between()) else { return None };
        let rank = match stop {
            Some(Special::Return) => self.sh.ret,
            Some(Special::Call) => self.sh.call,
            _ => self.sh.end,
        };
        // The official parser judges the frame (header tokens of `open` + stop token).
        if !self.sh.frame_ok(&open.frame, rank) {
            self.parser_errors += 1;
        }
        if open.target == Target::Tool {
            out.push(Event::ToolCallEnd);
        }
        None
    }
}
