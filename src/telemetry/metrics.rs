//! Prometheus metrics. Labels are bounded: route and upstream names from the config, methods
//! folded to a known set, status classes; never raw paths or client addresses.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::OnceLock;

const METHODS: usize = 8;
const CLASSES: usize = 6;

/// A route's series, resolved on its first request and kept with the compiled route, so the
/// request path does no label hashing. A reload builds new routes, which resolve again (to the
/// same series).
#[derive(Debug, Default)]
pub struct RouteHandles(OnceLock<RouteSeries>);

#[derive(Debug)]
struct RouteSeries {
    in_flight: IntGauge,
    request_bytes: Histogram,
    response_bytes: Histogram,
    /// By method and status class, each resolved on first use.
    duration: Vec<OnceLock<Histogram>>,
}

/// An upstream's series, like `RouteHandles`.
#[derive(Debug, Default)]
pub struct UpstreamHandles(OnceLock<(IntGauge, Histogram)>);

/// Buckets for API latencies, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    request_duration: HistogramVec,
    gateway_errors: IntCounterVec,
    backend_errors: IntCounterVec,
    in_flight: IntGaugeVec,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    upstream_health: IntGaugeVec,
    rate_limited: IntCounterVec,
    shed: IntCounterVec,
    rate_limit_keys: IntGauge,
    otlp_dropped: prometheus::IntCounter,
    cache_results: IntCounterVec,
    cache_purged: IntCounterVec,
    cache_invalidations: IntCounterVec,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    cache_evictions: IntGauge,
    state_up: IntGauge,
    state_failures: IntGaugeVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    upstream_ttfb: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_active: IntGaugeVec,
    compression_bytes: IntCounterVec,
    slow: IntCounterVec,
    connections_open: IntGauge,
    connections_refused: IntCounterVec,
    front_door: prometheus::IntCounter,
    forms_made: IntCounterVec,
}

/// Body sizes: 64 B to 16 MiB, by powers of four.
const SIZE_BUCKETS: &[f64] = &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0];

/// `c`, registered: every series exists in the registry from the start.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, prometheus::Error> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    registered(registry, IntGauge::new(name, help)?)
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> Result<HistogramVec, prometheus::Error> {
    registered(registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?)
}

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "<none>";

impl Metrics {
    pub fn new(latency_buckets: &[f64]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let request_duration = histogram_vec(&registry, "http_server_request_duration_seconds", "Time from the first request byte to the last response byte, per route.", &["route", "method", "status_class"], latency_buckets.to_vec())?;
        let gateway_errors = counter_vec(&registry, "fastgate_gateway_errors_total", "Responses the gateway produced itself, by problem code.", &["route", "code"])?;
        let backend_errors = counter_vec(&registry, "fastgate_backend_errors_total", "Backend error bodies rewritten into problem+json (normalize_errors), by route and code.", &["route", "code"])?;
        let in_flight = gauge_vec(&registry, "http_server_active_requests", "Requests in flight, per route.", &["route"])?;
        let config_reloads = counter_vec(&registry, "fastgate_config_reloads_total", "Config reloads, by result (ok, failed).", &["result"])?;
        let config_info = gauge_vec(&registry, "fastgate_config_info", "The loaded config: 1 for its hash.", &["hash"])?;
        let upstream_health = gauge_vec(&registry, "fastgate_upstream_healthy", "1 when the upstream server passes its health check.", &["upstream", "server"])?;
        let rate_limited = counter_vec(&registry, "fastgate_rate_limited_total", "Requests refused with 429, by route and limit.", &["route", "limit"])?;
        let shed = counter_vec(&registry, "fastgate_shed_total", "Requests shed with 503 by a concurrency limit, by route and scope.", &["route", "scope"])?;
        let rate_limit_keys = gauge(&registry, "fastgate_rate_limit_keys", "Keys tracked by all rate limiters (after the last eviction).")?;
        let otlp_dropped = registered(
            &registry,
            prometheus::IntCounter::new("fastgate_otlp_spans_dropped_total", "Spans whose OTLP export failed (collector unreachable or refusing).")?,
        )?;
        let connections_open = gauge(&registry, "fastgate_connections_open", "Client connections open on the proxy listener.")?;
        let connections_refused = counter_vec(&registry, "fastgate_connections_refused_total", "Client connections closed before a request reached the proxy, by reason (max_connections, max_connections_per_client, header_timeout, malformed_head, head_too_large).", &["reason"])?;
        let front_door = registered(
            &registry,
            prometheus::IntCounter::new("fastgate_front_door_responses_total", "Responses written by the connection layer without a proxy session: fresh cache hits of plain HTTP/1.1 GETs, and refusals of such requests by their route's policies.")?,
        )?;
        let forms_made = counter_vec(&registry, "fastgate_cache_forms_made_total", "Compressed forms of stored bodies made by this process, by encoding (gzip, br, zstd): once per entry and encoding, or none when another replica shared its form through Redis.", &["encoding"])?;
        let cache_results = counter_vec(&registry, "fastgate_cache_requests_total", "Responses of cached routes by X-Cache result (HIT, MISS, STALE, EXPIRED, BYPASS).", &["route", "result"])?;
        let cache_purged = counter_vec(&registry, "fastgate_cache_purged_total", "Cache entries removed by purges, by cause (admin, write).", &["cause"])?;
        let cache_invalidations = counter_vec(&registry, "fastgate_cache_invalidations_total", "Cache entries dropped by writes, by route and reason (target, resource, viewer, path, tag, entity, list).", &["route", "reason"])?;
        let cache_bytes = gauge(&registry, "fastgate_cache_size_bytes", "Bytes held by the cache store.")?;
        let cache_entries = gauge(&registry, "fastgate_cache_entries", "Objects held by the cache store.")?;
        let cache_evictions = gauge(&registry, "fastgate_cache_evictions_total", "Objects evicted by the store's size bound.")?;
        let state_up = gauge(&registry, "fastgate_state_up", "1 while shared state (Redis) answers; always 1 with the memory backend.")?;
        let state_failures = gauge_vec(&registry, "fastgate_state_failures_total", "Shared-state calls that failed (error, timeout) or were not tried while Redis was down (skipped).", &["kind"])?;
        let request_bytes = histogram_vec(&registry, "http_server_request_body_size_bytes", "Request body sizes, per route.", &["route"], SIZE_BUCKETS.to_vec())?;
        let response_bytes = histogram_vec(&registry, "http_server_response_body_size_bytes", "Response body sizes sent to clients, per route.", &["route"], SIZE_BUCKETS.to_vec())?;
        let upstream_ttfb = histogram_vec(&registry, "fastgate_upstream_response_time_seconds", "From choosing an upstream server to its response header (connect + time to first byte).", &["upstream"], latency_buckets.to_vec())?;
        let upstream_errors = counter_vec(&registry, "fastgate_upstream_errors_total", "Upstream failures by kind (connect, timeout, failed).", &["upstream", "kind"])?;
        let upstream_active = gauge_vec(&registry, "fastgate_upstream_active_requests", "Requests in flight to each upstream.", &["upstream"])?;
        let compression_bytes = counter_vec(&registry, "fastgate_compression_bytes_total", "Bytes into and out of response compression, by algorithm.", &["algorithm", "direction"])?;
        let slow = counter_vec(&registry, "fastgate_slow_requests_total", "Requests slower than their route's slow_threshold.", &["route"])?;
        state_up.set(1);
        // Series that alerts use with increase() must exist from the start at 0.
        for result in ["ok", "failed"] {
            config_reloads.with_label_values(&[result]);
        }
        // resident memory, CPU seconds, open fds, start time
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            request_duration,
            gateway_errors,
            backend_errors,
            in_flight,
            config_reloads,
            config_info,
            upstream_health,
            rate_limited,
            shed,
            rate_limit_keys,
            otlp_dropped,
            cache_results,
            cache_purged,
            cache_invalidations,
            cache_bytes,
            cache_entries,
            cache_evictions,
            state_up,
            state_failures,
            request_bytes,
            response_bytes,
            upstream_ttfb,
            upstream_errors,
            upstream_active,
            compression_bytes,
            slow,
            connections_open,
            connections_refused,
            front_door,
            forms_made,
        })
    }

    fn route_series<'a>(&self, route: &str, h: &'a RouteHandles) -> &'a RouteSeries {
        h.0.get_or_init(|| RouteSeries {
            in_flight: self.in_flight.with_label_values(&[route]),
            request_bytes: self.request_bytes.with_label_values(&[route]),
            response_bytes: self.response_bytes.with_label_values(&[route]),
            duration: (0..METHODS * CLASSES).map(|_| OnceLock::new()).collect(),
        })
    }

    pub fn request_started(&self, route: &str, h: &RouteHandles) {
        self.route_series(route, h).in_flight.inc();
    }

    pub fn request_finished(&self, route: &str, h: &RouteHandles, method: &http::Method, status: u16, seconds: f64) {
        let s = self.route_series(route, h);
        s.in_flight.dec();
        let (m, mi) = method_label(method);
        let (c, ci) = status_class(status);
        if let Some(cell) = s.duration.get(mi * CLASSES + ci) {
            cell.get_or_init(|| self.request_duration.with_label_values(&[route, m, c]))
                .observe(seconds);
        }
    }

    pub fn gateway_error(&self, route: &str, code: &str) {
        self.gateway_errors.with_label_values(&[route, code]).inc();
    }

    pub fn backend_error(&self, route: &str, code: &str) {
        self.backend_errors.with_label_values(&[route, code]).inc();
    }

    pub fn rate_limited(&self, route: &str, limit: &str) {
        self.rate_limited.with_label_values(&[route, limit]).inc();
    }

    pub fn body_sizes(&self, route: &str, h: &RouteHandles, request: usize, response: usize) {
        let s = self.route_series(route, h);
        s.request_bytes.observe(request as f64);
        s.response_bytes.observe(response as f64);
    }

    fn upstream_series<'a>(&self, upstream: &str, h: &'a UpstreamHandles) -> &'a (IntGauge, Histogram) {
        h.0.get_or_init(|| {
            (
                self.upstream_active.with_label_values(&[upstream]),
                self.upstream_ttfb.with_label_values(&[upstream]),
            )
        })
    }

    pub fn upstream_started(&self, upstream: &str, h: &UpstreamHandles) {
        self.upstream_series(upstream, h).0.inc();
    }

    pub fn upstream_finished(&self, upstream: &str, h: &UpstreamHandles, ttfb: Option<f64>) {
        let (active, hist) = self.upstream_series(upstream, h);
        active.dec();
        if let Some(t) = ttfb {
            hist.observe(t);
        }
    }

    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[upstream, kind]).inc();
    }

    pub fn compression(&self, algorithm: &str, bytes_in: usize, bytes_out: usize) {
        self.compression_bytes.with_label_values(&[algorithm, "in"]).inc_by(bytes_in as u64);
        self.compression_bytes.with_label_values(&[algorithm, "out"]).inc_by(bytes_out as u64);
    }

    pub fn slow_request(&self, route: &str) {
        self.slow.with_label_values(&[route]).inc();
    }

    /// Every metric family, for the status page.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    pub fn cache_result(&self, route: &str, result: &str) {
        self.cache_results.with_label_values(&[route, result]).inc();
    }

    pub fn cache_purged(&self, cause: &str, n: usize) {
        self.cache_purged.with_label_values(&[cause]).inc_by(n as u64);
    }

    pub fn cache_invalidated(&self, route: &str, reason: &str, n: usize) {
        self.cache_invalidations.with_label_values(&[route, reason]).inc_by(n as u64);
    }

    pub fn set_cache_stats(&self, entries: u64, bytes: u64, evictions: u64) {
        self.cache_entries.set(entries as i64);
        self.cache_bytes.set(bytes as i64);
        self.cache_evictions.set(evictions as i64);
    }

    /// The shared state's health, read at each scrape.
    pub fn set_state(&self, up: bool, errors: u64, timeouts: u64, skipped: u64) {
        self.state_up.set(i64::from(up));
        for (kind, n) in [("error", errors), ("timeout", timeouts), ("skipped", skipped)] {
            self.state_failures.with_label_values(&[kind]).set(n as i64);
        }
    }

    pub fn otlp_export_failed(&self, spans: usize) {
        self.otlp_dropped.inc_by(spans as u64);
    }

    /// A response the front door wrote (`proxy::front`).
    pub fn front_door_answered(&self) {
        self.front_door.inc();
    }

    /// A stored body's compressed form was made (`CompressPolicy::stored_form`).
    pub fn form_made(&self, encoding: &str) {
        self.forms_made.with_label_values(&[encoding]).inc();
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    pub fn set_rate_limit_keys(&self, n: usize) {
        self.rate_limit_keys.set(n as i64);
    }

    pub fn shed(&self, route: &str, scope: &str) {
        self.shed.with_label_values(&[route, scope]).inc();
    }

    pub fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    pub fn set_upstream_health(&self, upstream: &str, server: &str, healthy: bool) {
        self.upstream_health.with_label_values(&[upstream, server]).set(i64::from(healthy));
    }

    /// Forgets per-server health series (before re-filling them from the current config).
    pub fn reset_upstream_health(&self) {
        self.upstream_health.reset();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

}

/// The method label and its index among `METHODS`.
fn method_label(m: &http::Method) -> (&'static str, usize) {
    match *m {
        http::Method::GET => ("GET", 0),
        http::Method::HEAD => ("HEAD", 1),
        http::Method::POST => ("POST", 2),
        http::Method::PUT => ("PUT", 3),
        http::Method::PATCH => ("PATCH", 4),
        http::Method::DELETE => ("DELETE", 5),
        http::Method::OPTIONS => ("OPTIONS", 6),
        _ => ("_OTHER", 7),
    }
}

/// The status class label and its index among `CLASSES`.
fn status_class(status: u16) -> (&'static str, usize) {
    match status {
        100..=199 => ("1xx", 0),
        200..=299 => ("2xx", 1),
        300..=399 => ("3xx", 2),
        400..=499 => ("4xx", 3),
        500..=599 => ("5xx", 4),
        _ => ("none", 5),
    }
}
