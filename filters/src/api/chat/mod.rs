//! OpenAI Chat Completions: `decode` reads the request into the conversation (everything
//! the proxy does not model kept as sent), `encode` renders the events.

pub mod decode;
pub mod encode;
pub mod types;

pub use decode::decode;
