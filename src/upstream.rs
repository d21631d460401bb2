//! Upstreams: a named group of servers, picked round-robin among the healthy ones, with active
//! HTTP health checks: the live part `runtime` materializes from an `UpstreamDef`.
//!
//! Built on pingora's load balancer, with a health check of our own (one connector for all).
//! Server addresses are resolved when the
//! config is compiled, never on the request path. An upstream whose definition is unchanged
//! across a reload is carried over whole, so its health state survives the reload; one whose
//! definition changed inherits its readiness and which servers have passed a check.
//!
//! Readiness needs a *passed* check: pingora starts every server healthy and marks it down
//! only after `unhealthy_threshold` failures, so its health alone would call an upstream
//! whose backend is not up yet ready for the first few checks.

use crate::model::plan::{HealthCheckSpec, UpstreamDef};
use crate::discovery::{LookupError, Resolver};
use crate::policy::concurrency::Concurrency;
use crate::tls::{TlsError, UpstreamTls};
use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub struct Upstream {
    pub name: String,
    pub def: UpstreamDef,
    lb: LoadBalancer<RoundRobin>,
    /// The addresses discovery found last; the load balancer's discovery reads it.
    found: Arc<ArcSwap<BTreeSet<Backend>>>,
    /// How many servers discovery found (the request path's count, without a set lookup).
    count: AtomicUsize,
    tls: Option<UpstreamTls>,
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
    /// A failed discovery round was logged; the next success logs the recovery.
    lookup_failing: AtomicBool,
    /// Keeps this upstream's pooled connections its own: pingora's pool key leaves out the
    /// CA a TLS connection was verified against, so two upstreams on one address with other
    /// trust would otherwise share connections.
    pool_group: u64,
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
    Balancer(String),
    #[error("invalid health check request: {0}")]
    HealthRequest(String),
    #[error("{0}")]
    Lookup(#[from] LookupError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn backend(addr: SocketAddr) -> Backend {
    Backend { addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr), weight: 1, ext: Default::default() }
}

/// pingora's discovery hook, answering what fastgate's own discovery found last.
struct Found(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait::async_trait]
impl ServiceDiscovery for Found {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.load()), HashMap::new()))
    }
}

/// The pool key part of an upstream: its name and TLS definition.
fn pool_group(name: &str, def: &UpstreamDef) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    format!("{:?}", def.tls).hash(&mut h);
    h.finish()
}

/// Drives a future that cannot wait (the load balancer's update over `Found`) to its end.
fn run_ready<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

impl Upstream {
    /// The upstream of `def` over `addrs`, the addresses its servers resolved to at this load.
    pub fn new(name: &str, def: UpstreamDef, addrs: Vec<SocketAddr>) -> Result<Self, UpstreamError> {
        if addrs.is_empty() {
            return Err(UpstreamError::NoServers);
        }
        let tls = def.tls.as_ref().map(UpstreamTls::load).transpose()?;
        let pool_group = pool_group(name, &def);
        let set: BTreeSet<Backend> = addrs.iter().copied().map(backend).collect();
        let found = Arc::new(ArcSwap::from_pointee(set));
        let lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Found(found.clone()))));
        run_ready(lb.update())
            .ok_or_else(|| UpstreamError::Balancer("the first update did not complete".into()))?
            .map_err(|e| UpstreamError::Balancer(e.to_string()))?;
        let servers = Arc::new(Servers(ArcSwap::from_pointee(addrs.iter().map(|a| Arc::new(ServerState::new(*a))).collect())));
        let mut upstream = Upstream {
            name: name.to_string(),
            concurrency: def.concurrency.clone().map(|c| Arc::new(Concurrency::new(c))),
            metrics: Default::default(),
            checked: AtomicBool::new(def.health_check.is_none()),
            count: AtomicUsize::new(addrs.len()),
            found,
            tls,
            def,
            lb,
            servers,
            inherited_ready: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            lookup_failing: AtomicBool::new(false),
            pool_group,
        };
        if let Some(hc) = &upstream.def.health_check {
            let check = upstream.health_check(hc)?;
            upstream.lb.set_health_check(Box::new(check));
        }
        Ok(upstream)
    }

    fn health_check(&self, hc: &HealthCheckSpec) -> Result<HttpCheck, UpstreamError> {
        let host = self.sni().unwrap_or("localhost").to_string();
        let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None).map_err(|e| UpstreamError::HealthRequest(e.to_string()))?;
        req.insert_header("Host", host)
            .and_then(|_| req.insert_header("User-Agent", "fastgate-health-check"))
            .map_err(|e| UpstreamError::HealthRequest(e.to_string()))?;
        // the request path's peer (trust, client certificate, SNI); each check sets the address
        let mut peer = self.peer(SocketAddr::from(([0, 0, 0, 0], 0)));
        peer.options.connection_timeout = Some(hc.timeout);
        peer.options.read_timeout = Some(hc.timeout);
        peer.options.write_timeout = Some(hc.timeout);
        // built here, while the config is made live, rather than by the first check on the runtime
        check_connector();
        Ok(HttpCheck {
            peer,
            req,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
            servers: self.servers.clone(),
        })
    }

    /// The name sent (SNI) and verified over TLS: the configured one, else the first server's
    /// host name when it is a name.
    fn sni(&self) -> Option<&str> {
        let tls = self.tls.as_ref()?;
        tls.sni.as_deref().or_else(|| self.def.servers.iter().find(|s| s.literal().is_none()).map(|s| s.host.as_str()))
    }

    fn tls_options(&self, o: &mut PeerOptions) {
        if let Some(tls) = &self.tls {
            o.ca = tls.ca.clone();
            o.verify_cert = tls.verify;
            o.verify_hostname = tls.verify;
        }
    }

    /// The peer for one exchange with `addr`.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.tls.is_some(), self.sni().unwrap_or_default().to_string());
        peer.options.idle_timeout = Some(self.def.idle_timeout);
        peer.group_key = self.pool_group;
        self.tls_options(&mut peer.options);
        if let Some(client) = self.tls.as_ref().and_then(|t| t.client.clone()) {
            peer.client_cert_key = Some(client);
        }
        peer
    }

    /// The addresses in force.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.servers.0.load().iter().map(|s| s.addr).collect()
    }

    /// Resolves the servers' names again; when the addresses changed, the balancer moves to the
    /// new set (servers kept keep their health and passive-health state). A failed lookup
    /// keeps the addresses in force, logged once until lookups work again.
    pub async fn rediscover(&self, resolver: &Resolver) {
        if self.def.servers.iter().all(|s| s.literal().is_some()) {
            return;
        }
        let addrs = match resolver.lookup_all(&self.def.servers).await {
            Ok(a) => a,
            Err(e) => {
                if !self.lookup_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(upstream = %self.name, error = %e, "upstream discovery failed; keeping the servers in force");
                }
                return;
            }
        };
        if self.lookup_failing.swap(false, Ordering::AcqRel) {
            tracing::info!(upstream = %self.name, "upstream discovery works again");
        }
        let before = self.addresses();
        if addrs.is_empty() || addrs == before {
            return;
        }
        let old = self.servers.0.load_full();
        let states: Vec<Arc<ServerState>> = addrs
            .iter()
            .map(|a| old.iter().find(|s| s.addr == *a).cloned().unwrap_or_else(|| Arc::new(ServerState::new(*a))))
            .collect();
        self.servers.0.store(Arc::new(states));
        self.found.store(Arc::new(addrs.iter().copied().map(backend).collect()));
        if let Err(e) = self.lb.update().await {
            tracing::warn!(upstream = %self.name, error = %e, "cannot apply discovered servers");
            return;
        }
        self.count.store(addrs.len(), Ordering::Release);
        tracing::info!(upstream = %self.name, before = ?before, after = ?addrs, "upstream servers changed");
    }

    /// Takes over what `previous` (the same name, another definition) knew: its readiness,
    /// until this one's first round of checks, and which of the same servers passed, so a
    /// reload does not make `/readyz` fall while the new upstream runs its first check.
    pub fn inherit(&self, previous: &Upstream) {
        self.inherited_ready.store(previous.is_ready(), Ordering::Release);
        for server in self.servers.0.load().iter() {
            if previous.servers.get(server.addr).is_some_and(|s| s.passed.load(Ordering::Acquire)) {
                server.passed.store(true, Ordering::Release);
            }
        }
    }

    /// The next healthy server, round-robin, leaving out `avoid` (a server that just failed
    /// this request) and servers ejected by passive health while another is available;
    /// `None` when every server fails its health check.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.count.load(Ordering::Relaxed);
        if n == 1 {
            // nothing to choose between: only the health check can take it out, and its
            // verdict is mirrored in the server's state (the balancer's pick hashes the backend
            // to look its health up: about 1.6k instructions a request)
            if let [only] = self.servers.0.load().as_slice() {
                return only.healthy.load(Ordering::Acquire).then_some(only.addr);
            }
            return self.lb.select(b"", 1).and_then(|b| b.addr.as_inet().copied());
        }
        let now = now_ms();
        let servers = self.servers.0.load();
        let usable = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| {
                    Some(*a) != avoid && servers.iter().find(|s| s.addr == *a).is_none_or(|s| !s.ejected(now))
                })
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
        if self.def.eject_after == 0 || fails < self.def.eject_after || self.count.load(Ordering::Relaxed) == 1 {
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
        self.count.load(Ordering::Relaxed).saturating_sub(1).min(2)
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
                servers: vec![crate::model::plan::ServerSpec { host: "127.0.0.1".into(), port: 1 }],
                tls: None,
                idle_timeout: std::time::Duration::from_secs(60),
                health_check: None,
                concurrency: None,
                eject_after: 3,
                eject_for: std::time::Duration::from_secs(10),
            },
            vec![SocketAddr::from(([127, 0, 0, 1], 1))],
        )
        .expect("valid test upstream")
    }
}

/// What fastgate knows of each server beside pingora's health; replaced when discovery
/// changes the set.
#[derive(Debug)]
struct Servers(ArcSwap<Vec<Arc<ServerState>>>);

#[derive(Debug)]
struct ServerState {
    addr: SocketAddr,
    /// It has passed a health check.
    passed: AtomicBool,
    /// The health check's verdict (pingora's, mirrored by `health_status_change`): servers
    /// start healthy, as in pingora.
    healthy: AtomicBool,
    /// Failed exchanges in a row.
    fails: AtomicU32,
    /// Left out until then (milliseconds since `epoch()`).
    ejected_until_ms: AtomicU64,
}

impl ServerState {
    fn new(addr: SocketAddr) -> Self {
        ServerState { addr, passed: AtomicBool::new(false), healthy: AtomicBool::new(true), fails: AtomicU32::new(0), ejected_until_ms: AtomicU64::new(0) }
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Acquire) > now_ms
    }
}

impl Servers {
    fn get(&self, addr: SocketAddr) -> Option<Arc<ServerState>> {
        self.0.load().iter().find(|s| s.addr == addr).cloned()
    }
}

/// The connector every health check shares. pingora's `HttpHealthCheck` builds a connector of
/// its own (HTTP/1 and HTTP/2, each loading the system's CA store: about 2.7 ms and the parsed
/// store's memory per upstream, at start-up and again whenever an upstream is rebuilt); one
/// HTTP/1 connector serves every check, its CA store loaded once per process. Per-upstream trust
/// (a CA file, a client certificate) travels with each check's peer, as on the request path.
fn check_connector() -> &'static pingora::connectors::http::v1::Connector {
    static CONNECTOR: OnceLock<pingora::connectors::http::v1::Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| pingora::connectors::http::v1::Connector::new(None))
}

/// An active HTTP check: a GET of the configured path must answer 200 (the body is drained,
/// the connection closed). A server's first pass is noted for readiness.
struct HttpCheck {
    /// Template: each check sets the server's address.
    peer: HttpPeer,
    req: RequestHeader,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
    servers: Arc<Servers>,
}

impl HttpCheck {
    async fn probe(&self, target: &Backend) -> pingora::Result<()> {
        let mut peer = self.peer.clone();
        peer._address = target.addr.clone();
        let (mut session, _) = check_connector().get_http_session(&peer).await?;
        session.read_timeout = peer.options.read_timeout;
        session.write_timeout = peer.options.write_timeout;
        session.write_request_header(Box::new(self.req.clone())).await?;
        session.finish_body().await?;
        session.read_response().await?;
        let status = session.resp_header().map_or(0, |r| r.status.as_u16());
        if status != 200 {
            return pingora::Error::e_explain(pingora::ErrorType::CustomCode("non 200 code", status), "during http health check");
        }
        while session.read_body_ref().await?.is_some() {}
        Ok(())
    }
}

#[async_trait::async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.probe(target).await?;
        if let Some(s) = target.addr.as_inet().and_then(|a| self.servers.get(*a)) {
            s.passed.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let Some(s) = target.addr.as_inet().and_then(|a| self.servers.get(*a)) {
            s.healthy.store(healthy, Ordering::Release);
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success { self.healthy_threshold } else { self.unhealthy_threshold }
    }
}
