//! `harmony-proxy bench`: what the proxy costs, measured beside the direct connection.
//!
//! ```text
//! bench ─spawns─► mock-upstream (this binary)      ◄── direct streams (the baseline)
//!       ─spawns─► serve (this binary, soft fd limit 1024, config: mock, `harmony`)
//!                       ◄── the same streams through the proxy
//! ```
//!
//! Figures (each through the proxy and, where it has a meaning, direct):
//! - CPU per upstream token: the proxy process's user+system time (`/proc/PID/stat`) over
//!   the upstream tokens of a bulk run (streams sent as fast as the mock can);
//! - added latency per token: paced streams from a stamping upstream inside the bench
//!   process; each answer token carries the moment it was sent, so its latency is its
//!   arrival minus that; p50 and p99 through the proxy and direct;
//! - memory: the proxy's RSS at rest, and per 1,000 streams held open at once;
//! - concurrent streams: N streams open at once through a proxy started with a soft file
//!   limit of 1024 (it raises its own), and how many failed;
//! - ready: from spawning the proxy to its listening line.
//!
//! Nothing here is asserted: it prints what it measured (text, or `--json`). The client side
//! uses one HTTP/1.1 connection per stream, as IDE agents do.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What to run; `short` is CI's proof that the command works (seconds, no thresholds).
#[derive(Debug, Clone)]
pub struct Options {
    /// Bulk run: streams at once, and tokens of each.
    pub streams: usize,
    pub tokens: usize,
    /// Paced run: streams, tokens and the pace between tokens.
    pub paced_streams: usize,
    pub paced_tokens: usize,
    pub pace_ms: u64,
    /// Streams held open for the memory figure.
    pub memory_streams: usize,
    /// Streams open at once for the concurrency figure.
    pub concurrency: usize,
}

impl Options {
    pub fn full() -> Self {
        Self { streams: 16, tokens: 4000, paced_streams: 64, paced_tokens: 200, pace_ms: 10, memory_streams: 1000, concurrency: 5000 }
    }
    pub fn short() -> Self {
        Self { streams: 4, tokens: 300, paced_streams: 8, paced_tokens: 30, pace_ms: 10, memory_streams: 100, concurrency: 200 }
    }
}

/// A child process of this binary, killed on drop.
struct ChildProc {
    child: Child,
    url: String,
    ready: Duration,
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildProc {
    /// Starts `harmony-proxy ARGS` with a soft file limit of `nofile` (if given) and waits for
    /// its listening line.
    fn start(args: &[&str], cwd: &std::path::Path, nofile: Option<u64>, cpu: Option<usize>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        cmd.env_remove("HARMONY_PROXY_CONFIG").env_remove("UPSTREAM_BASE_URL").env_remove("RUST_LOG");
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    #[cfg(target_os = "linux")]
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if let Some(c) = cpu {
                        pin_to(c);
                    }
                    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
                    if let Some(n) = nofile {
                        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                            lim.rlim_cur = n.min(lim.rlim_max as u64) as libc::rlim_t;
                            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                        }
                    }
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {args:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(i) = line.find(" listening on ") {
                    let _ = tx.send(line[i + " listening on ".len()..].trim().trim_end_matches("/v1").to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(Self { child, url, ready: started.elapsed() }),
            Err(_) => {
                let _ = child.kill();
                Err(format!("{args:?} did not start"))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Pins the calling thread (and the threads it starts later) to one CPU.
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: a cpu_set_t we own, passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

/// user+system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces: utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: a plain sysconf query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The mock script of one stream: some reasoning, then `tokens` answer tokens.
fn script(tokens: usize, pace_ms: u64) -> String {
    script_for("gpt-oss", tokens, pace_ms)
}

/// The Harmony text a script makes the mock answer.
fn script_text(tokens: usize) -> String {
    format!(
        "<|channel|>analysis<|message|>{}<|end|><|start|>assistant<|channel|>final<|message|>{}",
        "think ".repeat(tokens / 8).trim_end(),
        "tick ".repeat(tokens).trim_end()
    )
}

/// [`script`] for `model` (the route it takes).
fn script_for(model: &str, tokens: usize, pace_ms: u64) -> String {
    let text = script_text(tokens);
    // `<` escaped: a prompt the proxy renders must not carry the script's Harmony markup as
    // markup (the mock finds the script in the prompt's last user message).
    let mock = json!({"mock": {"text": text, "delay_ms": pace_ms}}).to_string().replace('<', "\\u003c");
    let body = json!({"model": model, "stream": true, "messages": [
        {"role": "user", "content": mock}
    ]});
    body.to_string()
}

/// What one stream saw.
#[derive(Default)]
struct Seen {
    ok: bool,
    /// SSE events with a delta (upstream tokens, on a direct connection).
    events: usize,
    /// Arrival of each answer token ("tick"), from the request's start.
    ticks: Vec<Duration>,
    /// Latency of each stamped token (` s<µs since EPOCH>`), in ms.
    latencies: Vec<f64>,
}

/// The clock the stamping upstream and the client share (both are this process).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The latencies of the stamps (` s<digits>`) in one SSE event, arrived at `now_us`.
fn stamps(ev: &[u8], now_us: u128, out: &mut Vec<f64>) {
    let mut i = 0;
    while let Some(p) = ev[i..].windows(2).position(|w| w == b" s") {
        let start = i + p + 2;
        let end = ev[start..].iter().position(|b| !b.is_ascii_digit()).map_or(ev.len(), |e| start + e);
        if end > start {
            if let Some(us) = std::str::from_utf8(&ev[start..end]).ok().and_then(|d| d.parse::<u128>().ok()) {
                out.push(now_us.saturating_sub(us) as f64 / 1000.0);
            }
        }
        i = end.max(start);
    }
}

/// A response body fed from a channel.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// An upstream that streams, llama.cpp-style, `<|channel|>final<|message|>` and then the
/// tokens ` s<µs since EPOCH>`, one per pace; the last user message is `TOKENS PACE_MS`.
async fn stamp_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let ask = v["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("10 10").to_owned();
            let mut it = ask.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(10));
            let (tokens, pace) = (it.next().unwrap_or(10), it.next().unwrap_or(10));
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            tokio::spawn(async move {
                let event = |content: &str| Bytes::from(format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": content}}]})));
                let _ = tx.send(event("<|channel|>final<|message|>")).await;
                let start = tokio::time::Instant::now();
                for i in 0..tokens {
                    tokio::time::sleep_until(start + Duration::from_millis(pace * (i + 1))).await;
                    let stamp = format!(" s{}", epoch().elapsed().as_micros());
                    if tx.send(event(&stamp)).await.is_err() {
                        return;
                    }
                }
                let fin = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                let _ = tx.send(Bytes::from(format!("data: {fin}\n\ndata: [DONE]\n\n"))).await;
            });
            let mut r = http::Response::new(ChanBody(rx));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
            Ok::<_, std::convert::Infallible>(r)
        });
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
    }
}

/// One streamed request over its own connection; adds a permit to `first` at its first answer
/// token.
async fn one_stream(base: &str, path: &str, body: Arc<String>, first: Option<Arc<tokio::sync::Semaphore>>) -> Seen {
    let mut seen = Seen::default();
    let Some(addr) = base.strip_prefix("http://") else { return seen };
    let started = Instant::now();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else { return seen };
    let _ = tcp.set_nodelay(true);
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await else { return seen };
    tokio::spawn(conn);
    let req = http::Request::post(format!("{base}{path}"))
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.as_bytes().to_vec())));
    let Ok(req) = req else { return seen };
    let Ok(resp) = send.send_request(req).await else { return seen };
    if !resp.status().is_success() {
        return seen;
    }
    let mut body = resp.into_body();
    let mut carry: Vec<u8> = Vec::new();
    let mut done = false;
    let mut signalled = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return seen };
        let Ok(data) = frame.into_data() else { continue };
        let now = started.elapsed();
        let now_us = epoch().elapsed().as_micros();
        carry.extend_from_slice(&data);
        // Count what complete events hold; keep the unfinished tail.
        let end = carry.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2).unwrap_or(0);
        for ev in carry[..end].split(|&b| b == b'\n').filter(|l| l.starts_with(b"data: ")) {
            // Chat ends with [DONE]; Responses and Messages with their terminal events.
            if ev == b"data: [DONE]" || contains(ev, b"\"type\":\"response.completed\"") || contains(ev, b"\"type\":\"message_stop\"") {
                done = true;
                continue;
            }
            // Answer text counts in deltas only (a Responses `.done` event repeats it whole).
            if !contains(ev, b"delta") {
                continue;
            }
            if contains(ev, b"\"delta\"") {
                seen.events += 1;
            }
            stamps(ev, now_us, &mut seen.latencies);
            let n = ev.windows(4).filter(|w| w == b"tick").count();
            seen.ticks.extend(std::iter::repeat_n(now, n));
        }
        carry.drain(..end);
        if !signalled && !seen.ticks.is_empty() {
            signalled = true;
            if let Some(s) = &first {
                s.add_permits(1);
            }
        }
    }
    seen.ok = done;
    seen
}

/// One JSON request over its own connection: the answer, if it was a 2xx JSON.
async fn post_json(base: &str, path: &str, body: String) -> Option<Value> {
    let addr = base.strip_prefix("http://")?;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::post(format!("{base}{path}"))
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `n` streams at once against `base`; all of them, in order.
async fn run_streams(base: &str, n: usize, body: &Arc<String>) -> Vec<Seen> {
    run_streams_on(base, CHAT, n, body).await
}

const CHAT: &str = "/v1/chat/completions";
const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";

/// [`run_streams`] on the client API at `path`.
async fn run_streams_on(base: &str, path: &'static str, n: usize, body: &Arc<String>) -> Vec<Seen> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (base, body) = (base.to_owned(), body.clone());
        tasks.spawn(async move { (i, one_stream(&base, path, body, None).await) });
    }
    let mut out: Vec<(usize, Seen)> = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, s)| s).collect()
}

/// [`run_streams`], with its wall time and the CPU seconds process `pid` spent meanwhile.
async fn timed_streams(base: &str, n: usize, body: &Arc<String>, pid: u32) -> (Vec<Seen>, f64, f64) {
    timed_streams_on(base, CHAT, n, body, pid).await
}

/// [`timed_streams`] on the client API at `path`.
async fn timed_streams_on(base: &str, path: &'static str, n: usize, body: &Arc<String>, pid: u32) -> (Vec<Seen>, f64, f64) {
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    let seen = run_streams_on(base, path, n, body).await;
    (seen, t.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0)
}

/// Opens `n` slow streams (100 tokens, one every 100 ms), calls `at_peak` once each has its
/// first answer token (all are then mid-answer), and lets them finish. Returns (streams that
/// ended with `[DONE]`, what `at_peak` gave).
async fn hold_open<T>(base: &str, n: usize, at_peak: impl FnOnce() -> T) -> (usize, T) {
    let first = Arc::new(tokio::sync::Semaphore::new(0));
    let body = Arc::new(script(100, 100));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (base, body, first) = (base.to_owned(), body.clone(), first.clone());
        tasks.spawn(async move { one_stream(&base, CHAT, body, Some(first)).await.ok });
    }
    // Every stream has its first token, or 30 s passed (some failed: they are counted).
    let _ = tokio::time::timeout(Duration::from_secs(30), first.acquire_many(n as u32)).await;
    let peak = at_peak();
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    (ok, peak)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Every stamped token's latency, in ms, sorted.
fn latencies(seen: &[Seen]) -> Vec<f64> {
    let mut all: Vec<f64> = seen.iter().flat_map(|s| s.latencies.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    all
}

/// Runs the benchmark; the report as JSON.
pub fn run(opts: &Options) -> Result<Value, String> {
    crate::server::raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("harmony-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(opts: &Options, dir: &std::path::Path) -> Result<Value, String> {
    // No CPU pinning: pinned to a core of its own, the proxy measured slower and noisier here
    // (it batches less when it never waits for the client and the mock).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (client_cpu, proxy_cpu_core): (Option<usize>, Option<usize>) = (None, None);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let stamper = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(|e| e.to_string())?;
    let stamp_url = format!("http://{}", stamper.local_addr().map_err(|e| e.to_string())?);
    rt.spawn(stamp_server(stamper));
    let mock = ChildProc::start(&["mock-upstream", "--port", "0"], dir, None, client_cpu)?;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_level = \"warn\"\n\n\
         [upstreams.default]\nurl = \"{}/v1\"\nread_timeout = \"300s\"\n\n\
         [upstreams.stamp]\nurl = \"{stamp_url}/v1\"\nread_timeout = \"300s\"\n\n\
         [[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"stamp\"]\nupstream = \"stamp\"\npipeline = \"harmony\"\n\n\
         [[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"llama\"]\nupstream = \"default\"\npipeline = \"token-ids\"\n\n\
         [[routes]]\npath = \"/v1/chat/completions\"\nupstream = \"default\"\npipeline = \"harmony\"\n\n\
         [[routes]]\npath = \"/v1/responses\"\nupstream = \"default\"\npipeline = \"harmony\"\n\n\
         [[routes]]\npath = \"/v1/messages\"\nupstream = \"default\"\npipeline = \"harmony\"\n\n\
         [pipelines.token-ids]\nstages = [{{ type = \"harmony-render\", endpoint = \"llama\" }}, {{ type = \"harmony-parse\" }}, \
         {{ type = \"tool-bridge\" }}, {{ type = \"sse-encode\" }}]\n",
        mock.url
    );
    std::fs::write(dir.join("proxy.toml"), config).map_err(|e| e.to_string())?;
    let proxy = ChildProc::start(&["serve", "--config", "proxy.toml", "--port", "0"], dir, Some(1024), proxy_cpu_core)?;
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_idle = rss_bytes(proxy.pid());

        // Memory per open stream, first: in a fresh process (later runs leave freed heap that
        // new streams would reuse, which flatters the figure), from rest to all mid-answer.
        let (mem_ok, rss_open) = hold_open(&proxy.url, opts.memory_streams, || rss_bytes(proxy.pid())).await;
        let per_1000 = (rss_open.saturating_sub(rss_idle)) as f64 / opts.memory_streams.max(1) as f64 * 1000.0;

        // Bulk: CPU per upstream token.
        let body = Arc::new(script(opts.tokens, 0));
        let (direct, direct_wall, mock_cpu_direct) = timed_streams(&mock.url, opts.streams, &body, mock.child.id()).await;
        let upstream_tokens: usize = direct.iter().map(|s| s.events).sum();
        let (via, via_wall, proxy_cpu) = timed_streams(&proxy.url, opts.streams, &body, proxy.pid()).await;
        let bulk_errors = via.iter().filter(|s| !s.ok || s.ticks.len() != opts.tokens).count();
        let per_token_us = proxy_cpu / upstream_tokens.max(1) as f64 * 1e6;

        // The Responses API: the same answers through the same pipeline, encoded as Responses
        // events (the encoder is all that differs).
        let responses_body = {
            let chat: Value = serde_json::from_str(&body).unwrap_or_default();
            Arc::new(json!({"model": "gpt-oss", "stream": true, "store": false, "input": chat["messages"][0]["content"]}).to_string())
        };
        let (via_resp, resp_wall, resp_cpu) = timed_streams_on(&proxy.url, RESPONSES, opts.streams, &responses_body, proxy.pid()).await;
        let resp_errors = via_resp.iter().filter(|s| !s.ok || s.ticks.len() != opts.tokens).count();
        let resp_per_token_us = resp_cpu / upstream_tokens.max(1) as f64 * 1e6;

        // The Messages API, likewise.
        let messages_body = {
            let chat: Value = serde_json::from_str(&body).unwrap_or_default();
            Arc::new(json!({"model": "gpt-oss", "stream": true, "max_tokens": opts.tokens * 2, "messages": chat["messages"]}).to_string())
        };
        let (via_msg, msg_wall, msg_cpu) = timed_streams_on(&proxy.url, MESSAGES, opts.streams, &messages_body, proxy.pid()).await;
        let msg_errors = via_msg.iter().filter(|s| !s.ok || s.ticks.len() != opts.tokens).count();
        let msg_per_token_us = msg_cpu / upstream_tokens.max(1) as f64 * 1e6;

        // Messages with the most stop sequences a request may send, each beginning like the
        // answer's words (so text is held back and let go all the time), none of them
        // matching: the encoder's matcher costs each token its length, whatever the sequences.
        let stops_body = {
            use harmony_filters::api::messages::decode::{MAX_STOP_BYTES_TOTAL, MAX_STOP_SEQUENCES};
            let mut v: Value = serde_json::from_str(&messages_body).unwrap_or_default();
            let each = MAX_STOP_BYTES_TOTAL / MAX_STOP_SEQUENCES;
            let stops: Vec<String> = (0..MAX_STOP_SEQUENCES).map(|i| format!("ti{i:02}{}", "~".repeat(each - 4))).collect();
            v["stop_sequences"] = json!(stops);
            Arc::new(v.to_string())
        };
        let (via_stops, stops_wall, stops_cpu) = timed_streams_on(&proxy.url, MESSAGES, opts.streams, &stops_body, proxy.pid()).await;
        let stops_errors = via_stops.iter().filter(|s| !s.ok || s.ticks.len() != opts.tokens).count();
        let stops_per_token_us = stops_cpu / upstream_tokens.max(1) as f64 * 1e6;

        // count_tokens: prose, and one word as long (base64), each request a new text so the
        // render cache never answers.
        let prose = "the quick brown fox jumps over the lazy dog. ".repeat(opts.tokens);
        let word = "QUJD".repeat(prose.len() / 4);
        let mut counts = Vec::new();
        for content in [&prose, &word] {
            let cpu0 = cpu_seconds(proxy.pid());
            let mut tokens = 0u64;
            let mut errors = 0usize;
            for i in 0..opts.streams {
                let body = json!({"model": "gpt-oss", "messages": [{"role": "user", "content": format!("{i} {content}")}]}).to_string();
                match post_json(&proxy.url, "/v1/messages/count_tokens", body).await.and_then(|v| v["input_tokens"].as_u64()) {
                    Some(n) => tokens += n,
                    None => errors += 1,
                }
            }
            let cpu = cpu_seconds(proxy.pid()) - cpu0;
            counts.push(json!({"bytes": content.len(), "prompt_tokens_per_request": tokens / opts.streams.max(1) as u64,
                               "proxy_cpu_us_per_token": (cpu / tokens.max(1) as f64 * 1e6 * 1000.0).round() / 1000.0, "errors": errors}));
        }

        // Token ids: the same answers from llama.cpp's `/completion`, the proxy rendering the
        // prompt and reading token ids (`harmony-render` with `endpoint = "llama"`).
        let ids_body = Arc::new(script_for("llama", opts.tokens, 0));
        let ids_per_stream = harmony_filters::vocab::encoding()
            .map(|e| e.tokenizer().encode_with_special_tokens(&format!("{}<|return|>", script_text(opts.tokens))).len())
            .unwrap_or(0);
        let (via_ids, ids_wall, ids_cpu) = timed_streams(&proxy.url, opts.streams, &ids_body, proxy.pid()).await;
        let ids_errors = via_ids.iter().filter(|s| !s.ok || s.ticks.len() != opts.tokens).count();
        let ids_tokens = ids_per_stream * opts.streams;

        // Paced: added latency per token.
        let ask = format!("{} {}", opts.paced_tokens, opts.pace_ms);
        let body = Arc::new(json!({"model": "stamp", "stream": true, "messages": [{"role": "user", "content": ask}]}).to_string());
        let direct_late = latencies(&run_streams(&stamp_url, opts.paced_streams, &body).await);
        let (via_paced, _, paced_cpu) = timed_streams(&proxy.url, opts.paced_streams, &body, proxy.pid()).await;
        let paced_tokens = opts.paced_streams * (opts.paced_tokens + 1);
        let paced_errors = via_paced.iter().filter(|s| !s.ok || s.latencies.len() != opts.paced_tokens).count();
        let via_late = latencies(&via_paced);


        // Concurrency under a soft limit of 1024 at start.
        let (conc_ok, rss_conc) = hold_open(&proxy.url, opts.concurrency, || rss_bytes(proxy.pid())).await;

        let mb = |b: f64| (b / 1e6 * 10.0).round() / 10.0;
        let ms = |v: f64| (v * 1000.0).round() / 1000.0;
        Ok(json!({
            "machine": {"cores": cores, "build": if cfg!(debug_assertions) {"debug"} else {"release"}},
            "options": {"streams": opts.streams, "tokens": opts.tokens, "paced_streams": opts.paced_streams, "paced_tokens": opts.paced_tokens,
                        "pace_ms": opts.pace_ms, "memory_streams": opts.memory_streams, "concurrency": opts.concurrency},
            "bulk": {
                "upstream_tokens": upstream_tokens,
                "proxy_cpu_us_per_token": (per_token_us * 100.0).round() / 100.0,
                "mock_cpu_us_per_token": (mock_cpu_direct / upstream_tokens.max(1) as f64 * 1e6 * 100.0).round() / 100.0,
                "tokens_per_s_via_proxy": (upstream_tokens as f64 / via_wall).round() as u64,
                "tokens_per_s_direct": (upstream_tokens as f64 / direct_wall).round() as u64,
                "errors": bulk_errors,
            },
            "responses": {
                "upstream_tokens": upstream_tokens,
                "proxy_cpu_us_per_token": (resp_per_token_us * 100.0).round() / 100.0,
                // Too few CPU ticks to compare (short mode) says null.
                "vs_chat_percent": (per_token_us > 0.0 && resp_per_token_us > 0.0).then(|| ((resp_per_token_us / per_token_us - 1.0) * 1000.0).round() / 10.0),
                "tokens_per_s_via_proxy": (upstream_tokens as f64 / resp_wall).round() as u64,
                "errors": resp_errors,
            },
            "messages": {
                "upstream_tokens": upstream_tokens,
                "proxy_cpu_us_per_token": (msg_per_token_us * 100.0).round() / 100.0,
                "vs_chat_percent": (per_token_us > 0.0 && msg_per_token_us > 0.0).then(|| ((msg_per_token_us / per_token_us - 1.0) * 1000.0).round() / 10.0),
                "tokens_per_s_via_proxy": (upstream_tokens as f64 / msg_wall).round() as u64,
                "errors": msg_errors,
            },
            "messages_max_stops": {
                "stop_sequences": harmony_filters::api::messages::decode::MAX_STOP_SEQUENCES,
                "bytes_each": harmony_filters::api::messages::decode::MAX_STOP_BYTES_TOTAL / harmony_filters::api::messages::decode::MAX_STOP_SEQUENCES,
                "proxy_cpu_us_per_token": (stops_per_token_us * 100.0).round() / 100.0,
                "vs_messages_percent": (msg_per_token_us > 0.0 && stops_per_token_us > 0.0).then(|| ((stops_per_token_us / msg_per_token_us - 1.0) * 1000.0).round() / 10.0),
                "tokens_per_s_via_proxy": (upstream_tokens as f64 / stops_wall).round() as u64,
                "errors": stops_errors,
            },
            "count_tokens": {"requests": opts.streams, "prose": counts[0], "one_word": counts[1]},
            "token_ids": {
                "upstream_tokens": ids_tokens,
                "proxy_cpu_us_per_token": (ids_cpu / ids_tokens.max(1) as f64 * 1e6 * 100.0).round() / 100.0,
                "tokens_per_s_via_proxy": (ids_tokens as f64 / ids_wall).round() as u64,
                "errors": ids_errors,
            },
            "paced": {
                "p50_ms_via_proxy": ms(percentile(&via_late, 0.5)), "p99_ms_via_proxy": ms(percentile(&via_late, 0.99)),
                "p50_ms_direct": ms(percentile(&direct_late, 0.5)), "p99_ms_direct": ms(percentile(&direct_late, 0.99)),
                "added_p50_ms": ms(percentile(&via_late, 0.5) - percentile(&direct_late, 0.5)),
                "added_p99_ms": ms(percentile(&via_late, 0.99) - percentile(&direct_late, 0.99)),
                "proxy_cpu_us_per_token": (paced_cpu / paced_tokens.max(1) as f64 * 1e6 * 100.0).round() / 100.0,
                "errors": paced_errors,
            },
            "memory": {"rss_idle_mb": mb(rss_idle as f64), "rss_mb_per_1000_streams": mb(per_1000), "held": opts.memory_streams, "held_ok": mem_ok},
            "concurrency": {"streams": opts.concurrency, "ok": conc_ok, "errors": opts.concurrency - conc_ok, "rss_mb": mb(rss_conc as f64),
                            "proxy_soft_fd_limit_at_start": 1024},
            "ready_s": (proxy.ready.as_secs_f64() * 1000.0).round() / 1000.0,
        }))
    })
}

/// The report as text, proxy beside direct.
pub fn text(r: &Value) -> String {
    let o = &r["options"];
    let b = &r["bulk"];
    let p = &r["paced"];
    let m = &r["memory"];
    let c = &r["concurrency"];
    format!(
        "harmony-proxy bench ({} build, {} cores; pipeline `harmony`, built-in mock upstream)\n\
         \n\
         bulk: {} streams x {} answer tokens ({} upstream tokens)     via proxy      direct\n\
         \x20 CPU per upstream token (proxy process)        {:>9} us   (mock: {} us)\n\
         \x20 throughput                                    {:>9} tok/s {} tok/s\n\
         \x20 errors                                        {:>9}\n\
         responses (POST /v1/responses): the same answers, the same pipeline\n\
         \x20 CPU per upstream token (proxy process)        {:>9} us   ({}% vs chat)\n\
         \x20 throughput                                    {:>9} tok/s\n\
         \x20 errors                                        {:>9}\n\
         messages (POST /v1/messages): the same answers, the same pipeline\n\
         \x20 CPU per upstream token (proxy process)        {:>9} us   ({}% vs chat)\n\
         \x20 throughput                                    {:>9} tok/s\n\
         \x20 errors                                        {:>9}\n\
         messages with {} stop sequences of {} bytes (the most a request may send)\n\
         \x20 CPU per upstream token (proxy process)        {:>9} us   ({}% vs messages)\n\
         \x20 throughput                                    {:>9} tok/s\n\
         \x20 errors                                        {:>9}\n\
         count_tokens ({} requests each; CPU per prompt token counted)\n\
         \x20 prose, {} bytes ({} tokens)           {:>9} us   errors {}\n\
         \x20 one word, {} bytes ({} tokens)        {:>9} us   errors {}\n\
         token ids (harmony-render, endpoint = \"llama\"): the same answers, {} upstream tokens\n\
         \x20 CPU per upstream token (proxy process)        {:>9} us\n\
         \x20 throughput                                    {:>9} tok/s\n\
         \x20 errors                                        {:>9}\n\
         paced: {} streams x {} tokens, one every {} ms\n\
         \x20 latency per token p50                         {:>9} ms   {} ms  (added {} ms)\n\
         \x20 latency per token p99                         {:>9} ms   {} ms  (added {} ms)\n\
         \x20 CPU per upstream token (one read and one write each) {:>2} us\n\
         memory\n\
         \x20 RSS at rest                                   {:>9} MB\n\
         \x20 RSS per 1,000 open streams ({} held, {} ok)   {:>9} MB\n\
         concurrency (proxy started with a soft file limit of 1024)\n\
         \x20 streams open at once                          {:>9}   ok {}, errors {}, RSS {} MB\n\
         ready after start                               {:>9} s\n",
        r["machine"]["build"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
        o["streams"],
        o["tokens"],
        b["upstream_tokens"],
        b["proxy_cpu_us_per_token"],
        b["mock_cpu_us_per_token"],
        b["tokens_per_s_via_proxy"],
        b["tokens_per_s_direct"],
        b["errors"],
        r["responses"]["proxy_cpu_us_per_token"],
        r["responses"]["vs_chat_percent"],
        r["responses"]["tokens_per_s_via_proxy"],
        r["responses"]["errors"],
        r["messages"]["proxy_cpu_us_per_token"],
        r["messages"]["vs_chat_percent"],
        r["messages"]["tokens_per_s_via_proxy"],
        r["messages"]["errors"],
        r["messages_max_stops"]["stop_sequences"],
        r["messages_max_stops"]["bytes_each"],
        r["messages_max_stops"]["proxy_cpu_us_per_token"],
        r["messages_max_stops"]["vs_messages_percent"],
        r["messages_max_stops"]["tokens_per_s_via_proxy"],
        r["messages_max_stops"]["errors"],
        r["count_tokens"]["requests"],
        r["count_tokens"]["prose"]["bytes"],
        r["count_tokens"]["prose"]["prompt_tokens_per_request"],
        r["count_tokens"]["prose"]["proxy_cpu_us_per_token"],
        r["count_tokens"]["prose"]["errors"],
        r["count_tokens"]["one_word"]["bytes"],
        r["count_tokens"]["one_word"]["prompt_tokens_per_request"],
        r["count_tokens"]["one_word"]["proxy_cpu_us_per_token"],
        r["count_tokens"]["one_word"]["errors"],
        r["token_ids"]["upstream_tokens"],
        r["token_ids"]["proxy_cpu_us_per_token"],
        r["token_ids"]["tokens_per_s_via_proxy"],
        r["token_ids"]["errors"],
        o["paced_streams"],
        o["paced_tokens"],
        o["pace_ms"],
        p["p50_ms_via_proxy"],
        p["p50_ms_direct"],
        p["added_p50_ms"],
        p["p99_ms_via_proxy"],
        p["p99_ms_direct"],
        p["added_p99_ms"],
        p["proxy_cpu_us_per_token"],
        m["rss_idle_mb"],
        m["held"],
        m["held_ok"],
        m["rss_mb_per_1000_streams"],
        c["streams"],
        c["ok"],
        c["errors"],
        c["rss_mb"],
        r["ready_s"],
    )
}
