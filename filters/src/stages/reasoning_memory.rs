//! `reasoning-memory`: gpt-oss's reasoning carried across tool calls.
//!
//! Harmony's rule: the analysis of a turn that ended in a tool call is given back to the
//! model on the next request, until a final answer follows. Most agents drop it (they never
//! showed it, or strip unknown fields); carried, it measurably improves tool use.
//!
//! ```text
//! response: harmony-parse ─► reasoning-memory ─► tool-bridge ─► …
//!           analysis text is collected; each tool call gets its client id here (the bridge
//!           sends that same id); at the end, reasoning is stored under every call id
//! request:  an assistant turn with tool_calls and no reasoning, after the last final
//!           answer, gets the reasoning stored under its call ids back, as `field`
//! ```
//! The store is bounded (`max_bytes`, `ttl`; when full, the key scope holding the most gives
//! up its least recently used entry) and scoped: with `server.api_keys` set, a key only ever
//! gets its own reasoning back. The in-process store is one per process and pair of limits, so
//! it survives config reloads and every pipeline has the limits it set; a shared store for
//! replicas goes behind the same [`ReasoningStore`] trait.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conversation::{Conversation, Reasoning, ReasoningField, Role};
use crate::event::{Channel, Event};
use crate::stage::{random_id, AsyncRequestStage, PhaseStage, RequestMeta, RequestStageFactory, Stage, StageFactory};
use crate::stages::history_clean::merge_content_into_reasoning;
use crate::store::Stores;
pub use crate::store::{MemoryStore, StateStore as ReasoningStore};
use crate::values::Dur;
use crate::work::BoxFuture;

/// The most reasoning kept for one turn; longer reasoning keeps its end (the part nearest the call).
const MAX_ENTRY_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// llama.cpp, LM Studio, most agents.
    #[default]
    ReasoningContent,
    /// vLLM, Ollama.
    Reasoning,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        self.wire().as_str()
    }
    /// The conversation's name for the field.
    pub fn wire(self) -> ReasoningField {
        match self {
            Self::ReasoningContent => ReasoningField::ReasoningContent,
            Self::Reasoning => ReasoningField::Reasoning,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReasoningMemoryConfig {
    /// The message field the reasoning is put back in.
    #[serde(default)]
    pub field: Field,
    /// The most the store holds, in bytes of reasoning; the least recently used goes first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// How long a turn's reasoning is kept.
    #[serde(default = "default_ttl")]
    pub ttl: Dur,
    /// `memory` (this process), or a `redis://` URL shared by replicas.
    #[serde(default = "default_store")]
    pub store: String,
    /// With a Redis store: the longest a request waits for it (then goes on without memory).
    #[serde(default = "default_store_timeout")]
    pub store_timeout: Dur,
}

fn default_max_bytes() -> u64 {
    crate::store::DEFAULT_MAX_BYTES
}
fn default_ttl() -> Dur {
    Dur(crate::store::DEFAULT_TTL)
}
fn default_store() -> String {
    "memory".into()
}
fn default_store_timeout() -> Dur {
    Dur(Duration::from_millis(50))
}

impl Default for ReasoningMemoryConfig {
    fn default() -> Self {
        Self { field: Field::default(), max_bytes: default_max_bytes(), ttl: default_ttl(), store: default_store(), store_timeout: default_store_timeout() }
    }
}

impl ReasoningMemoryConfig {
    /// Errors in the options (without a location; the caller adds it).
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.store != "memory" {
            if let Err(why) = crate::store::redis::check_url(&self.store) {
                e.push(format!("store: {why}"));
            }
        }
        if self.store_timeout.0.is_zero() || self.store_timeout.0 > Duration::from_secs(5) {
            e.push("store_timeout: between 1ms and 5s".into());
        }
        if self.ttl.0.is_zero() {
            e.push("ttl: must be more than 0".into());
        }
        e
    }
}

#[derive(Clone)]
pub struct ReasoningMemoryFactory {
    field: Field,
    store: Arc<dyn ReasoningStore>,
}

impl ReasoningMemoryFactory {
    /// With the store `cfg` names, from the server's stores.
    pub fn new(cfg: &ReasoningMemoryConfig, stores: &Stores) -> Self {
        if cfg.store == "memory" {
            return Self { field: cfg.field, store: stores.memory(cfg.max_bytes, cfg.ttl.0) };
        }
        match stores.redis(&cfg.store, cfg.ttl.0, cfg.store_timeout.0) {
            Ok(s) => Self { field: cfg.field, store: s },
            Err(e) => {
                // Validation checked the URL; this is a failure to start a thread.
                tracing::error!(error = %e, "reasoning-memory: the Redis store cannot start; using this process's memory");
                Self { field: cfg.field, store: stores.memory(cfg.max_bytes, cfg.ttl.0) }
            }
        }
    }
    /// With a store of the caller's (tests, a shared store).
    pub fn with_store(field: Field, store: Arc<dyn ReasoningStore>) -> Self {
        Self { field, store }
    }
}

impl RequestStageFactory for ReasoningMemoryFactory {
    /// It waits on its store (Redis included): awaited, never blocking a thread.
    fn new_request_stage(&self, req: &RequestMeta) -> PhaseStage {
        PhaseStage::Wait(Box::new(Restore { field: self.field, store: self.store.clone(), scope: req.auth_scope.clone().unwrap_or_default() }))
    }
}

/// The request side: remembered reasoning put back into the turns that lack it.
pub struct Restore {
    field: Field,
    store: Arc<dyn ReasoningStore>,
    scope: String,
}

impl AsyncRequestStage for Restore {
    fn on_request<'a>(&'a mut self, conv: &'a mut Conversation) -> BoxFuture<'a, Result<(), crate::event::ApiError>> {
        Box::pin(async move {
            restore(conv, self.field, &self.scope, &*self.store).await;
            Ok(())
        })
    }
}

impl StageFactory for ReasoningMemoryFactory {
    fn new_stage(&self, req: &RequestMeta) -> Box<dyn Stage> {
        Box::new(ReasoningMemory {
            store: self.store.clone(),
            scope: req.auth_scope.clone().unwrap_or_default(),
            reasoning: String::new(),
            call_ids: Vec::new(),
            upstream_ids: Vec::new(),
            stored: false,
        })
    }
}

/// The response side: the turn's reasoning collected, and stored under its calls' ids.
pub struct ReasoningMemory {
    store: Arc<dyn ReasoningStore>,
    scope: String,
    /// This turn's analysis so far (its last `MAX_ENTRY_BYTES`).
    reasoning: String,
    /// The client ids of this turn's calls.
    call_ids: Vec<String>,
    /// Upstream call id → our client id, for calls the upstream parsed itself.
    upstream_ids: Vec<(String, String)>,
    stored: bool,
}

impl ReasoningMemory {
    fn note_reasoning(&mut self, t: &str) {
        self.reasoning.push_str(t);
        if self.reasoning.len() > 2 * MAX_ENTRY_BYTES {
            let mut cut = self.reasoning.len() - MAX_ENTRY_BYTES;
            while !self.reasoning.is_char_boundary(cut) {
                cut += 1;
            }
            self.reasoning.drain(..cut);
        }
    }

    fn new_id(&mut self) -> String {
        let id = random_id("call_", 24);
        self.call_ids.push(id.clone());
        id
    }

    fn store(&mut self) {
        if self.stored || self.call_ids.is_empty() || self.reasoning.trim().is_empty() {
            return;
        }
        self.stored = true;
        let start = self.reasoning.len().saturating_sub(MAX_ENTRY_BYTES);
        let start = (start..=self.reasoning.len()).find(|&i| self.reasoning.is_char_boundary(i)).unwrap_or(0);
        self.store.put(&self.scope, &self.call_ids, &self.reasoning[start..]);
    }
}

/// Puts remembered reasoning back into the assistant tool-call turns of the conversation
/// that lack it (or carry only its last piece), after the last final answer. Returns how
/// many turns got theirs back. The call ids of all those turns are read in one go (one
/// round trip to a Redis); a turn gets what is remembered under the first of its ids that has
/// any.
pub async fn restore(conv: &mut Conversation, field: Field, scope: &str, store: &dyn ReasoningStore) -> usize {
    // Harmony drops the analysis of turns before the last final answer itself.
    let first = conv.messages.iter().rposition(|m| m.role == Role::Assistant && !m.is_tool_turn()).map_or(0, |i| i + 1);
    let call_ids = |m: &crate::conversation::Message| -> Vec<String> {
        if !m.is_tool_turn() {
            return Vec::new();
        }
        m.tool_calls.iter().flatten().filter_map(|c| c.id.clone()).collect()
    };
    let ids: Vec<Vec<String>> = conv.messages[first..].iter().map(call_ids).collect();
    let all: Vec<&str> = ids.iter().flatten().map(String::as_str).collect();
    if all.is_empty() {
        return 0;
    }
    let mut remembered = store.get_many(scope, &all).await.into_iter();
    let mut restored = 0;
    for (m, ids) in conv.messages[first..].iter_mut().zip(&ids) {
        // This turn's answers, all of them taken (the next turn's come after).
        let found = remembered.by_ref().take(ids.len()).fold(None, |first, r| first.or(r));
        let Some(r) = found else { continue };
        let given = m.reasoning_text().map(|r| r.trim().to_owned());
        // The client's own reasoning stands, unless it is only the end of what was said: the
        // OpenAI Node SDK's stream helper keeps just the last reasoning delta of a stream.
        let text = match given {
            None => r.to_string(),
            Some(ref g) => match made_whole(&r, g) {
                Some(whole) => whole,
                None => continue,
            },
        };
        match m.reasoning.as_mut() {
            // The client's field keeps it, made whole.
            Some(had) if given.is_some() => had.text = text,
            _ => m.reasoning = Some(Reasoning { text, field: field.wire() }),
        }
        // A preamble the client kept as content must not stand beside it (llama.cpp 500).
        merge_content_into_reasoning(m);
        restored += 1;
    }
    restored
}

/// When `given` begins with only the end of `remembered` (what an SDK kept of it), possibly
/// followed by `\n\n` and a preamble `history-clean` merged in: the whole reasoning with that
/// same tail. `None` when `given` is the client's own (or the whole) reasoning.
fn made_whole(remembered: &str, given: &str) -> Option<String> {
    let remembered = remembered.trim_end();
    let cuts = std::iter::once(given.len()).chain(given.match_indices("\n\n").map(|(i, _)| i));
    for k in cuts {
        let fragment = &given[..k];
        if !fragment.trim().is_empty() && remembered.len() > fragment.trim().len() && remembered.ends_with(fragment.trim()) {
            return Some(format!("{remembered}{}", &given[k..]));
        }
    }
    None
}

impl Stage for ReasoningMemory {
    fn on_event(&mut self, ev: Event, out: &mut Vec<Event>) {
        match ev {
            Event::Text(Channel::Analysis, ref t) | Event::UpstreamReasoning(ref t) => {
                self.note_reasoning(t);
                out.push(ev);
            }
            Event::ToolCallStart { name, id: None } => {
                let id = self.new_id();
                out.push(Event::ToolCallStart { name, id: Some(id) });
            }
            Event::UpstreamToolCall(mut u) => {
                // A call the upstream parsed: one client id per upstream id (fragments after
                // the first carry no id and continue the open call).
                if let Some(up) = u.id.clone() {
                    let known = self.upstream_ids.iter().find(|(k, _)| *k == up).map(|(_, v)| v.clone());
                    let id = match known {
                        Some(id) => id,
                        None => {
                            let id = self.new_id();
                            self.upstream_ids.push((up, id.clone()));
                            id
                        }
                    };
                    u.client_id = Some(id);
                }
                out.push(Event::UpstreamToolCall(u));
            }
            ev @ (Event::Finish(_) | Event::Error(_) | Event::Abort) => {
                self.store();
                out.push(ev);
            }
            other => out.push(other),
        }
    }

    fn on_end(&mut self, _out: &mut Vec<Event>) {
        self.store();
    }
}

impl crate::stage::StageConfig for ReasoningMemoryConfig {
    /// It must see the reasoning the parser found before the bridge drops it.
    fn place() -> crate::stage::config::Place {
        use crate::stage::config::{Order, Other::*, Place};
        Place {
            rules: &[Order {
                after: &[IfPresent("harmony-parse"), IfPresent("fallback")],
                before: &[Required("tool-bridge")],
                message: "`reasoning-memory` must come after `harmony-parse` (and `fallback`) and before `tool-bridge`: it must see the reasoning before the bridge drops it",
            }],
            ..Place::ONCE
        }
    }
    fn validate(&self) -> Vec<String> {
        ReasoningMemoryConfig::validate(self)
    }
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        let f = ReasoningMemoryFactory::new(self, b.stores);
        b.store = Some(f.store.clone());
        b.push_request(f.clone());
        b.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn turn(ids: &[&str], reasoning: Option<&str>) -> Value {
        let calls: Vec<Value> = ids.iter().map(|id| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}})).collect();
        let mut m = json!({"role": "assistant", "content": null, "tool_calls": calls});
        if let Some(r) = reasoning {
            m["reasoning_content"] = json!(r);
        }
        m
    }

    fn on_request(s: &mut PhaseStage, req: &mut Value) {
        let mut conv = crate::api::chat::decode::conversation(std::mem::take(req));
        let PhaseStage::Wait(s) = s else { panic!("reasoning-memory waits on its store") };
        crate::work::now(s.on_request(&mut conv)).unwrap();
        *req = crate::upstream::chat_request::request(conv);
    }

    /// [`super::restore`] on a chat request.
    fn restore(req: &mut Value, field: Field, scope: &str, store: &dyn ReasoningStore) -> usize {
        let mut conv = crate::api::chat::decode::conversation(std::mem::take(req));
        let n = crate::work::now(super::restore(&mut conv, field, scope, store));
        *req = crate::upstream::chat_request::request(conv);
        n
    }

    fn run_turn(f: &ReasoningMemoryFactory, meta: &RequestMeta, events: Vec<Event>) -> Vec<Event> {
        let mut s = f.new_stage(meta);
        let mut out = Vec::new();
        for e in events {
            s.on_event(e, &mut out);
        }
        s.on_end(&mut out);
        out
    }

    #[test]
    fn reasoning_of_a_tool_turn_is_put_back_under_the_ids_the_client_got() {
        let store = Arc::new(MemoryStore::new(1 << 20, Duration::from_secs(60)));
        let f = ReasoningMemoryFactory::with_store(Field::ReasoningContent, store.clone());
        let meta = RequestMeta::new("m", true);
        let out = run_turn(
            &f,
            &meta,
            vec![
                Event::Text(Channel::Analysis, "Need the weather.".into()),
                Event::ToolCallStart { name: "functions.get_weather".into(), id: None },
                Event::ToolCallEnd,
            ],
        );
        let Some(Event::ToolCallStart { id: Some(id), .. }) = out.iter().find(|e| matches!(e, Event::ToolCallStart { .. })) else { panic!("{out:?}") };
        assert!(id.starts_with("call_"));
        let mut req =
            json!({"messages": [{"role": "user", "content": "weather?"}, turn(&[id], None), {"role": "tool", "tool_call_id": id, "content": "sunny"}]});
        on_request(&mut f.new_request_stage(&meta), &mut req);
        assert_eq!(req["messages"][1]["reasoning_content"], "Need the weather.");
        // Reasoning the client sent itself is left alone; other ids get nothing.
        let mut req = json!({"messages": [turn(&[id], Some("mine")), turn(&["call_other"], None)]});
        on_request(&mut f.new_request_stage(&meta), &mut req);
        assert_eq!(req["messages"][0]["reasoning_content"], "mine");
        assert!(req["messages"][1].get("reasoning_content").is_none());
    }

    /// Found by the Node SDK conformance test: `chat.completions.stream().finalChatCompletion()`
    /// keeps only the last `reasoning_content` delta, so the agent sends back " weather.".
    #[test]
    fn a_reasoning_fragment_the_sdk_kept_is_made_whole_again() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60));
        store.put("", &["a".into()], "Need the weather.");
        let mut req = json!({"messages": [turn(&["a"], Some(" weather."))]});
        assert_eq!(restore(&mut req, Field::ReasoningContent, "", &store), 1);
        assert_eq!(req["messages"][0]["reasoning_content"], "Need the weather.");
        // history-clean already merged the preamble after the fragment.
        let mut req = json!({"messages": [turn(&["a"], Some(" weather.\n\nChecking."))]});
        assert_eq!(restore(&mut req, Field::ReasoningContent, "", &store), 1);
        assert_eq!(req["messages"][0]["reasoning_content"], "Need the weather.\n\nChecking.");
        // The whole reasoning, or the client's own, is left as it is.
        for own in ["Need the weather.", "Need the weather.\n\nChecking.", "Something else."] {
            let mut req = json!({"messages": [turn(&["a"], Some(own))]});
            assert_eq!(restore(&mut req, Field::ReasoningContent, "", &store), 0, "{own}");
        }
    }

    #[test]
    fn only_turns_after_the_last_final_answer_get_reasoning_back() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60));
        store.put("", &["a".into(), "b".into()], "r");
        let mut req = json!({"messages": [turn(&["a"], None), {"role": "assistant", "content": "done"}, turn(&["b"], None)]});
        assert_eq!(restore(&mut req, Field::Reasoning, "", &store), 1);
        assert!(req["messages"][0].get("reasoning").is_none());
        assert_eq!(req["messages"][2]["reasoning"], "r");
    }

    #[test]
    fn each_turn_gets_what_is_remembered_under_the_first_of_its_ids_that_has_any() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60));
        store.put("", &["b".into()], "first turn");
        store.put("", &["d".into()], "second turn");
        store.put("", &["c".into()], "under c, its second id");
        let mut req =
            json!({"messages": [turn(&["a", "b"], None), {"role": "tool", "tool_call_id": "a", "content": "1"}, turn(&["x"], None), turn(&["d", "c"], None)]});
        assert_eq!(restore(&mut req, Field::ReasoningContent, "", &store), 2);
        assert_eq!(req["messages"][0]["reasoning_content"], "first turn");
        assert!(req["messages"][2].get("reasoning_content").is_none(), "nothing under x");
        assert_eq!(req["messages"][3]["reasoning_content"], "second turn");
    }

    #[test]
    fn upstream_parsed_calls_get_one_client_id_each() {
        let store = Arc::new(MemoryStore::new(1 << 20, Duration::from_secs(60)));
        let f = ReasoningMemoryFactory::with_store(Field::ReasoningContent, store.clone());
        let up = |id: Option<&str>, args: &str| {
            Event::UpstreamToolCall(crate::event::UpstreamToolCall {
                index: 0,
                id: id.map(Into::into),
                name: None,
                arguments: Some(args.into()),
                client_id: None,
            })
        };
        let out = run_turn(&f, &RequestMeta::new("m", true), vec![Event::UpstreamReasoning("think".into()), up(Some("x"), "{"), up(None, "}")]);
        let ids: Vec<_> = out.iter().filter_map(|e| if let Event::UpstreamToolCall(u) = e { Some(u.client_id.clone()) } else { None }).collect();
        assert!(matches!(&ids[..], [Some(_), None]), "{ids:?}");
        assert_eq!(&*store.get("", ids[0].as_deref().unwrap()).unwrap(), "think");
    }

    #[test]
    fn the_least_recently_used_goes_first_when_full() {
        let store = MemoryStore::new(30, Duration::from_secs(60));
        store.put("", &["a".into()], "0123456789"); // 11 bytes with its key
        store.put("", &["b".into()], "0123456789");
        assert!(store.get("", "a").is_some()); // a is now the most recently used
        store.put("", &["c".into()], "0123456789");
        assert!(store.get("", "b").is_none(), "b was least recently used");
        assert!(store.get("", "a").is_some() && store.get("", "c").is_some());
        assert!(store.bytes() <= 30);
        store.put("", &["huge".into()], &"x".repeat(100));
        assert!(store.get("", "huge").is_none(), "an entry larger than the store is not kept");
    }

    #[test]
    fn entries_expire() {
        let store = MemoryStore::new(1 << 20, Duration::from_millis(30));
        store.put("", &["a".into()], "r");
        assert!(store.get("", "a").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.get("", "a").is_none());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn a_key_only_gets_its_own_reasoning_back() {
        let store = Arc::new(MemoryStore::new(1 << 20, Duration::from_secs(60)));
        let f = ReasoningMemoryFactory::with_store(Field::ReasoningContent, store);
        let mut alice = RequestMeta::new("m", true);
        alice.auth_scope = Some("alice".into());
        let mut bob = alice.clone();
        bob.auth_scope = Some("bob".into());
        let out = run_turn(&f, &alice, vec![Event::Text(Channel::Analysis, "secret plan".into()), Event::ToolCallStart { name: "f".into(), id: None }]);
        let Some(Event::ToolCallStart { id: Some(id), .. }) = out.iter().find(|e| matches!(e, Event::ToolCallStart { .. })).cloned() else { panic!("{out:?}") };
        let mut req = json!({"messages": [turn(&[&id], None)]});
        on_request(&mut f.new_request_stage(&bob), &mut req);
        assert!(req["messages"][0].get("reasoning_content").is_none(), "bob must not see alice's reasoning");
        on_request(&mut f.new_request_stage(&alice), &mut req);
        assert_eq!(req["messages"][0]["reasoning_content"], "secret plan");
    }
}
