//! The cache policy of a route, over pingora's cache state machine (`crate::cache` holds the
//! key, storage rules and the store): which requests may use the cache, the validators of a
//! revalidation, `X-Cache` and `Age` on the way out, and invalidation after a write.
//!
//! Invalidation (RFC 9111 4.4): a successful (2xx/3xx) answer to an unsafe request drops its
//! own URL, its `Location` and `Content-Location` targets (same origin only), and the route's
//! `invalidate_tags`. It happens when the backend's answer arrives, before it is sent on, so a
//! client that reads right after its own write never gets the old copy. Every route carries
//! this policy, cached or not: a write on an uncached route still invalidates what it names.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{Directives, Exchange, Flow, Policy};
use crate::cache::store::{CacheStore, PurgeSelector};
use crate::cache::{self, CachePolicy, TagTemplate};
use crate::problem::GatewayError;
use crate::routing::normalize::normalize;
use crate::telemetry::outcome::Outcome;
use http::header::{HeaderName, ACCEPT_ENCODING, AGE, CONTENT_LOCATION, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION};
use pingora::cache::CachePhase;
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

pub struct CacheRoute {
    /// `None`: the route does not cache, but its writes still invalidate.
    pub policy: Option<CachePolicy>,
    pub invalidate_tags: Vec<TagTemplate>,
    pub store: Arc<dyn CacheStore>,
    /// The backend's tag field, never shown to clients.
    pub tag_header: HeaderName,
}

impl std::fmt::Debug for CacheRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRoute").field("policy", &self.policy).field("invalidate_tags", &self.invalidate_tags).finish()
    }
}

#[derive(Debug, Default)]
pub struct CacheState {
    /// The route caches, but this request may not use the cache (method, credentials).
    bypass: bool,
    status: Option<&'static str>,
    invalidated: usize,
}

impl CacheRoute {
    /// The route caches and this request may use the cache.
    pub fn enabled(&self, st: &CacheState) -> bool {
        self.policy.is_some() && !st.bypass
    }

    /// The entries a successful write invalidates.
    fn selectors(&self, x: &Exchange<'_>, resp: &ResponseHeader) -> Vec<PurgeSelector> {
        let url_of = |path: &str, query: Option<&str>| cache::url_identity(path, query, &[]);
        let mut selectors = vec![PurgeSelector::Url(url_of(x.path, x.req.uri.query()))];
        for h in [LOCATION, CONTENT_LOCATION] {
            let Some(loc) = resp.headers.get(&h).and_then(|v| v.to_str().ok()) else { continue };
            // Only same-origin, path-absolute references name an entry here.
            if let Ok(uri) = loc.parse::<http::Uri>()
                && uri.authority().is_none()
                && let Ok(p) = normalize(uri.path())
            {
                selectors.push(PurgeSelector::Url(url_of(&p, uri.query())));
            }
        }
        for t in &self.invalidate_tags {
            if let Some(tag) = t.render(&x.req.headers, x.req.uri.query()) {
                selectors.push(PurgeSelector::Tag(tag));
            }
        }
        selectors
    }
}

impl Policy for CacheRoute {
    type State = CacheState;

    fn on_request(&self, x: &Exchange<'_>, st: &mut CacheState, _d: &mut Directives) -> Flow {
        if let Some(policy) = &self.policy {
            st.bypass = policy.bypass(&x.req.method, &x.req.headers).is_some();
        }
        Flow::Continue
    }

    fn on_upstream_request(&self, x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut CacheState) -> Result<(), GatewayError> {
        if self.policy.is_none() {
            return Ok(());
        }
        // One canonical form is stored (identity); compression happens per client on the way out.
        up.remove_header(&ACCEPT_ENCODING);
        if matches!(x.cache_phase, CachePhase::Stale | CachePhase::StaleUpdating)
            && let Some(meta) = x.cache_meta
        {
            // Revalidating a stored entry: ask with its validators, so an unchanged resource
            // costs the backend a 304 instead of a body.
            let fail = |e: pingora::BError| GatewayError::new(crate::problem::Problem::Internal, format!("validators: {e}"));
            let h = meta.headers();
            if let Some(etag) = h.get(ETAG).cloned() {
                up.insert_header(IF_NONE_MATCH, etag).map_err(fail)?;
            }
            if let Some(lm) = h.get(LAST_MODIFIED).cloned() {
                up.insert_header(IF_MODIFIED_SINCE, lm).map_err(fail)?;
            }
        }
        Ok(())
    }

    async fn on_response(
        &self,
        x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut CacheState,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if self.policy.is_some() {
            let status = if st.bypass { "BYPASS" } else { cache::x_cache(x.cache_phase) };
            st.status = Some(status);
            let _ = resp.insert_header("x-cache", status);
            if !resp.headers.contains_key(AGE) {
                let _ = resp.insert_header(AGE, "0");
            }
            resp.remove_header(&self.tag_header);
        }
        let status = resp.status.as_u16();
        if (200..400).contains(&status) && !x.req.method.is_safe() {
            for sel in self.selectors(x, resp) {
                match self.store.purge(&sel).await {
                    Ok(n) => st.invalidated += n,
                    Err(e) => tracing::warn!(error = %e, request_id = x.request_id, "cache invalidation failed"),
                }
            }
        }
        Ok(())
    }

    fn on_done(&self, st: &CacheState, out: &mut Outcome) {
        out.cache = st.status;
        out.invalidated = st.invalidated;
    }
}
