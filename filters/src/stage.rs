//! The stage model: a factory built once per config generation, a stage per request,
//! and the chain that pushes events through the stages in order.

use std::time::Instant;

use crate::event::Event;

/// What a stage may know about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    /// The id of the completion (`chatcmpl-…`), one for the whole response.
    pub completion_id: String,
    pub created: u64,
    pub model: String,
    /// The client asked for SSE.
    pub stream: bool,
    /// The client asked for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Who the request is from, when the server checks API keys (a digest of the key):
    /// state kept between requests (`reasoning-memory`) is never shared across scopes.
    pub auth_scope: Option<String>,
}

impl RequestMeta {
    /// A meta with fresh ids, for tools and tests.
    pub fn new(model: &str, stream: bool, include_usage: bool) -> Self {
        Self {
            request_id: random_id("req_", 16),
            completion_id: random_id("chatcmpl-", 24),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_owned(),
            stream,
            include_usage,
            auth_scope: None,
        }
    }
}

/// `prefix` followed by `len` random alphanumerics.
pub fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    s
}

/// Built once per config generation from the stage's TOML table; shared by all requests.
pub trait StageFactory: Send + Sync + 'static {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage>;
}

/// Per-request state machine. Nothing here awaits: the chain runs inline in the response body.
pub trait Stage: Send {
    /// Request phase: may rewrite the JSON body before it goes upstream.
    fn on_request(&mut self, _req: &mut serde_json::Value) {}
    /// Push zero or more events for one input event.
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>);
    /// The upstream is done: flush held state.
    fn on_end(&mut self, _out: &mut Vec<Event>) {}
    /// When this stage wants `on_deadline` called, if nothing else happens first.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn on_deadline(&mut self, _out: &mut Vec<Event>) {}
    /// Counters for the request's summary line and metrics, read once at the end.
    fn stats(&self, _stats: &mut Stats) {}
}

/// What happened in one request, summed over its stages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// When the first answer text or tool call reached the encoder (time to first token).
    pub first_output: Option<Instant>,
    pub final_chunks: u64,
    pub tool_chunks: u64,
    pub tool_calls: u64,
    pub fallback: u64,
    pub parser_errors: u64,
    pub watchdog_aborts: u64,
}

/// The per-request stages of one pipeline, in order, with reusable buffers.
///
/// Invariant: events leave the last stage in the order they were produced; after `end`
/// no further input is accepted.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    a: Vec<Event>,
    b: Vec<Event>,
    ended: bool,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Self { stages, a: Vec::with_capacity(8), b: Vec::with_capacity(8), ended: false }
    }

    pub fn on_request(&mut self, req: &mut serde_json::Value) {
        for s in &mut self.stages {
            s.on_request(req);
        }
    }

    /// Push several events (drained from `input`).
    pub fn push_all(&mut self, input: &mut Vec<Event>, out: &mut Vec<Event>) {
        if self.ended {
            input.clear();
            return;
        }
        std::mem::swap(&mut self.a, input);
        input.clear();
        self.run_from(0, out);
    }

    /// Runs the events in `self.a` through the stages from `first` on.
    fn run_from(&mut self, first: usize, out: &mut Vec<Event>) {
        for i in first..self.stages.len() {
            if self.a.is_empty() {
                return;
            }
            self.b.clear();
            let stage = &mut self.stages[i];
            for ev in self.a.drain(..) {
                stage.on_event(ev, &mut self.b);
            }
            std::mem::swap(&mut self.a, &mut self.b);
        }
        out.append(&mut self.a);
    }

    /// The upstream is done: flush every stage in order, each flush flowing through the rest.
    pub fn end(&mut self, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        for i in 0..self.stages.len() {
            self.a.clear();
            self.stages[i].on_end(&mut self.a);
            self.run_from(i + 1, out);
        }
        self.ended = true;
    }

    /// The earliest deadline any stage asked for.
    pub fn deadline(&self) -> Option<Instant> {
        self.stages.iter().filter_map(|s| s.deadline()).min()
    }

    /// Fire every stage whose deadline has passed.
    pub fn fire_deadlines(&mut self, now: Instant, out: &mut Vec<Event>) {
        if self.ended {
            return;
        }
        for i in 0..self.stages.len() {
            if self.stages[i].deadline().is_some_and(|d| d <= now) {
                self.a.clear();
                self.stages[i].on_deadline(&mut self.a);
                self.run_from(i + 1, out);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let mut st = Stats { first_output: None, ..Stats::default() };
        for s in &self.stages {
            s.stats(&mut st);
        }
        st
    }
}
