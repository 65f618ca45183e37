//! The `harmony-proxy` command line: `serve` (default), `check`, `schema`, `replay`,
//! `mock-upstream`, `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Args, Parser, Subcommand};
use harmony_proxy::config::{self, Config, LogFormat};
use harmony_proxy::metrics::{self, Metrics};
use harmony_proxy::mock::{self as mock_upstream, MockState};
use harmony_proxy::pipeline::Snapshot;
use harmony_proxy::server::reload;
use harmony_proxy::server::{self, AppState};

#[derive(Parser)]
#[command(name = "harmony-proxy", version, about = "Turns gpt-oss Harmony output into clean OpenAI Chat Completions")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Read environment variables from this file (default: ./.env if it exists); variables
    /// already in the environment win.
    #[arg(long, global = true, value_name = "FILE")]
    env_file: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Config file (else $HARMONY_PROXY_CONFIG, else ./proxy.toml, else the embedded default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the host of server.listen.
    #[arg(long)]
    host: Option<String>,
    /// Overrides the port of server.listen (0: any free port).
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Serve(ServeArgs),
    /// Validate a config: exit 0 when valid, 1 with every error otherwise.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of proxy.toml.
    Schema,
    /// Run a recorded upstream SSE stream through a pipeline; print what the client gets.
    Replay {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The pipeline (default: the first route's).
        #[arg(long)]
        pipeline: Option<String>,
        /// Render as a non-streamed JSON answer instead of SSE.
        #[arg(long)]
        json: bool,
    },
    /// Write a commented proxy.toml for an upstream and a kind of client.
    Init {
        /// The model server's base URL, e.g. http://127.0.0.1:8080/v1.
        #[arg(long)]
        upstream: String,
        /// The client that will talk to the proxy.
        #[arg(long = "for", value_enum)]
        client: harmony_proxy::tools::init::ClientKind,
        /// Where to write it (`-`: standard output).
        #[arg(long, default_value = "proxy.toml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check a running upstream: reachable, models, a one-token chat, and whether it already
    /// parses Harmony (which decides the pipeline).
    Doctor {
        /// The upstream's base URL (default: the config's default upstream).
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The model to ask (default: the first one the upstream lists).
        #[arg(long)]
        model: Option<String>,
    },
    /// Run the built-in simulated gpt-oss server (llama.cpp framing).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Parse Harmony as llama-server does by default (reasoning_content, content,
        /// tool_calls) instead of sending raw Harmony in content.
        #[arg(long)]
        parsed: bool,
        /// Serve HTTPS with this PEM certificate (and --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Close a connection that waits this long for its next request (as servers with a
        /// keep-alive timeout do).
        #[arg(long, value_name = "MS")]
        idle_close_ms: Option<u64>,
        /// The context size `GET /props` says (as llama-server's `-c`; default 131072).
        #[arg(long, value_name = "TOKENS")]
        n_ctx: Option<u64>,
        /// Answer only to this model name, as vLLM serves one (any other: 404).
        #[arg(long, value_name = "NAME")]
        served_model: Option<String>,
    },
    /// What the proxy costs: streams through it and straight to the built-in mock, side by
    /// side (CPU per token, added latency, memory per stream, concurrent streams, start-up).
    Bench {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// A quick run that proves it works (CI); the figures are rough.
        #[arg(long)]
        short: bool,
        /// Bulk run: streams at once.
        #[arg(long)]
        streams: Option<usize>,
        /// Bulk run: answer tokens per stream.
        #[arg(long)]
        tokens: Option<usize>,
        /// Paced run: streams, and the pace between tokens.
        #[arg(long)]
        paced_streams: Option<usize>,
        /// Paced run: answer tokens per stream.
        #[arg(long)]
        paced_tokens: Option<usize>,
        #[arg(long)]
        pace_ms: Option<u64>,
        /// Streams held open to measure memory per stream.
        #[arg(long)]
        memory_streams: Option<usize>,
        /// Streams open at once through a proxy started with a soft file limit of 1024.
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Mock upstream and proxy together, to see it work without a GPU.
    Demo {
        #[arg(long, default_value_t = 8001)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: this writes the process environment.
    let (env_file, required) = match &cli.env_file {
        Some(f) => (f.clone(), true),
        None => (PathBuf::from(".env"), false),
    };
    if let Err(e) = config::dotenv::apply(&env_file, required) {
        return fail(format!("env file: {e}"));
    }
    // `harmony-proxy --port 1 check` would silently ignore --port: say so instead.
    if cli.cmd.is_some() && (cli.serve.config.is_some() || cli.serve.host.is_some() || cli.serve.port.is_some()) {
        return fail("--config, --host and --port go after the subcommand (e.g. `harmony-proxy serve --port 8001`)");
    }
    match cli.cmd.unwrap_or(Cmd::Serve(cli.serve)) {
        Cmd::Serve(a) => {
            let path = config::resolve_path(a.config.as_deref());
            serve(a, path, None)
        }
        Cmd::Check { config } => check(config.as_deref()),
        Cmd::Schema => {
            let schema = schemars::schema_for!(config::ConfigFile);
            println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Cmd::Replay { file, config, pipeline, json } => replay(&file, config.as_deref(), pipeline.as_deref(), json),
        Cmd::Init { upstream, client, output, force } => init(&upstream, client, &output, force),
        Cmd::Doctor { upstream, config, model } => doctor(upstream.as_deref(), config.as_deref(), model.as_deref()),
        Cmd::MockUpstream { host, port, parsed, tls_cert, tls_key, idle_close_ms, n_ctx, served_model } => {
            let tls = tls_cert.as_deref().zip(tls_key.as_deref());
            mock(&host, port, parsed, tls, idle_close_ms.map(std::time::Duration::from_millis), n_ctx, served_model)
        }
        Cmd::Bench { json, short, streams, tokens, paced_streams, paced_tokens, pace_ms, memory_streams, concurrency } => {
            let mut o = if short { harmony_proxy::tools::bench::Options::short() } else { harmony_proxy::tools::bench::Options::full() };
            o.streams = streams.unwrap_or(o.streams).max(1);
            o.tokens = tokens.unwrap_or(o.tokens).max(1);
            o.paced_streams = paced_streams.unwrap_or(o.paced_streams).max(1);
            o.paced_tokens = paced_tokens.unwrap_or(o.paced_tokens).max(1);
            o.pace_ms = pace_ms.unwrap_or(o.pace_ms).max(1);
            o.memory_streams = memory_streams.unwrap_or(o.memory_streams).max(1);
            o.concurrency = concurrency.unwrap_or(o.concurrency).max(1);
            match harmony_proxy::tools::bench::run(&o) {
                Ok(r) if json => {
                    println!("{r}");
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    print!("{}", harmony_proxy::tools::bench::text(&r));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("bench: {e}")),
            }
        }
        Cmd::Demo { port } => demo(port),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("harmony-proxy: {msg}");
    ExitCode::FAILURE
}

/// Loads the vocabulary before any thread exists (it sets TIKTOKEN_ENCODINGS_BASE).
fn encoding() -> Result<openai_harmony::HarmonyEncoding, ExitCode> {
    harmony_filters::vocab::encoding().map_err(|e| fail(format!("cannot load the Harmony vocabulary: {e}")))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    // The request phase's computing (decoding, prompt rendering) runs on the blocking threads
    // (AppState::cpu, one job per core at once): 64 threads at most, so a burst of requests
    // queues there instead of starting hundreds of threads; the workers drive streams and
    // await store reads meanwhile.
    tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(64).build().map_err(|e| fail(format!("cannot start the runtime: {e}")))
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        let at = path.map(|p| p.display().to_string()).unwrap_or_else(|| "embedded proxy.toml".into());
        eprintln!("harmony-proxy: invalid config ({at}):");
        for line in &e.0 {
            eprintln!("  {line}");
        }
        ExitCode::FAILURE
    })
}

fn check(path: Option<&Path>) -> ExitCode {
    let path = config::resolve_path(path);
    let enc = match encoding() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let cfg = match load(path.as_deref()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let (routes, pipelines) = (cfg.routes.len(), cfg.pipelines.len());
    let warnings = cfg.warnings();
    match Snapshot::build(cfg, &enc, 0, Default::default()) {
        Ok(snap) => {
            let at = path.map(|p| p.display().to_string()).unwrap_or_else(|| "embedded proxy.toml".into());
            println!("{at}: ok ({routes} routes, {pipelines} pipelines)");
            for w in warnings {
                println!("warning: {w}");
            }
            // Where state between requests is kept, with the limits in force: one line per
            // store, naming the routes that share it.
            let mut stores: Vec<(String, Vec<&str>)> = Vec::new();
            for r in snap.routes.iter().filter(|r| r.pipeline.store.is_some() || harmony_filters::ClientApi::for_path(&r.path).keeps_state()) {
                let what = snap.store_of(Some(r)).describe();
                match stores.iter_mut().find(|(w, _)| *w == what) {
                    Some((_, routes)) => routes.push(&r.label),
                    None => stores.push((what, vec![&r.label])),
                }
            }
            for (what, routes) in stores {
                println!("state: {} keep reasoning and stored responses in {what}", routes.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("harmony-proxy: invalid config:");
            for line in &e.0 {
                eprintln!("  {line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &Config) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("harmony_proxy={0},harmony_filters={0},warn", cfg.server.log_level.as_str())));
    // Colour only for a person at a terminal: never in a file, a pipe or with NO_COLOR.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match cfg.server.log_format {
        LogFormat::Json => {
            // A panic's message would be a plain line in a JSON log: log it as an event.
            std::panic::set_hook(Box::new(|info| {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %msg, at = %at, "panic");
            }));
            builder.json().flatten_event(true).try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
}

/// The line that says where the proxy listens, on stdout (scripts and tests wait for it). In
/// JSON log mode it is a JSON object like every other line the process writes.
fn banner(format: LogFormat, url: &str) {
    match format {
        LogFormat::Text => println!("harmony-proxy listening on {url}"),
        LogFormat::Json => {
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let line = serde_json::json!({"timestamp": ts, "level": "INFO", "message": format!("harmony-proxy listening on {url}"), "url": url, "target": "harmony_proxy"});
            println!("{line}");
        }
    }
}

/// Runs the proxy; with `mock`, a built-in mock upstream runs beside it (demo).
fn serve(args: ServeArgs, path: Option<PathBuf>, mock: Option<(std::net::TcpListener, String)>) -> ExitCode {
    let cfg = match load(path.as_deref()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    init_logging(&cfg);
    let log_format = cfg.server.log_format;
    if let Some((before, after)) = server::raise_fd_limit() {
        tracing::info!(soft_limit_before = before, soft_limit = after, "open file limit");
    }
    let enc = match encoding() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(async move {
        let prometheus = metrics::install();
        let metrics = Arc::new(Metrics::new());
        let mut addr: SocketAddr = match cfg.server.listen.parse() {
            Ok(a) => a,
            Err(_) => return fail(format!("server.listen: invalid address {:?}", cfg.server.listen)),
        };
        if let Some(h) = &args.host {
            match format!("{h}:0").parse::<SocketAddr>().or_else(|_| format!("[{h}]:0").parse()) {
                Ok(a) => addr.set_ip(a.ip()),
                Err(_) => return fail(format!("--host: invalid address {h:?}")),
            }
        }
        if let Some(p) = args.port {
            addr.set_port(p);
        }
        let tls = match &cfg.server.tls {
            Some(t) => match server::tls_acceptor(&t.cert, &t.key) {
                Ok(a) => Some(a),
                Err(e) => return fail(e),
            },
            None => None,
        };
        // The server's stores: every config generation keeps its state in them.
        let snapshot = match Snapshot::build(cfg, &enc, 1, Default::default()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {addr}: {e}")),
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        if let Some((l, _)) = mock {
            let _ = l.set_nonblocking(true);
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(mock_upstream::run(l, Arc::new(MockState::with_vocabulary(enc.clone(), false)), None));
                }
                Err(e) => return fail(format!("mock upstream: {e}")),
            }
        }
        let state = Arc::new(AppState {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            prometheus,
            encoding: enc,
            inflight: Arc::new(AtomicUsize::new(0)),
            cpu: AppState::cpu_pool(),
        });
        let _watcher = reload::start(state.clone(), path.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        banner(log_format, &format!("{scheme}://{local}"));
        tracing::info!(addr = %local, config = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded".into()), "listening");
        let grace_state = state.clone();
        server::serve(state, listener, tls, shutdown_signal(), move || grace_state.snapshot.load().config.server.shutdown_grace.0).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init(upstream: &str, client: harmony_proxy::tools::init::ClientKind, output: &Path, force: bool) -> ExitCode {
    use harmony_proxy::tools::init;
    match upstream.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => return fail(format!("--upstream: invalid URL {upstream:?} (expected http(s)://host:port/v1)")),
    }
    // What the server serves, asked once (a server that does not answer gets the defaults).
    let text = format!("[upstreams.default]\nurl = {}\nconnect_timeout = \"2s\"\n", toml::Value::String(upstream.to_owned()));
    let discovered = match (config::load_str(&text, None, |_| None), runtime()) {
        (Ok(mut c), Ok(rt)) => {
            let u = c.upstreams.remove("default").expect("just written");
            rt.block_on(async {
                match harmony_proxy::upstream::Upstream::new("default", &u) {
                    Ok(up) => init::discover(&up).await,
                    Err(_) => init::Discovered::default(),
                }
            })
        }
        _ => init::Discovered::default(),
    };
    let text = init::config(upstream, client, &discovered);
    if output == Path::new("-") {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    if output.exists() && !force {
        return fail(format!("{} exists; use --force to overwrite it, or --output FILE", output.display()));
    }
    if let Err(e) = std::fs::write(output, text) {
        return fail(format!("{}: {e}", output.display()));
    }
    println!("wrote {}; check it with `harmony-proxy check --config {0}`, then run `harmony-proxy doctor --config {0}`", output.display());
    println!("{}", discovered.summary());
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let catalog = dir.join(init::CODEX_CATALOG);
    if client == init::ClientKind::Codex {
        if let Err(e) = std::fs::write(&catalog, init::codex_catalog(&discovered)) {
            return fail(format!("{}: {e}", catalog.display()));
        }
        println!("wrote {}: Codex's model catalog for {}", catalog.display(), discovered.model());
    }
    let catalog = std::fs::canonicalize(&catalog).unwrap_or(catalog);
    if let Some(client) = client.client_config("127.0.0.1:8001", &discovered, &catalog.display().to_string()) {
        println!("\n{client}");
    }
    ExitCode::SUCCESS
}

fn doctor(url: Option<&str>, cfg_path: Option<&Path>, model: Option<&str>) -> ExitCode {
    let (name, up_cfg) = match url {
        Some(u) => {
            let text = format!("[upstreams.default]\nurl = {}\n", toml::Value::String(u.to_owned()));
            match config::load_str(&text, None, |_| None) {
                Ok(mut c) => ("default".to_owned(), c.upstreams.remove("default").expect("just written")),
                Err(e) => return fail(format!("--upstream: {e}")),
            }
        }
        None => {
            let cfg = match load(config::resolve_path(cfg_path).as_deref()) {
                Ok(c) => c,
                Err(c) => return c,
            };
            let Some(name) = cfg.default_upstream().map(str::to_owned) else { return fail("the config has no upstream") };
            let u = cfg.upstreams[&name].clone();
            (name, u)
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(async {
        let up = match harmony_proxy::upstream::Upstream::new(&name, &up_cfg) {
            Ok(u) => u,
            Err(e) => return fail(e),
        };
        let report = harmony_proxy::tools::doctor::run(&up, model).await;
        for line in &report.lines {
            println!("{line}");
        }
        if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn mock(
    host: &str,
    port: u16,
    parsed: bool,
    tls: Option<(&Path, &Path)>,
    idle_close: Option<std::time::Duration>,
    n_ctx: Option<u64>,
    served_model: Option<String>,
) -> ExitCode {
    server::raise_fd_limit();
    let enc = match encoding() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let tls = match tls.map(|(cert, key)| server::tls_acceptor(cert, key)).transpose() {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind((host, port)).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {host}:{port}: {e}")),
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!("mock upstream listening on {scheme}://{local}/v1");
        tokio::select! {
            _ = mock_upstream::run(listener, Arc::new(MockState::with_vocabulary(enc, parsed).idle_close(idle_close).n_ctx(n_ctx).served_model(served_model)), tls) => {}
            _ = shutdown_signal() => {}
        }
        ExitCode::SUCCESS
    })
}

fn demo(port: u16) -> ExitCode {
    let mock = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => return fail(format!("mock upstream: {e}")),
    };
    let mock_url = format!("http://{}/v1", mock.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let port = if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() { port } else { 0 };
    // Single-threaded here: the environment is written before any other thread exists.
    std::env::set_var("UPSTREAM_BASE_URL", &mock_url);
    let proxy = format!("http://127.0.0.1:{}", if port == 0 { "<port>".to_string() } else { port.to_string() });
    println!("demo: mock gpt-oss upstream at {mock_url} (raw Harmony, llama.cpp framing)");
    println!("demo: try it (streaming; the analysis channel is removed, only the answer arrives):");
    println!("  curl -N {proxy}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("    -d '{{\"model\":\"gpt-oss-20b\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    println!("demo: a tool call (scenario:weather); run `PROXY_MODE=openai_tool_calls harmony-proxy demo` to get it as OpenAI tool_calls:");
    println!("  curl -N {proxy}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("    -d '{{\"model\":\"gpt-oss-20b\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"scenario:weather\"}}]}}'");
    println!("demo: compare with what the upstream really sends:");
    println!("  curl -N {mock_url}/chat/completions -d '{{\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    let args = ServeArgs { config: None, host: Some("127.0.0.1".into()), port: Some(port) };
    // The demo always runs the embedded default config, whatever ./proxy.toml says.
    serve(args, None, Some((mock, mock_url)))
}

fn replay(file: &Path, cfg_path: Option<&Path>, pipeline: Option<&str>, json: bool) -> ExitCode {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let enc = match encoding() {
        Ok(e) => e,
        Err(c) => return c,
    };
    let cfg = match load(config::resolve_path(cfg_path).as_deref()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let name = pipeline.map(str::to_owned).or_else(|| cfg.routes.first().map(|r| r.pipeline.clone())).unwrap_or_else(|| "harmony".into());
    let Some((def, _)) = cfg.pipelines.get(&name) else {
        return fail(format!("unknown pipeline {name:?} (defined: {})", cfg.pipelines.keys().cloned().collect::<Vec<_>>().join(", ")));
    };
    let compiled = harmony_filters::compile(&def.stages, &enc);
    let meta = harmony_filters::RequestMeta::new("replay", !json);
    let out = harmony_filters::replay::run(&compiled, &meta.into(), &[&data]);
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(&out);
    if json {
        println!();
    }
    ExitCode::SUCCESS
}
