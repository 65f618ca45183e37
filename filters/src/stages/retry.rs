//! `retry`: the policy for the upstream call. It has no per-event work: the server consults
//! it while nothing has reached the client (before the response starts, and mid-stream while
//! the client has seen no byte of the answer).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::Dur;

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The first wait; each further wait doubles, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
    /// The longest single wait (also caps `Retry-After`).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
}

fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_max_backoff() -> Dur {
    Dur(Duration::from_secs(30))
}

pub use crate::stage::RetryPolicy;

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self { max_retries: c.max_retries, backoff: c.backoff.0, max_backoff: c.max_backoff.0 }
    }
}

/// Statuses worth another try.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is rare from model servers and ignored).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

impl crate::stage::StageConfig for RetryConfig {
    fn place() -> crate::stage::config::Place {
        crate::stage::config::Place::ONCE
    }
    /// Retry is the upstream call's policy, not a stage of the chain.
    fn build(&self, b: &mut crate::stage::Builder<'_>) {
        b.retry = RetryPolicy::from(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_jittered_and_capped() {
        let p = RetryPolicy { max_retries: 5, backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(350) };
        for _ in 0..50 {
            let d0 = p.delay(0, None);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
            assert!(p.delay(9, None) <= Duration::from_millis(350));
        }
        assert_eq!(p.delay(0, Some(Duration::from_secs(9))), Duration::from_millis(350));
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
