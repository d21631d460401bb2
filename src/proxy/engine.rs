//! What the phases ask of pingora's session, in one place: the policies' view of the exchange,
//! their directives carried out, a request body read whole, the cache key of a request, and a
//! gateway error or a cut body turned into the engine's error.

use super::ctx::{Core, Ctx};
use crate::cache;
use crate::model::matcher::request_host;
use crate::policy::{Cut, Directives, Exchange};
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome;
use pingora::cache::key::CacheKey;
use pingora::cache::{CacheMeta, CachePhase};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::borrow::Cow;

/// The policies' view of the exchange in this phase.
#[inline]
pub(super) fn exchange<'a>(session: &'a Session, core: &'a Core) -> Exchange<'a> {
    view(session.req_header(), core, session.cache.phase(), session.cache.maybe_cache_meta())
}

/// The policies' view of `req`: `phase` is the cache's, unless the request is answered as a
/// fresh hit (pingora's cache never ran for it).
#[inline]
pub(super) fn view<'a>(req: &'a RequestHeader, core: &'a Core, phase: CachePhase, cache_meta: Option<&'a CacheMeta>) -> Exchange<'a> {
    Exchange {
        req,
        path: core.rewritten_path.as_deref().unwrap_or(req.uri.path()),
        params: &core.params,
        request_id: &core.request_id,
        peer_ip: core.peer_ip,
        tls: core.tls,
        client_ip: core.client_ip,
        trusted_peer: core.trusted_peer,
        started: core.started,
        streaming: core.streaming,
        cache_phase: if core.fast_hit { CachePhase::Hit } else { phase },
        cache_meta,
    }
}

/// Carries out what the policies asked of the engine.
pub(super) fn apply(session: &mut Session, d: Directives) -> Result<()> {
    if d.close {
        session.set_keepalive(None);
    }
    Ok(())
}

/// `buffer_request_body`: reads a request body whole into pingora's replay buffer, which
/// pingora then sends upstream in one piece, so a body with broken framing (a bad chunk size,
/// a connection cut short) or over the limit is refused before the backend sees the head.
pub(super) async fn buffer_body(session: &mut Session, limit: u64) -> std::result::Result<(), GatewayError> {
    use crate::policy::body::{check_declared, exceeds, Declared};
    let req = session.req_header();
    let declared = check_declared(req.headers.get(http::header::CONTENT_LENGTH).map(|v| v.as_bytes()), limit);
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    let too_large = || GatewayError::new(Problem::PayloadTooLarge, format!("request bodies on this route are read whole before they are forwarded, up to buffer_request_body ({limit} bytes)"));
    match declared {
        Declared::TooLarge => return Err(too_large()),
        // no body (a malformed length never gets here: the connection layer refused it)
        Declared::Unknown | Declared::Invalid if !chunked => return Ok(()),
        _ => {}
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // answered here: the backend gets the whole body at once and must not answer again
        session.req_header_mut().remove_header(&http::header::EXPECT);
    }
    let downstream = session.as_downstream_mut();
    if expects_continue {
        downstream
            .write_continue_response()
            .await
            .map_err(|e| GatewayError::new(Problem::BadRequest, format!("cannot answer Expect: 100-continue: {e}")))?;
    }
    downstream.enable_retry_buffering();
    let mut seen = 0u64;
    loop {
        match downstream.read_request_body().await {
            Ok(Some(chunk)) if exceeds(&mut seen, chunk.len(), limit) => return Err(too_large()),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                return Err(GatewayError::new(Problem::RequestTimeout, "the request body did not arrive within client_body_timeout"));
            }
            Err(e) => return Err(GatewayError::new(Problem::BadRequest, format!("malformed request body: {}", e.etype().as_str()))),
        }
    }
}

/// The cache key of a request on a route that caches: what pingora looks up, and what the
/// fast path of a hit looks up first.
pub(super) fn cache_key(req: &RequestHeader, core: &Core, policy: &cache::CachePolicy) -> CacheKey {
    let path = core.rewritten_path.as_deref().unwrap_or(req.uri.path());
    let params = &core.params;
    let (primary, info) = policy.key(request_host(req).unwrap_or(""), path, req.uri.query(), &req.headers, |n| params.get(path, n));
    let mut key = CacheKey::new(primary, "");
    key.extensions.insert(info);
    key
}

/// Keeps `err` for `fail_to_proxy` to answer and returns the pingora error that ends the phase.
pub(super) fn fail(ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
    let e = err.to_pingora();
    ctx.failure = Some(err);
    e
}

/// A body gone wrong after its header was sent: logged, noted, and the connection cut.
pub(super) fn cut(ctx: &mut Ctx, c: Cut) -> Box<Error> {
    let route = ctx.route().map_or(outcome::NO_ROUTE, |r| r.name.as_str());
    tracing::warn!(request_id = %ctx.core.request_id, route, code = c.code, "{}; closing", c.why);
    ctx.record.outcome.problem = Some(c.code);
    ctx.record.outcome.problem_detail = Some(Cow::Borrowed(c.why));
    Error::explain(ErrorType::Custom(c.code), c.why)
}

