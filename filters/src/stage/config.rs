//! What a stage's config builds into a pipeline: its factory, or (retry) the call's policy.
//! Implemented in each stage's own file; [`crate::pipeline`] lists the stages.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use openai_harmony::HarmonyEncoding;

use super::{RequestStageFactory, StageFactory};
use crate::store::{StateStore, Stores};

/// What a stage's config says about itself. Implemented in each stage's file.
pub trait StageConfig {
    /// Problems with the options, each without its location (the caller adds it).
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
    /// Adds what this stage contributes to the pipeline being compiled: usually a factory,
    /// for `retry` the call's policy.
    fn build(&self, b: &mut Builder<'_>);
    /// Where in a pipeline it may stand ([`crate::pipeline::validate`] checks every stage's).
    fn place() -> Place
    where
        Self: Sized,
    {
        Place::ANYWHERE
    }
}

/// Where a stage may stand in a pipeline: said by its config, checked for every pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// At most once in a pipeline.
    pub once: bool,
    /// It must be the pipeline's last stage.
    pub last: bool,
    /// It must be in every pipeline; the message says why.
    pub required: Option<&'static str>,
    /// Order rules, each with the message a pipeline breaking it gets.
    pub rules: &'static [Order],
}

impl Place {
    /// Any number of times, anywhere.
    pub const ANYWHERE: Place = Place { once: false, last: false, required: None, rules: &[] };
    /// Once, anywhere.
    pub const ONCE: Place = Place { once: true, ..Place::ANYWHERE };
}

/// One order rule: the stages that must come before this one and after it.
#[derive(Debug, Clone, Copy)]
pub struct Order {
    pub after: &'static [Other],
    pub before: &'static [Other],
    pub message: &'static str,
}

/// Another stage an order rule names, by its `type`.
#[derive(Debug, Clone, Copy)]
pub enum Other {
    /// It must be there, on that side.
    Required(&'static str),
    /// When it is there, it is on that side.
    IfPresent(&'static str),
}

impl Order {
    /// Whether a stage at `at` keeps the rule, `pos` giving where each other stage stands.
    pub fn holds(&self, at: usize, pos: impl Fn(&str) -> Option<usize>) -> bool {
        let side = |others: &[Other], ok: &dyn Fn(usize) -> bool| {
            others.iter().all(|o| match *o {
                Other::Required(k) => pos(k).is_some_and(ok),
                Other::IfPresent(k) => pos(k).is_none_or(ok),
            })
        };
        side(self.after, &|p| p < at) && side(self.before, &|p| p > at)
    }
}

/// A pipeline being compiled (see [`StageConfig::build`]).
pub struct Builder<'a> {
    pub enc: &'a HarmonyEncoding,
    /// Where stages that keep state between requests get their store.
    pub stores: &'a Stores,
    /// The response stages' factories, in pipeline order.
    pub factories: Vec<Arc<dyn StageFactory>>,
    /// The request stages' factories, in pipeline order.
    pub request_factories: Vec<Arc<dyn RequestStageFactory>>,
    pub retry: RetryPolicy,
    /// The tool-bridge mode (the `mode` metric label).
    pub mode: Option<&'static str>,
    /// The `reasoning-memory` store (see [`Compiled::store`]).
    pub store: Option<Arc<dyn StateStore>>,
    /// What stages of one pipeline share, one of each type (see [`Builder::shared`]).
    shared: Vec<Arc<dyn Any + Send + Sync>>,
}

impl<'a> Builder<'a> {
    pub fn new(enc: &'a HarmonyEncoding, stores: &'a Stores) -> Self {
        Self { enc, stores, factories: Vec::new(), request_factories: Vec::new(), retry: RetryPolicy::NONE, mode: None, store: None, shared: Vec::new() }
    }
    /// Adds a response stage.
    pub fn push(&mut self, f: impl StageFactory) {
        self.factories.push(Arc::new(f));
    }
    /// Adds a request stage.
    pub fn push_request(&mut self, f: impl RequestStageFactory) {
        self.request_factories.push(Arc::new(f));
    }
    /// The pipeline's one `T`, made by `make` the first time a stage asks (a parser every
    /// request stage that reads Harmony in history shares).
    pub fn shared<T: Any + Send + Sync>(&mut self, make: impl FnOnce(&HarmonyEncoding) -> T) -> Arc<T> {
        if let Some(t) = self.shared.iter().find_map(|s| s.clone().downcast::<T>().ok()) {
            return t;
        }
        let t = Arc::new(make(self.enc));
        self.shared.push(t.clone());
        t
    }
}

/// How the upstream call is retried (the `retry` stage's options; none without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy { max_retries: 0, backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// The wait before retry number `retry` (0-based): `backoff · 2^retry`, jittered to
    /// 50–100 % and capped; the upstream's `Retry-After` wins when it gave one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_backoff);
        }
        let base = self.backoff.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        base.min(self.max_backoff).mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}
