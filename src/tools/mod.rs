//! The operator's commands besides `serve`: `bench` (the per-token cost, measured),
//! `doctor` (what an upstream is and which pipeline fits it), `init` (a config, and each
//! agent's own, for a server).

pub mod bench;
pub mod doctor;
pub mod init;
