//! Per-request state carried across pingora's phases.

use crate::app::InFlight;
use crate::config::Runtime;
use crate::problem::GatewayError;
use crate::routing::Route;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Ctx {
    pub started: Instant,
    /// The config snapshot this request runs on, start to finish.
    pub runtime: Option<Arc<Runtime>>,
    pub route: Option<Arc<Route>>,
    pub request_id: String,
    /// Set when the normalized path differs from the one received; forwarded instead.
    pub rewritten_path: Option<String>,
    /// An upgrade, a streaming route or an event stream: no total deadline.
    pub streaming: bool,
    /// End of the total upstream timeout, for non-streaming exchanges.
    pub deadline: Option<Instant>,
    pub upstream_addr: Option<SocketAddr>,
    pub body_seen: u64,
    /// What the gateway decided went wrong; rendered by `fail_to_proxy`.
    pub error: Option<GatewayError>,
    /// The problem code of the response the gateway produced, if it produced one.
    pub problem_code: Option<&'static str>,
    pub in_flight: Option<InFlight>,
    /// `RateLimit-Policy` / `RateLimit` for the response.
    pub rate_limit_headers: Option<crate::policy::ratelimit::Headers>,
    /// Concurrency slots (route, upstream), released when the request ends.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// The encoding chosen for the response, if the route compresses.
    pub compression: Option<pingora::protocols::http::compression::Algorithm>,
    pub response_seen: u64,
    /// The request's spans, when tracing is on.
    pub trace: Option<crate::telemetry::otel::RequestTrace>,
    /// The route caches, but this request may not use the cache.
    pub cache_bypass: bool,
    /// When `upstream_peer` chose a server; connect time and time to the response header.
    pub upstream_started: Option<std::time::Instant>,
    pub connect_time: Option<std::time::Duration>,
    pub ttfb: Option<std::time::Duration>,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            started: Instant::now(),
            runtime: None,
            route: None,
            request_id: String::new(),
            rewritten_path: None,
            streaming: false,
            deadline: None,
            upstream_addr: None,
            body_seen: 0,
            error: None,
            problem_code: None,
            in_flight: None,
            rate_limit_headers: None,
            permits: Vec::new(),
            compression: None,
            response_seen: 0,
            trace: None,
            cache_bypass: false,
            upstream_started: None,
            connect_time: None,
            ttfb: None,
        }
    }

    pub fn route_name(&self) -> &str {
        self.route.as_deref().map_or(crate::telemetry::metrics::NO_ROUTE, |r| r.name.as_str())
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
