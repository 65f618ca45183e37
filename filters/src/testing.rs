//! Helpers shared by unit tests, property tests and fuzz targets (the `testing` feature; the
//! crate's own tests and the workspace's dev-dependencies turn it on). What production code
//! needs of them lives in [`crate::client_view`] and [`crate::replay`], re-exported here.

pub use crate::client_view::*;

use openai_harmony::HarmonyEncoding;

use crate::event::{Channel, Event};
use crate::pipeline::{compile, Compiled, StageSpec};
use crate::stage::{RequestMeta, Stage};
use crate::stages::harmony_parse::HarmonyParseFactory;

/// The encoding, loaded once per process from the default cache dir.
pub fn encoding() -> HarmonyEncoding {
    crate::vocab::encoding().expect("the vocabulary loads offline")
}

/// Runs text deltas through a harmony-parse stage; events rendered as `kind:text`.
pub fn parse_chunks(f: &HarmonyParseFactory, chunks: &[&str]) -> Vec<String> {
    let mut stage = f.stage();
    let mut out = Vec::new();
    for c in chunks {
        stage.on_event(Event::Upstream((*c).to_owned()), &mut out);
    }
    stage.on_end(&mut out);
    out.into_iter().map(render).collect()
}

/// One event, compactly (`final:text`, `tool:name`, `args:…`, `end`).
pub fn event_string(e: &Event) -> String {
    render(e.clone())
}

fn render(e: Event) -> String {
    match e {
        Event::Text(Channel::Final, t) => format!("final:{t}"),
        Event::Text(Channel::Analysis, t) => format!("analysis:{t}"),
        Event::Text(Channel::Preamble, t) => format!("preamble:{t}"),
        Event::ToolCallStart { name, .. } => format!("tool:{name}"),
        Event::ToolCallArgs(a) => format!("args:{a}"),
        Event::ToolCallEnd => "end".into(),
        Event::Unparsed(u) => format!("unparsed:{u}"),
        other => format!("{other:?}"),
    }
}

/// Builds a pipeline from TOML stage tables (`[{ type = "…" }, …]` as an inline array).
pub fn pipeline(stages_toml: &str) -> Compiled {
    #[derive(serde::Deserialize)]
    struct P {
        stages: Vec<StageSpec>,
    }
    let p: P = toml::from_str(&format!("stages = {stages_toml}")).expect("valid stages");
    compile(&p.stages, &encoding())
}

/// Runs a whole upstream SSE body (cut into `parts`) through a pipeline, for a chat client
/// (a [`RequestMeta`]) or another API's (a [`crate::api::ClientRequest`]); returns the client's bytes.
pub fn run_sse<R: Into<crate::api::ClientRequest> + Clone>(p: &Compiled, req: &R, parts: &[&[u8]]) -> Vec<u8> {
    crate::replay::run(p, &req.clone().into(), parts)
}

/// An upstream SSE body in llama.cpp's framing: one chunk per content delta, a finish chunk,
/// and `[DONE]`.
pub fn llama_sse(deltas: &[&str], finish: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for d in deltas {
        let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]});
        body.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    let fin = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]});
    body.extend_from_slice(format!("data: {fin}\n\ndata: [DONE]\n\n").as_bytes());
    body
}

/// Checks an assembled answer against a fixture expectation (`tests/fixtures/expected.json`)
/// for a tool-bridge `mode` of the shipped pipelines.
pub fn check_fixture(mode: &str, stream: bool, exp: &serde_json::Value, a: &Assembled) -> Result<(), String> {
    let s = |k: &str| exp[k].as_str().unwrap_or("").to_owned();
    // [name, arguments as an openai_tool_calls client gets them, arguments as text (optional)]
    let tools: Vec<(String, String)> =
        exp["tools"].as_array().into_iter().flatten().map(|t| (t[0].as_str().unwrap_or("").to_owned(), t[1].as_str().unwrap_or("").to_owned())).collect();
    let text_tools: Vec<(String, String)> = exp["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t[0].as_str().unwrap_or("").to_owned(), t.get(2).unwrap_or(&t[1]).as_str().unwrap_or("").to_owned()))
        .collect();
    let (final_text, finish) = (s("final"), s("finish"));
    let got_tools: Vec<(String, String)> = a.tool_calls.iter().map(|(_, n, args)| (n.clone(), args.clone())).collect();
    let ok = match mode {
        "final_only" => a.content == final_text && a.tool_calls.is_empty() && a.reasoning.is_empty() && a.finish == finish,
        "final_plus_tools_text" => {
            let rendered: String = text_tools.iter().map(|(n, args)| format!("\n[tool:{n}] {args}\n")).collect();
            a.content == format!("{rendered}{final_text}") && a.tool_calls.is_empty() && a.finish == finish
        }
        "openai_tool_calls" => {
            // A call without arguments is closed with `{}` for agents that need arguments.
            let tools: Vec<(String, String)> = tools.into_iter().map(|(n, a)| (n, if a.is_empty() { "{}".into() } else { a })).collect();
            let finish = if !tools.is_empty() && finish != "length" { "tool_calls".to_owned() } else { finish };
            // Streamed or not, the preamble is content (these fixtures run with
            // `preambles = "content"`); non-streamed it stands beside the calls.
            let _ = stream;
            let content_ok = a.content == format!("{}{final_text}", s("preamble"));
            content_ok && got_tools == tools && a.reasoning == s("reasoning") && a.finish == finish
        }
        other => return Err(format!("unknown mode {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("[{mode}, stream={stream}] expected {exp}, got {a:?}"))
    }
}

/// A request meta for the Responses API (`stream` or not), as the server makes it.
pub fn responses_meta(stream: bool) -> crate::api::ClientRequest {
    let env = crate::api::EdgeEnv::standalone();
    let decoding = crate::api::ClientApi::Responses.decode(serde_json::json!({"model": "m", "input": "x", "stream": stream, "store": false}), &env);
    let d = crate::work::now(decoding).expect("a minimal request decodes");
    crate::api::ClientRequest { meta: RequestMeta::new("m", stream), api: d.ctx }
}

/// A request meta for the Messages API (`stream` or not), as the server makes it.
pub fn messages_meta(stream: bool) -> crate::api::ClientRequest {
    let env = crate::api::EdgeEnv::standalone();
    let request = serde_json::json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}], "stream": stream});
    let d = crate::work::now(crate::api::ClientApi::Messages.decode(request, &env)).expect("a minimal request decodes");
    crate::api::ClientRequest { meta: RequestMeta::new("m", stream), api: d.ctx }
}
