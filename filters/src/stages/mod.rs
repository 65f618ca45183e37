//! One file per stage. Request-phase: `stop-injection`, `history-clean`, `harmony-render`; upstream call:
//! `retry`; response-phase: `harmony-parse`, `fallback`, `tool-bridge`, `watchdog`, `sse-encode`.

pub mod fallback;
pub mod harmony_parse;
pub mod harmony_render;
pub mod history_clean;
pub mod reasoning_memory;
pub mod retry;
pub mod sse_encode;
pub mod stop_injection;
pub mod tool_bridge;
pub mod watchdog;
