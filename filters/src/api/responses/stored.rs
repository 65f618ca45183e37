//! `GET` / `DELETE /v1/responses/{id}`: a stored response (kept with `store`, the default),
//! within the client's key scope.

use serde_json::{json, Value};

use super::Stored;
use crate::api::EdgeEnv;
use crate::event::ApiError;

/// The stored response `id` (`GET`), or forgets it (`DELETE`): the store read awaited, the
/// stored response parsed on `env.cpu`.
pub async fn answer(method: &str, id: &str, env: &EdgeEnv) -> Result<Value, ApiError> {
    let stored = match env.store.get(&env.scope, id).await {
        Some(v) => env.cpu.run(move || serde_json::from_str::<Stored>(&v).ok()).await,
        None => None,
    };
    let Some(stored) = stored else {
        return Err(ApiError::new(
            404,
            "invalid_request_error",
            Some("not_found"),
            format!("no stored response {id:?} (unknown, expired, deleted, or stored with another key)"),
        ));
    };
    match method {
        "GET" => Ok(stored.response),
        "DELETE" => {
            env.store.delete(&env.scope, id);
            Ok(json!({"id": id, "object": "response.deleted", "deleted": true}))
        }
        _ => Err(ApiError::new(405, "invalid_request_error", Some("method_not_allowed"), "use GET or DELETE")),
    }
}
