//! Snapshots (insta): reviewing a diff in tests/snapshots/ is how a behaviour change is
//! approved. `cargo insta review` (or `INSTA_UPDATE=always cargo test`) records new ones.
//!
//! - the exact bytes a client receives for every fixture in each tool-bridge mode, streamed
//!   and not (ids and timestamps fixed or redacted);
//! - every shipped pipeline compiled (with defaults filled in);
//! - `check`'s errors on representative bad configs;
//! - the JSON Schema.

use std::path::PathBuf;

use harmony_filters::testing::run_sse;
use harmony_filters::{compile, RequestMeta};
use harmony_proxy::config::{self, BUILTIN_PIPELINES, EMBEDDED_CONFIG};

macro_rules! snapshots {
    ($($body:tt)*) => {
        insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false, omit_expression => true}, { $($body)* })
    };
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// `call_` ids are random: replace them.
fn redact_call_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\"call_") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 6..];
        let n = tail.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
        out.push_str("\"call_[id]");
        rest = &tail[n..];
    }
    out.push_str(rest);
    out
}

#[test]
fn client_bytes_for_every_fixture_in_every_mode() {
    let enc = harmony_filters::testing::encoding();
    let cfg = config::load_str(EMBEDDED_CONFIG, None, no_env).unwrap();
    let modes = ["harmony", "text-tools", "ide-tools"];
    for (name, body) in fixtures() {
        let mut doc = String::new();
        for pipeline in modes {
            let compiled = compile(&cfg.pipelines[pipeline].0.stages, &enc);
            for stream in [true, false] {
                let mut meta = RequestMeta::new("gpt-oss-20b", stream);
                meta.created = 1_700_000_000;
                let chat = harmony_filters::api::chat::Context { completion_id: "chatcmpl-snapshot".into(), include_usage: true };
                let req = harmony_filters::ClientRequest { meta, api: harmony_filters::api::ApiContext::Chat(std::sync::Arc::new(chat)) };
                let out = run_sse(&compiled, &req, &[&body]);
                doc.push_str(&format!("## {pipeline}, stream={stream}\n{}\n", redact_call_ids(&String::from_utf8_lossy(&out))));
            }
        }
        snapshots! { insta::assert_snapshot!(format!("fixture__{name}"), doc); }
    }
}

/// Every recorded upstream stream of tests/fixtures, by name, in name order.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()?.path().file_name()?.to_str()?.strip_suffix(".sse").map(str::to_owned)).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let body = std::fs::read(dir.join(format!("{name}.sse"))).unwrap();
            (name, body)
        })
        .collect()
}

/// The compiled pipeline the shipped config routes `path` to.
fn shipped_pipeline_for(path: &str) -> harmony_filters::Compiled {
    let enc = harmony_filters::testing::encoding();
    let cfg = config::load_str(EMBEDDED_CONFIG, None, no_env).unwrap();
    let route = cfg.routes.iter().find(|r| r.path == path).unwrap_or_else(|| panic!("the shipped config serves {path}"));
    compile(&cfg.pipelines[&route.pipeline].0.stages, &enc)
}

/// Every random id (`resp_`, `rs_`, `msg_`, `fc_`, `call_`, `toolu_`) and the time an
/// answer completed (`completed_at`) replaced.
fn redact_ids(s: &str) -> String {
    redact_times(&redact_random_ids(s))
}

fn redact_times(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\"completed_at\":") {
        let (head, tail) = rest.split_at(i + "\"completed_at\":".len());
        out.push_str(head);
        let n = tail.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(if n > 0 { "[time]" } else { "" });
        rest = &tail[n..];
    }
    out.push_str(rest);
    out
}

fn redact_random_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for prefix in ["\"resp_", "\"rs_", "\"msg_", "\"fc_", "\"call_", "\"toolu_"] {
            if let Some(tail) = rest.strip_prefix(prefix).filter(|t| !t.starts_with("id\"")) {
                let n = tail.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
                out.push_str(prefix);
                out.push_str("[id]");
                rest = &tail[n..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The Responses events (and object) a client receives for every fixture, through the
/// shipped config's `/v1/responses` pipeline (`agents`).
#[test]
fn responses_events_for_every_fixture() {
    let compiled = shipped_pipeline_for("/v1/responses");
    for (name, body) in fixtures() {
        let mut doc = String::new();
        for stream in [true, false] {
            let mut meta = harmony_filters::testing::responses_meta(stream);
            meta.model = "gpt-oss-20b".into();
            meta.created = 1_700_000_000;
            let out = run_sse(&compiled, &meta, &[&body]);
            if stream {
                harmony_filters::testing::assemble_responses(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            doc.push_str(&format!("## stream={stream}\n{}\n", redact_ids(&String::from_utf8_lossy(&out))));
        }
        snapshots! { insta::assert_snapshot!(format!("responses__{name}"), doc); }
    }
}

/// The Messages events (and message) a client receives for every fixture, through the
/// shipped config's `/v1/messages` pipeline (`agents`). Signatures are sealed with a fresh
/// nonce: redacted.
#[test]
fn messages_events_for_every_fixture() {
    let compiled = shipped_pipeline_for("/v1/messages");
    for (name, body) in fixtures() {
        let mut doc = String::new();
        for stream in [true, false] {
            let mut meta = harmony_filters::testing::messages_meta(stream);
            meta.model = "gpt-oss-20b".into();
            let out = run_sse(&compiled, &meta, &[&body]);
            if stream {
                harmony_filters::testing::assemble_messages(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let text = redact_ids(&String::from_utf8_lossy(&out));
            let mut clean = String::new();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("\"signature\":\"hp1.") {
                clean.push_str(&rest[..i]);
                let tail = &rest[i + 18..];
                let n = tail.find('"').unwrap_or(tail.len());
                clean.push_str("\"signature\":\"hp1.[sealed]");
                rest = &tail[n..];
            }
            clean.push_str(rest);
            doc.push_str(&format!("## stream={stream}\n{clean}\n"));
        }
        snapshots! { insta::assert_snapshot!(format!("messages__{name}"), doc); }
    }
}

#[test]
fn shipped_pipelines_compiled() {
    let enc = harmony_filters::testing::encoding();
    let cfg = config::load_str(EMBEDDED_CONFIG, None, no_env).unwrap();
    let mut names: Vec<&str> = BUILTIN_PIPELINES.iter().map(|(n, _)| *n).collect();
    names.sort();
    for name in names {
        let (def, source) = &cfg.pipelines[name];
        let compiled = compile(&def.stages, &enc);
        let view = serde_json::json!({
            "source": source,
            "mode": compiled.mode,
            "retry": {"max_retries": compiled.retry.max_retries, "backoff_ms": compiled.retry.backoff.as_millis() as u64, "max_backoff_ms": compiled.retry.max_backoff.as_millis() as u64},
            "stages": def.stages,
            "factories": compiled.factories.len(),
        });
        snapshots! { insta::assert_json_snapshot!(format!("pipeline__{name}"), view); }
    }
}

#[test]
fn check_on_bad_configs() {
    let cases = [
        ("unknown_keys_and_types", "[server]\nlisten = 8001\nverbose = true\n[upstreams.default]\nurl = \"http://127.0.0.1:8080/v1\"\nretries = 3\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"p\"\n[pipelines.p]\nstages = [{ type = \"harmony-parse\", strict = true }, { type = \"sse-encode\" }]\n"),
        ("bad_values", "[server]\nshutdown_grace = \"soon\"\nlog_level = \"loud\"\n[upstreams.default]\nurl = \"localhost:8080\"\n[[routes]]\npath = \"v1/chat\"\nmodels = [\"[\"]\nupstream = \"default\"\npipeline = \"p\"\n[pipelines.p]\nstages = [{ type = \"watchdog\", no_final_timeout = \"-1s\" }, { type = \"tool-bridge\", mode = \"tools\", reasoning = \"show\" }, { type = \"sse-encode\" }]\n"),
        ("broken_references", "[upstreams.a]\nurl = \"http://127.0.0.1:8080/v1\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"b\"\npipeline = \"missing\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"a\"\npipeline = \"p\"\n[[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"a\"\npipeline = \"p\"\n[pipelines.p]\nstages = [{ type = \"sse-encode\" }, { type = \"harmony-parse\" }, { type = \"sse-encode\" }]\n[pipelines.q]\nstages = [{ type = \"watchdog\" }, { type = \"fallback\" }, { type = \"tool-bridge\" }, { type = \"harmony-parse\" }, { type = \"sse-encode\" }]\n"),
        ("missing_variable", "[upstreams.default]\nurl = \"${NO_SUCH_UPSTREAM_URL}\"\napi_key = \"${NO_SUCH_KEY}\"\n"),
        ("toml_syntax", "[upstreams.default\nurl = 1\n"),
    ];
    for (name, text) in cases {
        let errors = config::load_str(text, None, no_env).expect_err(name).0;
        snapshots! { insta::assert_snapshot!(format!("check__{name}"), errors.join("\n")); }
    }
}

#[test]
fn json_schema() {
    let schema = schemars::schema_for!(config::ConfigFile);
    snapshots! { insta::assert_json_snapshot!("schema", schema); }
}
