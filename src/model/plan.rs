//! The plan's process-level definitions: listeners, upstreams and their servers, health checks
//! and TLS, shared state, telemetry and the cache's own settings. Plain, comparable values
//! (`runtime` compares them across reloads to keep live parts whose definition did not change);
//! the route-level definitions, which aggregate each policy's, are in `config::plan`.

use http::HeaderName;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Process-level settings: read at start-up; a reload that changes them is logged, not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Serves only the probes and metrics, so they can be public while the admin API is not.
    pub probe_listen: Option<SocketAddr>,
    pub threads: usize,
    pub shutdown_grace: Duration,
    /// The Unix socket a graceful upgrade (SIGQUIT, `run --upgrade`) passes listeners over.
    pub upgrade_sock: String,
    /// Idle upstream connections pingora keeps for reuse.
    pub upstream_keepalive_pool: usize,
    pub telemetry: TelemetryDef,
    pub cache: CacheSettings,
    /// `[server.tls]`: the HTTPS listener (its certificates reload; the address does not).
    pub tls: Option<TlsListenDef>,
    /// `[state]`: this process only, or shared through Redis.
    pub state: StateDef,
}

/// Where the state replicas share lives.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StateDef {
    #[default]
    Memory,
    Redis(RedisDef),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisDef {
    pub url: String,
    pub pool_size: usize,
    pub timeout: Duration,
    pub key_prefix: String,
    /// Tokens leased per round trip (1: exact).
    pub lease: u32,
    pub precheck: bool,
    pub local_cache_size: u64,
    pub max_object_size: usize,
    /// `rediss://`: a CA instead of the system roots, and a client certificate and key.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl RedisDef {
    /// The URL without its password, for logs and the status page.
    pub fn display_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &self.url[..s + 3], &self.url[at..]),
            _ => self.url.clone(),
        }
    }
}

/// The HTTPS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListenDef {
    pub listen: SocketAddr,
    /// HTTP/2 offered by ALPN.
    pub http2: bool,
    /// The port in redirects to HTTPS.
    pub public_port: u16,
}

/// One certificate of the HTTPS listener, as configured: read (again) at every load, so a
/// renewed file is served after a SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names it answers for SNI; empty: the certificate's own DNS names.
    pub names: Vec<String>,
}

/// An upstream server as written: an address or a name resolved by discovery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
}

impl ServerSpec {
    /// The address when `host` is an IP literal: nothing to resolve.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl std::fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// HTTPS to an upstream's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsDef {
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name sent and verified; `None`: the server's host name when it is a name.
    pub sni: Option<String>,
    pub verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
}

/// What an upstream is, as configured; two equal definitions share one live upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamDef {
    /// Names resolve to every address they have, each a server with its own health.
    pub servers: Vec<ServerSpec>,
    pub tls: Option<UpstreamTlsDef>,
    /// How long an idle pooled connection to a server is kept.
    pub idle_timeout: Duration,
    pub health_check: Option<HealthCheckSpec>,
    /// In-flight requests across every route that uses this upstream.
    pub concurrency: Option<ConcurrencyDef>,
    /// Passive health: consecutive failures that eject a server (0: never), and for how long.
    pub eject_after: u32,
    pub eject_for: Duration,
}

/// `[telemetry]` as written; `telemetry` merges it with the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryDef {
    /// `None`: on when an OTLP endpoint is configured or in the environment.
    pub traces: Option<bool>,
    pub endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    pub service_name: Option<String>,
    /// `None`: the SDK reads `OTEL_TRACES_SAMPLER` / `_ARG` (default parent-based, always on).
    pub sampler: Option<SamplerSpec>,
    pub resource_attributes: Vec<(String, String)>,
    /// `None`: the built-in buckets.
    pub latency_buckets: Option<Vec<f64>>,
    /// Extra CA bundle for an `https://` collector.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerSpec {
    pub fn parse(name: &str, arg: Option<f64>) -> Result<Self, String> {
        let ratio = || arg.filter(|a| (0.0..=1.0).contains(a)).ok_or("needs `sampler_arg` between 0.0 and 1.0".to_string());
        Ok(match name {
            "always_on" => SamplerSpec::AlwaysOn,
            "always_off" => SamplerSpec::AlwaysOff,
            "traceidratio" => SamplerSpec::Ratio(ratio()?),
            "parentbased_always_on" => SamplerSpec::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerSpec::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerSpec::ParentBasedRatio(ratio()?),
            other => return Err(format!("unknown sampler {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyDef {
    pub max: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
}

/// Process-level cache settings (`[cache]`): read at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub max_size: u64,
    pub max_object_size: usize,
    /// How long concurrent misses wait for the one fetching; then they go upstream themselves.
    pub lock_timeout: Duration,
    pub tag_header: HeaderName,
    pub warm: Vec<WarmRequest>,
    pub warm_interval: Duration,
    /// Readiness waits at most this long for the first warming round.
    pub warm_ready_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRequest {
    pub path: String,
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: 256 * 1024 * 1024,
            max_object_size: 8 * 1024 * 1024,
            lock_timeout: Duration::from_secs(5),
            tag_header: HeaderName::from_static("cache-tag"),
            warm: Vec::new(),
            warm_interval: Duration::from_secs(300),
            warm_ready_timeout: Duration::from_secs(5),
        }
    }
}
