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
//! Server-level request handling (head limits before routing, forwarding fields on the
//! upstream request) is not per route: it lives in `edge` and the proxy calls it directly.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![allow(async_fn_in_trait)] // static dispatch only: the futures' Send-ness is inferred

pub mod body;
pub mod cache;
pub mod compress;
pub mod concurrency;
pub mod errors;
pub mod fields;
pub mod hsts;
pub mod pagination;
pub mod ratelimit;
pub mod registry;
pub mod retry;
pub mod support;
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
    type Scratch: Default + Send;

    /// The request header arrived and the route is known.
    /// Async only for what consults shared state (rate limits over Redis).
    async fn on_request(&self, _x: &Exchange<'_>, _st: &mut Self::Scratch, _d: &mut Directives) -> Flow {
        Flow::Continue
    }
    /// The request will go upstream (cache hits never get here): may wait for a slot.
    async fn admit(&self, _x: &Exchange<'_>, _st: &mut Self::Scratch) -> Flow {
        Flow::Continue
    }
    /// A chunk of the request body; set it to `None` to drop it.
    fn on_request_body(&self, _chunk: &mut Option<Bytes>, _st: &mut Self::Scratch) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Connection options for the chosen upstream server.
    fn on_peer(&self, _x: &Exchange<'_>, _st: &mut Self::Scratch, _opts: &mut PeerOptions) {}
    /// The request header about to be sent upstream.
    fn on_upstream_request(&self, _x: &Exchange<'_>, _up: &mut RequestHeader, _st: &mut Self::Scratch) -> Result<(), GatewayError> {
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
        _st: &mut Self::Scratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        Ok(())
    }
    /// Fields every response of the route carries, the gateway's own problem responses too.
    fn decorate(&self, _resp: &mut ResponseHeader, _st: &Self::Scratch) {}
    /// A chunk of the response body, after the header went out.
    fn on_response_body(&self, _body: &mut Option<Bytes>, _eos: bool, _st: &mut Self::Scratch) -> Result<(), Cut> {
        Ok(())
    }
    /// The request is over: what the policy decided, for telemetry.
    fn on_done(&self, _st: &Self::Scratch, _out: &mut Outcome) {}
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
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn every_policy_a_route_runs_is_in_its_summary_and_every_key_is_read() {
        const BASE: &str = "[upstreams.api]\nservers = [\"127.0.0.1:8000\"]\n\n[[routes]]\nname = \"market\"\nmatch = { path_prefix = \"/api/market\" }\nupstream = \"api\"\n";
        let route = r#"
[[routes]]
name = "all"
match = { path = "/api/items/{item_id}" }
upstream = "api"
max_body = "64KiB"
rate_limit = [{ rate = "5/s", key = "path:item_id" }]
rate_limit_bypass = ["10.0.0.0/8"]
on_state_error = "deny"
pagination = { max = 100, default = 20 }
timeout = "5s"
slow_threshold = "1s"
retry = { attempts = 2, on = ["connect", "reset"] }
max_concurrent = 3
cache = { ttl = "10s" }
invalidate_tags = ["item:{item_id}"]
fields = "on"
normalize_errors = true
compress = "on"
hsts = { max_age = "1d", preload = true }
"#;
        let plan = crate::config::load_str("t.toml", &format!("{BASE}{route}")).unwrap();
        let summary = plan.routes[1].policy.to_string();
        for part in [
            "max_body 64.0 KiB",
            "rate 5/s burst 5 by path:item_id (bypass: 1 nets, 0 keys)",
            "pagination limit max 100 default 20",
            "timeout 5s (connect 2s, read 5s)",
            "retry 2 on connect/reset",
            "max 3 in flight",
            "cache ttl Some(10s)",
            "invalidates 1 tag(s) on write",
            "fields ?fields= up to 8.0 MiB",
            "normalize_errors",
            "compress zstd/br/gzip from 1.0 KiB",
            "hsts max-age=86400; preload",
        ] {
            assert!(summary.contains(part), "{part:?} missing from {summary:?}");
        }
        // the built-in policy says only what every route has
        assert_eq!(plan.routes[0].policy.to_string(), "max_body 10.0 MiB, timeout 30s (connect 2s, read 30s)");
        // every key above is one the registry reads, and none is read twice
        let names = PolicyKeys::names();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for line in route.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap().trim();
            assert!(["name", "match", "upstream"].contains(&key) || names.contains(&key), "{key}");
        }
    }
}
