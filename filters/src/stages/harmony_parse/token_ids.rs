//! Token ids (`Event::UpstreamTokens`: llama.cpp's `/completion` after `harmony-render`): the
//! prompt the proxy rendered ends with `<|start|>assistant`, so the official parser reads the
//! ids exactly as they come, with no framing and no re-tokenising.
//!
//! Data flow: each chunk's ids go to the parser; at `<|message|>` the parser's channel and
//! recipient say where the message's text goes; plain content takes the upstream's decoded
//! text as is, and text around special tokens is decoded here from the ids, released only as
//! complete UTF-8.

use openai_harmony::{HarmonyEncoding, ParseOptions, StreamableParser};

use super::{Rank, Shared, Target};
use crate::event::{Channel, Event};

/// The token-id road: the official parser, started inside an assistant turn's header, reads
/// every id (it is the authority on headers: channel, recipient). Content bytes are decoded
/// here and released only as complete UTF-8: a character split across tokens (an emoji, CJK)
/// must not reach the client as a replacement character.
pub(super) struct TokenPath {
    parser: StreamableParser,
    /// Between `<|message|>` and the message's stop token: where its text goes.
    open: Option<Target>,
    /// Content bytes of an incomplete UTF-8 sequence.
    pending: Vec<u8>,
}

impl TokenPath {
    pub(super) fn new(enc: &HarmonyEncoding) -> Self {
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
    pub(super) fn feed(&mut self, sh: &Shared, ids: &[Rank], text: &str, out: &mut Vec<Event>) -> u64 {
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
    pub(super) fn close_message(&mut self, out: &mut Vec<Event>) {
        let Some(target) = self.open.take() else { return };
        let held = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
        Self::emit(target, held, out);
        if target == Target::Tool {
            out.push(Event::ToolCallEnd);
        }
    }
}
