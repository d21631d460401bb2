//! The cache policy of a route, over pingora's cache state machine (`crate::cache` holds the
//! key, storage rules and the store): which requests may use the cache, what the client's own
//! `Cache-Control` asks, the validators of a revalidation, `X-Cache` and `Age` on the way out,
//! and invalidation after a write.
//!
//! Invalidation (RFC 9111 4.4 and `cache::invalidate`): a successful (2xx/3xx) answer to an
//! unsafe request drops every variant of its own path, its `Location` and `Content-Location`
//! targets (same origin only), what the route's `invalidate` rules select (its resource's
//! collection and the writer's own entries by default) and its `invalidate_tags`. It happens
//! when the backend's answer arrives, before it is sent on, so a client that reads right after
//! its own write never gets the old copy. Every route carries this policy, cached or not: a
//! write on an uncached route still invalidates what it names.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod def;

pub use def::CacheRouteDef;
use super::registry::{Env, MaterializeError, Scope, Spec};
use super::{Cut, Directives, Exchange, Flow, Policy};
use bytes::Bytes;
use crate::model::diag::Diagnostics;
use crate::cache::entities::EntityRoute;
use crate::cache::invalidate::{self, InvalidateRule, Reason};
use crate::cache::store::{CacheStore, PurgeSelector, StoreKey, StoredObject};
use crate::cache::tags::TagTemplate;
use crate::cache::{self, CachePolicy};
use crate::problem::{GatewayError, Problem};
use crate::model::normalize::normalize;
use crate::model::matcher::PathMatch;
use crate::telemetry::outcome::Outcome;
use http::header::{HeaderName, ACCEPT_ENCODING, ACCEPT_RANGES, AGE, CONTENT_LENGTH, CONTENT_LOCATION, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION};
use pingora::cache::cache_control::CacheControl;
use pingora::cache::{CacheMeta, CachePhase, ForcedFreshness};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct CacheRoute {
    /// `None`: the route does not cache, but its writes still invalidate.
    pub policy: Option<CachePolicy>,
    pub invalidate_tags: Vec<TagTemplate>,
    pub invalidate: Vec<InvalidateRule>,
    pub entities: Arc<EntityRoute>,
    /// The route's path match: where a write's resource collection starts.
    pub path: PathMatch,
    pub store: Arc<dyn CacheStore>,
    /// The backend's tag field, never shown to clients.
    pub tag_header: HeaderName,
}

impl std::fmt::Debug for CacheRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRoute")
            .field("policy", &self.policy)
            .field("invalidate_tags", &self.invalidate_tags)
            .field("invalidate", &self.invalidate)
            .finish()
    }
}

impl Spec for CacheRoute {
    type Keys = def::Keys;
    type Def = CacheRouteDef;

    fn compile(keys: &def::Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Option<CacheRouteDef> {
        def::compile(keys, cx, scope)
    }

    fn materialize(def: Option<&CacheRouteDef>, env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.map(|d| CacheRoute {
            policy: d.policy.clone(),
            invalidate_tags: d.invalidate_tags.clone(),
            invalidate: d.invalidate.clone(),
            entities: d.entities.clone(),
            path: env.path.clone(),
            store: env.store.clone(),
            tag_header: env.tag_header.clone(),
        }))
    }

    fn summary(def: &CacheRouteDef) -> String {
        let mut s = String::new();
        if let Some(c) = &def.policy {
            s.push_str(&format!("cache ttl {:?}", c.ttl));
            if !c.stale_while_revalidate.is_zero() {
                s.push_str(&format!(" swr {:?}", c.stale_while_revalidate));
            }
            if !c.stale_if_error.is_zero() {
                s.push_str(&format!(" sie {:?}", c.stale_if_error));
            }
            if !c.key_headers.is_empty() {
                let names: Vec<&str> = c.key_headers.iter().map(|h| h.as_str()).collect();
                s.push_str(&format!(" keyed by {}", names.join(",")));
            }
            if c.public {
                s.push_str(" public");
            }
        }
        let e = &def.entities;
        if !e.reads.is_empty() {
            let shown: Vec<&str> = e.reads.iter().map(|(_, name, _)| name).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            s.push_str(&format!("{}shows {}", if s.is_empty() { "" } else { ", " }, shown.join(",")));
        }
        if !e.named.is_empty() || !e.collection_of.is_empty() {
            let mut names: Vec<String> = e.named.iter().map(|n| format!("{}:{{{}}}", n.entity, n.param)).collect();
            names.extend(e.collection_of.iter().map(|c| format!("list:{c}")));
            s.push_str(&format!("{}writes name {}", if s.is_empty() { "" } else { ", " }, names.join(",")));
        }
        if !def.invalidate_tags.is_empty() {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&format!("invalidates {} tag(s) on write", def.invalidate_tags.len()));
        }
        s
    }
}

/// What the client's `Cache-Control` asks of the cache (RFC 9111 5.2.1).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientDirectives {
    /// `no-cache`, or `max-age=0`: a stored response must be revalidated first.
    pub no_cache: bool,
    pub max_age: Option<u32>,
    pub min_fresh: Option<u32>,
    pub no_store: bool,
    pub only_if_cached: bool,
}

impl ClientDirectives {
    pub(crate) fn parse(req: &RequestHeader) -> Self {
        let Some(cc) = CacheControl::from_req_headers(req) else { return Self::default() };
        ClientDirectives {
            no_cache: cc.no_cache(),
            max_age: cc.max_age().ok().flatten(),
            min_fresh: cc
                .directives
                .get(&pingora::cache::cache_control::DirectiveKey::from_lowercase("min-fresh"))
                .and_then(|v| v.as_ref()?.parse_as_delta_seconds().ok()),
            no_store: cc.no_store(),
            only_if_cached: cc.only_if_cached(),
        }
    }
}

#[derive(Debug, Default)]
pub struct CacheScratch {
    /// The route caches, but this request may not use the cache (method, credentials).
    bypass: bool,
    client: ClientDirectives,
    /// The client's directives made a fresh entry go back to the backend.
    forced: bool,
    status: Option<&'static str>,
    /// Entries dropped by this request's write, by reason (`Reason::ALL` order).
    invalidated: [usize; Reason::ALL.len()],
    /// A successful write's JSON answer, gathered as it passes to read the entities it
    /// changed; `None` when not read.
    written: Option<Vec<u8>>,
}

/// The longest write answer read for entities: an answer past it drops what its path names
/// only.
const MAX_WRITTEN: usize = 1024 * 1024;

/// A fresh stored response that answers a request before pingora's cache state machine runs:
/// the header the full path would send (with `Age`) and the object holding the body.
pub struct FreshHit {
    pub header: ResponseHeader,
    pub obj: Arc<StoredObject>,
    pub key: StoreKey,
}

/// Request fields that need the full path: the client's cache directives (pingora's hit
/// filter), validators (a 304) and ranges (a 206 or 416). Lower case, as `HeaderName`s are.
pub const FULL_PATH_FIELDS: [&str; 8] =
    ["cache-control", "pragma", "range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"];

fn needs_full_path(name: &HeaderName) -> bool {
    FULL_PATH_FIELDS.contains(&name.as_str())
}

impl CacheScratch {
    /// The client said `no-store`: nothing of this exchange may be stored.
    pub fn no_store(&self) -> bool {
        self.client.no_store
    }
}

impl CacheRoute {
    /// The route caches and this request may use the cache.
    pub fn enabled(&self, st: &CacheScratch) -> bool {
        self.policy.is_some() && !st.bypass
    }

    /// Whether the client's own directives force a stored entry back to the backend
    /// (`cache_hit_filter`): `no-cache`, or an entry older than its `max-age` or fresh for less
    /// than its `min-fresh`. Off when the route ignores them.
    pub fn on_hit(&self, st: &mut CacheScratch, meta: &CacheMeta, is_fresh: bool) -> Option<ForcedFreshness> {
        let policy = self.policy.as_ref()?;
        if policy.ignore_client_no_cache || !is_fresh {
            return None;
        }
        let c = st.client;
        let age = meta.age().as_secs();
        let left = meta.fresh_until().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).as_secs();
        let force = c.no_cache
            || c.max_age.is_some_and(|m| age > u64::from(m) || m == 0)
            || c.min_fresh.is_some_and(|m| left < u64::from(m));
        st.forced = force;
        force.then_some(ForcedFreshness::ForceExpired)
    }

    /// Whether this request may take the fast path of a hit (`fresh_hit`): a plain GET on a
    /// route that caches, without validators, ranges or cache directives of its own.
    pub fn may_hit_fast(&self, x: &Exchange<'_>, st: &CacheScratch) -> bool {
        self.enabled(st) && x.req.method == http::Method::GET && !x.req.headers.keys().any(needs_full_path)
    }

    /// The fast path of a cache hit (bench scenario 3), for a request `may_hit_fast` let
    /// through: an entry this process holds, fresh, with no variants, is answered from
    /// directly. Everything else (stale, revalidation, coalescing, variants, a store that must
    /// be asked over the network) takes pingora's full path, which decides the same for these
    /// requests; `key` is that path's store key.
    pub fn fresh_hit(&self, key: &StoreKey) -> Option<FreshHit> {
        let obj = self.store.get_local(key)?;
        let decoded = obj.meta.decoded.as_ref()?;
        let times = decoded.times.as_ref()?;
        let now = SystemTime::now();
        let stored = &decoded.header;
        if times.variance.is_some()
            || times.fresh_until <= now
            || cache::varies(&stored.headers)
            // without a length the full path frames the body (chunked)
            || !stored.headers.contains_key(CONTENT_LENGTH)
        {
            return None;
        }
        let mut header = stored.clone();
        // RFC 9111 4: a response served without validation carries its age (as pingora's hit)
        let age = now.duration_since(times.epoch_override.unwrap_or(times.created)).unwrap_or_default().as_secs();
        header.insert_header(AGE, age).ok()?;
        header.set_version(http::Version::HTTP_11);
        // a 200 of known length could be served in ranges: said as pingora's hit says it
        if header.status == http::StatusCode::OK
            && header.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).is_some()
        {
            header.insert_header(ACCEPT_RANGES, "bytes").ok()?;
        }
        Some(FreshHit { header, obj, key: *key })
    }

    /// The entries a successful write invalidates, with the reason each is counted under.
    fn selectors(&self, x: &Exchange<'_>, resp: &ResponseHeader) -> Vec<(Reason, PurgeSelector)> {
        let mut selectors = vec![(Reason::Target, PurgeSelector::Path(x.path.to_string()))];
        for h in [LOCATION, CONTENT_LOCATION] {
            let Some(loc) = resp.headers.get(&h).and_then(|v| v.to_str().ok()) else { continue };
            // Only same-origin, path-absolute references name an entry here.
            if let Ok(uri) = loc.parse::<http::Uri>()
                && uri.authority().is_none()
                && let Ok(p) = normalize(uri.path())
            {
                selectors.push((Reason::Target, PurgeSelector::Path(p.into_owned())));
            }
        }
        invalidate::rule_selectors(&self.invalidate, (&self.path, &self.entities), (&x.req.method, x.path), |n| x.param(n), &x.req.headers, &mut selectors);
        for t in &self.invalidate_tags {
            if let Some(tag) = t.render(&x.req.headers, x.req.uri.query(), |n| x.param(n)) {
                selectors.push((Reason::Tag, PurgeSelector::Tag(tag)));
            }
        }
        selectors
    }
}

impl Policy for CacheRoute {
    type Scratch = CacheScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut CacheScratch, _d: &mut Directives) -> Flow {
        if let Some(policy) = &self.policy {
            st.bypass = policy.bypass(&x.req.method, &x.req.headers).is_some();
            if !st.bypass && x.req.headers.contains_key(http::header::CACHE_CONTROL) {
                st.client = ClientDirectives::parse(x.req);
            }
        }
        Flow::Continue
    }

    async fn admit(&self, x: &Exchange<'_>, st: &mut CacheScratch) -> Flow {
        // Going upstream means no usable stored response (RFC 9111 5.2.1.7).
        if st.client.only_if_cached && self.enabled(st) && !matches!(x.cache_phase, CachePhase::Hit) {
            st.status = Some("miss");
            return Flow::Respond(GatewayError::new(Problem::NotCached, "the client asked only-if-cached and no stored response can be used"));
        }
        Flow::Continue
    }

    fn on_upstream_request(&self, x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut CacheScratch) -> Result<(), GatewayError> {
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
        st: &mut CacheScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if self.policy.is_some() {
            let status = if st.bypass { "BYPASS" } else { cache::x_cache(x.cache_phase) };
            st.status = Some(if st.bypass { "bypass" } else { cache::status(x.cache_phase) });
            let _ = resp.insert_header("x-cache", status);
            if !resp.headers.contains_key(AGE) {
                let _ = resp.insert_header(AGE, "0");
            }
            resp.remove_header(&self.tag_header);
            if let Some(own) = self.policy.as_ref().and_then(|p| p.targeted_field.as_ref()) {
                resp.remove_header(own);
            }
        }
        let status = resp.status.as_u16();
        if (200..400).contains(&status) && !x.req.method.is_safe() {
            for (reason, sel) in self.selectors(x, resp) {
                match self.store.purge(&sel).await {
                    Ok(n) => st.invalidated[reason as usize] += n,
                    Err(e) => tracing::warn!(error = %e, request_id = x.request_id, "cache invalidation failed"),
                }
            }
            if x.req.method != http::Method::HEAD && self.invalidate.contains(&InvalidateRule::Entities) && self.entities.reads_written(resp) {
                st.written = Some(Vec::new());
            }
        }
        Ok(())
    }

    /// A write's answer names what it changed (the updated article): read at its end, before
    /// the last chunk goes out, so the writer never reads the old copy after it. This process's
    /// copies go at once; a shared store's purge follows without being awaited (a body filter
    /// cannot wait), so another replica may serve the old copy for the Redis round trip.
    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut CacheScratch) -> Result<(), Cut> {
        let Some(buf) = &mut st.written else { return Ok(()) };
        if let Some(b) = body {
            if buf.len() + b.len() > MAX_WRITTEN {
                st.written = None;
                return Ok(());
            }
            buf.extend_from_slice(b);
        }
        if !eos {
            return Ok(());
        }
        let Some(buf) = st.written.take() else { return Ok(()) };
        let mut tags = Vec::new();
        if self.entities.written.collect(&buf, &mut tags).is_err() {
            return Ok(());
        }
        for tag in tags {
            let sel = PurgeSelector::Tag(tag);
            st.invalidated[Reason::Entity as usize] += self.store.purge_local(&sel);
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.purge(&sel).await {
                    tracing::warn!(error = %e, "cache invalidation failed");
                }
            });
        }
        Ok(())
    }

    fn on_done(&self, st: &CacheScratch, out: &mut Outcome) {
        out.cache = st.status;
        for (reason, n) in Reason::ALL.iter().zip(st.invalidated) {
            if n > 0 {
                out.invalidated.push((reason.as_str(), n));
            }
        }
    }
}
