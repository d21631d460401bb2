//! One typed record per request. The proxy phases and each policy's `on_done` fill an
//! [`Outcome`]; when the request is over, [`record`] turns it, once, into the access line,
//! the metrics and the span's attributes and events, so the three always agree.

use super::errorlog::ErrorLog;
use super::otel::RequestTrace;
use super::Metrics;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What happened to one request, as the phases and policies saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub client_ip: Option<IpAddr>,
    /// The problem code of a gateway-made response, or of a cut after the header went out.
    pub problem: Option<&'static str>,
    /// The detail of that problem, for the error log of 5xx answers.
    pub problem_detail: Option<Cow<'static, str>>,
    /// `hit`, `miss`, `stale`, `revalidated`, `expired`, `bypass`, on routes that cache.
    pub cache: Option<&'static str>,
    /// Cache entries dropped by this request's write, by reason.
    pub invalidated: Vec<(&'static str, usize)>,
    /// `allow`, `limited`, `missing_key`, on routes with rate limits.
    pub rate_limit: Option<&'static str>,
    /// The limit that refused the request.
    pub limited_by: Option<String>,
    /// `route` or `upstream`: which concurrency limit shed the request.
    pub shed: Option<&'static str>,
    /// The response encoding the gateway applied.
    pub compression: Option<&'static str>,
    /// Bytes into and out of the compressor.
    pub compressed: Option<(usize, usize)>,
    pub streaming: bool,
    pub upstream: Option<SocketAddr>,
    /// The request was sent upstream (counted in flight for the upstream).
    pub upstream_started: bool,
    /// `connect`, `timeout`, `failed`: why the upstream exchange failed.
    pub upstream_error: Option<&'static str>,
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    /// `clamped` when a page size over the route's maximum was lowered.
    pub pagination: Option<&'static str>,
    /// The code a backend error body was normalized to (`validation_failed`, `not_found`...).
    pub backend_error: Option<&'static str>,
    /// `selected` when field selection filtered the body, `passed` when it could not.
    pub fields: Option<&'static str>,
}

/// What telemetry reads of the route a request took.
#[derive(Clone, Copy)]
pub struct RouteSeen<'a> {
    pub name: &'a str,
    pub metrics: &'a super::metrics::RouteHandles,
    /// The upstream's name and series; `None` for a route that denies.
    pub upstream: Option<(&'a str, &'a super::metrics::UpstreamHandles)>,
    pub slow_threshold: Duration,
}

/// The rest of what is known when a request ends, borrowed from the request.
pub struct Finished<'a> {
    pub request_id: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub user_agent: Option<&'a str>,
    pub route: Option<RouteSeen<'a>>,
    /// The route template's parameters, `name=value` separated by spaces (access line only).
    pub params: Option<String>,
    /// 0 when nothing was sent.
    pub status: u16,
    pub elapsed: Duration,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// An engine error that ended the request, for the access line.
    pub error: Option<String>,
    pub access_log: bool,
}

/// Where a finished request is reported.
pub struct Sinks<'a> {
    pub metrics: &'a Metrics,
    pub errors: &'a ErrorLog,
}

pub const NO_ROUTE: &str = super::metrics::NO_ROUTE;

/// Writes metrics, the span and the access line for one finished request.
pub fn record(out: &Outcome, f: &Finished<'_>, sinks: &Sinks<'_>, trace: Option<RequestTrace>) {
    let metrics = sinks.metrics;
    let route_name = f.route.map_or(NO_ROUTE, |r| r.name);
    if let Some(route) = f.route {
        route_metrics(out, f, route, metrics);
    }
    if let Some(code) = out.problem {
        metrics.gateway_error(route_name, code);
        if f.status >= 500 || f.status == 0 {
            let upstream = out.upstream.map(|a| a.to_string());
            let detail = out.problem_detail.as_deref().unwrap_or("");
            sinks.errors.record(route_name, code, upstream.as_deref(), f.request_id, detail);
        }
    }

    let trace_id = trace.as_ref().and_then(RequestTrace::trace_id);
    if let Some(t) = trace {
        if t.is_recording() {
            if let Some(d) = out.rate_limit {
                t.event("rate_limit", "fastgate.rate_limit.decision", d);
            }
            if let Some(s) = out.cache {
                t.event("cache", "fastgate.cache.status", s);
            }
            if let Some(c) = out.compression {
                t.event("compress", "http.response.content_encoding", c);
            }
        }
        let error = out.problem.or(f.error.as_ref().map(|_| "proxy_error"));
        t.finish(f.status, error);
    }

    if f.access_log {
        access_line(out, f, route_name, trace_id.as_deref());
    }
}

/// The route's own series: requests, sizes, its upstream, cache, invalidations, limits, slow
/// requests.
fn route_metrics(out: &Outcome, f: &Finished<'_>, route: RouteSeen<'_>, metrics: &Metrics) {
    let secs = f.elapsed.as_secs_f64();
    metrics.request_finished(route.name, route.metrics, f.method, f.status, secs);
    metrics.body_sizes(route.name, route.metrics, f.bytes_in, f.bytes_out);
    if let Some((upstream, series)) = route.upstream {
        if out.upstream_started {
            metrics.upstream_finished(upstream, series, out.ttfb.map(|t| t.as_secs_f64()));
        }
        if let Some(kind) = out.upstream_error {
            metrics.upstream_error(upstream, kind);
        }
    }
    if let Some(status) = out.cache {
        // the metric keeps `X-Cache`'s values, which dashboards key on
        let result = match status {
            "hit" | "revalidated" => "HIT",
            "miss" => "MISS",
            "stale" => "STALE",
            "expired" => "EXPIRED",
            _ => "BYPASS",
        };
        metrics.cache_result(route.name, result);
    }
    for (reason, n) in &out.invalidated {
        metrics.cache_purged("write", *n);
        metrics.cache_invalidated(route.name, reason, *n);
    }
    if let Some(limit) = &out.limited_by {
        metrics.rate_limited(route.name, limit);
    }
    if let Some(code) = out.backend_error {
        metrics.backend_error(route.name, code);
    }
    if let Some(scope) = out.shed {
        metrics.shed(route.name, scope);
    }
    if let (Some(alg), Some((bytes_in, bytes_out))) = (out.compression, out.compressed) {
        metrics.compression(alg, bytes_in, bytes_out);
    }
    if !out.streaming && f.elapsed > route.slow_threshold {
        metrics.slow_request(route.name);
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        tracing::warn!(
            request_id = f.request_id,
            route = %route.name,
            status = f.status,
            total_ms = secs * 1000.0,
            upstream_connect_ms = ms(out.connect),
            upstream_ttfb_ms = ms(out.ttfb),
            threshold_ms = route.slow_threshold.as_secs_f64() * 1000.0,
            upstream = out.upstream.map(|a| a.to_string()).as_deref().unwrap_or("-"),
            "slow request"
        );
    }
}

/// The access line: one JSON object per request (target `fastgate::access`).
fn access_line(out: &Outcome, f: &Finished<'_>, route_name: &str, trace_id: Option<&str>) {
    // Milliseconds to the microsecond: enough to read, short to store.
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: "fastgate::access",
        request_id = f.request_id,
        method = %f.method,
        path = f.path,
        route = route_name,
        params = f.params.as_deref(),
        status = f.status,
        duration_ms = ms(f.elapsed),
        client = out.client_ip.map(tracing::field::display),
        user_agent = f.user_agent,
        bytes_in = f.bytes_in,
        bytes_out = f.bytes_out,
        cache = out.cache,
        pagination = out.pagination,
        fields = out.fields,
        backend_error = out.backend_error,
        upstream = out.upstream.map(tracing::field::display),
        upstream_ttfb_ms = out.ttfb.map(ms),
        problem = out.problem,
        error = f.error.as_deref(),
        trace_id,
        "request"
    );
}
