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
use harmony_proxy::mock_upstream::{self, MockState};
use harmony_proxy::pipeline::Snapshot;
use harmony_proxy::server::{self, AppState};
use harmony_proxy::reload;

#[derive(Parser)]
#[command(name = "harmony-proxy", version, about = "Turns gpt-oss Harmony output into clean OpenAI Chat Completions")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
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
    /// Run the built-in simulated gpt-oss server (llama.cpp framing).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Serve HTTPS with this PEM certificate (and --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Mock upstream and proxy together, to see it work without a GPU.
    Demo {
        #[arg(long, default_value_t = 8001)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Cmd::MockUpstream { host, port, tls_cert, tls_key } => mock(&host, port, tls_cert.as_deref().zip(tls_key.as_deref())),
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
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| fail(format!("cannot start the runtime: {e}")))
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
    match Snapshot::build(cfg, &enc, 0) {
        Ok(_) => {
            let at = path.map(|p| p.display().to_string()).unwrap_or_else(|| "embedded proxy.toml".into());
            println!("{at}: ok ({routes} routes, {pipelines} pipelines)");
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("harmony_proxy={0},harmony_filters={0},warn", cfg.server.log_level.as_str())));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.server.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the proxy; with `mock`, a built-in mock upstream runs beside it (demo).
fn serve(args: ServeArgs, path: Option<PathBuf>, mock: Option<(std::net::TcpListener, String)>) -> ExitCode {
    let cfg = match load(path.as_deref()) {
        Ok(c) => c,
        Err(c) => return c,
    };
    init_logging(&cfg);
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
        let snapshot = match Snapshot::build(cfg, &enc, 1) {
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
                    tokio::spawn(mock_upstream::run(l, Arc::new(MockState::default()), None));
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
        });
        let _watcher = reload::start(state.clone(), path.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("harmony-proxy listening on {scheme}://{local}");
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

fn mock(host: &str, port: u16, tls: Option<(&Path, &Path)>) -> ExitCode {
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
            _ = mock_upstream::run(listener, Arc::new(MockState::default()), tls) => {}
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
    let meta = harmony_filters::RequestMeta::new("replay", !json, true);
    let out = harmony_filters::testing::run_sse(&compiled, &meta, &[&data]);
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(&out);
    if json {
        println!();
    }
    ExitCode::SUCCESS
}
