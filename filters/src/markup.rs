//! Finding Harmony special tokens (`<|name|>`) in text that arrives in arbitrary pieces.
//!
//! Upstreams may split a special token across deltas (`"<|chan"`, `"nel|>"`). The scanner
//! releases text as soon as it cannot be part of a special token, and holds back only a
//! tail that still could be one.

/// The structural tokens of Harmony; anything else of the form `<|name|>` is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Start,
    End,
    Message,
    Channel,
    Constrain,
    Return,
    Call,
    /// `<|endoftext|>`, `<|reserved_200013|>`, `<|refusal|>`, …: markup with no structure for us.
    Other,
}

impl Special {
    fn from_name(name: &str) -> Self {
        match name {
            "start" => Self::Start,
            "end" => Self::End,
            "message" => Self::Message,
            "channel" => Self::Channel,
            "constrain" => Self::Constrain,
            "return" => Self::Return,
            "call" => Self::Call,
            _ => Self::Other,
        }
    }

    /// The literal token.
    pub fn literal(self) -> &'static str {
        match self {
            Self::Start => "<|start|>",
            Self::End => "<|end|>",
            Self::Message => "<|message|>",
            Self::Channel => "<|channel|>",
            Self::Constrain => "<|constrain|>",
            Self::Return => "<|return|>",
            Self::Call => "<|call|>",
            Self::Other => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Special(Special),
}

/// Longest name accepted between `<|` and `|>`; longer runs are plain text.
const MAX_NAME: usize = 40;

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Outcome of looking for a special token at the start of `s` (which begins with `<`).
enum Probe {
    /// A whole token of this many bytes.
    Token(Special, usize),
    /// Could still become a token when more text arrives.
    Partial,
    /// Plain text.
    No,
}

fn probe(s: &[u8]) -> Probe {
    debug_assert_eq!(s.first(), Some(&b'<'));
    match s.get(1) {
        None => return Probe::Partial,
        Some(b'|') => {}
        Some(_) => return Probe::No,
    }
    let mut i = 2;
    while i < s.len() && is_name_byte(s[i]) {
        i += 1;
        if i - 2 > MAX_NAME {
            return Probe::No;
        }
    }
    let name_len = i - 2;
    match (s.get(i), s.get(i + 1)) {
        (None, _) => Probe::Partial,
        (Some(b'|'), None) if name_len > 0 => Probe::Partial,
        (Some(b'|'), Some(b'>')) if name_len > 0 => {
            // The name is ASCII, so this slice is valid UTF-8.
            let name = std::str::from_utf8(&s[2..i]).unwrap_or("");
            Probe::Token(Special::from_name(name), i + 2)
        }
        _ => Probe::No,
    }
}

/// Calls `f` for each piece of `s`; returns how many bytes were consumed (the rest may
/// still become a special token). With `at_end`, everything is consumed.
pub fn split<'a>(s: &'a str, at_end: bool, mut f: impl FnMut(Piece<'a>)) -> usize {
    let bytes = s.as_bytes();
    let mut text_start = 0;
    let mut i = 0;
    while let Some(off) = memchr_lt(&bytes[i..]) {
        let at = i + off;
        match probe(&bytes[at..]) {
            Probe::Token(sp, len) => {
                if at > text_start {
                    f(Piece::Text(&s[text_start..at]));
                }
                f(Piece::Special(sp));
                i = at + len;
                text_start = i;
            }
            Probe::Partial if !at_end => {
                if at > text_start {
                    f(Piece::Text(&s[text_start..at]));
                }
                return at;
            }
            Probe::Partial | Probe::No => i = at + 1,
        }
    }
    if bytes.len() > text_start {
        f(Piece::Text(&s[text_start..]));
    }
    bytes.len()
}

fn memchr_lt(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'<')
}

/// Streaming front of [`split`]: feed text as it arrives, get pieces as soon as they are sure.
#[derive(Debug, Default)]
pub struct Scanner {
    held: String,
}

impl Scanner {
    pub fn push(&mut self, input: &str, f: impl FnMut(Piece<'_>)) {
        if self.held.is_empty() {
            let used = split(input, false, f);
            self.held.push_str(&input[used..]);
        } else {
            self.held.push_str(input);
            let held = std::mem::take(&mut self.held);
            let used = split(&held, false, f);
            self.held = held;
            self.held.drain(..used);
        }
    }

    /// Nothing is held back.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    /// Release whatever is held, as text.
    pub fn finish(&mut self, f: impl FnMut(Piece<'_>)) {
        let held = std::mem::take(&mut self.held);
        split(&held, true, f);
    }
}

/// Removes every token from `s`, including tokens that removing others forms
/// (`<|<|end|>x|>` → `<|x|>` → ``).
fn remove_tokens(s: &mut String) {
    let mut i = 0;
    while let Some(off) = s.as_bytes()[i..].iter().position(|&b| b == b'<') {
        let at = i + off;
        match probe(&s.as_bytes()[at..]) {
            Probe::Token(_, len) => {
                s.replace_range(at..at + len, "");
                // A new token can only form across the join: look again from just before it.
                i = at.saturating_sub(MAX_NAME + 3);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
            }
            Probe::Partial | Probe::No => i = at + 1,
        }
    }
}

/// Longest text a [`Sanitizer`] holds back; past it the oldest held text is released.
const MAX_HELD: usize = 4096;

/// Where the tail of `s` that could still become markup begins. With tokens removed, a
/// token-prefix at the end (`<|na`) may complete; if it then vanishes, the token-prefix
/// before it (`<|` in `<|<|na`) joins what follows, and so on: the tail is the longest
/// run of token-prefixes at the end.
fn hold_start(s: &str) -> usize {
    let b = s.as_bytes();
    let mut start = b.len();
    while let Some(pos) = b[..start].iter().rposition(|&c| c == b'<') {
        if !matches!(probe(&b[pos..start]), Probe::Partial) {
            break;
        }
        start = pos;
    }
    let mut min = b.len().saturating_sub(MAX_HELD);
    while !s.is_char_boundary(min) {
        min += 1;
    }
    start.max(min)
}

/// Streaming markup removal for what the client sees: unlike [`Scanner`], what it lets
/// through can never be joined into markup by what comes later, because it strips to a
/// fixed point and holds back only a tail that could still start a token.
#[derive(Debug, Default)]
pub struct Sanitizer {
    buf: String,
}

impl Sanitizer {
    /// Nothing is held back.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn push(&mut self, input: &str, out: &mut String) {
        self.buf.push_str(input);
        remove_tokens(&mut self.buf);
        let keep = hold_start(&self.buf);
        out.push_str(&self.buf[..keep]);
        self.buf.drain(..keep);
    }

    pub fn finish(&mut self, out: &mut String) {
        remove_tokens(&mut self.buf);
        out.push_str(&self.buf);
        self.buf.clear();
    }
}

/// `s` with all markup removed, to a fixed point.
pub fn strip_all(s: &str) -> String {
    let mut out = s.to_owned();
    remove_tokens(&mut out);
    out
}

/// Does `s` contain anything that looks like Harmony markup?
pub fn has_markup(s: &str) -> bool {
    let mut found = false;
    split(s, true, |p| found |= matches!(p, Piece::Special(_)));
    found
}

/// `s` without any `<|…|>` token.
pub fn strip(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    split(s, true, |p| {
        if let Piece::Text(t) = p {
            out.push_str(t)
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(chunks: &[&str]) -> Vec<String> {
        let mut sc = Scanner::default();
        let mut out = Vec::new();
        let mut rec = |p: Piece<'_>| match p {
            Piece::Text(t) => out.push(format!("T:{t}")),
            Piece::Special(s) => out.push(format!("S:{s:?}")),
        };
        for c in chunks {
            sc.push(c, &mut rec);
        }
        sc.finish(&mut rec);
        out
    }

    #[test]
    fn whole_tokens() {
        assert_eq!(pieces(&["<|channel|>final<|message|>Hi"]), ["S:Channel", "T:final", "S:Message", "T:Hi"]);
    }

    #[test]
    fn token_split_across_pieces() {
        assert_eq!(pieces(&["a<|chan", "nel|>b"]), ["T:a", "S:Channel", "T:b"]);
        assert_eq!(pieces(&["a<", "|end|", ">"]), ["T:a", "S:End"]);
    }

    #[test]
    fn lookalikes_stay_text() {
        assert_eq!(pieces(&["x < y || z"]), ["T:x < y || z"]);
        assert_eq!(pieces(&["a<|", "b c"]), ["T:a", "T:<|b c"]);
        assert_eq!(pieces(&["<||>"]), ["T:<||>"]);
    }

    #[test]
    fn unknown_names_are_other() {
        assert_eq!(pieces(&["<|endoftext|>"]), ["S:Other"]);
    }

    #[test]
    fn sanitizer_strips_to_a_fixed_point_across_pieces() {
        assert_eq!(strip_all("a<|<|end|>b|>c"), "ac");
        assert_eq!(strip_all("<|e<|<|x|>nd|>|>"), "");
        let mut s = Sanitizer::default();
        let mut out = String::new();
        for piece in ["x <", "|<|a", "|>b|", "> y <|", "<|<|q", "|>r|>t|>", " z"] {
            s.push(piece, &mut out);
        }
        s.finish(&mut out);
        assert_eq!(out, "x  y  z");
        assert!(!has_markup(&out));
    }

    #[test]
    fn held_tail_released_at_end() {
        assert_eq!(pieces(&["tail <|cha"]), ["T:tail ", "T:<|cha"]);
    }
}
