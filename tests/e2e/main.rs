//! End-to-end tests: the real `harmony-proxy` binary and its built-in mock upstream on
//! ephemeral loopback ports; assertions on what a client receives.

mod common;
mod config;
mod controls;
mod core;
mod harness;
mod hostile;
mod messages;
mod native;
mod operations;
mod operator;
mod pools;
mod real_llama;
mod real_servers;
mod redis;
mod resilience;
mod responses;
mod snapshots;
mod tools;
