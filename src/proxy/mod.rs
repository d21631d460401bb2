//! The pingora `ProxyHttp` implementation: a thin dispatcher per phase. Policy decisions live
//! in `policy/`, responses the gateway makes in `problem`, metrics in `telemetry`.
//!
//! Phase order for a proxied request: `early_request_filter` (snapshot config, request id) ->
//! `request_filter` (normalize, route, size cap on `Content-Length`) -> `request_body_filter`
//! (size cap while streaming) -> `upstream_peer` (pick a healthy server, timeouts) ->
//! `upstream_request_filter` (forwarding headers) -> `response_filter` -> `response_body_filter`
//! (total deadline) -> `logging`. Failures anywhere end in `fail_to_proxy`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod ctx;
pub mod headers;

use crate::app::App;
use crate::policy::concurrency::Shed;
use crate::policy::limits::{self, Declared};
use crate::policy::ratelimit::{self, Decision, RequestView};
use crate::problem::{self, GatewayError, Problem};
use crate::routing::{normalize::normalize, request_host};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use http::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use crate::cache;
use pingora::cache::key::{CacheKey, HashBinary};
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::modules::http::compression::ResponseCompression;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// For lookups: a `&str` name is parsed on every lookup, a `HeaderName` is not.
static X_FORWARDED_FOR_NAME: http::HeaderName = http::HeaderName::from_static(X_FORWARDED_FOR);
static REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(problem::REQUEST_ID_HEADER);
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

pub struct Gateway {
    app: Arc<App>,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        Gateway { app }
    }

    /// Writes a gateway-made response and records it. Returns `Ok(true)` for `request_filter`.
    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, err: GatewayError) -> Result<bool> {
        let (mut header, body) = problem::render(&err, &ctx.request_id);
        add_rate_limit_headers(&mut header, ctx);
        self.note_problem(ctx, &err);
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(header), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    fn note_problem(&self, ctx: &mut Ctx, err: &GatewayError) {
        ctx.problem_code = Some(err.problem.code());
        self.app.metrics.gateway_error(ctx.route_name(), err.problem.code());
    }
}

impl Gateway {
    /// RFC 9111 4.4: a successful unsafe request invalidates its own URI and its `Location` /
    /// `Content-Location`, plus the route's `invalidate_tags`.
    async fn invalidate_after_write(&self, session: &Session, route: &crate::routing::Route) {
        use cache::store::PurgeSelector;
        let req = session.req_header();
        let mut selectors = Vec::new();
        let path = normalize(req.uri.path()).map(|p| p.into_owned()).unwrap_or_default();
        let url_of = |path: &str, query: Option<&str>| cache::url_identity(path, query, &[]);
        selectors.push(PurgeSelector::Url(url_of(&path, req.uri.query())));
        if let Some(resp) = session.response_written() {
            for h in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
                let Some(loc) = resp.headers.get(&h).and_then(|v| v.to_str().ok()) else { continue };
                // Only same-origin, path-absolute references name an entry here.
                if let Ok(uri) = loc.parse::<http::Uri>()
                    && uri.authority().is_none()
                        && let Ok(p) = normalize(uri.path()) {
                            selectors.push(PurgeSelector::Url(url_of(&p, uri.query())));
                        }
            }
        }
        for t in &route.policy.invalidate_tags {
            if let Some(tag) = t.render(&req.headers, req.uri.query()) {
                selectors.push(PurgeSelector::Tag(tag));
            }
        }
        let mut purged = 0;
        for sel in &selectors {
            match self.app.cache.purge(sel).await {
                Ok(n) => purged += n,
                Err(e) => tracing::warn!(error = %e, "cache invalidation failed"),
            }
        }
        if purged > 0 {
            self.app.metrics.cache_purged("write", purged);
        }
    }
}

/// Keeps `err` for `fail_to_proxy` to render and returns the pingora error that stops the phase.
fn fail(ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
    let e = err.to_pingora();
    ctx.error = Some(err);
    e
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

fn add_rate_limit_headers(resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(h) = &ctx.rate_limit_headers {
        let _ = resp.insert_header("ratelimit-policy", h.policy.clone());
        let _ = resp.insert_header("ratelimit", h.state.clone());
    }
}

/// 414/431 from the `[server]` limits, checked before anything else looks at the request.
fn check_server_limits(req: &RequestHeader, limits: &crate::policy::ServerLimits) -> Option<GatewayError> {
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_length {
        return Some(GatewayError::new(
            Problem::UriTooLong,
            format!("request target is {target_len} bytes; the limit is {}", limits.max_uri_length),
        ));
    }
    if req.headers.len() > limits.max_header_count {
        return Some(GatewayError::new(
            Problem::HeadersTooLarge,
            format!("{} header fields; the limit is {}", req.headers.len(), limits.max_header_count),
        ));
    }
    let bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > limits.max_header_bytes {
        return Some(GatewayError::new(
            Problem::HeadersTooLarge,
            format!("header fields total {bytes} bytes; the limit is {}", limits.max_header_bytes),
        ));
    }
    None
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.in_flight = Some(self.app.track());
        let runtime = self.app.runtime();
        ctx.request_id = match session.req_header().headers.get(&REQUEST_ID_NAME) {
            Some(v) if headers::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => headers::new_request_id(),
        };
        if let Some(t) = &self.app.tracing {
            ctx.trace = Some(t.start_request(session.req_header(), client_ip(session)));
        }
        let limits = &runtime.limits;
        session.set_read_timeout(Some(limits.client_body_timeout));
        session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        if let Some(err) = check_server_limits(session.req_header(), limits) {
            session.set_keepalive(None);
            ctx.error = Some(err);
            ctx.runtime = Some(runtime);
            return Ok(());
        }

        // Routing happens here, before pingora's modules see the request, because the route
        // decides whether the compression module is switched on.
        let req = session.req_header();
        match normalize(req.uri.path()) {
            Err(e) => {
                session.set_keepalive(None);
                ctx.error = Some(GatewayError::new(Problem::BadRequest, format!("request path cannot be routed: {e:?}")));
            }
            Ok(path) => {
                ctx.route = runtime.routes.lookup(&req.method, request_host(req), &path).cloned();
                if let Some(r) = &ctx.route {
                    // paired with `request_finished` in `logging`, which runs for every request
                    self.app.metrics.request_started(&r.name, &r.metrics);
                }
                if let (Some(t), Some(r)) = (&ctx.trace, &ctx.route) {
                    t.set_route(&r.name, &req.method);
                }
                if let Cow::Owned(p) = path {
                    ctx.rewritten_path = Some(p);
                }
            }
        }
        ctx.runtime = Some(runtime);

        let chosen = ctx.route.as_ref().and_then(|r| {
            let policy = r.policy.compress.as_ref()?;
            let alg = policy.choose(session.req_header().headers.get(ACCEPT_ENCODING))?;
            Some((alg, policy.level(alg)))
        });
        if let Some((alg, level)) = chosen
            && let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
                c.adjust_algorithm_level(alg, level);
                ctx.compression = Some(alg);
                // pingora's module takes the first listed encoding: list only the one chosen.
                session
                    .req_header_mut()
                    .insert_header(ACCEPT_ENCODING, crate::policy::compress::token(alg))?;
            }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(err) = ctx.error.take() {
            return self.respond(session, ctx, err).await;
        }
        let Some(route) = ctx.route.clone() else {
            let req = session.req_header();
            let detail = format!("no route for {} {}", req.method, req.uri.path());
            return self.respond(session, ctx, GatewayError::new(Problem::NoRoute, detail)).await;
        };
        let policy = &route.policy;
        ctx.streaming = policy.streaming || session.is_upgrade_req();

        // Size cap from the declared length: refused before a byte of body is read.
        let declared = session.req_header().headers.get(CONTENT_LENGTH).map(HeaderValue::as_bytes);
        match limits::check_declared(declared, policy.max_body) {
            Declared::Fits | Declared::Unknown => {}
            Declared::TooLarge => {
                session.set_keepalive(None);
                let detail = format!("request body is larger than this route's limit of {} bytes", policy.max_body);
                return self.respond(session, ctx, GatewayError::new(Problem::PayloadTooLarge, detail)).await;
            }
            Declared::Invalid => {
                session.set_keepalive(None);
                return self.respond(session, ctx, GatewayError::new(Problem::BadRequest, "invalid Content-Length")).await;
            }
        }

        if let Some(limits) = &policy.rate_limits {
            let trusted = ctx.runtime.as_deref().map_or(&[][..], |rt| rt.trusted_proxies.as_slice());
            let req = session.req_header();
            let view = RequestView {
                client_ip: ratelimit::real_client_ip(client_ip(session), req.headers.get(X_FORWARDED_FOR), trusted),
                headers: &req.headers,
                query: req.uri.query(),
            };
            let decision = limits.check(&view);
            if let Some(t) = ctx.trace.as_ref().filter(|t| t.is_recording()) {
                let outcome = match &decision {
                    Decision::Allow(_) => "allow",
                    Decision::Limited { .. } => "limited",
                    Decision::MissingKey { .. } => "missing_key",
                };
                t.event("rate_limit", vec![opentelemetry::KeyValue::new("fastgate.rate_limit.decision", outcome)]);
            }
            match decision {
                Decision::Allow(headers) => ctx.rate_limit_headers = headers,
                Decision::Limited { retry_after, limit, headers } => {
                    ctx.rate_limit_headers = Some(headers);
                    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                    let err = GatewayError::new(Problem::RateLimited, format!("rate limit `{limit}` exceeded; retry in {secs}s"))
                        .retry_after(secs);
                    self.app.metrics.rate_limited(&route.name, &limit);
                    return self.respond(session, ctx, err).await;
                }
                Decision::MissingKey { status, key } => {
                    let problem = if status == 400 { Problem::KeyMissing } else { Problem::KeyRequired };
                    let err = GatewayError::new(problem, format!("this route is rate limited by `{key}`, which the request lacks"));
                    return self.respond(session, ctx, err).await;
                }
            }
        }

        Ok(false)
    }

    /// Concurrency slots are taken only by requests that go upstream: cache hits never queue.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(route) = ctx.route.clone() else { return Ok(true) };
        for (scope, conc) in [("route", route.policy.concurrency.as_deref()), ("upstream", route.upstream.concurrency.as_ref())] {
            let Some(conc) = conc else { continue };
            // A stream (WebSocket, SSE) would hold an upstream slot for its whole life: the
            // upstream limit guards short calls to the database pool. A route limit still applies.
            if ctx.streaming && scope == "upstream" {
                continue;
            }
            match conc.acquire().await {
                Ok(permit) => ctx.permits.push(permit),
                Err(shed) => {
                    let why = match shed {
                        Shed::QueueFull => "queue full",
                        Shed::QueueTimeout => "queue wait timed out",
                    };
                    let detail = format!("{scope} is at its limit of {} requests in flight ({why})", conc.def.max);
                    self.app.metrics.shed(&route.name, scope);
                    self.respond(session, ctx, GatewayError::new(Problem::Overloaded, detail).retry_after(1)).await?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else { return Ok(()) };
        let Some(policy) = route.policy.cache.as_ref() else { return Ok(()) };
        let req = session.req_header();
        if policy.bypass(&req.method, &req.headers).is_some() {
            ctx.cache_bypass = true;
            return Ok(());
        }
        let cache = &self.app.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(cache.settings.lock_timeout);
        session
            .cache
            .enable(cache.storage, None, None, Some(cache.lock), Some(overrides));
        session.cache.set_max_file_size_bytes(cache.settings.max_object_size);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let policy = ctx
            .route
            .as_ref()
            .and_then(|r| r.policy.cache.as_ref())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key for a route without cache"))?;
        let req = session.req_header();
        let path = ctx.rewritten_path.as_deref().unwrap_or(req.uri.path());
        let host = request_host(req).unwrap_or("");
        let (primary, info) = policy.key(host, path, req.uri.query(), &req.headers);
        let mut key = CacheKey::new(primary, "");
        key.extensions.insert(info);
        Ok(key)
    }

    fn response_cache_filter(&self, _session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<RespCacheable> {
        Ok(match ctx.route.as_ref().and_then(|r| r.policy.cache.as_ref()) {
            Some(policy) => policy.cacheable(resp, std::time::SystemTime::now()),
            None => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    fn cache_vary_filter(&self, meta: &CacheMeta, _ctx: &mut Ctx, req: &RequestHeader) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        for value in meta.headers().get_all(http::header::VARY) {
            let Ok(names) = value.to_str() else { continue };
            for name in names.split(',').map(|n| n.trim().to_ascii_lowercase()) {
                // Bodies are stored in one encoding (identity) and compressed per client on the
                // way out, so Accept-Encoding never splits an entry.
                if name.is_empty() || name == "accept-encoding" {
                    continue;
                }
                let joined: Vec<&[u8]> = req.headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
                variance.add_owned_name_value(name, joined.join(&b','));
            }
        }
        variance.finalize()
    }

    fn should_serve_stale(&self, _session: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        // None: stale-while-revalidate (pingora has checked the entry's window); an upstream
        // error or 5xx: stale-if-error. Never for the gateway's own refusals.
        error.is_none_or(|e| e.esource() == &pingora::ErrorSource::Upstream)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(chunk), Some(route)) = (body.as_ref(), ctx.route.as_ref()) else {
            return Ok(());
        };
        let max = route.policy.max_body;
        if limits::exceeds(&mut ctx.body_seen, chunk.len(), max) {
            // Drop the chunk that crossed the cap: the backend never receives more than the cap.
            *body = None;
            let err = GatewayError::new(
                Problem::PayloadTooLarge,
                format!("request body is larger than this route's limit of {max} bytes"),
            );
            return Err(fail(ctx, err));
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "upstream_peer without a route"));
        };
        let upstream = &route.upstream;
        let Some(addr) = upstream.select() else {
            let retry = upstream
                .def
                .health_check
                .as_ref()
                .map_or(1, |hc| hc.interval.as_secs().max(1));
            let err = GatewayError::new(
                Problem::NoHealthyUpstream,
                format!("no healthy server in upstream `{}`", upstream.name),
            )
            .retry_after(retry);
            return Err(fail(ctx, err));
        };
        ctx.upstream_addr = Some(addr);
        // pingora calls this again when it retries (a reused connection that failed): count the
        // request in flight once.
        if ctx.upstream_started.is_none() {
            self.app.metrics.upstream_started(&upstream.name, &upstream.metrics);
        }
        ctx.upstream_started = Some(Instant::now());
        let t = &route.policy.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.idle_timeout = Some(upstream.def.idle_timeout);
        if ctx.streaming {
            peer.options.read_timeout = Some(t.stream_idle);
        } else {
            let deadline = ctx.started + t.total;
            ctx.deadline = Some(deadline);
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            peer.options.read_timeout = Some(t.read.min(remaining));
            peer.options.write_timeout = Some(t.read.min(remaining));
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.connect_time = Some(if reused { Duration::ZERO } else { ctx.upstream_started.map_or(Duration::ZERO, |t| t.elapsed()) });
        Ok(())
    }

    /// Runs on the upstream's header before pingora caches it: hop-by-hop fields are removed
    /// here, once, so a cache hit has nothing left to strip.
    async fn upstream_response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.ttfb = ctx.upstream_started.map(|t| t.elapsed());
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            for name in headers::hop_by_hop(&resp.headers, false) {
                resp.remove_header(&name);
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Hop-by-hop fields are already gone: pingora's standard upstream request policy strips
        // them (and `Connection`-nominated ones) before this filter runs.
        upstream.insert_header(problem::REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        if matches!(session.cache.phase(), CachePhase::Stale | CachePhase::StaleUpdating) {
            // Revalidating a stored entry: ask with its validators, so an unchanged resource
            // costs the backend a 304 instead of a body.
            if let Some(meta) = session.cache.maybe_cache_meta() {
                let h = meta.headers();
                if let Some(etag) = h.get(http::header::ETAG).cloned() {
                    upstream.insert_header(http::header::IF_NONE_MATCH, etag)?;
                }
                if let Some(lm) = h.get(http::header::LAST_MODIFIED).cloned() {
                    upstream.insert_header(http::header::IF_MODIFIED_SINCE, lm)?;
                }
            }
        }
        if ctx.route.as_ref().is_some_and(|r| r.policy.compress.is_some() || r.policy.cache.is_some()) {
            // The gateway compresses (and caches) one canonical form: ask the backend for identity.
            upstream.remove_header(&ACCEPT_ENCODING);
        }

        let ip = client_ip(session);
        let trusted = ip.zip(ctx.runtime.as_deref()).is_some_and(|(ip, rt)| rt.is_trusted(ip));
        if let Some(ip) = ip {
            let appended = match upstream.headers.get(&X_FORWARDED_FOR_NAME).and_then(|v| v.to_str().ok()) {
                Some(chain) if trusted && !chain.trim().is_empty() => Some(format!("{chain}, {ip}")),
                _ => None,
            };
            match appended {
                Some(xff) => upstream.insert_header(X_FORWARDED_FOR, xff)?,
                None => upstream.insert_header(X_FORWARDED_FOR, headers::client_ip_value(ip))?,
            }
        }
        if !(trusted && upstream.headers.contains_key(X_FORWARDED_PROTO)) {
            upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static("http"))?;
        }
        if !(trusted && upstream.headers.contains_key(X_FORWARDED_HOST)) {
            if let Some(host) = upstream.headers.get(HOST).cloned() {
                upstream.insert_header(X_FORWARDED_HOST, host)?;
            } else {
                upstream.remove_header(X_FORWARDED_HOST);
            }
        }

        if let (Some(tracing), Some(trace)) = (&self.app.tracing, ctx.trace.as_mut()) {
            let route = ctx.route.as_ref().map_or("", |r| r.name.as_str());
            tracing.start_upstream(trace, upstream, ctx.upstream_addr, route);
        }
        if let Some(path) = ctx.rewritten_path.take() {
            let uri = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let uri = http::Uri::try_from(uri)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewriting normalized path", e))?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let upgraded = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        if let Some(t) = &ctx.trace {
            t.upstream_status(resp.status.as_u16());
        }
        let is_event_stream = resp
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if upgraded || is_event_stream {
            ctx.streaming = true;
        }
        resp.insert_header(problem::REQUEST_ID_HEADER, ctx.request_id.as_str())?;
        add_rate_limit_headers(resp, ctx);

        let Some(route) = ctx.route.clone() else { return Ok(()) };
        if route.policy.cache.is_some() {
            let status = if ctx.cache_bypass { "BYPASS" } else { cache::x_cache(session.cache.phase()) };
            resp.insert_header("x-cache", status)?;
            if !resp.headers.contains_key(http::header::AGE) {
                resp.insert_header(http::header::AGE, "0")?;
            }
            resp.remove_header(&self.app.cache.settings.tag_header);
            if let Some(t) = ctx.trace.as_ref().filter(|t| t.is_recording()) {
                t.event("cache", vec![opentelemetry::KeyValue::new("fastgate.cache.status", status)]);
            }
            self.app.metrics.cache_result(&route.name, status);
        }
        if let Some(cap) = route.policy.max_response_body {
            let declared = resp.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > cap) {
                let err = GatewayError::new(
                    Problem::ResponseTooLarge,
                    format!("upstream response is larger than this route's limit of {cap} bytes"),
                );
                return Err(fail(ctx, err));
            }
        }
        if let Some(alg) = ctx.compression {
            let eligible = route.policy.compress.as_ref().is_some_and(|p| p.eligible(resp));
            if !eligible {
                if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
                    c.adjust_level(0);
                }
                ctx.compression = None;
            } else if let Some(t) = ctx.trace.as_ref().filter(|t| t.is_recording()) {
                t.event(
                    "compress",
                    vec![opentelemetry::KeyValue::new("http.response.content_encoding", crate::policy::compress::token(alg))],
                );
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if !ctx.streaming && !end_of_stream && ctx.deadline.is_some_and(|d| Instant::now() > d) {
            // Headers are already out: the only honest signal left is closing the connection.
            tracing::warn!(request_id = %ctx.request_id, route = ctx.route_name(), "total timeout hit mid-response; closing");
            self.app.metrics.gateway_error(ctx.route_name(), "upstream_timeout");
            return Err(Error::explain(ErrorType::ReadTimedout, "total upstream timeout exceeded mid-response"));
        }
        let cap = ctx.route.as_ref().and_then(|r| r.policy.max_response_body);
        if let (Some(cap), Some(chunk)) = (cap, body.as_ref())
            && limits::exceeds(&mut ctx.response_seen, chunk.len(), cap) {
                // A streamed body crossed the cap after the headers went out: cut the connection
                // rather than hand the client a silently truncated body.
                *body = None;
                tracing::warn!(request_id = %ctx.request_id, route = ctx.route_name(), cap, "response body over max_response_body; closing");
                self.app.metrics.gateway_error(ctx.route_name(), "response_too_large");
                return Err(Error::explain(ErrorType::Custom("response_too_large"), "response body exceeds max_response_body"));
            }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // Gateway errors are logged by `ErrorLog`, aggregated; pingora's line per error is noise.
        true
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = ctx.error.take().or_else(|| GatewayError::from_pingora(e));
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = err.problem.status();
        let kind = match err.problem {
            Problem::UpstreamUnreachable => Some("connect"),
            Problem::UpstreamTimeout => Some("timeout"),
            Problem::UpstreamFailed => Some("failed"),
            _ => None,
        };
        if let (Some(kind), Some(route)) = (kind, ctx.route.as_ref()) {
            self.app.metrics.upstream_error(&route.upstream.name, kind);
        }
        if status >= 500 {
            let upstream = ctx.upstream_addr.map(|a| a.to_string());
            self.app
                .errors
                .record(ctx.route_name(), err.problem.code(), upstream.as_deref(), &ctx.request_id, &err.detail);
        }
        if session.response_written().is_some() {
            // Too late for a problem body; count it and let the connection close.
            self.note_problem(ctx, &err);
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        // The request may not have been read to its end: do not offer the connection for reuse.
        session.set_keepalive(None);
        if let Err(write_err) = self.respond(session, ctx, err).await {
            tracing::debug!(error = %write_err, "could not send error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let req = session.req_header();
        if let Some(route) = ctx.route.as_deref() {
            self.app
                .metrics
                .request_finished(&route.name, &route.metrics, &req.method, status, elapsed.as_secs_f64());
        }
        if (200..400).contains(&status) && !req.method.is_safe()
            && let Some(route) = ctx.route.as_deref() {
                self.invalidate_after_write(session, route).await;
            }
        if let Some(t) = ctx.trace.take() {
            let error = ctx.problem_code.or(e.map(|_| "proxy_error"));
            t.finish(status, error);
        }
        if let Some(route) = ctx.route.as_deref() {
            let metrics = &self.app.metrics;
            metrics.body_sizes(&route.name, &route.metrics, session.body_bytes_read(), session.body_bytes_sent());
            if ctx.upstream_started.is_some() {
                let up = &route.upstream;
                metrics.upstream_finished(&up.name, &up.metrics, ctx.ttfb.map(|t| t.as_secs_f64()));
            }
            if let Some((name, bytes_in, bytes_out, _)) = session
                .downstream_modules_ctx
                .get::<ResponseCompression>()
                .and_then(|c| c.get_info())
            {
                metrics.compression(name, bytes_in, bytes_out);
            }
            if !ctx.streaming && elapsed > route.policy.slow_threshold {
                metrics.slow_request(&route.name);
                let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
                tracing::warn!(
                    request_id = %ctx.request_id,
                    route = %route.name,
                    status,
                    total_ms = elapsed.as_secs_f64() * 1000.0,
                    upstream_connect_ms = ms(ctx.connect_time),
                    upstream_ttfb_ms = ms(ctx.ttfb),
                    threshold_ms = route.policy.slow_threshold.as_secs_f64() * 1000.0,
                    upstream = ctx.upstream_addr.map(|a| a.to_string()).as_deref().unwrap_or("-"),
                    "slow request"
                );
            }
        }
        if !ctx.runtime.as_ref().is_some_and(|r| r.limits.access_log) {
            return;
        }
        let upstream = ctx.upstream_addr.map(|a| a.to_string());
        tracing::info!(
            target: "fastgate::access",
            request_id = %ctx.request_id,
            method = %req.method,
            path = req.uri.path(),
            route = ctx.route_name(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = upstream.as_deref().unwrap_or("-"),
            problem = ctx.problem_code.unwrap_or("-"),
            error = e.map(|e| e.to_string()).as_deref().unwrap_or("-"),
            "request"
        );
    }
}
