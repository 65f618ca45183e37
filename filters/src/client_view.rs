//! An answer read as a client reads it, with the client contract of each API checked on
//! the way: `doctor` checks what a server's output becomes through each API, tests assert
//! on it, and `replay` shows it. Every function returns what a client keeps ([`Assembled`])
//! or says which rule of the contract the bytes break.

/// What a client assembles from a response, after checking the client contract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembled {
    pub content: String,
    pub reasoning: String,
    /// (id, name, arguments) in index order.
    pub tool_calls: Vec<(String, String, String)>,
    pub finish: String,
    pub usage: Option<String>,
    pub error: Option<String>,
}

fn no_markup(what: &str, s: &str) -> Result<(), String> {
    if crate::markup::has_markup(s) {
        return Err(format!("markup in {what}: {s:?}"));
    }
    Ok(())
}

/// Parses an SSE response and checks DESIGN.md §3: role chunk first, one id/created, content
/// and tool_calls never in one chunk, tool calls announced with id+type+name before arguments,
/// exactly one finish chunk (or one error event), usage after finish, exactly one final
/// `[DONE]`, no markup anywhere.
pub fn assemble_sse(body: &[u8]) -> Result<Assembled, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    if !text.ends_with("data: [DONE]\n\n") {
        return Err(format!("does not end with one [DONE]: …{:?}", &text[text.len().saturating_sub(80)..]));
    }
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let mut a = Assembled::default();
    let mut id: Option<String> = None;
    let mut created: Option<u64> = None;
    let mut seen_role = false;
    let mut finishes = 0;
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let data = ev.strip_prefix("data: ").ok_or_else(|| format!("event without data: {ev:?}"))?;
        if data == "[DONE]" {
            if i != events.len() - 1 {
                return Err("[DONE] before the end".into());
            }
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).map_err(|e| format!("invalid JSON {data:?}: {e}"))?;
        if let Some(err) = v.get("error") {
            let msg = err.get("message").and_then(|m| m.as_str()).ok_or("error without message")?;
            a.error = Some(msg.to_owned());
            continue;
        }
        if a.error.is_some() {
            return Err("chunk after an error event".into());
        }
        let this_id = v["id"].as_str().ok_or("chunk without id")?.to_owned();
        if *id.get_or_insert_with(|| this_id.clone()) != this_id {
            return Err("id changed within the response".into());
        }
        let this_created = v["created"].as_u64().ok_or("chunk without created")?;
        if *created.get_or_insert(this_created) != this_created {
            return Err("created changed within the response".into());
        }
        if v["object"] != "chat.completion.chunk" {
            return Err(format!("object is {}", v["object"]));
        }
        let choices = v["choices"].as_array().ok_or("no choices array")?;
        if choices.is_empty() {
            if finishes != 1 {
                return Err("usage chunk before the finish chunk".into());
            }
            a.usage = Some(v["usage"].to_string());
            continue;
        }
        let c = &choices[0];
        let d = &c["delta"];
        if !seen_role {
            if d["role"] != "assistant" {
                return Err(format!("first chunk is not the role chunk: {data}"));
            }
            seen_role = true;
        } else if d.get("role").is_some() {
            return Err("role sent twice".into());
        }
        if finishes > 0 {
            return Err("chunk after the finish chunk".into());
        }
        let has_content = d.get("content").and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty());
        if has_content && d.get("tool_calls").is_some() {
            return Err("content and tool_calls in one chunk".into());
        }
        if let Some(t) = d.get("content").and_then(|c| c.as_str()) {
            no_markup("content", t)?;
            a.content.push_str(t);
        }
        for f in ["reasoning_content", "reasoning"] {
            if let Some(t) = d.get(f).and_then(|c| c.as_str()) {
                no_markup(f, t)?;
                a.reasoning.push_str(t);
            }
        }
        if let Some(tcs) = d.get("tool_calls").and_then(|t| t.as_array()) {
            for tc in tcs {
                let idx = tc["index"].as_u64().ok_or("tool call without index")? as usize;
                if idx == calls.len() {
                    let id = tc["id"].as_str().filter(|s| s.starts_with("call_")).ok_or("new tool call without call_ id")?;
                    if tc["type"] != "function" {
                        return Err("new tool call without type function".into());
                    }
                    let name = tc["function"]["name"].as_str().filter(|n| !n.is_empty()).ok_or("new tool call without name")?;
                    no_markup("tool name", name)?;
                    if name.starts_with("functions.") {
                        return Err(format!("tool name keeps its prefix: {name}"));
                    }
                    calls.push((id.to_owned(), name.to_owned(), String::new()));
                } else if idx > calls.len() {
                    return Err(format!("tool call index {idx} skips ahead"));
                } else if tc.get("id").is_some() || tc["function"].get("name").is_some() {
                    return Err("id/name repeated on a later delta".into());
                }
                if let Some(args) = tc["function"]["arguments"].as_str() {
                    calls[idx].2.push_str(args);
                }
            }
        }
        if let Some(f) = c["finish_reason"].as_str() {
            finishes += 1;
            a.finish = f.to_owned();
        }
    }
    if a.error.is_none() && finishes != 1 {
        return Err(format!("{finishes} finish chunks"));
    }
    if !seen_role && a.error.is_none() {
        return Err("no role chunk".into());
    }
    let ids: std::collections::HashSet<_> = calls.iter().map(|c| c.0.clone()).collect();
    if ids.len() != calls.len() {
        return Err("tool call ids are not unique".into());
    }
    a.tool_calls = calls;
    Ok(a)
}

/// Parses a non-streamed `chat.completion` (or error) and checks its shape.
pub fn assemble_json(body: &[u8]) -> Result<Assembled, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut a = Assembled::default();
    if let Some(e) = v.get("error") {
        a.error = Some(e["message"].as_str().ok_or("error without message")?.to_owned());
        return Ok(a);
    }
    if v["object"] != "chat.completion" {
        return Err(format!("object is {}", v["object"]));
    }
    let c = &v["choices"][0];
    let m = &c["message"];
    if m["role"] != "assistant" {
        return Err("message without role assistant".into());
    }
    a.content = m["content"].as_str().unwrap_or("").to_owned();
    no_markup("content", &a.content)?;
    for f in ["reasoning_content", "reasoning"] {
        if let Some(t) = m.get(f).and_then(|c| c.as_str()) {
            no_markup(f, t)?;
            a.reasoning.push_str(t);
        }
    }
    for tc in m.get("tool_calls").and_then(|t| t.as_array()).into_iter().flatten() {
        let name = tc["function"]["name"].as_str().ok_or("tool call without name")?;
        no_markup("tool name", name)?;
        a.tool_calls.push((
            tc["id"].as_str().filter(|s| s.starts_with("call_")).ok_or("tool call without call_ id")?.to_owned(),
            name.to_owned(),
            tc["function"]["arguments"].as_str().ok_or("tool call without arguments")?.to_owned(),
        ));
    }
    // Beside tool_calls, content is null or a preamble the pipeline shows (never "").
    if !a.tool_calls.is_empty() && m["content"].as_str() == Some("") {
        return Err("empty content beside tool_calls (null expected)".into());
    }
    a.finish = c["finish_reason"].as_str().ok_or("no finish_reason")?.to_owned();
    a.usage = v.get("usage").map(|u| u.to_string());
    Ok(a)
}

/// Parses a Responses SSE stream and checks its contract: every event's `event:` name is
/// its `type`; `sequence_number` counts from 0; `response.created` then
/// `response.in_progress` first; every item added once at the next `output_index` and done
/// once before the next is added, its deltas only while it is open and with its id; exactly
/// one terminal event (`response.completed` / `incomplete` / `failed`), last, whose `output`
/// equals the items done in order; no markup anywhere. Returns what a client keeps:
/// `finish` is the response's status, `tool_calls` are (call_id, name, arguments).
pub fn assemble_responses(body: &[u8]) -> Result<Assembled, String> {
    use serde_json::Value;
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut done_items: Vec<Value> = Vec::new();
    let mut open: Option<(String, usize)> = None; // (item id, output index)
    let mut terminal: Option<Value> = None;
    let mut n = 0u64;
    let mut deltas = String::new();
    for ev in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        if ev.starts_with(':') {
            continue;
        }
        let (name, data) = ev.split_once('\n').ok_or_else(|| format!("event without data: {ev:?}"))?;
        let name = name.strip_prefix("event: ").ok_or_else(|| format!("no event: line: {ev:?}"))?;
        let data = data.strip_prefix("data: ").ok_or_else(|| format!("no data: line: {ev:?}"))?;
        let v: Value = serde_json::from_str(data).map_err(|e| format!("data is not JSON ({e}): {data}"))?;
        let ty = v["type"].as_str().ok_or("event without type")?;
        if ty != name {
            return Err(format!("event: {name} carries type {ty}"));
        }
        if terminal.is_some() {
            return Err(format!("{ty} after the terminal event"));
        }
        if v["sequence_number"].as_u64() != Some(n) {
            return Err(format!("{ty}: sequence_number {} where {n} was due", v["sequence_number"]));
        }
        match (n, ty) {
            (0, "response.created") | (1, "response.in_progress") => {}
            (0 | 1, _) => return Err(format!("event {n} is {ty}")),
            _ => {}
        }
        n += 1;
        let idx = v["output_index"].as_u64().map(|i| i as usize);
        match ty {
            "response.output_item.added" => {
                if let Some((id, _)) = &open {
                    return Err(format!("item added while {id} is open"));
                }
                if idx != Some(done_items.len()) {
                    return Err(format!("item added at output_index {idx:?}, {} due", done_items.len()));
                }
                let id = v["item"]["id"].as_str().ok_or("added item without id")?.to_owned();
                open = Some((id, done_items.len()));
            }
            "response.output_item.done" => {
                let Some((id, at)) = open.take() else { return Err("item done while none is open".into()) };
                if v["item"]["id"].as_str() != Some(id.as_str()) || idx != Some(at) {
                    return Err(format!("item done does not match the open one ({id} at {at}): {v}"));
                }
                done_items.push(v["item"].clone());
            }
            "response.in_progress" | "response.created" => {}
            "response.completed" | "response.incomplete" | "response.failed" => terminal = Some(v["response"].clone()),
            t if t.ends_with(".delta") || t.ends_with(".done") || t.starts_with("response.content_part.") => {
                let Some((id, at)) = &open else { return Err(format!("{t} with no item open")) };
                if v["item_id"].as_str() != Some(id.as_str()) || idx != Some(*at) {
                    return Err(format!("{t} for another item than the open {id}: {v}"));
                }
                if let Some(d) = v["delta"].as_str() {
                    deltas.push_str(d);
                }
            }
            other => return Err(format!("unknown event {other}")),
        }
    }
    let r = terminal.ok_or("no terminal event")?;
    if open.is_some() {
        return Err("an item was never done".into());
    }
    if r["output"].as_array() != Some(&done_items) {
        return Err(format!("terminal output differs from the items streamed:\n{}\n{}", r["output"], Value::Array(done_items)));
    }
    let _ = deltas;
    response_view(&r)
}

/// What a client keeps from a Response object (also the non-streamed body).
pub fn response_view(r: &serde_json::Value) -> Result<Assembled, String> {
    use serde_json::Value;
    let mut a = Assembled { finish: r["status"].as_str().unwrap_or("").to_owned(), ..Assembled::default() };
    if r["object"] != "response" || !r["id"].as_str().is_some_and(|i| i.starts_with("resp_")) {
        return Err(format!("not a response object: {r}"));
    }
    for item in r["output"].as_array().ok_or("no output")? {
        match item["type"].as_str() {
            Some("reasoning") => {
                for c in item["content"].as_array().into_iter().flatten() {
                    a.reasoning.push_str(c["text"].as_str().unwrap_or(""));
                }
            }
            Some("message") => {
                for c in item["content"].as_array().into_iter().flatten() {
                    a.content.push_str(c["text"].as_str().unwrap_or(""));
                }
            }
            Some("function_call") => {
                let id = item["call_id"].as_str().unwrap_or("").to_owned();
                if !id.starts_with("call_") {
                    return Err(format!("call id {id:?}"));
                }
                a.tool_calls.push((id, item["name"].as_str().unwrap_or("").to_owned(), item["arguments"].as_str().unwrap_or("").to_owned()));
            }
            Some("custom_tool_call") => {
                a.tool_calls.push((
                    item["call_id"].as_str().unwrap_or("").to_owned(),
                    item["name"].as_str().unwrap_or("").to_owned(),
                    item["input"].as_str().unwrap_or("").to_owned(),
                ));
            }
            other => return Err(format!("unknown output item {other:?}")),
        }
    }
    no_markup("content", &a.content)?;
    no_markup("reasoning", &a.reasoning)?;
    for (_, name, _) in &a.tool_calls {
        no_markup("tool name", name)?;
    }
    if r["status"] == "failed" {
        a.error = Some(r["error"]["message"].as_str().unwrap_or("").to_owned());
    } else {
        let u = &r["usage"];
        for f in ["/input_tokens", "/output_tokens", "/total_tokens", "/input_tokens_details/cached_tokens", "/output_tokens_details/reasoning_tokens"] {
            if u.pointer(f).and_then(Value::as_u64).is_none() {
                return Err(format!("usage{f} is not an integer: {u}"));
            }
        }
        a.usage = Some(u.to_string());
    }
    Ok(a)
}

/// Parses a Messages SSE stream and checks its contract: every event's `event:` name is its
/// `type`; `message_start` first (pings may come anywhere after it); content blocks started
/// at the next index, one open at a time, their deltas of the block's kind and index, each
/// stopped once; a thinking block's `signature_delta` before its stop; then exactly one
/// `message_delta` with a `stop_reason` and `message_stop` last, or an `error` event last;
/// tool-use `partial_json` joins to its input; no markup anywhere. Returns what a client
/// keeps: `finish` is the `stop_reason` (or `error`), `tool_calls` are (id, name, input JSON).
pub fn assemble_messages(body: &[u8]) -> Result<Assembled, String> {
    use serde_json::Value;
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut a = Assembled::default();
    let mut started = false;
    let mut open: Option<(usize, String)> = None;
    let mut next = 0usize;
    let mut stop_reason: Option<String> = None;
    let mut ended = false;
    let mut signed = false;
    for ev in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let (name, data) = ev.split_once('\n').ok_or_else(|| format!("event without data: {ev:?}"))?;
        let name = name.strip_prefix("event: ").ok_or_else(|| format!("no event: line: {ev:?}"))?;
        let data = data.strip_prefix("data: ").ok_or_else(|| format!("no data: line: {ev:?}"))?;
        let v: Value = serde_json::from_str(data).map_err(|e| format!("data is not JSON ({e}): {data}"))?;
        if v["type"].as_str() != Some(name) {
            return Err(format!("event: {name} carries type {}", v["type"]));
        }
        if ended {
            return Err(format!("{name} after the end"));
        }
        match name {
            "error" => {
                a.error = Some(v["error"]["message"].as_str().unwrap_or("").to_owned());
                a.finish = "error".into();
                ended = true;
            }
            "message_start" if !started => {
                started = true;
                if !v["message"]["id"].as_str().is_some_and(|i| i.starts_with("msg_")) {
                    return Err(format!("message id: {v}"));
                }
            }
            _ if !started => return Err(format!("{name} before message_start")),
            "ping" => {}
            "content_block_start" => {
                if open.is_some() {
                    return Err("a block started while another is open".into());
                }
                if v["index"].as_u64() != Some(next as u64) {
                    return Err(format!("block started at {} where {next} was due", v["index"]));
                }
                let cb = &v["content_block"];
                let kind = cb["type"].as_str().unwrap_or("").to_owned();
                if kind == "tool_use" {
                    let id = cb["id"].as_str().unwrap_or("");
                    if !id.starts_with("toolu_") {
                        return Err(format!("tool_use id {id:?}"));
                    }
                    no_markup("tool name", cb["name"].as_str().unwrap_or(""))?;
                    a.tool_calls.push((id.to_owned(), cb["name"].as_str().unwrap_or("").to_owned(), String::new()));
                }
                signed = false;
                open = Some((next, kind));
            }
            "content_block_delta" => {
                let Some((i, kind)) = &open else { return Err("delta with no block open".into()) };
                if v["index"].as_u64() != Some(*i as u64) {
                    return Err("delta for another block".into());
                }
                let d = &v["delta"];
                match (kind.as_str(), d["type"].as_str().unwrap_or("")) {
                    ("thinking", "thinking_delta") => a.reasoning.push_str(d["thinking"].as_str().unwrap_or("")),
                    ("thinking", "signature_delta") => signed = true,
                    ("text", "text_delta") => a.content.push_str(d["text"].as_str().unwrap_or("")),
                    ("tool_use", "input_json_delta") => {
                        if let Some(c) = a.tool_calls.last_mut() {
                            c.2.push_str(d["partial_json"].as_str().unwrap_or(""));
                        }
                    }
                    (k, t) => return Err(format!("a {t} in a {k} block")),
                }
            }
            "content_block_stop" => {
                let Some((i, kind)) = open.take() else { return Err("stop with no block open".into()) };
                if v["index"].as_u64() != Some(i as u64) {
                    return Err("stop for another block".into());
                }
                if kind == "thinking" && !signed {
                    return Err("a thinking block stopped without its signature".into());
                }
                next += 1;
            }
            "message_delta" => {
                if open.is_some() || stop_reason.is_some() {
                    return Err("message_delta while a block is open, or twice".into());
                }
                stop_reason = Some(v["delta"]["stop_reason"].as_str().ok_or("message_delta without stop_reason")?.to_owned());
                a.usage = Some(v["usage"].to_string());
            }
            "message_stop" => {
                a.finish = stop_reason.clone().ok_or("message_stop without message_delta")?;
                ended = true;
            }
            other => return Err(format!("unknown event {other}")),
        }
    }
    if !ended {
        return Err("no message_stop and no error event".into());
    }
    // A block with no input_json_delta has the input it started with: `{}`.
    for (_, _, input) in &mut a.tool_calls {
        if input.is_empty() {
            *input = "{}".into();
        }
    }
    for (_, name, input) in &a.tool_calls {
        if a.finish != "max_tokens" && a.error.is_none() && serde_json::from_str::<Value>(input).is_err() {
            return Err(format!("{name}: the partial_json pieces do not join to JSON: {input:?}"));
        }
    }
    no_markup("text", &a.content)?;
    no_markup("thinking", &a.reasoning)?;
    Ok(a)
}

/// What a client keeps from a non-streamed `message` (or its error).
pub fn message_view(v: &serde_json::Value) -> Result<Assembled, String> {
    use serde_json::Value;
    if v["type"] == "error" {
        return Ok(Assembled { error: Some(v["error"]["message"].as_str().unwrap_or("").to_owned()), finish: "error".into(), ..Assembled::default() });
    }
    if v["type"] != "message" {
        return Err(format!("not a message: {v}"));
    }
    let mut a = Assembled { finish: v["stop_reason"].as_str().unwrap_or("").to_owned(), usage: Some(v["usage"].to_string()), ..Assembled::default() };
    for b in v["content"].as_array().ok_or("no content")? {
        match b["type"].as_str() {
            Some("thinking") => a.reasoning.push_str(b["thinking"].as_str().unwrap_or("")),
            Some("text") => a.content.push_str(b["text"].as_str().unwrap_or("")),
            Some("tool_use") => {
                a.tool_calls.push((b["id"].as_str().unwrap_or("").to_owned(), b["name"].as_str().unwrap_or("").to_owned(), b["input"].to_string()))
            }
            other => return Err(format!("unknown block {other:?}")),
        }
    }
    let _ = Value::Null;
    no_markup("text", &a.content)?;
    no_markup("thinking", &a.reasoning)?;
    Ok(a)
}
