//! # harmony-proxy
//!
//! A reverse proxy between OpenAI-compatible clients and gpt-oss model servers that turns
//! Harmony output into clean Chat Completions. The Harmony work lives in the
//! `harmony-filters` crate; this crate is the server around it:
//!
//! - [`config`]: the `proxy.toml` model, env interpolation, loading with located errors;
//! - [`pipeline`]: a config generation compiled and ready to serve ([`pipeline::Snapshot`]);
//! - [`server`]: the hyper server, routing and handlers;
//! - [`http_errors`]: hyper's own error answers (400, 414, 431) in the client API's shape;
//! - [`upstream`]: the HTTP client per upstream and the call with retries;
//! - [`body`]: the response body that drives the stages inline;
//! - [`request_body`]: request bodies under `max_body_bytes` and `body_read_timeout`;
//! - [`reload`]: file watching and SIGHUP → validated swap;
//! - [`metrics`]: Prometheus handles;
//! - [`mock_upstream`]: the simulated gpt-oss server for demo and tests.

pub mod bench;
pub mod body;
pub mod config;
pub mod doctor;
pub mod http_errors;
pub mod init;
pub mod metrics;
pub mod mock_upstream;
pub mod pipeline;
pub mod pool;
pub mod reload;
pub mod request_body;
pub mod server;
pub mod upstream;
pub mod upstream_conn;
