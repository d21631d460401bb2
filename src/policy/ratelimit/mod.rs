//! Rate limits: GCRA buckets (governor) keyed per client IP, header, cookie, query parameter, or
//! one bucket per route; several may stack on a route and all must allow a request.
//!
//! State: one governor keyed limiter per limit, in memory. A tracked key costs about 100 bytes
//! (the key, 8 bytes of GCRA state, and hash-map overhead); keys idle long enough to be
//! back at full burst are dropped by `evict_idle`, run on a timer. A limit whose definition is
//! unchanged across a reload keeps its limiter, so counters survive SIGHUP.
//!
//! With `[state] backend = "redis"` each limit also has a `SharedLimit`: decisions are made in
//! Redis, so the limit holds across replicas; while Redis is unreachable the route's
//! `on_state_error` decides (this limiter, no limit, or 503).
//!
//! Response headers follow draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` lists every
//! limit (`"name";q=<burst>;w=<seconds to refill the burst>`), `RateLimit` reports the limit
//! closest to refusing (`"name";r=<remaining>;t=<seconds until full>`).

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::model::template::Params;
use crate::shared_state::limiter::{SharedLimit, Verdict};
use crate::shared_state::Redis;
mod def;

pub use def::{KeySource, OnMissing, OnRuntimeError, RateLimitDef, RateLimitsDef};
use super::registry::{Env, MaterializeError, Scope, Spec};
use super::support::query;
use super::{Directives, Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

type Keyed = RateLimiter<LimitKey, DefaultKeyedStateStore<LimitKey>, DefaultClock, StateInformationMiddleware>;

/// What a limit counts by. Addresses stay binary: rendering one as text per request cost more
/// than the limiter itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip(IpAddr),
    Text(Box<str>),
    /// One bucket for the route, or for every request missing the key (`on_missing = "shared"`).
    Shared,
}

/// A configured `key:VALUE` bypass as the keys it matches: the text, and the address too when
/// it is one (a client-IP limit keys by address).
fn bypass_forms(value: &str) -> impl Iterator<Item = LimitKey> {
    let ip = value.parse::<IpAddr>().ok().map(LimitKey::Ip);
    std::iter::once(LimitKey::Text(value.into())).chain(ip)
}

pub struct RateLimit {
    pub def: RateLimitDef,
    /// The local limiter: the only one, or the fallback of a shared one.
    limiter: Keyed,
    shared: Option<SharedLimit<LimitKey>>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("def", &self.def).finish()
    }
}

impl RateLimit {
    pub fn new(def: RateLimitDef) -> Option<Self> {
        let quota = def.quota()?;
        Some(RateLimit {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            def,
            shared: None,
        })
    }

    /// The limit decided in Redis, for the route `route` (its keys are the route's own).
    pub fn shared(def: RateLimitDef, redis: Arc<Redis>, route: &str) -> Option<Self> {
        let mut limit = Self::new(def)?;
        let d = &limit.def;
        limit.shared = Some(SharedLimit::new(redis, route, &d.name, d.per, d.count, d.burst));
        Some(limit)
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Number of keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// Drops keys that are back at full burst and returns memory.
    pub fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if let Some(s) = &self.shared {
            s.evict_idle();
        }
    }

    /// One key against the local limiter: remaining tokens and seconds until full, or the wait.
    fn check_local(&self, key: &LimitKey) -> Result<(u32, u64), Duration> {
        let def = &self.def;
        let period = def.per.as_secs_f64() / f64::from(def.count);
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok((remaining, (f64::from(def.burst - remaining.min(def.burst)) * period).ceil() as u64))
            }
            Err(not_until) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }
}

/// Every limit of a route, with its bypass list and precomputed `RateLimit-Policy` value.
#[derive(Debug)]
pub struct RateLimits {
    pub limits: Vec<Arc<RateLimit>>,
    pub bypass_nets: Vec<IpNet>,
    /// The configured bypass keys, in every form a request's key can take (`bypass_forms`).
    bypass_keys: Vec<LimitKey>,
    /// How many `key:VALUE` bypasses were configured.
    pub bypass_key_count: usize,
    policy_header: Option<HeaderValue>,
    pub on_state_error: OnRuntimeError,
}

impl Spec for RateLimits {
    type Keys = def::Keys;
    type Def = RateLimitsDef;

    fn compile(keys: &def::Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Option<RateLimitsDef> {
        def::compile(keys, cx, scope)
    }

    /// Each limit is kept across a reload when its definition did not change (its counters
    /// with it), decided in Redis when the process shares state.
    fn materialize(def: Option<&RateLimitsDef>, env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        let Some(def) = def else { return Ok(None) };
        let mut limits = Vec::with_capacity(def.limits.len());
        for d in &def.limits {
            let reused = env.before.and_then(|b| b.rate_limit.as_ref()).and_then(|b| b.limits.iter().find(|l| l.def == *d).cloned());
            let limit = match reused {
                Some(l) => l,
                None => {
                    let built = match env.redis {
                        Some(redis) => RateLimit::shared(d.clone(), redis.clone(), env.route),
                        None => RateLimit::new(d.clone()),
                    };
                    Arc::new(built.ok_or_else(|| MaterializeError::RateLimit { limit: d.name.clone() })?)
                }
            };
            limits.push(limit);
        }
        Ok(Some(RateLimits::new(limits, def.bypass_nets.clone(), def.bypass_keys.clone(), def.on_state_error)))
    }

    fn summary(def: &RateLimitsDef) -> String {
        let mut parts = Vec::new();
        for d in &def.limits {
            let per = match d.per.as_secs() {
                1 if d.per.subsec_nanos() == 0 => "s".to_string(),
                60 if d.per.subsec_nanos() == 0 => "m".to_string(),
                3600 if d.per.subsec_nanos() == 0 => "h".to_string(),
                _ => format!("{:?}", d.per),
            };
            parts.push(format!("rate {}/{per} burst {} by {}", d.count, d.burst, d.name));
        }
        let mut s = parts.join(", ");
        if !def.bypass_nets.is_empty() || !def.bypass_keys.is_empty() {
            s.push_str(&format!(" (bypass: {} nets, {} keys)", def.bypass_nets.len(), def.bypass_keys.len()));
        }
        s
    }
}

/// What a request looks like to the limiter.
pub struct RequestView<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The normalized path and the route template's parameters in it.
    pub path: &'a str,
    pub params: &'a Params,
}

/// The outcome of checking every limit of a route.
#[must_use]
#[derive(Debug)]
pub enum Decision {
    Allow(Option<Headers>),
    Limited { retry_after: Duration, limit: String, headers: Headers },
    MissingKey { status: u16, key: String },
    /// Redis could not be asked and the route says `on_state_error = "deny"`.
    StateDown { limit: String },
}

/// `RateLimit-Policy` and `RateLimit` header values for a response.
#[derive(Debug, Clone)]
pub struct Headers {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

impl RateLimits {
    pub fn new(limits: Vec<Arc<RateLimit>>, bypass_nets: Vec<IpNet>, bypass_keys: Vec<String>, on_state_error: OnRuntimeError) -> Self {
        let policy = limits
            .iter()
            .map(|l| format!("\"{}\";q={};w={}", l.def.name, l.def.burst, l.def.window_secs()))
            .collect::<Vec<_>>()
            .join(", ");
        RateLimits {
            limits,
            bypass_nets,
            bypass_key_count: bypass_keys.len(),
            bypass_keys: bypass_keys.iter().flat_map(|k| bypass_forms(k)).collect(),
            policy_header: HeaderValue::from_str(&policy).ok(),
            on_state_error,
        }
    }

    pub async fn check(&self, req: &RequestView<'_>) -> Decision {
        if req.client_ip.is_some_and(|ip| self.bypass_nets.iter().any(|n| n.contains(&ip))) {
            return Decision::Allow(None);
        }
        let mut tightest: Option<(u32, u64, &str)> = None; // remaining, reset secs, name
        for limit in &self.limits {
            let def = &limit.def;
            let key = match extract_key(&def.key, req) {
                Some(k) => k,
                None => match def.on_missing {
                    OnMissing::Shared => LimitKey::Shared,
                    OnMissing::ClientIp => req.client_ip.map_or(LimitKey::Shared, LimitKey::Ip),
                    OnMissing::Reject(status) => {
                        return Decision::MissingKey { status, key: def.key.label() };
                    }
                },
            };
            if self.bypass_keys.contains(&key) {
                continue;
            }
            let verdict = match &limit.shared {
                None => limit.check_local(&key),
                Some(shared) => match shared.check(&key, &key_text(&key)).await {
                    Ok(Verdict::Allow { remaining, full_in }) => Ok((remaining, full_in.as_secs_f64().ceil() as u64)),
                    Ok(Verdict::Refuse { wait }) => Err(wait),
                    Err(_) => match self.on_state_error {
                        OnRuntimeError::Local => limit.check_local(&key),
                        OnRuntimeError::Allow => continue,
                        OnRuntimeError::Deny => return Decision::StateDown { limit: def.name.clone() },
                    },
                },
            };
            match verdict {
                Ok((remaining, reset)) => {
                    if tightest.is_none_or(|(r, _, _)| remaining < r) {
                        tightest = Some((remaining, reset, &def.name));
                    }
                }
                Err(wait) => {
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    return Decision::Limited {
                        retry_after: wait,
                        limit: def.name.clone(),
                        headers: self.headers(0, secs, &def.name),
                    };
                }
            }
        }
        Decision::Allow(tightest.map(|(r, t, name)| self.headers(r, t, name)))
    }

    fn headers(&self, remaining: u32, reset: u64, name: &str) -> Headers {
        // `"name";r=N;t=N`, without the formatting machinery: this runs for every request
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(remaining), t.format(reset));
        let mut state = String::with_capacity(name.len() + r.len() + t.len() + 8);
        for part in ["\"", name, "\";r=", r, ";t=", t] {
            state.push_str(part);
        }
        let state = HeaderValue::from_maybe_shared(bytes::Bytes::from(state))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Headers {
            policy: self.policy_header.clone().unwrap_or_else(|| HeaderValue::from_static("")),
            state,
        }
    }
}

/// A key as written in Redis: kinds apart, so a header value cannot pose as an address.
fn key_text(key: &LimitKey) -> Vec<u8> {
    match key {
        LimitKey::Ip(ip) => format!("i/{ip}").into_bytes(),
        LimitKey::Text(t) => [b"t/", t.as_bytes()].concat(),
        LimitKey::Shared => b"*".to_vec(),
    }
}

fn extract_key(source: &KeySource, req: &RequestView<'_>) -> Option<LimitKey> {
    let text = |v: &str| LimitKey::Text(v.into());
    match source {
        KeySource::Route => Some(LimitKey::Shared),
        KeySource::ClientIp => req.client_ip.map(LimitKey::Ip),
        // Each key in the form the backend reads it (Starlette), so that one client cannot be
        // several by spelling its key differently: the first header value; the last cookie of
        // the name, unquoted; the last query parameter of the name, decoded; path parameters
        // decoded.
        KeySource::Header(name) => req
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| LimitKey::Text(v.into())),
        KeySource::Cookie(name) => crate::cache::cookie_value(req.headers, name).filter(|v| !v.is_empty()).map(text),
        KeySource::Query(name) => query::param_decoded(req.query, name).filter(|v| !v.is_empty()).map(|v| text(&v)),
        KeySource::Path(name) => {
            req.params.get(req.path, name).filter(|v| !v.is_empty()).map(|v| text(&query::decode(v, false)))
        }
    }
}

#[derive(Debug, Default)]
pub struct RateLimitScratch {
    headers: Option<Headers>,
    decision: Option<&'static str>,
    limited_by: Option<String>,
}

impl Policy for RateLimits {
    type Scratch = RateLimitScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut RateLimitScratch, _d: &mut Directives) -> Flow {
        let view = RequestView {
            client_ip: x.client_ip,
            headers: &x.req.headers,
            query: x.req.uri.query(),
            path: x.path,
            params: x.params,
        };
        match self.check(&view).await {
            Decision::Allow(headers) => {
                st.decision = Some("allow");
                st.headers = headers;
                Flow::Continue
            }
            Decision::Limited { retry_after, limit, headers } => {
                st.decision = Some("limited");
                st.headers = Some(headers);
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let err = GatewayError::new(Problem::RateLimited, format!("rate limit `{limit}` exceeded; retry in {secs}s"))
                    .retry_after(secs);
                st.limited_by = Some(limit);
                Flow::Respond(err)
            }
            Decision::StateDown { limit } => {
                st.decision = Some("state_unavailable");
                Flow::Respond(GatewayError::new(
                    Problem::StateUnavailable,
                    format!("rate limit `{limit}` is kept in shared state, which cannot be reached"),
                ))
            }
            Decision::MissingKey { status, key } => {
                st.decision = Some("missing_key");
                let problem = if status == 400 { Problem::KeyMissing } else { Problem::KeyRequired };
                Flow::Respond(GatewayError::new(problem, format!("this route is rate limited by `{key}`, which the request lacks")))
            }
        }
    }

    fn decorate(&self, resp: &mut ResponseHeader, st: &RateLimitScratch) {
        if let Some(h) = &st.headers {
            let _ = resp.insert_header("ratelimit-policy", h.policy.clone());
            let _ = resp.insert_header("ratelimit", h.state.clone());
        }
    }

    fn on_done(&self, st: &RateLimitScratch, out: &mut Outcome) {
        out.rate_limit = st.decision;
        out.limited_by.clone_from(&st.limited_by);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use futures_util::FutureExt as _;

    fn block(f: impl std::future::Future<Output = Decision>) -> Decision {
        f.now_or_never().unwrap()
    }

    fn def(rate: &str, burst: u32, key: &str) -> RateLimitDef {
        let (count, per) = RateLimitDef::parse_rate(rate).unwrap();
        RateLimitDef {
            name: key.into(),
            count,
            per,
            burst,
            key: KeySource::parse(key).unwrap(),
            on_missing: OnMissing::Reject(401),
        }
    }

    static NO_PARAMS: Params = Params { template: None, spans: Vec::new() };

    #[test]
    fn rates_parse() {
        assert_eq!(RateLimitDef::parse_rate("100/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(RateLimitDef::parse_rate("600/m").unwrap(), (600, Duration::from_secs(60)));
        assert_eq!(RateLimitDef::parse_rate("5/10s").unwrap(), (5, Duration::from_secs(10)));
        assert!(RateLimitDef::parse_rate("0/s").is_err());
        assert!(RateLimitDef::parse_rate("10").is_err());
        assert!(RateLimitDef::parse_rate("10/fortnight").is_err());
    }

    #[test]
    fn keyed_by_header_with_burst_then_refusal() {
        let limits = RateLimits::new(vec![Arc::new(RateLimit::new(def("1/m", 2, "header:x-api-key")).unwrap())], vec![], vec![], OnRuntimeError::Local);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        let view = RequestView { client_ip: None, headers: &h, query: None, path: "/", params: &NO_PARAMS };
        assert!(matches!(block(limits.check(&view)), Decision::Allow(Some(_))));
        match block(limits.check(&view)) {
            Decision::Allow(Some(hd)) => {
                assert_eq!(hd.state, "\"header:x-api-key\";r=0;t=120");
                assert_eq!(hd.policy, "\"header:x-api-key\";q=2;w=120");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(block(limits.check(&view)), Decision::Limited { .. }));
        // another key has its own bucket
        let mut h2 = HeaderMap::new();
        h2.insert("x-api-key", HeaderValue::from_static("k2"));
        assert!(matches!(block(limits.check(&RequestView { client_ip: None, headers: &h2, query: None, path: "/", params: &NO_PARAMS })), Decision::Allow(_)));
        // no key: rejected as configured
        let empty = HeaderMap::new();
        assert!(matches!(
            block(limits.check(&RequestView { client_ip: None, headers: &empty, query: None, path: "/", params: &NO_PARAMS })),
            Decision::MissingKey { status: 401, .. }
        ));
    }

    #[test]
    fn bypass_keys_match_text_and_address_keys() {
        let by_ip = || Arc::new(RateLimit::new(def("1/m", 1, "client_ip")).unwrap());
        let limits = RateLimits::new(vec![by_ip()], vec![], vec!["10.0.0.9".into()], OnRuntimeError::Local);
        let h = HeaderMap::new();
        let from = |ip: &str| RequestView { client_ip: Some(ip.parse().unwrap()), headers: &h, query: None, path: "/", params: &NO_PARAMS };
        for _ in 0..3 {
            assert!(matches!(block(limits.check(&from("10.0.0.9"))), Decision::Allow(None)));
        }
        assert!(matches!(block(limits.check(&from("10.0.0.8"))), Decision::Allow(Some(_))));
        assert!(matches!(block(limits.check(&from("10.0.0.8"))), Decision::Limited { .. }));
        assert_eq!(limits.bypass_key_count, 1);
    }

    #[test]
    fn cookie_and_query_keys() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; session=abc; b=2"));
        let view = RequestView { client_ip: None, headers: &h, query: Some("x=1&token=t9"), path: "/", params: &NO_PARAMS };
        assert_eq!(extract_key(&KeySource::Cookie("session".into()), &view), Some(LimitKey::Text("abc".into())));
        assert_eq!(extract_key(&KeySource::Query("token".into()), &view), Some(LimitKey::Text("t9".into())));
        assert_eq!(extract_key(&KeySource::Query("nope".into()), &view), None);
        // one client, however it spells its key
        let key = |q: &'static str| {
            let view = RequestView { client_ip: None, headers: &h, query: Some(q), path: "/", params: &NO_PARAMS };
            extract_key(&KeySource::Query("api_key".into()), &view)
        };
        for q in ["api_key=abc", "api_key=%61bc", "api_key=a%62c", "api_key=zzz&api_key=abc"] {
            assert_eq!(key(q), Some(LimitKey::Text("abc".into())), "{q}");
        }
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("session=old; session=\"abc\""));
        let view = RequestView { client_ip: None, headers: &h, query: None, path: "/", params: &NO_PARAMS };
        assert_eq!(extract_key(&KeySource::Cookie("session".into()), &view), Some(LimitKey::Text("abc".into())));
    }

}
