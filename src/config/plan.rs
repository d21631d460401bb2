//! What a routes file compiles to: plain, comparable definitions. A plan holds no limiter,
//! semaphore, load balancer, metric series or socket; `runtime::materialize` turns it into the
//! live `Runtime`, reusing the live parts whose definition did not change.

use crate::model::plan::{CertSpec, Settings, UpstreamDef};
use crate::edge::limits::ServerLimits;
use crate::model::entity::Entities;
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
    /// `[entities]`: what the cache tags stored bodies with and writes purge by.
    pub entities: Entities,
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
    pub forwarded: crate::edge::forwarding::ForwardedFields,
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
    pub policy: crate::policy::PolicyDef,
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
