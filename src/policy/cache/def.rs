//! What a route's caching is, as configured: its keys in the routes file (`cache`,
//! `invalidate_tags`, `invalidate`), the definition, and the compile step. Plain values;
//! `mod.rs` makes them live.

use crate::cache::invalidate::{self, InvalidateRule};
use crate::cache::tags::TagTemplate;
use crate::cache::CachePolicy;
use crate::cache::entities::EntityRoute;
use crate::model::diag::{suggest, Diagnostics};
use crate::model::entity::{self, Occurrences};
use std::collections::BTreeMap;
use std::sync::Arc;
use crate::model::units::{Dur, Toggle, Ttl};
use crate::policy::registry::{keys, Scope};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

keys! {
    /// Response caching: `"off"`, `"on"`, or a table.
    #[schema(example_toml = r#"{ ttl = "30s", key = { headers = ["authorization"] } }"#)]
    cache: Spanned<Toggle<RawCachePolicy>>,
    /// Tags purged after a successful unsafe request (POST/PUT/PATCH/DELETE) on the route.
    invalidate_tags: Vec<Spanned<String>>,
    /// What a successful write on the route invalidates besides its own path: `"entities"`,
    /// `"resource"`, `"viewer"`, or path patterns (`"/api/users/{user_id}"`, `"/api/items/**"`).
    invalidate: Vec<Spanned<String>>,
    /// Where `[entities]` occur in the route's JSON answers: `{ "/articles/*" = "Article" }`.
    #[schema(example_toml = r#"{ "/*" = "Item", "/*/owner" = "Owner" }"#)]
    entities: Spanned<BTreeMap<String, Spanned<String>>>,
}

/// A route's caching and what its writes invalidate. Every route has one: a route that does
/// not cache still invalidates what its writes change.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRouteDef {
    pub policy: Option<CachePolicy>,
    pub invalidate_tags: Vec<TagTemplate>,
    /// What a successful write invalidates besides its own path and `Location`.
    pub invalidate: Vec<InvalidateRule>,
    /// How the route stands to the entities: what its entries are tagged with, what its
    /// writes name.
    pub entities: Arc<EntityRoute>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawCachePolicy {
    /// Freshness of successful responses the backend gives none; `"origin"` or unset: none.
    #[schema(example = "30s")]
    pub ttl: Option<Spanned<Ttl>>,
    /// Freshness of 404, 405, 410, 414 and 501 answers the backend gives none; unset: not stored.
    pub negative_ttl: Option<Spanned<Dur>>,
    /// Tags every stored response of the route carries (`"item:{item_id}"`).
    #[serde(default)]
    #[schema(example_toml = r#"["item:{item_id}"]"#)]
    pub tags: Vec<Spanned<String>>,
    /// A targeted cache-control field (RFC 9213) read ahead of `CDN-Cache-Control`.
    pub targeted_field: Option<Spanned<String>>,
    /// Serve fresh entries even when the client sends `Cache-Control: no-cache` or `max-age=0`.
    pub ignore_client_no_cache: Option<Spanned<bool>>,
    /// How long past its freshness an entry is served while one request refreshes it.
    pub stale_while_revalidate: Option<Spanned<Dur>>,
    /// How long past its freshness an entry is served when the backend fails or is down.
    pub stale_if_error: Option<Spanned<Dur>>,
    /// What besides method, host, path and query keys an entry.
    pub key: Option<RawCacheKey>,
    /// Use `ttl` whatever the backend's `Cache-Control` says.
    pub override_origin: Option<Spanned<bool>>,
    /// The data is the same for every client: credentials do not bypass the cache.
    pub public: Option<Spanned<bool>>,
    /// Store responses that set cookies, without their `Set-Cookie`.
    pub strip_set_cookie: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    /// Request fields whose values key the entry (`authorization`, `accept-language`).
    #[serde(default)]
    #[schema(example_toml = r#"["authorization"]"#)]
    pub headers: Vec<Spanned<String>>,
    /// Cookies whose values key the entry.
    #[serde(default)]
    pub cookies: Vec<Spanned<String>>,
    /// Query parameters left out of the key (`utm_source`).
    #[serde(default)]
    pub ignore_query: Vec<Spanned<String>>,
}

/// The route's caching; always `Some` (errors are recorded).
pub fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Option<CacheRouteDef> {
    let entities = Arc::new(EntityRoute::new(scope.shape, scope.route.and_then(|(_, t)| t).map(|t| Arc::new(t.clone())), occurrences(keys, cx, scope), scope.entities));
    let policy = match keys.cache.as_ref().map(Spanned::get_ref) {
        None | Some(Toggle::Off) => None,
        Some(Toggle::On(None)) => Some(CachePolicy::default()),
        Some(Toggle::On(Some(raw))) => compile_policy(cx, raw, scope),
    }
    .map(|p| CachePolicy { entities: entities.clone(), ..p });
    let invalidate_tags = keys.invalidate_tags.iter().flatten().filter_map(|t| scope.tag_template(cx, t)).collect();
    let invalidate = match &keys.invalidate {
        None => invalidate::default_rules(),
        Some(list) => {
            let mut rules = Vec::new();
            for r in list {
                match InvalidateRule::parse(r.get_ref()) {
                    Ok(rule) => {
                        scope.check_params(cx, r.span(), rule.params());
                        rules.push(rule);
                    }
                    Err(e) => {
                        cx.error::<()>(r.span(), e, "write \"entities\", \"resource\", \"viewer\", a path such as \"/api/users/{user_id}\", or a subtree such as \"/api/items/**\"");
                    }
                }
            }
            rules
        }
    };
    Some(CacheRouteDef { policy, invalidate_tags, invalidate, entities })
}

/// The route's `entities` table, checked against `[entities]`.
fn occurrences(keys: &Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Occurrences {
    let mut occ = Occurrences::default();
    let Some(table) = &keys.entities else { return occ };
    for (path, name) in table.get_ref() {
        let steps = match entity::parse_path(path) {
            Ok(s) => s,
            Err(e) => {
                cx.error::<()>(table.span(), format!("occurrence {e}"), "a JSON path: \"/article\" (a member), \"/articles/*\" (each element of an array), \"/\" (the whole body)");
                continue;
            }
        };
        match scope.entities.get(name.get_ref()) {
            Some(def) => occ.add(&steps, &def.name, &def.id),
            None => {
                let known: Vec<&str> = scope.entities.names().collect();
                let hint = match suggest(name.get_ref(), &known) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.is_empty() => format!("define it: [entities.{}] with id = \"...\"", name.get_ref()),
                    None => format!("defined entities: {}", known.join(", ")),
                };
                cx.error::<()>(name.span(), format!("unknown entity `{}`", name.get_ref()), hint);
            }
        }
    }
    occ
}

fn compile_policy(cx: &mut Diagnostics<'_>, raw: &RawCachePolicy, scope: &Scope<'_>) -> Option<CachePolicy> {
    let RawCachePolicy {
        ttl,
        negative_ttl,
        tags,
        targeted_field,
        ignore_client_no_cache,
        stale_while_revalidate,
        stale_if_error,
        key,
        override_origin,
        public,
        strip_set_cookie,
    } = raw;
    let ttl = match ttl.as_ref().map(|t| (t.get_ref(), t.span())) {
        Some((Ttl::Default(d), span)) if d.is_zero() => {
            return cx.error(span, "cache `ttl` must be above zero", "write ttl = \"origin\" to store only what the backend's headers allow, or cache = \"off\"");
        }
        Some((Ttl::Default(d), _)) => Some(*d),
        Some((Ttl::Origin, _)) | None => None,
    };
    let override_origin = override_origin.as_ref().is_some_and(|b| *b.get_ref());
    if override_origin && ttl.is_none() {
        let at = raw.override_origin.as_ref().map(Spanned::span).unwrap_or_default();
        return cx.error(at, "`override_origin` needs a `ttl` to apply", "add ttl = \"30s\", or remove override_origin");
    }
    let negative_ttl = match negative_ttl {
        Some(t) if t.get_ref().0.is_zero() => {
            return cx.error(t.span(), "`negative_ttl` must be above zero", "leave it out to never store error answers without explicit freshness");
        }
        Some(t) => Some(t.get_ref().0),
        None => None,
    };
    let header_name = |cx: &mut Diagnostics<'_>, name: &Spanned<String>, hint: &str| match http::HeaderName::from_bytes(name.get_ref().trim().to_ascii_lowercase().as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => cx.error(name.span(), format!("invalid header name {:?}", name.get_ref()), hint),
    };
    let (mut headers, mut cookies, mut ignore) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(RawCacheKey { headers: h, cookies: c, ignore_query }) = key {
        for name in h {
            if let Some(n) = header_name(cx, name, "write a field name such as \"authorization\" or \"x-tenant\"") {
                headers.push(n);
            }
        }
        cookies = c.iter().map(|s| s.get_ref().clone()).collect();
        ignore = ignore_query.iter().map(|s| s.get_ref().clone()).collect();
    }
    let targeted_field = targeted_field
        .as_ref()
        .and_then(|t| header_name(cx, t, "write a field name such as \"fastgate-cache-control\""));
    let tags = tags.iter().filter_map(|t| scope.tag_template(cx, t)).collect();
    Some(CachePolicy {
        entities: Arc::default(),
        ttl,
        negative_ttl,
        stale_while_revalidate: stale_while_revalidate.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0),
        stale_if_error: stale_if_error.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0),
        key_headers: headers,
        key_cookies: cookies,
        ignore_query: ignore,
        tags,
        targeted_field,
        override_origin,
        public: public.as_ref().is_some_and(|b| *b.get_ref()),
        strip_set_cookie: strip_set_cookie.as_ref().is_some_and(|b| *b.get_ref()),
        ignore_client_no_cache: ignore_client_no_cache.as_ref().is_some_and(|b| *b.get_ref()),
    })
}
