//! The routes file as written: serde structs that mirror the TOML, nothing more.
//!
//! Every table denies unknown keys (a typo is an error with a "did you mean", never a silently
//! ignored setting). Every leaf value is `Spanned`, so any later check can point at it. No `flatten` or
//! `untagged`: both lose TOML positions.

use crate::model::units::{Dur, EnvString, OneOrList, Size};
use crate::policy::PolicyKeys;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The listeners, limits on what clients send, and process settings.
    #[serde(default)]
    pub server: RawServer,
    /// `[upstreams.NAME]`: the backends routes send requests to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Policy every route inherits, key by key, unless the route sets the key itself.
    #[serde(default)]
    pub defaults: RawPolicy,
    /// `[[routes]]`, in any order: a request goes to the most specific match (an exact path, then the longest template or prefix).
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// OTLP traces and the metrics' latency buckets.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// The response cache's store (start-up only).
    #[serde(default)]
    pub cache: RawCache,
    /// Where state shared by replicas lives: this process, or Redis.
    #[serde(default)]
    pub state: RawState,
    /// `[entities.NAME]`: the resources the backend serves and how each is identified.
    #[serde(default)]
    pub entities: BTreeMap<String, Spanned<RawEntity>>,
}

/// `[entities.Article]`: `id = "slug"`, `item = "/api/articles/{slug}"`, `lists = "creates"`.
#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    /// The member of its JSON objects that identifies it; the item path's last parameter
    /// name when unset.
    #[schema(example = "id")]
    pub id: Option<Spanned<String>>,
    /// The item path, or several (a router included twice): its last segment is the
    /// identifying parameter.
    #[schema(example = "/api/items/{item_id}")]
    pub item: Option<Spanned<crate::model::units::OneOrList>>,
    /// Which writes change its lists besides creates and deletes: "creates", "filtered",
    /// "all", or the filter parameters whose lists writes to an item change.
    #[schema(default = "creates")]
    pub lists: Option<Spanned<crate::model::units::OneOrList>>,
}

/// `[state]`: where the state replicas share lives (start-up only).
#[derive(Debug, Default, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `"memory"` (the default: this process only) or `"redis"`.
    #[schema(default = "memory")]
    pub backend: Option<Spanned<String>>,
    pub redis: Option<Spanned<RawRedis>>,
}

/// `[state.redis]`: the server, and how limits and the cache use it.
#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS, `unix:///path`.
    #[schema(example = "redis://127.0.0.1:6379")]
    pub url: Spanned<EnvString>,
    /// Multiplexed connections to the server, 1 to 64 (default 2).
    #[schema(default = 2)]
    pub pool_size: Option<Spanned<usize>>,
    /// Each call's bound; past it the call counts as failed.
    pub timeout: Option<Spanned<Dur>>,
    /// Prefix of every key the gateway writes (default `"fastgate:"`).
    #[schema(default = "fastgate:")]
    pub key_prefix: Option<Spanned<String>>,
    /// Tokens a replica takes from Redis per round trip for a key (1: every decision in Redis).
    #[schema(default = 1)]
    pub lease: Option<Spanned<u32>>,
    /// Refuse a key Redis refused without asking again until its wait is over.
    pub precheck: Option<Spanned<bool>>,
    /// The in-process tier in front of the shared cache.
    pub local_cache_size: Option<Spanned<Size>>,
    /// Larger objects stay in the local tier only.
    pub max_object_size: Option<Spanned<Size>>,
    /// `rediss://` only: the CA that signed the server's certificate (instead of the system
    /// roots), and a client certificate and key for servers that require one.
    pub ca_file: Option<Spanned<EnvString>>,
    /// PEM client certificate chain for servers that require mutual TLS (`rediss://`).
    pub cert: Option<Spanned<EnvString>>,
    /// PEM private key of `cert`.
    pub key: Option<Spanned<EnvString>>,
}

/// `[telemetry]`: OTLP traces (over the standard `OTEL_*` variables) and metric buckets.
#[derive(Debug, Default, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `true`/`false`; unset: on when an OTLP endpoint variable is set.
    pub traces: Option<Spanned<bool>>,
    /// OTLP collector URL (`OTEL_EXPORTER_OTLP_ENDPOINT` when unset).
    pub endpoint: Option<Spanned<EnvString>>,
    /// `grpc` or `http/protobuf`.
    #[schema(example = "grpc")]
    pub protocol: Option<Spanned<String>>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME` when unset; default `"fastgate"`).
    pub service_name: Option<Spanned<EnvString>>,
    /// An `OTEL_TRACES_SAMPLER` name, e.g. `parentbased_traceidratio`.
    #[schema(example = "parentbased_traceidratio")]
    pub sampler: Option<Spanned<String>>,
    /// The sampler's argument, e.g. the ratio `0.1`.
    pub sampler_arg: Option<Spanned<f64>>,
    /// More resource attributes on every span.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, Spanned<EnvString>>,
    /// Upper bounds (seconds) of the request duration histogram.
    pub latency_buckets: Option<Spanned<Vec<f64>>>,
    /// PEM CA bundle for an `https://` collector, added to the system roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE` when unset).
    pub ca_file: Option<Spanned<EnvString>>,
}

#[derive(Debug, Default, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// The plain HTTP listener, `HOST:PORT` (default `0.0.0.0:8080`).
    #[schema(default = "0.0.0.0:8080")]
    pub listen: Option<Spanned<EnvString>>,
    /// The admin API, status page, `/metrics` and probes (default `127.0.0.1:9090`); off loopback it needs `admin_token`.
    #[schema(default = "127.0.0.1:9090")]
    pub admin_listen: Option<Spanned<EnvString>>,
    /// Bearer token the admin API asks for (probes and `/metrics` excepted).
    #[schema(example = "${FASTGATE_ADMIN_TOKEN}")]
    pub admin_token: Option<Spanned<EnvString>>,
    /// Addresses or CIDRs of proxies in front whose `X-Forwarded-For` / `Forwarded` is believed.
    #[serde(default)]
    #[schema(example_toml = r#"["10.0.0.0/8", "127.0.0.1"]"#)]
    pub trusted_proxies: Vec<Spanned<EnvString>>,
    /// Worker threads (default: one per core).
    pub threads: Option<Spanned<usize>>,
    /// How long in-flight requests may finish after SIGTERM (default 30s).
    #[schema(default = "30s")]
    pub shutdown_grace: Option<Spanned<Dur>>,
    /// Longer request targets get 414.
    pub max_uri_length: Option<Spanned<Size>>,
    /// More request headers get 431.
    pub max_header_count: Option<Spanned<usize>>,
    /// Larger request headers (names + values) get 431.
    pub max_header_bytes: Option<Spanned<Size>>,
    /// Longest wait between two reads of a request body from the client -> 408.
    pub client_body_timeout: Option<Spanned<Dur>>,
    /// How long an idle client keep-alive connection stays open.
    pub keepalive_timeout: Option<Spanned<Dur>>,
    /// Deadline for a whole request head -> 408, closed.
    pub header_timeout: Option<Spanned<Dur>>,
    /// Client connections open at once -> 503, closed.
    pub max_connections: Option<Spanned<usize>>,
    /// Client connections open at once from one untrusted address -> 503, closed.
    pub max_connections_per_client: Option<Spanned<usize>>,
    /// A second admin address serving only `/healthz`, `/readyz` and `/metrics`, for probes
    /// and scrapers off the host while the admin API stays on loopback.
    pub probe_listen: Option<Spanned<EnvString>>,
    /// Where a new process started with `run --upgrade` waits for the listening sockets that
    /// this one hands over on SIGQUIT.
    #[schema(default = "/tmp/fastgate-upgrade.sock")]
    pub upgrade_sock: Option<Spanned<EnvString>>,
    /// Idle upstream connections kept for reuse, over all upstreams.
    #[schema(default = 1024)]
    pub upstream_keepalive_pool: Option<Spanned<usize>>,
    /// One log line per request (target `fastgate::access`).
    pub access_log: Option<Spanned<bool>>,
    /// Request fields removed before the cache and the backend see a request, besides the
    /// built-in ones that make frameworks rewrite the target (`X-Original-URL`...).
    #[serde(default)]
    pub remove_request_headers: Vec<Spanned<String>>,
    /// `"reject"` (default), `"decode"` or `"keep"` a `%2F`/`%5C` in a path.
    #[schema(default = "reject")]
    pub encoded_slash: Option<Spanned<String>>,
    /// Methods any route may see (default: the ones FastAPI serves, no TRACE or CONNECT).
    pub methods: Option<Vec<Spanned<String>>>,
    /// Which forwarding fields the gateway sets: field names, or the shorthands
    /// `"x-forwarded"`, `"rfc7239"`, `"both"` (default `["x-forwarded-for", "x-forwarded-proto"]`).
    #[schema(example = "both")]
    pub forwarded: Option<Spanned<OneOrList>>,
    /// `[server.tls]`: an HTTPS listener beside `listen`.
    pub tls: Option<Spanned<RawTls>>,
    /// The plain listener answers every request (but ACME HTTP-01 challenges) with a 308 to
    /// the HTTPS listener.
    pub redirect_to_https: Option<Spanned<bool>>,
    /// A DNS server (`"10.0.0.10:53"`) for upstream names instead of the system resolver.
    pub resolver: Option<Spanned<EnvString>>,
    /// How often upstream names are resolved again (default 30s).
    #[schema(default = "30s")]
    pub resolve_interval: Option<Spanned<Dur>>,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The HTTPS listener, `HOST:PORT` (default `0.0.0.0:8443`).
    #[schema(default = "0.0.0.0:8443")]
    pub listen: Option<Spanned<EnvString>>,
    /// The first is the default; the others are chosen by SNI.
    #[schema(example_toml = r#"[{ cert = "/etc/fastgate/tls/tls.crt", key = "/etc/fastgate/tls/tls.key" }]"#)]
    pub certificates: Vec<Spanned<RawCertificate>>,
    /// Offer HTTP/2 by ALPN (default true).
    #[schema(default = true)]
    pub http2: Option<Spanned<bool>>,
    /// The port clients reach the HTTPS listener on, for redirects (default: `listen`'s).
    pub public_port: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM chain, leaf first.
    pub cert: Spanned<EnvString>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<EnvString>,
    /// Server names this certificate answers; default: its subjectAltName DNS names.
    pub names: Option<Vec<Spanned<String>>>,
}

/// `[upstreams.NAME.tls]`: HTTPS to the servers.
#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle the servers' certificates are verified against (default: system roots).
    pub ca_file: Option<Spanned<EnvString>>,
    /// Client certificate chain and key, for servers that require mutual TLS.
    pub cert: Option<Spanned<EnvString>>,
    /// PEM private key of `cert`.
    pub key: Option<Spanned<EnvString>>,
    /// Server name sent and verified (default: the server's host name; none for an IP).
    pub sni: Option<Spanned<EnvString>>,
    /// Verify the server's certificate and name (default true).
    pub verify: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `HOST:PORT` of each server (`https://HOST:PORT` for TLS); names are resolved again every `resolve_interval`.
    #[schema(example_toml = r#"["127.0.0.1:8000"]"#)]
    pub servers: Vec<Spanned<EnvString>>,
    /// How long an idle pooled connection to a server is kept (default 60s).
    #[schema(default = "60s")]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Active health checks: a server failing them gets no requests until it passes again.
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// In-flight requests to this upstream across all routes.
    pub max_concurrent: Option<Spanned<usize>>,
    /// Requests that may wait for an upstream `max_concurrent` slot, and for how long.
    pub queue: Option<Spanned<crate::policy::concurrency::RawQueue>>,
    /// Consecutive failed exchanges (connect refused or timed out, a reset, a read timeout)
    /// after which a server is left out for `eject_for`; 0 never ejects.
    #[schema(default = 3)]
    pub eject_after: Option<Spanned<u32>>,
    /// How long an ejected server is left out (default 10s).
    #[schema(default = "10s")]
    pub eject_for: Option<Spanned<Dur>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// The GET checked on each server (default `/healthz`); a 2xx passes.
    #[schema(default = "/healthz")]
    pub path: Option<Spanned<EnvString>>,
    /// Time between two checks of a server (default 2s).
    #[schema(default = "2s")]
    pub interval: Option<Spanned<Dur>>,
    /// A check slower than this fails (default 1s).
    #[schema(default = "1s")]
    pub timeout: Option<Spanned<Dur>>,
    /// Passes in a row that bring a server back (default 1).
    #[schema(default = 1)]
    pub healthy_threshold: Option<Spanned<usize>>,
    /// Failures in a row that take a server out (default 2).
    #[schema(default = 2)]
    pub unhealthy_threshold: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// An exact path, or a template with parameters: `/api/items/{item_id}`.
    #[schema(example = "/api/items/{item_id}")]
    pub path: Option<Spanned<EnvString>>,
    /// Every path under this prefix (at a `/` boundary).
    #[schema(example = "/api/")]
    pub path_prefix: Option<Spanned<EnvString>>,
    /// The methods the route answers; others get 405 with `Allow`.
    #[schema(example_toml = r#"["GET", "HEAD"]"#)]
    pub methods: Option<Vec<Spanned<String>>>,
    /// The `Host` the route answers (default: any).
    pub host: Option<Spanned<EnvString>>,
}

/// `[defaults]`: the policy every route inherits, key by key. (Its keys are the policies' own,
/// `policy::PolicyKeys`, from the registry.)
#[derive(Debug, Default, fastgate_derive::Schema)]
pub struct RawPolicy {
    #[schema(flatten)]
    pub policy: PolicyKeys,
}

/// `[[routes]]`: how to recognise a request, where to send it, and policy overrides.
#[derive(Debug, Default, fastgate_derive::Schema)]
pub struct RawRoute {
    /// The route's name in metrics, traces, logs and `check`'s table.
    #[schema(example = "items")]
    pub name: Option<Spanned<String>>,
    /// Which requests the route takes.
    #[schema(example_toml = r#"{ path_prefix = "/api/items" }"#)]
    pub r#match: Option<Spanned<RawMatch>>,
    /// The `[upstreams.NAME]` the route forwards to (the only one, when there is one).
    #[schema(example = "app")]
    pub upstream: Option<Spanned<String>>,
    /// `"proxy"` (the default) or `"deny"`: answered by the gateway, never forwarded.
    #[schema(default = "proxy")]
    pub action: Option<Spanned<String>>,
    /// The status a `deny` route answers: 404 (the default: nothing to see) or 403.
    pub deny_status: Option<Spanned<u16>>,
    #[schema(flatten)]
    pub policy: PolicyKeys,
}

/// A route's own keys, besides the policies'.
const ROUTE_KEYS: &[&str] = &["name", "match", "upstream", "action", "deny_status"];

/// A key of a table whose keys are `names`: an unknown one is refused while the key itself is
/// read, so the error points at it (as `deny_unknown_fields` does).
struct KnownKey(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for KnownKey {
    type Value = String;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct V(&'static [&'static str]);
        impl serde::de::Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                if self.0.contains(&v) { Ok(v.to_string()) } else { Err(E::unknown_field(v, self.0)) }
            }
        }
        d.deserialize_identifier(V(self.0))
    }
}

/// The keys a route takes: its own, then every policy's.
fn route_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| ROUTE_KEYS.iter().chain(PolicyKeys::names()).copied().collect())
}

/// Reads a table's keys one by one, each value with its own position (no `flatten`).
fn read_table<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    names: &'static [&'static str],
    mut own: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
    policy: &mut PolicyKeys,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key_seed(KnownKey(names))? {
        if !own(&key, &mut map)? && !policy.accept(&key, &mut map)? {
            return Err(serde::de::Error::unknown_field(&key, names));
        }
    }
    Ok(())
}

impl<'de> Deserialize<'de> for RawPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of policy keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawPolicy, A::Error> {
                let mut out = RawPolicy::default();
                read_table(map, PolicyKeys::names(), |_, _| Ok(false), &mut out.policy)?;
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRoute;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a route table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRoute, A::Error> {
                let mut out = RawRoute::default();
                let mut policy = PolicyKeys::default();
                read_table(
                    map,
                    route_keys(),
                    |key, map| {
                        match key {
                            "name" => out.name = Some(map.next_value()?),
                            "match" => out.r#match = Some(map.next_value()?),
                            "upstream" => out.upstream = Some(map.next_value()?),
                            "action" => out.action = Some(map.next_value()?),
                            "deny_status" => out.deny_status = Some(map.next_value()?),
                            _ => return Ok(false),
                        }
                        Ok(true)
                    },
                    &mut policy,
                )?;
                out.policy = policy;
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// `[cache]`: the process's cache store (start-up only).
#[derive(Debug, Default, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Memory the stored responses may take, bodies and headers (default 256MiB).
    #[schema(default = "256MiB")]
    pub max_size: Option<Spanned<Size>>,
    /// Larger responses are not stored (default 8MiB).
    #[schema(default = "8MiB")]
    pub max_object_size: Option<Spanned<Size>>,
    /// How long requests for a URL being fetched wait for that one fetch before fetching themselves (default 5s).
    #[schema(default = "5s")]
    pub lock_timeout: Option<Spanned<Dur>>,
    /// Response field whose values tag a stored response for purges (default `cache-tag`); removed before the client sees it.
    #[schema(default = "cache-tag")]
    pub tag_header: Option<Spanned<String>>,
    /// Paths fetched into the cache at start-up and every `warm_interval`.
    #[serde(default)]
    #[schema(example_toml = r#"[{ path = "/api/items?limit=50" }]"#)]
    pub warm: Vec<Spanned<RawWarm>>,
    /// How often the warm list is fetched again (default 5m).
    #[schema(default = "5m")]
    pub warm_interval: Option<Spanned<Dur>>,
    /// `/readyz` waits at most this long for the first warm-up (default 5s).
    #[schema(default = "5s")]
    pub warm_ready_timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawWarm {
    /// The path (and query) to fetch.
    pub path: Spanned<EnvString>,
    /// Request fields sent with it (a key's `Authorization`, say).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<EnvString>>,
}

