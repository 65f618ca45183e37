//! The reasoning store replicas share: `reasoning-memory` with `store = "redis://host:port/db"`.
//!
//! ```text
//! put (end of a tool-call turn) ─► bounded queue ─► writer thread ─► SET key value PX ttl
//! get_many (request phase, awaited) ─► MGET keys on the multiplexed connection, at most `timeout`
//! ```
//!
//! Invariants: Redis never fails a request and never delays it beyond `timeout`:
//! `reasoning-memory` reads all of a request's call ids in one `MGET`. A request
//! meets either an answer, a miss, or (Redis down, slow or refusing) nothing: the error is
//! counted in `harmony_proxy_reasoning_store_errors_total{op}`, logged at most once a minute,
//! and Redis is skipped for a second (the calls skipped are counted too), so a dead Redis
//! costs one timeout per second, not one per request. Writes never wait at all: they are
//! queued (bounded; dropped and counted when full) for one writer thread. Keys are
//! `harmony-proxy:reasoning:<scope>:<call id>`, values
//! the turn's reasoning (bounded by the stage), each with the stage's `ttl`.
//!
//! Why the `redis` crate's two clients: reads are awaited by the async request phase on one
//! multiplexed connection (every request's `GET` pipelined on it, no thread waiting on
//! Redis); writes, which no request waits for, go through the sync client in a thread of
//! their own, so a slow Redis fills a bounded queue instead of holding tasks.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, Counter};

use super::StateStore;
use crate::work::BoxFuture;

/// Keys of this store start with this.
pub const KEY_PREFIX: &str = "harmony-proxy:reasoning:";
/// How long Redis is left alone after an error.
const BACK_OFF: Duration = Duration::from_secs(1);
/// Queued writes at most; beyond, writes are dropped (and counted).
const QUEUE: usize = 4096;
/// Call ids longer than this are not stored (no client sends them; a bound on key size).
const MAX_ID: usize = 256;

struct Write {
    keys: Vec<String>,
    /// `None`: delete the keys.
    value: Option<Arc<str>>,
    ttl_ms: u64,
}

struct Shared {
    client: redis::Client,
    url: String,
    timeout: Duration,
    /// Set after an error: no Redis call until then.
    down_until: Mutex<Option<Instant>>,
    last_log: Mutex<Option<Instant>>,
    get_errors: Counter,
    put_errors: Counter,
}

/// A Redis-backed [`StateStore`]; one per URL, ttl and timeout per server (see [`super::Stores::redis`]).
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The reads' connection (with its number), made at the first read and again after an
    /// error; locked while one read connects, so a burst of reads makes one connection.
    reader: tokio::sync::Mutex<Option<(u64, redis::aio::MultiplexedConnection)>>,
    connections: std::sync::atomic::AtomicU64,
    ttl_ms: Mutex<u64>,
    writes: SyncSender<Write>,
}

/// Whether `url` is a store URL this build can use; the error says why not.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err("rediss:// (TLS) is not supported by this build; use redis:// on a private network".into());
    }
    if !url.starts_with("redis://") {
        return Err(format!("{:?} is neither \"memory\" nor a redis:// URL", redact(url)));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| format!("{:?}: {e}", redact(url)))
}

impl RedisStore {
    /// Whether it is the store for `url` with this `ttl` and `timeout`.
    pub(super) fn is(&self, url: &str, ttl: Duration, timeout: Duration) -> bool {
        self.shared.url == url && self.shared.timeout == timeout && *self.ttl_ms.lock().unwrap_or_else(|p| p.into_inner()) == ttl.as_millis().max(1) as u64
    }

    /// A store on `url`; connects lazily (a Redis that is down at start is not an error).
    pub fn new(url: &str, ttl: Duration, timeout: Duration) -> Result<Self, String> {
        check_url(url)?;
        let client = redis::Client::open(url).map_err(|e| format!("{:?}: {e}", redact(url)))?;
        let shared = Arc::new(Shared {
            client,
            url: url.to_owned(),
            timeout,
            down_until: Mutex::new(None),
            last_log: Mutex::new(None),
            get_errors: counter!("harmony_proxy_reasoning_store_errors_total", "op" => "get"),
            put_errors: counter!("harmony_proxy_reasoning_store_errors_total", "op" => "put"),
        });
        let (writes, queue) = sync_channel(QUEUE);
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("reasoning-store-writer".into())
            .spawn(move || write_loop(&writer, queue))
            .map_err(|e| format!("cannot start the Redis writer thread: {e}"))?;
        Ok(Self { shared, reader: tokio::sync::Mutex::new(None), connections: Default::default(), ttl_ms: Mutex::new(ttl.as_millis().max(1) as u64), writes })
    }

    fn key(scope: &str, id: &str) -> String {
        format!("{KEY_PREFIX}{scope}:{id}")
    }

    /// The reads' connection, connected first if there is none: its number, and whether it
    /// was made before this read.
    async fn connection(&self) -> Result<(u64, redis::aio::MultiplexedConnection, bool), redis::RedisError> {
        let mut held = self.reader.lock().await;
        if let Some((n, c)) = &*held {
            return Ok((*n, c.clone(), true));
        }
        let t = Some(self.shared.timeout);
        let cfg = redis::AsyncConnectionConfig::new().set_connection_timeout(t).set_response_timeout(t);
        let c = self.shared.client.get_multiplexed_async_connection_with_config(&cfg).await?;
        let n = self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *held = Some((n, c.clone()));
        Ok((n, c, false))
    }

    /// Forgets connection `n` (not one another read has made since).
    async fn forget(&self, n: u64) {
        let mut held = self.reader.lock().await;
        if held.as_ref().is_some_and(|(m, _)| *m == n) {
            *held = None;
        }
    }

    /// `MGET keys`. A connection made before that turns out closed (Redis restarted, or
    /// closed it idle) is made again once, within the same read.
    async fn read(&self, keys: &[String]) -> Result<Vec<Option<String>>, redis::RedisError> {
        let (n, mut con, made_before) = self.connection().await?;
        let r = redis::cmd("MGET").arg(keys).query_async(&mut con).await;
        let r = match r {
            Err(e) if made_before && (e.is_connection_dropped() || e.is_unrecoverable_error()) => {
                self.forget(n).await;
                let (n, mut con, _) = self.connection().await?;
                let again = redis::cmd("MGET").arg(keys).query_async(&mut con).await;
                if again.is_err() {
                    self.forget(n).await;
                }
                return again;
            }
            r => r,
        };
        if r.is_err() {
            self.forget(n).await;
        }
        r
    }
}

impl Shared {
    fn connect(&self) -> Result<redis::Connection, redis::RedisError> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    fn is_down(&self) -> bool {
        self.down_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() < t)
    }

    fn failed(&self, op: &'static str, e: &dyn std::fmt::Display) {
        if op == "get" { &self.get_errors } else { &self.put_errors }.increment(1);
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + BACK_OFF);
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(store = %redact(&self.url), op, error = %e, "reasoning store unavailable; requests go on without it (logged once a minute at most)");
        }
    }
}

fn write_loop(shared: &Shared, queue: Receiver<Write>) {
    let mut con: Option<redis::Connection> = None;
    while let Ok(w) = queue.recv() {
        if shared.is_down() {
            shared.put_errors.increment(1);
            continue;
        }
        let c = match con.take() {
            Some(c) => c,
            None => match shared.connect() {
                Ok(c) => c,
                Err(e) => {
                    shared.failed("put", &e);
                    continue;
                }
            },
        };
        let mut c = c;
        let mut pipe = redis::pipe();
        for k in &w.keys {
            match &w.value {
                Some(v) => pipe.cmd("SET").arg(k).arg(&**v).arg("PX").arg(w.ttl_ms).ignore(),
                None => pipe.cmd("DEL").arg(k).ignore(),
            };
        }
        match pipe.query::<()>(&mut c) {
            Ok(()) => con = Some(c),
            Err(e) => shared.failed("put", &e),
        }
    }
}

impl RedisStore {
    fn queue(&self, w: Write) {
        match self.writes.try_send(w) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.failed("put", &"the write queue is full (Redis too slow)"),
            Err(TrySendError::Disconnected(_)) => self.shared.failed("put", &"the writer thread is gone"),
        }
    }
}

impl StateStore for RedisStore {
    fn describe(&self) -> String {
        let ttl = *self.ttl_ms.lock().unwrap_or_else(|p| p.into_inner());
        format!("Redis at {} (ttl {ttl} ms, shared with the replicas)", redact(&self.shared.url))
    }

    fn put(&self, scope: &str, ids: &[String], reasoning: &str) {
        let keys: Vec<String> = ids.iter().filter(|id| id.len() <= MAX_ID).map(|id| Self::key(scope, id)).collect();
        if keys.is_empty() {
            return;
        }
        let ttl_ms = *self.ttl_ms.lock().unwrap_or_else(|p| p.into_inner());
        self.queue(Write { keys, value: Some(reasoning.into()), ttl_ms });
    }

    fn delete(&self, scope: &str, id: &str) {
        if id.len() <= MAX_ID {
            self.queue(Write { keys: vec![Self::key(scope, id)], value: None, ttl_ms: 0 });
        }
    }

    fn get<'a>(&'a self, scope: &'a str, id: &'a str) -> BoxFuture<'a, Option<Arc<str>>> {
        Box::pin(async move { self.get_many(scope, &[id]).await.pop().flatten() })
    }

    fn get_many<'a>(&'a self, scope: &'a str, ids: &'a [&'a str]) -> BoxFuture<'a, Vec<Option<Arc<str>>>> {
        Box::pin(async move {
            let mut found = vec![None; ids.len()];
            // Ids too long to be a key are never stored: misses without asking.
            let (at, keys): (Vec<usize>, Vec<String>) =
                ids.iter().enumerate().filter(|(_, id)| id.len() <= MAX_ID).map(|(i, id)| (i, Self::key(scope, id))).unzip();
            if keys.is_empty() {
                return found;
            }
            if self.shared.is_down() {
                // Skipped, not tried: still a read that went without the store, counted like
                // the writer counts the writes it skips (a failed write can set the back-off
                // before the next read comes).
                self.shared.get_errors.increment(1);
                return found;
            }
            // Connecting and reading, together at most `timeout`.
            match tokio::time::timeout(self.shared.timeout, self.read(&keys)).await {
                Ok(Ok(values)) => {
                    for (i, v) in at.into_iter().zip(values) {
                        found[i] = v.map(Arc::from);
                    }
                }
                Ok(Err(e)) => self.shared.failed("get", &e),
                Err(_) => {
                    // The connection may be stuck: the next read (after the back-off) makes
                    // another, unless a read is connecting right now.
                    if let Ok(mut held) = self.reader.try_lock() {
                        *held = None;
                    }
                    self.shared.failed("get", &format_args!("no answer within {:?}", self.shared.timeout));
                }
            }
            found
        })
    }
}

/// `url` without its password, for what is printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &url[..a + 3], &url[b..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked_without_connecting() {
        assert!(check_url("redis://127.0.0.1:1/0").is_ok());
        assert!(check_url("rediss://x/").unwrap_err().contains("TLS"));
        assert!(check_url("memcached://x").is_err());
    }

    #[test]
    fn a_redis_that_is_not_there_is_a_miss_and_is_left_alone_after_the_first_error() {
        // Port 1 on loopback refuses at once; the store backs off after the first error.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let s = RedisStore::new("redis://127.0.0.1:1/", Duration::from_secs(60), Duration::from_millis(50)).unwrap();
        assert_eq!(rt.block_on(s.get("", "call_a")), None);
        assert!(s.shared.is_down(), "after an error, Redis is left alone for a while");
        assert!(s.reader.try_lock().unwrap().is_none());
        assert_eq!(rt.block_on(s.get("", "call_a")), None);
        s.put("", &["call_a".into()], "thinking"); // queued, never blocks
    }

    #[test]
    fn a_redis_that_never_answers_is_a_miss_after_the_timeout() {
        // A listener that accepts and says nothing: the read gives up at the store's timeout.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}/", silent.local_addr().unwrap());
        let s = RedisStore::new(&url, Duration::from_secs(60), Duration::from_millis(100)).unwrap();
        let started = Instant::now();
        assert_eq!(rt.block_on(s.get("", "call_a")), None);
        assert!(started.elapsed() < Duration::from_secs(30), "bounded by the timeout, not the peer");
        assert!(s.shared.is_down());
    }

    /// A Redis that answers `MGET` with `"r<n>"` on its n-th connection for each key ending in
    /// `a` and nothing for the others (anything else `+OK`), and closes each connection after
    /// `gets` of them.
    fn fake_redis(gets: usize) -> std::net::SocketAddr {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for (n, conn) in l.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    let mut answered = 0;
                    let mut line = String::new();
                    while answered < gets {
                        // One command: `*N`, then N bulk strings (`$len`, the bytes).
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let Some(n_args) = line.trim().strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else { continue };
                        let mut args = Vec::new();
                        for _ in 0..n_args {
                            let (mut len, mut arg) = (String::new(), String::new());
                            r.read_line(&mut len).unwrap();
                            r.read_line(&mut arg).unwrap();
                            args.push(arg.trim_end().to_owned());
                        }
                        let reply = if args[0].eq_ignore_ascii_case("MGET") {
                            answered += 1;
                            // `r<n>` for a key ending in `a`, nothing for the others.
                            let values: String =
                                args[1..].iter().map(|k| if k.ends_with('a') { format!("$2\r\nr{n}\r\n") } else { "$-1\r\n".to_owned() }).collect();
                            format!("*{}\r\n{values}", args.len() - 1)
                        } else {
                            "+OK\r\n".to_owned()
                        };
                        w.write_all(reply.as_bytes()).unwrap();
                    }
                    // Closed: as a Redis that restarted.
                });
            }
        });
        addr
    }

    #[test]
    fn a_connection_redis_closed_is_made_again_within_the_read_not_a_miss() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let addr = fake_redis(1);
        let s = RedisStore::new(&format!("redis://{addr}/"), Duration::from_secs(60), Duration::from_secs(5)).unwrap();
        assert_eq!(rt.block_on(s.get("", "a")).as_deref(), Some("r0"));
        std::thread::sleep(Duration::from_millis(100)); // the first connection is closed by now
        assert_eq!(rt.block_on(s.get("", "a")).as_deref(), Some("r1"), "made again, and read");
        assert!(!s.shared.is_down(), "no back-off for a connection that was only closed");
    }

    #[test]
    fn the_ids_of_a_request_are_read_in_one_round_trip_in_their_order() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // One MGET and the connection is closed: a second round trip would be on another.
        let addr = fake_redis(1);
        let s = RedisStore::new(&format!("redis://{addr}/"), Duration::from_secs(60), Duration::from_secs(5)).unwrap();
        let long = "a".repeat(MAX_ID + 1);
        let got = rt.block_on(s.get_many("", &["call_b", "call_a", &long, "x_a"]));
        let got: Vec<Option<&str>> = got.iter().map(Option::as_deref).collect();
        assert_eq!(got, [None, Some("r0"), None, Some("r0")], "a too long id is a miss, not asked");
    }

    #[test]
    fn reads_at_once_share_one_connection() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let addr = fake_redis(usize::MAX);
        let s = Arc::new(RedisStore::new(&format!("redis://{addr}/"), Duration::from_secs(60), Duration::from_secs(5)).unwrap());
        let got = rt.block_on(async {
            let reads: Vec<_> = (0..16)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(async move { s.get("", "a").await })
                })
                .collect();
            let mut got = Vec::new();
            for r in reads {
                got.push(r.await.unwrap());
            }
            got
        });
        assert!(got.iter().all(|v| v.as_deref() == Some("r0")), "every read on the first connection: {got:?}");
    }
}
