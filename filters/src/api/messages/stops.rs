//! The client's `stop_sequences`, watched for in answer text as it streams.
//!
//! One Aho–Corasick automaton over all the sequences (a trie with failure links, built once
//! per request in time linear in the sequences' bytes); each byte of answer text moves it one
//! step, amortised constant time, so the cost per token is the token's length whatever the
//! number or length of the sequences. The state is the longest tail of the text so far that
//! begins some sequence: that tail is the text held back (it is a prefix of a sequence, so
//! it is not stored: a node knows a sequence it begins and its length).
//!
//! Why not the `aho-corasick` crate: it finds matches as well, but does not tell how long
//! the matched prefix of its current state is, and that length is what must be held back
//! ("text that could start a stop sequence is held until it cannot"). Without it, finding
//! the tail costs the stop bytes per token again, the quadratic scan this replaces.
//!
//! Invariants: the held tail is never longer than the longest sequence less one byte; a
//! match is reported at the first byte where some sequence ends (the one a server would
//! stop at), and among the sequences ending there the longest (it began first).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The trie's edges are keyed by (node, byte), packed in a u64: a multiplicative hash is
/// enough (node ids are the automaton's own, dense; a client chooses only the bytes), and
/// several times cheaper than SipHash for the 64 Ki edges a request may bring.
#[derive(Default)]
struct EdgeHasher(u64);

impl Hasher for EdgeHasher {
    fn finish(&self) -> u64 {
        // The table indexes by the low bits: fold the high ones (where the multiply put the
        // node's entropy) down.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Edges = HashMap<u64, u32, BuildHasherDefault<EdgeHasher>>;

fn edge(node: u32, b: u8) -> u64 {
    (u64::from(node) << 8) | u64::from(b)
}

/// The automaton of a request's stop sequences.
pub struct StopScan {
    stops: Vec<String>,
    /// Trie edges: (node, byte) → node. Node 0 is the root.
    next: Edges,
    fail: Vec<u32>,
    depth: Vec<u32>,
    /// A sequence that begins with this node's text.
    rep: Vec<u32>,
    /// The longest sequence that ends at this node (its own, or along its failure links).
    out: Vec<Option<u32>>,
    /// Where the text read so far leaves the automaton.
    at: u32,
}

impl StopScan {
    /// The automaton of `stops` (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let bytes: usize = stops.iter().map(String::len).sum();
        let mut s = Self { stops: Vec::new(), next: Edges::default(), fail: vec![0], depth: vec![0], rep: vec![0], out: vec![None], at: 0 };
        s.next.reserve(bytes);
        // Each node's parent and the byte that leads to it (for the failure links).
        let mut parent: Vec<u32> = vec![0];
        let mut via: Vec<u8> = vec![0];
        for (i, stop) in stops.iter().enumerate() {
            let mut node = 0u32;
            for &b in stop.as_bytes() {
                node = match s.next.get(&edge(node, b)) {
                    Some(&n) => n,
                    None => {
                        let n = s.fail.len() as u32;
                        s.next.insert(edge(node, b), n);
                        s.fail.push(0);
                        s.depth.push(s.depth[node as usize] + 1);
                        s.rep.push(i as u32);
                        s.out.push(None);
                        parent.push(node);
                        via.push(b);
                        n
                    }
                };
            }
            s.out[node as usize].get_or_insert(i as u32);
        }
        // Failure links, shallowest first (a node's link is the longest proper suffix of its
        // text that is also in the trie); its output falls back to that node's.
        let mut order: Vec<u32> = (1..s.fail.len() as u32).collect();
        order.sort_unstable_by_key(|&n| s.depth[n as usize]);
        for c in order {
            let (p, b) = (parent[c as usize], via[c as usize]);
            // The parent's link, stepped by the byte (as the text would move the automaton).
            let link = if p == 0 { 0 } else { s.step(s.fail[p as usize], b) };
            s.fail[c as usize] = link;
            if s.out[c as usize].is_none() {
                s.out[c as usize] = s.out[link as usize];
            }
        }
        s.stops = stops;
        s
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    fn step(&self, mut node: u32, b: u8) -> u32 {
        loop {
            if let Some(&n) = self.next.get(&edge(node, b)) {
                return n;
            }
            if node == 0 {
                return 0;
            }
            node = self.fail[node as usize];
        }
    }

    /// The text held back: a prefix of a stop sequence.
    fn held(&self) -> &str {
        let n = self.at as usize;
        if n == 0 {
            return "";
        }
        &self.stops[self.rep[n] as usize][..self.depth[n] as usize]
    }

    /// Reads `t`: the text that can go out now, and the stop sequence found, if one was (the
    /// text before it is what goes out; the rest is dropped).
    pub fn push(&mut self, t: &str) -> (String, Option<String>) {
        let held = self.held();
        let mut node = self.at;
        for (i, &b) in t.as_bytes().iter().enumerate() {
            node = self.step(node, b);
            if let Some(p) = self.out[node as usize] {
                let stop = &self.stops[p as usize];
                let end = held.len() + i + 1;
                let mut pass = String::with_capacity(end - stop.len());
                let start = end - stop.len();
                pass.push_str(&held[..start.min(held.len())]);
                pass.push_str(&t[..start.saturating_sub(held.len())]);
                let stop = stop.clone();
                self.at = 0;
                return (pass, Some(stop));
            }
        }
        let keep = self.depth[node as usize] as usize;
        let total = held.len() + t.len();
        let release = total - keep;
        let mut pass = String::with_capacity(release);
        pass.push_str(&held[..release.min(held.len())]);
        pass.push_str(&t[..release.saturating_sub(held.len())]);
        self.at = node;
        (pass, None)
    }

    /// The text held back, given up (the answer ended: it was answer after all).
    pub fn take_held(&mut self) -> String {
        let held = self.held().to_owned();
        self.at = 0;
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(stops: &[&str]) -> StopScan {
        StopScan::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// What the old scan (the stop bytes per token) answered, as the reference.
    fn reference(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut text = String::new();
        for p in pieces {
            text.push_str(p);
            // The first position where some stop ends; the longest of those ending there.
            let found = (1..=text.len())
                .filter(|&e| text.is_char_boundary(e))
                .find_map(|e| stops.iter().filter(|s| !s.is_empty() && text[..e].ends_with(**s)).max_by_key(|s| s.len()).map(|s| (e, *s)));
            if let Some((e, s)) = found {
                return (text[..e - s.len()].to_owned(), Some(s.to_owned()));
            }
        }
        (text, None)
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = scan(stops);
        let mut out = String::new();
        for p in pieces {
            let (pass, stop) = s.push(p);
            out.push_str(&pass);
            if stop.is_some() {
                return (out, stop);
            }
        }
        out.push_str(&s.take_held());
        (out, None)
    }

    #[test]
    fn held_text_that_never_became_a_stop_sequence_is_answer_after_all() {
        let mut s = scan(&["STOP"]);
        assert_eq!(s.push("go ST"), ("go ".to_string(), None));
        assert_eq!(s.push("ART"), ("START".to_string(), None));
        assert_eq!(s.push("ST"), (String::new(), None));
        assert_eq!(s.take_held(), "ST");
    }

    #[test]
    fn a_match_is_found_across_pieces_and_overlapping_sequences() {
        assert_eq!(run(&["END", "\n\nHuman:"], &["Hello E", "N", "ding soon. E", "ND and more"]), ("Hello ENding soon. ".into(), Some("END".into())));
        assert_eq!(run(&["abcd", "bc"], &["a", "bcd"]), ("a".into(), Some("bc".into())));
        assert_eq!(run(&["aab"], &["aaaab"]), ("aa".into(), Some("aab".into())));
        assert_eq!(run(&["ab", "b"], &["xab"]), ("x".into(), Some("ab".into())));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), Some("é!".into())));
    }

    #[test]
    fn agrees_with_the_plain_scan_on_small_alphabets() {
        // Every text over {a, b} up to 7 letters, cut into pieces of 1 to 3, against stop sets
        // that overlap in every way.
        let sets: [&[&str]; 4] = [&["ab"], &["aab", "ab"], &["abab", "bab", "b"], &["aaa", "abba", "ba"]];
        for set in sets {
            for len in 1..=7 {
                for bits in 0..(1u32 << len) {
                    let text: String = (0..len).map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' }).collect();
                    for cut in 1..=3 {
                        let pieces: Vec<&str> = text.as_bytes().chunks(cut).map(|c| std::str::from_utf8(c).unwrap()).collect();
                        assert_eq!(run(set, &pieces), reference(set, &pieces), "{set:?} {pieces:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn many_long_sequences_cost_the_text_not_the_sequences() {
        // 100 sequences of 9 KB (the hostile client's): the automaton holds at most one
        // sequence's prefix, and 3,000 pieces go through in one pass each.
        let stops: Vec<String> = (0..100).map(|i| format!("{}{i}", "x".repeat(9000))).collect();
        let mut s = StopScan::new(&stops);
        let mut out = 0;
        for _ in 0..3000 {
            let (pass, stop) = s.push("x y ");
            assert!(stop.is_none());
            out += pass.len();
        }
        assert_eq!(out, 3000 * 4);
    }
}
