//! Prometheus metrics. Handles are registered once at start-up; the per-request path only
//! touches handles (labelled series are looked up once per request, never per chunk).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub struct Metrics {
    pub final_chunks: Counter,
    pub tool_chunks: Counter,
    pub parser_fallback: Counter,
    pub parser_errors: Counter,
    pub upstream_retries: Counter,
    pub watchdog_aborts: Counter,
    pub active_streams: Gauge,
    pub ttft: Histogram,
    pub duration: Histogram,
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
    let builder = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets).ok()?;
    builder.install_recorder().ok()
}

impl Metrics {
    pub fn new() -> Self {
        describe_counter!("harmony_proxy_requests_total", "Requests served through a pipeline");
        describe_counter!("harmony_proxy_final_chunks_total", "Answer chunks sent to clients");
        describe_counter!("harmony_proxy_tool_chunks_total", "Tool-call chunks sent to clients");
        describe_counter!("harmony_proxy_parser_fallback_total", "Answers recovered by the fallback stage");
        describe_counter!("harmony_proxy_parser_errors_total", "Messages the Harmony parser rejected");
        describe_counter!("harmony_proxy_upstream_retries_total", "Upstream calls retried");
        describe_counter!("harmony_proxy_upstream_errors_total", "Upstream failures by kind");
        describe_counter!("harmony_proxy_watchdog_aborts_total", "Responses ended by the watchdog");
        describe_gauge!("harmony_proxy_active_streams", "Responses in flight");
        describe_histogram!("harmony_proxy_time_to_first_token_seconds", "Time to the first client-visible output");
        describe_histogram!("harmony_proxy_request_duration_seconds", "Whole request duration");
        describe_counter!("harmony_proxy_config_reloads_total", "Config reloads by result");
        describe_counter!("harmony_proxy_upstream_requests_total", "Requests sent to each server of an upstream's pool");
        describe_gauge!("harmony_proxy_upstream_outstanding", "Requests in flight on each server of an upstream's pool");
        describe_gauge!("harmony_proxy_upstream_healthy", "1 while a server takes requests, 0 while it sits out after failures");
        describe_counter!(
            "harmony_proxy_reasoning_store_errors_total",
            "Reasoning-memory store calls that failed or timed out (the request went on without it)"
        );
        Self {
            final_chunks: counter!("harmony_proxy_final_chunks_total"),
            tool_chunks: counter!("harmony_proxy_tool_chunks_total"),
            parser_fallback: counter!("harmony_proxy_parser_fallback_total"),
            parser_errors: counter!("harmony_proxy_parser_errors_total"),
            upstream_retries: counter!("harmony_proxy_upstream_retries_total"),
            watchdog_aborts: counter!("harmony_proxy_watchdog_aborts_total"),
            active_streams: gauge!("harmony_proxy_active_streams"),
            ttft: histogram!("harmony_proxy_time_to_first_token_seconds"),
            duration: histogram!("harmony_proxy_request_duration_seconds"),
        }
    }

    pub fn request(&self, route: &str, mode: &'static str, stream: bool, api: &'static str) {
        counter!("harmony_proxy_requests_total", "route" => route.to_owned(), "mode" => mode, "stream" => if stream { "true" } else { "false" }, "api" => api)
            .increment(1);
    }

    pub fn upstream_error(&self, kind: &'static str) {
        counter!("harmony_proxy_upstream_errors_total", "kind" => kind).increment(1);
    }

    pub fn config_reload(&self, ok: bool) {
        counter!("harmony_proxy_config_reloads_total", "result" => if ok { "ok" } else { "error" }).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
