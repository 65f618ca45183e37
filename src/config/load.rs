//! Reading and validating a config: all errors at once, each with its place
//! (`pipelines.main.stages[2] (retry): backoff: invalid duration "5x"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use harmony_filters::StageSpec;
use serde::de::DeserializeOwned;

use super::{any_model, env, Config, PipelineDef, RouteConfig, ServerConfig, UpstreamConfig, BUILTIN_PIPELINES, EMBEDDED_CONFIG};

/// Everything wrong with a config, one located message each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `--config`, else `$HARMONY_PROXY_CONFIG`, else `./proxy.toml` if it exists, else none
/// (the embedded copy).
pub fn resolve_path(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("HARMONY_PROXY_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("proxy.toml");
    local.exists().then_some(local)
}

/// Loads `path` (or the embedded default) with the process environment.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let (text, dir) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", p.display())]))?;
            let dir = p.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }).map(Path::to_owned);
            (text, dir)
        }
        None => (EMBEDDED_CONFIG.to_owned(), Some(PathBuf::from("."))),
    };
    let mut cfg = load_str(&text, dir.as_deref().map(|d| d.join("pipelines")).as_deref(), |k| std::env::var(k).ok())?;
    cfg.source = path.map(Path::to_owned);
    Ok(cfg)
}

fn de<T: DeserializeOwned>(v: toml::Value, place: &str, errors: &mut Vec<String>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            errors.push(located(place, path, e.into_inner().to_string()));
            None
        }
    }
}

/// `place: path: message`, tidied: for an unknown field the path ends at the field itself
/// (the message names it), and toml's "in `field`" repeats the path.
fn located(place: &str, mut path: String, msg: String) -> String {
    let last = path.rsplit('.').next().unwrap_or("").to_owned();
    if msg.starts_with(&format!("unknown field `{last}`")) {
        path = path.rsplit_once('.').map(|(p, _)| p.to_owned()).unwrap_or_default();
    }
    let msg = msg.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("in `")).collect::<Vec<_>>().join(" ");
    if path == "." || path == "?" || path.is_empty() {
        format!("{place}: {msg}")
    } else {
        format!("{place}: {path}: {msg}")
    }
}

/// Parses one pipeline's `stages` array, each stage on its own.
fn stages(v: toml::Value, place: &str, errors: &mut Vec<String>) -> Option<Vec<StageSpec>> {
    let toml::Value::Array(items) = v else {
        errors.push(format!("{place}: stages must be an array of stage tables"));
        return None;
    };
    let mut specs = Vec::new();
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let kind = item.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_owned();
        let at = format!("{place}.stages[{i}] ({kind})");
        if item.get("type").is_none() {
            errors.push(format!("{at}: missing `type`"));
            ok = false;
            continue;
        }
        match stage_spec(&kind, item, &at, errors) {
            Some(s) => specs.push(s),
            None => ok = false,
        }
    }
    if ok {
        let mut order = harmony_filters::validate(&specs);
        if !order.is_empty() {
            errors.extend(order.drain(..).map(|e| format!("{place}: {e}")));
            return None;
        }
    }
    ok.then_some(specs)
}

/// One stage table, read into its typed options (see `StageSpec::from_options`).
fn stage_spec(kind: &str, item: toml::Value, at: &str, errors: &mut Vec<String>) -> Option<StageSpec> {
    let toml::Value::Table(mut table) = item else {
        errors.push(format!("{at}: a stage must be a table like {{ type = \"harmony-parse\" }}"));
        return None;
    };
    table.remove("type");
    match StageSpec::from_options(kind, toml::Value::Table(table)) {
        Some(Ok(spec)) => Some(spec),
        Some(Err(e)) => {
            errors.push(located(at, e.path, e.message));
            None
        }
        None => {
            let known: Vec<String> = harmony_filters::pipeline::STAGE_TYPES.iter().map(|t| format!("`{t}`")).collect();
            errors.push(format!("{at}: unknown stage type `{kind}`, expected one of {}", known.join(", ")));
            None
        }
    }
}

/// A pipeline file or built-in: a table holding only `stages`.
fn pipeline_table(text: &str, place: &str, errors: &mut Vec<String>) -> Option<PipelineDef> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("{place}: {}", e.to_string().trim()));
            return None;
        }
    };
    pipeline_value(toml::Value::Table(table), place, errors)
}

fn pipeline_value(v: toml::Value, place: &str, errors: &mut Vec<String>) -> Option<PipelineDef> {
    let toml::Value::Table(mut t) = v else {
        errors.push(format!("{place}: a pipeline must be a table with `stages`"));
        return None;
    };
    let unknown: Vec<_> = t.keys().filter(|k| *k != "stages").cloned().collect();
    for k in unknown {
        errors.push(format!("{place}: unknown field `{k}`, expected `stages`"));
    }
    let Some(s) = t.remove("stages") else {
        errors.push(format!("{place}: missing field `stages`"));
        return None;
    };
    stages(s, place, errors).map(|stages| PipelineDef { stages })
}

/// Parses and validates config text. `pipelines_dir` holds `NAME.toml` pipeline files.
pub fn load_str(text: &str, pipelines_dir: Option<&Path>, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let text = env::interpolate(text, lookup).map_err(ConfigErrors)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigErrors(vec![e.to_string().trim().to_owned()]))?;
    let mut errors = Vec::new();

    let mut server = ServerConfig::default();
    let mut upstreams = BTreeMap::new();
    let mut routes = Vec::new();
    let mut inline = BTreeMap::new();
    for (key, value) in table {
        match key.as_str() {
            "server" => server = de(value, "server", &mut errors).unwrap_or_default(),
            "upstreams" => match value {
                toml::Value::Table(t) => {
                    for (name, v) in t {
                        if let Some(u) = de::<UpstreamConfig>(v, &format!("upstreams.{name}"), &mut errors) {
                            upstreams.insert(name, u);
                        }
                    }
                }
                _ => errors.push("upstreams: must be a table of named upstreams".into()),
            },
            "routes" => match value {
                toml::Value::Array(a) => {
                    for (i, v) in a.into_iter().enumerate() {
                        routes.push(de::<RouteConfig>(v, &format!("routes[{i}]"), &mut errors));
                    }
                }
                _ => errors.push("routes: must be an array of tables ([[routes]])".into()),
            },
            "pipelines" => match value {
                toml::Value::Table(t) => {
                    for (name, v) in t {
                        if let Some(p) = pipeline_value(v, &format!("pipelines.{name}"), &mut errors) {
                            inline.insert(name, p);
                        }
                    }
                }
                _ => errors.push("pipelines: must be a table of named pipelines".into()),
            },
            other => errors.push(format!("unknown top-level key `{other}`, expected one of `server`, `upstreams`, `routes`, `pipelines`")),
        }
    }

    // Pipelines: built-in, then files, then inline; a later source overrides an earlier one.
    let mut pipelines: BTreeMap<String, (PipelineDef, String)> = BTreeMap::new();
    for (name, text) in BUILTIN_PIPELINES {
        if let Some(p) = pipeline_table(text, &format!("built-in pipeline {name}"), &mut errors) {
            pipelines.insert((*name).to_owned(), (p, "built-in".into()));
        }
    }
    if let Some(dir) = pipelines_dir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
                let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
                let place = format!("pipelines/{name}.toml");
                match std::fs::read_to_string(&path) {
                    Ok(t) => {
                        if let Some(p) = pipeline_table(&t, &place, &mut errors) {
                            pipelines.insert(name, (p, place));
                        }
                    }
                    Err(e) => errors.push(format!("{place}: cannot read: {e}")),
                }
            }
        }
    }
    for (name, p) in inline {
        pipelines.insert(name.clone(), (p, format!("pipelines.{name}")));
    }

    // Server values that parse further.
    if server.listen.parse::<SocketAddr>().is_err() {
        errors.push(format!("server: listen: invalid address {:?} (expected host:port, e.g. 127.0.0.1:8001)", server.listen));
    }
    server.api_keys.retain(|k| !k.trim().is_empty());
    for (name, u) in &mut upstreams {
        match (&u.url, u.urls.is_empty()) {
            (Some(_), false) => errors.push(format!("upstreams.{name}: give either url or urls, not both")),
            (None, true) => errors.push(format!("upstreams.{name}: url: missing (url = \"http://host:port/v1\", or urls = [...] for a pool)")),
            _ => {}
        }
        let field = if u.url.is_some() { "url" } else { "urls" };
        let mut seen = Vec::new();
        for url in u.server_urls() {
            match url.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
                _ => errors
                    .push(format!("upstreams.{name}: {field}: invalid URL {:?} (expected http(s)://host:port/v1)", crate::upstream::pool::redact_url(url))),
            }
            let canonical = url.trim_end_matches('/');
            if seen.contains(&canonical) {
                errors.push(format!("upstreams.{name}: urls: {:?} is listed twice", crate::upstream::pool::redact_url(url)));
            }
            seen.push(canonical);
        }
        if u.max_outstanding == Some(0) {
            errors.push(format!("upstreams.{name}: max_outstanding: must be at least 1 (leave it out for no limit)"));
        }
        if u.health_interval.is_some_and(|d| d.0 < std::time::Duration::from_millis(100)) {
            errors.push(format!("upstreams.{name}: health_interval: at least 100ms"));
        }
        if u.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            u.api_key = None;
        }
    }
    if upstreams.is_empty() && !errors.iter().any(|e| e.starts_with("upstreams")) {
        errors.push("upstreams: at least one upstream is needed ([upstreams.default] url = \"http://…/v1\")".into());
    }

    // References between sections.
    let mut seen_routes: Vec<(String, Vec<String>)> = Vec::new();
    let routes: Vec<RouteConfig> = routes
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let r = r?;
            let at = format!("routes[{i}]");
            if !upstreams.contains_key(&r.upstream) && !errors.iter().any(|e| e.starts_with(&format!("upstreams.{}", r.upstream))) {
                errors.push(format!("{at}: upstream: unknown upstream `{}` (defined: {})", r.upstream, names(upstreams.keys())));
            }
            if !pipelines.contains_key(&r.pipeline) && !errors.iter().any(|e| e.starts_with(&format!("pipelines.{}", r.pipeline))) {
                errors.push(format!("{at}: pipeline: unknown pipeline `{}` (defined: {})", r.pipeline, names(pipelines.keys())));
            }
            if !r.path.starts_with('/') {
                errors.push(format!("{at}: path: must start with `/`"));
            }
            if let Some(e) = r.reasoning_effort.as_deref().filter(|e| !super::EFFORTS.contains(e)) {
                errors.push(format!("{at}: reasoning_effort: {e:?} is not low, medium or high"));
            }
            if r.upstream_model.as_deref().is_some_and(|m| m.trim().is_empty()) {
                errors.push(format!("{at}: upstream_model: must not be empty"));
            }
            for m in &r.models {
                if let Err(e) = globset::Glob::new(m) {
                    errors.push(format!("{at}: models: invalid glob {m:?}: {e}"));
                }
            }
            let key = (r.path.clone(), r.models.clone());
            if let Some(j) = seen_routes.iter().position(|k| *k == key) {
                errors.push(format!("{at}: duplicate route: same path and models as routes[{j}]"));
            }
            seen_routes.push(key);
            Some(r)
        })
        .collect();

    // Zero-config behaviour: no client API's path goes out unfiltered by accident. A config
    // with no route for an API's path gets that API's built-in pipeline there; raw
    // forwarding must be asked for with the `passthrough` pipeline.
    let mut routes = routes;
    let mut implied_routes = Vec::new();
    for api in harmony_filters::ClientApi::ALL {
        if !routes.iter().any(|r| r.path == api.path()) {
            let default = if upstreams.contains_key("default") { Some("default") } else { upstreams.keys().next().map(String::as_str) };
            if let Some(up) = default {
                implied_routes.push(routes.len());
                routes.push(RouteConfig {
                    path: api.path().into(),
                    models: any_model(),
                    upstream: up.to_owned(),
                    pipeline: api.builtin_pipeline().into(),
                    upstream_model: None,
                    reasoning_effort: None,
                });
            }
        }
    }

    if errors.is_empty() {
        Ok(Config { server, upstreams, routes, pipelines, source: None, implied_routes })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The `config` fuzz target: arbitrary text as proxy.toml. Loading never panics, gives the
/// same answer twice, and whatever loads is consistent: every route's upstream and pipeline
/// exist, and every pipeline passes the order rules.
pub fn fuzz_load(text: &str) {
    let first = load_str(text, None, |k| (k == "SET").then(|| "x".to_owned()));
    let second = load_str(text, None, |k| (k == "SET").then(|| "x".to_owned()));
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "loading is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a, b, "errors are not deterministic"),
        _ => panic!("loaded once and failed once"),
    }
    if let Ok(cfg) = first {
        assert!(!cfg.upstreams.is_empty());
        for r in &cfg.routes {
            assert!(cfg.upstreams.contains_key(&r.upstream), "route to a missing upstream");
            assert!(cfg.pipelines.contains_key(&r.pipeline), "route to a missing pipeline");
        }
        for (name, (p, _)) in &cfg.pipelines {
            assert!(harmony_filters::validate(&p.stages).is_empty(), "pipeline {name} loaded but is invalid");
        }
        assert!(cfg.server.listen.parse::<SocketAddr>().is_ok());
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<_> = it.map(|s| format!("`{s}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(t: &str) -> Result<Config, ConfigErrors> {
        load_str(t, None, |_| None)
    }

    const OK: &str = r#"
[upstreams.default]
url = "http://127.0.0.1:8080/v1"
[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "main"
[pipelines.main]
stages = [{ type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }]
"#;

    #[test]
    fn minimal_config_loads() {
        let c = load_text(OK).unwrap();
        assert_eq!(c.routes[0].models, ["*"]);
        assert!(c.pipelines.contains_key("ide-tools"), "built-ins are always there");
    }

    #[test]
    fn all_errors_with_places() {
        let bad = r#"
[server]
listen = "nowhere"
bogus = 1
[upstreams.default]
url = "ftp://x"
[[routes]]
path = "/v1/chat/completions"
upstream = "nope"
pipeline = "main"
[pipelines.main]
stages = [{ type = "harmony-parse", extra = 1 }, { type = "retry", backoff = "5x" }, { type = "nope" }]
"#;
        let e = load_text(bad).unwrap_err().0;
        let all = e.join("\n");
        assert!(all.contains("server: unknown field `bogus`"), "{all}");
        assert!(all.contains("upstreams.default: url: invalid URL"), "{all}");
        assert!(all.contains("routes[0]: upstream: unknown upstream `nope`"), "{all}");
        assert!(all.contains("pipelines.main.stages[0] (harmony-parse): unknown field `extra`"), "{all}");
        assert!(all.contains("pipelines.main.stages[1] (retry): backoff: invalid duration \"5x\""), "{all}");
        assert!(all.contains("pipelines.main.stages[2] (nope): unknown stage type `nope`"), "{all}");
    }

    /// The shipped proxy.toml maps every environment variable of the original Python proxy.
    #[test]
    fn every_python_proxy_variable_lands_where_it_should() {
        use harmony_filters::stages::tool_bridge::Mode;
        use std::time::Duration;
        let env = |k: &str| {
            Some(
                match k {
                    "UPSTREAM_BASE_URL" => "http://gpu-box:9000/v1",
                    "PROXY_MODE" => "openai_tool_calls",
                    "HARMONY_ENCODING_NAME" => "HarmonyGptOss",
                    "CONNECT_TIMEOUT" => "3",
                    "READ_TIMEOUT" => "45",
                    "NO_FINAL_TIMEOUT" => "30",
                    "MAX_RETRIES" => "5",
                    "RETRY_BACKOFF_SECONDS" => "0.25",
                    "HARMONY_STOPS_ENABLED" => "false",
                    "EXTRA_STOP_SEQUENCES" => "END, STOP",
                    "LOG_LEVEL" => "DEBUG",
                    "METRICS_ENABLED" => "0",
                    "PREPEND_MISSING_HARMONY_START" => "0",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let c = load_str(super::super::EMBEDDED_CONFIG, None, env).unwrap();
        let up = &c.upstreams["default"];
        assert_eq!(up.url.as_deref(), Some("http://gpu-box:9000/v1"));
        assert_eq!((up.connect_timeout.0, up.read_timeout.0), (Duration::from_secs(3), Duration::from_secs(45)));
        assert_eq!((c.server.log_level, c.server.metrics.0), (super::super::LogLevel::Debug, false));
        let stages = &c.pipelines["harmony"].0.stages;
        let mut seen = 0;
        for st in stages {
            match st {
                StageSpec::StopInjection(s) => {
                    assert!(!s.harmony_stops.0);
                    assert_eq!(s.extra.0, ["END", "STOP"]);
                    seen += 1;
                }
                StageSpec::Retry(r) => {
                    assert_eq!((r.max_retries, r.backoff.0), (5, Duration::from_millis(250)));
                    seen += 1;
                }
                StageSpec::HarmonyParse(h) => {
                    assert_eq!((h.prepend_missing_start.0, h.encoding.as_str()), (false, "HarmonyGptOss"));
                    seen += 1;
                }
                StageSpec::ToolBridge(t) => {
                    assert_eq!(t.mode, Mode::OpenaiToolCalls);
                    seen += 1;
                }
                StageSpec::Watchdog(w) => {
                    assert_eq!(w.no_final_timeout.0, Duration::from_secs(30));
                    seen += 1;
                }
                _ => {}
            }
        }
        assert_eq!(seen, 5);
    }

    /// Every committed seed of the `config` fuzz target (crashes included) stays a test.
    #[test]
    fn fuzz_corpus_loads_consistently() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            fuzz_load(&String::from_utf8_lossy(&bytes));
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn order_rules() {
        let t = OK.replace(
            r#"{ type = "harmony-parse" }, { type = "tool-bridge" }, { type = "sse-encode" }"#,
            r#"{ type = "sse-encode" }, { type = "tool-bridge" }, { type = "harmony-parse" }"#,
        );
        let e = load_text(&t).unwrap_err().0.join("\n");
        assert!(e.contains("pipelines.main: the last stage must be `sse-encode`"), "{e}");
        assert!(e.contains("pipelines.main: `tool-bridge` must come after `harmony-parse`"), "{e}");
        let t = OK.replace(r#"{ type = "tool-bridge" }, "#, "");
        let e = load_text(&t).unwrap_err().0.join("\n");
        assert!(e.contains("a pipeline needs a `tool-bridge`"), "{e}");
        // harmony-render asks for raw Harmony: someone must parse it.
        let t = OK.replace(r#"{ type = "harmony-parse" }, "#, r#"{ type = "harmony-render" }, "#);
        let e = load_text(&t).unwrap_err().0.join("\n");
        assert!(e.contains("`harmony-render` needs a `harmony-parse` after it"), "{e}");
        let t = OK.replace(r#"{ type = "harmony-parse" }, "#, r#"{ type = "harmony-parse" }, { type = "harmony-render" }, "#);
        assert!(load_text(&t).unwrap_err().0.join("\n").contains("needs a `harmony-parse` after it"));
    }
}
