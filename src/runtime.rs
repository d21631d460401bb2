//! Materializes a compiled plan into the live `Runtime` the request path reads: load balancers
//! and health state, rate limiters, concurrency semaphores, each route's policy chain.
//!
//! Live parts are reused by definition from the runtime in force, so a reload keeps what did
//! not change: an upstream whose definition is equal keeps its health state and pool, a rate
//! limit with an equal definition on a route of the same name keeps its counters, a
//! concurrency limit keeps its slots (requests in flight on the old config still hold them).

use crate::cache::store::CacheStore;
use crate::config::plan::{Plan, RouteDef, RouteTarget, ServerDef};
use crate::edge::forwarding::Forwarding;
use crate::policy::registry::{Env, MaterializeError};
use crate::edge::limits::ServerLimits;
use crate::policy::RoutePolicies;
use crate::problem::Problem;
use crate::routing::{Route, RouteTable, Target};
use crate::discovery::Resolver;
use crate::shared_state::Redis;
use crate::tls::{Certificates, TlsError};
use crate::upstream::{Upstream, UpstreamError};
use http::HeaderName;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything the request path reads, immutable once built, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub routes: RouteTable,
    /// Some route may answer fresh hits at the front door: without one, the front door
    /// does not look at requests at all.
    pub front_door: bool,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub forwarding: Forwarding,
    pub limits: ServerLimits,
    pub admin_token: Option<String>,
    /// The HTTPS listener's certificates, read at this load.
    pub certificates: Option<Arc<Certificates>>,
    /// The plain listener answers with a redirect to HTTPS on this port.
    pub redirect_https: Option<u16>,
    /// Where upstream names are resolved, and how often again.
    pub resolver: Resolver,
    pub resolve_interval: std::time::Duration,
    /// Hex digest of the file's text: tells which config is loaded.
    pub hash: String,
}

/// Why a plan could not be made live.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("upstream `{name}`: {source}")]
    Upstream {
        name: String,
        #[source]
        source: UpstreamError,
    },
    #[error("route `{route}`: {source}")]
    Route {
        route: String,
        #[source]
        source: MaterializeError,
    },
    #[error("route `{route}` names upstream `{upstream}`, which the plan lacks")]
    MissingUpstream { route: String, upstream: String },
    #[error("server.tls: {0}")]
    Tls(#[from] TlsError),
}

/// What every load shares, made once per process: the cache store and its tag field, and
/// the Redis connections when state is shared.
pub struct ProcessParts {
    pub store: Arc<dyn CacheStore>,
    pub tag_header: HeaderName,
    pub redis: Option<Arc<Redis>>,
}

/// Builds the runtime for `plan`, reusing the live parts of `previous` whose definition is
/// unchanged.
pub fn materialize(plan: Plan, previous: Option<&Runtime>, cache: &ProcessParts) -> Result<Runtime, RuntimeError> {
    let Plan {
        settings: _,
        server,
        upstreams,
        routes,
        hash,
        // compiled into each route's cache definition already
        entities: _,
        warnings: _,
    } = plan;
    // Read at every load, unchanged paths too: a renewal rewrites the files in place.
    let certificates = match server.certificates.is_empty() {
        true => None,
        false => Some(Arc::new(Certificates::load(&server.certificates)?)),
    };
    let resolver = Resolver { server: server.resolver };
    let mut live = BTreeMap::new();
    for (name, def) in upstreams {
        let before = previous.and_then(|p| p.upstreams.get(&name));
        // Names resolve again at every load; an upstream whose definition and addresses are
        // both unchanged is kept whole.
        let addrs = resolver
            .lookup_all_blocking(&def.servers)
            .map_err(|e| RuntimeError::Upstream { name: name.clone(), source: e.into() })?;
        let upstream = match before {
            Some(u) if u.def == def && u.addresses() == addrs => u.clone(),
            _ => {
                let up = Upstream::new(&name, def, addrs).map_err(|source| RuntimeError::Upstream { name: name.clone(), source })?;
                if let Some(before) = before {
                    up.inherit(before);
                }
                Arc::new(up)
            }
        };
        live.insert(name, upstream);
    }
    let mut table = Vec::with_capacity(routes.len());
    for def in routes {
        let before = previous.and_then(|p| p.routes.iter().find(|r| r.name == def.name));
        table.push(Arc::new(route(def, &live, before.map(|r| &**r), cache)?));
    }
    let ServerDef {
        trusted_proxies,
        remove_request_headers,
        forwarded,
        admin_token,
        limits,
        redirect_https,
        certificates: _,
        resolver: _,
        resolve_interval,
    } = server;
    Ok(Runtime {
        front_door: table.iter().any(|r| r.hits_at_front_door()),
        routes: RouteTable::new(table),
        upstreams: live,
        forwarding: Forwarding { trusted_proxies, remove_request_headers, forwarded },
        limits,
        admin_token,
        certificates,
        redirect_https,
        resolver,
        resolve_interval,
        hash,
    })
}

fn route(
    def: RouteDef,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    before: Option<&Route>,
    cache: &ProcessParts,
) -> Result<Route, RuntimeError> {
    let RouteDef {
        name,
        matcher,
        target,
        policy,
    } = def;
    let target = match target {
        RouteTarget::Upstream(upstream) => match upstreams.get(&upstream) {
            Some(u) => Target::Upstream(u.clone()),
            None => return Err(RuntimeError::MissingUpstream { route: name, upstream }),
        },
        RouteTarget::Deny(403) => Target::Deny(Problem::Forbidden),
        RouteTarget::Deny(_) => Target::Deny(Problem::NotFound),
    };
    let upstream_slots = match &target {
        Target::Upstream(u) => u.concurrency.clone(),
        Target::Deny(_) => None,
    };
    let env = Env {
        route: &name,
        path: &matcher.path,
        redis: cache.redis.as_ref(),
        store: &cache.store,
        tag_header: &cache.tag_header,
        upstream_slots,
        before: before.map(|r| &r.policies),
    };
    let policies = RoutePolicies::materialize(&policy, &env).map_err(|e| RuntimeError::Route { route: name.clone(), source: e })?;
    let traits = policy.route_traits();
    Ok(Route {
        name,
        matcher,
        target,
        def: policy,
        policies,
        streaming: traits.streaming,
        slow_threshold: traits.slow_threshold,
        metrics: Default::default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[upstreams.api]
servers = ["127.0.0.1:8000"]

[[routes]]
name = "market"
match = { path_prefix = "/api/market" }
upstream = "api"
rate_limit = [{ rate = "5/s" }]
max_concurrent = 2
"#;

    fn parts() -> ProcessParts {
        ProcessParts {
            store: Arc::new(crate::cache::memory::MemoryStore::new(1 << 20)),
            tag_header: HeaderName::from_static("cache-tag"),
            redis: None,
        }
    }

    fn live(text: &str, previous: Option<&Runtime>) -> Runtime {
        let plan = crate::config::load_str("t.toml", text).unwrap();
        materialize(plan, previous, &parts()).unwrap()
    }

    #[test]
    fn unchanged_parts_survive_a_reload() {
        let first = live(BASE, None);
        let second = live(BASE, Some(&first));
        assert!(Arc::ptr_eq(&first.upstreams["api"], &second.upstreams["api"]));
        let (a, b) = (first.routes.iter().next().unwrap(), second.routes.iter().next().unwrap());
        let limit = |r: &Route| r.policies.rate_limit.as_ref().unwrap().limits[0].clone();
        assert!(Arc::ptr_eq(&limit(a), &limit(b)));
        let slots = |r: &Route| r.policies.concurrency.as_ref().unwrap().route.clone().unwrap();
        assert!(Arc::ptr_eq(&slots(a), &slots(b)));

        let changed = BASE.replace("8000", "8001").replace("5/s", "6/s");
        let third = live(&changed, Some(&first));
        assert!(!Arc::ptr_eq(&first.upstreams["api"], &third.upstreams["api"]));
        assert!(!Arc::ptr_eq(&limit(a), &limit(third.routes.iter().next().unwrap())));
    }
}
