//! Upstreams: a named group of servers, picked round-robin among the healthy ones, with active
//! HTTP health checks: the live state `state` materializes from an `UpstreamDef`.
//!
//! Built on pingora's load balancer and health check. Server addresses are resolved when the
//! config is compiled, never on the request path. An upstream whose definition is unchanged
//! across a reload is carried over whole, so its health state survives the reload; one whose
//! definition changed inherits its readiness and which servers have passed a check.
//!
//! Readiness needs a *passed* check: pingora starts every server healthy and marks it down
//! only after `unhealthy_threshold` failures, so its health alone would call an upstream
//! whose backend is not up yet ready for the first few checks.

pub use crate::config::plan::{HealthCheckSpec, UpstreamDef};
use crate::policy::concurrency::Concurrency;
use std::sync::Arc;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub struct Upstream {
    pub name: String,
    pub def: UpstreamDef,
    lb: LoadBalancer<RoundRobin>,
    pub concurrency: Option<Arc<Concurrency>>,
    /// Metric series of this upstream, resolved on first use.
    pub metrics: crate::telemetry::metrics::UpstreamHandles,
    /// Set once the first round of health checks has finished (or at once without checks).
    checked: AtomicBool,
    /// Per server: has it passed a check since this upstream (or the one it replaced) was
    /// built; its run of failed exchanges and ejection (passive health).
    servers: Arc<Servers>,
    /// Readiness until the first round: that of the upstream this one replaced on a reload.
    inherited_ready: AtomicBool,
    /// Milliseconds since `epoch()` at which the next check is due.
    next_check_ms: AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("def", &self.def).finish()
    }
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream has no servers")]
    NoServers,
    #[error("cannot build load balancer: {0}")]
    Balancer(#[from] std::io::Error),
    #[error("invalid health check request: {0}")]
    HealthRequest(String),
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Upstream {
    pub fn new(name: &str, def: UpstreamDef) -> Result<Self, UpstreamError> {
        if def.servers.is_empty() {
            return Err(UpstreamError::NoServers);
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(def.servers.iter().copied())?;
        let servers = Arc::new(Servers(def.servers.iter().map(|a| ServerState::new(*a)).collect()));
        if let Some(hc) = &def.health_check {
            let mut check = HttpHealthCheck::new("localhost", false);
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
                .map_err(|e| UpstreamError::HealthRequest(e.to_string()))?;
            req.insert_header("Host", "localhost")
                .and_then(|_| req.insert_header("User-Agent", "fastgate-health-check"))
                .map_err(|e| UpstreamError::HealthRequest(e.to_string()))?;
            check.req = req;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            lb.set_health_check(Box::new(Recorded { inner: check, servers: servers.clone() }));
        }
        let checked = AtomicBool::new(def.health_check.is_none());
        Ok(Upstream {
            name: name.to_string(),
            concurrency: def.concurrency.clone().map(|c| Arc::new(Concurrency::new(c))),
            metrics: Default::default(),
            def,
            lb,
            checked,
            servers,
            inherited_ready: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
        })
    }

    /// Takes over what `previous` (the same name, another definition) knew: its readiness,
    /// until this one's first round of checks, and which of the same servers passed, so a
    /// reload does not make `/readyz` fall while the new upstream runs its first check.
    pub fn inherit(&self, previous: &Upstream) {
        self.inherited_ready.store(previous.is_ready(), Ordering::Release);
        for server in &self.servers.0 {
            if previous.servers.get(server.addr).is_some_and(|s| s.passed.load(Ordering::Acquire)) {
                server.passed.store(true, Ordering::Release);
            }
        }
    }

    /// The next healthy server, round-robin, leaving out `avoid` (a server that just failed
    /// this request) and servers ejected by passive health while another is available;
    /// `None` when every server fails its health check.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.def.servers.len();
        if n == 1 {
            // nothing to choose between: only the health check can take it out
            return self.lb.select(b"", 1).and_then(|b| b.addr.as_inet().copied());
        }
        let now = now_ms();
        let usable = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| Some(*a) != avoid && self.servers.get(*a).is_none_or(|s| !s.ejected(now)))
        };
        self.lb
            .select_with(b"", n, usable)
            .or_else(|| self.lb.select(b"", n))
            .and_then(|b| b.addr.as_inet().copied())
    }

    /// Notes an exchange with `addr` that failed (connect, reset, timeout): after
    /// `eject_after` in a row the server is left out for `eject_for`. Returns true when this
    /// failure ejected it.
    pub fn failed(&self, addr: SocketAddr) -> bool {
        let Some(s) = self.servers.get(addr) else { return false };
        let fails = s.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if self.def.eject_after == 0 || fails < self.def.eject_after || self.def.servers.len() == 1 {
            return false;
        }
        s.fails.store(0, Ordering::Release);
        s.ejected_until_ms.store(now_ms() + self.def.eject_for.as_millis() as u64, Ordering::Release);
        tracing::warn!(upstream = %self.name, server = %addr, failures = fails, eject_s = self.def.eject_for.as_secs_f64(), "server ejected by passive health");
        true
    }

    /// Notes an exchange with `addr` that worked: its run of failures ends.
    pub fn succeeded(&self, addr: SocketAddr) {
        if let Some(s) = self.servers.get(addr)
            && s.fails.load(Ordering::Relaxed) != 0
        {
            s.fails.store(0, Ordering::Release);
        }
    }

    /// Servers that may get another attempt after a connect failure.
    pub fn failover_attempts(&self) -> usize {
        (self.def.servers.len() - 1).min(2)
    }

    /// Servers with their current health.
    pub fn server_health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| Some((*b.addr.as_inet()?, backends.ready(b))))
            .collect()
    }

    /// At least one server is healthy and has passed a check (without checks: always). Before
    /// this upstream's first round, what the upstream it replaced said.
    pub fn is_ready(&self) -> bool {
        if self.def.health_check.is_none() {
            return true;
        }
        if !self.checked.load(Ordering::Acquire) {
            return self.inherited_ready.load(Ordering::Acquire);
        }
        self.server_health()
            .iter()
            .any(|(addr, ok)| *ok && self.servers.get(*addr).is_some_and(|s| s.passed.load(Ordering::Acquire)))
    }

    /// Runs a health check round if one is due. Called from the health-check service.
    pub async fn check_if_due(&self) {
        let Some(hc) = &self.def.health_check else {
            return;
        };
        let now = now_ms();
        let due = self.next_check_ms.load(Ordering::Acquire);
        if now < due {
            return;
        }
        let next = now + hc.interval.as_millis() as u64;
        if self
            .next_check_ms
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another task took this round
        }
        self.lb.backends().run_health_check(true).await;
        self.checked.store(true, Ordering::Release);
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Upstream::new(
            "test",
            UpstreamDef {
                servers: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
                idle_timeout: std::time::Duration::from_secs(60),
                health_check: None,
                concurrency: None,
                eject_after: 3,
                eject_for: std::time::Duration::from_secs(10),
            },
        )
        .expect("valid test upstream")
    }
}

/// What fastgate knows of each server beside pingora's health.
#[derive(Debug)]
struct Servers(Vec<ServerState>);

#[derive(Debug)]
struct ServerState {
    addr: SocketAddr,
    /// It has passed a health check.
    passed: AtomicBool,
    /// Failed exchanges in a row.
    fails: AtomicU32,
    /// Left out until then (milliseconds since `epoch()`).
    ejected_until_ms: AtomicU64,
}

impl ServerState {
    fn new(addr: SocketAddr) -> Self {
        ServerState { addr, passed: AtomicBool::new(false), fails: AtomicU32::new(0), ejected_until_ms: AtomicU64::new(0) }
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Acquire) > now_ms
    }
}

impl Servers {
    fn get(&self, addr: SocketAddr) -> Option<&ServerState> {
        self.0.iter().find(|s| s.addr == addr)
    }
}

/// pingora's HTTP check, noting each server's first pass for readiness.
struct Recorded {
    inner: HttpHealthCheck,
    servers: Arc<Servers>,
}

#[async_trait::async_trait]
impl HealthCheck for Recorded {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.inner.check(target).await?;
        if let Some(s) = target.addr.as_inet().and_then(|a| self.servers.get(*a)) {
            s.passed.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}
