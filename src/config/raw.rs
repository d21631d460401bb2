//! The routes file as written: serde structs that mirror the TOML, nothing more.
//!
//! Every table denies unknown keys (a typo is an error with a "did you mean", never a silently
//! ignored setting). Every leaf value is `Spanned`, so any later check can point at it. No `flatten` or
//! `untagged`: both lose TOML positions.

use crate::model::units::{Dur, EnvString, OneOrList, Size, Toggle, Ttl};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub defaults: RawPolicy,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub state: RawState,
}

/// `[state]`: where the state replicas share lives (start-up only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `"memory"` (the default: this process only) or `"redis"`.
    pub backend: Option<Spanned<String>>,
    pub redis: Option<Spanned<RawRedis>>,
}

/// `[state.redis]`: the server, and how limits and the cache use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS, `unix:///path`.
    pub url: Spanned<EnvString>,
    pub pool_size: Option<Spanned<usize>>,
    /// Each call's bound; past it the call counts as failed.
    pub timeout: Option<Spanned<Dur>>,
    pub key_prefix: Option<Spanned<String>>,
    /// Tokens a replica takes from Redis per round trip for a key (1: every decision in Redis).
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
    pub cert: Option<Spanned<EnvString>>,
    pub key: Option<Spanned<EnvString>>,
}

/// `[telemetry]`: OTLP traces (over the standard `OTEL_*` variables) and metric buckets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `true`/`false`; unset: on when an OTLP endpoint variable is set.
    pub traces: Option<Spanned<bool>>,
    pub endpoint: Option<Spanned<EnvString>>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<Spanned<String>>,
    pub service_name: Option<Spanned<EnvString>>,
    /// An `OTEL_TRACES_SAMPLER` name, e.g. `parentbased_traceidratio`.
    pub sampler: Option<Spanned<String>>,
    pub sampler_arg: Option<Spanned<f64>>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, Spanned<EnvString>>,
    /// Upper bounds (seconds) of the request duration histogram.
    pub latency_buckets: Option<Spanned<Vec<f64>>>,
    /// PEM CA bundle for an `https://` collector, added to the system roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE` when unset).
    pub ca_file: Option<Spanned<EnvString>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<EnvString>>,
    pub admin_listen: Option<Spanned<EnvString>>,
    pub admin_token: Option<Spanned<EnvString>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<EnvString>>,
    pub threads: Option<Spanned<usize>>,
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
    pub upgrade_sock: Option<Spanned<EnvString>>,
    /// Idle upstream connections kept for reuse, over all upstreams.
    pub upstream_keepalive_pool: Option<Spanned<usize>>,
    /// One log line per request (target `fastgate::access`).
    pub access_log: Option<Spanned<bool>>,
    /// Request fields removed before the cache and the backend see a request, besides the
    /// built-in ones that make frameworks rewrite the target (`X-Original-URL`...).
    #[serde(default)]
    pub remove_request_headers: Vec<Spanned<String>>,
    /// `"reject"` (default), `"decode"` or `"keep"` a `%2F`/`%5C` in a path.
    pub encoded_slash: Option<Spanned<String>>,
    /// Methods any route may see (default: the ones FastAPI serves, no TRACE or CONNECT).
    pub methods: Option<Vec<Spanned<String>>>,
    /// Which forwarding fields the gateway sets: field names, or the shorthands
    /// `"x-forwarded"`, `"rfc7239"`, `"both"` (default `["x-forwarded-for", "x-forwarded-proto"]`).
    pub forwarded: Option<Spanned<OneOrList>>,
    /// `[server.tls]`: an HTTPS listener beside `listen`.
    pub tls: Option<Spanned<RawTls>>,
    /// The plain listener answers every request (but ACME HTTP-01 challenges) with a 308 to
    /// the HTTPS listener.
    pub redirect_to_https: Option<Spanned<bool>>,
    /// A DNS server (`"10.0.0.10:53"`) for upstream names instead of the system resolver.
    pub resolver: Option<Spanned<EnvString>>,
    /// How often upstream names are resolved again (default 30s).
    pub resolve_interval: Option<Spanned<Dur>>,
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Option<Spanned<EnvString>>,
    /// The first is the default; the others are chosen by SNI.
    pub certificates: Vec<Spanned<RawCertificate>>,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: Option<Spanned<bool>>,
    /// The port clients reach the HTTPS listener on, for redirects (default: `listen`'s).
    pub public_port: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle the servers' certificates are verified against (default: system roots).
    pub ca_file: Option<Spanned<EnvString>>,
    /// Client certificate chain and key, for servers that require mutual TLS.
    pub cert: Option<Spanned<EnvString>>,
    pub key: Option<Spanned<EnvString>>,
    /// Server name sent and verified (default: the server's host name; none for an IP).
    pub sni: Option<Spanned<EnvString>>,
    /// Verify the server's certificate and name (default true).
    pub verify: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<Spanned<EnvString>>,
    pub idle_timeout: Option<Spanned<Dur>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// In-flight requests to this upstream across all routes.
    pub max_concurrent: Option<Spanned<usize>>,
    pub queue: Option<Spanned<RawQueue>>,
    /// Consecutive failed exchanges (connect refused or timed out, a reset, a read timeout)
    /// after which a server is left out for `eject_for`; 0 never ejects.
    pub eject_after: Option<Spanned<u32>>,
    pub eject_for: Option<Spanned<Dur>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<EnvString>>,
    pub interval: Option<Spanned<Dur>>,
    pub timeout: Option<Spanned<Dur>>,
    pub healthy_threshold: Option<Spanned<usize>>,
    pub unhealthy_threshold: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<Spanned<EnvString>>,
    pub path_prefix: Option<Spanned<EnvString>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub host: Option<Spanned<EnvString>>,
}

/// Declares the policy keys once and generates from that one list: `RawPolicy` (`[defaults]`),
/// `RawRoute` (a route's identity keys plus the same policy keys) and `PolicyKeys`, a borrowed
/// view of either, so defaults and routes cannot drift apart and merging sees every key.
macro_rules! policy_keys {
    ( $( $(#[$fm:meta])* $key:ident : $ty:ty ),* $(,)? ) => {
        /// `[defaults]`: the policy every route inherits.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawPolicy {
            $( $(#[$fm])* pub $key: Option<$ty>, )*
        }

        /// `[[routes]]`: how to recognise a request, where to send it, and policy overrides.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawRoute {
            pub name: Option<Spanned<String>>,
            pub r#match: Option<Spanned<RawMatch>>,
            pub upstream: Option<Spanned<String>>,
            /// `"proxy"` (the default) or `"deny"`: answered by the gateway, never forwarded.
            pub action: Option<Spanned<String>>,
            /// The status a `deny` route answers: 404 (the default: nothing to see) or 403.
            pub deny_status: Option<Spanned<u16>>,
            $( $(#[$fm])* pub $key: Option<$ty>, )*
        }

        /// The policy keys of a route or of `[defaults]`, borrowed, for merging.
        pub struct PolicyKeys<'a> {
            $( pub $key: &'a Option<$ty>, )*
        }

        impl RawPolicy {
            pub fn policy_keys(&self) -> PolicyKeys<'_> {
                PolicyKeys { $( $key: &self.$key, )* }
            }
        }

        impl RawRoute {
            pub fn policy_keys(&self) -> PolicyKeys<'_> {
                PolicyKeys { $( $key: &self.$key, )* }
            }
        }
    };
}

policy_keys! {
    /// Total time for the whole upstream exchange.
    timeout: Spanned<Dur>,
    connect_timeout: Spanned<Dur>,
    /// Longest wait between two reads from the upstream.
    read_timeout: Spanned<Dur>,
    max_body: Spanned<Size>,
    /// Request bodies up to this are read whole, framing checked, before the backend sees
    /// the request; larger ones are refused (413). At most 64 KiB.
    buffer_request_body: Spanned<Size>,
    /// Cap on the response body the backend may send.
    max_response_body: Spanned<Size>,
    /// A streaming route has no total timeout; reads may idle up to `stream_idle_timeout`.
    streaming: Spanned<bool>,
    stream_idle_timeout: Spanned<Dur>,
    /// Limits stacked on the route; all must allow a request.
    rate_limit: Spanned<Vec<Spanned<RawRateLimit>>>,
    /// Client addresses/CIDRs, or `key:VALUE` limit keys, that no limit applies to.
    rate_limit_bypass: Vec<Spanned<EnvString>>,
    /// In-flight requests on the route.
    max_concurrent: Spanned<usize>,
    /// Requests that may wait for a `max_concurrent` slot, and for how long.
    queue: Spanned<RawQueue>,
    compress: Spanned<Toggle<RawCompress>>,
    /// Response caching: `"off"`, `"on"`, or a table.
    cache: Spanned<Toggle<RawCachePolicy>>,
    /// Tags purged after a successful unsafe request (POST/PUT/PATCH/DELETE) on the route.
    invalidate_tags: Vec<Spanned<String>>,
    /// What a successful write on the route invalidates besides its own path: `"resource"`,
    /// `"viewer"`, or path patterns (`"/api/users/{user_id}"`, `"/api/items/**"`).
    invalidate: Vec<Spanned<String>>,
    /// A request slower than this logs a warning and counts in `fastgate_slow_requests_total`.
    slow_threshold: Spanned<Dur>,
    /// More attempts for a failed exchange: `{ attempts = 2, on = ["connect", "reset", "timeout"] }`.
    retry: Spanned<RawRetry>,
    /// Page-size default and cap, and an offset cap, for a list endpoint.
    pagination: Spanned<RawPagination>,
    /// `?fields=a,b.c` selects members of JSON responses: `"on"`, `"off"` or a table.
    fields: Spanned<Toggle<RawFields>>,
    /// Rewrite FastAPI error bodies (`{"detail": ...}`) into the gateway's problem+json.
    normalize_errors: Spanned<bool>,
    /// `Strict-Transport-Security` on HTTPS responses: `"on"` (one year), `"off"`, or a table.
    hsts: Spanned<Toggle<RawHsts>>,
    /// What the route's rate limits do while shared state (Redis) is unreachable: `"local"`
    /// (this replica's own limiter, the default), `"allow"` or `"deny"` (503).
    on_state_error: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    pub max_age: Option<Spanned<Dur>>,
    pub include_subdomains: Option<Spanned<bool>>,
    pub preload: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPagination {
    /// The page-size parameter; `limit` unless given.
    pub param: Option<Spanned<String>>,
    /// Added when a request has none.
    pub default: Option<Spanned<u64>>,
    pub max: Spanned<u64>,
    /// `"clamp"` (the default) or `"reject"`.
    pub on_excess: Option<Spanned<String>>,
    /// The offset parameter; `offset` unless given.
    pub offset_param: Option<Spanned<String>>,
    pub max_offset: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    /// The query parameter; `fields` unless given.
    pub param: Option<Spanned<String>>,
    /// Larger responses pass unfiltered.
    pub max_body: Option<Spanned<Size>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCachePolicy {
    /// Freshness of successful responses the backend gives none; `"origin"` or unset: none.
    pub ttl: Option<Spanned<Ttl>>,
    /// Freshness of 404, 405, 410, 414 and 501 answers the backend gives none; unset: not stored.
    pub negative_ttl: Option<Spanned<Dur>>,
    /// Tags every stored response of the route carries (`"item:{item_id}"`).
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// A targeted cache-control field (RFC 9213) read ahead of `CDN-Cache-Control`.
    pub targeted_field: Option<Spanned<String>>,
    /// Serve fresh entries even when the client sends `Cache-Control: no-cache` or `max-age=0`.
    pub ignore_client_no_cache: Option<Spanned<bool>>,
    pub stale_while_revalidate: Option<Spanned<Dur>>,
    pub stale_if_error: Option<Spanned<Dur>>,
    pub key: Option<RawCacheKey>,
    /// Use `ttl` whatever the backend's `Cache-Control` says.
    pub override_origin: Option<Spanned<bool>>,
    /// The data is the same for every client: credentials do not bypass the cache.
    pub public: Option<Spanned<bool>>,
    pub strip_set_cookie: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub cookies: Vec<Spanned<String>>,
    #[serde(default)]
    pub ignore_query: Vec<Spanned<String>>,
}

/// `[cache]`: the process's cache store (start-up only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_size: Option<Spanned<Size>>,
    pub max_object_size: Option<Spanned<Size>>,
    pub lock_timeout: Option<Spanned<Dur>>,
    pub tag_header: Option<Spanned<String>>,
    #[serde(default)]
    pub warm: Vec<Spanned<RawWarm>>,
    pub warm_interval: Option<Spanned<Dur>>,
    pub warm_ready_timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarm {
    pub path: Spanned<EnvString>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<EnvString>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `"100/s"`, `"600/m"`, `"1000/h"`.
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u32>>,
    /// `client_ip` (default), `header:NAME`, `cookie:NAME`, `query:NAME`, `route`.
    pub key: Option<Spanned<String>>,
    /// Without the key: `shared` (one bucket), `client_ip`, or `reject`.
    pub on_missing_key: Option<Spanned<String>>,
    /// Status for `reject`: 400 or 401.
    pub missing_key_status: Option<Spanned<u16>>,
    /// Label in `RateLimit-Policy` and metrics; defaults to the key.
    pub name: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Spanned<u32>,
    pub on: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub size: Spanned<usize>,
    pub timeout: Option<Spanned<Dur>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompress {
    /// In order of preference on equal q-values.
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub min_size: Option<Spanned<Size>>,
    /// Content-type prefixes that are compressed.
    pub types: Option<Vec<Spanned<String>>>,
    pub gzip_level: Option<Spanned<u32>>,
    pub brotli_level: Option<Spanned<u32>>,
    pub zstd_level: Option<Spanned<u32>>,
}

