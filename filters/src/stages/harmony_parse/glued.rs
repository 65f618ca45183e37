//! Glued words: output whose special tokens were stripped but whose words were kept
//! (`analysisWe think…assistantfinalHello`, `commentary to=functions.get_weather json{…}`).
//!
//! Data flow: between messages, [`HarmonyParse::between_messages`] spots a channel word at the
//! start of the held text and calls [`HarmonyParse::open_glued`]. `final` opens at once; after
//! `analysis` or `commentary` a recipient may follow, so the text waits in
//! `State::GluedHeader` until [`glued_tool_header`] can tell. Inside a glued message,
//! [`HarmonyParse::glued_text`] releases text as it comes, holding back only a suffix that may
//! be the start of the next `assistant<channel>` word.

use super::header::{clean_name, is_junk};
use super::{Again, HarmonyParse, Open, State};
use crate::event::Event;

/// The most text held after a stripped channel word while deciding whether a recipient follows.
pub(super) const MAX_GLUED_HEADER: usize = 512;

/// Words that stand for stripped headers: `assistantfinal`, …
pub(super) const GLUED: [(&str, &str); 3] = [("assistantfinal", "final"), ("assistantanalysis", "analysis"), ("assistantcommentary", "commentary")];

/// What follows a channel word whose special tokens were stripped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Glued {
    /// Cannot tell yet.
    NeedMore,
    /// Not a recipient: the text is the message's content.
    NotTool,
    /// A tool call to `name`; its arguments begin at byte `body_at`.
    Tool { name: String, body_at: usize },
}

/// Reads ` to=NAME [json|code|…]BODY` after a stripped channel word. `at_end`: no more text
/// will come before a special token or the end, so what is there must do.
pub(super) fn glued_tool_header(text: &str, at_end: bool) -> Glued {
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

/// How many bytes at the end of `tail` may be the start of a glued word (kept back).
fn word_start_len(tail: &str) -> usize {
    (1..=tail.len().min(GLUED[2].0.len()))
        .rev()
        .filter(|&n| tail.is_char_boundary(tail.len() - n))
        .find(|&n| GLUED.iter().any(|(w, _)| w.starts_with(&tail[tail.len() - n..])))
        .unwrap_or(0)
}

impl HarmonyParse {
    /// A message framed by a stripped channel word: `final` opens at once; after `analysis` or
    /// `commentary` a tool recipient may follow, so the text waits in `GluedHeader` until
    /// [`Self::decide_glued_header`] can tell. Returns text to read next (see `text`).
    pub(super) fn open_glued(&mut self, channel: &'static str, content: &str, out: &mut Vec<Event>) -> Again {
        if channel == "final" {
            self.open("<|channel|>final", true, out);
            return self.glued_text(content, out);
        }
        self.state = State::GluedHeader { channel, hold: content.to_owned() };
        self.decide_glued_header(false, out)
    }

    pub(super) fn open_glued_tool(&mut self, channel: &str, name: &str, body: &str, out: &mut Vec<Event>) -> Again {
        self.open(&format!("<|channel|>{channel} to={name}"), true, out);
        self.glued_text(body, out)
    }

    /// In `GluedHeader`: open the message once the held text shows whether a recipient
    /// follows the channel word (`force`: a special token or the end came, decide now).
    pub(super) fn decide_glued_header(&mut self, force: bool, out: &mut Vec<Event>) -> Again {
        let State::GluedHeader { channel, hold } = &mut self.state else { return None };
        let (channel, verdict) = (*channel, glued_tool_header(hold, force));
        if matches!(verdict, Glued::NeedMore) && hold.len() < MAX_GLUED_HEADER {
            return None;
        }
        let text = std::mem::take(hold);
        match verdict {
            Glued::Tool { name, body_at } => self.open_glued_tool(channel, &name, &text[body_at..], out),
            _ => {
                self.open(&format!("<|channel|>{channel}"), true, out);
                self.glued_text(&text, out)
            }
        }
    }

    /// Text of a message framed by words: released as it comes, up to the next
    /// `assistant<channel>` word, which closes it; what follows the word is handed back, to
    /// be read in the message the word opens.
    pub(super) fn glued_text(&mut self, t: &str, out: &mut Vec<Event>) -> Again {
        let State::Content(open) = &mut self.state else { return None };
        let Some(held) = &mut open.glued else { return self.content(t, out) };
        let mut tail = std::mem::take(held);
        tail.push_str(t);
        let found = GLUED.iter().filter_map(|(w, c)| tail.find(w).map(|i| (i, w.len(), *c))).min_by_key(|f| f.0);
        if let Some((i, len, channel)) = found {
            // Arguments that end before the word: what follows them (the word too) is read again.
            if let Some(left) = self.content(&tail[..i], out) {
                return Some(left + &tail[i..]);
            }
            if let Some(left) = self.close(None, out) {
                return Some(left + &tail[i..]);
            }
            // Text a closed tool call left between messages is settled first.
            self.hold_to_answer_if_text(out);
            return self.open_glued_word(channel, &tail[i + len..], out);
        }
        let cut = tail.len() - word_start_len(&tail);
        if let Some(left) = self.content(&tail[..cut], out) {
            return Some(left + &tail[cut..]);
        }
        match &mut self.state {
            State::Content(Open { glued: Some(held), .. }) => {
                held.push_str(&tail[cut..]);
                None
            }
            _ => Some(tail[cut..].to_owned()),
        }
    }

    /// The next message, framed by a glued word inside a glued message: its text is handed
    /// back to be read in it (never read from here: that would recurse once per message).
    fn open_glued_word(&mut self, channel: &'static str, rest: &str, out: &mut Vec<Event>) -> Again {
        if channel == "final" {
            self.open("<|channel|>final", true, out);
        } else {
            self.state = State::GluedHeader { channel, hold: String::new() };
        }
        (!rest.is_empty()).then(|| rest.to_owned())
    }
}
