//! The harness: start the real binary (proxy and built-in mock upstream) on ephemeral
//! loopback ports, and talk to it as a client would.
//!
//! Invariant: no process the suite starts outlives it. Rust never drops statics, so the
//! shared environment's children would be orphaned when the test binary exits; instead every
//! child is forked by [`spawn_child`] with a parent-death signal (Linux `PR_SET_PDEATHSIG`),
//! and the kernel kills it when the test process ends, however it ends.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use harmony_filters::testing::{assemble_json, assemble_sse, Assembled};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_harmony-proxy");

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that the child dies with the test process.
///
/// The parent-death signal fires when the *thread* that forked the child exits, not the
/// process, and test threads end while shared children must live on: so all children are
/// forked by one thread that lives as long as the process.
pub fn spawn_child(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_dying_with_parent(&mut cmd));
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, reply_tx)).expect("spawner thread is gone");
    reply_rx.recv().expect("spawner thread is gone")
}

#[cfg(target_os = "linux")]
fn spawn_dying_with_parent(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would ever signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_dying_with_parent(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.spawn()
}

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    /// What it printed as its address (`http://127.0.0.1:PORT`).
    pub url: String,
    pub stderr: PathBuf,
    /// A copy of what it printed on stdout.
    pub stdout: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything it printed on stdout so far.
    pub fn out(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

/// Starts `BIN args…` and waits for its `… listening on URL` line.
pub fn spawn(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    spawn_command(cmd, cwd, env)
}

/// Runs `script` with `sh -c` (`$BIN` is the binary), e.g. to start it under `ulimit`; waits
/// for the `… listening on URL` line of what it starts.
pub fn spawn_shell(script: &str, cwd: &Path) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).env("BIN", BIN);
    spawn_command(cmd, cwd, &[])
}

fn spawn_command(mut cmd: Command, cwd: &Path, env: &[(&str, &str)]) -> Proc {
    let stderr = cwd.join(format!("stderr-{}.log", fastrand::u64(..)));
    let args = format!("{cmd:?}");
    cmd.current_dir(cwd)
        .env_remove("UPSTREAM_BASE_URL")
        .env_remove("HARMONY_PROXY_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = spawn_child(cmd).expect("spawn harmony-proxy");
    let stdout = child.stdout.take().unwrap();
    let stdout_log = cwd.join(format!("stdout-{}.log", fastrand::u64(..)));
    let mut copy = std::fs::File::create(&stdout_log).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            use std::io::Write as _;
            let _ = writeln!(copy, "{line}");
            if line.starts_with('{') {
                // JSON log mode: the banner is a JSON object with the address in `url`.
                if let Some(url) = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["url"].as_str().map(str::to_owned)) {
                    let _ = tx.send(url);
                }
            } else if let Some(i) = line.find(" listening on ") {
                let _ = tx.send(line[i + " listening on ".len()..].trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => Proc { child, url: url.trim_end_matches("/v1").to_owned(), stderr, stdout: stdout_log },
        Err(_) => {
            let _ = child.kill();
            panic!("{args:?} did not start: {}", std::fs::read_to_string(&stderr).unwrap_or_default())
        }
    }
}

pub fn mock(dir: &Path) -> Proc {
    spawn(&["mock-upstream", "--port", "0"], dir, &[])
}

/// The config the shared test proxy runs: model globs pick the shipped pipelines.
pub fn config(mock_url: &str, extra: &str) -> String {
    let routes: String = [("text-*", "text-tools"), ("ide-*", "ide-tools"), ("pass-*", "passthrough"), ("*", "harmony")]
        .iter()
        .map(|(glob, pipeline)| {
            format!("[[routes]]\npath = \"/v1/chat/completions\"\nmodels = [\"{glob}\"]\nupstream = \"default\"\npipeline = \"{pipeline}\"\n\n")
        })
        .collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
{extra}

[upstreams.default]
url = "{mock_url}/v1"
read_timeout = "5s"
connect_timeout = "2s"

{routes}"#
    )
}

/// A config with one route to one pipeline made of `stages` (a TOML array body);
/// `upstream_extra` goes into `[upstreams.default]`.
pub fn one_pipeline(mock_url: &str, upstream_extra: &str, stages: &str) -> String {
    format!(
        r#"
[upstreams.default]
url = "{mock_url}/v1"
{upstream_extra}
[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "main"
[pipelines.main]
stages = [{stages}]
"#
    )
}

/// A mock and a proxy in a temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub mock: Proc,
    pub proxy: Proc,
}

impl Env {
    /// A fresh pair; `extra` goes into `[server]`.
    pub fn start(extra: &str) -> Env {
        Env::with_config(|mock_url| config(mock_url, extra))
    }

    /// A fresh pair with the config `make(mock_url)`.
    pub fn with_config(make: impl FnOnce(&str) -> String) -> Env {
        Env::with_mock(&[], make)
    }

    /// A fresh pair with the config `make(mock_url)`, the mock started with `mock_args` more.
    pub fn with_mock(mock_args: &[&str], make: impl FnOnce(&str) -> String) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mock = spawn(&[&["mock-upstream", "--port", "0"], mock_args].concat(), dir.path(), &[]);
        std::fs::write(dir.path().join("proxy.toml"), make(&mock.url)).unwrap();
        let proxy = spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir.path(), &[]);
        Env { dir, mock, proxy }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url)
    }

    pub fn mock_stats(&self) -> Value {
        client().get(format!("{}/mock/stats", self.mock.url)).send().unwrap().json().unwrap()
    }
}

/// The proxy most tests share (they don't change its state).
pub fn shared() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::start(""))
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A chat request whose last user message is `user`.
pub fn chat_body(model: &str, stream: bool, user: &str) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": user}]})
}

/// The user message that makes the mock replay `raw` verbatim.
pub fn raw_script(raw: &str) -> String {
    json!({"mock": {"raw": raw}}).to_string()
}

pub fn script(s: Value) -> String {
    json!({ "mock": s }).to_string()
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Assembles the answer, checking the client contract.
    pub fn assemble(&self, stream: bool) -> Assembled {
        let r = if stream { assemble_sse(&self.body) } else { assemble_json(&self.body) };
        r.unwrap_or_else(|e| panic!("contract broken: {e}\n{}", self.text()))
    }
}

pub fn post(url: &str, body: &Value) -> Reply {
    send(client().post(url).json(body))
}

pub fn send(rb: reqwest::blocking::RequestBuilder) -> Reply {
    let mut r = rb.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let mut body = Vec::new();
    r.read_to_end(&mut body).unwrap();
    Reply { status, headers, body }
}

/// Posts a chat request and assembles the answer.
pub fn chat(env: &Env, model: &str, stream: bool, user: &str) -> Assembled {
    let r = post(&env.url("/v1/chat/completions"), &chat_body(model, stream, user));
    assert_eq!(r.status, 200, "{}", r.text());
    r.assemble(stream)
}

/// Polls `f` until it is true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Runs `harmony-proxy check ARGS` in `cwd`: (exit 0, stdout + stderr).
pub fn check(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("check").args(args).current_dir(cwd).env_remove("UPSTREAM_BASE_URL").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Routes for the native suites: `native-*` models to the shipped `native` pipeline (endpoint
/// `completions`), `nllama-*` to `native-llama`, whose stages (a TOML array body, endpoint
/// `llama`) each suite gives. Goes before any catch-all route (first match wins).
pub fn native_routes(llama_stages: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/v1/chat/completions"
models = ["native-*"]
upstream = "default"
pipeline = "native"

[[routes]]
path = "/v1/chat/completions"
models = ["nllama-*"]
upstream = "default"
pipeline = "native-llama"

[pipelines.native-llama]
stages = [{llama_stages}]
"#
    )
}
