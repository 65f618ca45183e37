//! Helpers shared by unit tests, property tests, fuzz targets and `replay`.

use openai_harmony::HarmonyEncoding;

use crate::event::{Channel, Event};
use crate::pipeline::{compile, Compiled, StageSpec};
use crate::stage::{RequestMeta, Stage};
use crate::stages::harmony_parse::HarmonyParseFactory;
use crate::upstream::SseDecoder;

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

fn render(e: Event) -> String {
    match e {
        Event::Text(Channel::Final, t) => format!("final:{t}"),
        Event::Text(Channel::Analysis, t) => format!("analysis:{t}"),
        Event::Text(Channel::Preamble, t) => format!("preamble:{t}"),
        Event::ToolCallStart { name } => format!("tool:{name}"),
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

/// Runs a whole upstream SSE body (cut into `parts`) through a pipeline; returns the client's bytes.
pub fn run_sse(p: &Compiled, meta: &RequestMeta, parts: &[&[u8]]) -> Vec<u8> {
    let mut chain = p.new_chain(meta);
    let mut dec = SseDecoder::new();
    let mut evs = Vec::new();
    let mut out = Vec::new();
    let mut wire = Vec::new();
    let collect = |out: &mut Vec<Event>, wire: &mut Vec<u8>| {
        for e in out.drain(..) {
            if let Event::Wire(b) = e {
                wire.extend_from_slice(&b);
            }
        }
    };
    for part in parts {
        dec.push(part, &mut evs);
        chain.push_all(&mut evs, &mut out);
        collect(&mut out, &mut wire);
    }
    dec.finish(&mut evs);
    chain.push_all(&mut evs, &mut out);
    chain.end(&mut out);
    collect(&mut out, &mut wire);
    wire
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
