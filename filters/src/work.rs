//! Where the request phase's work runs. The phase is async: what waits (a store read, Redis
//! included) is awaited on the runtime's workers, which meanwhile drive other streams; what
//! computes on what a client sent (decoding, history repair, rendering a long prompt) runs on
//! the runtime's blocking threads through a [`CpuPool`], so that no request's size stalls a
//! worker either.
//!
//! ```text
//! server ─► CpuPool::new(permits)          one per server: at most one CPU job per core
//!        ─► .holding(slot)                 per request: a job keeps the request's slot
//! edge / request phase ─► pool.run(f).await  f on a blocking thread, its result back here
//! ```
//! Tests, tools and fuzz targets use [`CpuPool::inline`]: `run` calls `f` where it is, so a
//! phase over memory stores never waits and [`now`] gives its result without a runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// A future the request phase awaits: boxed, as the stages and stores that make them are
/// trait objects (a few per request, never per token).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs CPU work off the runtime's workers (see the module header).
#[derive(Clone)]
pub struct CpuPool {
    /// `None`: inline (tests, tools).
    permits: Option<Arc<tokio::sync::Semaphore>>,
    /// What each job holds until it ends (the server's request slot).
    hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl CpuPool {
    /// On the runtime's blocking threads, at most as many jobs at once as `permits` has.
    pub fn new(permits: Arc<tokio::sync::Semaphore>) -> Self {
        Self { permits: Some(permits), hold: None }
    }

    /// Runs each job where it is called (tests, tools, fuzz targets: no runtime needed).
    pub fn inline() -> Self {
        Self { permits: None, hold: None }
    }

    /// The same pool, each job holding `hold` until it ends: a job runs to its end even when
    /// its client has left, and meanwhile it counts as that client's request.
    pub fn holding(&self, hold: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        Self { permits: self.permits.clone(), hold: Some(hold) }
    }

    /// `f`'s result, `f` run on a blocking thread once a permit is free (inline: here). A
    /// panic in `f` is the caller's, as if it had run here.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let Some(permits) = &self.permits else { return f() };
        let permit = permits.clone().acquire_owned().await.ok();
        let hold = self.hold.clone();
        let job = move || {
            let (_permit, _hold) = (permit, hold);
            f()
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: nothing is left to answer.
            Err(e) => panic!("a CPU job was cancelled: {e}"),
        }
    }
}

/// The output of a future that is ready at once: a request phase over an inline pool and
/// memory stores, as tests, tools and fuzz targets run it.
///
/// Panics if `f` would wait (a Redis store, a pool of threads): await it instead.
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("work::now on a future that waits: await it on a runtime"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_pool_runs_the_job_where_it_is_called() {
        let here = std::thread::current().id();
        assert!(now(CpuPool::inline().run(move || std::thread::current().id() == here)));
    }

    #[test]
    fn a_pool_runs_jobs_off_the_worker_and_holds_what_it_is_given_until_the_job_ends() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let pool = CpuPool::new(Arc::new(tokio::sync::Semaphore::new(1)));
        let slot: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
        let held = pool.holding(slot.clone());
        let (awaited_on, (ran_on, count)) = rt.block_on(async move {
            let here = std::thread::current().id();
            (here, held.run(move || (std::thread::current().id(), Arc::strong_count(&slot))).await)
        });
        assert_ne!(awaited_on, ran_on, "the job ran on a thread of its own");
        assert_eq!(count, 3, "the job held the slot (the test's, the pool's, the job's)");
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_panic_in_a_job_is_the_callers() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let pool = CpuPool::new(Arc::new(tokio::sync::Semaphore::new(1)));
        rt.block_on(pool.run(|| panic!("boom")));
    }
}
