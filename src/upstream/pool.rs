//! The servers of one upstream: which one takes a request, how many requests each holds, and
//! whether it is healthy.
//!
//! ```text
//! request ─► Pool::acquire ─► Lease (outstanding +1) ─► the call ─► verdict: succeeded / failed
//!               │ every healthy server at max_outstanding: wait for a Lease to drop, at most
//!               │ connect_timeout, then Busy (the client gets 503 with Retry-After)
//! Lease dropped (the stream or body ended) ─► outstanding −1, waiters woken
//! ```
//!
//! Health is passive (3 failed requests in a row — connect error, reset, timeout, 5xx — take a
//! server out for 30 s, then one trial request decides) and, with `health_interval`, active
//! (the same verdicts from `GET {url}/models`). When every server of a pool is out, requests go
//! to all of them anyway: failing fast would turn one blip of a lone server into 30 s of errors.
//!
//! Invariant: a server's state is one per process and (upstream name, url), shared by every
//! config generation that lists it. A reload that keeps a server keeps its count and health, so
//! streams begun before the reload still count against `max_outstanding`; a server a reload
//! drops lives on in the old generation until its last stream ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, Counter, Gauge};
use tokio::sync::Notify;

use crate::config::Balance;

/// Failures in a row that take a server out.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected server sits out before one trial request.
pub const SIT_OUT: Duration = Duration::from_secs(30);

/// A server's health; each state carries what only it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Taking requests; `failures` in a row so far.
    Up { failures: u32 },
    /// Sitting out until `until`; then the next request is a trial.
    Out { until: Instant },
    /// One trial request (`id`) is in flight; its verdict puts the server back or out again.
    Trial { id: u64 },
}

/// A new trial's id.
fn next_trial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Health {
    /// The state after a failure at `now`, and whether that ejected the server.
    fn failed(self, now: Instant) -> (Health, bool) {
        match self {
            Health::Up { failures } if failures + 1 >= EJECT_AFTER => (Health::Out { until: now + SIT_OUT }, true),
            Health::Up { failures } => (Health::Up { failures: failures + 1 }, false),
            Health::Trial { .. } => (Health::Out { until: now + SIT_OUT }, true),
            out @ Health::Out { .. } => (out, false),
        }
    }

    /// May take a request at `now` (a due trial counts).
    fn usable(self, now: Instant) -> bool {
        match self {
            Health::Up { .. } => true,
            Health::Out { until } => now >= until,
            Health::Trial { .. } => false,
        }
    }
}

/// `url` with its userinfo (`user:password@`) replaced by `***@`: what may be printed.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

/// One model server of an upstream.
pub struct Server {
    pub upstream: String,
    /// The base URL without a trailing `/`, e.g. `http://gpu1:8080/v1`.
    pub url: String,
    /// The URL as it may be shown (logs, `/readyz`, metric labels, error messages): any
    /// `user:password@` replaced by `***@`.
    pub shown: String,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    /// The pool's: woken whenever a lease of any of its servers ends.
    freed: Arc<Notify>,
    requests: Counter,
    outstanding_gauge: Gauge,
    healthy_gauge: Gauge,
}

impl Server {
    fn new(upstream: &str, url: &str, freed: Arc<Notify>) -> Self {
        let shown = redact_url(url);
        let labels = [("upstream", upstream.to_owned()), ("server", shown.clone())];
        let healthy_gauge = gauge!("harmony_proxy_upstream_healthy", &labels);
        healthy_gauge.set(1.0);
        Self {
            upstream: upstream.to_owned(),
            url: url.to_owned(),
            shown,
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(Health::Up { failures: 0 }),
            freed,
            requests: counter!("harmony_proxy_upstream_requests_total", &labels),
            outstanding_gauge: gauge!("harmony_proxy_upstream_outstanding", &labels),
            healthy_gauge,
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// `up`, `out` (sitting out) or `trial`, for `/readyz`.
    pub fn state(&self) -> &'static str {
        match *self.health() {
            Health::Up { .. } => "up",
            Health::Out { .. } => "out",
            Health::Trial { .. } => "trial",
        }
    }

    /// The server answered (any status below 500): back in, failure count reset.
    pub fn succeeded(&self) {
        let mut h = self.health();
        let was_out = !matches!(*h, Health::Up { .. });
        *h = Health::Up { failures: 0 };
        drop(h);
        if was_out {
            tracing::info!(upstream = %self.upstream, server = %self.shown, "server is back in the pool");
            self.healthy_gauge.set(1.0);
            // Requests waiting for a slot may take this server now.
            self.freed.notify_waiters();
        }
    }

    /// The server failed a request or a probe (`why`: the error kind).
    pub fn failed(&self, why: &str) {
        self.failed_at(why, Instant::now());
    }

    fn failed_at(&self, why: &str, now: Instant) {
        let mut h = self.health();
        let (next, ejected) = h.failed(now);
        *h = next;
        if ejected {
            self.healthy_gauge.set(0.0);
            tracing::warn!(upstream = %self.upstream, server = %self.shown, why, sit_out_s = SIT_OUT.as_secs(), "server taken out of the pool");
        }
    }

    /// Takes a slot when below `max`; `false` when full.
    fn take_slot(&self, max: Option<usize>) -> bool {
        let ok = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| max.is_none_or(|m| n < m).then_some(n + 1)).is_ok();
        if ok {
            self.outstanding_gauge.increment(1.0);
        }
        ok
    }
}

/// A request's hold on a server: counted in `outstanding` until dropped.
pub struct Lease {
    server: Arc<Server>,
    /// This request is the server's trial after a sit-out (the trial's id).
    trial: Option<u64>,
}

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.server.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.server.outstanding_gauge.decrement(1.0);
        if let Some(id) = self.trial {
            // This trial ended without a verdict (the client left first): the next request
            // may try again at once. A later trial (another id) is left alone.
            let mut h = self.server.health();
            if *h == (Health::Trial { id }) {
                *h = Health::Out { until: Instant::now() };
            }
        }
        self.server.freed.notify_waiters();
    }
}

/// Every healthy server was at `max_outstanding` for the whole wait.
#[derive(Debug)]
pub struct Busy {
    pub waited: Duration,
}

/// The servers of one upstream in one config generation.
pub struct Pool {
    pub servers: Vec<Arc<Server>>,
    balance: Balance,
    max_outstanding: Option<usize>,
    next: AtomicUsize,
    freed: Arc<Notify>,
}

/// Process-wide server states by upstream name: (the pool's wake-up, servers by url).
type Registry = HashMap<String, (Weak<Notify>, HashMap<String, Weak<Server>>)>;

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Pool {
    /// The pool of `upstream` over `urls`, reusing the state of servers already known.
    pub fn new(upstream: &str, urls: &[&str], balance: Balance, max_outstanding: Option<usize>) -> Self {
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        let (notify_slot, known) = reg.entry(upstream.to_owned()).or_default();
        let freed = notify_slot.upgrade().unwrap_or_else(|| {
            let n = Arc::new(Notify::new());
            *notify_slot = Arc::downgrade(&n);
            n
        });
        known.retain(|_, w| w.strong_count() > 0);
        let servers = urls
            .iter()
            .map(|u| {
                let url = u.trim_end_matches('/');
                match known.get(url).and_then(Weak::upgrade) {
                    Some(s) if Arc::ptr_eq(&s.freed, &freed) => s,
                    _ => {
                        let s = Arc::new(Server::new(upstream, url, freed.clone()));
                        known.insert(url.to_owned(), Arc::downgrade(&s));
                        s
                    }
                }
            })
            .collect();
        Self { servers, balance, max_outstanding, next: AtomicUsize::new(fastrand::usize(..)), freed }
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// A server for a request: a healthy one with a free slot, not `avoid` when another will
    /// do. Waits up to `wait` for a slot when every candidate is full.
    pub async fn acquire(&self, avoid: Option<&Arc<Server>>, wait: Duration) -> Result<Lease, Busy> {
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        loop {
            // Register for a wake-up before looking, so a lease dropped in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(lease) = self.try_acquire(avoid, true) {
                return Ok(lease);
            }
            // A sit-out that ends wakes nobody: look again at least every 250 ms.
            let next = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
            if tokio::time::timeout_at(next, freed).await.is_err() && tokio::time::Instant::now() >= deadline {
                if let Some(lease) = self.try_acquire(avoid, true) {
                    return Ok(lease);
                }
                return Err(Busy { waited: started.elapsed() });
            }
        }
    }

    /// A server for a forwarded request (`/v1/models`, embeddings…): never waits for a slot.
    pub fn acquire_now(&self) -> Lease {
        match self.try_acquire(None, false) {
            Some(l) => l,
            None => {
                let server = self.servers[0].clone();
                server.take_slot(None);
                Lease { server, trial: None }
            }
        }
    }

    fn try_acquire(&self, avoid: Option<&Arc<Server>>, bounded: bool) -> Option<Lease> {
        let max = if bounded { self.max_outstanding } else { None };
        // A few rounds: another request may take the slot or the trial we chose.
        for _ in 0..4 {
            let now = Instant::now();
            let mut usable: Vec<&Arc<Server>> = self.servers.iter().filter(|s| s.health().usable(now)).collect();
            let panic_mode = usable.is_empty();
            if panic_mode {
                // Every server is out: try them all rather than fail.
                usable = self.servers.iter().collect();
            }
            usable.retain(|s| max.is_none_or(|m| s.outstanding() < m));
            // Another server than the one that just failed, when another can take it.
            if let Some(a) = avoid {
                if usable.iter().any(|s| !Arc::ptr_eq(s, a)) {
                    usable.retain(|s| !Arc::ptr_eq(s, a));
                }
            }
            let server = self.choose(&usable)?;
            if !server.take_slot(max) {
                continue;
            }
            let trial = {
                let mut h = server.health();
                match *h {
                    Health::Out { until } if now >= until => {
                        let id = next_trial();
                        *h = Health::Trial { id };
                        Some(Some(id))
                    }
                    // Lost the trial to another request; with every server out, go anyway.
                    Health::Trial { .. } | Health::Out { .. } if !panic_mode => None,
                    _ => Some(None),
                }
            };
            let Some(trial) = trial else {
                drop(Lease { server: server.clone(), trial: None });
                continue;
            };
            server.requests.increment(1);
            return Some(Lease { server: server.clone(), trial });
        }
        None
    }

    fn choose<'a>(&self, candidates: &[&'a Arc<Server>]) -> Option<&'a Arc<Server>> {
        match (candidates.len(), self.balance) {
            (0, _) => None,
            (1, _) => Some(candidates[0]),
            (n, Balance::RoundRobin) => Some(candidates[self.next.fetch_add(1, Ordering::Relaxed) % n]),
            (_, Balance::LeastOutstanding) => {
                // One reading of the counts: other requests change them meanwhile.
                let counts: Vec<usize> = candidates.iter().map(|s| s.outstanding()).collect();
                let least = *counts.iter().min()?;
                let tied: Vec<&'a Arc<Server>> = candidates.iter().zip(&counts).filter(|(_, &c)| c == least).map(|(s, _)| *s).collect();
                tied.get(fastrand::usize(..tied.len().max(1))).copied()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, n: usize, balance: Balance, max: Option<usize>) -> Pool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://s{i}:8080/v1")).collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        Pool::new(name, &refs, balance, max)
    }

    #[test]
    fn three_failures_in_a_row_take_a_server_out_and_one_success_resets_the_count() {
        let now = Instant::now();
        let mut h = Health::Up { failures: 0 };
        for _ in 0..2 {
            h = h.failed(now).0;
        }
        assert_eq!(h, Health::Up { failures: 2 });
        let (h, ejected) = h.failed(now);
        assert!(ejected);
        assert!(!h.usable(now));
        assert!(!h.usable(now + SIT_OUT - Duration::from_millis(1)));
        assert!(h.usable(now + SIT_OUT), "after the sit-out, a trial is due");
    }

    #[test]
    fn a_failed_trial_sits_out_again() {
        let now = Instant::now();
        let (h, ejected) = Health::Trial { id: 1 }.failed(now);
        assert!(ejected);
        assert_eq!(h, Health::Out { until: now + SIT_OUT });
    }

    #[test]
    fn least_outstanding_spreads_requests_evenly() {
        let p = pool("t-least", 3, Balance::LeastOutstanding, None);
        let leases: Vec<Lease> = (0..6).map(|_| p.try_acquire(None, true).unwrap()).collect();
        for s in &p.servers {
            assert_eq!(s.outstanding(), 2, "{}", s.url);
        }
        drop(leases);
        assert!(p.servers.iter().all(|s| s.outstanding() == 0));
    }

    #[test]
    fn max_outstanding_refuses_a_slot_when_every_server_is_full() {
        let p = pool("t-max", 2, Balance::RoundRobin, Some(1));
        let a = p.try_acquire(None, true).unwrap();
        let b = p.try_acquire(None, true).unwrap();
        assert!(!Arc::ptr_eq(a.server(), b.server()));
        assert!(p.try_acquire(None, true).is_none());
        let _forwarded = p.acquire_now(); // forwarded requests do not wait for a slot
        drop(a);
        assert!(p.try_acquire(None, true).is_some());
    }

    #[test]
    fn a_retry_avoids_the_server_that_failed_when_another_is_healthy() {
        let p = pool("t-avoid", 2, Balance::LeastOutstanding, None);
        let first = p.servers[0].clone();
        for _ in 0..20 {
            let l = p.try_acquire(Some(&first), true).unwrap();
            assert!(!Arc::ptr_eq(l.server(), &first));
        }
    }

    #[test]
    fn an_ejected_server_gets_no_requests_while_another_is_up_and_all_out_means_try_all() {
        let p = pool("t-eject", 2, Balance::RoundRobin, None);
        let bad = p.servers[0].clone();
        for _ in 0..EJECT_AFTER {
            bad.failed("connect");
        }
        assert_eq!(bad.state(), "out");
        for _ in 0..10 {
            let l = p.try_acquire(None, true).unwrap();
            assert!(!Arc::ptr_eq(l.server(), &bad));
        }
        for _ in 0..EJECT_AFTER {
            p.servers[1].failed("connect");
        }
        assert!(p.try_acquire(None, true).is_some(), "with every server out, requests still go out");
    }

    #[test]
    fn after_the_sit_out_one_trial_decides() {
        let p = pool("t-trial", 2, Balance::RoundRobin, None);
        let s = p.servers[0].clone();
        *s.health() = Health::Out { until: Instant::now() };
        // The due server is a candidate; take leases until it gets its trial.
        let mut leases = Vec::new();
        while !leases.iter().any(|l: &Lease| Arc::ptr_eq(l.server(), &s)) {
            leases.push(p.try_acquire(None, true).unwrap());
        }
        assert_eq!(s.state(), "trial");
        // While the trial runs, the server takes nothing else.
        for _ in 0..10 {
            let l = p.try_acquire(None, true).unwrap();
            assert!(!Arc::ptr_eq(l.server(), &s));
        }
        s.succeeded();
        assert_eq!(s.state(), "up");
    }

    #[test]
    fn a_reload_that_keeps_a_server_keeps_its_count() {
        let old = pool("t-reload", 2, Balance::LeastOutstanding, None);
        let held = old.try_acquire(None, true).unwrap();
        let url = held.server().url.clone();
        let new = Pool::new("t-reload", &[url.as_str(), "http://other:1/v1"], Balance::LeastOutstanding, None);
        let same = new.servers.iter().find(|s| s.url == url).unwrap();
        assert!(Arc::ptr_eq(same, held.server()));
        assert_eq!(same.outstanding(), 1);
    }

    #[test]
    fn a_retry_goes_back_to_the_server_that_failed_when_every_other_is_full() {
        let p = pool("t-avoid-full", 2, Balance::LeastOutstanding, Some(1));
        let busy = p.try_acquire(None, true).unwrap();
        let failed = p.servers.iter().find(|s| !Arc::ptr_eq(s, busy.server())).unwrap().clone();
        let l = p.try_acquire(Some(&failed), true).expect("the failed server is still up and free");
        assert!(Arc::ptr_eq(l.server(), &failed));
    }

    #[test]
    fn an_old_trial_ending_does_not_reset_a_newer_trial() {
        let p = pool("t-trial-ids", 1, Balance::LeastOutstanding, None);
        let s = p.servers[0].clone();
        *s.health() = Health::Out { until: Instant::now() };
        let first = p.try_acquire(None, true).unwrap();
        s.succeeded();
        for _ in 0..EJECT_AFTER {
            s.failed("reset");
        }
        *s.health() = Health::Out { until: Instant::now() };
        let _second = p.try_acquire(None, true).unwrap();
        assert_eq!(s.state(), "trial");
        drop(first);
        assert_eq!(s.state(), "trial", "the first trial's lease must not end the second trial");
    }

    #[test]
    fn least_outstanding_never_panics_while_counts_change_under_it() {
        let p = Arc::new(pool("t-race", 3, Balance::LeastOutstanding, None));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        drop(p.try_acquire(None, true).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(p.servers.iter().all(|s| s.outstanding() == 0));
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_a_finished_one_frees() {
        let p = Arc::new(pool("t-wait", 1, Balance::LeastOutstanding, Some(1)));
        let held = p.try_acquire(None, true).unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.acquire(None, Duration::from_secs(5)).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap());
        let busy = p.acquire(None, Duration::from_millis(30)).await;
        assert!(busy.is_ok(), "the waiter's lease ended with its task");
        let _hold = busy.unwrap();
        assert!(p.acquire(None, Duration::from_millis(30)).await.is_err());
    }
}
