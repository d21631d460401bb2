//! What a routes file compiles to: plain, comparable definitions. A plan holds no limiter,
//! semaphore, load balancer, metric series or socket; `state::materialize` turns it into the
//! live `Runtime`, reusing the live parts whose definition did not change.

use crate::cache::{CachePolicy, TagTemplate};
use crate::model::plan::{CertSpec, ConcurrencyDef, Settings, UpstreamDef};
use crate::policy::compress::CompressPolicy;
use crate::policy::fields::FieldSelection;
use crate::policy::pagination::Pagination;
use crate::policy::ratelimit::RateLimitDef;
use crate::policy::server_limits::ServerLimits;
use crate::policy::timeout::Timeouts;
use crate::model::matcher::Matcher;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::model::diag::Diagnostic;

/// A compiled routes file.
#[derive(Debug)]
pub struct Plan {
    pub settings: Settings,
    pub server: ServerDef,
    pub upstreams: BTreeMap<String, UpstreamDef>,
    /// In file order; the route table sorts them by precedence.
    pub routes: Vec<RouteDef>,
    /// Hex digest of the file's text: tells which config is loaded.
    pub hash: String,
    /// Not errors, but worth a look (overlapping routes, values that were adjusted).
    pub warnings: Vec<Diagnostic>,
}

/// `[server]` values that may change on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerDef {
    pub trusted_proxies: Vec<IpNet>,
    /// Removed from every request before routing, the cache and the backend.
    pub remove_request_headers: Vec<http::HeaderName>,
    pub forwarded: crate::policy::forwarding::ForwardedFields,
    pub admin_token: Option<String>,
    pub limits: ServerLimits,
    /// The plain listener redirects to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// The HTTPS listener's certificates, the default first.
    pub certificates: Vec<CertSpec>,
    /// Where upstream names are resolved: a DNS server, or the system resolver.
    pub resolver: Option<SocketAddr>,
    pub resolve_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteDef {
    pub name: String,
    pub matcher: Matcher,
    pub target: RouteTarget,
    pub policy: PolicyDef,
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteTarget {
    /// A key of `Plan::upstreams` (checked by the compiler).
    Upstream(String),
    /// `action = "deny"`: answered with this status (403 or 404), never forwarded.
    Deny(u16),
}

impl std::fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTarget::Upstream(name) => f.write_str(name),
            RouteTarget::Deny(status) => write!(f, "deny ({status})"),
        }
    }
}

/// Every policy of a route, `[defaults]` merged with the route's own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDef {
    pub timeouts: Timeouts,
    /// Request body cap in bytes.
    pub max_body: u64,
    /// Bodies up to this many bytes are read whole before the request goes upstream.
    pub buffer_request_body: Option<u64>,
    /// Response body cap in bytes.
    pub max_response_body: Option<u64>,
    /// The route streams: no total timeout, `stream_idle` between reads.
    pub streaming: bool,
    pub rate_limits: Option<RateLimitsDef>,
    pub concurrency: Option<ConcurrencyDef>,
    pub compress: Option<CompressPolicy>,
    pub cache: Option<CachePolicy>,
    pub invalidate_tags: Vec<TagTemplate>,
    /// What a successful write invalidates besides its own path and `Location`.
    pub invalidate: Vec<crate::cache::invalidate::InvalidateRule>,
    pub slow_threshold: Duration,
    /// `retry`: more attempts for failed exchanges; `None`: only a failed connect moves on to
    /// another server of the upstream.
    pub retry: Option<crate::policy::timeout::Retry>,
    pub pagination: Option<Pagination>,
    pub fields: Option<FieldSelection>,
    pub normalize_errors: bool,
    /// `Strict-Transport-Security` value for responses over HTTPS.
    pub hsts: Option<String>,
}

impl Default for PolicyDef {
    /// The built-in policy: what a route gets when neither it nor `[defaults]` says more.
    fn default() -> Self {
        PolicyDef {
            timeouts: Timeouts::default(),
            max_body: crate::policy::builtin::MAX_BODY,
            buffer_request_body: None,
            max_response_body: None,
            streaming: false,
            rate_limits: None,
            concurrency: None,
            compress: None,
            cache: None,
            invalidate_tags: Vec::new(),
            invalidate: crate::cache::invalidate::default_rules(),
            slow_threshold: crate::policy::builtin::SLOW_THRESHOLD,
            retry: None,
            pagination: None,
            fields: None,
            normalize_errors: false,
            hsts: None,
        }
    }
}

/// A route's stacked limits and what bypasses them.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitsDef {
    pub limits: Vec<RateLimitDef>,
    pub bypass_nets: Vec<IpNet>,
    pub bypass_keys: Vec<String>,
    pub on_state_error: crate::policy::ratelimit::OnStateError,
}

impl std::fmt::Display for PolicyDef {
    /// The policy in words, for `fastgate check`, the admin API and the status page.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.timeouts;
        if self.streaming {
            write!(f, "streaming (idle {:?})", t.stream_idle)?;
        } else {
            write!(f, "timeout {:?} (connect {:?}, read {:?})", t.total, t.connect, t.read)?;
        }
        write!(f, ", max_body {}", bytesize::ByteSize(self.max_body).display().iec())?;
        if let Some(b) = self.buffer_request_body {
            write!(f, ", buffer_request_body {}", bytesize::ByteSize(b).display().iec())?;
        }
        if let Some(cap) = self.max_response_body {
            write!(f, ", max_response_body {}", bytesize::ByteSize(cap).display().iec())?;
        }
        if let Some(rl) = &self.rate_limits {
            for d in &rl.limits {
                let per = match d.per.as_secs() {
                    1 if d.per.subsec_nanos() == 0 => "s".to_string(),
                    60 if d.per.subsec_nanos() == 0 => "m".to_string(),
                    3600 if d.per.subsec_nanos() == 0 => "h".to_string(),
                    _ => format!("{:?}", d.per),
                };
                write!(f, ", rate {}/{per} burst {} by {}", d.count, d.burst, d.name)?;
            }
            if !rl.bypass_nets.is_empty() || !rl.bypass_keys.is_empty() {
                write!(f, " (bypass: {} nets, {} keys)", rl.bypass_nets.len(), rl.bypass_keys.len())?;
            }
        }
        if let Some(c) = &self.concurrency {
            write!(f, ", max {} in flight", c.max)?;
            if c.queue > 0 {
                write!(f, " (queue {}, {:?})", c.queue, c.queue_timeout)?;
            }
        }
        if let Some(c) = &self.cache {
            write!(f, ", cache ttl {:?}", c.ttl)?;
            if !c.stale_while_revalidate.is_zero() {
                write!(f, " swr {:?}", c.stale_while_revalidate)?;
            }
            if !c.stale_if_error.is_zero() {
                write!(f, " sie {:?}", c.stale_if_error)?;
            }
            if !c.key_headers.is_empty() {
                let names: Vec<&str> = c.key_headers.iter().map(|h| h.as_str()).collect();
                write!(f, " keyed by {}", names.join(","))?;
            }
            if c.public {
                f.write_str(" public")?;
            }
        }
        if !self.invalidate_tags.is_empty() {
            write!(f, ", invalidates {} tag(s) on write", self.invalidate_tags.len())?;
        }
        if let Some(c) = &self.compress {
            let algs: Vec<&str> = c.algorithms.iter().map(|a| crate::policy::compress::token(*a)).collect();
            write!(f, ", compress {} from {}", algs.join("/"), bytesize::ByteSize(c.min_size).display().iec())?;
        }
        Ok(())
    }
}
