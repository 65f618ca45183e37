//! Where a JSON value ends, found incrementally as its text streams in.
//!
//! Tool arguments end where their JSON value ends: what follows (a glued header, a preamble)
//! is the next message, and a client must never assemble arguments that do not parse.
//! Invariant: `feed` looks at each byte once; the state is four small fields.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// Only white space so far.
    #[default]
    Before,
    /// Inside an object or array, `depth` deep.
    Container,
    /// Inside a top-level string.
    Str,
    /// The value ended.
    Done,
    /// The text does not begin like an object, array or string: nobody can tell where it ends.
    NotJson,
}

#[derive(Debug, Clone, Default)]
pub struct JsonEnd {
    phase: Phase,
    depth: u32,
    in_str: bool,
    escaped: bool,
}

impl JsonEnd {
    /// Feeds the next piece; `Some(i)` when the value ended at byte `i` of `s` (exclusive).
    /// After that (and for text that is not JSON-like) it returns `None`.
    pub fn feed(&mut self, s: &str) -> Option<usize> {
        for (i, b) in s.bytes().enumerate() {
            match self.phase {
                Phase::Done | Phase::NotJson => return None,
                Phase::Before => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'{' | b'[' => {
                        self.phase = Phase::Container;
                        self.depth = 1;
                    }
                    b'"' => self.phase = Phase::Str,
                    _ => {
                        self.phase = Phase::NotJson;
                        return None;
                    }
                },
                Phase::Str => {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.phase = Phase::Done;
                        return Some(i + 1);
                    }
                }
                Phase::Container => {
                    if self.in_str {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_str = false;
                        }
                        continue;
                    }
                    match b {
                        b'"' => self.in_str = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                self.phase = Phase::Done;
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        None
    }

    /// The value has begun (its first bracket or quote was seen).
    pub fn has_begun(&self) -> bool {
        matches!(self.phase, Phase::Container | Phase::Str | Phase::Done)
    }

    /// The value has ended.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The text so far begins like a JSON object, array or string (or is only white space).
    pub fn is_json_like(&self) -> bool {
        self.phase != Phase::NotJson
    }
}

#[cfg(test)]
mod tests {
    use super::JsonEnd;

    fn end_of(pieces: &[&str]) -> Option<(usize, usize)> {
        let mut j = JsonEnd::default();
        pieces.iter().enumerate().find_map(|(n, p)| j.feed(p).map(|i| (n, i)))
    }

    #[test]
    fn values_end_where_they_end_whatever_the_pieces() {
        assert_eq!(end_of(&[r#"{"a":1}commentary"#]), Some((0, 7)));
        assert_eq!(end_of(&["{\"p\":", "\"x}\\\"y\"", "}", " more"]), Some((2, 1)), "braces and quotes inside strings do not count");
        assert_eq!(end_of(&[" [1,[2", "]]tail"]), Some((1, 2)));
        assert_eq!(end_of(&["\"a\\\"b\"", "x"]), Some((0, 6)));
        assert_eq!(end_of(&[r#"{"city":"Pa"#]), None, "cut: no end");
        let mut j = JsonEnd::default();
        assert_eq!(j.feed("print(1)"), None);
        assert!(!j.is_json_like());
    }
}
