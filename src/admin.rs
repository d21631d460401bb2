//! The admin listener (separate address, loopback by default):
//! - `GET /healthz`  the process is alive; never looks at the backend.
//! - `GET /readyz`   config loaded and every routed upstream has passed a health check.
//! - `GET /metrics`  Prometheus text format.
//! - `GET /`, `/status.json`  the status page (the same figures as the metrics).
//! - `GET /history.json`  its plots: 5-second buckets over the last 15 minutes.
//! - `/admin/...`    the admin API: `GET /admin/config` (the compiled route table),
//!   `POST /admin/reload` (same as SIGHUP), `POST /admin/cache/purge`. With
//!   `server.admin_token` set it needs that bearer token from every peer; without one, only
//!   loopback peers reach it (and config refuses a non-loopback `admin_listen` without one).
//!
//! `server.probe_listen` serves the read-only views above and nothing under `/admin/`, so
//! probes and scrapers can reach it off the host while the admin API stays on loopback.

use crate::app::App;
use crate::edge::forwarding::new_request_id;
use crate::problem::{self, GatewayError, Problem};
use crate::reload;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    app: Arc<App>,
    /// The probe listener: read-only views only.
    probes_only: bool,
}

/// The admin API's gate: the bearer token when one is set (from every peer), else a loopback
/// peer. An IPv4 peer on a dual-stack socket shows as `::ffff:127.0.0.1`: loopback too.
fn gate(token: Option<&str>, peer: Option<std::net::IpAddr>, given: Option<&[u8]>) -> Result<(), GatewayError> {
    let Some(token) = token else {
        return match peer {
            Some(ip) if ip.to_canonical().is_loopback() => Ok(()),
            _ => Err(GatewayError::new(Problem::Forbidden, "without server.admin_token the admin API answers loopback peers only")),
        };
    };
    if given.is_some_and(|given| token_matches(given, token.as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::new(Problem::Unauthorized, "admin API needs `Authorization: Bearer <server.admin_token>`"))
    }
}

impl Admin {
    pub fn new(app: Arc<App>) -> Self {
        Admin { app, probes_only: false }
    }

    pub fn probes(app: Arc<App>) -> Self {
        Admin { app, probes_only: true }
    }
}

/// The views any peer that reaches the listener may read: they change nothing and show no
/// more than the metrics do.
fn read_only(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/" | "/status.json" | "/history.json")
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

fn problem_response(err: GatewayError) -> Response<Vec<u8>> {
    problem::http_response(&err, &new_request_id(), None)
}

const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The status page: self-contained HTML that polls `/status.json`.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// The request body, up to `max` bytes; a problem response when it is larger or unreadable.
async fn read_body(session: &mut ServerSession, max: usize) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(problem_response(GatewayError::new(
                        Problem::PayloadTooLarge,
                        format!("admin request bodies are limited to {max} bytes"),
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(problem_response(GatewayError::new(Problem::BadRequest, format!("cannot read body: {e}")))),
        }
    }
}

/// `POST /admin/cache/purge` bodies: exactly one selector.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    tag: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    url: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    all: bool,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl Admin {
    /// The admin API's gate for this request.
    fn authorized(&self, session: &ServerSession) -> Result<(), GatewayError> {
        let runtime = self.app.runtime();
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        gate(runtime.admin_token.as_deref(), peer, given)
    }

    fn readiness(&self) -> Response<Vec<u8>> {
        let runtime = self.app.runtime();
        let mut ready = true;
        let mut upstreams = serde_json::Map::new();
        for up in runtime.upstreams.values() {
            let used = runtime.routes.iter().any(|r| r.upstream().is_some_and(|u| Arc::ptr_eq(u, up)));
            let up_ready = up.is_ready();
            if used && !up_ready {
                ready = false;
            }
            let servers: Vec<_> = up
                .server_health()
                .into_iter()
                .map(|(addr, healthy)| json!({"address": addr.to_string(), "healthy": healthy}))
                .collect();
            upstreams.insert(up.name.clone(), json!({"ready": up_ready, "servers": servers}));
        }
        let warmed = self.app.warm_done();
        let ready = ready && warmed;
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        json_response(
            status,
            json!({"ready": ready, "config_hash": runtime.hash, "cache_warmed": warmed, "upstreams": upstreams, "state": self.state_json()}),
        )
    }

    fn status_json(&self) -> Response<Vec<u8>> {
        let runtime = self.app.runtime();
        let (window_s, per_route) = self.app.status.window(&self.app.metrics);
        let routes: Vec<_> = runtime
            .routes
            .iter()
            .map(|r| {
                let w = per_route.get(&r.name);
                json!({
                    "name": r.name,
                    "match": r.matcher.to_string(),
                    "upstream": r.target_name(),
                    "policy": r.def.to_string(),
                    "requests_total": w.map_or(0.0, |w| w.requests_total),
                    "rps": w.map_or(0.0, |w| w.rps),
                    "error_rate": w.and_then(|w| w.error_rate),
                    "p50_ms": w.and_then(|w| w.p50_ms),
                    "p95_ms": w.and_then(|w| w.p95_ms),
                    "p99_ms": w.and_then(|w| w.p99_ms),
                    "cache_hit_ratio": w.and_then(|w| w.cache_hit_ratio),
                    "rate_limited_share": w.and_then(|w| w.rate_limited_share),
                })
            })
            .collect();
        let upstreams: Vec<_> = runtime
            .upstreams
            .values()
            .map(|up| {
                let servers: Vec<_> = up
                    .server_health()
                    .into_iter()
                    .map(|(addr, healthy)| json!({"address": addr.to_string(), "healthy": healthy}))
                    .collect();
                json!({"name": up.name, "ready": up.is_ready(), "servers": servers})
            })
            .collect();
        let last = self.app.last_load();
        let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        json_response(
            StatusCode::OK,
            json!({
                "config": {
                    "hash": runtime.hash,
                    "loaded_at_ms": self.app.loaded_at().map_or(0, ms),
                    "last_load": last.map(|l| json!({"ok": l.ok, "message": l.message, "at_ms": ms(l.at)})),
                },
                "uptime_s": self.app.uptime().as_secs_f64(),
                "in_flight": self.app.in_flight(),
                "window_s": window_s,
                "routes": routes,
                "upstreams": upstreams,
                "state": self.state_json(),
            }),
        )
    }

    /// Where shared state lives and whether it answers. Readiness does not depend on it: every
    /// replica shares the one Redis, so failing readiness would take them all out together,
    /// while the routes keep serving per `on_state_error`.
    fn state_json(&self) -> serde_json::Value {
        match &self.app.redis {
            None => json!({"backend": "memory", "up": true}),
            Some(r) => serde_json::to_value(r.health_view()).unwrap_or_default(),
        }
    }

    fn config_table(&self) -> Response<Vec<u8>> {
        let runtime = self.app.runtime();
        let routes: Vec<_> = runtime
            .routes
            .iter()
            .map(|r| {
                let mut row = serde_json::Map::new();
                row.insert("name".into(), json!(r.name));
                row.insert("match".into(), json!(r.matcher.to_string()));
                row.insert("upstream".into(), json!(r.target_name()));
                row.insert("policy".into(), json!(r.def.to_string()));
                // each policy's own fields (timeouts, body cap...)
                row.extend(r.def.facts());
                serde_json::Value::Object(row)
            })
            .collect();
        let last = self.app.last_load();
        json_response(
            StatusCode::OK,
            json!({
                "hash": runtime.hash,
                "routes": routes,
                "last_load": last.map(|l| json!({"ok": l.ok, "message": l.message})),
            }),
        )
    }

    async fn purge(&self, body: &[u8]) -> Response<Vec<u8>> {
        use crate::cache::store::PurgeSelector;
        let req: PurgeRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return problem_response(GatewayError::new(
                    Problem::BadRequest,
                    format!("purge body: {e}; send one of {{\"tag\"}}, {{\"tags\"}}, {{\"url\"}}, {{\"prefix\"}}, {{\"all\": true}}"),
                ))
            }
        };
        let mut selectors: Vec<PurgeSelector> = req.tags.into_iter().chain(req.tag).map(PurgeSelector::Tag).collect();
        if let Some(url) = req.url {
            let (path, query) = url.split_once('?').map_or((url.as_str(), None), |(p, q)| (p, Some(q)));
            match crate::model::normalize::normalize(path) {
                Ok(p) => selectors.push(PurgeSelector::Url(crate::cache::url_identity(&p, query, &[]))),
                Err(_) => return problem_response(GatewayError::new(Problem::BadRequest, "`url` must be a path starting with /")),
            }
        }
        if let Some(prefix) = req.prefix {
            selectors.push(PurgeSelector::PathPrefix(prefix));
        }
        if req.all {
            selectors.push(PurgeSelector::All);
        }
        if selectors.is_empty() {
            return problem_response(GatewayError::new(Problem::BadRequest, "name what to purge: tag, tags, url, prefix or all"));
        }
        let mut purged = 0;
        for sel in &selectors {
            match self.app.cache.purge(sel).await {
                Ok(n) => purged += n,
                Err(e) => {
                    return problem_response(GatewayError::new(
                        Problem::StateUnavailable,
                        format!("purge failed: {e}; this replica's local copies were dropped, the shared store and other replicas were not reached"),
                    ))
                }
            }
        }
        self.app.metrics.cache_purged("admin", purged);
        tracing::info!(purged, "cache purge");
        json_response(StatusCode::OK, json!({"purged": purged}))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let st = self.app.cache.store.stats();
        self.app.metrics.set_cache_stats(st.entries, st.bytes, st.evictions);
        if let Some(r) = &self.app.redis {
            use std::sync::atomic::Ordering::Relaxed;
            let h = &r.health;
            self.app.metrics.set_state(h.is_up(), h.errors.load(Relaxed), h.timeouts.load(Relaxed), h.skipped.load(Relaxed));
        }
        let runtime = self.app.runtime();
        self.app.metrics.reset_upstream_health();
        for up in runtime.upstreams.values() {
            for (addr, healthy) in up.server_health() {
                self.app.metrics.set_upstream_health(&up.name, &addr.to_string(), healthy);
            }
        }
        let mut resp = Response::new(self.app.metrics.encode());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if !read_only(&path) {
            if self.probes_only {
                let detail = format!("no endpoint {path} here: the probe listener serves /healthz, /readyz, /metrics and the status page");
                return problem_response(GatewayError::new(Problem::NotFound, detail));
            }
            if let Err(e) = self.authorized(session) {
                return problem_response(e);
            }
        }
        let body = match read_body(session, MAX_ADMIN_BODY).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match (&method, path.as_str()) {
            (&Method::GET, "/") => {
                let mut resp = Response::new(STATUS_PAGE.as_bytes().to_vec());
                resp.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/html; charset=utf-8"));
                resp
            }
            (&Method::GET, "/status.json") => self.status_json(),
            (&Method::GET, "/history.json") => json_response(StatusCode::OK, self.app.history_json()),
            (&Method::GET | &Method::HEAD, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET | &Method::HEAD, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => self.metrics(),
            (&Method::GET, "/admin/config") => self.config_table(),
            (&Method::POST, "/admin/cache/purge") => self.purge(&body).await,
            (&Method::POST, "/admin/reload") => match reload::reload(&self.app) {
                Ok(()) => json_response(StatusCode::OK, json!({"reloaded": true, "hash": self.app.runtime().hash})),
                Err(e) => {
                    let errors: Vec<String> = match &e {
                        reload::ReloadError::Config(c) => c.diagnostics().iter().map(ToString::to_string).collect(),
                        reload::ReloadError::Runtime(s) => vec![s.to_string()],
                    };
                    let mut ext = serde_json::Map::new();
                    ext.insert("reloaded".into(), json!(false));
                    ext.insert("errors".into(), json!(errors));
                    let err = GatewayError::new(Problem::ConfigInvalid, e.to_string());
                    problem::http_response(&err, &new_request_id(), Some(&ext))
                }
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/config" | "/admin/reload" | "/admin/cache/purge") => {
                let allow = match path.as_str() {
                    "/healthz" | "/readyz" => "GET, HEAD",
                    "/metrics" | "/admin/config" => "GET",
                    _ => "POST",
                };
                problem_response(GatewayError::new(Problem::MethodNotAllowed, format!("{method} not allowed on {path}")).allow(allow))
            }
            _ => problem_response(GatewayError::new(Problem::NotFound, format!("no admin endpoint {path}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_without_a_token_is_loopback_only_and_with_one_is_the_token() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(gate(None, ip(peer), None).is_ok(), "{peer}");
        }
        for peer in [ip("10.0.0.5"), ip("::ffff:10.0.0.5"), None] {
            assert_eq!(gate(None, peer, None).unwrap_err().problem, Problem::Forbidden, "{peer:?}");
        }
        assert!(gate(Some("t0k"), ip("10.0.0.5"), Some(b"t0k")).is_ok());
        for given in [None, Some(&b"t0"[..]), Some(&b"t0kx"[..])] {
            assert_eq!(gate(Some("t0k"), ip("127.0.0.1"), given).unwrap_err().problem, Problem::Unauthorized);
        }
    }
}
