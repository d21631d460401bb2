//! What a route's rate limits are, as configured: their keys in the routes file, their
//! definitions, and the compile step that checks every one. Plain values; `mod.rs` makes them
//! live.

use crate::model::diag::Diagnostics;
use crate::model::units::EnvString;
use crate::policy::registry::{keys, Scope};
use governor::Quota;
use http::header::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use toml::Spanned;

keys! {
    /// Limits stacked on the route; all must allow a request.
    #[schema(example_toml = r#"[{ rate = "100/s", key = "client_ip" }]"#)]
    rate_limit: Spanned<Vec<Spanned<RawRateLimit>>>,
    /// Client addresses/CIDRs, or `key:VALUE` limit keys, that no limit applies to.
    rate_limit_bypass: Vec<Spanned<EnvString>>,
    /// What the route's rate limits do while shared state (Redis) is unreachable: `"local"`
    /// (this replica's own limiter, the default), `"allow"` or `"deny"` (503).
    #[schema(default = "local")]
    on_state_error: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `"100/s"`, `"600/m"`, `"1000/h"`.
    #[schema(example = "100/s")]
    pub rate: Spanned<String>,
    /// Requests allowed at once above the steady rate (default: the rate's count).
    pub burst: Option<Spanned<u32>>,
    /// `client_ip` (default), `header:NAME`, `cookie:NAME`, `query:NAME`, `route`.
    #[schema(default = "client_ip")]
    pub key: Option<Spanned<String>>,
    /// Without the key: `shared` (one bucket), `client_ip`, or `reject`.
    pub on_missing_key: Option<Spanned<String>>,
    /// Status for `reject`: 400 or 401.
    pub missing_key_status: Option<Spanned<u16>>,
    /// Label in `RateLimit-Policy` and metrics; defaults to the key.
    pub name: Option<Spanned<String>>,
}

/// A route's stacked limits and what bypasses them.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitsDef {
    pub limits: Vec<RateLimitDef>,
    pub bypass_nets: Vec<IpNet>,
    pub bypass_keys: Vec<String>,
    pub on_state_error: OnRuntimeError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
    Query(String),
    /// A parameter of the route's path template: one bucket per resource.
    Path(String),
    /// One bucket for the whole route.
    Route,
}

impl KeySource {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.split_once(':') {
            None if s == "client_ip" => Ok(KeySource::ClientIp),
            None if s == "route" => Ok(KeySource::Route),
            Some(("header", name)) => HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("invalid header name {name:?}")),
            Some(("cookie", name)) if !name.trim().is_empty() => Ok(KeySource::Cookie(name.trim().to_string())),
            Some(("query", name)) if !name.trim().is_empty() => Ok(KeySource::Query(name.trim().to_string())),
            Some(("path", name)) if !name.trim().is_empty() => Ok(KeySource::Path(name.trim().to_string())),
            _ => Err(format!(
                "unknown rate limit key {s:?}; use client_ip, route, header:NAME, cookie:NAME, query:NAME or path:NAME"
            )),
        }
    }

    /// How the key is written in config: the default name of a limit and its metric label.
    pub fn label(&self) -> String {
        match self {
            KeySource::ClientIp => "client_ip".into(),
            KeySource::Route => "route".into(),
            KeySource::Header(h) => format!("header:{h}"),
            KeySource::Cookie(c) => format!("cookie:{c}"),
            KeySource::Query(q) => format!("query:{q}"),
            KeySource::Path(p) => format!("path:{p}"),
        }
    }
}

/// What a route's limits do while shared state (Redis) cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRuntimeError {
    /// This replica's own limiter: the limit holds per replica.
    #[default]
    Local,
    /// No limit until Redis answers again.
    Allow,
    /// 503 until Redis answers again.
    Deny,
}

/// What happens to a request that lacks the key a limit is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// All such requests share one bucket.
    Shared,
    /// Keyed by client IP instead.
    ClientIp,
    /// Refused with this status (400 or 401).
    Reject(u16),
}

/// `count` requests per `per`, bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitDef {
    pub name: String,
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: KeySource,
    pub on_missing: OnMissing,
}

impl RateLimitDef {
    /// Parses `"100/s"`, `"600/m"`, `"1000/h"`, `"5/10s"`.
    pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {s:?}; write e.g. \"100/s\", \"600/m\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("invalid request count {n:?} in rate {s:?}"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| format!("invalid rate unit {other:?} in {s:?}"))?,
        };
        if per.is_zero() {
            return Err(format!("rate {s:?} has a zero period"));
        }
        Ok((count, per))
    }

    /// `None` when the rate is too fine for the limiter (checked when the config compiles).
    pub fn quota(&self) -> Option<Quota> {
        let replenish = self.per / self.count;
        let burst = NonZeroU32::new(self.burst)?;
        Quota::with_period(replenish).map(|q| q.allow_burst(burst))
    }

    /// Seconds to refill the whole burst: the `w` of `RateLimit-Policy`.
    pub(super) fn window_secs(&self) -> u64 {
        (self.per.as_secs_f64() * f64::from(self.burst) / f64::from(self.count)).ceil().max(1.0) as u64
    }
}

/// The route's limits; `None` when it has none (or on errors, which are recorded).
pub fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Option<RateLimitsDef> {
    let on_state_error = match &keys.on_state_error {
        None => OnRuntimeError::default(),
        Some(v) => match v.get_ref().trim() {
            "local" => OnRuntimeError::Local,
            "allow" => OnRuntimeError::Allow,
            "deny" => OnRuntimeError::Deny,
            other => cx
                .error(
                    v.span(),
                    format!("unknown on_state_error {other:?}"),
                    "write \"local\" (this replica's own limiter), \"allow\" (no limit) or \"deny\" (503 until Redis is back)",
                )
                .unwrap_or_default(),
        },
    };
    let list = keys.rate_limit.as_ref()?;
    if list.get_ref().is_empty() {
        return None;
    }
    let mut limits = Vec::new();
    let mut names = HashSet::new();
    for raw in list.get_ref() {
        let Some(def) = compile_limit(cx, raw, scope) else { continue };
        if !names.insert(def.name.clone()) {
            cx.error::<()>(raw.span(), format!("two rate limits on this route are named {:?}", def.name), "give one a `name`");
            continue;
        }
        limits.push(def);
    }
    let mut nets = Vec::new();
    let mut bypass_keys = Vec::new();
    for b in keys.rate_limit_bypass.iter().flatten() {
        let text = b.get_ref().trim();
        if let Some(k) = text.strip_prefix("key:") {
            bypass_keys.push(k.to_string());
        } else if let Ok(net) = text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)) {
            nets.push(net);
        } else {
            cx.error::<()>(b.span(), format!("invalid bypass entry {text:?}"), "write an address, a CIDR, or key:VALUE");
        }
    }
    Some(RateLimitsDef { limits, bypass_nets: nets, bypass_keys, on_state_error })
}

/// One limit of the list; `None` on an error (recorded).
fn compile_limit(cx: &mut Diagnostics<'_>, raw: &Spanned<RawRateLimit>, scope: &Scope<'_>) -> Option<RateLimitDef> {
    let RawRateLimit { rate, burst, key, on_missing_key, missing_key_status, name } = raw.get_ref();
    let (count, per) = match RateLimitDef::parse_rate(rate.get_ref()) {
        Ok(r) => r,
        Err(e) => return cx.error(rate.span(), e, "write COUNT/UNIT with s, m or h, or COUNT/DURATION: \"100/s\", \"600/m\", \"10/5s\""),
    };
    let key_source = match key.as_ref().map_or(Ok(KeySource::ClientIp), |k| KeySource::parse(k.get_ref())) {
        Ok(k) => k,
        Err(e) => {
            return cx.error(key.as_ref().map_or(raw.span(), Spanned::span), e, "use client_ip, route, header:NAME, cookie:NAME, query:NAME or path:NAME");
        }
    };
    if let (KeySource::Path(p), Some(k)) = (&key_source, key) {
        scope.check_params(cx, k.span(), [p.as_str()]);
    }
    let status = match missing_key_status {
        None => 401,
        Some(s) if matches!(s.get_ref(), 400 | 401) => *s.get_ref(),
        Some(s) => return cx.error(s.span(), "`missing_key_status` must be 400 or 401", "401 says the client must identify itself; 400 that the request is malformed"),
    };
    let on_missing = match on_missing_key.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("reject", _)) => OnMissing::Reject(status),
        Some(("shared", _)) => OnMissing::Shared,
        Some(("client_ip", _)) => OnMissing::ClientIp,
        Some((other, span)) => return cx.error(span, format!("unknown `on_missing_key` {other:?}"), "use \"reject\", \"shared\" or \"client_ip\""),
    };
    let burst = burst.as_ref().map_or(count, |b| *b.get_ref());
    if burst == 0 {
        let at = raw.get_ref().burst.as_ref().map_or(raw.span(), Spanned::span);
        return cx.error(at, "`burst` must be at least 1", "leave `burst` out to allow the rate's count at once");
    }
    let label = name.as_ref().map_or_else(|| key_source.label(), |n| n.get_ref().clone());
    if !label.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return cx.error(
            name.as_ref().map_or(raw.span(), Spanned::span),
            format!("rate limit name {label:?} may only use letters, digits and -_.:"),
            "it appears in RateLimit headers and metric labels, e.g. name = \"per-key\"",
        );
    }
    let def = RateLimitDef { name: label, count, per, burst, key: key_source, on_missing };
    if def.quota().is_none() {
        return cx.error(rate.span(), "rate is too fine for the limiter", "the interval between two requests must be at least 1ns: lower the count or lengthen the period");
    }
    Some(def)
}
