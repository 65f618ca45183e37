//! Every recorded upstream stream in tests/fixtures, through every shipped pipeline,
//! streamed and not: the client contract holds and the client assembles the expected answer.

use std::path::PathBuf;

use harmony_filters::testing::{assemble_json, assemble_sse, check_fixture, run_sse, Assembled};
use harmony_filters::{compile, Compiled, RequestMeta, StageSpec};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shipped(name: &str) -> Compiled {
    #[derive(serde::Deserialize)]
    struct P {
        stages: Vec<StageSpec>,
    }
    let text = std::fs::read_to_string(root().join("pipelines").join(format!("{name}.toml"))).unwrap();
    let p: P = toml::from_str(&text).unwrap();
    compile(&p.stages, &harmony_filters::testing::encoding())
}

pub fn fixtures() -> Vec<(String, Vec<u8>, Value)> {
    let dir = root().join("tests/fixtures");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, exp) in expected.as_object().unwrap() {
        let body = std::fs::read(dir.join(format!("{name}.sse"))).unwrap();
        out.push((name.clone(), body, exp.clone()));
    }
    out
}

fn run(p: &Compiled, body: &[u8], stream: bool) -> Assembled {
    let meta = RequestMeta::new("gpt-oss-20b", stream);
    let out = run_sse(p, &meta, &[body]);
    let r = if stream { assemble_sse(&out) } else { assemble_json(&out) };
    r.unwrap_or_else(|e| panic!("contract broken: {e}\n{}", String::from_utf8_lossy(&out)))
}

#[test]
fn every_fixture_in_every_mode() {
    let pipelines = [("final_only", shipped("harmony")), ("final_plus_tools_text", shipped("text-tools")), ("openai_tool_calls", shipped("ide-tools"))];
    let mut failures = Vec::new();
    for (name, body, exp) in fixtures() {
        for stream in [true, false] {
            for (mode, p) in &pipelines {
                if let Err(e) = check_fixture(mode, stream, &exp, &run(p, &body, stream)) {
                    failures.push(format!("{name} {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
