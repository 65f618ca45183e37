//! `POST /v1/messages/count_tokens`: the exact length of the Harmony prompt the request
//! renders to (the official renderer's structure, as `harmony-render` sends it).

use openai_harmony::HarmonyEncoding;
use serde_json::{json, Value};

use crate::api::EdgeEnv;
use crate::event::ApiError;

/// `{"input_tokens": N}` for a Messages request (`max_tokens` not needed).
pub fn answer(mut body: Value, env: &EdgeEnv, enc: &HarmonyEncoding) -> Result<Value, ApiError> {
    // count_tokens takes no max_tokens; the decoder wants one.
    if body.get("max_tokens").is_none() {
        body["max_tokens"] = Value::from(1);
    }
    let decoded = super::decode::decode(body, env)?;
    let n = crate::stages::harmony_render::prompt_tokens(enc, &decoded.conversation)?;
    Ok(json!({"input_tokens": n}))
}
