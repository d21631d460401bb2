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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Which servers have passed a check since this upstream (or the one it replaced) was built.
    passed: Arc<Passed>,
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
        let passed = Arc::new(Passed(def.servers.iter().map(|a| (*a, AtomicBool::new(false))).collect()));
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
            lb.set_health_check(Box::new(Recorded { inner: check, passed: passed.clone() }));
        }
        let checked = AtomicBool::new(def.health_check.is_none());
        Ok(Upstream {
            name: name.to_string(),
            concurrency: def.concurrency.clone().map(|c| Arc::new(Concurrency::new(c))),
            metrics: Default::default(),
            def,
            lb,
            checked,
            passed,
            inherited_ready: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
        })
    }

    /// Takes over what `previous` (the same name, another definition) knew: its readiness,
    /// until this one's first round of checks, and which of the same servers passed, so a
    /// reload does not make `/readyz` fall while the new upstream runs its first check.
    pub fn inherit(&self, previous: &Upstream) {
        self.inherited_ready.store(previous.is_ready(), Ordering::Release);
        for (addr, ok) in &self.passed.0 {
            if previous.passed.get(*addr) {
                ok.store(true, Ordering::Release);
            }
        }
    }

    /// The next healthy server, round-robin; `None` when every server is unhealthy.
    pub fn select(&self) -> Option<SocketAddr> {
        let n = self.def.servers.len();
        self.lb
            .select(b"", n)
            .and_then(|b| b.addr.as_inet().copied())
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
        self.server_health().iter().any(|(addr, ok)| *ok && self.passed.get(*addr))
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
            },
        )
        .expect("valid test upstream")
    }
}

/// Per server: has it passed a health check yet.
#[derive(Debug)]
struct Passed(Vec<(SocketAddr, AtomicBool)>);

impl Passed {
    fn get(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|(a, ok)| *a == addr && ok.load(Ordering::Acquire))
    }

    fn set(&self, addr: SocketAddr) {
        if let Some((_, ok)) = self.0.iter().find(|(a, _)| *a == addr) {
            ok.store(true, Ordering::Release);
        }
    }
}

/// pingora's HTTP check, noting each server's first pass for readiness.
struct Recorded {
    inner: HttpHealthCheck,
    passed: Arc<Passed>,
}

#[async_trait::async_trait]
impl HealthCheck for Recorded {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.inner.check(target).await?;
        if let Some(addr) = target.addr.as_inet() {
            self.passed.set(*addr);
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
