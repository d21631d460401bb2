//! Test harness: real processes on ephemeral ports, killed on drop.
//!
//! - `Backend`: the example FastAPI app under uvicorn (`examples/backend`), serving a socket
//!   the harness bound itself (`uvicorn --fd`): its port is never free for anyone else.
//! - `Gateway`: the `fastgate` binary built by cargo, with a config written to a temp dir.
//!
//! Readiness is polled, never slept for; a child that exits while it is awaited fails the
//! test at once, with its last log lines. Every child runs in its own process group, killed
//! with the group on drop, and gets SIGKILL when the test process dies (`PR_SET_PDEATHSIG`),
//! so a killed test run leaves nothing behind. `FASTGATE_TEST_PYTHON` picks the interpreter.

#![allow(dead_code)]

use std::io::Read;

pub mod pki;

/// The process's rustls provider (ring, as in fastgate), before any test builds a client: the
/// HTTP client's TLS takes the process default.
#[ctor::ctor]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("fastgate-test-ports")
}

/// Claims `port` for this test process: a file created exclusively in a directory all test
/// processes share. Claims older than `CLAIM_TTL` belong to earlier, killed runs.
fn claim(port: u16) -> bool {
    const CLAIM_TTL: Duration = Duration::from_secs(15 * 60);
    let dir = claims_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(port.to_string());
    let stale = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() > CLAIM_TTL);
    if stale {
        let _ = std::fs::remove_file(&path);
    }
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path).is_ok()
}

/// Gives a claimed port back (its owner has exited).
pub fn release(port: u16) {
    let _ = std::fs::remove_file(claims_dir().join(port.to_string()));
}

/// A port nothing listens on now and that no other test process of this run holds.
///
/// Test binaries run in parallel, each test in its own process. A port one test was handed and
/// released (a gateway still starting, a "dead" upstream) could otherwise be handed to another
/// test. The claim is held until the test gives it back (`release`, done by the `Drop` of
/// `Gateway`) or the run ends.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if claim(port) {
            return port;
        }
    }
    panic!("no unclaimed port after 1000 tries (see {})", claims_dir().display());
}

/// A listening socket on a claimed port, for a child to inherit: nobody else can take the
/// port between the test choosing it and the child serving it.
fn claimed_listener() -> TcpListener {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        if claim(l.local_addr().expect("local addr").port()) {
            return l;
        }
    }
    panic!("no unclaimed port after 1000 tries");
}

/// The child runs in its own process group (killed whole on drop) and dies with the test
/// process.
fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A `fastgate` command whose process is isolated like the harness's own children (own
/// process group, dies with the test process); `Managed` kills it on drop.
pub fn fastgate_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastgate"));
    isolate(&mut cmd);
    cmd
}

/// A child killed with its process group on drop.
pub struct Managed(pub Child);

impl Drop for Managed {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// Kills the child's whole process group and reaps the child.
fn kill_group(child: &mut Child) {
    // SAFETY: signals the group this harness created for the child (its pid is the group id).
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `url` until it answers with `want` or `timeout` passes.
pub fn wait_for_status(url: &str, want: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(status) = blocking_status(url)
            && status == want {
                return true;
            }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Why a child did not become ready.
#[derive(Debug)]
pub enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

/// Polls `ready` until it holds, the child exits, or `timeout` passes.
fn await_child(child: &mut Child, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal blocking GET, for readiness polls outside any runtime.
fn blocking_status(url: &str) -> std::io::Result<u16> {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))
}

pub struct Backend {
    pub port: u16,
    /// The loopback address it serves (127.0.0.1 unless started with `start_on`).
    pub ip: std::net::IpAddr,
    child: Child,
}

impl Backend {
    pub fn start() -> Backend {
        Self::start_with_env(&[])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        Self::spawn(Command::new(python), env, Duration::from_secs(30))
    }

    /// Another FastAPI app of the repository: `app:app` in `dir` (e.g. `tests/apps/library`).
    #[allow(dead_code)]
    pub fn start_app(dir: &str) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        Self::spawn_in(Command::new(python), &[], Duration::from_secs(30), dir)
    }

    /// Another app of the repository that serves no `/healthz`: ready once `ready_path`
    /// answers 200.
    #[allow(dead_code)]
    pub fn start_app_ready(dir: &str, ready_path: &str, env: &[(&str, &str)]) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut b = Self::spawn_in(Command::new(python), env, Duration::ZERO, dir);
        b.wait_path(ready_path, Duration::from_secs(30));
        b
    }

    /// The same app under OpenTelemetry's zero-code instrumentation (what the
    /// `opentelemetry-instrument` command runs, called through the interpreter so no console
    /// script needs to be on PATH), configured by the `OTEL_*` variables in `env`. The app
    /// itself is unchanged.
    pub fn start_instrumented(env: &[(&str, &str)]) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "from opentelemetry.instrumentation.auto_instrumentation import run; run()", &python]);
        Self::spawn(cmd, env, Duration::from_secs(30))
    }

    /// Starts the backend without waiting for it: for tests of a backend that is slow to
    /// start (`BACKEND_STARTUP_DELAY`). `wait_healthy` waits.
    pub fn start_unready(env: &[(&str, &str)]) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        Self::spawn(Command::new(python), env, Duration::ZERO)
    }

    /// The example app serving `listener` (another loopback address than 127.0.0.1, for
    /// discovery tests), not waited for.
    pub fn start_on(listener: TcpListener, env: &[(&str, &str)]) -> Backend {
        let python = std::env::var("FASTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        Self::spawn_listener(Command::new(python), env, Duration::ZERO, "examples/backend", listener)
    }

    fn spawn(cmd: Command, env: &[(&str, &str)], wait: Duration) -> Backend {
        Self::spawn_in(cmd, env, wait, "examples/backend")
    }

    fn spawn_in(cmd: Command, env: &[(&str, &str)], wait: Duration, dir: &str) -> Backend {
        Self::spawn_listener(cmd, env, wait, dir, claimed_listener())
    }

    fn spawn_listener(mut cmd: Command, env: &[(&str, &str)], wait: Duration, dir: &str, listener: TcpListener) -> Backend {
        use std::os::fd::AsRawFd;
        let local = listener.local_addr().expect("local addr");
        let (port, ip) = (local.port(), local.ip());
        let fd = listener.as_raw_fd();
        // uvicorn's own `--fd` takes every inherited socket for a Unix one (its clients then
        // show no port); serving a socket object made from the fd keeps its family. Proxy
        // headers are off so `/debug/echo` reports the TCP peer (the gateway's pooled
        // connection), not the address the gateway forwards in `X-Forwarded-For`.
        // BACKEND_DATE_HEADER=0 leaves `Date` to the app (uvicorn would add a second one).
        // BACKEND_TLS_CERT/_KEY serve HTTPS; BACKEND_TLS_CLIENT_CA requires a client
        // certificate signed by it (uvicorn's own TLS, as a backend team would run it).
        const SERVE_FD: &str = "import os, socket, ssl, sys, uvicorn\n\
            sock = socket.socket(fileno=int(sys.argv[1]))\n\
            date = os.environ.get('BACKEND_DATE_HEADER', '1') != '0'\n\
            ca = os.environ.get('BACKEND_TLS_CLIENT_CA')\n\
            tls = dict(ssl_certfile=os.environ.get('BACKEND_TLS_CERT'), ssl_keyfile=os.environ.get('BACKEND_TLS_KEY'), ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE)\n\
            uvicorn.Server(uvicorn.Config('app:app', log_level='warning', proxy_headers=False, date_header=date, **tls)).run(sockets=[sock])\n";
        cmd.args(["-c", SERVE_FD, &fd.to_string()])
            .current_dir(repo().join(dir))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        isolate(&mut cmd);
        // SAFETY: only clears close-on-exec on the listener's fd, in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn uvicorn (is the example backend installed?)");
        // The child has its copy of the socket; ours closes.
        drop(listener);
        let mut b = Backend { port, ip, child };
        if !wait.is_zero() {
            b.wait_healthy(wait);
        }
        b
    }

    /// Waits until `/healthz` answers 200 (after the app's lifespan start-up).
    pub fn wait_healthy(&mut self, timeout: Duration) {
        self.wait_path("/healthz", timeout);
    }

    fn wait_path(&mut self, path: &str, timeout: Duration) {
        let url = self.url(path);
        if let Err(e) = await_child(&mut self.child, timeout, || blocking_status(&url).is_ok_and(|s| s == 200)) {
            panic!("backend did not answer 200 at {path}: {e:?}");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// How many requests for `path` the backend has seen.
    pub async fn hits(&self, path: &str) -> u64 {
        let v: serde_json::Value = reqwest::get(self.url("/debug/stats")).await.unwrap().json().await.unwrap();
        v["hits"][path].as_u64().unwrap_or(0)
    }

    /// Requests the backend has seen, on every path but its control endpoints (`/debug/stats`,
    /// `/debug/mode`, `/debug/health`, `/debug/reset`) and `/healthz`.
    pub async fn total_hits(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(self.url("/debug/stats")).await.unwrap().json().await.unwrap();
        v["total"].as_u64().unwrap_or(0)
    }

    pub async fn set_healthy(&self, healthy: bool) {
        let r = reqwest::Client::new()
            .post(self.url("/debug/health"))
            .json(&serde_json::json!({ "healthy": healthy }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// How many requests are held at `/debug/hold/{key}` (or by `mode({"hold": key})`) now.
    pub async fn holding(&self, key: &str) -> u64 {
        let v: serde_json::Value = reqwest::get(self.url("/debug/stats")).await.unwrap().json().await.unwrap();
        v["holding"][key].as_u64().unwrap_or(0)
    }

    /// Waits until exactly `n` requests are held on `key`.
    pub async fn wait_holding(&self, key: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.holding(key).await;
            if now == n {
                return;
            }
            assert!(Instant::now() < deadline, "{now} requests held on {key}, waited for {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets every request held on `key` finish.
    pub async fn release(&self, key: &str) {
        let r = reqwest::Client::new().post(self.url(&format!("/debug/release/{key}"))).send().await.unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        // The claim is kept (until it goes stale): a gateway of the same test may still point
        // at this address, and must find nothing there rather than another test's backend.
    }
}

pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The `[server]` table every test config starts with.
pub fn server_table(port: u16, admin_port: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nshutdown_grace = \"10s\"\n"
    )
}

/// A config with one upstream `api` at `backend` and the given routes etc. appended.
pub fn config_for(backend: &str, rest: &str) -> String {
    format!("[upstreams.api]\nservers = [\"{backend}\"]\n\n{rest}")
}

/// A catch-all route to `api`.
pub const CATCH_ALL: &str = "[[routes]]\nname = \"all\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\n";

impl Gateway {
    /// Starts fastgate with `body` (everything but `[server]`) and waits until the admin
    /// listener answers.
    pub fn start(body: &str) -> Gateway {
        Self::start_with(body, "", &[])
    }

    /// Starts fastgate with a whole config file; `text(port, admin_port)` writes it for the
    /// ports the harness chose.
    pub fn start_file(text: impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Gateway {
        Self::launch(text, env)
    }

    /// `server_extra` lines go into `[server]`.
    pub fn start_with(body: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(
            |port, admin_port| {
                // `server_extra` may override a key of the standard table
                let table: String = server_table(port, admin_port)
                    .lines()
                    .filter(|l| {
                        let key = l.split('=').next().unwrap_or("").trim();
                        key.is_empty() || !server_extra.lines().any(|e| e.split('=').next().unwrap_or("").trim() == key)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                format!("{table}{server_extra}\n{body}")
            },
            env,
        )
    }

    /// Starts the gateway on two free ports. `free_port` lets its probe socket go, so another
    /// process (a client's ephemeral port) can take a port before the gateway binds it: a
    /// start refused for a taken address is tried again on new ports.
    fn launch(text: impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Gateway {
        for _ in 0..3 {
            if let Some(g) = Self::try_launch(&text, env) {
                return g;
            }
        }
        panic!("gateway did not start: its ports were taken three times");
    }

    fn try_launch(text: &impl Fn(u16, u16) -> String, env: &[(&str, &str)]) -> Option<Gateway> {
        let port = free_port();
        let admin_port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("fastgate.toml");
        std::fs::write(&config_path, text(port, admin_port)).unwrap();
        let log_path = dir.path().join("fastgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastgate"));
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        isolate(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut g = Gateway {
            port,
            admin_port,
            config_path,
            log_path,
            _dir: dir,
            child: Some(child),
        };
        // Up means both listeners answer: the admin's /healthz and a connection to the proxy.
        let (health, public) = (g.admin_url("/healthz"), g.addr());
        let up = || {
            blocking_status(&health).is_ok_and(|s| s == 200) && std::net::TcpStream::connect(&public).is_ok()
        };
        let awaited = await_child(g.child.as_mut().unwrap(), Duration::from_secs(10), up);
        if let Err(NotReady::Exited(_)) = &awaited
            && g.log().contains("Address already in use")
        {
            return None;
        }
        if let Err(e) = awaited {
            panic!("gateway did not start ({e:?}); last log lines:\n{}", tail(&g.log(), 20));
        }
        Some(g)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn wait_ready(&self) {
        assert!(
            wait_for_status(&self.admin_url("/readyz"), 200, Duration::from_secs(10)),
            "gateway not ready; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Rewrites the config file with `body` under the same `[server]` table.
    pub fn write_config(&self, body: &str) {
        let text = format!("{}\n{body}", server_table(self.port, self.admin_port));
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics")).await.unwrap().text().await.unwrap()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
        release(self.port);
        release(self.admin_port);
    }
}

/// The value of a sample line in Prometheus text, e.g. `metric{a="b"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn config_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

impl Gateway {
    /// Waits until the gateway counts exactly `n` requests in flight (`/status.json`): how a
    /// test sees a request queued inside the gateway, where the backend cannot see it.
    pub async fn wait_in_flight(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: serde_json::Value = reqwest::get(self.admin_url("/status.json")).await.unwrap().json().await.unwrap();
            if v["in_flight"] == n {
                return;
            }
            assert!(Instant::now() < deadline, "in flight: {}, waited for {n}", v["in_flight"]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `/metrics` until `series` has `value`: request metrics are recorded in the logging
    /// phase, just after the response has gone out. Returns the last scrape.
    pub async fn wait_metric(&self, series: &str, value: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if metric_value(&m, series) == Some(value) {
                // and it stays there: a late over-count must not slip by at the first equal read
                tokio::time::sleep(Duration::from_millis(200)).await;
                let settled = self.metrics().await;
                assert_eq!(metric_value(&settled, series), Some(value), "{series} went past {value}:\n{settled}");
                return settled;
            }
            assert!(Instant::now() < deadline, "{series} never reached {value}:\n{m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Backend {
    /// Sets the backend's failure/delay/version mode (see `/debug/mode`).
    pub async fn mode(&self, mode: serde_json::Value) {
        let r = reqwest::Client::new().post(self.url("/debug/mode")).json(&mode).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// Conditional requests the backend answered with 304.
    pub async fn conditionals(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(self.url("/debug/stats")).await.unwrap().json().await.unwrap();
        v["conditional"].as_u64().unwrap_or(0)
    }
}

/// `fastgate check` on `text`, written to a file of its own.
#[allow(dead_code)]
pub fn check_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastgate.toml");
    std::fs::write(&path, text).unwrap();
    fastgate_command().args(["check", "-c", path.to_str().unwrap()]).output().unwrap()
}

/// A raw TCP "backend" on a free port: it reads each request, writes `answer` (nothing, for a
/// server that closes without a word) and closes; with `None` it never answers nor closes.
/// Returns its address.
pub async fn raw_backend(answer: Option<&'static [u8]>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match answer {
                    Some(answer) => {
                        let _ = s.write_all(answer).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            });
        }
    });
    addr
}

/// A real `redis-server` on a port of its own, with no persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// TLS: the server's own arguments and redis-cli's.
    tls: Option<(Vec<String>, Vec<String>)>,
    /// Serves a Unix socket here instead of TCP (the directory lives as long as the server).
    unix: Option<(tempfile::TempDir, std::path::PathBuf)>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer { port: free_port(), child: None, tls: None, unix: None };
        r.restart();
        r
    }

    /// On a Unix socket only (`unix:///path`).
    #[allow(dead_code)]
    pub fn start_unix() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.sock");
        let mut r = RedisServer { port: 0, child: None, tls: None, unix: Some((dir, path)) };
        r.restart();
        r
    }

    /// Over TLS only, with `server`'s certificate, requiring a client certificate signed by
    /// `pki`'s CA; redis-cli uses `client`.
    pub fn start_tls(pki: &pki::Pki, server: &pki::Leaf, client: &pki::Leaf) -> RedisServer {
        let p = |p: &std::path::Path| p.display().to_string();
        let ca = p(&pki.ca());
        let server_args = vec![
            "--tls-cert-file".into(), p(&server.cert), "--tls-key-file".into(), p(&server.key),
            "--tls-ca-cert-file".into(), ca.clone(), "--tls-auth-clients".into(), "yes".into(),
        ];
        let cli_args = vec!["--tls".into(), "--cacert".into(), ca, "--cert".into(), p(&client.cert), "--key".into(), p(&client.key)];
        let mut r = RedisServer { port: free_port(), child: None, tls: Some((server_args, cli_args)), unix: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        if let Some((_, path)) = &self.unix {
            return format!("unix://{}", path.display());
        }
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on its port and waits until it answers PING.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        match (&self.tls, &self.unix) {
            (_, Some((_, path))) => cmd.args(["--port", "0", "--unixsocket"]).arg(path),
            (None, None) => cmd.args(["--port", &port]),
            (Some((server, _)), None) => cmd.args(["--port", "0", "--tls-port", &port]).args(server),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        isolate(&mut cmd);
        self.child = Some(cmd.spawn().expect("redis-server (scripts/setup installs it)"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(std::time::Instant::now() < deadline, "redis-server did not answer on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    /// `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let tls = self.tls.as_ref().map(|(_, cli)| cli.as_slice()).unwrap_or_default();
        let mut cmd = Command::new("redis-cli");
        match &self.unix {
            Some((_, path)) => cmd.arg("-s").arg(path),
            None => cmd.args(["-p", &self.port.to_string()]),
        };
        let out = cmd.args(tls).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many times a command ran (`INFO commandstats`), e.g. "evalsha".
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.unix.is_none() {
            release(self.port);
        }
    }
}
