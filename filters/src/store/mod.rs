//! Where state between requests lives: the reasoning `reasoning-memory` gives back on the
//! next turn, and the responses the Responses API stores (`previous_response_id`,
//! `GET /v1/responses/{id}`). One component the server owns and hands to what needs it:
//!
//! ```text
//! Stores (owned by the server, outlives config generations)
//!   ├─ memory(max_bytes, ttl) ─► MemoryStore   one per pair of limits
//!   ├─ redis(url, ttl, timeout) ─► RedisStore  one per URL, ttl and timeout
//!   └─ fallback() ─► MemoryStore              default limits: routes with no reasoning-memory
//! compile(specs, enc, &stores) ─► reasoning-memory's factory holds its store
//! EdgeEnv.store ─► the route's store, for the client edges (stored responses)
//! ```
//! Nothing here is a process global: a test, a tool or a second server in one process each
//! own their `Stores`. A reload compiles the new generation with the same `Stores`, so a
//! store whose limits did not change keeps what it holds; a store no generation uses any
//! more is freed.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::work::BoxFuture;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A store of state between requests, by key scope and id. Called once at the start and
/// once at the end of a request, never per token. Writes never wait (a store that must,
/// queues them); a read is awaited by the request phase, so a store that waits on a network
/// (Redis) holds no thread meanwhile.
pub trait StateStore: Send + Sync {
    /// Remembers `value` under each of `ids`, within `scope`.
    fn put(&self, scope: &str, ids: &[String], value: &str);
    /// What is remembered under `id` within `scope` (a miss when the store cannot say).
    fn get<'a>(&'a self, scope: &'a str, id: &'a str) -> BoxFuture<'a, Option<Arc<str>>>;
    /// What is remembered under each of `ids` within `scope`, in their order: one round trip
    /// for a store on a network (Redis: one `MGET`, bounded by one timeout). By default, one
    /// `get` after another.
    fn get_many<'a>(&'a self, scope: &'a str, ids: &'a [&'a str]) -> BoxFuture<'a, Vec<Option<Arc<str>>>> {
        Box::pin(async move {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.push(self.get(scope, id).await);
            }
            found
        })
    }
    /// Forgets what is remembered under `id` within `scope`.
    fn delete(&self, scope: &str, id: &str);
    /// What it is and who shares it, for `check`.
    fn describe(&self) -> String {
        "a store of the caller's".into()
    }
}

/// A memory store's limits when none are set (`reasoning-memory`'s defaults too).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

type ByLimits = HashMap<(u64, Duration), Weak<MemoryStore>>;

/// The stores of one server (see the module header).
#[derive(Default)]
pub struct Stores {
    memory: Mutex<ByLimits>,
    redis: Mutex<Vec<Weak<RedisStore>>>,
    fallback: OnceLock<Arc<MemoryStore>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stores {
    /// The in-memory store with these limits: pipelines with the same limits share one; a
    /// pipeline gets the limits it sets, whatever other pipelines set.
    pub fn memory(&self, max_bytes: u64, ttl: Duration) -> Arc<MemoryStore> {
        let mut stores = lock(&self.memory);
        stores.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = stores.get(&(max_bytes, ttl)).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(MemoryStore::new(max_bytes, ttl));
        stores.insert((max_bytes, ttl), Arc::downgrade(&s));
        s
    }

    /// The Redis store for `url` with this `ttl` and `timeout` (one per all three, so every
    /// pipeline gets the ttl it set, whatever other pipelines sharing the server set).
    pub fn redis(&self, url: &str, ttl: Duration, timeout: Duration) -> Result<Arc<RedisStore>, String> {
        let mut stores = lock(&self.redis);
        stores.retain(|w| w.strong_count() > 0);
        if let Some(s) = stores.iter().filter_map(Weak::upgrade).find(|s| s.is(url, ttl, timeout)) {
            return Ok(s);
        }
        let s = Arc::new(RedisStore::new(url, ttl, timeout)?);
        stores.push(Arc::downgrade(&s));
        Ok(s)
    }

    /// The store of routes whose pipeline keeps none: memory, with the default limits.
    pub fn fallback(&self) -> Arc<MemoryStore> {
        self.fallback.get_or_init(|| self.memory(DEFAULT_MAX_BYTES, DEFAULT_TTL)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_shared_by_limits_and_freed_when_no_one_holds_them() {
        let stores = Stores::default();
        let a = stores.memory(100, Duration::from_secs(1));
        assert!(Arc::ptr_eq(&a, &stores.memory(100, Duration::from_secs(1))));
        assert!(!Arc::ptr_eq(&a, &stores.memory(200, Duration::from_secs(1))));
        a.put("", &["k".into()], "v");
        drop(a);
        assert!(stores.memory(100, Duration::from_secs(1)).get("", "k").is_none(), "a store no one holds is gone");
        // Two servers in one process share nothing.
        let other = Stores::default();
        stores.fallback().put("", &["x".into()], "1");
        assert!(other.fallback().get("", "x").is_none());
    }
}
