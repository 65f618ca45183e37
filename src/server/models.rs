//! `GET /v1/models`: what the routes serve, merged with the default upstream's own list.
//!
//! A client's model picker (Claude Code's, an IDE's) offers what this answers. The names a
//! route serves are its `models` that are names rather than globs (`claude-sonnet-4-5`, not
//! `claude-*`), listed after the upstream's own; a name listed twice is listed once. With
//! `anthropic-version` in the request (Anthropic's SDKs and Claude Code send it), the list is
//! in Anthropic's shape; else OpenAI's. An upstream that cannot answer leaves the routes'
//! names alone, still a 200: the picker works while the model server is down.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use super::{forward, json_response, RespBody};
use crate::pipeline::Snapshot;

/// The names routes serve that are names, not globs, in route order.
pub fn route_names(snap: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in &snap.config.routes {
        for m in &r.models {
            if !m.contains(['*', '?', '[', '{']) && !names.contains(m) {
                names.push(m.clone());
            }
        }
    }
    names
}

/// The ids of an OpenAI- or Anthropic-shaped model list (`data[].id`).
fn ids_of(list: &Value) -> Vec<String> {
    list.get("data").and_then(Value::as_array).map(|d| d.iter().filter_map(|m| m.get("id")?.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

pub async fn answer(snap: &Snapshot, mut req: Request<Incoming>, rid: String) -> Response<RespBody> {
    let anthropic = req.headers().contains_key("anthropic-version");
    // The list is read here, not passed on: plain, and within 5 s (else the routes' alone).
    req.headers_mut().remove(hyper::header::ACCEPT_ENCODING);
    let read = async {
        let upstream = forward(snap, req, &rid).await;
        if !upstream.status().is_success() {
            return None;
        }
        // At most 4 MiB of the upstream's list is read (a longer one is not a list of models).
        let mut body = upstream.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.ok()?.into_data() {
                bytes.extend_from_slice(&data);
            }
            if bytes.len() > 4 << 20 {
                return None;
            }
        }
        serde_json::from_slice::<Value>(&bytes).ok()
    };
    let upstream_list = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok().flatten();
    json_response(200, &merged(upstream_list, &route_names(snap), anthropic))
}

/// The upstream's list (if it answered one) with `names` added, in the shape asked for.
fn merged(upstream_list: Option<Value>, names: &[String], anthropic: bool) -> Value {
    let mut data: Vec<Value> = upstream_list.as_ref().and_then(|l| l.get("data")).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut seen = upstream_list.as_ref().map(ids_of).unwrap_or_default();
    for name in names {
        if !seen.contains(name) {
            data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": "harmony-proxy"}));
            seen.push(name.clone());
        }
    }
    if anthropic {
        let data: Vec<Value> = data
            .into_iter()
            .filter_map(|m| {
                let id = m.get("id")?.as_str()?.to_owned();
                let created_at = m.get("created_at").filter(|c| c.is_string()).cloned().unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
                let display_name = m.get("display_name").filter(|c| c.is_string()).cloned().unwrap_or_else(|| id.clone().into());
                Some(json!({"type": "model", "id": id, "display_name": display_name, "created_at": created_at}))
            })
            .collect();
        let (first, last) = (data.first().map(|m| m["id"].clone()), data.last().map(|m| m["id"].clone()));
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
    } else {
        let mut list = upstream_list.filter(Value::is_object).unwrap_or_else(|| json!({"object": "list"}));
        list["data"] = Value::Array(data);
        list
    }
}
