//! Wires the pingora server: the proxy listener, the admin listener, the health checker, the
//! drain watcher, and signal handling (SIGHUP reloads; SIGTERM and SIGINT drain).

use crate::admin::Admin;
use crate::app::App;
use crate::proxy::conn::{Connections, Edge, Listener};
use crate::proxy::Gateway;
use crate::reload;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::protocols::ALPN;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Makes SIGHUP harmless from the first instant: its default action kills the process, and
/// pingora installs no handler for it. tokio's registration replaces the default action for
/// the life of the process, so this only needs a runtime long enough to register.
pub fn guard_sighup() {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => {
            let registered = rt.block_on(async { signal(SignalKind::hangup()).map(drop) });
            if let Err(e) = registered {
                tracing::warn!(error = %e, "cannot install SIGHUP handler");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot build runtime for signal set-up"),
    }
}

/// A listening address fastgate cannot have.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (server.{key}): {source}")]
pub struct ListenError {
    key: &'static str,
    addr: std::net::SocketAddr,
    source: std::io::Error,
}

impl ListenError {
    fn tls(addr: std::net::SocketAddr, e: impl std::fmt::Display) -> Self {
        ListenError { key: "tls", addr, source: std::io::Error::other(e.to_string()) }
    }
}

/// The HTTPS listener's certificate resolver: asks the runtime in force, so a reload that
/// loaded new certificates applies from the next handshake.
struct CertResolver {
    app: Arc<App>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bootstrap::CertResolver")
    }
}

impl CertResolver {
    fn new(app: Arc<App>) -> Self {
        CertResolver { app }
    }
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.app.runtime().certificates.as_ref()?.pick(hello.server_name())
    }
}

/// The HTTPS listener needs no handshake callbacks; pingora's settings builder asks for some.
struct NoCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// Binds each address once and lets it go, so a taken port stops start-up at once with one
/// line: pingora, given a taken address, retries for 30 s, panics, and leaves a live process
/// with no listener.
fn check_addresses(s: &crate::model::plan::Settings) -> Result<(), ListenError> {
    let probe = s.probe_listen.map(|a| ("probe_listen", a));
    let tls = s.tls.as_ref().map(|t| ("tls.listen", t.listen));
    for (key, addr) in [("listen", s.listen), ("admin_listen", s.admin_listen)].into_iter().chain(probe).chain(tls) {
        std::net::TcpListener::bind(addr).map_err(|source| ListenError { key, addr, source })?;
    }
    Ok(())
}

/// Runs the gateway until it is told to stop. With `upgrade`, the listening sockets come from
/// the running fastgate that receives SIGQUIT (over `server.upgrade_sock`), not from `bind`.
pub fn run(app: Arc<App>, upgrade: bool) -> Result<(), ListenError> {
    let s = &app.settings;
    if !upgrade {
        check_addresses(s)?;
    }
    let conf = ServerConf {
        threads: s.threads,
        // Upper bound only: the drain watcher exits as soon as in-flight requests are done,
        // or when `shutdown_grace` runs out, logging what it cuts. pingora's own timer is set
        // later, so that it never ends the process first and silently.
        grace_period_seconds: Some(s.shutdown_grace.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per thread: no cross-thread wake-ups on the request path
        // (measured: 26.5 vs 29.5 us of CPU per proxied request, bench/README.md).
        work_stealing: false,
        upgrade_sock: s.upgrade_sock.clone(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool,
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt { upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let conns = Arc::new(Connections::default());
    let http = pingora::proxy::http_proxy(&server.configuration, Gateway::new(app.clone()));
    let mut proxy = Service::new("fastgate proxy".to_string(), Edge::new(http, app.clone(), conns.clone(), Listener::Plain));
    // No L4 read buffer on plain HTTP: pingora reads each head into a buffer of its own and
    // bodies in 64 KiB reads, so the 64 KiB BufReader it puts in front by default only copied
    // bytes twice, and held that much memory per idle keep-alive connection (bench scenario 10).
    // HTTPS keeps it: rustls reads records in small pieces.
    let plain = L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE);
    proxy.add_listener(ListenerConfig::tcp(s.listen.to_string()).l4_buffer(plain));
    if let Some(tls) = &s.tls {
        let http = pingora::proxy::http_proxy(&server.configuration, Gateway::new(app.clone()));
        let mut https = Service::new("fastgate https".to_string(), Edge::new(http, app.clone(), conns, Listener::Tls));
        let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks)).map_err(|e| ListenError::tls(tls.listen, e))?;
        settings.set_cert_resolver(Arc::new(CertResolver::new(app.clone())));
        settings.set_alpn(if tls.http2 { ALPN::H2H1 } else { ALPN::H1 });
        https.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        server.add_service(https);
    }

    let mut admin = Service::new("fastgate admin".to_string(), Admin::new(app.clone()));
    admin.add_tcp(&s.admin_listen.to_string());

    server.add_service(proxy);
    server.add_service(admin);
    if let Some(addr) = s.probe_listen {
        let mut probes = Service::new("fastgate probes".to_string(), Admin::probes(app.clone()));
        probes.add_tcp(&addr.to_string());
        server.add_service(probes);
    }
    server.add_service(background_service("health checks", HealthChecks { app: app.clone() }));
    server.add_service(background_service("discovery", Discovery { app: app.clone() }));
    server.add_service(background_service("drain", Drain { app: app.clone() }));
    server.add_service(background_service("maintenance", Maintenance { app: app.clone() }));
    if !app.cache.settings.warm.is_empty() {
        server.add_service(background_service("cache warming", Warming { app: app.clone() }));
    }

    tracing::info!(
        listen = %s.listen,
        admin = %s.admin_listen,
        probes = ?s.probe_listen,
        config = %app.config_path.display(),
        hash = %app.runtime().hash,
        "fastgate starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { app }),
    });
    Ok(())
}

/// Resolves upstream names again every `resolve_interval`, over the config in force.
struct Discovery {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = self.app.runtime().resolve_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let runtime = self.app.runtime();
            for up in runtime.upstreams.values() {
                up.rediscover(&runtime.resolver).await;
            }
        }
    }
}

/// Runs each upstream's health checks when due, over the config in force.
struct HealthChecks {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            for up in self.app.runtime().upstreams.values() {
                let up = up.clone();
                tokio::spawn(async move { up.check_if_due().await });
            }
        }
    }
}

/// Periodic upkeep, every `TICK`: the error-log summary, the status page's window, and
/// rate-limit keys back at full burst dropped (so keyed state does not grow without bound),
/// with the keys and cache gauges updated.
struct Maintenance {
    app: Arc<App>,
}

const TICK: Duration = Duration::from_secs(10);

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = tokio::time::Instant::now() + crate::app::HISTORY_BUCKET;
        let mut history = tokio::time::interval_at(start, crate::app::HISTORY_BUCKET);
        history.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = history.tick() => {
                    self.app.sample_history();
                    continue;
                }
                _ = shutdown.changed() => return,
            }
            self.app.errors.flush(TICK.as_secs());
            self.app.status.snapshot(&self.app.metrics);
            let runtime = self.app.runtime();
            let mut keys = 0;
            for route in runtime.routes.iter() {
                for limit in route.policies.rate_limit.iter().flat_map(|rl| rl.limits.iter()) {
                    limit.evict_idle();
                    keys += limit.tracked_keys();
                }
            }
            self.app.metrics.set_rate_limit_keys(keys);
            let st = self.app.cache.store.stats();
            self.app.metrics.set_cache_stats(st.entries, st.bytes, st.evictions);
        }
    }
}

/// Fetches `[[cache.warm]]` paths through the gateway's own listener at start-up and on every
/// `warm_interval`, so they take the normal cache path and the first users hit a warm cache.
struct Warming {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Warming {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let settings = &self.app.cache.settings;
        let mut target = self.app.settings.listen;
        if target.ip().is_unspecified() {
            target.set_ip(if target.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        let client = match reqwest::Client::builder().timeout(Duration::from_secs(30)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cache warming disabled: cannot build HTTP client");
                self.app.set_warmed();
                return;
            }
        };
        let mut tick = tokio::time::interval(settings.warm_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let mut ok = 0;
            for w in &settings.warm {
                // Retried with back-off: the first round can start before the listener (or the
                // backend) is up. Bounded, so a path that keeps failing cannot stall the rounds.
                let mut wait = Duration::from_millis(100);
                let give_up = Instant::now() + settings.warm_interval.min(Duration::from_secs(60));
                loop {
                    let mut req = client.get(format!("http://{target}{}", w.path)).header("x-fastgate-warm", "1");
                    for (k, v) in &w.headers {
                        req = req.header(k, v);
                    }
                    let result = match req.send().await.and_then(|r| r.error_for_status()) {
                        // read the body: the cache stores what the client side consumed
                        Ok(r) => r.bytes().await.map(drop),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => {
                            ok += 1;
                            break;
                        }
                        Err(e) if Instant::now() + wait < give_up => {
                            tracing::debug!(path = %w.path, error = %e, retry_ms = wait.as_millis() as u64, "cache warming request failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = shutdown.changed() => return,
                            }
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            tracing::warn!(path = %w.path, error = %e, "cache warming request failed");
                            break;
                        }
                    }
                }
            }
            tracing::info!(warmed = ok, of = settings.warm.len(), "cache warming round done");
            self.app.set_warmed();
        }
    }
}

/// How long nothing may be in flight before a drain ends.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// On shutdown, waits for in-flight requests to finish (up to the grace period), then exits.
/// pingora alone would always wait the whole grace period, even when idle.
struct Drain {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            return;
        }
        let started = Instant::now();
        let grace = self.app.settings.shutdown_grace;
        tracing::info!(in_flight = self.app.in_flight(), grace_s = grace.as_secs(), "draining");
        // Done when nothing has been in flight for a quiet window. A new connection counts
        // from its accept (until its first request is answered), the quiet window covers one
        // accepted by the kernel but not yet by pingora's accept loop.
        let mut quiet_since = Instant::now();
        while started.elapsed() < grace {
            if self.app.busy() > 0 {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= DRAIN_QUIET {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.app.busy();
        if left > 0 {
            tracing::warn!(in_flight = left, "grace period over; exiting with requests in flight");
        } else {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained; exiting");
        }
        if let Some(t) = &self.app.tracing {
            t.flush();
        }
        std::process::exit(0);
    }
}

/// pingora's signal handling plus SIGHUP for reload. SIGINT drains like SIGTERM: a container
/// runtime or a terminal should not cut requests short. SIGQUIT keeps pingora's meaning
/// (hand listening sockets to a new process).
struct Signals {
    app: Arc<App>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (mut hup, mut term, mut int, mut quit) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) {
            (Ok(h), Ok(t), Ok(i), Ok(q)) => (h, t, i, q),
            _ => {
                tracing::error!("cannot install signal handlers; shutting down");
                return ShutdownSignal::FastShutdown;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    // Reading one small file; a reload is rare and off the request path.
                    let _ = reload::reload(&self.app);
                }
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); return ShutdownSignal::GracefulTerminate; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); return ShutdownSignal::GracefulTerminate; }
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            }
        }
    }
}
