//! Every recorded upstream stream in tests/fixtures, through every shipped pipeline,
//! streamed and not: the client contract holds and the client assembles the expected answer.

use std::path::PathBuf;

use harmony_filters::testing::{assemble_json, assemble_sse, run_sse, Assembled};
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

fn tools(exp: &Value) -> Vec<(String, String)> {
    exp["tools"].as_array().unwrap().iter().map(|t| (t[0].as_str().unwrap().to_owned(), t[1].as_str().unwrap().to_owned())).collect()
}

fn run(p: &Compiled, body: &[u8], stream: bool) -> Assembled {
    let meta = RequestMeta::new("gpt-oss-20b", stream, true);
    let out = run_sse(p, &meta, &[body]);
    let r = if stream { assemble_sse(&out) } else { assemble_json(&out) };
    r.unwrap_or_else(|e| panic!("contract broken: {e}\n{}", String::from_utf8_lossy(&out)))
}

#[test]
fn every_fixture_in_every_mode() {
    let harmony = shipped("harmony");
    let text = shipped("text-tools");
    let ide = shipped("ide-tools");
    let mut failures = Vec::new();
    for (name, body, exp) in fixtures() {
        let final_text = exp["final"].as_str().unwrap();
        let tools = tools(&exp);
        let finish = exp["finish"].as_str().unwrap();
        for stream in [true, false] {
            let mut check = |mode: &str, ok: bool, got: &Assembled| {
                if !ok {
                    failures.push(format!("{name} [{mode}, stream={stream}]: {got:?}"));
                }
            };
            let a = run(&harmony, &body, stream);
            check("final_only", a.content == final_text && a.tool_calls.is_empty() && a.reasoning.is_empty() && a.finish == finish, &a);

            let a = run(&text, &body, stream);
            let rendered: String = tools.iter().map(|(n, args)| format!("\n[tool:{n}] {args}\n")).collect();
            check("final_plus_tools_text", a.content == format!("{rendered}{final_text}") && a.tool_calls.is_empty() && a.finish == finish, &a);

            let a = run(&ide, &body, stream);
            let got_tools: Vec<(String, String)> = a.tool_calls.iter().map(|(_, n, args)| (n.clone(), args.clone())).collect();
            let ide_finish = if !tools.is_empty() && finish != "length" { "tool_calls" } else { finish };
            // Non-streamed, content is null beside tool_calls.
            let content_ok = if !stream && !tools.is_empty() {
                a.content.is_empty()
            } else {
                a.content == format!("{}{}", exp["preamble"].as_str().unwrap(), final_text)
            };
            check(
                "openai_tool_calls",
                content_ok && got_tools == tools && a.reasoning == exp["reasoning"].as_str().unwrap() && a.finish == ide_finish,
                &a,
            );
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
