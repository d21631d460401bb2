//! Policies: one module per concern, each a [`Policy`] with the phase hooks it needs and its
//! own per-request state (the model is pingora-core's `HttpModule`).
//!
//! A policy sees a narrow view of the exchange ([`Exchange`], the request and response
//! headers, body chunks), never a pingora `Session`, so each can be unit-tested alone. What a
//! policy needs from the engine (close the connection, switch response compression on or off)
//! it asks for through [`Directives`]; the proxy carries it out.
//!
//! The route's policies run in the fixed order of the registry's list (`registry.rs`), in
//! every phase. Adding a policy: its file (keys, definition, `Spec`, hooks) and one line there.
//!
//! Server-level policies (`server_limits` before routing, `forwarding` on the upstream
//! request) are not per route and are called by the proxy directly.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![allow(async_fn_in_trait)] // static dispatch only: the futures' Send-ness is inferred

pub mod body;
pub mod cache;
pub mod compress;
pub mod concurrency;
pub mod errors;
pub mod fields;
pub mod forwarding;
pub mod gather;
pub mod hsts;
pub mod pagination;
pub mod query;
pub mod ratelimit;
pub mod registry;
pub mod retry;
pub mod server_limits;
pub mod timeout;

use crate::problem::GatewayError;
use crate::telemetry::outcome::Outcome;
use bytes::Bytes;
use pingora::cache::CacheMeta;
use pingora::cache::CachePhase;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::PeerOptions;
use std::net::IpAddr;
use std::time::Instant;

/// Built-in defaults, used where neither the route nor `[defaults]` says otherwise.
pub mod builtin {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const MAX_BODY: u64 = 10 * 1024 * 1024;
    /// The largest `buffer_request_body`: the size of the buffer pingora replays a body from.
    pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;
    pub const SLOW_THRESHOLD: Duration = Duration::from_millis(100);
}

impl Exchange<'_> {
    /// The value of path parameter `name` (`{name}` in the route's template).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(self.path, name)
    }
}

/// What a policy sees of one request, in every phase.
pub struct Exchange<'a> {
    /// The request as received (path not yet rewritten to its normalized form).
    pub req: &'a RequestHeader,
    /// The normalized path: what routed the request and what the backend receives.
    pub path: &'a str,
    /// The values of the route's path template parameters in `path`.
    pub params: &'a crate::model::template::Params,
    pub request_id: &'a str,
    /// The TCP peer.
    pub peer_ip: Option<IpAddr>,
    /// The request came over TLS (the HTTPS listener).
    pub tls: bool,
    /// The client: the peer, or the address trusted proxies forwarded for it.
    pub client_ip: Option<IpAddr>,
    /// The peer is one of `[server] trusted_proxies`.
    pub trusted_peer: bool,
    pub started: Instant,
    /// The request is an upgrade (WebSocket) or the route streams: no total deadline.
    pub streaming: bool,
    /// Where pingora's cache is for this request (`Disabled` when the route does not cache).
    pub cache_phase: CachePhase,
    /// The stored entry being revalidated or served, if any.
    pub cache_meta: Option<&'a CacheMeta>,
}

/// A request-phase decision. `Respond` ends the request with a gateway-made response.
#[must_use]
#[derive(Debug)]
pub enum Flow {
    Continue,
    Respond(GatewayError),
}

/// What policies ask of the engine; the proxy applies it after each phase's chain.
#[derive(Debug, Default)]
pub struct Directives {
    /// Do not offer the client connection for another request.
    pub close: bool,
}

/// A response body that went wrong after its header was sent: the connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub code: &'static str,
    pub why: &'static str,
}

/// How an exchange with the upstream failed, for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused or timed out before anything was sent.
    Connect,
    /// Closed before a response.
    Reset,
    /// No response within the read timeout.
    Timeout,
}


/// The phase hooks of one policy; every hook has a default that does nothing.
pub trait Policy {
    /// Per-request state, created empty with the request.
    type State: Default + Send;

    /// The request header arrived and the route is known.
    /// Async only for what consults shared state (rate limits over Redis).
    async fn on_request(&self, _x: &Exchange<'_>, _st: &mut Self::State, _d: &mut Directives) -> Flow {
        Flow::Continue
    }
    /// The request will go upstream (cache hits never get here): may wait for a slot.
    async fn admit(&self, _x: &Exchange<'_>, _st: &mut Self::State) -> Flow {
        Flow::Continue
    }
    /// A chunk of the request body; set it to `None` to drop it.
    fn on_request_body(&self, _chunk: &mut Option<Bytes>, _st: &mut Self::State) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Connection options for the chosen upstream server.
    fn on_peer(&self, _x: &Exchange<'_>, _st: &mut Self::State, _opts: &mut PeerOptions) {}
    /// The request header about to be sent upstream.
    fn on_upstream_request(&self, _x: &Exchange<'_>, _up: &mut RequestHeader, _st: &mut Self::State) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Attempts after the first this policy allows for an exchange that failed so; `None`: no
    /// opinion.
    fn retries(&self, _failure: Failure) -> Option<usize> {
        None
    }
    /// The response header about to be sent to the client (from the upstream or the cache).
    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        _resp: &mut ResponseHeader,
        _st: &mut Self::State,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Fields every response of the route carries, the gateway's own problem responses too.
    fn decorate(&self, _resp: &mut ResponseHeader, _st: &Self::State) {}
    /// A chunk of the response body, after the header went out.
    fn on_response_body(&self, _body: &mut Option<Bytes>, _eos: bool, _st: &mut Self::State) -> Result<(), Cut> {
        Ok(())
    }
    /// The request is over: what the policy decided, for telemetry.
    fn on_done(&self, _st: &Self::State, _out: &mut Outcome) {}
}

/// Rules that tie two policies together.
fn cross_policy(def: &mut PolicyDef) {
    // the cache stores the whole response and filters it per request: the selector is not part
    // of the cache key
    if let (Some(c), Some(f)) = (def.cache.as_mut().and_then(|c| c.policy.as_mut()), def.fields.as_ref())
        && !c.ignore_query.contains(&f.param)
    {
        c.ignore_query.push(f.param.clone());
    }
}


// Every route policy, once, in the order they run in every phase.
registry::registry! {
    /// Request body cap (413 from `Content-Length`, then counted) and response body cap.
    body: body::BodyLimits,
    /// Stacked rate limits; their `RateLimit` fields go on every response.
    rate_limit: ratelimit::RateLimits,
    /// Page-size default and caps, offset cap.
    pagination: pagination::Pagination,
    /// Timeouts: connect, read, the total deadline, and stream detection.
    timeout: timeout::Timeouts,
    /// More attempts for failed exchanges.
    retry: retry::Retry,
    /// Route and upstream concurrency slots, taken only by requests that go upstream.
    concurrency: concurrency::ConcurrencyPolicy,
    /// Response caching: bypass, validators, `X-Cache`, invalidation after writes.
    cache: cache::CacheRoute,
    /// `?fields=` selection from JSON bodies (after the cache, before compression).
    fields: fields::FieldSelection,
    /// FastAPI error bodies rewritten as problem+json (before compression).
    errors: errors::NormalizeErrors,
    /// Response compression, chosen per client and per response.
    compress: compress::CompressPolicy,
    /// `Strict-Transport-Security` on HTTPS responses.
    hsts: hsts::Hsts,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    static NO_PARAMS: crate::model::template::Params = crate::model::template::Params { template: None, spans: Vec::new() };

    /// A plain exchange over `req`, for unit tests of single policies.
    pub fn exchange(req: &RequestHeader) -> Exchange<'_> {
        Exchange {
            req,
            path: req.uri.path(),
            params: &NO_PARAMS,
            request_id: "test",
            peer_ip: None,
            tls: false,
            client_ip: None,
            trusted_peer: false,
            started: Instant::now(),
            streaming: false,
            cache_phase: CachePhase::Uninit,
            cache_meta: None,
        }
    }
}
