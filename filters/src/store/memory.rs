//! The in-process store: bounded in bytes, entries expire, a fair share per key scope.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::StateStore;
use crate::work::BoxFuture;

struct Entry {
    value: Arc<str>,
    expires: Instant,
    /// Position in its scope's `order` (least recently used first).
    tick: u64,
}

/// What one key scope holds: its bytes and its entries, least recently used first.
#[derive(Default)]
struct ScopeUse {
    bytes: u64,
    order: BTreeMap<u64, String>,
}

struct Lru {
    map: HashMap<(String, String), Entry>,
    scopes: HashMap<String, ScopeUse>,
    tick: u64,
    bytes: u64,
    max_bytes: u64,
    ttl: Duration,
}

/// The in-process store: bounded in bytes, entries expire. When it is full, the scope that
/// holds the most gives up its least recently used entry first: one key filling the store
/// evicts its own state, never that of a key holding less (a fair share per key scope).
pub struct MemoryStore {
    inner: Mutex<Lru>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self { inner: Mutex::new(Lru { map: HashMap::new(), scopes: HashMap::new(), tick: 0, bytes: 0, max_bytes, ttl }) }
    }

    /// Bytes of reasoning held (for tests and metrics).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The limits it was made with: `(max_bytes, ttl)`.
    pub fn limits(&self) -> (u64, Duration) {
        let l = self.lock();
        (l.max_bytes, l.ttl)
    }

    /// What is remembered under `id` within `scope`: a memory store answers at once, so tests
    /// and tools read it without awaiting.
    pub fn get(&self, scope: &str, id: &str) -> Option<Arc<str>> {
        let mut l = self.lock();
        let key = (scope.to_owned(), id.to_owned());
        let (expired, old_tick) = match l.map.get(&key) {
            None => return None,
            Some(e) => (e.expires <= Instant::now(), e.tick),
        };
        if expired {
            l.remove(&key);
            return None;
        }
        l.tick += 1;
        let tick = l.tick;
        if let Some(u) = l.scopes.get_mut(scope) {
            u.order.remove(&old_tick);
            u.order.insert(tick, id.to_owned());
        }
        let e = l.map.get_mut(&key)?;
        e.tick = tick;
        Some(e.value.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn entry_cost(key: &(String, String), value: &str) -> u64 {
    (key.0.len() + key.1.len() + value.len()) as u64
}

impl Lru {
    fn remove(&mut self, key: &(String, String)) {
        if let Some(e) = self.map.remove(key) {
            let cost = entry_cost(key, &e.value);
            self.bytes -= cost;
            if let Some(u) = self.scopes.get_mut(&key.0) {
                u.order.remove(&e.tick);
                u.bytes -= cost;
                if u.order.is_empty() {
                    self.scopes.remove(&key.0);
                }
            }
        }
    }

    fn evict_to_fit(&mut self) {
        while self.bytes > self.max_bytes {
            // The scope holding the most pays (scopes are few: one per API key).
            let Some(scope) = self.scopes.iter().max_by_key(|(_, u)| u.bytes).map(|(s, _)| s.clone()) else { break };
            let Some(id) = self.scopes.get(&scope).and_then(|u| u.order.first_key_value()).map(|(_, id)| id.clone()) else {
                self.scopes.remove(&scope);
                continue;
            };
            self.remove(&(scope, id));
        }
    }
}

impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        let (max, ttl) = self.limits();
        format!("this process's memory (max_bytes {max}, ttl {ttl:?}; when full, the key holding the most gives up its oldest entry)")
    }

    fn put(&self, scope: &str, ids: &[String], reasoning: &str) {
        let value: Arc<str> = Arc::from(reasoning);
        let mut l = self.lock();
        let expires = Instant::now() + l.ttl;
        for id in ids {
            let key = (scope.to_owned(), id.clone());
            l.remove(&key);
            let cost = entry_cost(&key, &value);
            if cost > l.max_bytes {
                tracing::warn!(bytes = cost, max_bytes = l.max_bytes, "state store: an entry larger than the store's max_bytes was not kept");
                continue;
            }
            l.tick += 1;
            let tick = l.tick;
            let u = l.scopes.entry(scope.to_owned()).or_default();
            u.order.insert(tick, id.clone());
            u.bytes += cost;
            l.bytes += cost;
            l.map.insert(key, Entry { value: value.clone(), expires, tick });
        }
        l.evict_to_fit();
    }

    /// At once: see [`MemoryStore::get`].
    fn get<'a>(&'a self, scope: &'a str, id: &'a str) -> BoxFuture<'a, Option<Arc<str>>> {
        Box::pin(std::future::ready(MemoryStore::get(self, scope, id)))
    }

    fn delete(&self, scope: &str, id: &str) {
        self.lock().remove(&(scope.to_owned(), id.to_owned()));
    }
}
