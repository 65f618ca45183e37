//! A `tool_use` block's input as it streams: the longest prefix of what the model wrote that
//! is still the start of a JSON object, and where it stopped being one, what closes it.
//!
//! Anthropic's clients join a block's `partial_json` pieces and parse them as one object
//! (Claude Code runs the tool with it), so arguments the model wrote that are not JSON
//! (`{a}`, found by the Messages property test) must never reach them as written. The
//! encoder streams each piece's valid part and, at the first byte that is not JSON, the
//! closing that makes what was sent a whole object (`{"a":1 é}` → `{"a":1 }`); the rest of
//! the arguments is dropped. The message object's `input` is the same text parsed.
//!
//! Invariant: each byte is looked at once; the state is the open containers and the token
//! being read.

/// What the next structural byte must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing yet: the object's `{` (white space before it is fine).
    Start,
    /// Just after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After `:` or `,` in an array: a value.
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrEnd,
    /// After a value: `,` or the container's end.
    CommaOrEnd,
    /// The object ended: only white space.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    No,
    /// After `\`.
    Backslash,
    /// After `\u` and this many hex digits.
    Unicode(u8),
}

/// Where in a number: the states after which it may end are `Zero`, `Int`, `Frac`, `Exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Between tokens.
    None,
    Str {
        key: bool,
        escape: Escape,
    },
    Num(Number),
    /// `true`, `false` or `null`, `at` bytes of it read.
    Literal {
        word: &'static str,
        at: usize,
    },
}

/// The input of one `tool_use` block, checked as it streams (see the module header).
#[derive(Debug)]
pub struct InputJson {
    /// The open containers, innermost last: `true` for an object.
    open: Vec<bool>,
    expect: Expect,
    token: Token,
    broken: bool,
}

impl Default for InputJson {
    fn default() -> Self {
        Self { open: Vec::new(), expect: Expect::Start, token: Token::None, broken: false }
    }
}

impl InputJson {
    /// Feeds the next piece: how many of its bytes keep the input the start of a JSON object
    /// (all of them, until one does not), and, when this piece broke it, what closes the
    /// valid part into a whole object. After that, every piece is dropped: `(0, None)`.
    pub fn feed(&mut self, piece: &str) -> (usize, Option<String>) {
        if self.broken {
            return (0, None);
        }
        for (i, b) in piece.bytes().enumerate() {
            if !self.step(b) {
                self.broken = true;
                // A byte that breaks it is ASCII or a character's first byte (inside a
                // string, every byte of a character is taken): `i` is a character boundary.
                debug_assert!(piece.is_char_boundary(i));
                return (i, Some(self.closing()));
            }
        }
        (piece.len(), None)
    }

    /// One byte; `false` when it cannot follow what came before in a JSON object.
    fn step(&mut self, b: u8) -> bool {
        match self.token {
            Token::Str { key, escape } => {
                let escape = match (escape, b) {
                    (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Escape::No,
                    (Escape::Backslash, b'u') => Escape::Unicode(0),
                    (Escape::Backslash, _) => return false,
                    (Escape::Unicode(n), _) if b.is_ascii_hexdigit() => {
                        if n == 3 {
                            Escape::No
                        } else {
                            Escape::Unicode(n + 1)
                        }
                    }
                    (Escape::Unicode(_), _) => return false,
                    (Escape::No, b'"') => {
                        self.token = Token::None;
                        self.expect = if key { Expect::Colon } else { Expect::CommaOrEnd };
                        return true;
                    }
                    (Escape::No, b'\\') => Escape::Backslash,
                    (Escape::No, c) if c < 0x20 => return false,
                    (Escape::No, _) => Escape::No,
                };
                self.token = Token::Str { key, escape };
                true
            }
            Token::Num(at) => {
                let digit = b.is_ascii_digit();
                let next = match (at, b) {
                    (Number::Minus, b'0') => Number::Zero,
                    (Number::Minus, _) if digit => Number::Int,
                    (Number::Int, _) if digit => Number::Int,
                    (Number::Zero | Number::Int, b'.') => Number::Dot,
                    (Number::Dot | Number::Frac, _) if digit => Number::Frac,
                    (Number::Zero | Number::Int | Number::Frac, b'e' | b'E') => Number::E,
                    (Number::E, b'+' | b'-') => Number::ESign,
                    (Number::E | Number::ESign | Number::Exp, _) if digit => Number::Exp,
                    (Number::Zero | Number::Int | Number::Frac | Number::Exp, _) => {
                        // The number ended here; this byte is the next token's.
                        self.token = Token::None;
                        self.expect = Expect::CommaOrEnd;
                        return self.structural(b);
                    }
                    _ => return false,
                };
                self.token = Token::Num(next);
                true
            }
            Token::Literal { word, at } => {
                if word.as_bytes()[at] != b {
                    return false;
                }
                self.token = if at + 1 == word.len() {
                    self.expect = Expect::CommaOrEnd;
                    Token::None
                } else {
                    Token::Literal { word, at: at + 1 }
                };
                true
            }
            Token::None => self.structural(b),
        }
    }

    /// A byte between tokens.
    fn structural(&mut self, b: u8) -> bool {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return true;
        }
        let in_object = self.open.last() == Some(&true);
        match (self.expect, b) {
            (Expect::Start, b'{') => self.open_container(true),
            (Expect::KeyOrEnd | Expect::Key, b'"') => self.token = Token::Str { key: true, escape: Escape::No },
            (Expect::KeyOrEnd, b'}') => self.close(),
            (Expect::Colon, b':') => self.expect = Expect::Value,
            (Expect::ValueOrEnd, b']') => self.close(),
            (Expect::Value | Expect::ValueOrEnd, _) => return self.value(b),
            (Expect::CommaOrEnd, b',') => self.expect = if in_object { Expect::Key } else { Expect::Value },
            (Expect::CommaOrEnd, b'}') if in_object => self.close(),
            (Expect::CommaOrEnd, b']') if !in_object => self.close(),
            _ => return false,
        }
        true
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8) -> bool {
        self.token = match b {
            b'"' => Token::Str { key: false, escape: Escape::No },
            b'{' | b'[' => {
                self.open_container(b == b'{');
                return true;
            }
            b'-' => Token::Num(Number::Minus),
            b'0' => Token::Num(Number::Zero),
            b'1'..=b'9' => Token::Num(Number::Int),
            b't' => Token::Literal { word: "true", at: 1 },
            b'f' => Token::Literal { word: "false", at: 1 },
            b'n' => Token::Literal { word: "null", at: 1 },
            _ => return false,
        };
        true
    }

    fn open_container(&mut self, object: bool) {
        self.open.push(object);
        self.expect = if object { Expect::KeyOrEnd } else { Expect::ValueOrEnd };
    }

    fn close(&mut self) {
        self.open.pop();
        self.expect = if self.open.is_empty() { Expect::Done } else { Expect::CommaOrEnd };
    }

    /// What makes the valid part read so far a whole object.
    fn closing(&self) -> String {
        let mut s = String::new();
        match self.token {
            Token::Str { key, escape } => {
                match escape {
                    Escape::Backslash => s.push('\\'),
                    Escape::Unicode(n) => s.extend(std::iter::repeat_n('0', 4 - n as usize)),
                    Escape::No => {}
                }
                s.push('"');
                if key {
                    s.push_str(":null");
                }
            }
            Token::Num(Number::Minus | Number::Dot | Number::E | Number::ESign) => s.push('0'),
            Token::Num(_) => {}
            Token::Literal { word, at } => s.push_str(&word[at..]),
            Token::None => match self.expect {
                Expect::Start => s.push_str("{}"),
                Expect::Key => s.push_str("\"\":null"),
                Expect::Colon => s.push_str(":null"),
                Expect::Value => s.push_str("null"),
                Expect::KeyOrEnd | Expect::ValueOrEnd | Expect::CommaOrEnd | Expect::Done => {}
            },
        }
        s.extend(self.open.iter().rev().map(|&object| if object { '}' } else { ']' }));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client assembles from `pieces`: each piece's valid part, then the closing.
    fn sent(pieces: &[&str]) -> String {
        let mut j = InputJson::default();
        let mut out = String::new();
        for p in pieces {
            let (ok, closing) = j.feed(p);
            out.push_str(&p[..ok]);
            out.extend(closing);
        }
        out
    }

    #[test]
    fn arguments_that_are_json_pass_as_written_at_any_cut() {
        let args = r#" {"a": [1, -2.5e+3, 0, true, null, {"b": "x\"\\\u00e9 é 😀"}], "c": {}, "d": []} "#;
        for cut in 0..=args.len() {
            if args.is_char_boundary(cut) {
                assert_eq!(sent(&[&args[..cut], &args[cut..]]), args, "cut at {cut}");
            }
        }
        serde_json::from_str::<serde_json::Value>(args).unwrap();
    }

    #[test]
    fn arguments_that_stop_being_json_are_closed_where_they_broke() {
        for (args, closed) in [
            ("{é}", "{}"),
            ("{a}", "{}"),
            (r#"{"a":1 é}"#, r#"{"a":1 }"#),
            (r#"{"a":"x"y}"#, r#"{"a":"x"}"#),
            (r#"{"a":tru}"#, r#"{"a":true}"#),
            (r#"{"a":-}"#, r#"{"a":-0}"#),
            (r#"{"a":1.}"#, r#"{"a":1.0}"#),
            (r#"{"a":01}"#, r#"{"a":0}"#),
            (r#"{"a":[1,]}"#, r#"{"a":[1,null]}"#),
            (r#"{"a":1,}"#, r#"{"a":1,"":null}"#),
            (r#"{"a" 1}"#, r#"{"a" :null}"#),
            (r#"{"a":}"#, r#"{"a":null}"#),
            ("{\"a\":\"\\q\"}", "{\"a\":\"\\\\\"}"),
            ("{\"a\":\"\\u12x\"}", "{\"a\":\"\\u1200\"}"),
            ("{\"a\":\"line\nbreak\"}", "{\"a\":\"line\"}"),
            ("{\"k\u{1}\":1}", "{\"k\":null}"),
            ("[1]", "{}"),
            ("\"s\"", "{}"),
            (r#"{"a":1} x"#, r#"{"a":1} "#),
        ] {
            let got = sent(&[args]);
            assert_eq!(got, closed, "{args}");
            let v: serde_json::Value = serde_json::from_str(&got).unwrap_or_else(|e| panic!("{got}: {e}"));
            assert!(v.is_object(), "{got}");
            // However it was cut, the same.
            for cut in (0..=args.len()).filter(|&c| args.is_char_boundary(c)) {
                assert_eq!(sent(&[&args[..cut], &args[cut..]]), closed, "{args} cut at {cut}");
            }
        }
    }

    #[test]
    fn after_it_broke_nothing_more_is_taken() {
        let mut j = InputJson::default();
        assert_eq!(j.feed("{x"), (1, Some("}".into())));
        assert_eq!(j.feed(r#""a":1}"#), (0, None));
    }
}
