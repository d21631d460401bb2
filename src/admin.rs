//! The admin listener (separate address, loopback by default):
//! - `GET /healthz`  the process is alive; never looks at the backend.
//! - `GET /readyz`   config loaded and every routed upstream has a healthy server.
//! - `GET /metrics`  Prometheus text format.
//! - `/admin/...`    the admin API, behind `server.admin_token` when one is set:
//!   `GET /admin/config` (the compiled route table), `POST /admin/reload` (same as SIGHUP).

use crate::app::App;
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
}

impl Admin {
    pub fn new(app: Arc<App>) -> Self {
        Admin { app }
    }
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
    let id = crate::proxy::headers::new_request_id();
    let (header, body) = problem::render(&err, &id);
    let mut resp = Response::new(body.to_vec());
    *resp.status_mut() = header.status;
    for (k, v) in header.headers.iter() {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl Admin {
    fn authorized(&self, session: &ServerSession) -> bool {
        let runtime = self.app.runtime();
        let Some(token) = runtime.admin_token.as_deref() else {
            return true;
        };
        session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| token_matches(given, token.as_bytes()))
    }

    fn readiness(&self) -> Response<Vec<u8>> {
        let runtime = self.app.runtime();
        let mut ready = true;
        let mut upstreams = serde_json::Map::new();
        for up in runtime.upstreams.values() {
            let used = runtime.routes.iter().any(|r| Arc::ptr_eq(&r.upstream, up));
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
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        json_response(
            status,
            json!({"ready": ready, "config_hash": runtime.hash, "upstreams": upstreams}),
        )
    }

    fn config_table(&self) -> Response<Vec<u8>> {
        let runtime = self.app.runtime();
        let routes: Vec<_> = runtime
            .routes
            .iter()
            .map(|r| {
                let t = &r.policy.timeouts;
                json!({
                    "name": r.name,
                    "match": r.matcher.to_string(),
                    "upstream": r.upstream.name,
                    "policy": r.policy.to_string(),
                    "timeout_ms": t.total.as_millis() as u64,
                    "connect_timeout_ms": t.connect.as_millis() as u64,
                    "read_timeout_ms": t.read.as_millis() as u64,
                    "max_body": r.policy.max_body,
                    "streaming": r.policy.streaming,
                })
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

    fn metrics(&self) -> Response<Vec<u8>> {
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
        // Admin requests carry no meaningful body; drain it so the connection stays usable.
        if let Err(e) = session.drain_request_body().await {
            tracing::debug!(error = %e, "admin: could not drain request body");
        }
        match (&method, path.as_str()) {
            (&Method::GET | &Method::HEAD, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET | &Method::HEAD, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => self.metrics(),
            (_, p) if p.starts_with("/admin/") && !self.authorized(session) => problem_response(GatewayError::new(
                Problem::Unauthorized,
                "admin API needs `Authorization: Bearer <server.admin_token>`",
            )),
            (&Method::GET, "/admin/config") => self.config_table(),
            (&Method::POST, "/admin/reload") => match reload::reload(&self.app) {
                Ok(()) => json_response(StatusCode::OK, json!({"reloaded": true, "hash": self.app.runtime().hash})),
                Err(e) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"reloaded": false, "errors": e.diagnostics().iter().map(ToString::to_string).collect::<Vec<_>>(), "error": e.to_string()}),
                ),
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/config" | "/admin/reload") => {
                problem_response(GatewayError::new(Problem::MethodNotAllowed, format!("{method} not allowed on {path}")))
            }
            _ => problem_response(GatewayError::new(Problem::NotFound, format!("no admin endpoint {path}"))),
        }
    }
}
