//! Service discovery: upstream server names resolved to every address they have, at each load
//! and again every `resolve_interval`, by the system resolver or a DNS server of the config's
//! (`[server] resolver`, what nginx calls `resolver`). A headless Kubernetes service or a
//! round-robin DNS name is then one server per address, each with its own health.
//!
//! Lookups run off the request path: in the discovery service, and at load on a helper
//! thread, bounded by a timeout.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::model::plan::ServerSpec;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// How long one round of lookups may take before it is given up (the addresses in force stay).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names are resolved: getaddrinfo (`/etc/hosts`, then `/etc/resolv.conf`'s servers),
/// or one DNS server asked directly, with no cache, so every round sees the current records.
/// A DNS client is built per round: its sockets belong to the runtime of that round (the
/// discovery service's, or a load's helper thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resolver {
    pub server: Option<SocketAddr>,
}

/// Why a server's name gave no address.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {server}: {why}")]
pub struct LookupError {
    pub server: String,
    pub why: String,
}

fn dns_client(server: SocketAddr) -> TokioResolver {
    let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    TokioResolver::builder_with_config(ResolverConfig::from_parts(None, vec![], group), TokioConnectionProvider::default())
        .with_options(opts)
        .build()
}

impl Resolver {
    /// Every address of `spec` (the literal itself for an IP).
    async fn lookup(&self, dns: Option<&TokioResolver>, spec: &ServerSpec) -> Result<Vec<SocketAddr>, LookupError> {
        if let Some(addr) = spec.literal() {
            return Ok(vec![addr]);
        }
        let err = |why: String| LookupError { server: spec.to_string(), why };
        let found: Vec<SocketAddr> = match dns {
            None => tokio::net::lookup_host((spec.host.as_str(), spec.port)).await.map_err(|e| err(e.to_string()))?.collect(),
            Some(dns) => dns
                .lookup_ip(spec.host.as_str())
                .await
                .map_err(|e| err(e.to_string()))?
                .iter()
                .map(|ip| SocketAddr::new(ip, spec.port))
                .collect(),
        };
        if found.is_empty() {
            return Err(err("no address".into()));
        }
        Ok(found)
    }

    /// The addresses of all `specs`, deduplicated and sorted. A name that fails fails the set:
    /// the caller keeps what it had rather than lose servers to a passing DNS fault.
    pub async fn lookup_all(&self, specs: &[ServerSpec]) -> Result<Vec<SocketAddr>, LookupError> {
        let dns = self.server.map(dns_client);
        let mut set = BTreeSet::new();
        for spec in specs {
            let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup(dns.as_ref(), spec))
                .await
                .map_err(|_| LookupError { server: spec.to_string(), why: format!("no answer in {LOOKUP_TIMEOUT:?}") })??;
            set.extend(found);
        }
        Ok(set.into_iter().collect())
    }

    /// `lookup_all` from synchronous code (a load), on a helper thread with its own runtime,
    /// so it works inside and outside a tokio runtime alike.
    pub fn lookup_all_blocking(&self, specs: &[ServerSpec]) -> Result<Vec<SocketAddr>, LookupError> {
        if let Some(addrs) = specs.iter().map(ServerSpec::literal).collect::<Option<Vec<_>>>() {
            let set: BTreeSet<SocketAddr> = addrs.into_iter().collect();
            return Ok(set.into_iter().collect());
        }
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LookupError { server: String::new(), why: format!("cannot start a resolver runtime: {e}") })?;
                let result = rt.block_on(self.lookup_all(specs));
                // a getaddrinfo call that outlived the timeout is not waited for
                rt.shutdown_timeout(Duration::from_millis(100));
                result
            });
            handle.join().unwrap_or_else(|_| Err(LookupError { server: String::new(), why: "resolver thread panicked".into() }))
        })
    }
}
