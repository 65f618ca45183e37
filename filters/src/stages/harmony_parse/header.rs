//! Headers: what a message's header says (channel, recipient) as upstreams really write it,
//! the special tokens met while reading one, and the canonical frame the official parser
//! judges.
//!
//! Data flow: `State::Header` collects the header's text; `<|message|>` hands it to
//! [`HarmonyParse::open`], which reads it with [`HeaderInfo`], emits `ToolCallStart` for a
//! recipient, and opens the message with its canonical frame
//! (`<|start|>assistant[ to=R]<|channel|>C<|message|>`, as token ids).

use super::{encode, HarmonyParse, Open, State, Target, MAX_HEADER};
use crate::event::{Channel, Event};
use crate::markup::Special;

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

/// Appends header text, keeping at most [`MAX_HEADER`] bytes (the rest is dropped: memory
/// stays bounded, and none of it can become answer text).
pub(super) fn push_bounded(header: &mut String, t: &str) {
    let room = MAX_HEADER.saturating_sub(header.len());
    header.push_str(&t[..super::floor_char_boundary(t, room)]);
}

impl HarmonyParse {
    /// A special token inside a header (state `Header`).
    pub(super) fn in_header(&mut self, s: Special, out: &mut Vec<Event>) {
        let State::Header { header } = &mut self.state else { return };
        match s {
            Special::Channel | Special::Constrain => {
                if s == Special::Constrain {
                    push_bounded(header, " ");
                }
                push_bounded(header, s.literal());
            }
            Special::Message => {
                let header = std::mem::take(header);
                self.open(&header, false, out);
            }
            Special::Start => {
                // `<|start|><|start|>assistant`: an empty header restarts; a real one was cut.
                if !header.trim().is_empty() {
                    self.headerless(out);
                }
                self.state = State::Header { header: String::new() };
            }
            Special::End | Special::Return | Special::Call => self.headerless(out),
            Special::Other => {}
        }
    }

    /// `<|message|>` ends `header`: the message's text flows from here. `glued`: it was framed
    /// by words whose special tokens were stripped (`…assistantfinal…`).
    pub(super) fn open(&mut self, header: &str, glued: bool, out: &mut Vec<Event>) {
        let h = HeaderInfo::parse(header);
        self.seen_message = true;
        self.glued_stream |= glued;
        let target = match (&h.recipient, h.channel) {
            (Some(_), _) => Target::Tool,
            (None, Some("analysis")) => Target::Text(Channel::Analysis),
            (None, Some("commentary")) => Target::Text(Channel::Preamble),
            // `<|channel|><|message|>`: no channel at all is not the answer.
            (None, None) if h.empty_channel => Target::Text(Channel::Analysis),
            // `final`, no channel, or a channel we cannot read: the answer.
            (None, _) => Target::Text(Channel::Final),
        };
        let channel = match target {
            Target::Text(Channel::Analysis) => "analysis",
            Target::Text(Channel::Final) => "final",
            _ => "commentary",
        };
        // The canonical header the official parser understands.
        let sh = &self.sh;
        let mut frame = Vec::with_capacity(16);
        frame.push(sh.start);
        frame.extend_from_slice(&sh.assistant);
        if let Some(r) = &h.recipient {
            encode(&sh.enc, &format!(" to={r}"), &mut frame);
        }
        frame.push(sh.channel);
        frame.extend(sh.enc.tokenizer().encode_ordinary(channel));
        frame.push(sh.message);
        if let Some(r) = h.recipient {
            out.push(Event::ToolCallStart { name: r, id: None });
        }
        self.state = State::Content(Open::new(target, frame, glued));
    }

    /// A header that ended without `<|message|>`: hand it to `fallback`.
    pub(super) fn headerless(&mut self, out: &mut Vec<Event>) {
        if let State::Header { header } = std::mem::replace(&mut self.state, State::between()) {
            if !header.trim().is_empty() {
                out.push(Event::Unparsed(header));
            }
        }
    }
}
