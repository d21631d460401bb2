//! The pingora `ProxyHttp` implementation: a thin dispatcher. Each phase builds the policies'
//! view of the exchange, runs the route's policy chain (`policy::RoutePolicies`, in its fixed
//! order) and carries out what the chain decided. Policy logic lives in `policy/`, the
//! gateway's own responses in `respond` (rendered by `problem`), metrics, logs and spans in
//! `telemetry` (from the request's one `Outcome`).
//!
//! The phases below are in the order pingora calls them for a proxied request:
//! 1. `new_ctx`: config snapshot, in-flight count;
//! 2. `early_request_filter`: request id, trace, `[server]` limits, path normalization,
//!    routing, then every route policy's `on_request` -> a `Decision`;
//! 3. `request_filter`: answers a refused or unrouted request from the decision, and a
//!    fresh cache hit on its fast path (`CacheRoute::fresh_hit`), before pingora's cache runs;
//! 4. `request_cache_filter`, `cache_key_callback`: cache on for routes that cache;
//! 5. `proxy_upstream_filter`: a cache miss goes upstream: `admit` (concurrency slots);
//! 6. `upstream_peer`: a healthy server, `on_peer` (timeouts);
//! 7. `connected_to_upstream`, `upstream_request_filter`: forwarding headers, `on_upstream_request`;
//! 8. `request_body_filter`: `on_request_body` (body cap), as the body streams upstream;
//! 9. `upstream_response_filter`: hop-by-hop fields removed before the cache stores the header;
//! 10. `response_cache_filter`, `cache_vary_filter`, `should_serve_stale`;
//! 11. `response_filter`: `decorate` and `on_response` on the header the client gets;
//! 12. `response_body_filter`: `on_response_body` (compression, response cap, total deadline);
//! 13. `fail_to_proxy` on any error; `logging` last, always: `on_done`, then telemetry.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod conn;
pub mod ctx;
mod engine;
pub mod front;
mod hit;
pub mod respond;

use crate::app::App;
use crate::cache;
use crate::edge::forwarding;
use crate::policy::{Directives, Failure, Flow, Policy};
use crate::problem::{self, GatewayError, Problem};
use crate::model::matcher::request_host;
use crate::model::normalize::{normalize_with, PathError};
use crate::routing::Target;
use crate::telemetry::outcome::{self, Finished, Sinks};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::{Core, Ctx, Decision};
use engine::{apply, buffer_body, cache_key, cut, exchange, fail, view};
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct Gateway {
    app: Arc<App>,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        Gateway { app }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.app.runtime(), self.app.track())
    }

    /// No engine modules: pingora adds its compression module, switched off, to every request
    /// by default; fastgate compresses in its own policy.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let rt = &*ctx.core.runtime;
        // one pass over the request's few names: cheaper than hashing each listed name
        let remove = &rt.forwarding.remove_request_headers;
        if session.req_header().headers.keys().any(|k| remove.contains(k)) {
            for h in remove {
                session.req_header_mut().remove_header(h);
            }
        }
        let (body_timeout, keepalive) = (rt.limits.client_body_timeout, rt.limits.keepalive_timeout);
        session.set_read_timeout(Some(body_timeout));
        // Only where pingora would keep the connection: it closes after an ambiguous message.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(keepalive.as_secs()));
        }
        let peer_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        self.identify(req, ctx, peer_ip, tls);
        let mut d = Directives::default();
        let phase = session.cache.phase();
        ctx.decision = route_request(req, &mut ctx.core, phase, &mut d).await;
        self.enter_route(req, ctx, phase, session.is_upgrade_req(), &mut d).await;
        apply(session, d)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let err = match &ctx.decision {
            Decision::Routed(route) => match route.policies.body.as_ref().and_then(|b| b.buffer) {
                None => {
                    let mut hit = None;
                    if let Some(c) = route.policies.cache.as_ref()
                        && let Some(policy) = c.policy.as_ref()
                        && c.may_hit_fast(&exchange(session, &ctx.core), &ctx.record.scratch.cache)
                    {
                        hit = c.fresh_hit(&cache_key(session.req_header(), &ctx.core, policy).combined_bin());
                    }
                    return match hit {
                        Some(hit) => self.serve_fresh_hit(session, ctx, hit).await.map(|()| true),
                        None => Ok(false),
                    };
                }
                Some(limit) => match buffer_body(session, limit).await {
                    Ok(()) => return Ok(false),
                    Err(err) => {
                        // what is left of the body is unread: the connection cannot be reused
                        session.set_keepalive(None);
                        err
                    }
                },
            },
            Decision::Rejected { err, .. } => err.clone(),
            Decision::Pending | Decision::NoRoute => {
                let req = session.req_header();
                GatewayError::new(Problem::NoRoute, format!("no route for {} {}", req.method, req.uri.path()))
            }
        };
        respond::respond(session, ctx, err).await?;
        Ok(true)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Decision::Routed(route) = &ctx.decision else { return Ok(()) };
        if !route.policies.cache.as_ref().is_some_and(|c| c.enabled(&ctx.record.scratch.cache)) {
            return Ok(());
        }
        let cache = &self.app.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(cache.settings.lock_timeout);
        session.cache.enable(cache.storage, None, None, Some(cache.lock), Some(overrides));
        session.cache.set_max_file_size_bytes(cache.settings.max_object_size);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let policy = ctx
            .route()
            .and_then(|r| r.policies.cache.as_ref()?.policy.as_ref())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache key for a route without cache"))?;
        Ok(cache_key(session.req_header(), &ctx.core, policy))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(route) = ctx.decision.route() else { return Ok(false) };
        let flow = route.policies.admit(&exchange(session, &ctx.core), &mut ctx.record.scratch).await;
        match flow {
            Flow::Continue => Ok(true),
            Flow::Respond(err) => {
                respond::respond(session, ctx, err).await?;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.decision.route() else {
            return Err(Error::explain(ErrorType::InternalError, "upstream_peer without a route"));
        };
        let Some(upstream) = route.upstream() else {
            return Err(Error::explain(ErrorType::InternalError, "upstream_peer on a route that denies"));
        };
        let Some(addr) = upstream.select(ctx.core.failed_server) else {
            let retry = upstream.def.health_check.as_ref().map_or(1, |hc| hc.interval.as_secs().max(1));
            let detail = format!("no healthy server in upstream `{}`", upstream.name);
            return Err(fail(ctx, GatewayError::new(Problem::NoHealthyUpstream, detail).retry_after(retry)));
        };
        ctx.record.outcome.upstream = Some(addr);
        // pingora calls this again when it retries a failed reused connection: count once.
        if !ctx.record.outcome.upstream_started {
            ctx.record.outcome.upstream_started = true;
            self.app.metrics.upstream_started(&upstream.name, &upstream.metrics);
        }
        let mut peer = upstream.peer(addr);
        route.policies.on_peer(&exchange(session, &ctx.core), &mut ctx.record.scratch, &mut peer.options);
        ctx.core.upstream_at = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// A connect failure is noted against the server (passive health) and retried: nothing
    /// of the request was sent, so any method may be. Without a route `retry`, only while the
    /// upstream has another server to try; with one, up to its `attempts` when it lists
    /// `connect`.
    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let Some(route) = ctx.decision.route() else { return e };
        let (Some(upstream), Some(addr)) = (route.upstream(), peer.address().as_inet()) else {
            return e;
        };
        upstream.failed(*addr);
        let attempts = route.policies.retries(Failure::Connect).unwrap_or_else(|| upstream.failover_attempts());
        if ctx.core.retries < attempts {
            ctx.core.retries += 1;
            ctx.core.failed_server = Some(*addr);
            e.set_retry(true);
        }
        e
    }

    /// An exchange that failed after the connect: retried only on a route whose `retry`
    /// names the failure, for a safe method, and before any of the response went out.
    /// Otherwise pingora's own rule stands (a reused pooled connection that turned out dead is
    /// retried once).
    fn error_while_proxy(&self, peer: &HttpPeer, session: &mut Session, e: Box<Error>, ctx: &mut Ctx, client_reused: bool) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = &session.req_header().method;
        let safe = matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        if !method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Failure::Timeout),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => Some(Failure::Reset),
            _ => None,
        };
        let attempts = failure.and_then(|f| ctx.decision.route()?.policies.retries(f));
        if let Some(attempts) = attempts
            && safe
            && e.esource() == &pingora::ErrorSource::Upstream
            && session.response_written().is_none()
            && ctx.core.retries < attempts
        {
            ctx.core.retries += 1;
            ctx.core.failed_server = peer.address().as_inet().copied();
            e.set_retry(true);
        }
        e
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
        let since_chosen = ctx.core.upstream_at.map_or(Duration::ZERO, |t| t.elapsed());
        ctx.record.outcome.connect = Some(if reused { Duration::ZERO } else { since_chosen });
        Ok(())
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = ctx.decision.route() else { return Ok(()) };
        let x = exchange(session, &ctx.core);
        let done = ctx
            .core
            .runtime
            .forwarding
            .on_upstream_request(&x, upstream, &mut ())
            .and_then(|()| route.policies.on_upstream_request(&x, upstream, &mut ctx.record.scratch));
        if let Err(err) = done {
            return Err(fail(ctx, err));
        }
        if let (Some(tracing), Some(trace)) = (&self.app.tracing, ctx.trace.as_mut()) {
            tracing.start_upstream(trace, upstream, ctx.record.outcome.upstream, &route.name);
        }
        if let Some(path) = &ctx.core.rewritten_path {
            let uri = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let uri = http::Uri::try_from(uri).map_err(|e| Error::because(ErrorType::InternalError, "rewriting normalized path", e))?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, _eos: bool, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = ctx.decision.route() else { return Ok(()) };
        match route.policies.on_request_body(body, &mut ctx.record.scratch) {
            Ok(()) => Ok(()),
            Err(err) => Err(fail(ctx, err)),
        }
    }

    /// Runs on the upstream's header before pingora caches it: hop-by-hop fields are removed
    /// here, once, so a cache hit has nothing left to strip.
    async fn upstream_response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.record.outcome.ttfb = ctx.core.upstream_at.map(|t| t.elapsed());
        if let Some(t) = &ctx.trace {
            t.upstream_status(resp.status.as_u16());
        }
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            for name in forwarding::hop_by_hop(&resp.headers, false) {
                resp.remove_header(&name);
            }
        }
        if resp.status == http::StatusCode::NOT_MODIFIED && session.cache.maybe_cache_meta().is_some() {
            // kept for `response_cache_filter`, which pingora hands only its own merge
            ctx.core.not_modified = Some(Box::new(resp.clone()));
        }
        Ok(())
    }

    fn response_cache_filter(&self, _session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<RespCacheable> {
        let Some(policy) = ctx.decision.route().and_then(|r| r.policies.cache.as_ref()?.policy.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        if ctx.record.scratch.cache.no_store() {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::Custom("request no-store")));
        }
        let response_time = SystemTime::now();
        let request_time = ctx.core.upstream_at.map_or(response_time, |t| response_time.checked_sub(t.elapsed()).unwrap_or(response_time));
        let at = cache::Exchanged { request_time, response_time };
        // After a 304, the stored header updated with the 304's fields (RFC 9111 3.2); pingora's
        // own merge copies only its validators and freshness fields.
        Ok(match ctx.core.not_modified.take() {
            Some(fresh) => policy.cacheable(&cache::merge_not_modified(resp, &fresh), at),
            None => policy.cacheable(resp, at),
        })
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit: &mut pingora::cache::HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let Some(cache) = ctx.decision.route().and_then(|r| r.policies.cache.as_ref()) else { return Ok(None) };
        Ok(cache.on_hit(&mut ctx.record.scratch.cache, meta, is_fresh))
    }

    fn cache_vary_filter(&self, meta: &CacheMeta, _ctx: &mut Ctx, req: &RequestHeader) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(&self, session: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        // None: stale-while-revalidate (pingora has checked the entry's window); an upstream
        // error or 5xx: stale-if-error. Never for the gateway's own refusals.
        let serve = error.is_none_or(|e| e.esource() == &pingora::ErrorSource::Upstream);
        if serve && error.is_some() {
            // pingora closes the client connection after a stale-if-error answer (it passes
            // the failed upstream attempt's "no reuse" on), but would write the answer with
            // keep-alive: the client's next request on it then meets a closed connection.
            // Say so in the answer instead (found by bench/soak, under kill -9 of the backend).
            session.set_keepalive(None);
        }
        serve
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if session.is_process_shutting_down() {
            // draining: the client learns from this response not to send another here
            session.set_keepalive(None);
        }
        let mut d = Directives::default();
        let (phase, meta) = (session.cache.phase(), session.cache.maybe_cache_meta());
        if let Err(err) = self.outgoing(session.req_header(), ctx, phase, meta, resp, &mut d).await {
            return Err(fail(ctx, err));
        }
        apply(session, d)
    }

    fn response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> Result<Option<Duration>> {
        let Some(route) = ctx.decision.route() else { return Ok(None) };
        match route.policies.on_response_body(body, eos, &mut ctx.record.scratch) {
            Ok(()) => Ok(None),
            Err(c) => Err(cut(ctx, c)),
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // Gateway errors are logged by `ErrorLog`, aggregated; pingora's line per error is noise.
        true
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let closed = FailToProxy { error_code: 0, can_reuse_downstream: false };
        if ctx.record.outcome.problem.is_some() && session.response_written().is_some() {
            // A cut after the header went out, already noted.
            return closed;
        }
        let Some(err) = ctx.failure.take().or_else(|| GatewayError::from_pingora(e)) else {
            return closed; // the client is gone: nothing can be sent
        };
        let status = err.problem.status();
        ctx.record.outcome.upstream_error = match err.problem {
            Problem::UpstreamUnreachable => Some("connect"),
            Problem::UpstreamTimeout => Some("timeout"),
            Problem::UpstreamFailed => Some("failed"),
            _ => None,
        };
        // connect failures were noted per attempt in `fail_to_connect`
        if matches!(err.problem, Problem::UpstreamTimeout | Problem::UpstreamFailed)
            && let (Some(up), Some(addr)) = (ctx.decision.route().and_then(|r| r.upstream()), ctx.record.outcome.upstream)
        {
            up.failed(addr);
        }
        if session.response_written().is_some() {
            // Too late for a problem body; note it and let the connection close.
            respond::note(ctx, err);
        } else {
            // The request may not have been read to its end: do not offer the connection again.
            session.set_keepalive(None);
            if let Err(write_err) = respond::respond(session, ctx, err).await {
                tracing::debug!(error = %write_err, "could not send error response");
            }
        }
        FailToProxy { error_code: status, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let sent = Sent {
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        };
        self.finish(session.req_header(), ctx, sent, e.map(|e| e.to_string()));
    }
}

impl Gateway {
    /// Who sent the request, its id and its trace: the first thing every request gets.
    fn identify(&self, req: &RequestHeader, ctx: &mut Ctx, peer_ip: Option<IpAddr>, tls: bool) {
        let rt = &*ctx.core.runtime;
        ctx.core.request_id = forwarding::Forwarding::request_id(req);
        ctx.core.peer_ip = peer_ip;
        ctx.core.tls = tls;
        ctx.core.trusted_peer = peer_ip.is_some_and(|ip| rt.forwarding.is_trusted(ip));
        ctx.core.client_ip = rt.forwarding.client_ip(peer_ip, req);
        if let Some(t) = &self.app.tracing {
            ctx.trace = Some(t.start_request(req, peer_ip));
        }
    }

    /// The route's part of the first phase, for a routed request: its metrics and span, then
    /// its `deny` or its policies' `on_request`, which may turn the decision into a refusal.
    /// Budgets are taken here (rate-limit tokens): it runs once per request.
    async fn enter_route(&self, req: &RequestHeader, ctx: &mut Ctx, phase: CachePhase, upgrade: bool, d: &mut Directives) {
        let Decision::Routed(route) = &ctx.decision else { return };
        // paired with `request_finished` in `finish`, which runs for every request
        self.app.metrics.request_started(&route.name, &route.metrics);
        if let Some(t) = &ctx.trace {
            t.set_route(&route.name, route.matcher.template().map(|t| t.as_str()), &req.method);
        }
        ctx.core.streaming = route.streaming || upgrade;
        let refusal = match route.target {
            Target::Deny(problem) => Some(GatewayError::new(problem, format!("{} {} is not served here", req.method, req.uri.path()))),
            Target::Upstream(_) => match route.policies.on_request(&view(req, &ctx.core, phase, None), &mut ctx.record.scratch, d).await {
                Flow::Respond(err) => Some(err),
                Flow::Continue => None,
            },
        };
        if let Some(err) = refusal
            && let Decision::Routed(route) = std::mem::replace(&mut ctx.decision, Decision::Pending)
        {
            ctx.decision = Decision::Rejected { err, route: Some(route) };
        }
    }

    /// What every response header gets on its way to the client: the request id, the
    /// route's fields and its policies' `on_response`.
    async fn outgoing(&self, req: &RequestHeader, ctx: &mut Ctx, phase: CachePhase, meta: Option<&CacheMeta>, resp: &mut ResponseHeader, d: &mut Directives) -> std::result::Result<(), GatewayError> {
        resp.insert_header(problem::REQUEST_ID_HEADER, ctx.core.request_id.as_str())
            .map_err(|e| GatewayError::new(Problem::Internal, format!("response header: {e}")))?;
        let Some(route) = ctx.decision.route() else { return Ok(()) };
        route.policies.decorate(resp, &ctx.record.scratch);
        route.policies.on_response(&view(req, &ctx.core, phase, meta), resp, &mut ctx.record.scratch, d).await
    }

    /// The request's outcome, handed to telemetry once it is over (pingora's `logging`, or
    /// the front door's answer).
    fn finish(&self, req: &RequestHeader, ctx: &mut Ctx, sent: Sent, error: Option<String>) {
        ctx.record.outcome.client_ip = ctx.core.client_ip;
        if ctx.record.outcome.ttfb.is_some()
            && ctx.record.outcome.upstream_error.is_none()
            && let (Some(up), Some(addr)) = (ctx.decision.route().and_then(|r| r.upstream()), ctx.record.outcome.upstream)
        {
            up.succeeded(addr);
        }
        if let Some(route) = ctx.decision.route() {
            route.policies.on_done(&ctx.record.scratch, &mut ctx.record.outcome);
        }
        let access_log = ctx.core.runtime.limits.access_log;
        let finished = Finished {
            request_id: &ctx.core.request_id,
            method: &req.method,
            path: req.uri.path(),
            // looked up only for the line that prints it
            user_agent: access_log
                .then(|| req.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()))
                .flatten(),
            route: ctx.decision.route().map(|r| r.seen()),
            params: access_log
                .then(|| ctx.core.params.render(ctx.core.rewritten_path.as_deref().unwrap_or(req.uri.path())))
                .flatten(),
            status: sent.status,
            elapsed: ctx.core.started.elapsed(),
            bytes_in: sent.bytes_in,
            bytes_out: sent.bytes_out,
            error,
            access_log,
        };
        let sinks = Sinks {
            metrics: &self.app.metrics,
            errors: &self.app.errors,
        };
        outcome::record(&ctx.record.outcome, &finished, &sinks, ctx.trace.take());
    }
}

/// What went to and from the client: for the outcome.
struct Sent {
    /// 0 when nothing was sent.
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
}

/// The server's limits, the path's normalization and the route table: the request's route,
/// or why it has none. Nothing is taken from any budget here, so the front door may ask and
/// still hand the request to pingora.
async fn route_request(req: &RequestHeader, core: &mut Core, phase: CachePhase, d: &mut Directives) -> Decision {
    let rt = &*core.runtime;
    if let Flow::Respond(err) = rt.limits.on_request(&view(req, core, phase, None), &mut (), d).await {
        return Decision::Rejected { err, route: None };
    }
    let path = match normalize_with(req.uri.path(), rt.limits.encoded_slash) {
        Ok(path) => path,
        Err(PathError::EncodedSlash) => {
            let detail = "an encoded `/` or `\\` (%2F, %5C) in the path is refused: a backend that decodes it would see another path than the one routed";
            return Decision::Rejected { err: GatewayError::new(Problem::BadRequest, detail), route: None };
        }
        Err(PathError::BadUtf8) => {
            let detail = "escaped bytes in the path are not UTF-8 (an overlong or cut sequence such as %C0%AE): a lenient decoder would see another path than the one routed";
            return Decision::Rejected { err: GatewayError::new(Problem::BadRequest, detail), route: None };
        }
        Err(e) => {
            d.close = true;
            let err = GatewayError::new(Problem::BadRequest, format!("request path cannot be routed: {e:?}"));
            return Decision::Rejected { err, route: None };
        }
    };
    let host = request_host(req);
    let Some((route, params)) = rt.routes.lookup(&req.method, host, &path) else {
        return match rt.routes.allowed(host, &path) {
            // the path is served, with other methods
            Some(allow) => {
                let detail = format!("{} is not served on {}: this route takes {allow}", req.method, req.uri.path());
                Decision::Rejected { err: GatewayError::new(Problem::MethodNotAllowed, detail).allow(allow), route: None }
            }
            None => Decision::NoRoute,
        };
    };
    let route = route.clone();
    if let Cow::Owned(p) = path {
        core.rewritten_path = Some(p);
    }
    core.params = params;
    Decision::Routed(route)
}
