//! # harmony-proxy
//!
//! A reverse proxy between OpenAI-compatible clients and gpt-oss model servers that turns
//! Harmony output into clean Chat Completions. The Harmony work lives in the
//! `harmony-filters` crate; this crate is the server around it:
//!
//! - [`config`]: the `proxy.toml` model, env interpolation, loading with located errors;
//! - [`pipeline`]: a config generation compiled and ready to serve ([`pipeline::Snapshot`]);
//! - [`server`]: the hyper server, routing and handlers; in it, [`server::body`] (the
//!   response body that drives the stages inline), [`server::request_body`] (bodies under
//!   `max_body_bytes` and `body_read_timeout`), [`server::http_errors`] (hyper's own error
//!   answers in the client API's shape), [`server::reload`] (file watching and SIGHUP →
//!   validated swap);
//! - [`upstream`]: the call with retries; [`upstream::pool`] (servers of an upstream, health,
//!   `max_outstanding`), [`upstream::conn`] (one call's connection, polled by the body);
//! - [`metrics`]: Prometheus handles;
//! - [`tools`]: the operator's commands besides `serve`: `bench`, `doctor`, `init`;
//! - [`mock`]: the simulated gpt-oss server for demo and tests (server, scripts, turns,
//!   answers).

pub mod config;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod server;
pub mod tools;
pub mod upstream;
